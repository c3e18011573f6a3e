//! The tenant portal at `/portal/{link}/`.

/// How the portal looks and where it may be embedded.
#[derive(Clone, Debug, clap::Args)]
pub struct Branding {
    /// The name the tenant portal shows in its header (your platform's).
    #[arg(
        long = "portal-name",
        env = "HERALD_PORTAL_NAME",
        default_value = "Webhooks"
    )]
    pub name: String,
    /// The portal's accent colour, `#rrggbb`.
    #[arg(long = "portal-color", env = "HERALD_PORTAL_COLOR", default_value = "#2454d6", value_parser = colour)]
    pub color: String,
    /// An https:// image URL for the portal's header.
    #[arg(long = "portal-logo-url", env = "HERALD_PORTAL_LOGO_URL", default_value = "", value_parser = logo_url)]
    pub logo_url: String,
    /// The sites that may embed the portal in an iframe: Content-Security-Policy
    /// frame-ancestors sources, e.g. "https://shop-platform.example" ('none': no site).
    #[arg(long = "portal-frame-ancestors", env = "HERALD_PORTAL_FRAME_ANCESTORS", default_value = "'none'", value_parser = frame_ancestors)]
    pub frame_ancestors: String,
}

fn colour(text: &str) -> Result<String, String> {
    let hex = text.strip_prefix('#').unwrap_or("");
    if hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(text.to_owned())
    } else {
        Err("expected a colour as #rrggbb".into())
    }
}

fn logo_url(text: &str) -> Result<String, String> {
    if text.is_empty() || (text.starts_with("https://") && url::Url::parse(text).is_ok()) {
        Ok(text.to_owned())
    } else {
        Err("expected an https:// URL".into())
    }
}

/// CSP sources: words of URL characters only, so the flag cannot add other directives.
fn frame_ancestors(text: &str) -> Result<String, String> {
    let ok = !text.trim().is_empty()
        && text.split_whitespace().all(|source| {
            source
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":/.-_*'".contains(c))
        });
    if ok {
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    } else {
        Err("expected CSP sources such as https://shop.example or 'self' or 'none'".into())
    }
}

impl Default for Branding {
    fn default() -> Self {
        Branding {
            name: "Webhooks".into(),
            color: "#2454d6".into(),
            logo_url: String::new(),
            frame_ancestors: "'none'".into(),
        }
    }
}

/// The portal's routes.
pub fn routes() -> axum::Router<super::WebState> {
    axum::Router::new()
}
