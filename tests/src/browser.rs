//! A real browser for the web pages: Debian's `chromium`, headless, driven through
//! `chromium-driver` (WebDriver) with fantoccini. Each [`Browser`] is its own chromedriver
//! and profile, so scenarios share no cookies.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use fantoccini::{Client, ClientBuilder, Locator};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// Where Debian installs them (`scripts/test.sh` installs the packages).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// Signs in to the console at `http_base` as a page's form would, where the API needs no
/// token (signing in then takes none): the session cookie, `name=value`, for plain HTTP
/// clients to send.
pub async fn open_console_session(http_base: &str) -> anyhow::Result<String> {
    // The answer is a redirect whose cookie is wanted, not followed.
    let signed_in = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .post(format!("{http_base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=&next=%2Fsubscriptions")
        .send()
        .await?;
    signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no session cookie from {http_base}/login"))
}

/// A headless Chromium session.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a browser session in a fresh profile.
    pub async fn start() -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        // chromedriver binds its port itself: take a free one and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER} (Debian's chromium-driver)"))?;
        let url = format!("http://127.0.0.1:{port}");
        crate::eventually(
            Duration::from_secs(20),
            "chromedriver to listen",
            || async {
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(drop))
            },
        )
        .await?;
        let binary = if std::path::Path::new(CHROMIUM).exists() {
            CHROMIUM
        } else {
            "/usr/bin/chromium"
        };
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": binary,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .context("a chromium session through chromedriver")?;
        Ok(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Opens `url`.
    pub async fn open(&self, url: &str) -> anyhow::Result<()> {
        self.client.goto(url).await?;
        Ok(())
    }

    /// The visible text of the element `css` selects, once the page has one (a page still
    /// loading after a click is waited for, up to 10 s).
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        crate::eventually(
            Duration::from_secs(10),
            &format!("an element {css}"),
            || async {
                let element = self.client.find(Locator::Css(css)).await?;
                Ok(Some(element.text().await?))
            },
        )
        .await
    }

    /// The attribute `name` of the element `css` selects, once the page has it (empty when
    /// the element has no such attribute).
    pub async fn attribute(&self, css: &str, name: &str) -> anyhow::Result<String> {
        crate::eventually(
            Duration::from_secs(10),
            &format!("an element {css}"),
            || async {
                let element = self.client.find(Locator::Css(css)).await?;
                Ok(Some(element.attr(name).await?.unwrap_or_default()))
            },
        )
        .await
    }

    /// Whether the page shows an element `css` selects (now, without waiting).
    pub async fn has(&self, css: &str) -> bool {
        self.client.find(Locator::Css(css)).await.is_ok()
    }

    /// The whole page's visible text.
    pub async fn page_text(&self) -> anyhow::Result<String> {
        self.text("body").await
    }

    /// Types `text` into the field `css` selects (after clearing it), once the page has it.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        crate::eventually(
            Duration::from_secs(10),
            &format!("a field {css}"),
            || async {
                let field = self.client.find(Locator::Css(css)).await?;
                field.clear().await?;
                field.send_keys(text).await?;
                Ok(Some(()))
            },
        )
        .await
    }

    /// Clicks the element `css` selects, once the page has it.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        crate::eventually(
            Duration::from_secs(10),
            &format!("{css} to click"),
            || async {
                self.client.find(Locator::Css(css)).await?.click().await?;
                Ok(Some(()))
            },
        )
        .await
    }

    /// Waits until the page's URL contains `part` (after a click that navigates), up to 10 s.
    pub async fn wait_url(&self, part: &str) -> anyhow::Result<String> {
        crate::eventually(
            Duration::from_secs(10),
            &format!("a URL with {part}"),
            || async {
                let url = self.url().await?;
                Ok(url.contains(part).then_some(url))
            },
        )
        .await
    }

    /// The browser's cookie `name` as a `Cookie` header holds it (`name=value`), if it has one:
    /// a copy of a session, for a plain HTTP client to use as someone holding it would.
    pub async fn cookie(&self, name: &str) -> anyhow::Result<Option<String>> {
        match self.client.get_named_cookie(name).await {
            Ok(cookie) => Ok(Some(format!("{}={}", cookie.name(), cookie.value()))),
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::NoSuchCookie =>
            {
                Ok(None)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Posts the form `css` selects twice at once, as it stands, without leaving the page (a
    /// double click, a page reloaded, a user's impatience); fails unless both posts were
    /// answered with a redirect, as a form taken is.
    pub async fn post_form_twice(&self, css: &str) -> anyhow::Result<()> {
        let script = "const form = document.querySelector(arguments[0]);
            const post = () => fetch(form.action, {
                method: 'POST', body: new URLSearchParams(new FormData(form)), redirect: 'manual',
            }).then(r => r.type);
            return Promise.all([post(), post()]);";
        let answered = self
            .client
            .execute(script, vec![serde_json::Value::from(css)])
            .await?;
        anyhow::ensure!(
            answered == serde_json::json!(["opaqueredirect", "opaqueredirect"]),
            "the form {css} posted twice was answered {answered}"
        );
        Ok(())
    }

    /// The current URL.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self.client.current_url().await?.to_string())
    }

    /// Saves a PNG of the page to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(path, self.client.screenshot().await?)?;
        Ok(())
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        Ok(())
    }
}
