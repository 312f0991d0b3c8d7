//! `[service]`.

use serde::Deserialize;

use crate::config::{ConfigError, check_range};

/// `[service]`: process supervision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Seconds allowed for draining pipelines and flushing MQTT on SIGTERM before exiting anyway.
    #[serde(default = "default_shutdown_timeout_s")]
    pub shutdown_timeout_s: f64,
    /// A stage that has not reported progress for this many seconds counts as hung: the
    /// systemd watchdog is no longer fed, so systemd restarts the service.
    #[serde(default = "default_stall_s")]
    pub stage_stall_s: f64,
}

impl ServiceConfig {
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        check_range(
            &format!("{key}.shutdown_timeout_s"),
            self.shutdown_timeout_s,
            0.5,
            60.0,
        )?;
        check_range(
            &format!("{key}.stage_stall_s"),
            self.stage_stall_s,
            1.0,
            3600.0,
        )?;
        Ok(())
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout_s: default_shutdown_timeout_s(),
            stage_stall_s: default_stall_s(),
        }
    }
}

const fn default_shutdown_timeout_s() -> f64 {
    4.0
}
const fn default_stall_s() -> f64 {
    30.0
}
