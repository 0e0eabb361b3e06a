//! The raylet's gRPC service: worker registration, leases, node info; and `run`, which
//! serves it until shutdown.
//!
//! Leases: a request is checked against the node's total (never satisfiable → an error at
//! once, not an eternal wait), then waits until its resources are free, then gets a worker:
//! an idle shared one, or a new process. Work that asks for GPUs or a worker of its own
//! (actors) always gets a new process, started with `CUDA_VISIBLE_DEVICES` set to its GPU
//! ids, which is never shared and exits when the lease ends.

use fleet_gcs::clock::now_ms;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::gcs::{JobState, Table, WatchFilter};
use fleet_proto::runtime::raylet_server::{Raylet, RayletServer};
use fleet_proto::runtime::scheduling_strategy::Kind as StrategyKind;
use fleet_proto::runtime::{
    AttachDriverRequest, BinaryChunk, CancelBundlesReply, CancelBundlesRequest, CommitBundlesReply,
    CommitBundlesRequest, DriverEvent, FetchBinaryRequest, HasBinaryReply, HasBinaryRequest,
    LeaseReply, LeaseRequest, NodeInfoReply, NodeInfoRequest, ObjectChunk, PrepareBundlesReply,
    PrepareBundlesRequest, PullObjectReply, PullObjectRequest, ReadObjectRequest,
    RegisterWorkerReply, RegisterWorkerRequest, ReturnLeaseReply, ReturnLeaseRequest,
    StoreDeleteReply, StoreDeleteRequest, StoreGetReply, StoreGetRequest, StorePutReply,
    StorePutRequest, UploadBinaryReply,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::actor_hosts::{choose_host, ActorHost, HostChoice, HostKey, HostLoad, HostStart};
use crate::binaries::Binaries;
use crate::bundles::{BundleError, BundleKey, BundleRequest, Bundles};
use crate::cluster_view::ClusterView;
use crate::config::RayletConfig;
use crate::scheduling::{Decision, NodeView, Strategy};
use crate::transfer::Transfers;

/// The GPU count of a resource set (whole GPUs; a share counts as one).
fn gpu_count(resources: &ResourceSet) -> u32 {
    let gpus = resources.get(crate::resources::GPU);
    u32::try_from(gpus.whole_part() + u64::from(!gpus.is_whole())).unwrap_or(u32::MAX)
}

/// Largest message (objects written through the raylet travel whole).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;
use crate::error::{Error, Result};
use crate::object_store::{ObjectId, ObjectStore, ObjectStoreConfig};
use crate::resources::{AllocateError, Allocation, NodeResources, ResourceSet};
use crate::worker_pool::{env, WorkerExit, WorkerLauncher, WorkerProcess};

struct WorkerEntry {
    process: WorkerProcess,
    address: Option<String>,
    dedicated: bool,
    leased: Option<u64>,
    /// Which program it runs: idle workers are reused only for leases of the same program
    /// (and, for uploaded job binaries, the same job).
    pool_key: String,
    /// The job it last served.
    job_id: String,
    /// It hosts a detached actor: it outlives its job's driver.
    detached: bool,
    /// The shared actor host it is (see `actor_hosts`): many leases, one per actor.
    host: Option<u64>,
}

/// How long a lease for a bundle that is being placed again waits before it is answered
/// "ask again" (the requester's poll period while the group is RESCHEDULING).
const BUNDLE_MOVING_RETRY: Duration = Duration::from_millis(200);

/// Where a placement group's bundle is, for a lease asked on another node.
enum BundleAt {
    /// On this node, behind this raylet.
    Node(String, String),
    /// Being placed again after its node died: ask again soon.
    Moving,
}

/// How long a lease request waits queued on this node before it is placed again.
const REPLACE_QUEUED_AFTER: Duration = Duration::from_millis(500);

/// The pool key of the raylet's own worker binary (embedded mode).
const DEFAULT_POOL: &str = "default";

fn pool_key(request: &LeaseRequest) -> String {
    if request.job_binary.is_empty() {
        DEFAULT_POOL.to_string()
    } else {
        format!("{}/{}", request.job_id, request.job_binary)
    }
}

struct Lease {
    worker_id: String,
    allocation: Allocation,
    /// The placement-group bundle it was allocated from (else the node's free pool).
    bundle: Option<BundleKey>,
    /// The shared actor host it places an actor in, and that actor.
    hosted: Option<(u64, String)>,
}

struct State {
    resources: NodeResources,
    /// Placement-group bundles reserved here (out of `resources`).
    bundles: Bundles,
    workers: HashMap<String, WorkerEntry>,
    idle: VecDeque<String>,
    registering: HashMap<String, oneshot::Sender<String>>,
    leases: HashMap<u64, Lease>,
    next_lease: u64,
    next_worker: u64,
    dead_workers: Vec<WorkerExit>,
    pending_leases: u32,
    /// Shared actor hosts, by host id.
    hosts: HashMap<u64, ActorHost>,
    next_host: u64,
}

impl State {
    /// Gives back what a lease took: to its bundle, or to the node's free pool.
    fn release(&mut self, allocation: &Allocation, bundle: Option<&BundleKey>) {
        match bundle {
            Some(key) => {
                self.bundles.release(key, allocation);
            }
            None => {
                self.resources.release(allocation);
            }
        }
    }

    /// Ends the leases inside bundles that were just released: their workers are retired
    /// (the lessees see them die) and the leases forgotten.
    fn end_bundle_leases(&mut self, released: &[BundleKey]) -> usize {
        if released.is_empty() {
            return 0;
        }
        let ended: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.bundle.as_ref().is_some_and(|k| released.contains(k)))
            .map(|(id, _)| *id)
            .collect();
        for lease_id in &ended {
            if let Some(lease) = self.leases.remove(lease_id) {
                if let Some((host, actor_id)) = &lease.hosted {
                    // The host's other actors go on: stop only this one.
                    if let Some((address, actor_id)) =
                        self.leave_host(*host, &lease.worker_id, actor_id)
                    {
                        tokio::spawn(stop_hosted_actor(address, actor_id));
                    }
                } else if let Some(worker) = self.workers.get_mut(&lease.worker_id) {
                    worker.leased = None;
                    worker.process.retire(true);
                }
            }
        }
        ended.len()
    }

    /// An actor's lease in host `host` ended: the host counts one actor fewer (a host of
    /// detached actors that is left empty exits: nothing else would end it) and the actor
    /// is to be stopped in it, should it still run there (its owner gave it up, or its bundle
    /// went): returns the host's address and the actor to stop.
    fn leave_host(
        &mut self,
        host: u64,
        worker_id: &str,
        actor_id: &str,
    ) -> Option<(String, String)> {
        let mut retire = false;
        if let Some(entry) = self.hosts.get_mut(&host) {
            entry.actors = entry.actors.saturating_sub(1);
            retire = entry.actors == 0 && entry.key.detached;
            if retire {
                self.hosts.remove(&host);
            } else if entry.actors == 0 {
                // Exits after the grace unless an actor comes first (`retire_idle_hosts`).
                entry.empty_since = Some(std::time::Instant::now());
            }
        }
        let worker = self.workers.get_mut(worker_id)?;
        if retire {
            worker.process.retire(false);
            return None;
        }
        worker
            .address
            .clone()
            .map(|address| (address, actor_id.to_string()))
    }
}

/// Asks a shared host to stop one actor (best effort, bounded: the host may be dying, and
/// a host that is gone stopped the actor with itself).
async fn stop_hosted_actor(address: String, actor_id: String) {
    {
        let channel = match fleet_gcs::transport::Connector::channel(
            &fleet_gcs::transport::TcpConnector,
            &address,
        ) {
            Ok(channel) => channel,
            Err(error) => {
                tracing::debug!(%address, %error, "cannot reach a host to stop an actor");
                return;
            }
        };
        let mut client = fleet_proto::runtime::core_worker_client::CoreWorkerClient::new(channel);
        let request = fleet_proto::runtime::ExitRequest {
            actor_id: actor_id.clone(),
        };
        match tokio::time::timeout(Duration::from_secs(5), client.exit(request)).await {
            Ok(Ok(_)) => {
                tracing::debug!(actor = %actor_id, host = %address, "actor stopped in its host")
            }
            Ok(Err(status)) => {
                tracing::debug!(actor = %actor_id, status = %status.message(), "stopping an actor in its host failed")
            }
            Err(_) => tracing::debug!(actor = %actor_id, "stopping an actor in its host timed out"),
        }
    }
}

/// The program a worker runs.
#[derive(Clone, Debug)]
struct Program {
    /// The job's uploaded binary; `None`: the raylet's own worker binary.
    binary: Option<PathBuf>,
    args: Vec<String>,
    pool_key: String,
    job_id: String,
    /// The binary's digest (empty for the raylet's own).
    digest: String,
    detached: bool,
}

impl Default for Program {
    fn default() -> Self {
        Program {
            binary: None,
            args: Vec::new(),
            pool_key: DEFAULT_POOL.to_string(),
            job_id: String::new(),
            digest: String::new(),
            detached: false,
        }
    }
}

/// The raylet service state.
#[derive(Clone)]
pub struct RayletService {
    inner: Arc<Inner>,
}

struct Inner {
    config: RayletConfig,
    store: ObjectStore,
    address: String,
    launcher: WorkerLauncher,
    state: Mutex<State>,
    /// Signalled whenever resources are released.
    freed: Notify,
    /// Set by `retire_all`: no new workers start.
    stopping: std::sync::atomic::AtomicBool,
    gcs: fleet_gcs::GcsClient,
    view: ClusterView,
    transfers: Transfers,
    binaries: Binaries,
    spread_counter: std::sync::atomic::AtomicUsize,
    /// Leases decided here but not yet granted (the job binary is being looked up, or they
    /// wait for resources), by hold id: the scheduler counts them as used, as it counts
    /// work spilled elsewhere, so a burst of decisions does not all pick this node.
    local_holds: Mutex<std::collections::HashMap<u64, BTreeMap<String, f64>>>,
    next_hold: std::sync::atomic::AtomicU64,
    /// Jobs known to have ended: their workers are retired, new leases refused.
    finished_jobs: Mutex<std::collections::HashSet<String>>,
}

/// A lease decided for this node and not yet granted; released when dropped (granted,
/// spilled on a later look, refused, or its request gone).
struct LocalHold {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for LocalHold {
    fn drop(&mut self) {
        self.inner
            .local_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

fn to_resource_set(map: &BTreeMap<String, f64>, what: &str) -> Result<ResourceSet> {
    ResourceSet::try_from_map(map).map_err(|e| Error::InvalidRequest {
        what: what.into(),
        reason: e.to_string(),
    })
}

impl RayletService {
    /// Builds the service; `address` is where workers reach it.
    fn new(
        config: RayletConfig,
        address: String,
        exits: mpsc::UnboundedSender<WorkerExit>,
        locations: mpsc::Sender<fleet_proto::gcs::ObjectLocationUpdate>,
    ) -> Result<Self> {
        let gcs = fleet_gcs::GcsClient::connect(&config.gcs_address).map_err(|e| {
            Error::InvalidRequest {
                what: "the raylet configuration".into(),
                reason: format!("GCS address {:?}: {e}", config.gcs_address),
            }
        })?;
        let store = ObjectStore::open(ObjectStoreConfig {
            shm_dir: config.object_store_dir.clone(),
            spill_dir: config.spill_dir.clone(),
            capacity_bytes: config.object_store_bytes,
            full_timeout: config.object_store_full_timeout,
        })?;
        let mut total = config.resources.clone();
        total.remove("GPU");
        let total = to_resource_set(&total, "the node's resources")?;
        let resources = NodeResources::new(total, config.num_gpus);
        let mut worker_env = config.worker_env.clone();
        worker_env.insert(env::RAYLET_ADDRESS.into(), address.clone());
        worker_env.insert(env::GCS_ADDRESS.into(), config.gcs_address.clone());
        worker_env.insert(env::NODE_ID.into(), config.node_id.clone());
        // Workers serve on the node's IP, where the raylet serves (not on loopback: owners on
        // other machines must reach them); a raylet bound to every interface leaves them to
        // FLEET_NODE_IP as it was given.
        if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
            if !socket.ip().is_unspecified() {
                worker_env
                    .entry(fleet_gcs::transport::NODE_IP_ENV.into())
                    .or_insert_with(|| socket.ip().to_string());
            }
        }
        worker_env.insert(
            env::OBJECT_STORE_DIR.into(),
            config.object_store_dir.display().to_string(),
        );
        let launcher = WorkerLauncher::new(
            config.worker_binary.clone(),
            config.worker_args.clone(),
            worker_env,
            exits,
        );
        let transfers = Transfers::new(
            store.clone(),
            config.node_id.clone(),
            address.clone(),
            locations,
        );
        let binaries = Binaries::new(
            config.node_dir.join("binaries"),
            config.node_id.clone(),
            address.clone(),
            gcs.clone(),
        );
        Ok(RayletService {
            inner: Arc::new(Inner {
                store,
                gcs,
                view: ClusterView::default(),
                transfers,
                binaries,
                spread_counter: std::sync::atomic::AtomicUsize::new(0),
                local_holds: Mutex::new(std::collections::HashMap::new()),
                next_hold: std::sync::atomic::AtomicU64::new(0),
                finished_jobs: Mutex::new(std::collections::HashSet::new()),
                config,
                address,
                launcher,
                state: Mutex::new(State {
                    resources,
                    bundles: Bundles::default(),
                    workers: HashMap::new(),
                    idle: VecDeque::new(),
                    registering: HashMap::new(),
                    leases: HashMap::new(),
                    next_lease: 1,
                    next_worker: 1,
                    dead_workers: Vec::new(),
                    pending_leases: 0,
                    hosts: HashMap::new(),
                    next_host: 1,
                }),
                freed: Notify::new(),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a worker and waits for it to register; returns its id and address.
    async fn start_worker(
        &self,
        dedicated: bool,
        gpu_ids: &[u32],
        program: &Program,
        host: Option<u64>,
    ) -> Result<(String, String)> {
        if self
            .inner
            .stopping
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(Error::ShuttingDown);
        }
        let (worker_id, rx) = {
            let mut state = self.lock();
            let worker_id = format!("{}-w{}", self.inner.config.node_id, state.next_worker);
            state.next_worker += 1;
            let (tx, rx) = oneshot::channel();
            state.registering.insert(worker_id.clone(), tx);
            let gpus: Vec<String> = gpu_ids.iter().map(u32::to_string).collect();
            let mut extra = vec![
                (env::GPU_IDS, gpus.join(",")),
                (env::JOB_ID, program.job_id.clone()),
                (env::JOB_BINARY, program.digest.clone()),
            ];
            if host.is_some() {
                extra.push((env::ACTOR_HOST, "1".to_string()));
            }
            // Workers that hold no GPU see none (a shared host's actors hold none).
            if !gpu_ids.is_empty() || dedicated || host.is_some() {
                let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
                extra.push((
                    "CUDA_VISIBLE_DEVICES",
                    visible_devices(visible.as_deref(), gpu_ids),
                ));
            }
            let process = match self.inner.launcher.spawn(
                &worker_id,
                program
                    .binary
                    .as_deref()
                    .map(|b| (b, program.args.as_slice())),
                &extra,
            ) {
                Ok(process) => process,
                Err(error) => {
                    state.registering.remove(&worker_id);
                    return Err(error);
                }
            };
            state.workers.insert(
                worker_id.clone(),
                WorkerEntry {
                    process,
                    address: None,
                    dedicated,
                    leased: None,
                    pool_key: program.pool_key.clone(),
                    job_id: program.job_id.clone(),
                    detached: program.detached,
                    host,
                },
            );
            (worker_id, rx)
        };
        let timeout = self.inner.config.worker_start_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(address)) => Ok((worker_id, address)),
            outcome => {
                let mut state = self.lock();
                state.registering.remove(&worker_id);
                let died = state
                    .dead_workers
                    .iter()
                    .find(|d| d.worker_id == worker_id)
                    .map(|d| d.status.clone());
                if let Some(mut entry) = state.workers.remove(&worker_id) {
                    entry.process.retire(true);
                }
                let reason = match (outcome, died) {
                    (_, Some(status)) => format!(
                        "it exited ({status}) before registering; does the program call fleet::init() (or use #[fleet::main]) first thing in main?"
                    ),
                    _ => format!("it did not register within {timeout:?}"),
                };
                Err(Error::WorkerStart {
                    binary: program
                        .binary
                        .clone()
                        .unwrap_or_else(|| self.inner.launcher.binary().clone()),
                    reason,
                })
            }
        }
    }

    /// Prestarts shared workers.
    pub async fn prestart(&self, count: usize) {
        let mut started = tokio::task::JoinSet::new();
        for _ in 0..count {
            let this = self.clone();
            started.spawn(async move {
                this.start_worker(false, &[], &Program::default(), None)
                    .await
            });
        }
        while let Some(result) = started.join_next().await {
            match result {
                Ok(Ok((worker_id, _))) => self.lock().idle.push_back(worker_id),
                Ok(Err(error)) => {
                    tracing::warn!(error = %format!("{error:#}"), "could not prestart a worker")
                }
                Err(_) => {}
            }
        }
    }

    /// This node as the scheduler sees it: what is free, less the leases decided here and
    /// not yet granted.
    fn local_view(
        &self,
        holds: &std::collections::HashMap<u64, BTreeMap<String, f64>>,
    ) -> NodeView {
        let state = self.lock();
        let mut available = state.resources.available().to_map();
        for held in holds.values() {
            for (name, amount) in held {
                let free = available.entry(name.clone()).or_insert(0.0);
                *free = (*free - amount).max(0.0);
            }
        }
        NodeView {
            node_id: self.inner.config.node_id.clone(),
            address: self.inner.address.clone(),
            labels: self.inner.config.labels.clone(),
            total: state.resources.total().to_map(),
            available,
        }
    }

    /// Where a lease request should be granted: here (with a hold that counts it as used
    /// until it is granted or given up), or spilled back to another node.
    fn place(
        &self,
        request: &LeaseRequest,
        wanted: &BTreeMap<String, f64>,
    ) -> (Decision, Option<LocalHold>) {
        let selector = match request
            .strategy
            .as_ref()
            .map(|s| crate::labels::LabelSelector::from_wire(&s.labels))
            .transpose()
        {
            Ok(selector) => selector.unwrap_or_default(),
            Err(reason) => {
                return (
                    Decision::Infeasible(format!("its label selector cannot be read: {reason}")),
                    None,
                )
            }
        };
        if request.grant_or_reject {
            // Spilled here by a view that judged this node's labels: they do not change,
            // but a stale or forged request must not run where the selector forbids.
            if !selector.allows(&self.inner.config.labels) {
                return (
                    Decision::Infeasible(format!(
                        "node {} does not have the labels it requires ({})",
                        self.inner.config.node_id,
                        selector.describe_required()
                    )),
                    None,
                );
            }
            return (Decision::Local, None);
        }
        let strategy = match request.strategy.as_ref() {
            Some(s) if s.kind == StrategyKind::Spread as i32 => Strategy::Spread,
            Some(s) if s.kind == StrategyKind::NodeAffinity as i32 => Strategy::NodeAffinity {
                node_id: s.node_id.clone(),
                soft: s.soft,
            },
            _ => Strategy::Hybrid,
        };
        let counter = self
            .inner
            .spread_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The holds stay locked from the decision to the new hold: concurrent decisions see
        // each other's.
        let mut holds = self
            .inner
            .local_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let decision = crate::scheduling::decide_with_labels(
            &strategy,
            wanted,
            &selector,
            &self.local_view(&holds),
            &self.inner.view.others(),
            counter,
        );
        tracing::debug!(?strategy, ?decision, "lease placement");
        let hold = match &decision {
            Decision::Spill { node_id, .. } => {
                // Count it against that node until its reports show it.
                self.inner.view.reserve(node_id, wanted);
                None
            }
            Decision::Local => {
                let id = self
                    .inner
                    .next_hold
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                holds.insert(id, wanted.clone());
                Some(LocalHold {
                    inner: self.inner.clone(),
                    id,
                })
            }
            Decision::Infeasible(_) => None,
        };
        (decision, hold)
    }

    async fn lease(&self, request: LeaseRequest) -> Result<LeaseReply> {
        let what = if request.description.is_empty() {
            "a task".to_string()
        } else {
            request.description.clone()
        };
        if !request.job_id.is_empty() && self.job_finished(&request.job_id) {
            return Err(Error::InvalidRequest {
                what,
                reason: format!(
                    "job {} has finished (its driver exited); start a new driver",
                    request.job_id
                ),
            });
        }
        let map: BTreeMap<String, f64> = request.resources.clone().into_iter().collect();
        let wanted = to_resource_set(&map, &what)?;
        if let Some(strategy) = request
            .strategy
            .as_ref()
            .filter(|s| s.kind == StrategyKind::PlacementGroup as i32)
        {
            if !strategy.labels.is_empty() {
                return Err(Error::InvalidRequest {
                    what,
                    reason: "a label selector does not apply inside a placement group (its bundles' nodes were chosen when the group was created); drop the selector, or place the group's bundles with it in mind".into(),
                });
            }
            let strategy = strategy.clone();
            return self
                .lease_in_bundle(&request, &strategy, what, wanted)
                .await;
        }
        let (decision, hold) = self.place(&request, &map);
        match decision {
            Decision::Local => {}
            Decision::Spill { node_id, address } => {
                return Ok(LeaseReply {
                    spillback_address: address,
                    spillback_node_id: node_id,
                    ..LeaseReply::default()
                })
            }
            Decision::Infeasible(reason) => {
                let state = self.lock();
                return Err(Error::Infeasible {
                    what,
                    requested: wanted.to_string(),
                    total: format!("{} ({reason})", state.resources.total()),
                });
            }
        }
        // Fail at once when this node can never satisfy it.
        {
            let state = self.lock();
            match state.resources.is_feasible(&wanted) {
                Ok(()) => {}
                Err(AllocateError::Infeasible { .. }) => {
                    return Err(Error::Infeasible {
                        what,
                        requested: wanted.to_string(),
                        total: state.resources.total().to_string(),
                    })
                }
                Err(other) => {
                    return Err(Error::InvalidRequest {
                        what,
                        reason: other.to_string(),
                    })
                }
            }
        }
        let program = self.program(&request).await?;
        let deadline = tokio::time::Instant::now() + self.inner.config.lease_wait_limit;
        let allocation = loop {
            let notified = self.inner.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                match state.resources.try_allocate(&wanted) {
                    Ok(allocation) => break allocation,
                    Err(AllocateError::Insufficient { .. }) if request.grant_or_reject => {
                        // Spilled here on a stale view: the requester asks again rather
                        // than queue behind work that may never leave.
                        return Ok(LeaseReply {
                            rejected: true,
                            node_id: self.inner.config.node_id.clone(),
                            ..LeaseReply::default()
                        });
                    }
                    Err(AllocateError::Insufficient { .. }) => {}
                    Err(other) => {
                        return Err(Error::InvalidRequest {
                            what,
                            reason: other.to_string(),
                        })
                    }
                }
                self.queue_lease(&mut state)?;
            }
            // Queued here: look again now and then, in case another node has room by now
            // (a lease queued on a busy node must not wait out work that never leaves).
            let requeue = tokio::select! {
                _ = notified => false,
                _ = tokio::time::sleep(REPLACE_QUEUED_AFTER) => true,
            };
            self.lock().pending_leases -= 1;
            if tokio::time::Instant::now() >= deadline {
                return Ok(self.ask_again());
            }
            if requeue && !request.grant_or_reject {
                if let (Decision::Spill { node_id, address }, _) = self.place(&request, &map) {
                    return Ok(LeaseReply {
                        spillback_address: address,
                        spillback_node_id: node_id,
                        ..LeaseReply::default()
                    });
                }
            }
        };
        // Granted: the resources now count as allocated, not as held.
        drop(hold);
        let gpu_ids = allocation.gpu_ids.clone();
        self.grant(&request, program, allocation, gpu_ids, None)
            .await
    }

    /// Counts a lease request as waiting here, or refuses it when the queue is full.
    fn queue_lease(&self, state: &mut State) -> Result<()> {
        let queued = state.pending_leases as usize;
        if queued >= self.inner.config.max_queued_leases {
            return Err(Error::LeaseQueueFull {
                node: self.inner.config.node_id.clone(),
                queued,
            });
        }
        state.pending_leases += 1;
        Ok(())
    }

    /// The answer to a lease request that waited its limit: not granted, ask again.
    fn ask_again(&self) -> LeaseReply {
        LeaseReply {
            rejected: true,
            node_id: self.inner.config.node_id.clone(),
            ..LeaseReply::default()
        }
    }

    /// A lease inside a placement group's bundle: granted here from the bundle's own
    /// resources when the bundle is here (waiting while the bundle is busy), else spilled
    /// to the node holding it (the GCS placement group table says which).
    async fn lease_in_bundle(
        &self,
        request: &LeaseRequest,
        strategy: &fleet_proto::runtime::SchedulingStrategy,
        what: String,
        wanted: ResourceSet,
    ) -> Result<LeaseReply> {
        let group = strategy.placement_group_id.clone();
        let index = u32::try_from(strategy.bundle_index).ok();
        let local = {
            let state = self.lock();
            match index {
                Some(index) => {
                    let key = BundleKey {
                        group: group.clone(),
                        index,
                    };
                    state.bundles.is_committed(&key).then_some(key)
                }
                None => state.bundles.pick(&group, &wanted),
            }
        };
        let Some(key) = local else {
            if request.grant_or_reject {
                return Err(Error::InvalidRequest {
                    what,
                    reason: format!(
                        "placement group {group} has no bundle{} reserved on node {} (was the group removed?)",
                        index.map(|i| format!(" {i}")).unwrap_or_default(),
                        self.inner.config.node_id
                    ),
                });
            }
            return match self.bundle_node(&group, index, &wanted, &what).await? {
                BundleAt::Node(node_id, address) => Ok(LeaseReply {
                    spillback_address: address,
                    spillback_node_id: node_id,
                    ..LeaseReply::default()
                }),
                BundleAt::Moving => {
                    // Its owner is placing it again (its node died): the requester asks
                    // again shortly, as Ray leaves such work pending.
                    tokio::time::sleep(BUNDLE_MOVING_RETRY).await;
                    Ok(self.ask_again())
                }
            };
        };
        let program = self.program(request).await?;
        let deadline = tokio::time::Instant::now() + self.inner.config.lease_wait_limit;
        let (allocation, gpu_ids) = loop {
            let notified = self.inner.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                match state.bundles.allocate(&key, &wanted) {
                    Ok(granted) => break granted,
                    // Only the group's own work uses the bundle: wait for it.
                    Err(BundleError::Busy { .. }) => {}
                    Err(error @ BundleError::TooLarge { .. }) => {
                        return Err(Error::NeverFitsBundle {
                            what,
                            reason: error.to_string(),
                        })
                    }
                    Err(error) => {
                        return Err(Error::InvalidRequest {
                            what,
                            reason: error.to_string(),
                        })
                    }
                }
                self.queue_lease(&mut state)?;
            }
            let woken = tokio::time::timeout_at(deadline, notified).await.is_ok();
            self.lock().pending_leases -= 1;
            if !woken {
                return Ok(self.ask_again());
            }
        };
        self.grant(request, program, allocation, gpu_ids, Some(key))
            .await
    }

    /// The node (id, raylet address) holding a bundle of `group` that `wanted` fits.
    async fn bundle_node(
        &self,
        group: &str,
        index: Option<u32>,
        wanted: &ResourceSet,
        what: &str,
    ) -> Result<BundleAt> {
        use fleet_proto::gcs::PlacementGroupState;
        let invalid = |reason: String| Error::InvalidRequest {
            what: what.to_string(),
            reason,
        };
        let info = self
            .inner
            .gcs
            .get_placement_group(group)
            .await
            .map_err(|e| invalid(format!("cannot read placement group {group}: {e}")))?
            .ok_or_else(|| {
                invalid(format!(
                    "no placement group {group}; create it with fleet::PlacementGroup first"
                ))
            })?;
        if info.state == PlacementGroupState::PgRemoved as i32 {
            return Err(invalid(format!("placement group {group} was removed")));
        }
        // Being placed (submitted, not yet placed) or placed again (a node died): the
        // work waits for it, as Ray leaves it pending.
        if info.state == PlacementGroupState::PgRescheduling as i32
            || info.state == PlacementGroupState::PgPending as i32
        {
            return Ok(BundleAt::Moving);
        }
        if info.state != PlacementGroupState::PgCreated as i32 {
            return Err(invalid(format!(
                "placement group {group} is in an unknown state ({})",
                info.state
            )));
        }
        let candidates: Vec<(usize, String)> = match index {
            Some(i) => {
                let bundle = info.bundles.get(i as usize).ok_or_else(|| {
                    invalid(format!(
                        "placement group {group} has {} bundles; there is no bundle {i}",
                        info.bundles.len()
                    ))
                })?;
                vec![(i as usize, bundle.node_id.clone())]
            }
            None => info
                .bundles
                .iter()
                .enumerate()
                .filter(|(_, b)| {
                    let map: BTreeMap<String, f64> = b.resources.clone().into_iter().collect();
                    ResourceSet::try_from_map(&map).is_ok_and(|reserved| {
                        NodeResources::new(reserved.clone(), gpu_count(&reserved))
                            .is_feasible(wanted)
                            .is_ok()
                    })
                })
                .map(|(i, b)| (i, b.node_id.clone()))
                .collect(),
        };
        if candidates.is_empty() {
            return Err(invalid(format!(
                "the request {wanted} fits no bundle of placement group {group}; lower the request or make the bundles larger"
            )));
        }
        let counter = self
            .inner
            .spread_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (bundle, node_id) = candidates[counter % candidates.len()].clone();
        if node_id == self.inner.config.node_id {
            return Err(invalid(format!(
                "bundle {bundle} of placement group {group} is no longer reserved on node {node_id}"
            )));
        }
        if let Some(node) = self
            .inner
            .view
            .others()
            .into_iter()
            .find(|n| n.node_id == node_id)
        {
            return Ok(BundleAt::Node(node_id, node.address));
        }
        let nodes = self.inner.gcs.list_nodes().await.unwrap_or_default();
        match nodes.into_iter().find(|n| {
            n.node_id == node_id && n.state == fleet_proto::gcs::NodeState::NodeAlive as i32
        }) {
            Some(node) => Ok(BundleAt::Node(node_id, node.address)),
            // Its node died and the group's owner has not marked it RESCHEDULING yet: it
            // will (the owner reschedules every group of its that lost a node).
            None => {
                tracing::debug!(group, bundle, node = %node_id, "bundle on a dead node; waiting for its rescheduling");
                Ok(BundleAt::Moving)
            }
        }
    }

    /// The job's program, fetched once per node, before resources are held.
    async fn program(&self, request: &LeaseRequest) -> Result<Program> {
        Ok(if request.job_binary.is_empty() {
            Program {
                job_id: request.job_id.clone(),
                detached: request.detached,
                ..Program::default()
            }
        } else {
            let binary = self
                .inner
                .binaries
                .ensure(&request.job_binary)
                .await
                .map_err(|reason| Error::WorkerStart {
                    binary: self.inner.binaries.path(&request.job_binary),
                    reason,
                })?;
            Program {
                binary: Some(binary),
                args: request.worker_args.clone(),
                pool_key: pool_key(request),
                job_id: request.job_id.clone(),
                digest: request.job_binary.clone(),
                detached: request.detached,
            }
        })
    }

    /// Gives a worker to a granted allocation: an idle shared one, or a new process.
    async fn grant(
        &self,
        request: &LeaseRequest,
        program: Program,
        allocation: Allocation,
        gpu_ids: Vec<u32>,
        bundle: Option<BundleKey>,
    ) -> Result<LeaseReply> {
        let dedicated = request.dedicated || !gpu_ids.is_empty();
        if request.actor_host && !dedicated {
            return self
                .grant_in_host(request, program, allocation, bundle)
                .await;
        }
        let reused = if dedicated {
            None
        } else {
            let mut state = self.lock();
            let mut found = None;
            let mut skipped = VecDeque::new();
            while let Some(worker_id) = state.idle.pop_front() {
                match state.workers.get(&worker_id) {
                    Some(worker) if worker.pool_key != program.pool_key => {
                        skipped.push_back(worker_id)
                    }
                    Some(worker) => {
                        if let Some(address) = worker.address.clone() {
                            found = Some((worker_id, address));
                            break;
                        }
                    }
                    None => {}
                }
            }
            skipped.extend(state.idle.drain(..));
            state.idle = skipped;
            found
        };
        let (worker_id, address) = match reused {
            Some(found) => found,
            None => match self.start_worker(dedicated, &gpu_ids, &program, None).await {
                Ok(found) => found,
                Err(error) => {
                    self.lock().release(&allocation, bundle.as_ref());
                    self.inner.freed.notify_waiters();
                    return Err(error);
                }
            },
        };
        let mut state = self.lock();
        let lease_id = state.next_lease;
        state.next_lease += 1;
        match state.workers.get_mut(&worker_id) {
            Some(worker) => {
                worker.leased = Some(lease_id);
                worker.job_id = program.job_id.clone();
                worker.detached = program.detached;
            }
            None => {
                // It died between start and grant.
                state.release(&allocation, bundle.as_ref());
                drop(state);
                self.inner.freed.notify_waiters();
                return Err(Error::WorkerStart {
                    binary: program
                        .binary
                        .clone()
                        .unwrap_or_else(|| self.inner.launcher.binary().clone()),
                    reason: "the worker exited right after starting".into(),
                });
            }
        }
        state.leases.insert(
            lease_id,
            Lease {
                worker_id: worker_id.clone(),
                allocation,
                bundle,
                hosted: None,
            },
        );
        Ok(LeaseReply {
            lease_id,
            worker_id,
            worker_address: address,
            gpu_ids,
            node_id: self.inner.config.node_id.clone(),
            ..LeaseReply::default()
        })
    }

    /// Gives a granted allocation a place in one of its job's shared actor hosts (starting
    /// one when `choose_host` says so; actors placed on a host that is still starting wait
    /// for it).
    async fn grant_in_host(
        &self,
        request: &LeaseRequest,
        program: Program,
        allocation: Allocation,
        bundle: Option<BundleKey>,
    ) -> Result<LeaseReply> {
        let key = HostKey {
            pool_key: program.pool_key.clone(),
            job_id: program.job_id.clone(),
            detached: program.detached,
        };
        let limit = self.inner.config.actor_hosts_per_job;
        let (host_id, mut start, starter) = {
            let mut state = self.lock();
            let loads: Vec<HostLoad> = state
                .hosts
                .iter()
                .filter(|(_, h)| h.key == key)
                .map(|(&host, h)| HostLoad {
                    host,
                    actors: h.actors,
                })
                .collect();
            let chosen = match choose_host(&loads, limit) {
                HostChoice::Existing(host_id) => Some(host_id),
                HostChoice::Start => None,
            };
            match chosen.and_then(|id| state.hosts.get_mut(&id).map(|host| (id, host))) {
                Some((host_id, host)) => {
                    host.actors += 1;
                    host.empty_since = None;
                    (host_id, host.start.clone(), None)
                }
                None => {
                    let host_id = state.next_host;
                    state.next_host += 1;
                    let (tx, rx) = watch::channel(HostStart::Starting);
                    state.hosts.insert(
                        host_id,
                        ActorHost {
                            key,
                            worker_id: None,
                            start: rx.clone(),
                            actors: 1,
                            empty_since: None,
                        },
                    );
                    (host_id, rx, Some(tx))
                }
            }
        };
        if let Some(tx) = starter {
            let started = self.start_worker(false, &[], &program, Some(host_id)).await;
            let mut state = self.lock();
            let outcome = match started {
                Ok((worker_id, address)) if state.workers.contains_key(&worker_id) => {
                    if let Some(host) = state.hosts.get_mut(&host_id) {
                        host.worker_id = Some(worker_id.clone());
                    }
                    HostStart::Ready { worker_id, address }
                }
                Ok(_) => HostStart::Failed("the worker exited right after starting".into()),
                Err(error) => HostStart::Failed(error.to_string()),
            };
            if matches!(outcome, HostStart::Failed(_)) {
                state.hosts.remove(&host_id);
            }
            tx.send_replace(outcome);
        }
        let waited = tokio::time::timeout(
            self.inner.config.worker_start_timeout + Duration::from_secs(5),
            start.wait_for(|s| !matches!(s, HostStart::Starting)),
        )
        .await;
        let outcome = match waited {
            Ok(Ok(outcome)) => outcome.clone(),
            Ok(Err(_)) => HostStart::Failed("its start was abandoned".into()),
            Err(_) => HostStart::Failed(format!(
                "it did not register within {:?}",
                self.inner.config.worker_start_timeout
            )),
        };
        let mut state = self.lock();
        let placed = match outcome {
            HostStart::Ready { worker_id, address }
                if state.hosts.contains_key(&host_id) && state.workers.contains_key(&worker_id) =>
            {
                Ok((worker_id, address))
            }
            HostStart::Ready { .. } => Err("it exited since".to_string()),
            HostStart::Failed(reason) => Err(reason),
            HostStart::Starting => Err("it is still starting".to_string()),
        };
        let (worker_id, address) = match placed {
            Ok(found) => found,
            Err(reason) => {
                if let Some(host) = state.hosts.get_mut(&host_id) {
                    host.actors = host.actors.saturating_sub(1);
                }
                state.release(&allocation, bundle.as_ref());
                drop(state);
                self.inner.freed.notify_waiters();
                return Err(Error::WorkerStart {
                    binary: program
                        .binary
                        .clone()
                        .unwrap_or_else(|| self.inner.launcher.binary().clone()),
                    reason: format!("the shared actor host could not start: {reason}"),
                });
            }
        };
        let lease_id = state.next_lease;
        state.next_lease += 1;
        if let Some(worker) = state.workers.get_mut(&worker_id) {
            worker.job_id = program.job_id.clone();
        }
        state.leases.insert(
            lease_id,
            Lease {
                worker_id: worker_id.clone(),
                allocation,
                bundle,
                hosted: Some((host_id, request.actor_id.clone())),
            },
        );
        Ok(LeaseReply {
            lease_id,
            worker_id,
            worker_address: address,
            node_id: self.inner.config.node_id.clone(),
            shared: true,
            ..LeaseReply::default()
        })
    }

    fn job_finished(&self, job_id: &str) -> bool {
        self.inner
            .finished_jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(job_id)
    }

    /// A job ended: retire its workers (except those hosting detached actors).
    pub fn on_job_finished(&self, job_id: &str) {
        let newly = self
            .inner
            .finished_jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job_id.to_string());
        if !newly {
            return;
        }
        let mut state = self.lock();
        let state = &mut *state;
        let released = state.bundles.release_job(&mut state.resources, job_id);
        state.end_bundle_leases(&released);
        if !released.is_empty() {
            tracing::info!(
                job = job_id,
                bundles = released.len(),
                "job finished; its placement-group bundles released"
            );
            self.inner.freed.notify_waiters();
        }
        let mut retired = 0;
        for worker in state.workers.values_mut() {
            if worker.job_id == job_id && !worker.detached {
                worker.process.retire(true);
                retired += 1;
            }
        }
        if retired > 0 {
            tracing::info!(
                job = job_id,
                workers = retired,
                "job finished; its workers retired"
            );
        }
    }

    /// Follows the jobs table and retires the workers of jobs that end.
    async fn watch_jobs(self, stop: CancellationToken) {
        let mut watch = self.inner.gcs.watch(
            vec![WatchFilter {
                table: Table::Jobs as i32,
                ..WatchFilter::default()
            }],
            0,
        );
        loop {
            let update = tokio::select! {
                _ = stop.cancelled() => return,
                update = watch.next() => update,
            };
            match update {
                Ok(update) => {
                    for event in update.events {
                        let Some(record) = event.record else { continue };
                        let Ok(job) = fleet_proto::gcs::JobInfo::decode(record.value.as_slice())
                        else {
                            continue;
                        };
                        if job.state != JobState::JobRunning as i32 {
                            self.on_job_finished(&job.job_id);
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "jobs watch interrupted; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Prepare (phase one): reserves the bundles out of the free pool, all or nothing.
    pub fn prepare_bundles(&self, request: PrepareBundlesRequest) -> Result<PrepareBundlesReply> {
        let mut bundles = Vec::with_capacity(request.bundles.len());
        for spec in request.bundles {
            let map: BTreeMap<String, f64> = spec.resources.into_iter().collect();
            let key = BundleKey {
                group: spec.placement_group_id,
                index: spec.bundle_index,
            };
            let resources = to_resource_set(&map, &key.to_string())?;
            bundles.push(BundleRequest {
                key,
                resources,
                job_id: spec.job_id,
            });
        }
        let mut state = self.lock();
        let state = &mut *state;
        Ok(
            match state.bundles.prepare(
                &mut state.resources,
                &bundles,
                tokio::time::Instant::now().into_std(),
            ) {
                Ok(()) => PrepareBundlesReply {
                    success: true,
                    reason: String::new(),
                },
                Err(reason) => PrepareBundlesReply {
                    success: false,
                    reason: format!("node {} cannot reserve {reason}", self.inner.config.node_id),
                },
            },
        )
    }

    /// Releases bundles of a group (all of it here when the indexes are empty), or with
    /// `None` the uncommitted prepares past their deadline, and ends the leases inside.
    fn release_bundles(&self, group: Option<(&str, &[u32])>) -> usize {
        let mut state = self.lock();
        let state = &mut *state;
        let released = match group {
            Some((group, indexes)) => state.bundles.cancel(&mut state.resources, group, indexes),
            None => state
                .bundles
                .expire(&mut state.resources, tokio::time::Instant::now().into_std()),
        };
        let ended = state.end_bundle_leases(&released);
        if !released.is_empty() {
            tracing::info!(
                bundles = released.len(),
                leases_ended = ended,
                expired = group.is_none(),
                "placement-group bundles released"
            );
            self.inner.freed.notify_waiters();
        }
        released.len()
    }

    /// Every second until `stop`: releases prepared bundles whose commit never came, and
    /// retires shared actor hosts left empty for `host_idle_grace`.
    async fn expire_bundles(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            self.release_bundles(None);
            self.retire_idle_hosts();
        }
    }

    /// Retires the shared actor hosts that have had no actor for `host_idle_grace`.
    fn retire_idle_hosts(&self) {
        let mut state = self.lock();
        let idle = crate::actor_hosts::idle_hosts(
            state.hosts.iter(),
            std::time::Instant::now(),
            self.inner.config.host_idle_grace,
        );
        for host_id in idle {
            let Some(host) = state.hosts.remove(&host_id) else {
                continue;
            };
            let Some(worker) = host.worker_id.and_then(|id| state.workers.get_mut(&id)) else {
                continue;
            };
            tracing::debug!(host = host_id, "an actor host left empty exits");
            worker.process.retire(false);
        }
    }

    /// Ends a lease. An actor's place in a shared host is stopped before this returns, so an
    /// owner that restarts the actor (possibly in the same host) never has its new instance
    /// hit by the old one's stop.
    async fn return_lease(&self, lease_id: u64, worker_failed: bool) -> Result<()> {
        let stop = self.end_lease(lease_id, worker_failed);
        self.inner.freed.notify_waiters();
        if let Some((address, actor_id)) = stop {
            stop_hosted_actor(address, actor_id).await;
        }
        Ok(())
    }

    /// Forgets a lease and frees what it held; returns the hosted actor to stop, if any.
    fn end_lease(&self, lease_id: u64, worker_failed: bool) -> Option<(String, String)> {
        let mut state = self.lock();
        // None: its worker died and the lease was already cleaned up.
        let lease = state.leases.remove(&lease_id)?;
        state.release(&lease.allocation, lease.bundle.as_ref());
        if let Some((host, actor_id)) = &lease.hosted {
            return state.leave_host(*host, &lease.worker_id, actor_id);
        }
        let max_idle = self.inner.config.max_idle_workers;
        let idle_count = state.idle.len();
        if let Some(worker) = state.workers.get_mut(&lease.worker_id) {
            worker.leased = None;
            if worker.dedicated || worker_failed || idle_count >= max_idle {
                worker.process.retire(worker_failed);
            } else {
                state.idle.push_back(lease.worker_id.clone());
            }
        }
        None
    }

    fn on_worker_exit(&self, exit: WorkerExit) {
        let mut state = self.lock();
        tracing::debug!(worker = %exit.worker_id, status = %exit.status, "worker exited");
        state.idle.retain(|w| *w != exit.worker_id);
        // A worker that dies before registering: wake its starter at once (dropping the
        // sender), which then reports the exit status.
        state.registering.remove(&exit.worker_id);
        if let Some(worker) = state.workers.remove(&exit.worker_id) {
            if let Some(lease_id) = worker.leased {
                if let Some(lease) = state.leases.remove(&lease_id) {
                    state.release(&lease.allocation, lease.bundle.as_ref());
                }
            }
            if let Some(host) = worker.host {
                // Every actor it hosted is gone with it: their leases end (their owners
                // restart them, each against its own max_restarts).
                state.hosts.remove(&host);
                let hosted: Vec<u64> = state
                    .leases
                    .iter()
                    .filter(|(_, l)| l.hosted.as_ref().is_some_and(|(h, _)| *h == host))
                    .map(|(&id, _)| id)
                    .collect();
                for lease_id in hosted {
                    if let Some(lease) = state.leases.remove(&lease_id) {
                        state.release(&lease.allocation, lease.bundle.as_ref());
                    }
                }
            }
        }
        state.dead_workers.push(exit);
        if state.dead_workers.len() > 1024 {
            state.dead_workers.remove(0);
        }
        drop(state);
        self.inner.freed.notify_waiters();
    }

    /// Stops every worker.
    pub fn retire_all(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.freed.notify_waiters();
        let mut state = self.lock();
        for worker in state.workers.values_mut() {
            worker.process.retire(true);
        }
    }

    /// The node's object store (for processes hosting the raylet).
    pub fn object_store(&self) -> &ObjectStore {
        &self.inner.store
    }

    /// The address workers and owners reach this raylet at.
    pub fn address(&self) -> &str {
        &self.inner.address
    }
}

/// How long a raylet keeps retrying a control-store write that records a death.
const RECORD_DEATH_PATIENCE: Duration = Duration::from_secs(600);

/// Runs `op` until it succeeds, backing off up to 2 s between tries; `None` when the raylet
/// stops first or `RECORD_DEATH_PATIENCE` runs out (logged, naming `what`).
async fn retry_gcs<T, F, Fut>(raylet: &RayletService, what: &str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = fleet_gcs::Result<T>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(value) => return Some(value),
            Err(error) => {
                let stopping = raylet
                    .inner
                    .stopping
                    .load(std::sync::atomic::Ordering::Acquire);
                if stopping || started.elapsed() > RECORD_DEATH_PATIENCE {
                    tracing::warn!(%error, "{what}: gave up");
                    return None;
                }
                tracing::debug!(%error, "{what}: retrying");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

#[tonic::async_trait]
impl Raylet for RayletService {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerReply>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        let Some(waiter) = state.registering.remove(&request.worker_id) else {
            return Err(Status::not_found(format!(
                "worker {} was not started by this raylet",
                request.worker_id
            )));
        };
        if let Some(worker) = state.workers.get_mut(&request.worker_id) {
            worker.address = Some(request.address.clone());
        }
        let _ = waiter.send(request.address);
        Ok(Response::new(RegisterWorkerReply {
            node_id: self.inner.config.node_id.clone(),
        }))
    }

    async fn request_worker_lease(
        &self,
        request: Request<LeaseRequest>,
    ) -> Result<Response<LeaseReply>, Status> {
        // Leased on a task of its own: a requester that goes away mid-request (it died)
        // must not cancel it halfway, leaking the resources it holds; a lease granted to a
        // requester that is gone goes straight back.
        let this = self.clone();
        let (done, answer) = oneshot::channel();
        tokio::spawn(async move {
            let result = this.lease(request.into_inner()).await;
            if let Err(Ok(reply)) = done.send(result) {
                if reply.lease_id != 0 {
                    let _ = this.return_lease(reply.lease_id, false).await;
                }
            }
        });
        let result = answer
            .await
            .map_err(|_| Status::internal("the lease task ended without an answer"))?;
        Ok(Response::new(result?))
    }

    async fn return_worker_lease(
        &self,
        request: Request<ReturnLeaseRequest>,
    ) -> Result<Response<ReturnLeaseReply>, Status> {
        let request = request.into_inner();
        self.return_lease(request.lease_id, request.worker_failed)
            .await?;
        Ok(Response::new(ReturnLeaseReply {}))
    }

    async fn prepare_bundles(
        &self,
        request: Request<PrepareBundlesRequest>,
    ) -> Result<Response<PrepareBundlesReply>, Status> {
        Ok(Response::new(self.prepare_bundles(request.into_inner())?))
    }

    async fn commit_bundles(
        &self,
        request: Request<CommitBundlesRequest>,
    ) -> Result<Response<CommitBundlesReply>, Status> {
        let request = request.into_inner();
        self.lock()
            .bundles
            .commit(&request.placement_group_id, &request.bundle_indexes)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(CommitBundlesReply {}))
    }

    async fn cancel_bundles(
        &self,
        request: Request<CancelBundlesRequest>,
    ) -> Result<Response<CancelBundlesReply>, Status> {
        let request = request.into_inner();
        self.release_bundles(Some((&request.placement_group_id, &request.bundle_indexes)));
        Ok(Response::new(CancelBundlesReply {}))
    }

    async fn node_info(
        &self,
        _: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoReply>, Status> {
        let stats = self.inner.store.stats();
        let (objects_pulled, bytes_pulled) = self.inner.transfers.pulled();
        let state = self.lock();
        Ok(Response::new(NodeInfoReply {
            node_id: self.inner.config.node_id.clone(),
            total: state.resources.total().to_map().into_iter().collect(),
            available: state.resources.available().to_map().into_iter().collect(),
            idle_workers: state.idle.len() as u32,
            leased_workers: state.leases.len() as u32,
            object_store_used_bytes: stats.used_bytes,
            object_store_capacity_bytes: stats.capacity,
            spilled_bytes: stats.spilled_bytes,
            num_objects: stats.num_objects,
            labels: self.inner.config.labels.clone().into_iter().collect(),
            pending_leases: state.pending_leases,
            objects_pulled,
            bytes_pulled,
            reserved_bundles: state.bundles.len() as u32,
        }))
    }

    async fn store_put(
        &self,
        request: Request<StorePutRequest>,
    ) -> Result<Response<StorePutReply>, Status> {
        let request = request.into_inner();
        let id = parse_object_id(&request.object_id)?;
        self.inner
            .store
            .put(id, &request.data)
            .await
            .map_err(Error::from)?;
        self.inner.transfers.stored(id, request.data.len() as u64);
        Ok(Response::new(StorePutReply {}))
    }

    async fn store_get(
        &self,
        request: Request<StoreGetRequest>,
    ) -> Result<Response<StoreGetReply>, Status> {
        let id = parse_object_id(&request.into_inner().object_id)?;
        match self.inner.store.get(id).await.map_err(Error::from)? {
            Some(buffer) => Ok(Response::new(StoreGetReply {
                found: true,
                data: buffer.to_vec(),
            })),
            None => Ok(Response::new(StoreGetReply {
                found: false,
                data: Vec::new(),
            })),
        }
    }

    async fn store_delete(
        &self,
        request: Request<StoreDeleteRequest>,
    ) -> Result<Response<StoreDeleteReply>, Status> {
        let id = parse_object_id(&request.into_inner().object_id)?;
        self.inner.transfers.delete(id);
        Ok(Response::new(StoreDeleteReply {}))
    }

    async fn pull_object(
        &self,
        request: Request<PullObjectRequest>,
    ) -> Result<Response<PullObjectReply>, Status> {
        let request = request.into_inner();
        let id = parse_object_id(&request.object_id)?;
        match self.inner.transfers.pull(id, &request.from_address).await {
            Ok(size) => Ok(Response::new(PullObjectReply { size })),
            // UNAVAILABLE: the copy could not be read; the caller decides whether it is lost.
            Err(reason) => Err(Status::unavailable(format!(
                "cannot copy object {id} from {}: {reason}",
                request.from_address
            ))),
        }
    }

    type ReadObjectStream = ReceiverStream<Result<ObjectChunk, Status>>;

    async fn read_object(
        &self,
        request: Request<ReadObjectRequest>,
    ) -> Result<Response<Self::ReadObjectStream>, Status> {
        let request = request.into_inner();
        let id = parse_object_id(&request.object_id)?;
        let chunks = self
            .inner
            .transfers
            .read(id, request.reader_address)
            .await?;
        Ok(Response::new(ReceiverStream::new(chunks)))
    }

    async fn has_binary(
        &self,
        request: Request<HasBinaryRequest>,
    ) -> Result<Response<HasBinaryReply>, Status> {
        Ok(Response::new(HasBinaryReply {
            present: self.inner.binaries.has(&request.into_inner().digest),
        }))
    }

    async fn upload_binary(
        &self,
        request: Request<tonic::Streaming<BinaryChunk>>,
    ) -> Result<Response<UploadBinaryReply>, Status> {
        self.inner
            .binaries
            .receive(request.into_inner())
            .await
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(UploadBinaryReply {}))
    }

    type FetchBinaryStream = ReceiverStream<Result<BinaryChunk, Status>>;

    async fn fetch_binary(
        &self,
        request: Request<FetchBinaryRequest>,
    ) -> Result<Response<Self::FetchBinaryStream>, Status> {
        let chunks = self.inner.binaries.send(request.into_inner())?;
        Ok(Response::new(ReceiverStream::new(chunks)))
    }

    type AttachDriverStream = ReceiverStream<Result<DriverEvent, Status>>;

    async fn attach_driver(
        &self,
        request: Request<AttachDriverRequest>,
    ) -> Result<Response<Self::AttachDriverStream>, Status> {
        let request = request.into_inner();
        let (tx, rx) = mpsc::channel(1);
        let gcs = self.inner.gcs.clone();
        let node_id = self.inner.config.node_id.clone();
        let this = self.clone();
        tokio::spawn(async move {
            // The driver's end of the stream went away: it exited or died. (A raylet that
            // stops ends the stream instead, so its server can shut down.)
            loop {
                let stopping = this.inner.freed.notified();
                if this
                    .inner
                    .stopping
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = stopping => {
                        if this.inner.stopping.load(std::sync::atomic::Ordering::Acquire) {
                            return;
                        }
                    }
                }
            }
            // The GCS may be briefly unreachable (an election, a partition): retry until
            // the death is recorded, so the job never stays RUNNING without its driver.
            let job_id = request.job_id.clone();
            let job = retry_gcs(&this, "reading the job of a gone driver", || {
                gcs.get_job(&job_id)
            })
            .await;
            let running = job
                .flatten()
                .is_some_and(|j| j.state == JobState::JobRunning as i32);
            if running {
                tracing::info!(job = %request.job_id, driver = %request.driver_address, "driver gone; failing its job");
                let message = format!(
                    "the driver at {} exited without finishing the job (seen by node {node_id})",
                    request.driver_address
                );
                let finished = retry_gcs(&this, "marking a job failed", || async {
                    match gcs
                        .finish_job(&request.job_id, JobState::JobFailed, now_ms(), &message)
                        .await
                    {
                        // Already finished (by its driver, or another node): done.
                        Err(fleet_gcs::Error::Rejected { .. }) => Ok(0),
                        other => other,
                    }
                })
                .await;
                if finished.is_none() {
                    return;
                }
                let cause = format!("its job {} ended: {message}", request.job_id);
                retry_gcs(&this, "marking a job's actors dead", || {
                    gcs.mark_job_actors_dead(&request.job_id, &cause)
                })
                .await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// `CUDA_VISIBLE_DEVICES` for a worker holding the node's GPUs `gpu_ids`. The node's GPU ids
/// count the GPUs this raylet sees; when the raylet itself runs with `CUDA_VISIBLE_DEVICES`
/// set (say `2,3`), id 0 is the first device listed there (`2`), not physical device 0.
pub fn visible_devices(raylet_visible: Option<&str>, gpu_ids: &[u32]) -> String {
    let listed: Vec<&str> = raylet_visible
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    gpu_ids
        .iter()
        .map(|id| match listed.get(*id as usize) {
            Some(device) if !listed.is_empty() => (*device).to_string(),
            _ => id.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_object_id(text: &str) -> Result<ObjectId, Status> {
    text.parse::<ObjectId>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A raylet serving on a bound listener.
pub struct RunningRaylet {
    /// The service (for in-process use).
    pub service: RayletService,
    /// The address it serves at.
    pub address: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningRaylet {
    /// Stops serving and retires every worker.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.service.retire_all();
        let _ = self.task.await;
        if let Err(error) = self.service.inner.store.clone().destroy() {
            tracing::warn!(%error, "object store cleanup failed");
        }
        // Give workers a moment to be reaped.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts a raylet on `listener` and prestarts its workers in the background.
pub async fn start(config: RayletConfig, listener: TcpListener) -> Result<RunningRaylet> {
    config.validate()?;
    // Workers, their pipes and every connection count against it.
    crate::limits::raise_open_files_limit();
    let tls_builder = fleet_gcs::tls::server_builder().map_err(|reason| Error::InvalidRequest {
        what: "the raylet's TLS settings".into(),
        reason,
    })?;
    let address = listener
        .local_addr()
        .map_err(|source| Error::Listen {
            address: "raylet listener".into(),
            source,
        })?
        .to_string();
    // Unbounded by type, bounded in fact: one message per worker process this raylet
    // started, and it starts a bounded number.
    let (exits_tx, mut exits_rx) = mpsc::unbounded_channel();
    let (locations_tx, locations_rx) = mpsc::channel(crate::transfer::LOCATION_QUEUE);
    let prestart = config.prestart_workers;
    let node_id = config.node_id.clone();
    let service = RayletService::new(config, address.clone(), exits_tx, locations_tx)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::transfer::report_locations(
        service.inner.gcs.clone(),
        locations_rx,
    ));
    tokio::spawn(service.inner.view.clone().refresh(
        service.inner.gcs.clone(),
        node_id,
        shutdown.clone(),
    ));
    tokio::spawn(service.clone().watch_jobs(shutdown.clone()));
    tokio::spawn(service.clone().expire_bundles(shutdown.clone()));
    let server = RayletServer::new(service.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let stop = shutdown.clone();
    let watcher = service.clone();
    let prestarter = service.clone();
    // Made before the server task runs: a client of this process made right after `run`
    // returns carries the same token.
    let auth = fleet_gcs::auth::RequireToken::layer_for_process();
    let task = tokio::spawn(async move {
        let exits = tokio::spawn(async move {
            while let Some(exit) = exits_rx.recv().await {
                watcher.on_worker_exit(exit);
            }
        });
        let prestarting = tokio::spawn(async move { prestarter.prestart(prestart).await });
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        if let Err(error) = tls_builder
            .initial_stream_window_size(Some(fleet_gcs::transport::STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(fleet_gcs::transport::CONNECTION_WINDOW_BYTES))
            .max_frame_size(Some(1 << 20))
            .layer(auth)
            .add_service(server)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            tracing::error!(%error, "raylet server failed");
        }
        prestarting.abort();
        exits.abort();
    });
    Ok(RunningRaylet {
        service,
        address,
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use fleet_proto::runtime::raylet_client::RayletClient;
    use fleet_proto::runtime::LeaseRequest;

    use super::*;

    async fn raylet(binary: PathBuf, dir: &std::path::Path) -> RunningRaylet {
        raylet_with(binary, dir, |_| {}).await
    }

    async fn raylet_with(
        binary: PathBuf,
        dir: &std::path::Path,
        adjust: impl FnOnce(&mut RayletConfig),
    ) -> RunningRaylet {
        let mut config = RayletConfig::local("test-node", 2.0, 2, binary, "127.0.0.1:1");
        adjust(&mut config);
        config.prestart_workers = 0;
        config.worker_start_timeout = Duration::from_secs(5);
        config.object_store_dir = dir.join("shm");
        config.spill_dir = dir.join("spill");
        config.object_store_bytes = 1 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        start(config, listener).await.expect("raylet starts")
    }

    fn request(resources: &[(&str, f64)]) -> LeaseRequest {
        LeaseRequest {
            resources: resources
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect(),
            dedicated: false,
            job_id: String::new(),
            description: "a test task".into(),
            ..LeaseRequest::default()
        }
    }

    #[tokio::test]
    async fn waiting_leases_are_bounded_in_number_and_time() {
        use fleet_proto::runtime::{BundleSpec, PrepareBundlesRequest};
        let dir = tempfile::tempdir().expect("tempdir");
        let running = raylet_with(PathBuf::from("true"), dir.path(), |config| {
            config.max_queued_leases = 1;
            config.lease_wait_limit = Duration::from_millis(300);
        })
        .await;
        let channel = fleet_gcs::transport::Connector::channel(
            &fleet_gcs::transport::TcpConnector,
            &running.address,
        )
        .expect("channel");
        let mut client = RayletClient::new(channel);
        // A bundle holds both CPUs: a CPU lease fits the node but must wait.
        let reply = client
            .prepare_bundles(PrepareBundlesRequest {
                bundles: vec![BundleSpec {
                    placement_group_id: "pg-hold".into(),
                    bundle_index: 0,
                    resources: [("CPU".to_string(), 2.0)].into_iter().collect(),
                    job_id: String::new(),
                }],
            })
            .await
            .expect("prepare")
            .into_inner();
        assert!(reply.success, "{}", reply.reason);
        let mut first = client.clone();
        let started = tokio::time::Instant::now();
        let waiting =
            tokio::spawn(async move { first.request_worker_lease(request(&[("CPU", 1.0)])).await });
        // Wait until the first request is queued, then the queue is full.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let info = client
                .node_info(NodeInfoRequest {})
                .await
                .expect("info")
                .into_inner();
            if info.pending_leases == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lease never queued"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = client
            .request_worker_lease(request(&[("CPU", 1.0)]))
            .await
            .expect_err("the queue is full");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("max_queued_leases"),
            "{}",
            status.message()
        );
        // The waiting one is told to ask again once its wait ran out, not left hanging.
        let reply = waiting
            .await
            .expect("joined")
            .expect("answered")
            .into_inner();
        assert!(reply.rejected && reply.lease_id == 0, "{reply:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        running.stop().await;
    }

    #[tokio::test]
    async fn a_worker_binary_that_cannot_start_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = raylet(PathBuf::from("/nonexistent/fleet-worker"), dir.path()).await;
        let mut client = RayletClient::new(
            fleet_gcs::transport::Connector::channel(
                &fleet_gcs::transport::TcpConnector,
                &running.address,
            )
            .expect("channel"),
        );
        let status = client
            .request_worker_lease(request(&[("CPU", 1.0)]))
            .await
            .expect_err("no worker can start");
        assert!(
            status.message().contains("/nonexistent/fleet-worker"),
            "{}",
            status.message()
        );
        // The failed start gave its resources back: the node is whole again.
        let info = client
            .node_info(NodeInfoRequest {})
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.available.get("CPU"), Some(&2.0));
        running.stop().await;
    }

    #[tokio::test]
    async fn a_worker_that_exits_before_registering_names_the_likely_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        // `true` starts and exits at once without registering.
        let running = raylet(PathBuf::from("true"), dir.path()).await;
        let mut client = RayletClient::new(
            fleet_gcs::transport::Connector::channel(
                &fleet_gcs::transport::TcpConnector,
                &running.address,
            )
            .expect("channel"),
        );
        let status = client
            .request_worker_lease(request(&[("CPU", 1.0)]))
            .await
            .expect_err("no registration");
        assert!(
            status.message().contains("fleet::init()"),
            "{}",
            status.message()
        );
        running.stop().await;
    }

    #[test]
    fn gpu_ids_translate_through_the_raylets_own_visible_devices() {
        assert_eq!(visible_devices(None, &[0, 1]), "0,1");
        assert_eq!(visible_devices(Some("2,3"), &[0]), "2");
        assert_eq!(visible_devices(Some("2,3"), &[1, 0]), "3,2");
        assert_eq!(
            visible_devices(Some("GPU-uuid-a,GPU-uuid-b"), &[1]),
            "GPU-uuid-b"
        );
        assert_eq!(visible_devices(Some(""), &[1]), "1");
        assert_eq!(visible_devices(None, &[]), "");
    }

    #[tokio::test]
    async fn an_absurd_gpu_count_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config =
            RayletConfig::local("n", 1.0, u32::MAX, PathBuf::from("true"), "127.0.0.1:1");
        config.object_store_dir = dir.path().join("shm");
        config.spill_dir = dir.path().join("spill");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let error = start(config, listener).await.err().expect("refused");
        assert!(error.to_string().contains("num_gpus"), "{error}");
    }

    #[tokio::test]
    async fn requests_that_can_never_fit_fail_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = raylet(PathBuf::from("true"), dir.path()).await;
        let mut client = RayletClient::new(
            fleet_gcs::transport::Connector::channel(
                &fleet_gcs::transport::TcpConnector,
                &running.address,
            )
            .expect("channel"),
        );
        let status = client
            .request_worker_lease(request(&[("GPU", 3.0)]))
            .await
            .expect_err("infeasible");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(crate::error::is_infeasible(&status));
        assert!(
            status.message().contains("GPU: 3") && status.message().contains("GPU: 2"),
            "{}",
            status.message()
        );
        let status = client
            .request_worker_lease(request(&[("GPU", 1.5)]))
            .await
            .expect_err("invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            !crate::error::is_infeasible(&status),
            "a malformed request is not infeasible"
        );
        running.stop().await;
    }
    #[tokio::test]
    async fn bundles_reserve_out_of_node_info_and_leases_beyond_them_fail_clearly() {
        use fleet_proto::runtime::{
            BundleSpec, CancelBundlesRequest, CommitBundlesRequest, PrepareBundlesRequest,
            SchedulingStrategy,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let running = raylet(PathBuf::from("true"), dir.path()).await;
        let mut client = RayletClient::new(
            fleet_gcs::transport::Connector::channel(
                &fleet_gcs::transport::TcpConnector,
                &running.address,
            )
            .expect("channel"),
        );
        let spec = |index: u32, cpus: f64| BundleSpec {
            placement_group_id: "pg-1".into(),
            bundle_index: index,
            resources: [("CPU".to_string(), cpus)].into_iter().collect(),
            job_id: String::new(),
        };
        let prepare = PrepareBundlesRequest {
            bundles: vec![spec(0, 1.0), spec(1, 0.5)],
        };
        let reply = client
            .prepare_bundles(prepare.clone())
            .await
            .expect("prepare")
            .into_inner();
        assert!(reply.success, "{}", reply.reason);
        // Idempotent: a retried prepare reserves nothing more.
        client.prepare_bundles(prepare).await.expect("again");
        let info = client
            .node_info(NodeInfoRequest {})
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.available.get("CPU"), Some(&0.5));
        assert_eq!(info.reserved_bundles, 2);
        // More than is left: nothing reserved, and the reason names the bundle.
        let reply = client
            .prepare_bundles(PrepareBundlesRequest {
                bundles: vec![spec(2, 1.0)],
            })
            .await
            .expect("prepare")
            .into_inner();
        assert!(!reply.success);
        assert!(
            reply.reason.contains("bundle 2 of placement group pg-1"),
            "{}",
            reply.reason
        );
        client
            .commit_bundles(CommitBundlesRequest {
                placement_group_id: "pg-1".into(),
                bundle_indexes: vec![0, 1],
            })
            .await
            .expect("commit");
        let mut beyond = request(&[("CPU", 2.0)]);
        beyond.strategy = Some(SchedulingStrategy {
            kind: StrategyKind::PlacementGroup as i32,
            placement_group_id: "pg-1".into(),
            bundle_index: 0,
            ..SchedulingStrategy::default()
        });
        let status = client
            .request_worker_lease(beyond)
            .await
            .expect_err("larger than the bundle");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(crate::error::is_infeasible(&status));
        assert!(
            status
                .message()
                .contains("bundle 0 of placement group pg-1")
                && status.message().contains("CPU: 1"),
            "{}",
            status.message()
        );
        client
            .cancel_bundles(CancelBundlesRequest {
                placement_group_id: "pg-1".into(),
                bundle_indexes: vec![],
            })
            .await
            .expect("cancel");
        let info = client
            .node_info(NodeInfoRequest {})
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.available.get("CPU"), Some(&2.0));
        assert_eq!(info.reserved_bundles, 0);
        running.stop().await;
    }
}
