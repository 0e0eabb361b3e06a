//! Actors from the caller's side: spawning (registered in the GCS, placed on a worker of its
//! own), typed handles, per-caller ordered calls straight to the actor's worker, restarts by
//! the owner (restored from the last committed checkpoint), named lookup and kill.
//!
//! Ordering: each process has one dispatcher per actor. It resolves a call's arguments in
//! submission order, numbers the call within the current incarnation of the actor, and pushes
//! it without waiting for earlier replies; the actor's worker runs each caller's calls in
//! number order.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use fleet_proto::gcs::{ActorInfo, ActorState, RejectCode, UpdateActor};
use fleet_proto::runtime::{task_reply, TaskKind, TaskSpec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::{mpsc, Mutex};

use crate::context::{current, CoreWorker};
use crate::error::{Error, Result, TaskFailure};
use crate::object_ref::{Arg, ObjectRef, RefGuard, Stored};
use crate::submitter::{Lease, LeaseAsk, Scheduling};

/// Implemented by `#[fleet::actor]` structs.
pub trait ActorType: Send + 'static {
    /// The registry name (`module::path::Type`).
    const NAME: &'static str;
    /// The typed handle (`{Type}Handle`).
    type Handle: From<ActorHandle>;
}

/// Options of an actor.
#[derive(Clone, Debug)]
pub struct ActorOptions {
    /// A name to find it by with `fleet::get_actor`.
    pub name: Option<String>,
    /// The namespace of the name (default: the job's, "default").
    pub namespace: Option<String>,
    /// Outlives its driver.
    pub detached: bool,
    /// Resources held for its lifetime (default none, so many actors fit a node).
    pub resources: BTreeMap<String, f64>,
    /// Restarts after its worker dies (-1: forever).
    pub max_restarts: i32,
    /// How often a call interrupted by the actor's death is retried on the restarted actor.
    pub max_task_retries: u32,
    /// Calls run at once (1: one at a time, in order per caller). Above 1, `&self` methods
    /// start in order and interleave at their await points; a `&mut self` method waits for
    /// them and runs alone.
    pub max_concurrency: u32,
    /// Checkpoint at least every this many calls (0: only on demand). Needs
    /// `#[fleet::actor(checkpoint)]`. A reply waits for the checkpoint covering its call
    /// (group commit: up to this many calls share one checkpoint), unless
    /// `answer_before_checkpoint`.
    pub checkpoint_every: u64,
    /// With `answer_before_checkpoint`: also checkpoint this often, when calls ran since the
    /// last checkpoint. Alone: checkpoints, with group commit, bounded by 1,024 calls a group.
    pub checkpoint_interval: Option<std::time::Duration>,
    /// Replies go out before the checkpoint that covers them: faster, and a crash **loses
    /// the calls answered since the last checkpoint**. Off by default.
    pub answer_before_checkpoint: bool,
    /// Where checkpoints are written (a directory standing for shared storage).
    pub checkpoint_dir: PathBuf,
    /// Where it is placed (default: hybrid).
    pub scheduling: Scheduling,
    /// Node labels it requires or prefers (default: any node).
    pub label_selector: crate::submitter::LabelSelector,
    /// With placement-group scheduling: what its methods submit without a placement of
    /// their own goes into the same group (see `TaskOptions::capture_child_tasks`).
    pub capture_child_tasks: bool,
    /// Calls a handle may have in flight (submitted, not yet answered) before further calls
    /// fail with `PendingCallsExceeded` instead of queueing without bound.
    pub max_pending_calls: usize,
    /// With a name: return the live actor of that name (and type) instead of failing with
    /// `ActorNameTaken` (Ray's `get_if_exists`).
    pub get_if_exists: bool,
    /// A worker process of its own. Off by default: the actor lives in one of its job's
    /// shared actor hosts on the node (a few processes for any number of actors), where a
    /// process crash takes its neighbours along (each restarts on its own terms). GPU
    /// actors always get a process of their own (`CUDA_VISIBLE_DEVICES` is per process).
    pub isolate: bool,
}

/// The default bound on a handle's calls in flight.
pub const DEFAULT_MAX_PENDING_CALLS: usize = 100_000;

impl Default for ActorOptions {
    fn default() -> Self {
        ActorOptions {
            name: None,
            namespace: None,
            detached: false,
            resources: BTreeMap::new(),
            max_restarts: 0,
            max_task_retries: 0,
            max_concurrency: 1,
            checkpoint_every: 0,
            checkpoint_interval: None,
            answer_before_checkpoint: false,
            checkpoint_dir: std::env::var_os("FLEET_CHECKPOINT_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("fleet-checkpoints")),
            scheduling: Scheduling::Default,
            label_selector: Default::default(),
            capture_child_tasks: false,
            max_pending_calls: DEFAULT_MAX_PENDING_CALLS,
            get_if_exists: false,
            isolate: false,
        }
    }
}

/// Builds an actor: `Counter::remote(0).name("c").max_restarts(3).spawn().await?`.
pub struct ActorBuilder<A: ActorType> {
    args: Vec<Arg>,
    options: ActorOptions,
    _actor: PhantomData<fn() -> A>,
}

impl<A: ActorType> ActorBuilder<A> {
    /// A builder for the constructor arguments (used by generated code).
    pub fn new(args: Vec<Arg>) -> Self {
        ActorBuilder {
            args,
            options: ActorOptions::default(),
            _actor: PhantomData,
        }
    }
    /// Names the actor.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.name = Some(name.into());
        self
    }
    /// The namespace of its name.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.options.namespace = Some(namespace.into());
        self
    }
    /// Lets it outlive the driver.
    pub fn detached(mut self) -> Self {
        self.options.detached = true;
        self
    }
    /// CPUs held for its lifetime.
    pub fn num_cpus(self, cpus: f64) -> Self {
        self.resource("CPU", cpus)
    }
    /// GPUs held for its lifetime (its process sees only them).
    pub fn num_gpus(self, gpus: f64) -> Self {
        self.resource("GPU", gpus)
    }
    /// A custom resource (or "memory" in bytes).
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.options.resources.insert(name.into(), amount);
        self
    }
    /// Restarts after worker death (-1: forever).
    pub fn max_restarts(mut self, restarts: i32) -> Self {
        self.options.max_restarts = restarts;
        self
    }
    /// Retries of a call interrupted by the actor's death.
    pub fn max_task_retries(mut self, retries: u32) -> Self {
        self.options.max_task_retries = retries;
        self
    }
    /// Calls at once.
    pub fn max_concurrency(mut self, calls: u32) -> Self {
        self.options.max_concurrency = calls.max(1);
        self
    }
    /// Checkpoint at least every `calls` calls; each reply waits for the checkpoint that
    /// covers its call (up to `calls` queued calls share one), so an acknowledged call
    /// survives any crash.
    pub fn checkpoint_every(mut self, calls: u64) -> Self {
        self.options.checkpoint_every = calls;
        self
    }
    /// Checkpoint this often when calls ran since the last checkpoint (with
    /// [`answer_before_checkpoint`](Self::answer_before_checkpoint); otherwise every reply
    /// already waits for its checkpoint).
    pub fn checkpoint_interval(mut self, interval: std::time::Duration) -> Self {
        self.options.checkpoint_interval = Some(interval);
        self
    }
    /// Relaxed checkpoints: replies go out at once, checkpoints follow every
    /// `checkpoint_every` calls or `checkpoint_interval`. A crash **loses the calls answered
    /// since the last checkpoint** (their callers were told they succeeded).
    pub fn answer_before_checkpoint(mut self) -> Self {
        self.options.answer_before_checkpoint = true;
        self
    }
    /// Where checkpoints go.
    pub fn checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.options.checkpoint_dir = dir.into();
        self
    }
    /// Calls the creator's handle may have in flight before more fail with
    /// `PendingCallsExceeded` (default 100,000; handles found by name or received in an
    /// argument use the default).
    pub fn max_pending_calls(mut self, calls: usize) -> Self {
        self.options.max_pending_calls = calls.max(1);
        self
    }
    /// With [`name`](Self::name): `spawn` returns the live actor of that name when there is
    /// one (it must be of this type) instead of failing with `ActorNameTaken`. Race-free:
    /// of concurrent creators one wins in the GCS, and the others get its handle.
    pub fn get_if_exists(mut self, get_if_exists: bool) -> Self {
        self.options.get_if_exists = get_if_exists;
        self
    }
    /// Gives the actor a worker process of its own instead of a place in a shared host:
    /// for actors whose failure must not take others along (a rank that may crash, a
    /// replica and its backup), that call `std::process::exit`, or that change
    /// process-wide state (environment, current directory, signal handlers).
    pub fn isolate(mut self) -> Self {
        self.options.isolate = true;
        self
    }

    /// Where it is placed (spread, or pinned to a node).
    pub fn scheduling(mut self, scheduling: Scheduling) -> Self {
        self.options.scheduling = scheduling;
        self
    }

    /// Node labels it requires (`require…`) or prefers (`prefer…`); see
    /// [`LabelSelector`](crate::submitter::LabelSelector).
    pub fn label_selector(mut self, selector: crate::submitter::LabelSelector) -> Self {
        self.options.label_selector = selector;
        self
    }

    /// With placement-group scheduling: the tasks and actors its methods submit without a
    /// placement of their own go into the same group (Ray's
    /// `placement_group_capture_child_tasks`).
    pub fn capture_child_tasks(mut self, capture: bool) -> Self {
        self.options.capture_child_tasks = capture;
        self
    }

    /// Creates the actor and returns its handle once it is alive.
    pub async fn spawn(mut self) -> Result<A::Handle> {
        let runtime = current()?;
        self.options
            .scheduling
            .captured(&mut self.options.capture_child_tasks);
        let existing = match (&self.options.name, self.options.get_if_exists) {
            (Some(name), true) => {
                let namespace = self
                    .options
                    .namespace
                    .clone()
                    .unwrap_or_else(|| runtime.namespace.clone());
                Some((namespace, name.clone()))
            }
            _ => None,
        };
        if let Some((namespace, name)) = &existing {
            match get_actor_in::<A>(namespace, name).await {
                Err(Error::ActorNotFound { .. }) => {}
                found => return found,
            }
        }
        let (args, guards) = crate::submitter::resolve_task_args(&runtime, self.args).await?;
        match spawn_actor(&runtime, A::NAME, args, guards, self.options).await {
            Ok(handle) => Ok(A::Handle::from(handle)),
            // Another creator won the name in the GCS meanwhile: its actor is the answer.
            Err(Error::ActorNameTaken { name, namespace }) if existing.is_some() => {
                get_actor_in::<A>(&namespace, &name).await
            }
            Err(error) => Err(error),
        }
    }
}

struct OwnerPart {
    /// The constructor's arguments as they travel (large ones by reference).
    args: Vec<fleet_proto::runtime::Arg>,
    options: ActorOptions,
    /// References inside the constructor's arguments: a restart decodes them again.
    _guards: Vec<RefGuard>,
}

struct LinkState {
    address: Option<String>,
    /// Numbers this link's calls apart from every other link of this process, past or
    /// present (taken from the process-wide counter): the actor keeps one order per caller
    /// process and drops an older incarnation's when a newer one speaks.
    incarnation: u64,
    next_seq: u64,
    /// Restarts of the actor so far (the owner's count; what its instances are told).
    restarts: u32,
    lease: Option<Lease>,
    dead: Option<String>,
}

/// Where a call's outcome goes: its result object, or (a streaming call) the end of its
/// stream.
#[derive(Clone)]
enum Answer {
    Object(String),
    Stream(Arc<crate::stream::StreamState>),
}

impl Answer {
    fn set(&self, runtime: &CoreWorker, outcome: Result<Stored>) {
        match self {
            Answer::Object(id) => runtime.set_result(id, outcome),
            Answer::Stream(state) => state.end(outcome.map(|_| ())),
        }
    }
}

struct Call {
    /// One id for every attempt: a restored actor recognizes a retry it already applied,
    /// and a streaming call's items are keyed by it.
    task_id: String,
    method: String,
    args: Vec<Arg>,
    result_id: Answer,
    /// Registered with `fleet::cancel` until the result is set.
    cancel: crate::cancel::Registration,
    /// Counts the call against its handle's `max_pending_calls` until it is answered.
    _slot: InFlight,
}

/// One call in flight on a link; dropping it frees the place.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub(crate) struct ActorLink {
    actor_id: String,
    class: String,
    label: String,
    owner: Option<OwnerPart>,
    max_task_retries: u32,
    max_pending_calls: usize,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    state: Mutex<LinkState>,
    queue: mpsc::UnboundedSender<Call>,
}

impl Drop for ActorLink {
    fn drop(&mut self) {
        // The last handle went away: forget the link (its dispatcher ends with the queue).
        if let Some(runtime) = crate::context::try_current() {
            runtime
                .links
                .remove_if(&self.actor_id, |_, link| link.strong_count() == 0);
        }
    }
}

/// An untyped actor handle; typed handles wrap it.
#[derive(Clone)]
pub struct ActorHandle {
    link: Arc<ActorLink>,
}

impl std::fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle({} {})", self.link.class, self.link.label)
    }
}

/// The live link to `actor_id` this process already has, if any.
fn existing_link(runtime: &CoreWorker, actor_id: &str) -> Option<Arc<ActorLink>> {
    runtime.links.get(actor_id).and_then(|link| link.upgrade())
}

/// The link to `actor_id`: the live one this process has, or a new one. One live link per
/// actor per process (decided under the map's entry lock), so its calls keep one order.
fn new_link(
    runtime: &Arc<CoreWorker>,
    actor_id: String,
    class: String,
    label: String,
    owner: Option<OwnerPart>,
    address: Option<String>,
    max_task_retries: u32,
) -> Arc<ActorLink> {
    use dashmap::mapref::entry::Entry;
    let max_pending_calls = owner
        .as_ref()
        .map_or(DEFAULT_MAX_PENDING_CALLS, |o| o.options.max_pending_calls);
    let owned = owner.is_some();
    // Unbounded by type, bounded in fact: a call takes an `InFlight` place first.
    let (tx, rx) = mpsc::unbounded_channel();
    let make = || {
        Arc::new(ActorLink {
            actor_id: actor_id.clone(),
            class,
            label,
            owner,
            max_task_retries,
            max_pending_calls,
            in_flight: Arc::default(),
            state: Mutex::new(LinkState {
                address,
                incarnation: runtime.next_incarnation(),
                next_seq: 0,
                restarts: 0,
                lease: None,
                dead: None,
            }),
            queue: tx,
        })
    };
    let link = match runtime.links.entry(actor_id.clone()) {
        Entry::Occupied(mut entry) => match entry.get().upgrade() {
            Some(live) if !owned => return live,
            _ => {
                let link = make();
                entry.insert(Arc::downgrade(&link));
                link
            }
        },
        Entry::Vacant(entry) => {
            let link = make();
            entry.insert(Arc::downgrade(&link));
            link
        }
    };
    if owned {
        runtime.owned_links.insert(actor_id, link.clone());
    }
    runtime.tasks.spawn_watching(dispatch(
        runtime.clone(),
        Arc::downgrade(&link),
        rx,
        runtime.tasks.token(),
    ));
    link
}

async fn spawn_actor(
    runtime: &Arc<CoreWorker>,
    class: &'static str,
    args: Vec<fleet_proto::runtime::Arg>,
    guards: Vec<RefGuard>,
    options: ActorOptions,
) -> Result<ActorHandle> {
    let actor_id = crate::ids::new_id("actor");
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| runtime.namespace.clone());
    let name = options.name.clone().unwrap_or_default();
    let info = ActorInfo {
        actor_id: actor_id.clone(),
        job_id: runtime.job_id.clone(),
        name: name.clone(),
        namespace: namespace.clone(),
        class_name: class.to_string(),
        max_restarts: options.max_restarts,
        max_task_retries: options.max_task_retries,
        detached: options.detached,
        resources: options.resources.clone().into_iter().collect(),
        ..ActorInfo::default()
    };
    match runtime.gcs.register_actor(info).await {
        Ok(_) => {}
        Err(fleet_gcs::Error::Rejected {
            code: RejectCode::NameTaken,
            ..
        }) => {
            return Err(Error::ActorNameTaken { name, namespace });
        }
        Err(e) => return Err(e.into()),
    }
    let label = if name.is_empty() {
        actor_id.clone()
    } else {
        format!("'{name}'")
    };
    let options_retries = options.max_task_retries;
    let link = new_link(
        runtime,
        actor_id.clone(),
        class.to_string(),
        label,
        Some(OwnerPart {
            args,
            options,
            _guards: guards,
        }),
        None,
        options_retries,
    );
    let started = start_instance(runtime, &link, None, 0).await;
    match started {
        Ok((lease, address, node_id)) => {
            runtime
                .gcs
                .update_actor(transition(
                    &actor_id,
                    ActorState::ActorPending,
                    ActorState::ActorAlive,
                    &node_id,
                    &address,
                    "",
                    false,
                ))
                .await?;
            let mut state = link.state.lock().await;
            state.address = Some(address);
            state.lease = Some(lease);
        }
        Err(error) => {
            let _ = runtime
                .gcs
                .update_actor(transition(
                    &actor_id,
                    ActorState::ActorPending,
                    ActorState::ActorDead,
                    "",
                    "",
                    &error.to_string(),
                    false,
                ))
                .await;
            runtime.owned_links.remove(&actor_id);
            return Err(error);
        }
    }
    Ok(ActorHandle { link })
}

fn transition(
    actor_id: &str,
    from: ActorState,
    to: ActorState,
    node_id: &str,
    address: &str,
    cause: &str,
    count_restart: bool,
) -> UpdateActor {
    UpdateActor {
        actor_id: actor_id.into(),
        expected_state: from as i32,
        new_state: to as i32,
        node_id: node_id.into(),
        address: address.into(),
        death_cause: cause.into(),
        count_restart,
    }
}

/// Leases a place for the actor (a shared host, or a worker of its own when isolated) and
/// runs the constructor (or restores `checkpoint`) there.
async fn start_instance(
    runtime: &CoreWorker,
    link: &ActorLink,
    checkpoint: Option<(String, u64)>,
    restarts: u32,
) -> Result<(Lease, String, String)> {
    let owner = link
        .owner
        .as_ref()
        .ok_or_else(|| Error::Internal("only the owner starts an actor".into()))?;
    let description = format!("actor {} ({})", link.label, link.class);
    let lease = runtime
        .leaser
        .lease(LeaseAsk {
            resources: &owner.options.resources,
            description: &description,
            dedicated: owner.options.isolate,
            detached: owner.options.detached,
            scheduling: &owner.options.scheduling,
            labels: &owner.options.label_selector,
            actor_host: (!owner.options.isolate).then_some(link.actor_id.as_str()),
        })
        .await?;
    let reply = lease.clone();
    let (restore_url, checkpoint_sequence) = checkpoint.unwrap_or_default();
    let spec = TaskSpec {
        task_id: crate::ids::new_id("task"),
        job_id: runtime.job_id.clone(),
        kind: TaskKind::ActorCreation as i32,
        function: link.class.clone(),
        args: owner.args.clone(),
        actor_id: link.actor_id.clone(),
        restore_url,
        actor_restarts: restarts,
        checkpoint_sequence,
        checkpoint_every_calls: owner.options.checkpoint_every,
        max_concurrency: owner.options.max_concurrency,
        checkpoint_interval_ms: owner
            .options
            .checkpoint_interval
            .map_or(0, |d| d.as_millis().max(1) as u64),
        checkpoint_answer_first: owner.options.answer_before_checkpoint,
        checkpoint_dir: owner.options.checkpoint_dir.display().to_string(),
        gpu_ids: reply.gpu_ids.clone(),
        owner_address: runtime.address.clone(),
        own_thread: owner
            .options
            .resources
            .get("CPU")
            .is_some_and(|cpus| *cpus > 0.0),
        capture_placement_group: owner
            .options
            .scheduling
            .capturing_group(owner.options.capture_child_tasks)
            .unwrap_or_default(),
        ..TaskSpec::default()
    };
    let outcome = runtime.push(&reply.worker_address, spec).await;
    if let Ok(answer) = &outcome {
        runtime.pin_retained(&answer.retained).await;
    }
    let failure = match outcome {
        Ok(answer) => match answer.result {
            Some(task_reply::Result::Value(_) | task_reply::Result::StoredId(_)) => {
                return Ok((lease, reply.worker_address, reply.node_id))
            }
            Some(task_reply::Result::Error(error)) => crate::executor::error_from_wire(error),
            None => Error::Internal("empty reply to an actor creation".into()),
        },
        Err(cause) => Error::Internal(format!("creating actor {}: {cause}", link.label)),
    };
    retire_lease(runtime, lease).await;
    Err(failure)
}

/// Gives an actor's lease back and has its worker stopped (it died, or the actor did).
async fn retire_lease(runtime: &CoreWorker, lease: Lease) {
    runtime.leaser.return_lease(&lease, true).await;
}

/// The latest committed checkpoint of `actor_id`: its location, checked to be a file of
/// the actor's own directory of the checkpoint store (a record naming another path is
/// refused) and no larger than a checkpoint may be, and its sequence. The restarted worker
/// reads it from there (the store stands for shared storage), so it never travels in a
/// message.
async fn latest_checkpoint(
    runtime: &CoreWorker,
    actor_id: &str,
    checkpoint_dir: &std::path::Path,
) -> Result<Option<(String, u64)>> {
    let Some(info) = runtime.gcs.latest_checkpoint(actor_id).await? else {
        return Ok(None);
    };
    let unavailable = |reason: String| Error::ObjectUnavailable {
        object_id: format!("checkpoint {} of actor {actor_id}", info.sequence),
        reason,
    };
    let path = crate::checkpoint::checkpoint_file(&info.url, checkpoint_dir, actor_id)
        .map_err(unavailable)?;
    crate::checkpoint::checked_size(&path)
        .await
        .map_err(unavailable)?;
    Ok(Some((info.url, info.sequence)))
}

/// How long a handle waits for its actor to be alive again (restarted, or its connection
/// back) before the call fails as unavailable; the handle stays usable after that.
const WAIT_ALIVE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a handle that is not the owner keeps believing the control store's "alive at
/// the same address" after a failed call before it tries that address again: the owner
/// needs about this long to notice a dead worker and start the restart.
const SAME_ADDRESS_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Times one call follows its actor to another worker when the one it reached no longer
/// hosts it (such a call never ran, so following it is always safe).
const MAX_NOT_HOSTED_BOUNCES: u32 = 16;

/// How long `kill` waits for the actor's process to confirm the stop (it may be frozen;
/// the lease's return retires or stops it anyway).
const KILL_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the owner does once it asked the GCS to move its actor ALIVE → RESTARTING.
#[derive(Debug, PartialEq, Eq)]
enum RestartStep {
    /// The transition went through (now, or in an earlier attempt whose answer was lost).
    Restart,
    /// `max_restarts` is used up.
    OutOfRestarts,
    /// Killed (or otherwise ended) meanwhile, with this cause.
    Killed(String),
    /// The GCS did not answer; nothing is known.
    Unavailable(String),
}

/// The owner's restart decision from the GCS's answer (pure; unit-tested). `cause` is the
/// worker's failure, the death cause when the record names none.
fn restart_step(answer: &fleet_gcs::Result<u64>, cause: &str) -> RestartStep {
    match answer {
        Ok(_) => RestartStep::Restart,
        Err(fleet_gcs::Error::Rejected {
            code: RejectCode::RestartsExhausted,
            ..
        }) => RestartStep::OutOfRestarts,
        Err(fleet_gcs::Error::Rejected { current, .. }) => {
            let current = current
                .as_ref()
                .and_then(|r| <ActorInfo as prost::Message>::decode(r.value.as_slice()).ok());
            match current {
                Some(info) if info.state == ActorState::ActorRestarting as i32 => {
                    RestartStep::Restart
                }
                other => RestartStep::Killed(
                    other
                        .map(|a| a.death_cause)
                        .filter(|c| !c.is_empty())
                        .unwrap_or_else(|| cause.to_string()),
                ),
            }
        }
        Err(error) => RestartStep::Unavailable(error.to_string()),
    }
}

/// What became of an actor after a call to it failed.
#[derive(Debug)]
enum Recovery {
    /// Another call already handled this failure, or the actor is back (restarted or
    /// reachable again) under a new incarnation.
    Back,
    /// Dead for good.
    Dead(String),
    /// Not known to be dead, not reachable either (the control store did not answer, or
    /// the actor did not come back in time): the handle stays usable.
    Unavailable(String),
}

impl ActorLink {
    fn died(&self, cause: &str) -> Error {
        Error::ActorDied {
            actor: self.label.clone(),
            cause: cause.to_string(),
        }
    }

    fn unavailable(&self, cause: String) -> Error {
        Error::ActorUnavailable {
            actor: self.label.clone(),
            cause,
        }
    }

    /// Records that the actor is dead for good: later calls fail at once, and the owner no
    /// longer keeps the link for restarts.
    fn set_dead(&self, runtime: &CoreWorker, state: &mut LinkState, cause: String) {
        state.dead = Some(cause);
        state.address = None;
        runtime.owned_links.remove_if(&self.actor_id, |_, link| {
            std::ptr::eq(Arc::as_ptr(link), self)
        });
    }

    /// Where to send the next call, and its number.
    async fn target(&self, runtime: &CoreWorker) -> Result<(String, u64, u64)> {
        let mut state = self.state.lock().await;
        if let Some(cause) = &state.dead {
            return Err(self.died(cause));
        }
        if state.address.is_none() {
            match self.wait_alive(runtime, None).await {
                Ok(address) => {
                    state.address = Some(address);
                    state.incarnation = runtime.next_incarnation();
                    state.next_seq = 0;
                }
                Err(Recovery::Dead(cause)) => {
                    self.set_dead(runtime, &mut state, cause.clone());
                    return Err(self.died(&cause));
                }
                Err(Recovery::Unavailable(cause)) => return Err(self.unavailable(cause)),
                Err(Recovery::Back) => {
                    return Err(self.unavailable("it is being recovered".into()));
                }
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let address = state.address.clone().unwrap_or_default();
        Ok((address, state.incarnation, seq))
    }

    /// The worker of incarnation `incarnation` failed (`cause`): restart the actor (owner)
    /// or learn from the control store what became of it (others). Only the control store
    /// saying so, or the owner's restarts running out, makes the actor dead for good; a
    /// failure to reach the control store leaves the handle usable.
    async fn on_failure(&self, runtime: &CoreWorker, incarnation: u64, cause: &str) -> Recovery {
        // The state lock is held throughout: new calls wait for the outcome.
        let mut state = self.state.lock().await;
        if let Some(dead) = &state.dead {
            return Recovery::Dead(dead.clone());
        }
        if state.incarnation != incarnation {
            return Recovery::Back;
        }
        let Some(owner) = &self.owner else {
            let old = state.address.take();
            let outcome = self.wait_alive(runtime, old.as_deref()).await;
            return match outcome {
                Ok(address) => {
                    // A new instance, or the same one reachable again: either way the calls
                    // from here on are numbered afresh (the old stream's order is gone).
                    state.address = Some(address);
                    state.incarnation = runtime.next_incarnation();
                    state.next_seq = 0;
                    Recovery::Back
                }
                Err(Recovery::Dead(cause)) => {
                    self.set_dead(runtime, &mut state, cause.clone());
                    Recovery::Dead(cause)
                }
                Err(other) => other,
            };
        };
        if let Some(lease) = state.lease.take() {
            retire_lease(runtime, lease).await;
        }
        let cause = format!("its worker died ({cause})");
        let restarting = runtime
            .gcs
            .update_actor(transition(
                &self.actor_id,
                ActorState::ActorAlive,
                ActorState::ActorRestarting,
                "",
                "",
                "",
                true,
            ))
            .await;
        match restart_step(&restarting, &cause) {
            RestartStep::Restart => {}
            RestartStep::OutOfRestarts => {
                let death = format!(
                    "{cause} after {} restart(s) (max_restarts={})",
                    owner.options.max_restarts.max(0),
                    owner.options.max_restarts
                );
                let _ = runtime
                    .gcs
                    .update_actor(transition(
                        &self.actor_id,
                        ActorState::ActorAlive,
                        ActorState::ActorDead,
                        "",
                        "",
                        &death,
                        false,
                    ))
                    .await;
                self.set_dead(runtime, &mut state, death.clone());
                return Recovery::Dead(death);
            }
            RestartStep::Killed(reason) => {
                self.set_dead(runtime, &mut state, reason.clone());
                return Recovery::Dead(reason);
            }
            RestartStep::Unavailable(error) => {
                // The control store did not answer. The old address stays: its worker is
                // retired, so the next call fails fast there and tries the restart again
                // (and if this transition did go through, the retry finds the actor
                // RESTARTING and carries on; waiting for ALIVE instead would wait forever,
                // since restarting it is this owner's job).
                state.incarnation = runtime.next_incarnation();
                state.next_seq = 0;
                return Recovery::Unavailable(format!(
                    "{cause}; the control store did not take its restart yet ({error})"
                ));
            }
        }
        let checkpoint_dir = owner.options.checkpoint_dir.clone();
        let checkpoint = match latest_checkpoint(runtime, &self.actor_id, &checkpoint_dir).await {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                tracing::warn!(actor = %self.label, %error, "restarting without a checkpoint");
                None
            }
        };
        state.restarts += 1;
        match start_instance(runtime, self, checkpoint, state.restarts).await {
            Ok((lease, address, node_id)) => {
                let _ = runtime
                    .gcs
                    .update_actor(transition(
                        &self.actor_id,
                        ActorState::ActorRestarting,
                        ActorState::ActorAlive,
                        &node_id,
                        &address,
                        "",
                        false,
                    ))
                    .await;
                state.address = Some(address);
                state.lease = Some(lease);
                state.incarnation = runtime.next_incarnation();
                state.next_seq = 0;
                tracing::info!(actor = %self.label, incarnation = state.incarnation, "actor restarted");
                Recovery::Back
            }
            Err(error) => {
                let death = format!("{cause}; the restart failed: {error}");
                let _ = runtime
                    .gcs
                    .update_actor(transition(
                        &self.actor_id,
                        ActorState::ActorRestarting,
                        ActorState::ActorDead,
                        "",
                        "",
                        &death,
                        false,
                    ))
                    .await;
                self.set_dead(runtime, &mut state, death.clone());
                Recovery::Dead(death)
            }
        }
    }

    /// Asks the control store, until `WAIT_ALIVE_LIMIT`, where the actor lives: its address
    /// once it is alive somewhere other than `failed` (or, after `SAME_ADDRESS_GRACE`, at
    /// `failed` still: the failure was the connection's, not the worker's). `Dead` only when
    /// the control store says so; `Unavailable` when it could not tell in time.
    async fn wait_alive(
        &self,
        runtime: &CoreWorker,
        failed: Option<&str>,
    ) -> std::result::Result<String, Recovery> {
        let started = tokio::time::Instant::now();
        let mut last_problem = String::from("it did not come back");
        loop {
            match runtime.gcs.get_actor(&self.actor_id).await {
                Ok(None) => {
                    return Err(Recovery::Dead("the control store does not know it".into()))
                }
                Ok(Some(info)) if info.state == ActorState::ActorDead as i32 => {
                    return Err(Recovery::Dead(info.death_cause));
                }
                Ok(Some(info))
                    if info.state == ActorState::ActorAlive as i32 && !info.address.is_empty() =>
                {
                    let same = failed == Some(info.address.as_str());
                    if !same || started.elapsed() >= SAME_ADDRESS_GRACE {
                        return Ok(info.address);
                    }
                }
                Ok(Some(_)) => last_problem = "it is still being (re)started".into(),
                Err(error) => last_problem = format!("the control store did not answer: {error}"),
            }
            if started.elapsed() > WAIT_ALIVE_LIMIT {
                return Err(Recovery::Unavailable(format!(
                    "{last_problem} within {} s",
                    WAIT_ALIVE_LIMIT.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

async fn dispatch(
    runtime: Arc<CoreWorker>,
    link: std::sync::Weak<ActorLink>,
    mut queue: mpsc::UnboundedReceiver<Call>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let call = tokio::select! {
            call = queue.recv() => call,
            _ = shutdown.cancelled() => {
                // Every call still queued is answered, not left waiting.
                queue.close();
                while let Ok(call) = queue.try_recv() {
                    let Call { result_id, _slot, .. } = call;
                    drop(_slot);
                    result_id.set(&runtime, Err(Error::ShutDown));
                }
                return;
            }
        };
        let Some(call) = call else { return };
        let Some(link) = link.upgrade() else { return };
        let Call {
            task_id,
            method,
            args,
            result_id,
            cancel,
            _slot: slot,
        } = call;
        // A call that fails here gives its place back before its caller learns it.
        let fail = |slot: InFlight, cancel: crate::cancel::Registration, error: Error| {
            drop(slot);
            drop(cancel);
            result_id.set(&runtime, Err(error));
        };
        // Resolved in submission order; large values go by reference (bounded messages).
        let resolve = crate::submitter::resolve_task_args(&runtime, args);
        let args = match cancel.cancellable().unless_cancelled(resolve).await {
            Ok(Ok(args)) => args,
            Ok(Err(error)) | Err(error) => {
                fail(slot, cancel, error);
                continue;
            }
        };
        // Not yet numbered in the caller's order: a cancelled call is dropped here.
        let target = match cancel
            .cancellable()
            .unless_cancelled(link.target(&runtime))
            .await
        {
            Ok(target) => target,
            Err(error) => {
                fail(slot, cancel, error);
                continue;
            }
        };
        match target {
            Ok(target) => {
                let stopped = runtime.clone();
                let answer_id = result_id.clone();
                runtime.tasks.spawn_answering(
                    push_call(
                        runtime.clone(),
                        link,
                        target,
                        PushedCall {
                            task_id,
                            method,
                            args,
                            result_id,
                            cancel,
                            _slot: slot,
                        },
                    ),
                    move || answer_id.set(&stopped, Err(Error::ShutDown)),
                );
            }
            Err(error) => fail(slot, cancel, error),
        }
    }
}

/// A call whose arguments are resolved, on its way to the actor.
struct PushedCall {
    task_id: String,
    method: String,
    /// The arguments as they travel, and the references they hold until the reply.
    args: (Vec<fleet_proto::runtime::Arg>, Vec<RefGuard>),
    result_id: Answer,
    cancel: crate::cancel::Registration,
    _slot: InFlight,
}

async fn push_call(
    runtime: Arc<CoreWorker>,
    link: Arc<ActorLink>,
    target: (String, u64, u64),
    call: PushedCall,
) {
    let PushedCall {
        task_id,
        method,
        args,
        result_id,
        cancel,
        _slot,
    } = call;
    let streaming = matches!(result_id, Answer::Stream(_));
    // The references inside the arguments live until the reply (and its retained list).
    let (args, guards) = args;
    let call = Attempt {
        task_id: &task_id,
        method: &method,
        args: &args,
        cancel: cancel.cancellable(),
        streaming,
    };
    let outcome = attempt_call(&runtime, &link, target, &call).await;
    drop(guards);
    drop(cancel);
    // The handle's place is free before the caller learns the result, so a caller that
    // waits for its calls and submits more never finds them still counted.
    drop(_slot);
    result_id.set(&runtime, outcome);
}

/// One call as it is pushed (and pushed again after failures).
struct Attempt<'a> {
    task_id: &'a str,
    method: &'a str,
    args: &'a [fleet_proto::runtime::Arg],
    cancel: &'a Arc<crate::cancel::Cancellable>,
    streaming: bool,
}

/// Pushes a call until it is answered, retrying as the handle's policy allows.
async fn attempt_call(
    runtime: &Arc<CoreWorker>,
    link: &Arc<ActorLink>,
    target: (String, u64, u64),
    call: &Attempt<'_>,
) -> Result<Stored> {
    let Attempt {
        task_id,
        method,
        args,
        cancel,
        streaming,
    } = *call;
    let (mut address, mut incarnation, mut seq) = target;
    let mut retries = 0u32;
    let mut bounces = 0u32;
    loop {
        // Numbered already: a call cancelled before it is sent still goes, empty, to keep
        // the caller's order whole; the actor answers it "cancelled" in its turn.
        let running_at = crate::cancel::RunningAt {
            worker: address.clone(),
            task_id: task_id.to_string(),
            lease: None,
        };
        let cancelled = !cancel.start(running_at);
        let spec = TaskSpec {
            task_id: task_id.to_string(),
            job_id: runtime.job_id.clone(),
            kind: TaskKind::ActorMethod as i32,
            function: link.class.clone(),
            method: method.to_string(),
            args: if cancelled { Vec::new() } else { args.to_vec() },
            actor_id: link.actor_id.clone(),
            caller_id: format!("{}#{incarnation}", runtime.worker_id),
            seq,
            owner_address: runtime.address.clone(),
            cancelled,
            streaming,
            ..TaskSpec::default()
        };
        let outcome = runtime.push(&address, spec).await;
        if cancel.stop() {
            // Whatever happened to it, its caller asked for it to stop: no retry, no
            // following the actor. A call that finished first keeps its result.
            return match outcome {
                Ok(reply) => {
                    runtime.pin_retained(&reply.retained).await;
                    match reply.result {
                        Some(task_reply::Result::Value(bytes)) => {
                            Ok(Stored::Inline(Arc::new(bytes)))
                        }
                        Some(task_reply::Result::StoredId(id)) => {
                            crate::submitter::stored_id(&id, &reply.stored_at)
                        }
                        _ => Err(cancel.error()),
                    }
                }
                Err(_) => Err(cancel.error()),
            };
        }
        let failure = match outcome {
            Ok(reply) => {
                runtime.pin_retained(&reply.retained).await;
                let result = match reply.result {
                    Some(task_reply::Result::Value(bytes)) => Ok(Stored::Inline(Arc::new(bytes))),
                    Some(task_reply::Result::StoredId(id)) => {
                        crate::submitter::stored_id(&id, &reply.stored_at)
                    }
                    Some(task_reply::Result::Error(error))
                        if crate::executor::failure_kind(&error) == TaskFailure::ActorNotHosted
                            && bounces < MAX_NOT_HOSTED_BOUNCES =>
                    {
                        // The worker no longer hosts the actor (it died or moved): the call
                        // did not run, so follow the actor without spending a retry.
                        bounces += 1;
                        match link.on_failure(runtime, incarnation, &error.message).await {
                            Recovery::Back => {}
                            Recovery::Dead(cause) => {
                                return Err(link.died(&cause));
                            }
                            Recovery::Unavailable(cause) => {
                                return Err(link.unavailable(cause));
                            }
                        }
                        match link.target(runtime).await {
                            Ok((a, i, s)) => {
                                (address, incarnation, seq) = (a, i, s);
                                continue;
                            }
                            Err(error) => {
                                return Err(error);
                            }
                        }
                    }
                    Some(task_reply::Result::Error(error)) => {
                        Err(crate::executor::error_from_wire(error))
                    }
                    None => Err(Error::Internal("empty reply to an actor call".into())),
                };
                return result;
            }
            Err(cause) => cause,
        };
        let recovery = link.on_failure(runtime, incarnation, &failure).await;
        if let Recovery::Dead(cause) = &recovery {
            return Err(link.died(cause));
        }
        if retries >= link.max_task_retries {
            let error = match recovery {
                Recovery::Unavailable(cause) => link.unavailable(cause),
                _ => link.died(&format!(
                    "the call was interrupted: its worker died ({failure})"
                )),
            };
            return Err(error);
        }
        retries += 1;
        match link.target(runtime).await {
            Ok((a, i, s)) => (address, incarnation, seq) = (a, i, s),
            Err(error) => {
                return Err(error);
            }
        }
    }
}

impl ActorHandle {
    /// Calls a method; the reference resolves to its result (used by generated code).
    pub fn call<R>(&self, method: &str, args: Vec<Arg>) -> ObjectRef<R> {
        let Ok(runtime) = current() else {
            return ObjectRef::new(crate::ids::new_id("obj"), String::new());
        };
        let result_id = crate::ids::new_id("obj");
        let result = ObjectRef::new(result_id.clone(), runtime.address.clone());
        runtime.store.slot(&result_id);
        let task_id = crate::ids::new_id("task");
        self.enqueue(&runtime, task_id, method, args, Answer::Object(result_id));
        result
    }

    /// Calls a streaming method (one that takes a `fleet::Emitter<T>`): its items arrive
    /// on the returned stream while it runs (used by generated code).
    pub fn call_streaming<T>(
        &self,
        method: &str,
        args: Vec<Arg>,
    ) -> crate::stream::ObjectRefStream<T> {
        let what = format!("{}::{method}", self.link.class);
        let runtime = match current() {
            Ok(runtime) => runtime,
            Err(error) => return crate::stream::ObjectRefStream::failed(error, &what),
        };
        let task_id = crate::ids::new_id("task");
        let state = crate::stream::open(&runtime, &task_id);
        let answer = Answer::Stream(state.clone());
        self.enqueue(&runtime, task_id.clone(), method, args, answer);
        crate::stream::ObjectRefStream::new(Some(runtime), state, task_id, what)
    }

    /// Queues a call on the link (or answers it at once when it cannot be queued).
    fn enqueue(
        &self,
        runtime: &Arc<CoreWorker>,
        task_id: String,
        method: &str,
        args: Vec<Arg>,
        answer: Answer,
    ) {
        let link = &self.link;
        let in_flight = link
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let slot = InFlight(link.in_flight.clone());
        if in_flight >= link.max_pending_calls {
            drop(slot);
            answer.set(
                runtime,
                Err(Error::PendingCallsExceeded {
                    actor: link.label.clone(),
                    limit: link.max_pending_calls,
                }),
            );
            return;
        }
        // A streaming call is cancelled by its task's result id (it has no other).
        let cancel_id = match &answer {
            Answer::Object(id) => id.clone(),
            Answer::Stream(_) => format!("{task_id}.ret"),
        };
        let cancel = crate::cancel::Registration::new(
            runtime,
            &cancel_id,
            format!("{}::{method}", link.class),
            true,
        );
        let call = Call {
            task_id,
            method: method.to_string(),
            args,
            result_id: answer,
            cancel,
            _slot: slot,
        };
        if let Err(refused) = link.queue.send(call) {
            refused.0.result_id.set(
                runtime,
                Err(Error::ActorDied {
                    actor: link.label.clone(),
                    cause: "its handle was closed".into(),
                }),
            );
        }
    }

    /// The actor's id.
    pub fn actor_id(&self) -> &str {
        &self.link.actor_id
    }

    /// Its type's registry name.
    pub fn class(&self) -> &str {
        &self.link.class
    }

    /// Asks the actor to checkpoint now; resolves to the checkpoint's sequence number.
    pub fn checkpoint(&self) -> ObjectRef<u64> {
        self.call(crate::executor::CHECKPOINT_METHOD, Vec::new())
    }

    /// Kills the actor: no restart; pending and later calls fail with `ActorDied`.
    pub async fn kill(&self) -> Result<()> {
        let runtime = current()?;
        let cause = "killed by fleet::kill".to_string();
        for _ in 0..5 {
            let Some(info) = runtime.gcs.get_actor(&self.link.actor_id).await? else {
                break;
            };
            let from = ActorState::try_from(info.state).unwrap_or(ActorState::Unspecified);
            if from == ActorState::ActorDead {
                break;
            }
            match runtime
                .gcs
                .update_actor(transition(
                    &self.link.actor_id,
                    from,
                    ActorState::ActorDead,
                    "",
                    "",
                    &cause,
                    false,
                ))
                .await
            {
                Ok(_) => break,
                Err(fleet_gcs::Error::Rejected {
                    code: RejectCode::CasFailed,
                    ..
                }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        let mut state = self.link.state.lock().await;
        let address = state.address.take();
        self.link.set_dead(&runtime, &mut state, cause);
        state.address = address;
        if let Some(address) = state.address.take() {
            if let Ok(mut client) = runtime.worker_client(&address) {
                // Only this actor: a shared host's other actors go on (an isolated actor's
                // process is retired with its lease below).
                let request = fleet_proto::runtime::ExitRequest {
                    actor_id: self.link.actor_id.clone(),
                };
                let _ = tokio::time::timeout(KILL_STOP_TIMEOUT, client.exit(request)).await;
            }
        }
        if let Some(lease) = state.lease.take() {
            retire_lease(&runtime, lease).await;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct WireHandle {
    actor_id: String,
    class: String,
    label: String,
    /// The actor's `max_task_retries`: a handle passed on retries calls as the owner's does.
    #[serde(default)]
    max_task_retries: u32,
}

impl Serialize for ActorHandle {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        WireHandle {
            actor_id: self.link.actor_id.clone(),
            class: self.link.class.clone(),
            label: self.link.label.clone(),
            max_task_retries: self.link.max_task_retries,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ActorHandle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let wire = WireHandle::deserialize(deserializer)?;
        let runtime = current().map_err(serde::de::Error::custom)?;
        if let Some(link) = existing_link(&runtime, &wire.actor_id) {
            return Ok(ActorHandle { link });
        }
        Ok(ActorHandle {
            link: new_link(
                &runtime,
                wire.actor_id,
                wire.class,
                wire.label,
                None,
                None,
                wire.max_task_retries,
            ),
        })
    }
}

/// The live actor named `name` in the job's namespace, as a typed handle.
pub async fn get_actor<A: ActorType>(name: &str) -> Result<A::Handle> {
    let runtime = current()?;
    let namespace = runtime.namespace.clone();
    get_actor_in::<A>(&namespace, name).await
}

/// The live actor named `name` in `namespace`.
pub async fn get_actor_in<A: ActorType>(namespace: &str, name: &str) -> Result<A::Handle> {
    let runtime = current()?;
    let info = runtime
        .gcs
        .get_named_actor(namespace, name)
        .await?
        .ok_or_else(|| Error::ActorNotFound {
            name: name.into(),
            namespace: namespace.into(),
        })?;
    if info.class_name != A::NAME {
        return Err(Error::ActorTypeMismatch {
            name: name.into(),
            expected: A::NAME.into(),
            found: info.class_name,
        });
    }
    if let Some(link) = existing_link(&runtime, &info.actor_id) {
        return Ok(A::Handle::from(ActorHandle { link }));
    }
    let address = (!info.address.is_empty()).then_some(info.address);
    let link = new_link(
        &runtime,
        info.actor_id,
        info.class_name,
        format!("'{name}'"),
        None,
        address,
        info.max_task_retries,
    );
    Ok(A::Handle::from(ActorHandle { link }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: RejectCode, state: Option<(ActorState, &str)>) -> fleet_gcs::Result<u64> {
        let current = state.map(|(state, cause)| {
            Box::new(fleet_proto::gcs::Record {
                value: prost::Message::encode_to_vec(&ActorInfo {
                    state: state as i32,
                    death_cause: cause.into(),
                    ..ActorInfo::default()
                }),
                ..Default::default()
            })
        });
        Err(fleet_gcs::Error::Rejected {
            code,
            message: String::new(),
            current,
        })
    }

    #[test]
    fn the_owner_restarts_stops_or_waits_by_the_control_stores_answer() {
        let cause = "its worker died (connection reset)";
        assert_eq!(restart_step(&Ok(7), cause), RestartStep::Restart);
        assert_eq!(
            restart_step(&rejected(RejectCode::RestartsExhausted, None), cause),
            RestartStep::OutOfRestarts
        );
        // Killed meanwhile: dead, with the kill's cause.
        assert_eq!(
            restart_step(
                &rejected(
                    RejectCode::CasFailed,
                    Some((ActorState::ActorDead, "killed by fleet::kill"))
                ),
                cause
            ),
            RestartStep::Killed("killed by fleet::kill".into())
        );
        // An earlier attempt's transition went through but its answer was lost: restart.
        assert_eq!(
            restart_step(
                &rejected(
                    RejectCode::CasFailed,
                    Some((ActorState::ActorRestarting, ""))
                ),
                cause
            ),
            RestartStep::Restart
        );
        // The control store did not answer: not dead (before, the handle died for good).
        let silent: fleet_gcs::Result<u64> = Err(fleet_gcs::Error::Unavailable {
            endpoints: "127.0.0.1:1".into(),
            millis: 5000,
            last_error: "connection refused".into(),
        });
        assert!(matches!(
            restart_step(&silent, cause),
            RestartStep::Unavailable(_)
        ));
    }
}
