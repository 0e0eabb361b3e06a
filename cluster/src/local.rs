//! The local provider: every daemon on this machine, as a detached process group.
//!
//! [`LocalCluster::up`] starts the replicas, waits for a leader, starts the raylets, waits
//! until each is ALIVE in the GCS, and records everything in `cluster.json`; on failure it
//! stops what it started and returns the failing daemon's log tail. [`ClusterHandle`] is
//! what tests and the chaos harness drive: kill and restart nodes and replicas, find the
//! leader, stop the cluster. Another process gets a handle with [`ClusterHandle::attach`].

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_gcs::auth::{set_process_token, ClusterToken, TOKEN_FILE_NAME};
use fleet_gcs::GcsClient;

use crate::config::{ClusterConfig, Provider};
use crate::error::{Error, Result};
use crate::plan::{node_id, ClusterPlan};
use crate::process::{self, ProcessId, StopOutcome};
use crate::ready::{self, Pending};
use crate::state::ClusterState;

/// Lines of a failing daemon's log put in the error.
const TAIL_LINES: usize = 20;

/// Starts local clusters.
pub struct LocalCluster;

/// A running cluster: its recorded state and the processes this handle started.
pub struct ClusterHandle {
    state: ClusterState,
    /// Children of this process, reaped as they exit (empty for an attached handle).
    children: Vec<Child>,
    stop_on_drop: bool,
}

/// What `down` did to one daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// "gcs-1", "node-0".
    pub daemon: String,
    /// How it ended.
    pub outcome: StopOutcome,
}

impl LocalCluster {
    /// Starts `config` with `fleet_binary` under `cluster_dir`, and waits until it is ready
    /// (a leader, every raylet ALIVE) for up to `config.ready_timeout_secs`.
    pub async fn up(
        config: &ClusterConfig,
        fleet_binary: &Path,
        cluster_dir: &Path,
    ) -> Result<ClusterHandle> {
        Self::up_with(config, fleet_binary, cluster_dir, |_| {}).await
    }

    /// Like [`up`](Self::up), with `adjust` changing the plan before anything starts: the
    /// chaos harness gives each daemon its own IP and egress proxy there.
    pub async fn up_with(
        config: &ClusterConfig,
        fleet_binary: &Path,
        cluster_dir: &Path,
        adjust: impl FnOnce(&mut ClusterPlan),
    ) -> Result<ClusterHandle> {
        config.validate()?;
        if config.provider != Provider::Local {
            return Err(Error::Config {
                origin: "the cluster config".into(),
                key: "provider".into(),
                reason:
                    "is \"hosts\"; start it with the hosts provider (`fleet cluster up` picks it)"
                        .into(),
            });
        }
        if let Some(tls) = &config.tls {
            tls.adopt()?;
        }
        if let Some(previous) = ClusterState::load(cluster_dir)? {
            if previous.is_running() {
                return Err(Error::AlreadyRunning {
                    name: previous.name,
                    address: previous.address,
                    dir: cluster_dir.to_path_buf(),
                });
            }
            // A stale record (the daemons died, the machine rebooted): clean up after it.
            ClusterHandle::from_state(previous).down(Duration::ZERO)?;
        }
        if !config.nodes.is_empty() {
            check_has_command(fleet_binary, "raylet")?;
        }
        let ports = gcs_ports(config)?;
        for id in 1..=config.gcs.replicas {
            remove_dir(&cluster_dir.join(format!("gcs-{id}")))?;
        }
        let token = format!("{:08x}", rand::random::<u32>());
        let mut plan = ClusterPlan::new(config, cluster_dir, &process::shm_root(), &token, &ports);
        adjust(&mut plan);
        let cluster_token = ClusterToken::generate();
        let token_file = cluster_dir.join(TOKEN_FILE_NAME);
        cluster_token
            .write_file(&token_file)
            .map_err(|e| Error::io("write", &token_file, e))?;
        plan.hand_out_token_file(&token_file);
        // This process is the cluster's operator: its clients (readiness checks, the chaos
        // harness's driver) speak with the new token.
        set_process_token(cluster_token);
        for node in &plan.nodes {
            remove_dir(&node.node_dir)?;
        }
        for log in plan
            .gcs
            .iter()
            .map(|g| &g.log)
            .chain(plan.nodes.iter().map(|n| &n.log))
        {
            match std::fs::remove_file(log) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", log, e)),
            }
        }
        let mut handle = ClusterHandle {
            state: ClusterState::new(&plan, fleet_binary),
            children: Vec::new(),
            stop_on_drop: false,
        };
        handle.state.save()?;
        let timeout = Duration::from_secs(config.ready_timeout_secs);
        match handle.start_all(timeout).await {
            Ok(()) => Ok(handle),
            Err(error) => {
                let _ = handle.down(Duration::from_secs(2));
                Err(error)
            }
        }
    }
}

impl ClusterHandle {
    /// A handle on the cluster recorded in `cluster_dir` (started by another process).
    /// This process adopts the cluster's token (from `cluster_dir/token`).
    pub fn attach(cluster_dir: &Path) -> Result<Self> {
        match ClusterState::load(cluster_dir)? {
            Some(state) => {
                let token_file = cluster_dir.join(TOKEN_FILE_NAME);
                let token =
                    ClusterToken::read_file(&token_file).map_err(|reason| Error::Token {
                        path: token_file.clone(),
                        reason,
                    })?;
                set_process_token(token);
                Ok(Self::from_state(state))
            }
            None => Err(Error::NotRunning {
                name: cluster_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                dir: cluster_dir.to_path_buf(),
            }),
        }
    }

    /// A handle on a loaded state.
    pub fn from_state(state: ClusterState) -> Self {
        ClusterHandle {
            state,
            children: Vec::new(),
            stop_on_drop: false,
        }
    }

    /// SIGKILL every daemon and remove the object stores when the handle is dropped (for
    /// tests; by default the cluster outlives its handle).
    pub fn set_stop_on_drop(&mut self, stop: bool) {
        self.stop_on_drop = stop;
    }

    /// What `cluster.json` records.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The GCS address (`FLEET_ADDRESS`).
    pub fn address(&self) -> &str {
        &self.state.address
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// A client for the GCS.
    pub fn client(&self) -> Result<GcsClient> {
        Ok(GcsClient::connect(&self.state.address)?)
    }

    /// The current node ids, by node index.
    pub fn node_ids(&self) -> Vec<String> {
        self.state
            .nodes
            .iter()
            .map(|n| n.daemon.node_id.clone())
            .collect()
    }

    /// Node `index`'s object store directory.
    pub fn object_store_dir(&self, index: usize) -> Option<&Path> {
        self.state
            .nodes
            .get(index)
            .map(|n| n.daemon.object_store_dir.as_path())
    }

    /// The pids of every recorded daemon, as (daemon, pid).
    pub fn pids(&self) -> Vec<(String, ProcessId)> {
        let gcs = self
            .state
            .gcs
            .iter()
            .filter_map(|r| r.pid.map(|p| (format!("gcs-{}", r.daemon.id), p)));
        let nodes = self
            .state
            .nodes
            .iter()
            .filter_map(|r| r.pid.map(|p| (format!("node-{}", r.daemon.index), p)));
        gcs.chain(nodes).collect()
    }

    async fn start_all(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let ids: Vec<u64> = self.state.gcs.iter().map(|g| g.daemon.id).collect();
        for id in ids {
            self.spawn_gcs(id)?;
        }
        self.wait_until_ready(&[], deadline).await?;
        for index in 0..self.state.nodes.len() {
            self.spawn_node(index)?;
        }
        let node_ids = self.node_ids();
        self.wait_until_ready(&node_ids, deadline).await
    }

    /// Waits (up to `timeout`) for a leader and for every current node to be ALIVE.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let node_ids: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.pid.is_some())
            .map(|n| n.daemon.node_id.clone())
            .collect();
        self.wait_until_ready(&node_ids, Instant::now() + timeout)
            .await
    }

    async fn wait_until_ready(&mut self, node_ids: &[String], deadline: Instant) -> Result<()> {
        let client = ready::polling_client(&self.state.address)?;
        loop {
            if let Some(error) = self.exited_daemon() {
                return Err(error);
            }
            let pending = match ready::poll(&client, node_ids).await {
                None => return Ok(()),
                Some(pending) => pending,
            };
            if Instant::now() >= deadline {
                return Err(self.not_ready(pending));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A started daemon that has exited, as a `NotReady` error with its log.
    fn exited_daemon(&mut self) -> Option<Error> {
        let mut exited = Vec::new();
        for child in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((child.id(), status));
            }
        }
        self.children
            .retain(|c| !exited.iter().any(|(pid, _)| *pid == c.id()));
        if let Some((pid, status)) = exited.into_iter().next() {
            let (daemon, log) = self.daemon_of(pid)?;
            return Some(Error::NotReady {
                what: format!("{daemon} exited ({status})"),
                tail: process::tail(&log, TAIL_LINES),
                daemon,
                log,
            });
        }
        // Attached handles: recorded processes that are gone.
        for (daemon, pid) in self.pids() {
            if !pid.is_alive() {
                let log = self.log_of(&daemon)?;
                return Some(Error::NotReady {
                    what: format!("{daemon} (pid {}) is not running", pid.pid),
                    tail: process::tail(&log, TAIL_LINES),
                    daemon,
                    log,
                });
            }
        }
        None
    }

    fn daemon_of(&self, pid: u32) -> Option<(String, PathBuf)> {
        let (daemon, _) = self.pids().into_iter().find(|(_, p)| p.pid == pid)?;
        let log = self.log_of(&daemon)?;
        Some((daemon, log))
    }

    fn log_of(&self, daemon: &str) -> Option<PathBuf> {
        if let Some(id) = daemon.strip_prefix("gcs-") {
            let id: u64 = id.parse().ok()?;
            return self
                .state
                .gcs
                .iter()
                .find(|g| g.daemon.id == id)
                .map(|g| g.daemon.log.clone());
        }
        let index: usize = daemon.strip_prefix("node-")?.parse().ok()?;
        self.state.nodes.get(index).map(|n| n.daemon.log.clone())
    }

    fn not_ready(&self, pending: Pending) -> Error {
        let waited = self.state.config.ready_timeout_secs;
        match pending {
            Pending::Leader => {
                let first = self.state.gcs.first().map(|g| g.daemon.clone());
                let (daemon, log) = match first {
                    Some(g) => (format!("gcs-{}", g.id), g.log),
                    None => ("gcs".into(), self.state.dir.join("logs")),
                };
                Error::NotReady {
                    what: format!("no GCS replica became leader within {waited} s"),
                    tail: process::tail(&log, TAIL_LINES),
                    daemon,
                    log,
                }
            }
            Pending::Nodes(missing) => {
                let node = self
                    .state
                    .nodes
                    .iter()
                    .find(|n| missing.contains(&n.daemon.node_id));
                let (daemon, log) = match node {
                    Some(n) => (format!("node-{}", n.daemon.index), n.daemon.log.clone()),
                    None => ("node".into(), self.state.dir.join("logs")),
                };
                Error::NotReady {
                    what: format!(
                        "node(s) {} not ALIVE in the GCS within {waited} s",
                        missing.join(", ")
                    ),
                    tail: process::tail(&log, TAIL_LINES),
                    daemon,
                    log,
                }
            }
        }
    }

    fn spawn_gcs(&mut self, id: u64) -> Result<()> {
        let plan = self.state.plan();
        let args = plan.gcs_args(id).ok_or(Error::NoSuchReplica { id })?;
        let record = self
            .state
            .gcs
            .iter_mut()
            .find(|g| g.daemon.id == id)
            .ok_or(Error::NoSuchReplica { id })?;
        let child = process::spawn_detached(
            &format!("gcs-{id}"),
            &self.state.fleet_binary,
            &args,
            &record.daemon.env,
            &record.daemon.log,
        )?;
        record.pid = Some(ProcessId::of(child.id()));
        self.children.push(child);
        self.state.save()
    }

    fn spawn_node(&mut self, index: usize) -> Result<()> {
        let count = self.state.nodes.len();
        let plan = self.state.plan();
        let args = plan
            .raylet_args(index)
            .ok_or(Error::NoSuchNode { index, count })?;
        let record = self
            .state
            .nodes
            .get_mut(index)
            .ok_or(Error::NoSuchNode { index, count })?;
        for dir in [&record.daemon.node_dir, &record.daemon.spill_dir] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        }
        let child = process::spawn_detached(
            &format!("node-{index}"),
            &self.state.fleet_binary,
            &args,
            &record.daemon.env,
            &record.daemon.log,
        )?;
        record.pid = Some(ProcessId::of(child.id()));
        self.children.push(child);
        self.state.save()
    }

    fn reap(&mut self) {
        self.children
            .retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_))));
    }

    /// SIGKILLs node `index`'s raylet and its workers (its process group) and wipes its
    /// object store and spill directories, as a machine failure would.
    pub fn kill_node(&mut self, index: usize) -> Result<()> {
        let count = self.state.nodes.len();
        let record = self
            .state
            .nodes
            .get_mut(index)
            .ok_or(Error::NoSuchNode { index, count })?;
        if let Some(pid) = record.pid.take() {
            pid.kill_group();
        }
        remove_dir(&record.daemon.object_store_dir)?;
        remove_dir(&record.daemon.spill_dir)?;
        self.reap();
        self.state.save()
    }

    /// Starts node `index` again (killing it first if it runs) under a new node id, and
    /// waits until the GCS holds it ALIVE; returns the new node id.
    pub async fn restart_node(&mut self, index: usize) -> Result<String> {
        let count = self.state.nodes.len();
        if self.state.nodes.get(index).and_then(|n| n.pid).is_some() {
            self.kill_node(index)?;
        }
        let record = self
            .state
            .nodes
            .get_mut(index)
            .ok_or(Error::NoSuchNode { index, count })?;
        record.incarnation += 1;
        record.daemon.node_id = node_id(index, record.incarnation);
        let new_id = record.daemon.node_id.clone();
        self.spawn_node(index)?;
        let timeout = Duration::from_secs(self.state.config.ready_timeout_secs);
        self.wait_until_ready(std::slice::from_ref(&new_id), Instant::now() + timeout)
            .await?;
        Ok(new_id)
    }

    /// SIGKILLs GCS replica `id` (its data directory stays).
    pub fn kill_gcs(&mut self, id: u64) -> Result<()> {
        let record = self
            .state
            .gcs
            .iter_mut()
            .find(|g| g.daemon.id == id)
            .ok_or(Error::NoSuchReplica { id })?;
        if let Some(pid) = record.pid.take() {
            pid.kill_group();
        }
        self.reap();
        self.state.save()
    }

    /// Starts replica `id` again on its data directory (killing it first if it runs).
    pub fn restart_gcs(&mut self, id: u64) -> Result<()> {
        if self
            .state
            .gcs
            .iter()
            .any(|g| g.daemon.id == id && g.pid.is_some())
        {
            self.kill_gcs(id)?;
        }
        self.spawn_gcs(id)
    }

    /// The replica that reports itself leader now, if any answers.
    pub async fn gcs_leader(&self) -> Option<u64> {
        let client = ready::polling_client(&self.state.address).ok()?;
        ready::leader(&client).await.map(|(id, _)| id)
    }

    /// Stops everything: raylets first (SIGTERM, so they mark themselves dead and stop their
    /// workers; SIGKILL to the group after `grace`), their object stores and spill
    /// directories are removed, then the replicas the same way, their data directories
    /// removed, and `cluster.json` deleted. Logs and node directories stay for post-mortems.
    pub fn down(mut self, grace: Duration) -> Result<Vec<Stopped>> {
        let mut stopped = Vec::new();
        self.stop_on_drop = false;
        let mut first_error = None;
        for record in &mut self.state.nodes {
            if let Some(pid) = record.pid.take() {
                stopped.push(Stopped {
                    daemon: format!("node-{}", record.daemon.index),
                    outcome: pid.stop(grace, false),
                });
            }
            for dir in [&record.daemon.object_store_dir, &record.daemon.spill_dir] {
                if let Err(error) = remove_dir(dir) {
                    first_error.get_or_insert(error);
                }
            }
        }
        for record in &mut self.state.gcs {
            if let Some(pid) = record.pid.take() {
                stopped.push(Stopped {
                    daemon: format!("gcs-{}", record.daemon.id),
                    outcome: pid.stop(grace, true),
                });
            }
            if let Err(error) = remove_dir(&record.daemon.data_dir) {
                first_error.get_or_insert(error);
            }
        }
        self.reap();
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
        if let Some(error) = first_error {
            let _ = self.state.save();
            return Err(error);
        }
        self.state.remove()?;
        Ok(stopped)
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        if !self.stop_on_drop {
            return;
        }
        for (_, pid) in self.pids() {
            pid.kill_group();
        }
        for record in &self.state.nodes {
            let _ = remove_dir(&record.daemon.object_store_dir);
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        let _ = self.state.remove();
    }
}

/// Removes a directory tree; a missing one is fine.
fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", dir, e)),
    }
}

/// Fails unless `binary COMMAND --help` succeeds.
pub fn check_has_command(binary: &Path, command: &'static str) -> Result<()> {
    let status = Command::new(binary)
        .args([command, "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| Error::Spawn {
            daemon: format!("`{command} --help`"),
            binary: binary.to_path_buf(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::MissingCommand {
            binary: binary.to_path_buf(),
            command,
        })
    }
}

/// The replicas' ports: `base_port + i`, checked free, or (base 0) free ones.
fn gcs_ports(config: &ClusterConfig) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    let mut held = Vec::new();
    for i in 0..config.gcs.replicas as u16 {
        let wanted = if config.gcs.base_port == 0 {
            0
        } else {
            config.gcs.base_port + i
        };
        let address = format!("127.0.0.1:{wanted}");
        let listener = TcpListener::bind(&address).map_err(|_| Error::PortInUse {
            key: "gcs.base_port".into(),
            address: address.clone(),
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("bind", PathBuf::from(&address), e))?
            .port();
        ports.push(port);
        // Hold every listener until all are chosen, so free ports are distinct.
        held.push(listener);
    }
    Ok(ports)
}
