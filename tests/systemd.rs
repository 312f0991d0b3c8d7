//! The shipped units pass `systemd-analyze verify`, and `systemd-analyze security --offline`
//! rates their exposure at most 1.5 (Debian package `systemd`, installed by
//! `scripts/install-deps.sh`).

use std::path::Path;
use std::process::Command;

fn unit(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("systemd")
            .join(name),
    )
    .unwrap()
}

fn assert_has(name: &str, needed: &[&str]) {
    let text = unit(name);
    for needed in needed {
        assert!(text.contains(needed), "{name} lacks {needed}");
    }
}

const ANALYZE: &str = "/usr/bin/systemd-analyze";

/// The units in a temporary folder, `ExecStart` pointing at the binary under test (verify
/// checks that it exists).
fn installed(names: &[&str]) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    assert!(
        Path::new(ANALYZE).exists(),
        "{ANALYZE} is missing: install the Debian package systemd (scripts/install-deps.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let paths = names
        .iter()
        .map(|name| {
            let path = dir.path().join(name);
            let text = unit(name).replace("/usr/local/bin/affectd", env!("CARGO_BIN_EXE_affectd"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    (dir, paths)
}

/// Runs `systemd-analyze verify` over the units together (a timer needs its service beside
/// it) and asserts it passes without a warning about them.
fn verify(names: &[&str]) {
    let (_dir, paths) = installed(names);
    let out = Command::new(ANALYZE)
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    for name in names {
        assert!(
            !stderr.contains(name),
            "systemd-analyze verify warned about {name}:\n{stderr}"
        );
    }
}

/// `systemd-analyze security --offline` of one unit: its overall exposure (0 to 10).
fn exposure(name: &str) -> f64 {
    let (_dir, paths) = installed(&[name]);
    let out = Command::new(ANALYZE)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&paths[0])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| {
            let rest = l.split("Overall exposure level for ").nth(1)?;
            rest.split(": ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[test]
fn both_units_expose_at_most_1_5() {
    let daemon = exposure("affectd.service");
    let train = exposure("affectd-train.service");
    assert!(daemon <= 1.5, "affectd.service exposure {daemon}");
    assert!(train <= 1.5, "affectd-train.service exposure {train}");
    // Training has no network at all.
    assert_has(
        "affectd-train.service",
        &["PrivateNetwork=yes", "IPAddressDeny=any"],
    );
}

#[test]
fn unit_file_verifies() {
    assert_has(
        "affectd.service",
        &[
            "Type=notify",
            "WatchdogSec=",
            "Restart=on-failure",
            "User=affectd",
            "StateDirectory=affectd",
            "ProtectSystem=strict",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "RestartPreventExitStatus=2",
            "StartLimitBurst=",
            "MemoryMax=",
            "TasksMax=",
            "DevicePolicy=closed",
        ],
    );
    verify(&["affectd.service"]);
}

#[test]
fn nightly_training_units_verify() {
    assert_has(
        "affectd-train.service",
        &[
            "Type=oneshot",
            "affectd train distill",
            "--data /var/lib/affectd/capture",
            "--out /var/lib/affectd/student",
            "ExecStartPost=+/bin/systemctl try-reload-or-restart affectd.service",
            "Nice=19",
            "CPUQuota=50%",
            "IOSchedulingClass=idle",
            "CPUSchedulingPolicy=batch",
            "MemoryMax=",
            "User=affectd",
            "ProtectSystem=strict",
        ],
    );
    assert_has(
        "affectd-train.timer",
        &[
            "OnCalendar=*-*-* 02:30",
            "RandomizedDelaySec=",
            "Persistent=true",
            "Unit=affectd-train.service",
        ],
    );
    // The training unit has the daemon's sandbox, line for line, and more.
    let daemon = unit("affectd.service");
    let train = unit("affectd-train.service");
    let hardening = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("ProtectSystem="))
            .take_while(|l| !l.starts_with('['))
            // The daemon alone talks to cameras and the broker, holds many sockets and opens
            // V4L2 cameras.
            .filter(|l| {
                l.contains('=')
                    && !l.starts_with('#')
                    && !l.starts_with("RestrictAddressFamilies=")
                    && !l.starts_with("LimitNOFILE=")
                    && !l.starts_with("DeviceAllow=char-video4linux")
            })
            .map(str::to_owned)
            .collect()
    };
    let train_lines = hardening(&train);
    for line in hardening(&daemon) {
        assert!(
            train_lines.contains(&line),
            "the training unit lacks {line}"
        );
    }
    verify(&[
        "affectd.service",
        "affectd-train.service",
        "affectd-train.timer",
    ]);
}

#[test]
fn the_shipped_config_the_unit_and_the_system_install_name_one_onnx_runtime() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config: toml::Table = std::fs::read_to_string(root.join("configs/affectd.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let configured = config["detect"]["ort_library"].as_str().unwrap();
    let unit = unit("affectd.service");
    let env = unit
        .lines()
        .find_map(|l| l.strip_prefix("Environment=ORT_DYLIB_PATH="))
        .expect("the unit sets ORT_DYLIB_PATH");
    assert_eq!(configured, env);
    let dir = Path::new(configured).parent().unwrap();
    assert_eq!(dir, Path::new(affectd::detect::SYSTEM_LIBRARY_DIR));
    assert!(affectd::detect::library_search_list().contains(&dir.to_path_buf()));
    let install = std::fs::read_to_string(root.join("scripts/install-deps.sh")).unwrap();
    assert!(
        install.contains(&format!("install -d {}", dir.display())),
        "install-deps.sh --system does not create {}",
        dir.display()
    );
    // These tests run as root or as a user; as root the working directory is never searched.
    let venv = affectd::detect::library_search_list()
        .iter()
        .any(|d| d.starts_with(".venv"));
    let root_user = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap();
    assert_eq!(
        venv,
        !root_user && std::env::var_os("INVOCATION_ID").is_none()
    );
}
