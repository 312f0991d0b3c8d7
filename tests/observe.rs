//! The HTTP endpoints of a real daemon (`[http]`): `/metrics` checked by Prometheus' own
//! `promtool check metrics` (Debian package `prometheus`), the probes, the live state as
//! JSON validated against `schemas/`, the bearer token, and a taken port.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/http.rs"]
mod http;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{Daemon, NODE, config, detect_sections, fixture, schema, tiny_model_section};
use http::get;
use mosquitto::{Mosquitto, Subscriber};
use serde_json::Value;

const PROMTOOL: &str = "/usr/bin/promtool";
const CAMERA: &str = "walkway";

fn assert_valid(validator: &jsonschema::Validator, json: &Value) {
    let errors: Vec<String> = validator.iter_errors(json).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{json:#}");
}

/// `promtool check metrics` on `text`: its findings, or why it failed.
fn promtool(text: &str) -> Result<(), String> {
    assert!(
        Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: install the Debian package prometheus (scripts/install-deps.sh)"
    );
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Every sample of the exposition: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The `affectd_*` names in the queries (`expr`, variables' `query`/`definition`) of the
/// Grafana dashboard `deploy/grafana/affectd.json`.
fn dashboard_metric_names() -> BTreeSet<String> {
    fn walk(value: &Value, key: &str, out: &mut BTreeSet<String>) {
        match value {
            Value::String(text) if ["expr", "query", "definition"].contains(&key) => {
                let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
                let mut rest = text.as_str();
                while let Some(at) = rest.find("affectd_") {
                    let before = rest[..at].chars().next_back();
                    let name: String = rest[at..].chars().take_while(|c| ident(*c)).collect();
                    if !before.is_some_and(ident) {
                        out.insert(name.clone());
                    }
                    rest = &rest[at + name.len()..];
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, key, out)),
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(v, k, out)),
            _ => {}
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/affectd.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for wanted in ["DS_PROMETHEUS", "instance", "camera"] {
        assert!(variables.contains(&wanted), "no ${wanted} variable");
    }
    let mut names = BTreeSet::new();
    walk(&dashboard, "", &mut names);
    names
}

/// The metrics the dashboard queries that are not in the exposition `text`. Present: a series,
/// or a family announced by `# TYPE`; a histogram's `_bucket`, `_sum` and `_count` by their
/// family. (prometheus-client leaves out a labelled family until it has a series.)
fn dashboard_metrics_missing(text: &str) -> Vec<String> {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    let mut series: BTreeSet<&str> = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name, kind);
        } else if !line.starts_with('#') && !line.is_empty() {
            series.insert(line.split(['{', ' ']).next().unwrap());
        }
    }
    let exists = |name: &str| {
        series.contains(name)
            || types.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|family| types.get(family) == Some(&"histogram"))
            })
    };
    let names = dashboard_metric_names();
    assert!(names.len() >= 20, "the dashboard queries only {names:?}");
    names.into_iter().filter(|n| !exists(n)).collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {:#?}", samples.keys()))
}

/// Polls `GET path` until `done` holds for the answer.
fn wait_for(
    daemon: &mut Daemon,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    limit: Duration,
    done: impl Fn(&http::Response) -> bool,
) -> http::Response {
    let t0 = Instant::now();
    loop {
        let r = get(addr, path, token);
        if done(&r) {
            return r;
        }
        assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.log());
        assert!(
            t0.elapsed() < limit,
            "{path} never came right within {limit:?}; last: {r:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The bundled clip through the detector, the tracker and the tiny EmotionCLIP (seeded
/// random weights: windows in seconds), every sighting sampled.
fn pipeline_config(broker: &Mosquitto) -> String {
    let cameras = format!(
        "[[camera]]\nid = \"{CAMERA}\"\nuri = \"file:{}\"\n",
        fixture("vtest.mp4").display()
    );
    let extra = detect_sections() + &tiny_model_section();
    config(broker, &cameras, &extra)
}

#[test]
fn a_live_daemon_passes_promtool_and_shows_its_cameras_and_tracks() {
    let broker = Mosquitto::start();
    let sub = Subscriber::new(&broker, &format!("affectd/{NODE}/{CAMERA}/person/#"));
    let mut daemon = Daemon::start(&pipeline_config(&broker));
    let addr = daemon.http_addr(Duration::from_secs(30));
    let t0 = Instant::now();

    // Ready once the clip plays and the model is loaded.
    let ready = wait_for(
        &mut daemon,
        addr,
        "/readyz",
        None,
        Duration::from_secs(60),
        |r| r.status == 200,
    );
    let ready = ready.json();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["cameras"][0]["state"], "streaming", "{ready}");
    assert_eq!(ready["model"]["serving"]["name"], "tiny-teacher", "{ready}");
    assert_eq!(ready["mqtt"]["reached"], true, "{ready}");

    // A track with a person result: the whole pipeline has run.
    let tracks = wait_for(
        &mut daemon,
        addr,
        "/api/tracks",
        None,
        Duration::from_secs(150),
        |r| {
            r.status == 200
                && r.json()["tracks"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| !t["person"].is_null()))
        },
    );
    eprintln!("first person in /api/tracks after {:?}", t0.elapsed());
    let tracks = tracks.json();
    assert_valid(&schema("api-tracks.v1.schema.json"), &tracks);
    let person_schema = schema("person.v2.schema.json");
    let with_person: Vec<&Value> = tracks["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| !t["person"].is_null())
        .collect();
    for t in &with_person {
        // Listed without `seq` (numbered when queued for MQTT); otherwise the MQTT message.
        assert!(t["person"].get("seq").is_none(), "{}", t["person"]);
        let mut as_published = t["person"].clone();
        as_published["seq"] = 1.into();
        assert_valid(&person_schema, &as_published);
        assert_eq!(t["person"]["track_id"], t["track_id"]);
    }
    // The listed result is the one published on MQTT for that window.
    let listed = &with_person[0]["person"];
    let topic = format!(
        "affectd/{NODE}/{CAMERA}/person/{}",
        listed["track_id"].as_u64().unwrap()
    );
    let published = sub.wait_for(Duration::from_secs(10), |m| {
        m.topic == topic
            && serde_json::from_slice::<Value>(&m.payload)
                .is_ok_and(|p| p["window"] == listed["window"])
    });
    assert!(published.is_some(), "{listed} was not published on {topic}");

    let cameras = get(addr, "/api/cameras", None);
    assert_eq!(cameras.status, 200);
    assert_eq!(cameras.header("content-type"), Some("application/json"));
    let cameras = cameras.json();
    assert_valid(&schema("api-cameras.v1.schema.json"), &cameras);
    assert_eq!(cameras["cameras"][0]["id"], CAMERA);
    assert!(cameras["cameras"][0]["frames_decoded"].as_u64().unwrap() > 0);

    let health = get(addr, "/healthz", None);
    assert_eq!(health.status, 200, "{health:?}");
    let health = health.json();
    assert_eq!(health["live"], true);
    let stages: Vec<&str> = health["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    // Every long-lived thread and task, in start order.
    assert_eq!(
        stages,
        ["mqtt", "encoder", &format!("ingest-{CAMERA}"), "analytics"],
        "{health}"
    );
    assert_eq!(health["watchdog"]["enabled"], false, "{health}");

    let scrape = get(addr, "/metrics", None);
    assert_eq!(scrape.status, 200);
    assert_eq!(
        scrape.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = scrape.body;
    if let Err(findings) = promtool(&text) {
        panic!("promtool check metrics failed:\n{findings}\n{text}");
    }
    let s = samples(&text);
    let cam = |name: &str| value(&s, &format!("{name}{{camera=\"{CAMERA}\"}}"));
    assert!(cam("affectd_camera_frames_decoded_total") > 0.0);
    assert_eq!(
        value(
            &s,
            &format!("affectd_camera_state{{camera=\"{CAMERA}\",state=\"streaming\"}}")
        ),
        1.0
    );
    assert_eq!(cam("affectd_camera_restarts_total"), 0.0);
    assert!(cam("affectd_tracks_begun_total") >= 1.0);
    assert!(cam("affectd_person_messages_total") >= 1.0);
    // A family has no series for a camera until it counts something there.
    let ended = s
        .get(&format!(
            "affectd_tracks_ended_total{{camera=\"{CAMERA}\"}}"
        ))
        .copied()
        .unwrap_or(0.0);
    assert_eq!(
        cam("affectd_tracks_active"),
        cam("affectd_tracks_begun_total") - ended
    );
    let detector_runs = value(&s, "affectd_detector_batch_duration_seconds_count");
    assert!(detector_runs > 0.0);
    assert_eq!(
        value(
            &s,
            "affectd_detector_batch_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        detector_runs
    );
    assert!(value(&s, "affectd_detector_batch_frames_sum") >= detector_runs);
    let batches = value(&s, "affectd_encoder_batch_duration_seconds_count");
    assert!(batches > 0.0);
    assert!(value(&s, "affectd_encoder_batch_samples_sum") >= batches);
    assert!(value(&s, "affectd_encoder_samples_received_total") >= batches);
    assert!(value(&s, "affectd_encoder_windows_total") >= 1.0);
    let latency_n = value(&s, "affectd_person_latency_seconds_count");
    let latency_mean = value(&s, "affectd_person_latency_seconds_sum") / latency_n;
    assert!(latency_n >= 1.0);
    assert!(
        (0.0..=5.0).contains(&latency_mean),
        "mean latency {latency_mean} s"
    );
    assert_eq!(value(&s, "affectd_mqtt_connected"), 1.0);
    assert_eq!(value(&s, "affectd_mqtt_reconnects_total"), 0.0);
    assert!(value(&s, "affectd_mqtt_messages_acknowledged_total") >= 1.0);
    assert_eq!(
        value(
            &s,
            "affectd_model_info{name=\"tiny-teacher\",weights=\"untrained\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!(
                "affectd_build_info{{version=\"{}\",features=\"none\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    for stage in ["analytics", "encoder"] {
        let age = value(
            &s,
            &format!("affectd_stage_heartbeat_age_seconds{{stage=\"{stage}\"}}"),
        );
        assert!((0.0..30.0).contains(&age), "{stage} beat {age} s ago");
    }
    eprintln!(
        "metrics: {} samples, {} bytes; detector runs {detector_runs}, encoder batches {batches}, \
         person messages {}, mean latency {latency_mean:.3} s",
        s.len(),
        text.len(),
        cam("affectd_person_messages_total")
    );

    // The Grafana dashboard queries only metrics the daemon exposes. Per-camera families
    // appear once they count something there (tracks ended: seconds into the clip).
    let t1 = Instant::now();
    loop {
        let missing = dashboard_metrics_missing(&get(addr, "/metrics", None).body);
        if missing.is_empty() {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(90),
            "deploy/grafana/affectd.json queries metrics the daemon does not expose: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "dashboard: {} metric names, all exposed after {:?} more",
        dashboard_metric_names().len(),
        t1.elapsed()
    );

    let (status, _) = daemon.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", daemon.log());
}

#[test]
fn a_token_guards_every_endpoint_but_the_probes_status() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("http.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    // Nothing listens on the broker port: the daemon is ready all the same once its camera
    // streams (readiness does not wait for the broker), and `/readyz` says the broker is down.
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let config = format!(
        "[node]\nid = \"{NODE}\"\n[[camera]]\nid = \"lab\"\nuri = \"test:ball\"\n\
         [mqtt]\nport = {port}\n[http]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        token_file.display()
    );
    let mut daemon = Daemon::start(&config);
    let addr = daemon.http_addr(Duration::from_secs(30));
    let token = Some("s3cret-token");
    // The server listens before the stages are attached (until then it answers 503,
    // "starting") while the stages start.
    wait_for(
        &mut daemon,
        addr,
        "/api/cameras",
        token,
        Duration::from_secs(30),
        |r| r.status != 503,
    );

    for path in ["/metrics", "/api/cameras", "/api/tracks"] {
        let r = get(addr, path, None);
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{path}");
        assert_eq!(get(addr, path, Some("s3cret-tokeN")).status, 401, "{path}");
        assert_eq!(get(addr, path, token).status, 200, "{path}");
    }
    // Probes answer everyone with their status code, the detail only with the token.
    let open = get(addr, "/healthz", None);
    assert_eq!(
        (open.status, open.json()),
        (200, serde_json::json!({"live": true}))
    );
    // Every long-lived thread and task is listed: the MQTT event loop, the camera's
    // supervisor, the analytics.
    let stages: Vec<String> = get(addr, "/healthz", token).json()["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["stage"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(stages, ["mqtt", "ingest-lab", "analytics"]);
    let camera_streaming =
        |r: &http::Response| r.status == 200 && r.json()["cameras"][0]["state"] == "streaming";
    let ready = wait_for(
        &mut daemon,
        addr,
        "/readyz",
        token,
        Duration::from_secs(30),
        camera_streaming,
    );
    let ready = ready.json();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["mqtt"]["reached"], false, "{ready}");
    assert_eq!(ready["mqtt"]["connected"], false, "{ready}");
    assert_eq!(ready["model"]["configured"], false, "{ready}");
    let open = get(addr, "/readyz", None);
    assert_eq!(
        (open.status, open.json()),
        (200, serde_json::json!({"ready": true}))
    );

    // Ingest and MQTT only: still a valid exposition.
    let text = get(addr, "/metrics", token).body;
    if let Err(findings) = promtool(&text) {
        panic!("promtool check metrics failed:\n{findings}\n{text}");
    }
    let s = samples(&text);
    assert_eq!(value(&s, "affectd_mqtt_connected"), 0.0);
    assert!(value(&s, "affectd_mqtt_connection_errors_total") >= 1.0);
    for absent in [
        "affectd_encoder_",
        "affectd_detector_",
        "affectd_person_",
        "affectd_model_",
    ] {
        assert!(
            !text.contains(absent),
            "no {absent}* without their stage:\n{text}"
        );
    }
    assert!(!daemon.log().contains("s3cret"), "the token was logged");

    let (status, _) = daemon.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", daemon.log());
}

#[test]
fn a_taken_port_stops_the_start_with_one_line_naming_http_listen() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("affectd.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\nid = \"{NODE}\"\n[[camera]]\nid = \"lab\"\nuri = \"test:ball\"\n\
             [http]\nlisten = \"{addr}\"\n"
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_affectd"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let prefix = format!("error: http.listen: cannot listen on {addr}: ");
    assert!(
        stderr.starts_with(&prefix) && stderr.lines().count() == 1,
        "{stderr}"
    );
}
