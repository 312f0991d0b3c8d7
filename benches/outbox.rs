//! The cost of the durable outbox: results/s from `publish` to the broker's acknowledgement
//! with `[mqtt] outbox = "memory"` and `"disk"` (redb spool, group commit, fsync per commit),
//! and the spool's commit latency, against a real mosquitto on 127.0.0.1.
//!
//! Two loads: a burst (`AFFECTD_BENCH_BURST` results, default 20000, queued at once: the most
//! the publisher can push, commits carry large batches) and a paced stream
//! (`AFFECTD_BENCH_RATE` results/s for `AFFECTD_BENCH_SECONDS`, default 200/s for 10 s: a busy
//! node; commits carry one or two results, so each is close to one fsync). Payloads are
//! `AFFECTD_BENCH_BYTES` (default 600, a person message without its embedding).
//!
//! Run: `cargo bench --bench outbox` (set `AFFECTD_BENCH_DIR` to put the spool on another disk;
//! default: the system temp dir).

#[path = "../tests/common/mosquitto.rs"]
mod mosquitto;

mod common;

use std::time::{Duration, Instant};

use affectd::publish::{self, MqttConfig, OutboxMode, Publisher, Stats};
use common::env_or;
use mosquitto::Mosquitto;
use tokio_util::sync::CancellationToken;

struct Run {
    label: String,
    results: u64,
    elapsed: Duration,
    stats: Stats,
}

impl Run {
    fn print(&self) {
        let s = &self.stats;
        let commits = s.spool_commits.max(1);
        println!(
            "{:<24} {:>7} results in {:>7.2} s = {:>8.0} results/s acknowledged | commits {:>6}, \
             mean {:>6} us, max {:>7} us, {:>6.1} ops/commit",
            self.label,
            self.results,
            self.elapsed.as_secs_f64(),
            self.results as f64 / self.elapsed.as_secs_f64(),
            s.spool_commits,
            s.spool_commit_micros / commits,
            s.spool_commit_max_micros,
            s.spool_ops as f64 / commits as f64,
        );
    }
}

async fn start(broker: &Mosquitto, mode: OutboxMode, node: &str) -> (Publisher, tempfile::TempDir) {
    let dir = match std::env::var_os("AFFECTD_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("spool folder");
    let config = MqttConfig {
        port: broker.port(),
        outbox: mode,
        outbox_dir: Some(dir.path().to_path_buf()),
        outbox_capacity: 1_000_000,
        ..MqttConfig::default()
    };
    let publisher = publish::start(&config, node, CancellationToken::new()).expect("start");
    let mut connected = publisher.ever_connected();
    connected.wait_for(|c| *c).await.expect("connect");
    // `online` and the outbox status.
    wait_acked(&publisher, 2).await;
    (publisher, dir)
}

async fn wait_acked(publisher: &Publisher, n: u64) {
    while publisher.stats().acked < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn payload(seq: u64, bytes: usize) -> Vec<u8> {
    let mut p = format!("{{\"seq\":{seq},\"pad\":\"").into_bytes();
    p.resize(bytes.saturating_sub(2).max(p.len()), b'x');
    p.extend_from_slice(b"\"}");
    p
}

async fn burst(broker: &Mosquitto, mode: OutboxMode, n: u64, bytes: usize) -> Run {
    let node = format!("bench-burst-{mode:?}").to_lowercase();
    let (publisher, _dir) = start(broker, mode, &node).await;
    let topic = format!("affectd/{node}/r");
    let base = publisher.stats().acked;
    let t0 = Instant::now();
    for _ in 0..n {
        publisher
            .publish_numbered(topic.as_str(), |seq| payload(seq, bytes))
            .unwrap();
    }
    wait_acked(&publisher, base + n).await;
    let elapsed = t0.elapsed();
    let stats = publisher.stats();
    publisher.shutdown(Duration::from_secs(5)).await;
    Run {
        label: format!("burst, {mode:?}"),
        results: n,
        elapsed,
        stats,
    }
}

async fn paced(broker: &Mosquitto, mode: OutboxMode, rate: u64, secs: u64, bytes: usize) -> Run {
    let node = format!("bench-paced-{mode:?}").to_lowercase();
    let (publisher, _dir) = start(broker, mode, &node).await;
    let topic = format!("affectd/{node}/r");
    let base = publisher.stats().acked;
    let n = rate * secs;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let t0 = Instant::now();
    for _ in 0..n {
        tick.tick().await;
        publisher
            .publish_numbered(topic.as_str(), |seq| payload(seq, bytes))
            .unwrap();
    }
    wait_acked(&publisher, base + n).await;
    let elapsed = t0.elapsed();
    let stats = publisher.stats();
    publisher.shutdown(Duration::from_secs(5)).await;
    Run {
        label: format!("{rate}/s paced, {mode:?}"),
        results: n,
        elapsed,
        stats,
    }
}

fn main() {
    let n: u64 = env_or("AFFECTD_BENCH_BURST", 20_000);
    let rate: u64 = env_or("AFFECTD_BENCH_RATE", 200);
    let secs: u64 = env_or("AFFECTD_BENCH_SECONDS", 10);
    let bytes: usize = env_or("AFFECTD_BENCH_BYTES", 600);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = Mosquitto::start();
    runtime.block_on(async {
        for mode in [OutboxMode::Memory, OutboxMode::Disk] {
            burst(&broker, mode, n, bytes).await.print();
        }
        for mode in [OutboxMode::Memory, OutboxMode::Disk] {
            paced(&broker, mode, rate, secs, bytes).await.print();
        }
    });
}
