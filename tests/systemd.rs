//! The shipped units pass `systemd-analyze verify` (where that tool exists).

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

/// Runs `systemd-analyze verify` over the units together (a timer needs its service beside
/// it); false when the tool is not installed.
fn verify(names: &[&str]) -> bool {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!("systemd-analyze not installed: only the units' content was checked");
        return false;
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = names
        .iter()
        .map(|name| {
            let path = dir.path().join(name);
            let text = unit(name).replace("/usr/local/bin/affectd", env!("CARGO_BIN_EXE_affectd"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let out = Command::new(analyze)
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
    true
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
    // The training unit shares the daemon's sandbox, line for line.
    let daemon = unit("affectd.service");
    let train = unit("affectd-train.service");
    let hardening = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("ProtectSystem="))
            .take_while(|l| !l.starts_with('['))
            // The daemon alone talks to cameras and the broker, and holds many sockets.
            .filter(|l| {
                l.contains('=')
                    && !l.starts_with('#')
                    && !l.starts_with("RestrictAddressFamilies=")
                    && !l.starts_with("LimitNOFILE=")
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(hardening(&train), hardening(&daemon));
    verify(&[
        "affectd.service",
        "affectd-train.service",
        "affectd-train.timer",
    ]);
}
