//! `[http]`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigError, resolve};

/// `[http]`: the HTTP endpoints (Prometheus metrics, health, live cameras and tracks).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `false` starts no HTTP server.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Address and port to listen on, e.g. `127.0.0.1:9720` or `[::]:9720`; port 0 picks a
    /// free port (logged as `http listening addr=...`). Anything but a loopback address
    /// needs `token_file`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File holding a bearer token (first line) that requests must send as
    /// `Authorization: Bearer <token>`. Never logged. Without it, requests need no token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl HttpConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.token_file {
            *p = resolve(base, p);
        }
    }

    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.enabled && !self.listen.ip().is_loopback() && self.token_file.is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.token_file"),
                format!(
                    "is required when {key}.listen ({}) is not a loopback address",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            listen: default_listen(),
            token_file: None,
        }
    }
}

const fn default_enabled() -> bool {
    true
}
const fn default_listen() -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9720)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_without_a_token() {
        let c: HttpConfig = toml::from_str("").unwrap();
        assert!(c.enabled);
        assert_eq!(c.listen.to_string(), "127.0.0.1:9720");
        c.validate("http").unwrap();
    }

    #[test]
    fn a_public_address_needs_a_token_unless_disabled() {
        let mut c: HttpConfig = toml::from_str("listen = \"0.0.0.0:9720\"").unwrap();
        let e = c.validate("http").unwrap_err().to_string();
        assert_eq!(
            e,
            "http.token_file: is required when http.listen (0.0.0.0:9720) is not a loopback address"
        );
        c.token_file = Some("token".into());
        c.validate("http").unwrap();
        c.token_file = None;
        c.enabled = false;
        c.validate("http").unwrap();
        let v6: HttpConfig = toml::from_str("listen = \"[::1]:0\"").unwrap();
        v6.validate("http").unwrap();
    }
}
