//! A real mosquitto broker for integration tests, and a subscriber that records what arrives.
//!
//! Include with `#[path = "common/mosquitto.rs"] mod mosquitto;`. Each broker gets its own
//! temporary folder and free 127.0.0.1 ports, so test binaries may run side by side.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, Transport};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What the broker should offer besides its plain listener.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Require these `(user, password)` pairs (file made with `mosquitto_passwd`); no anonymous.
    pub users: Vec<(String, String)>,
    /// Add a TLS listener and one that also requires a client certificate, with a CA made by
    /// `openssl` for this broker.
    pub tls: bool,
    /// Keep sessions, queued and retained messages across restarts (saved at a graceful
    /// [`Mosquitto::stop_gracefully`]), with no limit on the messages queued per client: what
    /// a persistent-session subscriber ([`Subscriber::persistent`]) needs to miss nothing.
    pub persistence: bool,
    /// Config lines appended after the listeners (a bridge section; after the last listener,
    /// so listener options here apply to the TLS listener that requires client certificates
    /// when `tls`).
    pub extra: String,
}

/// TLS material generated for one broker, all PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A running mosquitto; killed on drop.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    persistence: bool,
    extra: String,
    password_file: Option<PathBuf>,
    tls: Option<TlsFiles>,
    port: u16,
    tls_port: u16,
    mtls_port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// An anonymous broker on a free port.
    pub fn start() -> Mosquitto {
        Self::with(Options::default())
    }

    pub fn with(options: Options) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("affectd-mosquitto-")
            .tempdir()
            .expect("temp dir");
        let tls = options.tls.then(|| make_tls_files(dir.path()));
        let password_file = (!options.users.is_empty()).then(|| {
            let path = dir.path().join("passwd");
            for (i, (user, password)) in options.users.iter().enumerate() {
                let mut cmd = Command::new("mosquitto_passwd");
                cmd.arg("-b");
                if i == 0 {
                    cmd.arg("-c");
                }
                run(cmd.arg(&path).arg(user).arg(password));
            }
            path
        });
        let mut broker = Mosquitto {
            dir,
            persistence: options.persistence,
            extra: options.extra,
            password_file,
            tls,
            port: 0,
            tls_port: 0,
            mtls_port: 0,
            child: None,
        };
        // Another process may take a probed port before mosquitto binds it: try fresh ports.
        let mut last = String::new();
        for _ in 0..5 {
            broker.port = free_port();
            if broker.tls.is_some() {
                broker.tls_port = free_port();
                broker.mtls_port = free_port();
            }
            match broker.spawn() {
                Ok(()) => return broker,
                Err(log) => last = log,
            }
        }
        panic!("mosquitto did not start:\n{last}");
    }

    /// Port of the plain listener.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Port of the TLS listener (server certificate only).
    pub fn tls_port(&self) -> u16 {
        assert!(self.tls.is_some(), "broker started without tls");
        self.tls_port
    }

    /// Port of the TLS listener that requires a client certificate signed by the CA.
    pub fn mtls_port(&self) -> u16 {
        assert!(self.tls.is_some(), "broker started without tls");
        self.mtls_port
    }

    pub fn tls_files(&self) -> &TlsFiles {
        self.tls.as_ref().expect("broker started without tls")
    }

    /// A folder that lives as long as the broker, for test files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the broker (SIGKILL: no clean goodbye to clients) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker as `systemctl stop` does (SIGTERM): with `persistence` it saves its
    /// sessions and queues first. Waits for the exit.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + START_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports (retained messages are gone unless
    /// `persistence` and a graceful stop).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(log) if Instant::now() >= deadline => {
                    panic!("mosquitto did not restart on port {}:\n{log}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Writes the config for the current ports, starts mosquitto and waits until every
    /// listener accepts connections. On failure returns the log.
    fn spawn(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(&conf, self.config_text()).expect("write mosquitto.conf");
        let log_path = self.dir.path().join("mosquitto.log");
        // The log is appended across restarts; only what this start writes counts.
        let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open mosquitto.log");
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {MOSQUITTO}: {e}"));
        let mut ports = vec![self.port];
        if self.tls.is_some() {
            ports.extend([self.tls_port, self.mtls_port]);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "exited with {status}\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            // "running" is logged once every listener is bound (a port taken by someone else
            // makes mosquitto exit instead); the connects prove it accepts.
            let running = std::fs::read(&log_path).is_ok_and(|log| {
                String::from_utf8_lossy(log.get(log_start..).unwrap_or_default())
                    .contains(" running")
            });
            if running
                && ports
                    .iter()
                    .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no listener came up in time".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config_text(&self) -> String {
        let mut text = String::from(
            "# Written by the affectd test harness.\n\
             user root\n\
             log_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             connection_messages true\n",
        );
        if self.persistence {
            text += &format!(
                "persistence true\npersistence_location {}/\nmax_queued_messages 0\n",
                self.dir.path().display()
            );
        } else {
            text += "persistence false\n";
        }
        match &self.password_file {
            Some(p) => {
                text += &format!("allow_anonymous false\npassword_file {}\n", p.display());
            }
            None => text += "allow_anonymous true\n",
        }
        text += &format!("listener {} 127.0.0.1\n", self.port);
        if let Some(tls) = &self.tls {
            for (port, require) in [(self.tls_port, false), (self.mtls_port, true)] {
                text += &format!(
                    "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                     require_certificate {require}\n",
                    tls.ca_cert.display(),
                    tls.server_cert.display(),
                    tls.server_key.display(),
                );
            }
        }
        text += &self.extra;
        text
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Runs `cmd` (openssl, say) to completion; panics with its stderr if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, by `openssl`.
fn make_tls_files(dir: &Path) -> TlsFiles {
    let p = |name: &str| dir.join(name);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt"))
        .args(["-days", "2", "-subj", "/CN=affectd test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
    for (name, cn, ext) in [
        (
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "affectd-test-client",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(
            p(&format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
        )
        .unwrap();
        run(Command::new("openssl")
            .arg("req")
            .args(ec)
            .arg("-keyout")
            .arg(p(&format!("{name}.key")))
            .arg("-out")
            .arg(p(&format!("{name}.csr")))
            .args(["-subj", &format!("/CN={cn}")]));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p(&format!("{name}.csr")))
            .arg("-CA")
            .arg(p("ca.crt"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p(&format!("{name}.crt")))
            .arg("-extfile")
            .arg(p(&format!("{name}.ext"))));
    }
    TlsFiles {
        ca_cert: p("ca.crt"),
        server_cert: p("server.crt"),
        server_key: p("server.key"),
        client_cert: p("client.crt"),
        client_key: p("client.key"),
    }
}

/// One message as a subscriber saw it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Set when the broker delivered it from its retained store (at subscribe time).
    pub retain: bool,
    pub at: Instant,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

#[derive(Default)]
struct Inbox {
    messages: Vec<Msg>,
    /// Subscriptions acknowledged (one per connection).
    subscribed: u64,
}

/// A plain-TCP anonymous (or `with_login`) subscriber on its own thread. It re-subscribes
/// after every reconnect, so it follows a broker restart.
pub struct Subscriber {
    inbox: Arc<(Mutex<Inbox>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Subscribes to `filter` on the broker's plain port and waits for the SUBACK.
    pub fn new(broker: &Mosquitto, filter: &str) -> Subscriber {
        Self::with_login(broker, filter, None)
    }

    pub fn with_login(broker: &Mosquitto, filter: &str, login: Option<(&str, &str)>) -> Subscriber {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!(
            "test-sub-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self::start(broker, filter, login, id, true)
    }

    /// A subscriber with a persistent session (clean session off) as `client_id`: while it is
    /// away (a broker restart) the broker queues its QoS 1 messages, given `persistence`.
    pub fn persistent(broker: &Mosquitto, filter: &str, client_id: &str) -> Subscriber {
        Self::start(broker, filter, None, client_id.to_owned(), false)
    }

    fn start(
        broker: &Mosquitto,
        filter: &str,
        login: Option<(&str, &str)>,
        id: String,
        clean_session: bool,
    ) -> Subscriber {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
        options
            .set_clean_session(clean_session)
            .set_keep_alive(Duration::from_secs(5))
            .set_transport(Transport::Tcp)
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut connection) = Client::new(options, 16);
        let inbox: Arc<(Mutex<Inbox>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (inbox, stop, filter) = (inbox.clone(), stop.clone(), filter.to_owned());
            std::thread::Builder::new()
                .name("test-subscriber".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match connection.recv_timeout(Duration::from_millis(50)) {
                            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                                let _ = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
                            }
                            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                                inbox.0.lock().unwrap().subscribed += 1;
                                inbox.1.notify_all();
                            }
                            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                                inbox.0.lock().unwrap().messages.push(Msg {
                                    topic: p.topic,
                                    payload: p.payload.to_vec(),
                                    retain: p.retain,
                                    at: Instant::now(),
                                });
                                inbox.1.notify_all();
                            }
                            Ok(Ok(_)) | Err(_) => {}
                            // Broker gone: rumqttc reconnects on the next call.
                            Ok(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                        }
                    }
                    let _ = client.try_disconnect();
                })
                .expect("spawn subscriber")
        };
        let subscriber = Subscriber {
            inbox,
            stop,
            thread: Some(thread),
        };
        assert!(
            subscriber.wait_subscribed(1, Duration::from_secs(5)),
            "subscriber got no SUBACK"
        );
        subscriber
    }

    /// Waits until `n` subscriptions (one per connection) were acknowledged.
    pub fn wait_subscribed(&self, n: u64, timeout: Duration) -> bool {
        let (lock, cvar) = &*self.inbox;
        let guard = lock.lock().unwrap();
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |i| i.subscribed < n)
            .unwrap();
        guard.subscribed >= n
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<Msg> {
        self.inbox.0.lock().unwrap().messages.clone()
    }

    /// How many messages were received so far: a mark for [`Subscriber::wait_for_after`].
    pub fn mark(&self) -> usize {
        self.inbox.0.lock().unwrap().messages.len()
    }

    /// The first received message matching `pred`, waiting up to `timeout` for it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        self.wait_for_after(0, timeout, pred)
    }

    /// Like [`Subscriber::wait_for`], looking only at messages after `mark`.
    pub fn wait_for_after(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Option<Msg> {
        let (lock, cvar) = &*self.inbox;
        let deadline = Instant::now() + timeout;
        let mut guard = lock.lock().unwrap();
        loop {
            if let Some(m) = guard.messages.iter().skip(mark).find(|m| pred(m)) {
                return Some(m.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            guard = cvar.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
