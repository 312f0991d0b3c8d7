//! The durable outbox (`[mqtt] outbox = "disk"`): every result is written to a spool file in
//! `[mqtt] outbox_dir` before it is handed to the broker, and removed once the broker has
//! acknowledged it (QoS 1 PUBACK, QoS 2 PUBREC/PUBCOMP; QoS 0 once written to the socket).
//! What is still in the spool at start is replayed first, in `seq` order.
//!
//! In: [`Op`]s from the [`Outbox`](super::outbox::Outbox) (put, acknowledged, dropped), on an
//! unbounded channel that the outbox's own capacity bounds. Out: after each commit, the highest
//! `seq` now on disk, to the callback given to [`Spool::spawn_writer`] (the publisher then hands
//! those results to the broker). Owns: the spool file `outbox.redb` (opened exclusively: a
//! second daemon on the same folder is refused), the writer thread `outbox-spool`, and
//! `seq` (the per-node message counter, [`SeqFile`]).
//!
//! **Store**: [redb](https://docs.rs/redb), an embedded, pure-Rust, ACID key-value store
//! (copy-on-write B-trees, checksummed pages, crash-safe commits, one writer process enforced
//! by a file lock). It is what this needs and no more: ordered `u64` keys (`seq`), one atomic
//! commit for "these arrived, those were acknowledged, the counter is now N", no server, no C
//! library to build (SQLite would work too, through a C dependency; sled is unmaintained; an
//! append-only log of our own would be a home-made database with its own recovery bugs).
//!
//! **fsync policy: group commit.** The writer thread takes everything queued since its last
//! commit (new results, acknowledgements, drops) and commits it as one transaction with
//! [`Durability::Immediate`] (fsync before `commit` returns). While a commit is on its way to
//! the disk, new operations queue and go together in the next one, so the fsync rate adapts to
//! the load: one per result when results are sparse, one per batch under load. No caller ever
//! waits for the disk: `publish` queues the operation and returns; a result is handed to the
//! broker only once the commit holding it has returned. A crash loses at most the results of
//! the commit in progress (never sent, so no subscriber saw their `seq`); an acknowledged result
//! whose deletion was not yet committed is sent again after a restart (a QoS 1 duplicate,
//! recognisable by its `seq`). BENCHMARKS.md has the measured cost.
//!
//! **A spool that cannot be read** (corrupt, truncated, not a redb file) is logged, renamed to
//! `outbox.redb.corrupt-<unix seconds>` (kept for inspection, never deleted) and replaced by a
//! fresh one; `seq` then continues from [`SeqFile`], so the lost results show as a gap. A spool
//! that another process holds, or a folder that cannot be written, stops the start instead,
//! naming `mqtt.outbox_dir`. A failed commit (disk full) is logged and its results go out
//! unspooled: delivery never waits on a broken disk.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// Results not yet acknowledged: `seq` -> topic and payload ([`encode`]).
const RESULTS: TableDefinition<u64, &[u8]> = TableDefinition::new("results");
/// Counters: [`NEXT_SEQ`], [`DROPPED_TOTAL`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
const DROPPED_TOTAL: &str = "dropped_total";

/// The spool file's name in `outbox_dir`.
pub(crate) const SPOOL_FILE: &str = "outbox.redb";
/// The `seq` high-water mark's file name in `outbox_dir`.
pub(crate) const SEQ_FILE: &str = "seq";
/// Operations in one commit, at most (bounds a transaction's size under a burst).
const MAX_BATCH: usize = 4096;
/// Failed commits are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Why the spool could not be opened; the start stops (exit 2) naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", .path.display())]
pub(crate) struct OpenError {
    pub path: PathBuf,
    pub message: String,
}

/// One change to the spool, in the order the outbox made it.
#[derive(Debug)]
pub(crate) enum Op {
    /// A new result: `seq` and [`encode`]d topic and payload.
    Put(u64, Vec<u8>),
    /// The broker acknowledged this result.
    Acked(u64),
    /// The outbox dropped this result (full); counted in `dropped_total`.
    Dropped(u64),
}

/// A result found in the spool at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spooled {
    pub seq: u64,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// An open spool and what it held.
pub(crate) struct Spool {
    db: Database,
    /// Results left unacknowledged by the last run, oldest first.
    pub pending: Vec<Spooled>,
    /// The first `seq` never written to this spool (1 for a new one).
    pub next_seq: u64,
    /// Results dropped (outbox full) over the spool's life.
    pub dropped_total: u64,
    /// Where an unreadable spool was moved to at this start.
    pub quarantined: Option<PathBuf>,
}

/// Commit counters, read by `Publisher::stats`.
#[derive(Debug, Default)]
pub(crate) struct SpoolCounters {
    pub commits: AtomicU64,
    pub commit_micros: AtomicU64,
    pub max_commit_micros: AtomicU64,
    pub ops: AtomicU64,
    pub errors: AtomicU64,
}

/// The writer thread; [`Writer::close`] commits what is queued and stops it.
pub(crate) struct Writer {
    pub counters: Arc<SpoolCounters>,
    tx: Option<Sender<Op>>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Spool {
    /// Opens (or creates) `dir/outbox.redb`. An unreadable file is quarantined and replaced.
    pub fn open(dir: &Path) -> Result<Spool, OpenError> {
        let fail = |message: String| OpenError {
            path: dir.to_path_buf(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create: {e}")))?;
        let path = dir.join(SPOOL_FILE);
        match open_file(&path) {
            Ok(spool) => Ok(spool),
            Err(Unreadable::Fatal(message)) => Err(fail(message)),
            Err(Unreadable::Corrupt(reason)) => {
                let secs = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let aside = dir.join(format!("{SPOOL_FILE}.corrupt-{secs}"));
                std::fs::rename(&path, &aside).map_err(|e| {
                    fail(format!(
                        "{SPOOL_FILE} is unreadable ({reason}) and cannot be moved aside: {e}"
                    ))
                })?;
                tracing::error!(
                    spool = %path.display(),
                    moved_to = %aside.display(),
                    error = %reason,
                    "MQTT outbox spool is unreadable; moved aside, starting a fresh one \
                     (its unsent results are lost; seq continues from the seq file)"
                );
                match open_file(&path) {
                    Ok(mut spool) => {
                        spool.quarantined = Some(aside);
                        Ok(spool)
                    }
                    Err(Unreadable::Fatal(m) | Unreadable::Corrupt(m)) => Err(fail(m)),
                }
            }
        }
    }

    /// Starts the writer thread. `on_commit(upto)` runs after each commit (failed or not) with
    /// the highest `seq` put so far.
    pub fn spawn_writer(
        self,
        counters: Arc<SpoolCounters>,
        on_commit: impl Fn(u64) + Send + 'static,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let mut state = WriterState {
            db: self.db,
            next_seq: self.next_seq,
            dropped_total: self.dropped_total,
            counters: counters.clone(),
            error_logged: None,
        };
        let thread = std::thread::Builder::new()
            .name("outbox-spool".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter().take(MAX_BATCH - 1));
                    if let Some(upto) = state.commit(&batch) {
                        on_commit(upto);
                    }
                }
                let _ = done_tx.send(());
            })?;
        Ok(Writer {
            counters,
            tx: Some(tx),
            done,
            thread: Some(thread),
        })
    }
}

enum Unreadable {
    /// Not the file's fault (locked by another process, permissions): stop the start.
    Fatal(String),
    /// The file is damaged or not a spool: quarantine it.
    Corrupt(String),
}

fn open_file(path: &Path) -> Result<Spool, Unreadable> {
    // redb's debug builds assert on some impossible-page states; a corrupt file must not be a
    // panic in any build.
    match catch_unwind(AssertUnwindSafe(|| read_file(path))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic while reading".into());
            Err(Unreadable::Corrupt(what))
        }
    }
}

fn read_file(path: &Path) -> Result<Spool, Unreadable> {
    let db = Database::create(path).map_err(|e| classify(redb::Error::from(e)))?;
    let corrupt = |e: redb::Error| classify(e);
    // Create the tables if new (a no-op commit otherwise).
    let txn = db.begin_write().map_err(|e| corrupt(e.into()))?;
    {
        txn.open_table(RESULTS).map_err(|e| corrupt(e.into()))?;
        txn.open_table(META).map_err(|e| corrupt(e.into()))?;
    }
    txn.commit().map_err(|e| corrupt(e.into()))?;
    let read = db.begin_read().map_err(|e| corrupt(e.into()))?;
    let results = read.open_table(RESULTS).map_err(|e| corrupt(e.into()))?;
    let meta = read.open_table(META).map_err(|e| corrupt(e.into()))?;
    let mut pending = Vec::new();
    for entry in results.iter().map_err(|e| corrupt(e.into()))? {
        let (seq, value) = entry.map_err(|e| corrupt(e.into()))?;
        let (topic, payload) = decode(value.value())
            .ok_or_else(|| Unreadable::Corrupt(format!("record {} is malformed", seq.value())))?;
        pending.push(Spooled {
            seq: seq.value(),
            topic,
            payload,
        });
    }
    let get = |key: &str| -> Result<u64, Unreadable> {
        Ok(meta
            .get(key)
            .map_err(|e| corrupt(e.into()))?
            .map_or(0, |v| v.value()))
    };
    let last = pending.last().map_or(0, |s| s.seq);
    let next_seq = get(NEXT_SEQ)?.max(last + 1).max(1);
    let dropped_total = get(DROPPED_TOTAL)?;
    drop((results, meta, read));
    Ok(Spool {
        db,
        pending,
        next_seq,
        dropped_total,
        quarantined: None,
    })
}

fn classify(e: redb::Error) -> Unreadable {
    use std::io::ErrorKind;
    match e {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            Unreadable::Fatal(format!("{SPOOL_FILE} is in use by another process ({e})"))
        }
        redb::Error::Io(io)
            if !matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) =>
        {
            Unreadable::Fatal(format!("cannot open {SPOOL_FILE}: {io}"))
        }
        other => Unreadable::Corrupt(other.to_string()),
    }
}

struct WriterState {
    db: Database,
    next_seq: u64,
    dropped_total: u64,
    counters: Arc<SpoolCounters>,
    error_logged: Option<Instant>,
}

impl WriterState {
    /// Commits `batch` (fsync); returns the highest `seq` put so far, if any was put.
    fn commit(&mut self, batch: &[Op]) -> Option<u64> {
        let started = Instant::now();
        let mut put = None;
        let mut dropped = 0;
        for op in batch {
            match op {
                Op::Put(seq, _) => put = Some(*seq),
                Op::Dropped(_) => dropped += 1,
                Op::Acked(_) => {}
            }
        }
        let next_seq = put.map_or(self.next_seq, |s| self.next_seq.max(s + 1));
        let dropped_total = self.dropped_total + dropped;
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut results = txn.open_table(RESULTS)?;
                for op in batch {
                    match op {
                        Op::Put(seq, value) => {
                            results.insert(*seq, value.as_slice())?;
                        }
                        Op::Acked(seq) | Op::Dropped(seq) => {
                            results.remove(*seq)?;
                        }
                    }
                }
                let mut meta = txn.open_table(META)?;
                meta.insert(NEXT_SEQ, next_seq)?;
                meta.insert(DROPPED_TOTAL, dropped_total)?;
            }
            txn.commit()?;
            Ok(())
        })();
        let micros = started.elapsed().as_micros() as u64;
        let c = &self.counters;
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
        c.commit_micros.fetch_add(micros, Ordering::Relaxed);
        c.max_commit_micros.fetch_max(micros, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.next_seq = next_seq;
                self.dropped_total = dropped_total;
            }
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                if self.error_logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    self.error_logged = Some(Instant::now());
                    tracing::error!(
                        error = %e,
                        failures = c.errors.load(Ordering::Relaxed),
                        "MQTT outbox spool commit failed; these results are sent unspooled"
                    );
                }
            }
        }
        put
    }
}

impl Writer {
    /// Queues `op`; false once the writer is closed.
    pub fn send(&self, op: Op) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(op).is_ok())
    }

    /// Commits what is queued and stops the thread, waiting at most `timeout`. True when it
    /// finished in time.
    pub fn close(&mut self, timeout: Duration) -> bool {
        self.tx.take();
        let finished = self.done.recv_timeout(timeout).is_ok();
        if finished && let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        finished
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Disconnecting lets the thread commit what is queued and end; it is not waited for.
        self.tx.take();
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("open", &self.tx.is_some())
            .finish()
    }
}

/// Topic and payload as one spool value: topic length (u16, big-endian), topic, payload.
pub(crate) fn encode(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(2 + topic.len() + payload.len());
    value.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    value.extend_from_slice(topic.as_bytes());
    value.extend_from_slice(payload);
    value
}

fn decode(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let len = u16::from_be_bytes(value.get(..2)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(value.get(2..2 + len)?).ok()?.to_owned();
    Some((topic, value[2 + len..].to_vec()))
}

/// The high-water mark of `seq` in `outbox_dir/seq`, so that `seq` keeps growing across
/// restarts without a disk write per message: numbers are reserved in blocks of
/// [`SeqFile::BLOCK`] (the file says the first number not reserved; written to a temporary
/// file, fsynced, renamed). A clean shutdown writes the exact next number; after a crash `seq`
/// resumes at the reserved mark, a jump forward that subscribers see as a gap (with the memory
/// outbox a crash loses the queued results anyway). With the disk outbox the spool holds the
/// exact counter; this file only carries it over a quarantined spool.
#[derive(Debug)]
pub(crate) struct SeqFile {
    path: PathBuf,
    reserved: u64,
}

impl SeqFile {
    pub const BLOCK: u64 = 4096;

    /// Reads `dir/seq` (absent: 1). An unreadable file is logged and counts as absent.
    pub fn open(dir: &Path) -> std::io::Result<(SeqFile, u64)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(SEQ_FILE);
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(n) => n.max(1),
                Err(_) => {
                    tracing::warn!(file = %path.display(), "seq file is malformed; ignored");
                    1
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e),
        };
        Ok((
            SeqFile {
                path,
                reserved: next,
            },
            next,
        ))
    }

    /// Makes sure `seq` is covered by the reservation on disk (a write every BLOCK numbers).
    pub fn cover(&mut self, seq: u64) {
        if seq < self.reserved {
            return;
        }
        let mark = seq + Self::BLOCK;
        match write_atomic(&self.path, mark) {
            Ok(()) => self.reserved = mark,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot write the seq file")
            }
        }
    }

    /// Records the exact next number (clean shutdown).
    pub fn finish(&mut self, next: u64) {
        match write_atomic(&self.path, next) {
            Ok(()) => self.reserved = next,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot write the seq file")
            }
        }
    }
}

/// The seq file, replaced durably (see [`crate::durable`]).
fn write_atomic(path: &Path, value: u64) -> std::io::Result<()> {
    crate::durable::replace_bytes(
        path,
        crate::durable::PRIVATE_MODE,
        format!("{value}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn put(spool: &Writer, seq: u64, topic: &str, payload: &str) {
        assert!(spool.send(Op::Put(seq, encode(topic, payload.as_bytes()))));
    }

    #[test]
    fn what_is_not_acknowledged_is_replayed_in_order_and_seq_continues() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!((spool.pending.len(), spool.next_seq), (0, 1));
        let committed = Arc::new(Mutex::new(Vec::new()));
        let seen = committed.clone();
        let mut writer = spool
            .spawn_writer(Arc::default(), move |upto| seen.lock().unwrap().push(upto))
            .unwrap();
        for seq in 1..=5 {
            put(&writer, seq, "a/b", &format!("m{seq}"));
        }
        writer.send(Op::Acked(2));
        writer.send(Op::Dropped(1));
        assert!(writer.close(Duration::from_secs(5)));
        assert_eq!(committed.lock().unwrap().last(), Some(&5));

        let spool = Spool::open(dir.path()).unwrap();
        let got: Vec<(u64, String)> = spool
            .pending
            .iter()
            .map(|s| (s.seq, String::from_utf8(s.payload.clone()).unwrap()))
            .collect();
        assert_eq!(got, [(3, "m3".into()), (4, "m4".into()), (5, "m5".into())]);
        assert_eq!(spool.pending[0].topic, "a/b");
        assert_eq!((spool.next_seq, spool.dropped_total), (6, 1));
        assert!(spool.quarantined.is_none());
    }

    #[test]
    fn an_unreadable_spool_is_moved_aside_and_a_fresh_one_starts() {
        let dir = tempfile::tempdir().unwrap();
        let junk: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        std::fs::write(dir.path().join(SPOOL_FILE), &junk).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let aside = spool.quarantined.clone().expect("quarantined");
        assert_eq!(std::fs::read(&aside).unwrap(), junk, "kept as it was");
        assert!(spool.pending.is_empty());
        assert_eq!(spool.next_seq, 1);
    }

    #[test]
    fn a_second_opener_is_refused_not_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path()).unwrap();
        let e = Spool::open(dir.path()).err().expect("refused");
        assert!(e.message.contains("in use"), "{e}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|f| !f
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("corrupt"))
        );
    }

    #[test]
    fn seq_file_reserves_blocks_and_finish_records_the_exact_next() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, next) = SeqFile::open(dir.path()).unwrap();
        assert_eq!(next, 1);
        file.cover(1);
        // A crash now: the next start resumes past the reservation.
        let (_, after_crash) = SeqFile::open(dir.path()).unwrap();
        assert_eq!(after_crash, 1 + SeqFile::BLOCK);
        file.finish(42);
        assert_eq!(SeqFile::open(dir.path()).unwrap().1, 42);
    }
}
