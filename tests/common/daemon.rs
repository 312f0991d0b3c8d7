//! A running `affectd run` for end-to-end tests (include with `#[path]`, beside `mosquitto`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::mosquitto::Mosquitto;

pub const NODE: &str = "e2e";

/// A running `affectd run` with its config in a temporary folder; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start(config: &str) -> Daemon {
        Self::start_with(config, |_| {})
    }

    /// Like [`Daemon::start`], with `env` adjusting the command's environment first.
    ///
    /// A config without `[http]` gets `listen = "127.0.0.1:0"` (a free port, see
    /// [`Daemon::http_addr`]): test daemons run side by side and would all want port 9720.
    pub fn start_with(config: &str, env: impl FnOnce(&mut Command)) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("affectd.toml");
        let table: toml::Table = config.parse().expect("the test config parses");
        let mut config = config.to_owned();
        if !table.contains_key("http") {
            config += "\n[http]\nlisten = \"127.0.0.1:0\"\n";
        }
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_affectd"));
        command
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        env(&mut command);
        let child = command.spawn().unwrap();
        Daemon { child, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The address the HTTP server listens on, from its `http listening addr=...` log line.
    pub fn http_addr(&mut self, limit: Duration) -> SocketAddr {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if let Some(addr) = log
                .lines()
                .filter(|l| l.contains("http listening"))
                .find_map(|l| l.split("addr=").nth(1)?.split_whitespace().next())
            {
                return addr.parse().expect("a socket address");
            }
            assert!(self.is_running(), "the daemon exited:\n{log}");
            assert!(
                t0.elapsed() < limit,
                "no `http listening` within {limit:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits for the exit; returns the status and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let t0 = Instant::now();
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, t0.elapsed());
            }
            assert!(
                t0.elapsed() < limit,
                "no exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The validator of `schemas/<name>`, formats checked.
pub fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&value)
        .unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn config(broker: &Mosquitto, cameras: &str, extra: &str) -> String {
    format!(
        r#"
[node]
id = "{NODE}"
{cameras}
[mqtt]
port = {port}
status_interval_s = 1.0
{extra}
"#,
        port = broker.port()
    )
}

/// The bundled detector on the CPU, every sighting sampled.
pub fn detect_sections() -> String {
    format!(
        "[detect]\nengine = \"{}/engines/nanodet-g-416.toml\"\nproviders = [\"cpu\"]\n\
         [window]\nstride = 1\n",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `[model]`: the tiny teacher architecture with seeded random weights: windows in seconds.
/// Its ONNX exports go to `onnx-cache` in the daemon's own folder (relative to the config
/// file), never to the default `/var/cache/affectd/onnx`.
pub fn tiny_model_section() -> String {
    format!(
        "[model]\nallow_untrained = true\nseed = 7\nconfig = \"{}\"\nname = \"tiny-teacher\"\n\
         update_every = 2\n{TINY_ONNX_CACHE}\n",
        fixture("tiny-teacher.json").display()
    )
}

/// The `onnx_cache_dir` line of [`tiny_model_section`] (to replace).
pub const TINY_ONNX_CACHE: &str = "onnx_cache_dir = \"onnx-cache\"";
