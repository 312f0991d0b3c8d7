//! `affectd check`: probe everything a config names, without starting the daemon.

use std::net::ToSocketAddrs;
use std::time::Duration;

use crate::config::{Config, check_file};

/// The outcome of `affectd check`: one readable line per probe.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub lines: Vec<String>,
    pub failures: usize,
}

impl CheckReport {
    fn ok(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.lines.push(format!("{what:<8} ok    {detail}"));
    }

    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failures += 1;
        self.lines.push(format!("{what:<8} FAIL  {detail}"));
    }

    fn record<E: std::fmt::Display>(&mut self, what: &str, ok: String, result: Result<(), E>) {
        match result {
            Ok(()) => self.ok(what, ok),
            Err(e) => self.fail(what, e),
        }
    }
}

/// Probes files, pipelines, models and the broker named by `config`.
pub fn check(config: &Config) -> CheckReport {
    let mut report = CheckReport::default();
    for (key, path, kind) in config.referenced_files() {
        report.record(
            "file",
            format!("{key} = {}", path.display()),
            check_file(&key, &path, kind),
        );
    }
    match config.detect.as_ref().map(crate::detect::Detector::probe) {
        None => report.ok("detect", "no [detect] section: ingest and status only"),
        Some(Ok(r)) => report.ok(
            "detect",
            format!(
                "{}: sha256 matches, {} outputs as the manifest says, provider {}",
                r.model.display(),
                r.output_shapes.len(),
                r.provider.name()
            ),
        ),
        Some(Err(e)) => report.fail("detect", e),
    }
    for camera in config.enabled_cameras() {
        report.record(
            "camera",
            format!("{}: pipeline builds", camera.id),
            crate::ingest::check_pipeline(camera, &config.ingest),
        );
    }
    report.record(
        "broker",
        format!(
            "{}:{} accepts TCP connections",
            config.mqtt.host, config.mqtt.port
        ),
        broker_reachable(&config.mqtt.host, config.mqtt.port, Duration::from_secs(3)),
    );
    report
}

/// A plain TCP connect: tells "nothing listens" from "listens" without speaking MQTT.
fn broker_reachable(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("mqtt.host: cannot resolve {host}: {e}"))?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match std::net::TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => format!("mqtt: cannot connect to {host}:{port}: {e}"),
        None => format!("mqtt.host: {host} resolves to no address"),
    })
}
