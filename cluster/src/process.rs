//! Processes: detached spawning, liveness that survives pid reuse, signals, log tails.
//!
//! A daemon is started in a session (and process group) of its own, so a terminal's Ctrl-C
//! or hang-up does not reach it and its children (a raylet's workers) share its group: one
//! signal to the group stops them all. A recorded process is its pid plus its start time
//! (from `/proc`), so a pid reused by an unrelated program after a reboot is never signalled.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A process started by a cluster: its pid and, where `/proc` tells, its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid (also its process group id: daemons lead their own group).
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: Option<u64>,
}

impl ProcessId {
    /// Records a running pid.
    pub fn of(pid: u32) -> Self {
        ProcessId {
            pid,
            start_ticks: start_ticks(pid),
        }
    }

    /// Whether the process still runs (not a zombie, not a reused pid).
    pub fn is_alive(&self) -> bool {
        if self.pid == 0 {
            return false;
        }
        match proc_stat(self.pid) {
            Some((state, start)) => {
                !matches!(state, 'Z' | 'X')
                    && match (self.start_ticks, start) {
                        (Some(recorded), Some(now)) => recorded == now,
                        _ => true,
                    }
            }
            // No /proc: ask the kernel.
            None if !Path::new("/proc/self/stat").exists() => send(self.pid as i32, 0),
            None => false,
        }
    }

    /// Whether any process of its group still runs.
    pub fn group_alive(&self) -> bool {
        self.pid != 0 && send(-(self.pid as i32), 0) && group_has_live_member(self.pid)
    }

    /// Sends `signal` to the process (if it is still the one recorded).
    pub fn signal(&self, signal: i32) -> bool {
        self.is_alive() && send(self.pid as i32, signal)
    }

    /// Sends `signal` to its whole process group.
    pub fn signal_group(&self, signal: i32) -> bool {
        self.pid != 0 && (self.is_alive() || self.group_alive()) && send(-(self.pid as i32), signal)
    }

    /// SIGTERM (to the process, or its group), then SIGKILL to the group after `grace`;
    /// returns once the process and its group are gone (or after 5 more seconds).
    pub fn stop(&self, grace: Duration, whole_group: bool) -> StopOutcome {
        if !self.is_alive() && !self.group_alive() {
            return StopOutcome::AlreadyGone;
        }
        if whole_group {
            self.signal_group(libc::SIGTERM);
        } else {
            self.signal(libc::SIGTERM);
        }
        if wait_until(grace, || !self.is_alive()) {
            // The leader is gone; what is left of its group gets no grace.
            if self.group_alive() {
                self.signal_group(libc::SIGKILL);
                wait_until(Duration::from_secs(5), || !self.group_alive());
            }
            return StopOutcome::Terminated;
        }
        self.signal_group(libc::SIGKILL);
        self.signal(libc::SIGKILL);
        wait_until(Duration::from_secs(5), || {
            !self.is_alive() && !self.group_alive()
        });
        StopOutcome::Killed
    }

    /// SIGKILL to the whole group, then wait (up to 5 s) until it is gone.
    pub fn kill_group(&self) {
        self.signal_group(libc::SIGKILL);
        self.signal(libc::SIGKILL);
        wait_until(Duration::from_secs(5), || {
            !self.is_alive() && !self.group_alive()
        });
    }
}

/// How [`ProcessId::stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// It was not running.
    AlreadyGone,
    /// It exited after SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
}

fn send(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) has no memory effects; any pid/signal pair is a valid call.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Polls `done` every 20 ms for up to `limit`; whether it became true.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if done() {
            return true;
        }
        if started.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (state, start ticks) from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, Option<u64>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; field 22 the start time.
    let start = fields.nth(18).and_then(|f| f.parse().ok());
    Some((state, start))
}

fn start_ticks(pid: u32) -> Option<u64> {
    proc_stat(pid).and_then(|(_, start)| start)
}

/// Whether a non-zombie process of group `pgid` exists (true where `/proc` is missing).
fn group_has_live_member(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = text.rfind(')') else {
            continue;
        };
        let mut fields = text[close + 1..].split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next());
        // Fields 4 (ppid) and 5 (pgrp).
        let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
        if pgrp == Some(pgid) && !matches!(state, Some('Z') | Some('X')) {
            return true;
        }
    }
    false
}

/// Starts `binary args` detached: its own session and process group, stdin from
/// /dev/null, stdout and stderr appended to `log`, with `env` added.
pub fn spawn_detached(
    daemon: &str,
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io("open", log, e))?;
    let err = out.try_clone().map_err(|e| Error::io("open", log, e))?;
    let mut command = Command::new(binary);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid(2) is async-signal-safe, touches no memory of the parent, and is all
    // the closure does between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| Error::Spawn {
        daemon: daemon.into(),
        binary: binary.to_path_buf(),
        source,
    })
}

/// The last `lines` lines of a log file (at most 16 KiB are read), or a note why none.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("  (no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(16 * 1024);
    if file.seek(SeekFrom::Start(from)).is_err() {
        return "  (log unreadable)".into();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return "  (log unreadable)".into();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return "  (log is empty)".into();
    }
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where object stores live: `/dev/shm` (shared memory) where it exists, else the temp dir.
pub fn shm_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A default object store size for each of `nodes` local nodes: a quarter of the shared
/// memory split among them, between 64 MiB and 2 GiB.
pub fn default_object_store_bytes(nodes: u64) -> u64 {
    let total = free_bytes(&shm_root()).unwrap_or(4 << 30);
    (total / 4 / nodes.max(1)).clamp(64 << 20, 2 << 30)
}

fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: c_path is a valid NUL-terminated string; stat points to writable memory of
    // the right type, initialised by statvfs on success.
    let ok = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } == 0;
    if !ok {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Milliseconds since the Unix epoch.
pub use fleet_gcs::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_reused_pid_is_not() {
        let me = ProcessId::of(std::process::id());
        assert!(me.is_alive());
        let reused = ProcessId {
            start_ticks: me.start_ticks.map(|t| t + 1),
            ..me
        };
        if me.start_ticks.is_some() {
            assert!(!reused.is_alive());
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("x.log");
        std::fs::write(&log, "a\nb\nc\nd\n")?;
        assert_eq!(tail(&log, 2), "  c\n  d");
        assert!(tail(&dir.path().join("none"), 2).contains("no log"));
        Ok(())
    }

    #[test]
    fn detached_child_leads_its_group_and_stops(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("sleep.log");
        let mut child = spawn_detached(
            "sleeper",
            Path::new("/bin/sh"),
            &["-c".into(), "sleep 30 & sleep 30".into()],
            &[],
            &log,
        )?;
        let id = ProcessId::of(child.id());
        assert!(id.is_alive());
        std::thread::sleep(Duration::from_millis(100));
        let outcome = id.stop(Duration::from_secs(2), true);
        let _ = child.wait();
        assert_ne!(outcome, StopOutcome::AlreadyGone);
        assert!(!id.is_alive());
        assert!(!id.group_alive());
        Ok(())
    }
}
