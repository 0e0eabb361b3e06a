//! Process-level tests: real `fleet` processes on loopback ports, killed with SIGKILL.
//!
//! They share the machine's two cores and time-sensitive elections, so they run one at a
//! time (a global lock), whatever the harness's parallelism.

mod bad_input;
mod chaos;
mod disk_full;
mod gcs_cluster;

use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());

/// Held for the duration of each process test.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `fleet` binary under test.
pub fn fleet_binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_fleet"))
}
