//! `[mqtt]`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigError, check_range, resolve, validate_id};

/// `[mqtt]`: the broker that receives status and results.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Broker port (1883 plain, 8883 usually TLS).
    #[serde(default = "default_port")]
    pub port: u16,
    /// MQTT client id; defaults to `affectd-<node.id>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// First level of every topic.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// User name for the broker.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the broker password (first line). Never logged.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to the broker; absent means plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Keep-alive interval in seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// QoS of result messages: 0, 1 or 2. Status messages always use QoS 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Seconds between camera status messages (also sent on every state change).
    #[serde(default = "default_status_interval_s")]
    pub status_interval_s: f64,
    /// Results held while the broker is unreachable; the oldest results are dropped past it
    /// (counted, on `<prefix>/<node>/outbox`). With `outbox = "disk"` it also bounds the spool.
    #[serde(default = "default_outbox_capacity")]
    pub outbox_capacity: usize,
    /// Where results wait for the broker: `memory` (lost when the process ends; the default,
    /// for demos and tests) or `disk` (a spool in `outbox_dir`, replayed at start; the shipped
    /// service config).
    #[serde(default)]
    pub outbox: OutboxMode,
    /// Folder of the disk outbox's spool and of the `seq` counter. Default:
    /// `$STATE_DIRECTORY/outbox` (systemd's `StateDirectory=`, `/var/lib/affectd/outbox`);
    /// required with `outbox = "disk"` when that is not set. With the memory outbox and no
    /// folder, `seq` starts at 1 on every start.
    #[serde(default)]
    pub outbox_dir: Option<PathBuf>,
    /// Upper bound of the reconnect delay, in seconds.
    #[serde(default = "default_reconnect_max_s")]
    pub reconnect_max_s: f64,
    /// QoS 1/2 messages sent but not yet acknowledged, at most; keep it within the broker's
    /// receive limit (mosquitto: `max_inflight_messages`, 20), above it mosquitto drops QoS 2.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Home Assistant MQTT discovery: per camera, retained sensor configs (people in view,
    /// dominant emotion, mean valence and arousal) and a retained state topic; configs of
    /// cameras no longer configured are removed at connect.
    #[serde(default)]
    pub home_assistant: bool,
    /// First level of the discovery topics (Home Assistant's `discovery_prefix`).
    #[serde(default = "default_home_assistant_prefix")]
    pub home_assistant_prefix: String,
}

/// `[mqtt] outbox`: where results wait for the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxMode {
    /// In memory: a crash, kill or restart loses what waits.
    #[default]
    Memory,
    /// In a spool file, written before a result goes to the broker, replayed at start.
    Disk,
}

/// `[mqtt.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate authorities to trust; absent uses the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that require mutual TLS (with `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

impl MqttConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(x) = p {
                *x = resolve(base, x);
            }
        };
        fix(&mut self.password_file);
        fix(&mut self.outbox_dir);
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.ca_file);
            fix(&mut tls.client_cert_file);
            fix(&mut tls.client_key_file);
        }
    }

    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() {
            return Err(ConfigError::invalid(format!("{key}.host"), "is empty"));
        }
        if self.port == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.port"),
                "0 is not a port",
            ));
        }
        if let Some(id) = &self.client_id {
            validate_id(&format!("{key}.client_id"), id)?;
        }
        check_prefix(&format!("{key}.topic_prefix"), &self.topic_prefix)?;
        check_prefix(
            &format!("{key}.home_assistant_prefix"),
            &self.home_assistant_prefix,
        )?;
        check_range(&format!("{key}.keep_alive_s"), self.keep_alive_s, 5, 3600)?;
        check_range(&format!("{key}.qos"), self.qos, 0, 2)?;
        check_range(
            &format!("{key}.status_interval_s"),
            self.status_interval_s,
            0.1,
            3600.0,
        )?;
        check_range(
            &format!("{key}.outbox_capacity"),
            self.outbox_capacity,
            10,
            1_000_000,
        )?;
        check_range(
            &format!("{key}.reconnect_max_s"),
            self.reconnect_max_s,
            0.1,
            3600.0,
        )?;
        check_range(&format!("{key}.max_inflight"), self.max_inflight, 1, 1000)?;
        self.outbox_folder(key)?;
        if self.password_file.is_some() && self.username.is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.password_file"),
                "is set without a username",
            ));
        }
        if let Some(tls) = &self.tls {
            let k = format!("{key}.tls");
            if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                return Err(ConfigError::invalid(
                    format!("{k}.client_key_file"),
                    "client_cert_file and client_key_file go together",
                ));
            }
        }
        Ok(())
    }

    /// The outbox folder: `outbox_dir`, else `$STATE_DIRECTORY/outbox` (the first folder
    /// systemd lists). `None` when neither is set; an error naming `<key>.outbox_dir` when the
    /// disk outbox has no folder.
    pub fn outbox_folder(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        let from_env = || {
            std::env::var_os("STATE_DIRECTORY")
                .and_then(|v| std::env::split_paths(&v).next())
                .filter(|p| p.is_absolute())
                .map(|p| p.join("outbox"))
        };
        let dir = self.outbox_dir.clone().or_else(from_env);
        if dir.is_none() && self.outbox == OutboxMode::Disk {
            return Err(ConfigError::invalid(
                format!("{key}.outbox_dir"),
                "is required with outbox = \"disk\" when STATE_DIRECTORY is not set",
            ));
        }
        Ok(dir)
    }

    /// The client id actually used.
    pub fn client_id_for(&self, node: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("affectd-{node}"))
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: default_host(),
            port: default_port(),
            client_id: None,
            topic_prefix: default_topic_prefix(),
            username: None,
            password_file: None,
            tls: None,
            keep_alive_s: default_keep_alive_s(),
            qos: default_qos(),
            status_interval_s: default_status_interval_s(),
            outbox_capacity: default_outbox_capacity(),
            outbox: OutboxMode::default(),
            outbox_dir: None,
            reconnect_max_s: default_reconnect_max_s(),
            max_inflight: default_max_inflight(),
            home_assistant: false,
            home_assistant_prefix: default_home_assistant_prefix(),
        }
    }
}

/// A topic prefix: non-empty, no wildcard, no leading or trailing `/`.
fn check_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty()
        || prefix.contains(['+', '#', '\0'])
        || prefix.starts_with('/')
        || prefix.ends_with('/')
    {
        return Err(ConfigError::invalid(
            key,
            format!("\"{prefix}\" must be non-empty, without '+', '#' or a leading/trailing '/'"),
        ));
    }
    Ok(())
}

fn default_host() -> String {
    "127.0.0.1".to_owned()
}
const fn default_port() -> u16 {
    1883
}
fn default_topic_prefix() -> String {
    "affectd".to_owned()
}
const fn default_keep_alive_s() -> u64 {
    30
}
const fn default_qos() -> u8 {
    1
}
const fn default_status_interval_s() -> f64 {
    5.0
}
const fn default_outbox_capacity() -> usize {
    10_000
}
const fn default_reconnect_max_s() -> f64 {
    10.0
}
const fn default_max_inflight() -> u16 {
    20
}
fn default_home_assistant_prefix() -> String {
    "homeassistant".to_owned()
}
