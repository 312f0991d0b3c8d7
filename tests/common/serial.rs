//! Keeps wall-clock bounds apart from CPU load inside one test binary.
//!
//! Cargo runs the test binaries one after another, and the tests of one binary in parallel
//! threads (as many as there are cores: 2 on CI). A test that asserts a wall-clock bound (a
//! frame rate, a recovery time, a watchdog gap, a shutdown deadline) must not share those
//! cores with one that saturates them (a ViT-B/32 daemon, a 4K decode, a browser, a
//! throughput run). So the first kind holds [`timed`] for its whole run and the second
//! [`heavy`]: timed tests run beside each other and beside light ones, a heavy test runs with
//! no timed test beside it. The README's "Tests" section says which tests are which.

#![allow(dead_code)]

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static CORES: RwLock<()> = RwLock::new(());

/// A test's share of the cores, held until it is dropped at the end of the test. It is only
/// ever waited for between tests (never while a test waits on its own work), so holding it
/// across an `.await` cannot deadlock.
pub enum Cores {
    Timed(RwLockReadGuard<'static, ()>),
    Heavy(RwLockWriteGuard<'static, ()>),
}

/// Held by a test that asserts a wall-clock bound: waits while a heavy test runs.
pub fn timed() -> Cores {
    // A test that panicked while holding the lock poisons it; the next test still runs.
    Cores::Timed(CORES.read().unwrap_or_else(|e| e.into_inner()))
}

/// Held by a test that keeps the cores busy: waits until no timed test runs.
pub fn heavy() -> Cores {
    Cores::Heavy(CORES.write().unwrap_or_else(|e| e.into_inner()))
}
