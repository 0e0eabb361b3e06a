//! Configuration of one raylet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// What a raylet needs to run a node.
#[derive(Clone, Debug)]
pub struct RayletConfig {
    /// This node's id (unique in the cluster).
    pub node_id: String,
    /// Resources to offer, by name ("CPU", "memory", custom); GPUs come from `num_gpus`.
    pub resources: BTreeMap<String, f64>,
    /// GPUs on this node (detected, or declared with `--num-gpus`).
    pub num_gpus: u32,
    /// The program re-executed as a worker (embedded mode: the driver's own binary).
    pub worker_binary: PathBuf,
    /// Arguments for it.
    pub worker_args: Vec<String>,
    /// Environment for it (beyond what the raylet sets).
    pub worker_env: BTreeMap<String, String>,
    /// Shared workers started ahead of demand.
    pub prestart_workers: usize,
    /// Idle shared workers kept; extra idle ones exit.
    pub max_idle_workers: usize,
    /// Shared actor-host processes per job on this node (actors that need no process of
    /// their own are spread over these; see `actor_hosts`).
    pub actor_hosts_per_job: usize,
    /// How long a shared actor host may stay without actors before it exits (an idle host
    /// holds a process and its memory; a job that makes actors again soon reuses it).
    pub host_idle_grace: Duration,
    /// How long a new worker has to register before its start counts as failed.
    pub worker_start_timeout: Duration,
    /// The GCS (comma-separated replicas).
    pub gcs_address: String,
    /// Shared-memory directory for the object store.
    pub object_store_dir: PathBuf,
    /// Spill directory for the object store.
    pub spill_dir: PathBuf,
    /// Object store capacity in bytes.
    pub object_store_bytes: u64,
    /// How long a put waits for space in a full store before failing.
    pub object_store_full_timeout: Duration,
    /// Labels (for operators and placement).
    pub labels: BTreeMap<String, String>,
    /// The node's own directory: job binaries fetched to this node live here.
    pub node_dir: PathBuf,
    /// Lease requests that may wait here for resources at once; more are refused
    /// (`ResourceExhausted`) and their requesters back off and ask again.
    pub max_queued_leases: usize,
    /// How long one lease request waits here before it is answered "ask again" (the
    /// requester re-asks, so a long wait still works, but no request lives here unbounded
    /// after its requester went silent).
    pub lease_wait_limit: Duration,
}

/// More GPUs than any machine has: a typo, not a node.
pub const MAX_GPUS: u32 = 1024;

impl RayletConfig {
    /// Checks the configuration; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let invalid = |reason: String| {
            Err(crate::Error::InvalidRequest {
                what: "the raylet configuration".into(),
                reason,
            })
        };
        if self.num_gpus > MAX_GPUS {
            return invalid(format!(
                "num_gpus {} is more than {MAX_GPUS}; declare the GPUs the node really has",
                self.num_gpus
            ));
        }
        if self.node_id.is_empty() {
            return invalid("node_id is empty".into());
        }
        if self.object_store_bytes == 0 {
            return invalid(
                "the object store capacity is 0 bytes; give it room (e.g. 2 GiB)".into(),
            );
        }
        if self.max_queued_leases == 0 {
            return invalid(
                "max_queued_leases is 0: no lease could ever wait; use at least 1".into(),
            );
        }
        if self.actor_hosts_per_job == 0 {
            return invalid(
                "actor_hosts_per_job is 0: actors need at least one host process per job; use 1 or more (default: the node's CPUs)".into(),
            );
        }
        if self.lease_wait_limit.is_zero() {
            return invalid("lease_wait_limit is 0: give waiting leases time (e.g. 30 s)".into());
        }
        if let Some(cpus) = self.resources.get("CPU") {
            if !cpus.is_finite() || *cpus < 0.0 {
                return invalid(format!("CPU is {cpus}; give a non-negative number of CPUs"));
            }
        }
        Ok(())
    }

    /// A node offering `cpus` CPUs and `num_gpus` GPUs, running `worker_binary` as workers.
    pub fn local(
        node_id: impl Into<String>,
        cpus: f64,
        num_gpus: u32,
        worker_binary: PathBuf,
        gcs_address: impl Into<String>,
    ) -> Self {
        let node_id = node_id.into();
        let shm = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        RayletConfig {
            resources: BTreeMap::from([("CPU".to_string(), cpus)]),
            num_gpus,
            worker_binary,
            worker_args: Vec::new(),
            worker_env: BTreeMap::new(),
            prestart_workers: cpus.ceil() as usize,
            max_idle_workers: (cpus.ceil() as usize).max(2) * 2,
            actor_hosts_per_job: (cpus.ceil() as usize).max(1),
            host_idle_grace: Duration::from_secs(3),
            worker_start_timeout: Duration::from_secs(30),
            gcs_address: gcs_address.into(),
            object_store_dir: shm.join(format!("fleet-{node_id}")),
            spill_dir: std::env::temp_dir().join(format!("fleet-spill-{node_id}")),
            object_store_bytes: 2 << 30,
            object_store_full_timeout: Duration::from_secs(30),
            labels: BTreeMap::new(),
            node_dir: std::env::temp_dir().join(format!("fleet-node-dir-{node_id}")),
            max_queued_leases: 1024,
            lease_wait_limit: Duration::from_secs(30),
            node_id,
        }
    }
}
