//! Task submission with leases (Ray's model): a task shape (its resources) leases a worker
//! from the raylet once and then runs many tasks on it; a finished task hands its lease to
//! the next queued task of the same shape without a round trip to the raylet; a lease left
//! idle goes back shortly after.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use fleet_gcs::auth::AuthChannel;
use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::scheduling_strategy::Kind as StrategyKind;
use fleet_proto::runtime::{
    task_reply, LeaseReply, LeaseRequest, ReturnLeaseRequest, SchedulingStrategy, TaskKind,
    TaskSpec,
};
use tokio::sync::oneshot;

use crate::cancel::{Cancellable, RunningAt};
use crate::error::{Error, Result, TaskFailure};
use crate::object_ref::{Arg, Location, ObjectRef, RefGuard, Stored};
pub use fleet_raylet::labels::LabelSelector;

/// How long returning a lease may take before the returner moves on.
const RETURN_LEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an unused lease is kept before it goes back to the raylet.
const LEASE_IDLE: Duration = Duration::from_millis(100);
/// Lease requests of one shape outstanding at the raylet at once. Queued tasks beyond this
/// wait for a lease to be handed over; a thousand queued tasks must not become a thousand
/// requests that keep granting (and starting workers) long after the work is done.
const MAX_PENDING_LEASE_REQUESTS: usize = 4;
/// Inline argument bytes one task message carries at most; past it, values go by reference
/// through the object store (as values of `INLINE_LIMIT` and more always do).
pub(crate) const INLINE_ARGS_BUDGET: usize = 8 << 20;
/// Spillbacks one lease request follows before it fails (each to a node that turned out
/// busy or gone).
const MAX_SPILLBACKS: u64 = 50;

/// Options of a remote function call.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    /// Resources: "CPU" (default 1), "GPU", "memory", custom.
    pub resources: BTreeMap<String, f64>,
    /// Retries when the worker dies (default 3).
    pub max_retries: u32,
    /// Also retry when the function returns `Err` or panics.
    pub retry_exceptions: bool,
    /// Where it may run.
    pub scheduling: Scheduling,
    /// Node labels it requires or prefers (default: any node).
    pub label_selector: LabelSelector,
    /// With placement-group scheduling: the tasks and actors it submits without a placement
    /// of their own go into the same group (any bundle), and so on down (Ray's
    /// `placement_group_capture_child_tasks`).
    pub capture_child_tasks: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            resources: BTreeMap::from([("CPU".to_string(), 1.0)]),
            max_retries: 3,
            retry_exceptions: false,
            scheduling: Scheduling::Default,
            label_selector: LabelSelector::default(),
            capture_child_tasks: false,
        }
    }
}

/// Where tasks and actors are placed (Ray's scheduling strategies).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scheduling {
    /// Hybrid: this node until it is half used, then the least used node that fits.
    #[default]
    Default,
    /// The least used node that fits, round-robin among equals.
    Spread,
    /// A given node; `soft` runs elsewhere when it is dead or can never fit.
    NodeAffinity {
        /// The node's id.
        node_id: String,
        /// Fall back instead of failing.
        soft: bool,
    },
    /// Inside a placement group's bundle (any bundle that fits when `bundle_index` is
    /// `None`): on the bundle's node, from the resources the bundle reserved.
    PlacementGroup {
        /// The group's id ([`crate::placement::PlacementGroupHandle::id`]).
        id: String,
        /// Which bundle; `None`: any.
        bundle_index: Option<usize>,
    },
}

impl Scheduling {
    /// The placement group that captures children of work scheduled this way with
    /// `capture` set (none otherwise).
    pub(crate) fn capturing_group(&self, capture: bool) -> Option<String> {
        match self {
            Scheduling::PlacementGroup { id, .. } if capture => Some(id.clone()),
            _ => None,
        }
    }

    /// Where work with no placement of its own goes when submitted by code running inside a
    /// capturing placement group: into that group (any bundle), capturing in turn.
    pub(crate) fn captured(&mut self, capture: &mut bool) {
        if *self == Scheduling::Default {
            if let Some(id) = crate::runtime_context::captured_group() {
                *self = Scheduling::PlacementGroup {
                    id,
                    bundle_index: None,
                };
                *capture = true;
            }
        }
    }

    fn to_wire(&self, labels: &LabelSelector) -> Option<SchedulingStrategy> {
        let mut wire = self.kind_to_wire();
        wire.labels = labels.to_wire();
        (wire != SchedulingStrategy::default()).then_some(wire)
    }

    fn kind_to_wire(&self) -> SchedulingStrategy {
        match self {
            Scheduling::Default => SchedulingStrategy::default(),
            Scheduling::Spread => SchedulingStrategy {
                kind: StrategyKind::Spread as i32,
                ..SchedulingStrategy::default()
            },
            Scheduling::NodeAffinity { node_id, soft } => SchedulingStrategy {
                kind: StrategyKind::NodeAffinity as i32,
                node_id: node_id.clone(),
                soft: *soft,
                ..SchedulingStrategy::default()
            },
            Scheduling::PlacementGroup { id, bundle_index } => SchedulingStrategy {
                kind: StrategyKind::PlacementGroup as i32,
                placement_group_id: id.clone(),
                bundle_index: bundle_index.map_or(-1, |i| i32::try_from(i).unwrap_or(i32::MAX)),
                ..SchedulingStrategy::default()
            },
        }
    }
}

impl TaskOptions {
    /// Inside a capturing placement group, a task with no placement of its own joins it.
    pub(crate) fn apply_capture(&mut self) {
        self.scheduling.captured(&mut self.capture_child_tasks);
    }
}

/// A granted lease.
#[derive(Clone, Debug)]
pub struct Lease {
    /// Raylet's lease id.
    pub lease_id: u64,
    /// The worker's CoreWorker address.
    pub worker_address: String,
    /// GPU ids of the lease.
    pub gpu_ids: Vec<u32>,
    /// The node it is on.
    pub node_id: String,
    /// The raylet that granted it (where it goes back).
    pub raylet_address: String,
    /// A place in a shared actor host (other actors live in the process).
    pub shared: bool,
}

/// Leases workers: asks the local raylet, follows its spillback to another node (once, with
/// `grant_or_reject`), and returns leases to the raylet that granted them.
#[derive(Clone)]
pub(crate) struct Leaser {
    inner: Arc<LeaserInner>,
}

struct LeaserInner {
    local: RayletClient<AuthChannel>,
    local_address: String,
    job_id: String,
    job_binary: String,
    worker_args: Vec<String>,
    clients: DashMap<String, RayletClient<AuthChannel>>,
    /// The node of every worker leased so far (worker address → node id).
    worker_nodes: DashMap<String, String>,
    /// Nodes the GCS declared dead.
    dead_nodes: DashMap<String, ()>,
}

/// What a lease is for.
pub(crate) struct LeaseAsk<'a> {
    pub resources: &'a BTreeMap<String, f64>,
    pub description: &'a str,
    pub dedicated: bool,
    pub detached: bool,
    pub scheduling: &'a Scheduling,
    pub labels: &'a LabelSelector,
    /// An actor that may share a host process with others (its id, for the raylet).
    pub actor_host: Option<&'a str>,
}

fn lease_error(description: &str, status: &tonic::Status) -> Error {
    if fleet_raylet::error::is_infeasible(status) {
        Error::Infeasible(status.message().to_string())
    } else {
        Error::rpc(format!("leasing a worker for {description}"), status)
    }
}

impl Leaser {
    pub(crate) fn new(
        local: RayletClient<AuthChannel>,
        local_address: String,
        job_id: String,
        job_binary: String,
    ) -> Self {
        Leaser {
            inner: Arc::new(LeaserInner {
                local,
                local_address,
                job_id,
                job_binary,
                worker_args: std::env::args().skip(1).collect(),
                clients: DashMap::new(),
                worker_nodes: DashMap::new(),
                dead_nodes: DashMap::new(),
            }),
        }
    }

    /// A client for the raylet at `address`.
    pub(crate) fn raylet_at(&self, address: &str) -> Result<RayletClient<AuthChannel>> {
        if address.is_empty() || address == self.inner.local_address {
            return Ok(self.inner.local.clone());
        }
        if let Some(client) = self.inner.clients.get(address) {
            return Ok(client.clone());
        }
        let channel =
            fleet_gcs::transport::Connector::channel(&fleet_gcs::transport::TcpConnector, address)
                .map_err(Error::Internal)?;
        let client = RayletClient::new(channel)
            .max_decoding_message_size(fleet_raylet::server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(fleet_raylet::server::MAX_MESSAGE_BYTES);
        self.inner
            .clients
            .insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Leases a worker somewhere in the cluster.
    pub(crate) async fn lease(&self, ask: LeaseAsk<'_>) -> Result<Lease> {
        let request = LeaseRequest {
            resources: ask.resources.clone().into_iter().collect(),
            dedicated: ask.dedicated,
            job_id: self.inner.job_id.clone(),
            description: ask.description.to_string(),
            strategy: ask.scheduling.to_wire(ask.labels),
            grant_or_reject: false,
            job_binary: self.inner.job_binary.clone(),
            worker_args: self.inner.worker_args.clone(),
            detached: ask.detached,
            actor_host: ask.actor_host.is_some(),
            actor_id: ask.actor_host.unwrap_or_default().to_string(),
        };
        // A spillback target may die before it grants, or turn out busy (the local view was
        // stale): ask the local raylet again, a bounded number of times.
        let mut spills: u64 = 0;
        let mut busy_local: u64 = 0;
        loop {
            let mut local = self.inner.local.clone();
            let reply = match local.request_worker_lease(request.clone()).await {
                Ok(reply) => reply.into_inner(),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    // The raylet's lease queue is full: back off (this slows the submitter
                    // instead of growing the queue).
                    busy_local += 1;
                    tokio::time::sleep(Duration::from_millis(20 * busy_local.min(25))).await;
                    continue;
                }
                Err(status) => return Err(lease_error(ask.description, &status)),
            };
            if reply.rejected {
                // Waited the raylet's lease_wait_limit: still wanted, so ask again.
                continue;
            }
            if reply.spillback_address.is_empty() {
                return Ok(self.granted(reply, &self.inner.local_address));
            }
            spills += 1;
            if spills > MAX_SPILLBACKS {
                return Err(Error::Rpc {
                    what: format!("leasing a worker for {}", ask.description),
                    code: tonic::Code::Unavailable,
                    message: format!(
                        "{MAX_SPILLBACKS} nodes the local raylet sent it to refused or failed (the last was {}); the cluster's view of free resources keeps changing, try again",
                        reply.spillback_address
                    ),
                });
            }
            let target = reply.spillback_address;
            let mut remote = self.raylet_at(&target)?;
            let mut spilled = request.clone();
            spilled.grant_or_reject = true;
            match remote.request_worker_lease(spilled).await {
                Ok(reply) if !reply.get_ref().rejected => {
                    return Ok(self.granted(reply.into_inner(), &target))
                }
                Ok(_) => {
                    // Busy after all (the local raylet's view was stale): ask again once it
                    // has heard from that node.
                    tokio::time::sleep(Duration::from_millis(50 * spills.min(8))).await;
                }
                Err(status)
                    if !fleet_raylet::error::is_infeasible(&status)
                        && status.code() != tonic::Code::InvalidArgument =>
                {
                    // The node died or went away before granting.
                    tracing::debug!(node = %target, status = %status.message(), "spillback target failed; asking again");
                    self.inner.clients.remove(&target);
                    tokio::time::sleep(Duration::from_millis(100 * spills.min(5))).await;
                }
                Err(status) => return Err(lease_error(ask.description, &status)),
            }
        }
    }

    /// Addresses of the workers leased on `node_id` (forgotten here).
    /// Records that the GCS declared `node_id` dead (its leases are not returned: it freed
    /// them with itself, or frees them when it learns it is dead) and returns the workers
    /// this process used on it.
    pub(crate) fn node_died(&self, node_id: &str) -> Vec<String> {
        self.inner.dead_nodes.insert(node_id.to_string(), ());
        let workers: Vec<String> = self
            .inner
            .worker_nodes
            .iter()
            .filter(|e| e.value() == node_id)
            .map(|e| e.key().clone())
            .collect();
        for worker in &workers {
            self.inner.worker_nodes.remove(worker);
        }
        workers
    }

    fn granted(&self, reply: LeaseReply, raylet_address: &str) -> Lease {
        self.inner
            .worker_nodes
            .insert(reply.worker_address.clone(), reply.node_id.clone());
        Lease {
            lease_id: reply.lease_id,
            worker_address: reply.worker_address,
            gpu_ids: reply.gpu_ids,
            node_id: reply.node_id,
            raylet_address: raylet_address.to_string(),
            shared: reply.shared,
        }
    }

    /// Gives a lease back to the raylet that granted it.
    pub(crate) async fn return_lease(&self, lease: &Lease, worker_failed: bool) {
        // A partitioned dead node would only be waited on (RETURN_LEASE_TIMEOUT) in vain.
        if self.inner.dead_nodes.contains_key(&lease.node_id) {
            return;
        }
        let Ok(mut raylet) = self.raylet_at(&lease.raylet_address) else {
            return;
        };
        let request = ReturnLeaseRequest {
            lease_id: lease.lease_id,
            worker_failed,
        };
        // Bounded: the granting node may be frozen or partitioned (an actor's restart waits
        // for this), and a node that is gone freed the lease with itself.
        match tokio::time::timeout(RETURN_LEASE_TIMEOUT, raylet.return_worker_lease(request)).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                tracing::debug!(lease = lease.lease_id, status = %status.message(), "returning a lease failed (its node may be gone)");
            }
            Err(_) => {
                tracing::debug!(
                    lease = lease.lease_id,
                    "returning a lease timed out (its node does not answer)"
                );
            }
        }
    }
}

type ShapeKey = (Vec<(String, u64)>, String, LabelSelector);

/// Leases are reused only by tasks of the same resources, placement and labels.
fn shape_key(options: &TaskOptions) -> ShapeKey {
    (
        options
            .resources
            .iter()
            .map(|(k, v)| (k.clone(), v.to_bits()))
            .collect(),
        format!("{:?}", options.scheduling),
        options.label_selector.clone(),
    )
}

type LeaseWaiter = oneshot::Sender<Result<Lease>>;

/// The lease pool's decisions for one shape, without I/O (unit-tested): an idle lease is
/// reused first; a waiter beyond the requests in flight asks the raylet for one more, up to
/// `MAX_PENDING_LEASE_REQUESTS`; a granted or released lease goes to the first waiter still
/// waiting, else it is parked; an idle timer returns only the parking it was set for.
#[derive(Default)]
struct Shape {
    idle: Vec<(Lease, u64)>,
    waiters: VecDeque<LeaseWaiter>,
    requesting: usize,
}

impl Shape {
    /// An idle lease, if one is parked.
    fn take_idle(&mut self) -> Option<Lease> {
        self.idle.pop().map(|(lease, _)| lease)
    }

    /// Queues a waiter; true when a new request to the raylet should go out for it.
    fn enqueue(&mut self, waiter: LeaseWaiter) -> bool {
        self.waiters.push_back(waiter);
        let more =
            self.waiters.len() > self.requesting && self.requesting < MAX_PENDING_LEASE_REQUESTS;
        if more {
            self.requesting += 1;
        }
        more
    }

    /// A request to the raylet finished (granted or not).
    fn request_done(&mut self) {
        self.requesting = self.requesting.saturating_sub(1);
    }

    /// Gives `lease` to the first waiter still waiting; returns it when none is.
    fn give(&mut self, lease: Lease) -> Option<Lease> {
        let mut lease = lease;
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.send(Ok(lease)) {
                Ok(()) => return None,
                // That caller gave up: the next one gets it.
                Err(Ok(back)) => lease = back,
                Err(Err(_)) => return None,
            }
        }
        Some(lease)
    }

    /// Parks an unused lease under `generation` (the parking an idle timer may end).
    fn park(&mut self, lease: Lease, generation: u64) {
        self.idle.push((lease, generation));
    }

    /// The idle timer of parking `generation` fired: true (and the lease is no longer
    /// parked) when that parking still holds it; a lease reused and parked again since is
    /// left alone.
    fn expire(&mut self, lease_id: u64, generation: u64) -> bool {
        let before = self.idle.len();
        self.idle
            .retain(|(l, g)| !(l.lease_id == lease_id && *g == generation));
        self.idle.len() < before
    }

    /// A request failed in a way every waiter of this shape would see too.
    fn fail_all(&mut self, error: &Error) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

/// Leases held by this process, by shape.
pub struct LeasePool {
    leaser: Leaser,
    tasks: crate::tasks::TaskOwner,
    shapes: Arc<Mutex<HashMap<ShapeKey, Shape>>>,
    generation: std::sync::atomic::AtomicU64,
}

impl LeasePool {
    pub(crate) fn new(leaser: Leaser, tasks: crate::tasks::TaskOwner) -> Self {
        LeasePool {
            leaser,
            tasks,
            shapes: Arc::default(),
            generation: Default::default(),
        }
    }

    /// Gets a worker for `resources`: an idle lease of this shape, or a new one.
    pub async fn acquire(
        self: &Arc<Self>,
        options: &TaskOptions,
        description: &str,
    ) -> Result<Lease> {
        let key = shape_key(options);
        let (tx, rx) = oneshot::channel();
        let request_more = {
            let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
            let shape = shapes.entry(key.clone()).or_default();
            if let Some(lease) = shape.take_idle() {
                return Ok(lease);
            }
            shape.enqueue(tx)
        };
        if request_more {
            let pool = self.clone();
            let resources = options.resources.clone();
            let scheduling = options.scheduling.clone();
            let labels = options.label_selector.clone();
            let description = description.to_string();
            let lessee = self.clone();
            lessee.tasks.spawn(async move {
                let reply = pool
                    .leaser
                    .lease(LeaseAsk {
                        resources: &resources,
                        description: &description,
                        dedicated: false,
                        detached: false,
                        scheduling: &scheduling,
                        labels: &labels,
                        actor_host: None,
                    })
                    .await;
                let mut shapes = pool.shapes.lock().unwrap_or_else(|e| e.into_inner());
                let shape = shapes.entry(key.clone()).or_default();
                shape.request_done();
                match reply {
                    Ok(lease) => {
                        drop(shapes);
                        pool.hand_over(key, lease);
                    }
                    // Infeasible or failed to start a worker: every waiter of this shape
                    // would get the same answer.
                    Err(error) => shape.fail_all(&error),
                }
            });
        }
        rx.await
            .map_err(|_| Error::Internal("lease request dropped".into()))?
    }

    /// Gives a lease to the next waiter of its shape, or parks it and returns it to the
    /// raylet if nobody wants it soon.
    fn hand_over(self: &Arc<Self>, key: ShapeKey, lease: Lease) {
        let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        let shape = shapes.entry(key.clone()).or_default();
        let Some(lease) = shape.give(lease) else {
            return;
        };
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lease_id = lease.lease_id;
        let granted_by = lease.clone();
        shape.park(lease, generation);
        drop(shapes);
        let pool = self.clone();
        self.tasks.spawn(async move {
            tokio::time::sleep(LEASE_IDLE).await;
            let expired = {
                let mut shapes = pool.shapes.lock().unwrap_or_else(|e| e.into_inner());
                shapes.entry(key).or_default().expire(lease_id, generation)
            };
            if expired {
                pool.leaser.return_lease(&granted_by, false).await;
            }
        });
    }

    /// Returns a lease after use: to the next task of its shape, or (failed) to the raylet.
    pub fn release(self: &Arc<Self>, options: &TaskOptions, lease: Lease, worker_failed: bool) {
        if worker_failed {
            let leaser = self.leaser.clone();
            self.tasks
                .spawn(async move { leaser.return_lease(&lease, true).await });
            return;
        }
        self.hand_over(shape_key(options), lease);
    }
}

/// Submits a remote function call; the returned reference resolves to its result.
pub fn submit_task<T>(
    function: &'static str,
    args: Vec<Arg>,
    mut options: TaskOptions,
) -> ObjectRef<T> {
    options.apply_capture();
    let Ok(runtime) = crate::context::current() else {
        // Without a runtime, awaiting the reference reports NotInitialized.
        return ObjectRef::new(crate::ids::new_id("obj"), String::new());
    };
    let task_id = crate::ids::new_id("task");
    let object_id = format!("{task_id}.ret");
    let result = ObjectRef::new(object_id.clone(), runtime.address.clone());
    runtime.store.slot(&object_id);
    let registration =
        crate::cancel::Registration::new(&runtime, &object_id, function.to_string(), false);
    let rt = runtime.clone();
    let stopped = runtime.clone();
    let answer_id = object_id.clone();
    runtime.tasks.spawn_answering(
        async move {
            let run = Run {
                task_id: &task_id,
                function,
                options: &options,
                cancel: registration.cancellable(),
                streaming: false,
            };
            let outcome = run_task(&rt, &run, args, &object_id).await;
            // Unregistered before the result is set: a cancel that finds the result set
            // finds nothing left to stop.
            drop(registration);
            rt.set_result(&object_id, outcome);
        },
        move || stopped.store.set(&answer_id, Err(Error::ShutDown)),
    );
    result
}

/// Submits a call of a streaming remote function (one that takes a `fleet::Emitter<T>`);
/// its items arrive on the returned stream while it runs.
pub fn submit_streaming_task<T>(
    function: &'static str,
    args: Vec<Arg>,
    mut options: TaskOptions,
) -> crate::stream::ObjectRefStream<T> {
    options.apply_capture();
    let runtime = match crate::context::current() {
        Ok(runtime) => runtime,
        Err(error) => return crate::stream::ObjectRefStream::failed(error, function),
    };
    let task_id = crate::ids::new_id("task");
    let state = crate::stream::open(&runtime, &task_id);
    let ended = state.clone();
    spawn_streaming(
        &runtime,
        (task_id.clone(), Vec::new()),
        function,
        args,
        options,
        move |outcome| ended.end(outcome),
    );
    crate::stream::ObjectRefStream::new(Some(runtime), state, task_id, function.to_string())
}

/// Runs a task that sends items to this process (a stream, or several return values);
/// `on_end` learns how it ended (once). `fleet::cancel` finds it by its task's result id,
/// and by `ids` (the task id, and its return values' ids).
pub(crate) fn spawn_streaming(
    runtime: &Arc<crate::context::CoreWorker>,
    (task_id, ids): (String, Vec<String>),
    function: &'static str,
    args: Vec<Arg>,
    options: TaskOptions,
    on_end: impl FnOnce(Result<()>) + Send + 'static,
) {
    // The task's own result (`()`, or its error) is never handed out: it ends the stream.
    let object_id = format!("{task_id}.ret");
    let registration =
        crate::cancel::Registration::new(runtime, &object_id, function.to_string(), false)
            .also_by(runtime, &ids);
    let rt = runtime.clone();
    let on_end = Arc::new(Mutex::new(Some(on_end)));
    let stopped = on_end.clone();
    runtime.tasks.spawn_answering(
        async move {
            let run = Run {
                task_id: &task_id,
                function,
                options: &options,
                cancel: registration.cancellable(),
                streaming: true,
            };
            let outcome = run_task(&rt, &run, args, &object_id).await;
            drop(registration);
            // Its value (the function's `()`) is not kept: only the end matters.
            end_once(&on_end, outcome.map(|_| ()));
        },
        move || end_once(&stopped, Err(Error::ShutDown)),
    );
}

/// Runs the end handler of a streaming task, the first time only.
fn end_once<F: FnOnce(Result<()>)>(on_end: &Mutex<Option<F>>, outcome: Result<()>) {
    let taken = on_end.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(on_end) = taken {
        on_end(outcome);
    }
}

type WireArg = fleet_proto::runtime::Arg;

/// A function call's arguments for the wire: values inline, except large values this
/// process owns, which go by reference to their object store (the worker's raylet pulls
/// them, once per node; they are never copied through this process). References stay held
/// (the guards) until the task's result is no longer needed.
pub(crate) async fn resolve_task_args(
    runtime: &Arc<crate::context::CoreWorker>,
    args: Vec<Arg>,
) -> Result<(Vec<WireArg>, Vec<RefGuard>)> {
    use fleet_proto::runtime::arg::Value;
    let mut wire = Vec::with_capacity(args.len());
    let mut guards = Vec::new();
    let mut inline_bytes = 0usize;
    // A large value, or one past the message's inline budget, goes by reference: stored
    // once in this node's object store, owned by this process for as long as the call (or
    // its lineage) holds the guard.
    let too_big = travels_by_reference;
    let mut args: VecDeque<Arg> = args.into();
    while let Some(arg) = args.pop_front() {
        let arg = match arg {
            Arg::Value(Ok(value), contained) if too_big(value.len(), inline_bytes) => {
                guards.extend(contained);
                crate::api::put_encoded(runtime, value)
            }
            other => other,
        };
        match arg {
            Arg::Value(value, contained) => {
                let value = value?;
                inline_bytes += value.len();
                wire.push(WireArg {
                    value: Some(Value::Inline(value)),
                });
                guards.extend(contained);
            }
            Arg::Ref { id, owner, guard } => {
                if owner == runtime.address {
                    if let Stored::Plasma(stored, at) = runtime.store.slot(&id).wait().await? {
                        wire.push(WireArg {
                            value: Some(Value::Stored(fleet_proto::runtime::StoredArg {
                                object_id: id,
                                owner,
                                stored_id: stored.to_string(),
                                stored_at: at.to_string(),
                            })),
                        });
                        guards.push(guard);
                        continue;
                    }
                }
                let bytes = runtime.get_bytes(&id, &owner).await?.to_vec();
                drop(guard);
                if too_big(bytes.len(), inline_bytes) {
                    // A borrowed value too large to travel inline: a stored copy of our own
                    // (taken by the branch above next).
                    args.push_front(crate::api::put_encoded(runtime, bytes));
                    continue;
                }
                inline_bytes += bytes.len();
                wire.push(WireArg {
                    value: Some(Value::Inline(bytes)),
                });
            }
        }
    }
    Ok((wire, guards))
}

/// One task to run: what, how, and how it is cancelled.
struct Run<'a> {
    task_id: &'a str,
    function: &'a str,
    options: &'a TaskOptions,
    cancel: &'a Arc<Cancellable>,
    /// It emits a stream of items to this process (`fleet::Emitter`).
    streaming: bool,
}

async fn run_task(
    runtime: &Arc<crate::context::CoreWorker>,
    run: &Run<'_>,
    args: Vec<Arg>,
    object_id: &str,
) -> Result<Stored> {
    let (function, options) = (run.function, run.options);
    let (args, guards) = run
        .cancel
        .unless_cancelled(resolve_task_args(runtime, args))
        .await??;
    let stored = run_resolved(runtime, run, &args).await?;
    if matches!(stored, Stored::Plasma(..)) && !run.streaming {
        // Its only copy lives in one node's store: keep what it takes to make it again.
        runtime.lineage.insert(
            object_id.to_string(),
            Arc::new(Lineage {
                function: function.to_string(),
                args,
                _guards: guards,
                options: options.clone(),
                rebuilds_left: std::sync::atomic::AtomicU32::new(options.max_retries),
            }),
        );
    }
    Ok(stored)
}

/// How to make a stored task result again: the task and its resolved arguments (references
/// inside them stay alive as long as this does).
pub(crate) struct Lineage {
    function: String,
    args: Vec<WireArg>,
    _guards: Vec<RefGuard>,
    options: TaskOptions,
    rebuilds_left: std::sync::atomic::AtomicU32,
}

/// Re-runs the task that made `object` (its copy at `lost_at` is gone) and records where the
/// new copy is.
pub(crate) async fn rebuild(
    runtime: &Arc<crate::context::CoreWorker>,
    object: &str,
    lost_at: &Location,
) -> Result<Stored> {
    let lost = |reason: String| Error::ObjectLost {
        object_id: object.to_string(),
        location: lost_at.to_string(),
        reason,
    };
    let Some(lineage) = runtime.lineage.get(object).map(|l| l.clone()) else {
        return Err(lost(
            "it was made by put() or an actor method (or freed), which cannot be re-run; keep such values in a checkpoint or return them from a task".into(),
        ));
    };
    // Atomic: two readers that find the copy lost at once take one re-run each, never the
    // same one twice (the rebuild of one object is also shared; see `reconstruct`).
    if !take_rebuild(&lineage.rebuilds_left) {
        return Err(lost(format!(
            "its task {} already used its {} re-run(s) (max_retries)",
            lineage.function, lineage.options.max_retries
        )));
    }
    tracing::info!(object, function = %lineage.function, "rebuilding a lost object from its lineage");
    let task_id = crate::ids::new_id("task");
    let run = Run {
        task_id: &task_id,
        function: &lineage.function,
        options: &lineage.options,
        cancel: &Cancellable::unregistered(&lineage.function),
        streaming: false,
    };
    match run_resolved(runtime, &run, &lineage.args).await {
        Ok(stored) => {
            runtime.store.relocate(object, stored.clone());
            Ok(stored)
        }
        Err(error) => Err(lost(format!(
            "re-running its task {} failed: {error}",
            lineage.function
        ))),
    }
}

/// Whether an argument of `len` bytes, after `inline_so_far` inline bytes of the same call,
/// goes by reference: from `INLINE_LIMIT` up, or past the call's `INLINE_ARGS_BUDGET`.
fn travels_by_reference(len: usize, inline_so_far: usize) -> bool {
    len >= crate::plasma::INLINE_LIMIT || inline_so_far + len > INLINE_ARGS_BUDGET
}

/// Takes one re-run from a lineage's budget; false when none is left.
fn take_rebuild(left: &std::sync::atomic::AtomicU32) -> bool {
    left.fetch_update(
        std::sync::atomic::Ordering::AcqRel,
        std::sync::atomic::Ordering::Acquire,
        |left| left.checked_sub(1),
    )
    .is_ok()
}

async fn run_resolved(
    runtime: &Arc<crate::context::CoreWorker>,
    run: &Run<'_>,
    args: &[WireArg],
) -> Result<Stored> {
    let Run {
        task_id,
        function,
        options,
        cancel,
        streaming,
    } = *run;
    let pool = runtime.leases.clone();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let lease = cancel
            .unless_cancelled(pool.acquire(options, function))
            .await??;
        let running_at = RunningAt {
            worker: lease.worker_address.clone(),
            task_id: task_id.to_string(),
            lease: Some(lease.clone()),
        };
        if !cancel.start(running_at) {
            pool.release(options, lease, false);
            return Err(cancel.error());
        }
        let spec = TaskSpec {
            task_id: task_id.to_string(),
            job_id: runtime.job_id.clone(),
            kind: TaskKind::Function as i32,
            function: function.to_string(),
            args: args.to_vec(),
            gpu_ids: lease.gpu_ids.clone(),
            owner_address: runtime.address.clone(),
            streaming,
            capture_placement_group: options
                .scheduling
                .capturing_group(options.capture_child_tasks)
                .unwrap_or_default(),
            ..TaskSpec::default()
        };
        let node_id = lease.node_id.clone();
        let outcome = runtime.push(&lease.worker_address, spec).await;
        let cancelled = cancel.stop();
        let failure = match &outcome {
            Ok(reply) => match &reply.result {
                Some(task_reply::Result::Error(error)) => Some(error.message.clone()),
                _ => None,
            },
            Err(cause) => Some(format!("its worker died: {cause}")),
        };
        runtime.task_event(fleet_proto::gcs::TaskEvent {
            task_id: task_id.to_string(),
            attempt: attempts,
            job_id: runtime.job_id.clone(),
            name: function.to_string(),
            state: if failure.is_some() && cancelled {
                "CANCELLED"
            } else if failure.is_some() {
                "FAILED"
            } else {
                "FINISHED"
            }
            .into(),
            node_id,
            time_ms: fleet_gcs::clock::now_ms(),
            error: failure.unwrap_or_default(),
        });
        match outcome {
            Ok(reply) => {
                pool.release(options, lease, false);
                runtime.pin_retained(&reply.retained).await;
                match reply.result {
                    Some(task_reply::Result::Value(bytes)) => {
                        return Ok(Stored::Inline(Arc::new(bytes)))
                    }
                    Some(task_reply::Result::StoredId(id)) => {
                        return stored_id(&id, &reply.stored_at)
                    }
                    Some(task_reply::Result::Error(error))
                        if cancelled
                            || crate::executor::failure_kind(&error) == TaskFailure::Cancelled =>
                    {
                        return Err(cancel.error())
                    }
                    Some(task_reply::Result::Error(error)) => {
                        let retryable = options.retry_exceptions
                            && crate::executor::failure_kind(&error).is_user_failure();
                        if retryable && attempts <= options.max_retries {
                            continue;
                        }
                        return Err(crate::executor::error_from_wire(error));
                    }
                    None => return Err(Error::Internal(format!("{function}: empty reply"))),
                }
            }
            Err(cause) => {
                pool.release(options, lease, true);
                if cancelled {
                    // Killed by a forced cancel (or died while being cancelled): not retried.
                    return Err(cancel.error());
                }
                if attempts > options.max_retries {
                    return Err(Error::WorkerDied {
                        function: function.to_string(),
                        attempts,
                        cause,
                    });
                }
                tracing::debug!(function, attempts, "worker failed; retrying the task");
            }
        }
    }
}

/// A task's result that its worker put in the node's object store.
pub(crate) fn stored_id(id: &str, at: &str) -> Result<Stored> {
    id.parse()
        .map(|id| Stored::Plasma(id, Location::from(at)))
        .map_err(|e| Error::Internal(format!("a worker named an invalid stored id '{id}': {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: u64) -> Lease {
        Lease {
            lease_id: id,
            worker_address: format!("w{id}"),
            gpu_ids: Vec::new(),
            node_id: "n".into(),
            raylet_address: "r".into(),
            shared: false,
        }
    }

    #[test]
    fn the_lease_pool_reuses_asks_for_more_up_to_a_bound_and_skips_gone_waiters() {
        let mut shape = Shape::default();
        assert!(shape.take_idle().is_none());
        // Each waiter beyond the requests in flight asks for one more, up to the bound.
        let mut receivers = Vec::new();
        let mut asked = 0;
        for _ in 0..10 {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            asked += usize::from(shape.enqueue(tx));
        }
        assert_eq!(asked, MAX_PENDING_LEASE_REQUESTS);
        // The first waiter gave up: a granted lease goes to the next one.
        drop(receivers.remove(0));
        assert!(shape.give(lease(1)).is_none());
        let got = receivers.remove(0).try_recv().expect("handed over");
        assert_eq!(got.map(|l| l.lease_id).ok(), Some(1));
        shape.request_done();
        // A failure answers every waiter at once.
        shape.fail_all(&Error::Infeasible("no".into()));
        for mut rx in receivers {
            assert!(matches!(rx.try_recv(), Ok(Err(Error::Infeasible(_)))));
        }
        // No waiter: the lease is parked and reused by the next acquirer.
        let back = shape.give(lease(2)).expect("nobody waits");
        shape.park(back, 7);
        assert_eq!(shape.take_idle().map(|l| l.lease_id), Some(2));
    }

    #[test]
    fn an_idle_timer_returns_only_the_parking_it_was_set_for() {
        let mut shape = Shape::default();
        shape.park(lease(5), 1);
        // Reused, then parked again under a new generation: the first timer must not
        // return it (its new user may be about to take it).
        assert_eq!(shape.take_idle().map(|l| l.lease_id), Some(5));
        shape.park(lease(5), 2);
        assert!(!shape.expire(5, 1));
        assert!(shape.expire(5, 2));
        assert!(shape.take_idle().is_none());
    }

    #[test]
    fn large_arguments_and_those_past_the_budget_go_by_reference() {
        let limit = crate::plasma::INLINE_LIMIT;
        assert!(!travels_by_reference(limit - 1, 0));
        assert!(travels_by_reference(limit, 0));
        // Many small arguments: inline until the call's budget, by reference after.
        let mut inline = 0;
        let mut by_reference = 0;
        for _ in 0..200 {
            if travels_by_reference(limit - 1, inline) {
                by_reference += 1;
            } else {
                inline += limit - 1;
            }
        }
        assert!(inline <= INLINE_ARGS_BUDGET, "{inline}");
        assert_eq!(200 - by_reference, INLINE_ARGS_BUDGET / (limit - 1));
    }

    #[test]
    fn concurrent_rebuilds_never_take_more_than_the_budget() {
        // Before, the budget was read and written in two steps: readers racing on one lost
        // object could each see the same count and re-run the task past max_retries.
        let budget = Arc::new(std::sync::atomic::AtomicU32::new(50));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || (0..100).filter(|_| take_rebuild(&budget)).count())
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().expect("joined")).sum();
        assert_eq!(taken, 50);
        assert_eq!(budget.load(std::sync::atomic::Ordering::Acquire), 0);
    }

    #[test]
    fn raylet_answers_are_classified_by_kind_not_by_code() {
        let infeasible: tonic::Status = fleet_raylet::Error::Infeasible {
            what: "a task".into(),
            requested: "{GPU: 3}".into(),
            total: "{GPU: 2}".into(),
        }
        .into();
        assert!(matches!(
            lease_error("a task", &infeasible),
            Error::Infeasible(_)
        ));
        // Another failed precondition (a raylet refusing for any other reason) is not
        // "infeasible"; before, every FailedPrecondition was.
        let other = tonic::Status::failed_precondition("something else");
        assert!(matches!(
            lease_error("a task", &other),
            Error::Rpc {
                code: tonic::Code::FailedPrecondition,
                ..
            }
        ));
        let malformed: tonic::Status = fleet_raylet::Error::InvalidRequest {
            what: "a task".into(),
            reason: "1.5 GPUs".into(),
        }
        .into();
        assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
        assert!(!matches!(
            lease_error("a task", &malformed),
            Error::Infeasible(_)
        ));
    }
}
