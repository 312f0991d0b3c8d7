//! The shipped unit passes `systemd-analyze verify` (where that tool exists).

use std::path::Path;
use std::process::Command;

#[test]
fn unit_file_verifies() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/affectd.service"
    ))
    .unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=affectd",
        "StateDirectory=affectd",
        "ProtectSystem=strict",
        "ExecReload=",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    if !analyze.exists() {
        eprintln!("systemd-analyze not installed: only the unit's content was checked");
        return;
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("affectd.service");
    let unit = unit.replace("/usr/local/bin/affectd", env!("CARGO_BIN_EXE_affectd"));
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("affectd.service"),
        "systemd-analyze verify warned about the unit:\n{stderr}"
    );
}
