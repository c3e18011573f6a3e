//! Contexts: named control planes (with their agent and tokens) in the CLI's config file, so
//! `herald context use prod` replaces a handful of flags. The file is
//! `$HERALD_CONFIG`, else `$XDG_CONFIG_HOME/herald/config.toml`, else
//! `~/.config/herald/config.toml`; it holds tokens, so it is written with mode 0600.
//!
//! A setting comes from, in order: its flag, its `HERALD_…` variable, the context (`--context`
//! / `HERALD_CONTEXT`, else the current one), the default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::output::{self, Format};

/// The config file's contents.
#[derive(Default, Serialize, Deserialize)]
pub struct Config {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Entry>,
}

/// One context.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Entry {
    /// The control plane's gRPC URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<String>,
    /// The agent's gRPC URL, for `emit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// API token for the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Token for the agent's Emit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<String>,
    /// CA (PEM path) of the control plane's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    /// Client certificate (PEM path) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    /// The client certificate's key (PEM path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<String>,
}

impl Entry {
    /// Refuses settings that could not be used (an address that is not one, half a TLS
    /// setting, a PEM file that cannot be read): said now, not at the next command, where the
    /// mistake would look like that command's.
    fn check(&self, name: &str) -> anyhow::Result<()> {
        let tls = self.tls_ca_file.is_some() || self.tls_cert_file.is_some();
        if let Some(url) = &self.control_plane {
            crate::connect::check_address(url, &format!("context {name:?} --url"), tls)?;
        }
        if let Some(url) = &self.agent {
            crate::connect::check_address(url, &format!("context {name:?} --agent-url"), false)?;
        }
        let path = |file: &Option<String>| file.as_ref().map(std::path::PathBuf::from);
        herald_proto::client_tls::config(
            path(&self.tls_ca_file).as_deref(),
            path(&self.tls_cert_file).as_deref(),
            path(&self.tls_key_file).as_deref(),
        )
        .map_err(|err| {
            crate::usage::usage(format!(
                "context {name:?}: {err} (--set-tls-ca-file, --set-tls-cert-file, \
                 --set-tls-key-file)"
            ))
        })?;
        Ok(())
    }
}

/// `herald context …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Create or change a context (only the flags given change).
    Set {
        /// The context's name.
        name: String,
        /// The control plane's gRPC URL.
        #[arg(long)]
        url: Option<String>,
        /// The agent's gRPC URL (http://host:port or unix:/path).
        #[arg(long)]
        agent_url: Option<String>,
        /// API token for the control plane (empty removes it).
        #[arg(long)]
        set_token: Option<String>,
        /// Token for the agent's Emit (empty removes it).
        #[arg(long)]
        set_agent_token: Option<String>,
        /// CA (PEM file) of the control plane's certificate (empty removes it).
        #[arg(long)]
        set_tls_ca_file: Option<String>,
        /// Client certificate (PEM file) for mutual TLS (empty removes it).
        #[arg(long)]
        set_tls_cert_file: Option<String>,
        /// The client certificate's key (PEM file; empty removes it).
        #[arg(long)]
        set_tls_key_file: Option<String>,
    },
    /// Make a context the current one.
    Use {
        /// The context's name.
        name: String,
    },
    /// List the contexts (tokens are not shown).
    List,
    /// Remove a context.
    Delete {
        /// The context's name.
        name: String,
    },
}

/// `file` (a path given to `context set`) made absolute from the current directory; empty
/// (which removes the setting) and none stay as they are.
fn absolute(file: Option<String>) -> anyhow::Result<Option<String>> {
    match file {
        Some(file) if !file.is_empty() => {
            let path =
                std::path::absolute(&file).map_err(|err| anyhow::anyhow!("file {file}: {err}"))?;
            let text = path
                .to_str()
                .ok_or_else(|| anyhow::anyhow!("file {file}: the path is not UTF-8"))?;
            Ok(Some(text.to_owned()))
        }
        other => Ok(other),
    }
}

/// Where the config file is.
pub fn path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HERALD_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("herald").join("config.toml"))
}

/// The most bytes of config file read.
const MAX_FILE: u64 = 1024 * 1024;

/// Reads the config file; an absent file is an empty config.
pub fn load() -> anyhow::Result<Config> {
    let Some(path) = path() else {
        return Ok(Config::default());
    };
    let text = match herald_core::read_limited::read_text_file_limited(&path, MAX_FILE) {
        Err(herald_core::read_limited::ReadError::Io(err))
            if err.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(Config::default());
        }
        read => read.with_context(|| format!("reading {}", path.display()))?,
    };
    toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid herald config (fix or remove it)",
            path.display()
        )
    })
}

/// Writes the config file, readable by its owner only.
fn save(config: &Config) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    let path = path().context("no config location: set HERALD_CONFIG or HOME")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(config).context("encoding the config")?;
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl Config {
    /// The context to use: `named` (which must exist), else the current one, else none.
    pub fn pick(&self, named: Option<&str>) -> anyhow::Result<Entry> {
        let Some(name) = named.or(self.current.as_deref()) else {
            return Ok(Entry::default());
        };
        self.contexts.get(name).cloned().ok_or_else(|| {
            let message = format!(
                "no context {name:?}: see `herald context list`, or create it with `herald \
                 context set {name} --url …`"
            );
            // Named on the command line: called wrongly (exit 2); the file's current one: the
            // file is wrong (exit 1).
            if named.is_some() {
                crate::usage::usage(message)
            } else {
                anyhow::anyhow!(message)
            }
        })
    }
}

/// Says what a change did: the sentence on standard error for people (tables), the
/// `record` on standard output for scripts (`-o json`, `-o yaml`).
fn done(format: Format, sentence: &str, record: serde_json::Value) -> anyhow::Result<()> {
    match format.style {
        output::Style::Table => output::note(sentence),
        output::Style::Json | output::Style::Yaml => output::object(format, &record)?,
    }
    Ok(())
}

/// Runs `herald context …`.
pub fn run(cmd: Command, format: Format) -> anyhow::Result<()> {
    let mut config = load()?;
    match cmd {
        Command::Set {
            name,
            url,
            agent_url,
            set_token,
            set_agent_token,
            set_tls_ca_file,
            set_tls_cert_file,
            set_tls_key_file,
        } => {
            herald_core::validate::tenant(&name).map_err(|_| {
                crate::usage::usage(format!(
                    "context name {name:?}: use letters, digits, '.', '_' or '-'"
                ))
            })?;
            let entry = config.contexts.entry(name.clone()).or_default();
            let set = |slot: &mut Option<String>, value: Option<String>| {
                if let Some(value) = value {
                    *slot = (!value.is_empty()).then_some(value);
                }
            };
            set(&mut entry.control_plane, url);
            set(&mut entry.agent, agent_url);
            set(&mut entry.token, set_token);
            set(&mut entry.agent_token, set_agent_token);
            // Files are kept as absolute paths: a context is used from any directory.
            set(&mut entry.tls_ca_file, absolute(set_tls_ca_file)?);
            set(&mut entry.tls_cert_file, absolute(set_tls_cert_file)?);
            set(&mut entry.tls_key_file, absolute(set_tls_key_file)?);
            entry.check(&name)?;
            if config.current.is_none() {
                config.current = Some(name.clone());
            }
            let path = save(&config)?;
            let current = config.current.as_deref() == Some(name.as_str());
            done(
                format,
                &format!("context {name:?} saved in {}", path.display()),
                serde_json::json!({ "saved": name, "file": path.display().to_string(), "current": current }),
            )?;
        }
        Command::Use { name } => {
            if !config.contexts.contains_key(&name) {
                return Err(crate::usage::usage(format!(
                    "no context {name:?}: create it with `herald context set {name} --url …`"
                )));
            }
            config.current = Some(name.clone());
            save(&config)?;
            done(
                format,
                &format!("now using context {name:?}"),
                serde_json::json!({ "current": name }),
            )?;
        }
        Command::Delete { name } => {
            if config.contexts.remove(&name).is_none() {
                anyhow::bail!("no context {name:?}");
            }
            if config.current.as_deref() == Some(name.as_str()) {
                config.current = None;
            }
            save(&config)?;
            done(
                format,
                &format!("context {name:?} deleted"),
                serde_json::json!({ "deleted": name }),
            )?;
        }
        Command::List => {
            let items: Vec<serde_json::Value> = config
                .contexts
                .iter()
                .map(|(name, entry)| {
                    serde_json::json!({
                        "current": config.current.as_deref() == Some(name.as_str()),
                        "name": name,
                        "control_plane": entry.control_plane,
                        "agent": entry.agent,
                        // Never the token itself: whether the context has one.
                        "has_token": entry.token.is_some(),
                    })
                })
                .collect();
            output::list(
                format,
                "contexts",
                &items,
                &["current", "name", "control_plane", "agent", "has_token"],
                "",
            )?;
        }
    }
    Ok(())
}
