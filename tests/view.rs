//! The debug view of a real daemon on the bundled clip: nothing drawn or encoded while nobody
//! watches, snapshots and the MJPEG stream (annotated, rate-capped, one encode per frame
//! however many viewers), and the page at `/` in a real browser (Debian's `chromium`,
//! headless, driven over the DevTools protocol): the camera tile shows frames and person rows
//! appear. Its screenshot is written to `target/tmp/observe.png`; the README's
//! `docs/observe.png` is one taken with `AFFECTD_VIEW_SCREENSHOT_WAIT_S=40`.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/http.rs"]
mod http;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "common/serial.rs"]
mod serial;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{Daemon, config, detect_sections, fixture, tiny_model_section};
use http::get;
use mosquitto::Mosquitto;
use serde_json::{Value, json};

const CAMERA: &str = "walkway";
const CHROMIUM: &str = "/usr/bin/chromium";
/// `[http] view_fps` of these tests.
const VIEW_FPS: f64 = 4.0;

/// The clip through the detector, tracker and tiny EmotionCLIP, with `[http]` on a free port.
fn start(broker: &Mosquitto) -> (Daemon, SocketAddr) {
    let cameras = format!(
        "[[camera]]\nid = \"{CAMERA}\"\nuri = \"file:{}\"\n",
        fixture("vtest.mp4").display()
    );
    let extra = format!(
        "{}{}[http]\nlisten = \"127.0.0.1:0\"\nview_fps = {VIEW_FPS}\nmax_viewers = 3\n",
        detect_sections(),
        tiny_model_section()
    );
    let mut daemon = Daemon::start(&config(broker, &cameras, &extra));
    let addr = daemon.http_addr(Duration::from_secs(30));
    (daemon, addr)
}

/// One sample of `/metrics` (0 when absent).
fn metric(addr: SocketAddr, series: &str) -> f64 {
    get(addr, "/metrics", None)
        .body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `/api/tracks` lists a track with a person result; returns the listing.
fn wait_for_a_person(daemon: &mut Daemon, addr: SocketAddr, limit: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let tracks = get(addr, "/api/tracks", None);
        if tracks.status == 200 {
            let body = tracks.json();
            if body["tracks"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| !t["person"].is_null()))
            {
                return body;
            }
        }
        assert!(daemon.is_running(), "{}", daemon.log());
        assert!(
            t0.elapsed() < limit,
            "no person result within {limit:?}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `GET path` returning the raw body bytes (JPEG), with the status and content type.
fn get_bytes(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let kind = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, kind, raw[split + 4..].to_vec())
}

/// Pixels near one of the view's track colours (the boxes and labels it draws).
fn drawn_pixels(jpeg: &[u8]) -> usize {
    const PALETTE: [[u8; 3]; 8] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
    ];
    let img = image::load_from_memory(jpeg).unwrap().to_rgb8();
    img.pixels()
        .filter(|p| {
            PALETTE
                .iter()
                .any(|c| p.0.iter().zip(c).all(|(a, b)| a.abs_diff(*b) < 24))
        })
        .count()
}

/// Reads `multipart/x-mixed-replace` parts from an open stream for `span`: the JPEGs.
fn read_parts(stream: TcpStream, span: Duration) -> Vec<Vec<u8>> {
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut parts = Vec::new();
    let t0 = Instant::now();
    let mut line = String::new();
    while t0.elapsed() < span {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => panic!("{e}"),
        }
        if let Some(n) = line
            .strip_prefix("Content-Length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            let mut blank = String::new();
            reader.read_line(&mut blank).unwrap();
            let mut jpeg = vec![0; n];
            reader.read_exact(&mut jpeg).unwrap();
            parts.push(jpeg);
        }
    }
    parts
}

#[test]
fn frames_are_drawn_only_for_viewers_at_the_capped_rate() {
    let _cores = serial::timed();
    let broker = Mosquitto::start();
    let (mut daemon, addr) = start(&broker);
    wait_for_a_person(&mut daemon, addr, Duration::from_secs(60));

    // Tracks and person results flow, and nobody watched: nothing drawn, nothing encoded.
    assert_eq!(metric(addr, "affectd_view_frames_encoded_total"), 0.0);

    // A snapshot: the next frame, the clip's size, boxes drawn.
    let (status, kind, jpeg) = get_bytes(addr, &format!("/cameras/{CAMERA}/snapshot.jpg"));
    assert_eq!((status, kind.as_str()), (200, "image/jpeg"));
    let img = image::load_from_memory(&jpeg).unwrap();
    assert_eq!((img.width(), img.height()), (768, 576));
    assert_eq!(metric(addr, "affectd_view_frames_encoded_total"), 1.0);
    let (status, _, _) = get_bytes(addr, "/cameras/nowhere/snapshot.jpg");
    assert_eq!(status, 404);

    // Two streams at once: at most view_fps parts a second each, every part a JPEG with
    // people drawn, and the frames both saw encoded once.
    let open = |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /cameras/{CAMERA}/stream.mjpeg HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        s
    };
    let before = metric(addr, "affectd_view_frames_encoded_total");
    let (a, b) = (open(addr), open(addr));
    let span = Duration::from_secs(6);
    let reader = std::thread::spawn(move || read_parts(b, span));
    let parts = read_parts(a, span);
    let other = reader.join().unwrap();
    let encoded = metric(addr, "affectd_view_frames_encoded_total") - before;
    let cap = (VIEW_FPS * span.as_secs_f64()).ceil() as usize + 1;
    assert!(
        (cap / 3..=cap).contains(&parts.len()),
        "{} parts in {span:?} at view_fps {VIEW_FPS}",
        parts.len()
    );
    let drawn: Vec<usize> = parts.iter().map(|j| drawn_pixels(j)).collect();
    assert!(
        drawn.iter().filter(|&&d| d > 300).count() * 2 >= drawn.len(),
        "boxes drawn on too few frames: {drawn:?}"
    );
    // Both viewers were served from shared encodes: fewer than one encode per part sent.
    assert!(
        (encoded as usize) < parts.len() + other.len(),
        "{encoded} encodes for {} + {} parts",
        parts.len(),
        other.len()
    );

    // A fourth viewer while three are open is refused (max_viewers = 3).
    let held: Vec<TcpStream> = (0..3).map(|_| open(addr)).collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(addr, "affectd_view_streams"), 3.0);
    let (status, _, _) = get_bytes(addr, &format!("/cameras/{CAMERA}/snapshot.jpg"));
    assert_eq!(status, 503);
    drop(held);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(metric(addr, "affectd_view_streams"), 0.0);

    // Nobody watching again: the encoding stops.
    let idle = metric(addr, "affectd_view_frames_encoded_total");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(metric(addr, "affectd_view_frames_encoded_total"), idle);
    assert!(daemon.terminate(Duration::from_secs(6)).0.success());
}

/// Chromium headless with the DevTools protocol on a pipe-free websocket.
struct Browser {
    child: Child,
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() {
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--mute-audio",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let url = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("chromium exited before DevTools listened:\n{seen}");
            }
            if let Some(url) = line.trim().strip_prefix("DevTools listening on ") {
                break url.to_owned();
            }
            seen.push_str(&line);
        };
        // Keep draining chromium's stderr so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let host = url
            .strip_prefix("ws://")
            .and_then(|u| u.split('/').next())
            .unwrap();
        let stream = TcpStream::connect(host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (socket, _) = tungstenite::client(url.as_str(), stream).unwrap();
        Some(Browser {
            child,
            socket,
            next_id: 0,
            _profile: profile,
        })
    }

    /// Sends one DevTools command (to a page session when given) and returns its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .unwrap();
        loop {
            let text = match self.socket.read().unwrap() {
                tungstenite::Message::Text(t) => t,
                _ => continue,
            };
            let answer: Value = serde_json::from_str(text.as_str()).unwrap();
            if answer["id"] == json!(id) {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab; returns its session.
    fn open(&mut self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", json!({ "url": url }));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        self.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
        );
        session
    }

    /// Evaluates `expression` in the page; its value (JSON).
    fn eval(&mut self, session: &str, expression: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (the screenshot).
fn base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// What the page shows, read from its DOM.
const PAGE_STATE: &str = r#"JSON.stringify({
    tiles: [...document.querySelectorAll('figure.tile')].map(f => ({
        camera: f.dataset.camera,
        width: f.querySelector('img').naturalWidth,
        state: f.querySelector('.state') ? f.querySelector('.state').textContent : null,
    })),
    rows: [...document.querySelectorAll('tr.person')].map(r => ({
        camera: r.dataset.camera,
        track: r.dataset.track,
        emotion: r.querySelector('td.emotion').textContent,
        bars: r.querySelectorAll('.bar').length,
        lines: r.querySelectorAll('svg polyline').length,
    })),
    error: document.getElementById('error').textContent,
})"#;

#[test]
fn the_page_shows_the_camera_and_the_people_in_a_real_browser() {
    let _cores = serial::heavy();
    let Some(mut browser) = Browser::start() else {
        eprintln!(
            "SKIPPED: {CHROMIUM} is missing; install the Debian package chromium \
             (scripts/install-deps.sh does)"
        );
        return;
    };
    let broker = Mosquitto::start();
    let (mut daemon, addr) = start(&broker);
    let session = browser.open(&format!("http://{addr}/"));

    // The tile shows frames (its MJPEG image has a size) and person rows with a read-out
    // (emotion bars, valence/arousal lines) appear.
    let t0 = Instant::now();
    let state = loop {
        let state: Value = serde_json::from_str(
            browser
                .eval(&session, PAGE_STATE)
                .as_str()
                .unwrap_or("null"),
        )
        .unwrap_or(Value::Null);
        let tile_ok = state["tiles"][0]["width"].as_u64().is_some_and(|w| w > 0);
        let rows: Vec<&Value> = state["rows"]
            .as_array()
            .map(|r| r.iter().collect())
            .unwrap_or_default();
        let read = rows.iter().any(|r| r["bars"].as_u64().unwrap_or(0) > 0);
        if tile_ok && read {
            break state;
        }
        assert!(daemon.is_running(), "{}", daemon.log());
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the page never showed frames and people: {state:#}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(state["tiles"].as_array().unwrap().len(), 1, "{state:#}");
    assert_eq!(state["tiles"][0]["camera"], CAMERA);
    assert_eq!(state["tiles"][0]["width"], 768, "{state:#}");
    assert_eq!(state["error"], "", "{state:#}");
    let tracks = get(addr, "/api/tracks", None).json();
    let listed: BTreeMap<String, ()> = tracks["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["track_id"].to_string(), ()))
        .collect();
    for row in state["rows"].as_array().unwrap() {
        assert_eq!(row["camera"], CAMERA);
        assert!(
            row["track"].as_str().unwrap().parse::<u64>().is_ok(),
            "{row}"
        );
    }
    assert!(!listed.is_empty());

    // The page's stream is the one viewer, and frames keep coming to it.
    assert_eq!(metric(addr, "affectd_view_streams"), 1.0);
    let before = metric(addr, "affectd_view_frames_encoded_total");
    std::thread::sleep(Duration::from_secs(2));
    let sent = metric(addr, "affectd_view_frames_encoded_total") - before;
    assert!(sent >= 2.0, "{sent} frames in 2 s to the page");

    // A screenshot of what the browser rendered: a PNG of the window, not blank.
    // AFFECTD_VIEW_SCREENSHOT_WAIT_S lets the valence/arousal lines grow first (the README's).
    if let Some(wait) = std::env::var("AFFECTD_VIEW_SCREENSHOT_WAIT_S")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    let shot = browser.call(
        Some(&session),
        "Page.captureScreenshot",
        json!({ "format": "png" }),
    );
    let png = base64(shot["data"].as_str().unwrap());
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1280, 900));
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 1000,
        "a blank page: {} colours",
        colours.len()
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("observe.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
    drop(browser);
    assert!(daemon.terminate(Duration::from_secs(6)).0.success());
}
