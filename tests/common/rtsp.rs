//! A real RTSP server (gst-rtsp-server) on 127.0.0.1 for integration tests.
//!
//! The server runs its own glib `MainLoop` on a thread. [`RtspServer::stop`] disconnects every
//! client and closes the listening socket, as if the camera died; [`RtspServer::restart`]
//! serves again on the same port.
//!
//! Include it with `#[path = "common/rtsp.rs"] mod rtsp;`.

#![allow(dead_code)]

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gstreamer_rtsp_server as rtsp_server;
use rtsp_server::glib;
use rtsp_server::prelude::*;

/// An RTSP server serving one mount.
pub struct RtspServer {
    port: u16,
    mount: String,
    launch: String,
    /// Basic-auth user and password the server demands, if any.
    credentials: Option<(String, String)>,
    running: Option<Running>,
}

struct Running {
    main_loop: glib::MainLoop,
    thread: JoinHandle<()>,
}

impl RtspServer {
    /// Serves the gst-rtsp-server launch line `launch` (its payloader named `pay0`) at
    /// `/mount` on a free port. GStreamer must be initialised.
    pub fn start(mount: &str, launch: &str) -> RtspServer {
        Self::start_inner(mount, launch, None)
    }

    /// Like [`start`](Self::start), but clients must log in with basic auth.
    pub fn start_with_login(mount: &str, launch: &str, user: &str, password: &str) -> RtspServer {
        Self::start_inner(mount, launch, Some((user.to_owned(), password.to_owned())))
    }

    fn start_inner(mount: &str, launch: &str, credentials: Option<(String, String)>) -> RtspServer {
        let mut server = RtspServer {
            port: 0,
            mount: mount.trim_start_matches('/').to_owned(),
            launch: launch.to_owned(),
            credentials,
            running: None,
        };
        server.serve();
        server
    }

    /// A launch line serving an MP4 file's H.264 track in real time.
    pub fn mp4_launch(path: &std::path::Path) -> String {
        format!(
            "( filesrc location=\"{}\" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )",
            path.display()
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rtsp://127.0.0.1:PORT/mount`.
    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/{}", self.port, self.mount)
    }

    /// Disconnects all clients and closes the listening socket.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.main_loop.quit();
            running.thread.join().expect("RTSP server thread panicked");
        }
    }

    /// Serves again on the same port (retrying for a few seconds while the port is busy).
    pub fn restart(&mut self) {
        self.stop();
        self.serve();
    }

    fn serve(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.try_serve() {
                Ok(running) => {
                    self.running = Some(running);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("RTSP server on port {} not up yet: {e}", self.port);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("RTSP server cannot listen on port {}: {e}", self.port),
            }
        }
    }

    fn try_serve(&mut self) -> Result<Running, String> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (port, mount, launch) = (self.port, self.mount.clone(), self.launch.clone());
        let credentials = self.credentials.clone();
        let thread = std::thread::Builder::new()
            .name(format!("rtsp-server-{port}"))
            .spawn(move || {
                let context = glib::MainContext::new();
                let main_loop = glib::MainLoop::new(Some(&context), false);
                let server = rtsp_server::RTSPServer::new();
                server.set_address("127.0.0.1");
                server.set_service(&port.to_string());
                let factory = rtsp_server::RTSPMediaFactory::new();
                factory.set_launch(&launch);
                factory.set_shared(true);
                if let Some((user, password)) = &credentials {
                    let auth = rtsp_server::RTSPAuth::new();
                    let token = rtsp_server::RTSPToken::builder()
                        .field(rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
                        .build();
                    auth.add_basic(&rtsp_server::RTSPAuth::make_basic(user, password), &token);
                    server.set_auth(Some(&auth));
                    let role = gstreamer::Structure::builder("viewer")
                        .field(rtsp_server::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                        .field(rtsp_server::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                        .build();
                    factory.add_role_from_structure(&role);
                }
                server
                    .mount_points()
                    .expect("a new server has mount points")
                    .add_factory(&format!("/{mount}"), factory);
                let source = match server.attach(Some(&context)) {
                    Ok(source) => source,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let port = u16::try_from(server.bound_port()).unwrap_or(0);
                let _ = ready_tx.send(Ok((main_loop.clone(), port)));
                main_loop.run();
                // The "camera" dies: drop every client connection and the listening socket.
                server.client_filter(Some(&mut |_, _| rtsp_server::RTSPFilterResult::Remove));
                if let Some(source) = context.find_source_by_id(&source) {
                    source.destroy();
                }
                while context.iteration(false) {}
            })
            .map_err(|e| e.to_string())?;
        match ready_rx.recv() {
            Ok(Ok((main_loop, port))) => {
                self.port = port;
                Ok(Running { main_loop, thread })
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err("the server thread ended early".into())
            }
        }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.stop();
    }
}
