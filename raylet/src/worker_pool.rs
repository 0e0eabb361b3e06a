//! Worker processes: started from the configured binary in worker mode, registered by their
//! own RPC, watched until they exit. A worker's stdin is a pipe held by its watcher: when the
//! raylet goes away (or drops the pipe to retire the worker) the worker reads EOF and exits,
//! so no worker outlives its node daemon.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Environment variables that put `fleet::init()` into worker mode.
pub mod env {
    /// Set in worker processes: the worker's id.
    pub const WORKER_ID: &str = "FLEET_WORKER_ID";
    /// The raylet's address.
    pub const RAYLET_ADDRESS: &str = "FLEET_RAYLET_ADDRESS";
    /// The GCS's address.
    pub const GCS_ADDRESS: &str = "FLEET_GCS_ADDRESS";
    /// The node's id.
    pub const NODE_ID: &str = "FLEET_NODE_ID";
    /// GPU ids the worker may use (also in CUDA_VISIBLE_DEVICES).
    pub const GPU_IDS: &str = "FLEET_GPU_IDS";
    /// The object store's shared-memory directory.
    pub const OBJECT_STORE_DIR: &str = "FLEET_OBJECT_STORE_DIR";
    /// The job the worker serves (also set by `fleet job submit` for a driver).
    pub const JOB_ID: &str = "FLEET_JOB_ID";
    /// The SHA-256 of the job's uploaded binary (what nested tasks' workers run).
    pub const JOB_BINARY: &str = "FLEET_JOB_BINARY";
    /// Set (to `1`) in a shared actor host: it runs many actors, so stopping one of them
    /// never ends the process.
    pub const ACTOR_HOST: &str = "FLEET_ACTOR_HOST";
}

/// How a worker ended.
#[derive(Debug, Clone)]
pub struct WorkerExit {
    /// The worker.
    pub worker_id: String,
    /// Exit status as text (`exit status: 0`, `signal: 9 (SIGKILL)`).
    pub status: String,
}

/// Starts worker processes and reports their exits.
pub struct WorkerLauncher {
    binary: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    exits: mpsc::UnboundedSender<WorkerExit>,
}

/// A running worker's controls.
pub struct WorkerProcess {
    /// Process id.
    pub pid: u32,
    retire: Option<oneshot::Sender<bool>>,
}

impl WorkerProcess {
    /// Asks the worker to exit: gracefully (close its stdin) or at once (SIGKILL).
    pub fn retire(&mut self, kill: bool) {
        if let Some(tx) = self.retire.take() {
            let _ = tx.send(kill);
        }
    }
}

impl WorkerLauncher {
    /// A launcher; exits are reported on `exits`.
    pub fn new(
        binary: PathBuf,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        exits: mpsc::UnboundedSender<WorkerExit>,
    ) -> Self {
        WorkerLauncher {
            binary,
            args,
            env,
            exits,
        }
    }

    /// The worker binary.
    pub fn binary(&self) -> &PathBuf {
        &self.binary
    }

    /// Starts one worker with `env` added (its id, the raylet's address, GPU ids...).
    /// `program` replaces the launcher's binary and arguments (a job's uploaded binary).
    pub fn spawn(
        &self,
        worker_id: &str,
        program: Option<(&std::path::Path, &[String])>,
        extra_env: &[(&str, String)],
    ) -> Result<WorkerProcess> {
        let (binary, args) = match program {
            Some((binary, args)) => (binary, args),
            None => (self.binary.as_path(), self.args.as_slice()),
        };
        let mut command = Command::new(binary);
        command
            .args(args)
            .envs(&self.env)
            .env(env::WORKER_ID, worker_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // The cluster token goes through the environment, never the command line (`ps`
        // shows that to everyone).
        if let Some((key, value)) = fleet_gcs::auth::child_env() {
            command.env(key, value);
        }
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command.spawn().map_err(|e| Error::WorkerStart {
            binary: binary.to_path_buf(),
            reason: crate::limits::explain(&e),
        })?;
        let pid = child.id().unwrap_or_default();
        let stdin = child.stdin.take();
        let (retire_tx, retire_rx) = oneshot::channel::<bool>();
        let exits = self.exits.clone();
        let worker_id = worker_id.to_string();
        tokio::spawn(async move {
            let mut stdin = stdin;
            let status = tokio::select! {
                status = child.wait() => status,
                kill = retire_rx => {
                    match kill {
                        Ok(false) => {
                            // Graceful: EOF on stdin; SIGKILL if it lingers.
                            drop(stdin.take());
                            match tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await {
                                Ok(status) => status,
                                Err(_) => {
                                    let _ = child.start_kill();
                                    child.wait().await
                                }
                            }
                        }
                        _ => {
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    }
                }
            };
            drop(stdin);
            let status = match status {
                Ok(status) => describe_status(status),
                Err(e) => format!("unknown ({e})"),
            };
            let _ = exits.send(WorkerExit { worker_id, status });
        });
        Ok(WorkerProcess {
            pid,
            retire: Some(retire_tx),
        })
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                9 => " (SIGKILL)",
                15 => " (SIGTERM)",
                6 => " (SIGABRT)",
                11 => " (SIGSEGV)",
                _ => "",
            };
            return format!("killed by signal {signal}{name}");
        }
    }
    status.to_string()
}
