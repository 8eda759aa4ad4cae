//! Where the scheduler is and who we are: flags, then `SUANLI_ADDR`/`SUANLI_TOKEN`, then the
//! config file (`--config FILE`, `$SUANLI_CONFIG`, `$XDG_CONFIG_HOME/suanli/config.toml` or
//! `~/.config/suanli/config.toml`), then the default address.
//!
//! The environment is read through [`ConfigSource`] so tests can hand in a map.

#[cfg(test)]
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CliError;

pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";

/// Environment variables by name.
pub trait ConfigSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment; empty values count as unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvSource;

impl ConfigSource for EnvSource {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Fixed values, for tests.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub struct MapSource(pub BTreeMap<String, String>);

#[cfg(test)]
impl MapSource {
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.0.insert(name.to_string(), value.into());
        self
    }
}

#[cfg(test)]
impl ConfigSource for MapSource {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// What the command line said.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub addr: Option<String>,
    pub token: Option<String>,
    pub config: Option<PathBuf>,
}

/// Where a setting came from, so errors can say which one to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env(&'static str),
    File(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => f.write_str("from the command line"),
            Origin::Env(name) => write!(f, "from ${name}"),
            Origin::File(path) => write!(f, "from {}", path.display()),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// The resolved connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `http://host:port`.
    pub addr: String,
    pub addr_origin: Origin,
    pub token: Option<String>,
    pub token_origin: Option<Origin>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<String>,
    token: Option<String>,
}

/// The config file to read: `(path, must_exist)`.
fn config_path(flags: &Flags, env: &dyn ConfigSource) -> Option<(PathBuf, bool)> {
    if let Some(path) = &flags.config {
        return Some((path.clone(), true));
    }
    if let Some(path) = env.var("SUANLI_CONFIG") {
        return Some((PathBuf::from(path), true));
    }
    let base = env
        .var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env.var("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some((base.join("suanli").join("config.toml"), false))
}

fn read_file(path: &Path, must_exist: bool) -> Result<FileConfig, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            return Ok(FileConfig::default());
        }
        Err(e) => {
            return Err(CliError::Usage(format!(
                "cannot read config {}: {e}",
                path.display()
            )));
        }
    };
    toml::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "config {}: {}",
            path.display(),
            e.to_string().trim_end()
        ))
    })
}

/// `127.0.0.1:7070` → `http://127.0.0.1:7070`; anything else must be an http(s) URL.
pub fn normalize_addr(raw: &str, origin: &Origin) -> Result<String, CliError> {
    let raw = raw.trim().trim_end_matches('/');
    let url = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let bad = |why: &str| CliError::Usage(format!("scheduler address {raw:?} ({origin}): {why}"));
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad("must be an http:// or https:// URL"));
    }
    let host = url.split_once("://").map_or("", |(_, rest)| rest);
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    tonic::transport::Endpoint::from_shared(url.clone()).map_err(|e| bad(&e.to_string()))?;
    Ok(url)
}

/// Flags beat the environment, which beats the config file, which beats the default.
pub fn resolve(flags: &Flags, env: &dyn ConfigSource) -> Result<Settings, CliError> {
    let file = match config_path(flags, env) {
        Some((path, must_exist)) => Some((read_file(&path, must_exist)?, path)),
        None => None,
    };
    let from_file = |pick: fn(&FileConfig) -> Option<String>| {
        file.as_ref()
            .and_then(|(cfg, path)| pick(cfg).map(|v| (v, Origin::File(path.clone()))))
    };
    let (addr, addr_origin) = flags
        .addr
        .clone()
        .map(|a| (a, Origin::Flag))
        .or_else(|| {
            env.var("SUANLI_ADDR")
                .map(|a| (a, Origin::Env("SUANLI_ADDR")))
        })
        .or_else(|| from_file(|c| c.addr.clone()))
        .unwrap_or_else(|| (DEFAULT_ADDR.to_string(), Origin::Default));
    let addr = normalize_addr(&addr, &addr_origin)?;
    let token = flags
        .token
        .clone()
        .map(|t| (t, Origin::Flag))
        .or_else(|| {
            env.var("SUANLI_TOKEN")
                .map(|t| (t, Origin::Env("SUANLI_TOKEN")))
        })
        .or_else(|| from_file(|c| c.token.clone()))
        .filter(|(t, _)| !t.trim().is_empty());
    if let Some((token, origin)) = &token
        && !token.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(CliError::Usage(format!(
            "the token ({origin}) must be printable ASCII without spaces"
        )));
    }
    let (token, token_origin) = match token {
        Some((t, o)) => (Some(t), Some(o)),
        None => (None, None),
    };
    Ok(Settings {
        addr,
        addr_origin,
        token,
        token_origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("suanli").join("config.toml");
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn default_when_nothing_is_set() {
        let s = resolve(&Flags::default(), &MapSource::default()).expect("valid");
        assert_eq!(s.addr, DEFAULT_ADDR);
        assert_eq!(s.addr_origin, Origin::Default);
        assert_eq!(s.token, None);
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(
            dir.path(),
            "addr = \"http://file:1\"\ntoken = \"file-token\"\n",
        );
        let xdg = dir.path().display().to_string();
        let env = MapSource::default().with("XDG_CONFIG_HOME", &xdg);

        let s = resolve(&Flags::default(), &env).expect("file only");
        assert_eq!(s.addr, "http://file:1");
        assert_eq!(s.token.as_deref(), Some("file-token"));
        assert_eq!(s.addr_origin, Origin::File(path.clone()));

        let env = env
            .with("SUANLI_ADDR", "env:2")
            .with("SUANLI_TOKEN", "env-token");
        let s = resolve(&Flags::default(), &env).expect("env over file");
        assert_eq!(s.addr, "http://env:2");
        assert_eq!(s.token.as_deref(), Some("env-token"));
        assert_eq!(s.token_origin, Some(Origin::Env("SUANLI_TOKEN")));

        let flags = Flags {
            addr: Some("https://flag:3".into()),
            token: Some("flag-token".into()),
            config: None,
        };
        let s = resolve(&flags, &env).expect("flags over env");
        assert_eq!(s.addr, "https://flag:3");
        assert_eq!(s.token.as_deref(), Some("flag-token"));
        assert_eq!(s.addr_origin, Origin::Flag);
    }

    #[test]
    fn home_config_is_used_without_xdg() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_config(&dir.path().join(".config"), "addr = \"http://home:7\"\n");
        let env = MapSource::default().with("HOME", dir.path().display().to_string());
        let s = resolve(&Flags::default(), &env).expect("valid");
        assert_eq!(s.addr, "http://home:7");
    }

    #[test]
    fn explicit_config_file_must_exist_and_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = Flags {
            config: Some(dir.path().join("nope.toml")),
            ..Flags::default()
        };
        let err = resolve(&missing, &MapSource::default()).unwrap_err();
        assert!(err.to_string().starts_with("cannot read config "), "{err}");
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "adress = \"x\"\n").expect("write");
        let flags = Flags {
            config: Some(bad),
            ..Flags::default()
        };
        let err = resolve(&flags, &MapSource::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `adress`"), "{err}");
        assert!(err.contains("bad.toml"), "{err}");
    }

    #[test]
    fn a_missing_default_config_file_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = MapSource::default().with("XDG_CONFIG_HOME", dir.path().display().to_string());
        assert_eq!(
            resolve(&Flags::default(), &env).expect("valid").addr,
            DEFAULT_ADDR
        );
    }

    #[test]
    fn bad_addresses_and_tokens_are_usage_errors() {
        let env = MapSource::default().with("SUANLI_ADDR", "ftp://x");
        let err = resolve(&Flags::default(), &env).unwrap_err().to_string();
        assert_eq!(
            err,
            "scheduler address \"ftp://x\" (from $SUANLI_ADDR): must be an http:// or https:// URL"
        );
        let flags = Flags {
            token: Some("has space".into()),
            ..Flags::default()
        };
        let err = resolve(&flags, &MapSource::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the token (from the command line) must be printable ASCII without spaces"
        );
    }
}
