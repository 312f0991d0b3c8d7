//! Every shipped config validates; every config in `tests/config_invalid/` fails with the
//! message its first line announces (`# expect: ...`).

#[path = "common/fifo.rs"]
mod fifo;

use std::path::{Path, PathBuf};

use affectd::config::{Config, ConfigError};

fn load_fully(path: &Path) -> Result<Config, ConfigError> {
    let config = Config::load(path)?;
    config.check_files()?;
    Ok(config)
}

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn shipped_configs_validate() {
    let files = toml_files("configs");
    assert!(files.len() >= 2, "configs/ lost its examples");
    for path in files {
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.cameras.is_empty(), "{}", path.display());
    }
}

#[test]
fn demo_config_names_only_files_in_the_repo() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.toml");
    load_fully(&demo).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn invalid_configs_fail_with_their_expected_message() {
    let files = toml_files("tests/config_invalid");
    assert!(files.len() >= 15, "only {} invalid configs", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", path.display()));
        let err = match load_fully(&path) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(expected),
            "{}:\n  expected: {expected}\n  got:      {err}",
            path.display()
        );
        assert!(
            !err.contains('\n'),
            "{}: error is not one line: {err}",
            path.display()
        );
    }
}

#[test]
fn credentials_in_the_clear_and_secret_files_others_can_read_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("mqtt.password");
    std::fs::write(&secret, "hunter2\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = format!(
        "[node]\nid = \"n\"\n[[camera]]\nid = \"a\"\nuri = \"test:ball\"\n\
         [mqtt]\nhost = \"broker.example\"\nusername = \"u\"\npassword_file = \"{}\"\n",
        secret.display()
    );
    let path = dir.path().join("affectd.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap();
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with(
        "mqtt.password_file: the broker password goes to broker.example over plain TCP"
    ));
    assert!(warnings[1].starts_with(&format!(
        "mqtt.password_file: {} is readable by every user (mode 644)",
        secret.display()
    )));
    // Private, and over TLS: nothing to say.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(&path, format!("{text}[mqtt.tls]\n")).unwrap();
    assert_eq!(
        Config::load(&path).unwrap().warnings(),
        Vec::<String>::new()
    );
}

#[test]
fn a_fifo_camera_passes_the_file_check_without_blocking_and_a_folder_is_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = fifo::make(dir.path(), "camera.mp4");
    let path = dir.path().join("affectd.toml");
    let camera = |uri: &Path| {
        format!(
            "[node]\nid = \"n\"\n[[camera]]\nid = \"a\"\nuri = \"file:{}\"\n",
            uri.display()
        )
    };
    // Opening a FIFO nobody writes would block for ever: it only has to exist here (the
    // camera's supervisor opens it, off its own thread, and retries).
    std::fs::write(&path, camera(&fifo)).unwrap();
    let (done, checked) = std::sync::mpsc::channel();
    let load = path.clone();
    std::thread::spawn(move || done.send(load_fully(&load).map(drop)).unwrap());
    let result = checked
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("checking a FIFO camera blocked");
    assert!(result.is_ok(), "{result:?}");
    // A folder where a file is due names the key and the problem.
    std::fs::write(&path, camera(dir.path())).unwrap();
    let e = load_fully(&path).unwrap_err().to_string();
    assert!(
        e.contains("camera[0].uri") && e.contains("is a folder, not a file"),
        "{e}"
    );
}
