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
    /// Most frames a second one MJPEG stream of the debug view sends (at most the ingest
    /// rate); frames are drawn and encoded only while someone watches.
    #[serde(default = "default_view_fps")]
    pub view_fps: f64,
    /// Most debug-view viewers (streams and snapshots waiting) at once, all cameras; more
    /// are answered 503.
    #[serde(default = "default_max_viewers")]
    pub max_viewers: usize,
    /// Frames wider than this are scaled down (by an integer factor) before the view draws
    /// and encodes them.
    #[serde(default = "default_view_max_width")]
    pub view_max_width: u32,
}

impl HttpConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.token_file {
            *p = resolve(base, p);
        }
    }

    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(self.view_fps.is_finite() && self.view_fps > 0.0 && self.view_fps <= 60.0) {
            return Err(ConfigError::invalid(
                format!("{key}.view_fps"),
                format!("must be in (0, 60], got {}", self.view_fps),
            ));
        }
        if self.max_viewers == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.max_viewers"),
                "must be at least 1 (disable the server with enabled = false)",
            ));
        }
        if self.view_max_width < 64 {
            return Err(ConfigError::invalid(
                format!("{key}.view_max_width"),
                format!("must be at least 64, got {}", self.view_max_width),
            ));
        }
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
            view_fps: default_view_fps(),
            max_viewers: default_max_viewers(),
            view_max_width: default_view_max_width(),
        }
    }
}

const fn default_enabled() -> bool {
    true
}
const fn default_view_fps() -> f64 {
    5.0
}
const fn default_max_viewers() -> usize {
    4
}
const fn default_view_max_width() -> u32 {
    1280
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
