//! The worker side: the CoreWorker gRPC service that runs remote functions, hosts actors
//! (one task per actor owning the instance, running each caller's calls in order; a shared
//! actor host runs many actors, each with its own mailbox, order, checkpoints and stop),
//! takes checkpoints, and serves owned objects to borrowers.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;

use dashmap::DashMap;
use fleet_proto::gcs::CheckpointInfo;
use fleet_proto::runtime::core_worker_server::CoreWorker as CoreWorkerRpc;
use fleet_proto::runtime::{
    get_object_reply, task_reply, ExitReply, ExitRequest, GetObjectReply, GetObjectRequest,
    TaskFailureKind, TaskKind, TaskReply, TaskSpec,
};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::checkpoint::{uncovered_call_error, CheckpointEnvelope, CheckpointPolicy};
use crate::context::CoreWorker;
use crate::error::{Error, Location, RemoteError, TaskFailure};
use crate::object_ref::{Stored, Traced};
use crate::plasma::INLINE_LIMIT;
use crate::registry::{self, ActorObject, Args, TaskError};
use crate::stream::StreamTarget;
use fleet_raylet::object_store::ObjectId;

/// Calls an actor's mailbox holds before the stream that brings them waits (and with it
/// the caller: backpressure, never unbounded growth).
const ACTOR_MAILBOX_CAPACITY: usize = 1024;
/// Calls an actor takes out of its mailbox ahead of running them (beyond these, only to
/// find the next call of a caller whose calls arrived out of order).
const READY_LIMIT: usize = ACTOR_MAILBOX_CAPACITY;
/// Replies queued on one task stream before the tasks producing them wait for the caller
/// to read.
const REPLY_STREAM_CAPACITY: usize = 1024;

/// The method name of an on-demand checkpoint.
pub const CHECKPOINT_METHOD: &str = "__fleet_checkpoint";

thread_local! {
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Records panics' messages and backtraces so the caller gets them (worker processes).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::force_capture().to_string();
        tracing::debug!("task panicked: {message}{location}");
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((format!("{message}{location}"), backtrace)));
    }));
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Runs user code, turning a panic into a `Panic` task error with its message, location
/// and backtrace (recorded by the panic hook on the panicking thread).
async fn catching<T, F>(future: F) -> Result<T, TaskError>
where
    F: std::future::Future<Output = Result<T, TaskError>>,
{
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let recorded = LAST_PANIC.with(|p| p.borrow_mut().take());
            let (message, backtrace) =
                recorded.unwrap_or_else(|| (panic_message(payload.as_ref()), String::new()));
            Err(TaskError {
                kind: TaskFailure::Panic,
                message,
                backtrace,
            })
        }
    }
}

fn kind_to_wire(kind: &TaskFailure) -> TaskFailureKind {
    match kind {
        TaskFailure::Application => TaskFailureKind::TaskFailureApplication,
        TaskFailure::Panic => TaskFailureKind::TaskFailurePanic,
        TaskFailure::System => TaskFailureKind::TaskFailureSystem,
        TaskFailure::ActorNotHosted => TaskFailureKind::TaskFailureActorNotHosted,
        TaskFailure::Cancelled => TaskFailureKind::TaskFailureCancelled,
    }
}

/// The failure kind of a task error from the wire (an unknown kind is Fleet's failure).
pub(crate) fn failure_kind(error: &fleet_proto::runtime::TaskError) -> TaskFailure {
    match TaskFailureKind::try_from(error.kind) {
        Ok(TaskFailureKind::TaskFailureApplication) => TaskFailure::Application,
        Ok(TaskFailureKind::TaskFailurePanic) => TaskFailure::Panic,
        Ok(TaskFailureKind::TaskFailureActorNotHosted) => TaskFailure::ActorNotHosted,
        Ok(TaskFailureKind::TaskFailureCancelled) => TaskFailure::Cancelled,
        Ok(TaskFailureKind::TaskFailureSystem | TaskFailureKind::TaskFailureUnspecified)
        | Err(_) => TaskFailure::System,
    }
}

/// The caller-side error for a task error that came over the wire.
pub fn error_from_wire(error: fleet_proto::runtime::TaskError) -> Error {
    let kind = failure_kind(&error);
    Error::Task(Box::new(RemoteError {
        function: error.function,
        kind,
        message: error.message,
        backtrace: error.backtrace,
        location: Location {
            node_id: error.node_id,
            worker_id: error.worker_id,
            pid: error.pid,
        },
    }))
}

struct ActorCall {
    /// Stable across the caller's retries of this call (after a restart too).
    task_id: String,
    caller: String,
    seq: u64,
    method: String,
    args: Args,
    reply: ReplySender,
    /// Cancelled by its caller after it took its place in the order: answered
    /// "cancelled" in its turn, never run.
    cancelled: bool,
    /// A streaming call: where its `Emitter` sends items.
    stream: Option<StreamTarget>,
}

/// References a finished call still holds or passed on.
type Retained = Vec<fleet_proto::runtime::RetainedRef>;

type ActorJob = Box<dyn FnOnce() -> registry::LocalBoxFuture<'static, ()> + Send>;

/// The actors of a worker run on a thread of their own (a current-thread runtime with a
/// `LocalSet`): a blocking method blocks only the actors, never the worker's RPC service, and
/// shared calls of one actor can interleave without the actor having to be `Sync`.
struct ActorThread {
    jobs: mpsc::UnboundedSender<ActorJob>,
}

impl ActorThread {
    fn start() -> std::io::Result<Self> {
        let (jobs, mut rx) = mpsc::unbounded_channel::<ActorJob>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("fleet-actors".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some(job) = rx.recv().await {
                        tokio::task::spawn_local(job());
                    }
                });
            })?;
        Ok(ActorThread { jobs })
    }

    /// Runs one actor on a thread of its own until its loop ends: an actor that holds CPUs
    /// computes there without stalling the host's other actors.
    fn run_alone(name: String, job: ActorJob) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new().name(name).spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, job());
        })?;
        Ok(())
    }
}

/// An actor this process hosts: where its calls go, and how it is stopped alone (a shared
/// host's other actors go on).
struct HostedActor {
    mailbox: mpsc::Sender<ActorCall>,
    stop: CancellationToken,
}

/// The CoreWorker service of a worker (or a driver, which only serves objects).
#[derive(Clone)]
pub struct Executor {
    runtime: Arc<CoreWorker>,
    actors: Arc<DashMap<String, HostedActor>>,
    actor_thread: Arc<std::sync::OnceLock<ActorThread>>,
    exit: CancellationToken,
    /// This process is a shared actor host (the raylet said so): stopping one of its
    /// actors never ends it.
    is_host: bool,
}

impl Executor {
    /// An executor for this process; `exit` is cancelled by an Exit request.
    pub fn new(runtime: Arc<CoreWorker>, exit: CancellationToken) -> Self {
        Executor {
            runtime,
            actors: Arc::default(),
            actor_thread: Arc::default(),
            exit,
            is_host: std::env::var_os(fleet_raylet::worker_pool::env::ACTOR_HOST).is_some(),
        }
    }

    /// The core worker it serves for.
    pub(crate) fn runtime(&self) -> &Arc<CoreWorker> {
        &self.runtime
    }

    fn locate(&self, function: &str, error: TaskError) -> fleet_proto::runtime::TaskError {
        fleet_proto::runtime::TaskError {
            kind: kind_to_wire(&error.kind) as i32,
            message: error.message,
            backtrace: error.backtrace,
            node_id: self.runtime.node_id.clone(),
            worker_id: self.runtime.worker_id.clone(),
            pid: self.runtime.pid,
            function: function.into(),
        }
    }

    /// The reply for a finished task: large values go to the node's object store and travel
    /// by id.
    async fn reply(
        &self,
        function: &str,
        result: Result<Vec<u8>, TaskError>,
        retained: Retained,
    ) -> TaskReply {
        match result {
            Ok(bytes) if bytes.len() >= INLINE_LIMIT => {
                let id = ObjectId::random();
                let result = match self.runtime.plasma.put(id, &bytes).await {
                    Ok(()) => task_reply::Result::StoredId(id.to_string()),
                    Err(error) => {
                        task_reply::Result::Error(self.locate(function, TaskError::system(error)))
                    }
                };
                let stored = matches!(result, task_reply::Result::StoredId(_));
                TaskReply {
                    result: Some(result),
                    task_id: String::new(),
                    retained,
                    stored_at: if stored {
                        self.runtime.raylet_address.clone()
                    } else {
                        String::new()
                    },
                }
            }
            small => self.reply_inline(function, small, retained),
        }
    }

    /// The reply for a finished task whose value travels inline (below `INLINE_LIMIT`) or
    /// that failed: no waiting, so it can be written from the actor's thread.
    fn reply_inline(
        &self,
        function: &str,
        result: Result<Vec<u8>, TaskError>,
        retained: Retained,
    ) -> TaskReply {
        let stored_at = String::new();
        let result = match result {
            Ok(bytes) => task_reply::Result::Value(bytes),
            Err(error) => task_reply::Result::Error(self.locate(function, error)),
        };
        TaskReply {
            result: Some(result),
            task_id: String::new(),
            retained,
            stored_at,
        }
    }

    async fn create_actor(
        &self,
        spec: TaskSpec,
        args: Args,
    ) -> (Result<Vec<u8>, TaskError>, Retained) {
        let factory = match registry::actor_class(&spec.function) {
            Some(factory) => factory,
            None => {
                let error = TaskError::system(format!(
                    "no actor type named {} in this binary (is it declared with #[fleet::actor]?)",
                    spec.function
                ));
                return (Err(error), Vec::new());
            }
        };
        let (restore_state, answers) = if spec.restore_url.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            // From the checkpoint store, never from the message (bounded messages; the path
            // from the wire is checked to be the actor's own).
            let bytes = match crate::checkpoint::read_checkpoint(
                &spec.restore_url,
                std::path::Path::new(&spec.checkpoint_dir),
                &spec.actor_id,
            )
            .await
            {
                Ok(bytes) => bytes,
                Err(reason) => {
                    let error = TaskError::system(format!(
                        "cannot restore actor {}: {reason}",
                        spec.actor_id
                    ));
                    return (Err(error), Vec::new());
                }
            };
            match crate::codec::decode::<CheckpointEnvelope>(&bytes, "a checkpoint") {
                Ok(envelope) => (envelope.state, envelope.answers),
                Err(error) => return (Err(TaskError::system(error.to_string())), Vec::new()),
            }
        };
        let running = crate::runtime_context::Running {
            job_id: spec.job_id.clone(),
            task_id: spec.task_id.clone(),
            actor: Some((spec.actor_id.clone(), spec.actor_restarts)),
            stream: None,
            capture_group: capture_group(&spec),
        };
        let (instance, trace) = Traced::new(async move {
            if restore_state.is_empty() {
                let create =
                    crate::runtime_context::run_as(running, catching((factory.create)(args)));
                create.await.map_err(|mut e| {
                    if e.kind == TaskFailure::Panic {
                        e.message = format!("the constructor panicked: {}", e.message);
                    }
                    e
                })
            } else {
                (factory.restore)(&restore_state)
            }
        })
        .await;
        // The instance holds what it kept of its arguments: those references are retained.
        let retained = trace.retained();
        let instance = match instance {
            Ok(instance) => instance,
            Err(error) => return (Err(error), retained),
        };
        (self.host_actor(spec, instance, answers), retained)
    }

    fn host_actor(
        &self,
        spec: TaskSpec,
        instance: Box<dyn ActorObject>,
        answers: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<Vec<u8>, TaskError> {
        // The id names the actor's directory in the checkpoint store.
        crate::checkpoint::validate_actor_id(&spec.actor_id).map_err(TaskError::system)?;
        let (tx, rx) = mpsc::channel(ACTOR_MAILBOX_CAPACITY);
        let policy = CheckpointPolicy {
            answers: answers.into(),
            actor_id: spec.actor_id.clone(),
            every: spec.checkpoint_every_calls,
            interval: (spec.checkpoint_interval_ms > 0)
                .then(|| std::time::Duration::from_millis(spec.checkpoint_interval_ms)),
            answer_first: spec.checkpoint_answer_first,
            dir: PathBuf::from(&spec.checkpoint_dir),
            sequence: spec.checkpoint_sequence,
            written: VecDeque::new(),
        };
        let runtime = self.runtime.clone();
        let concurrency = spec.max_concurrency.max(1) as usize;
        let identity = ActorIdentity {
            job_id: spec.job_id.clone(),
            restarts: spec.actor_restarts,
            capture_group: capture_group(&spec),
        };
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let job: ActorJob = Box::new(move || {
            Box::pin(async move {
                // Stopped alone (killed, or given up by its owner): the instance and its
                // queued calls are dropped here (those calls answer "not hosted").
                tokio::select! {
                    _ = actor_loop(runtime, instance, rx, policy, concurrency, identity) => {}
                    _ = stopped.cancelled() => {}
                }
            })
        });
        if spec.own_thread {
            let name = format!(
                "fleet-actor-{}",
                spec.actor_id.get(..16).unwrap_or(&spec.actor_id)
            );
            ActorThread::run_alone(name, job)
                .map_err(|e| TaskError::system(format!("cannot start the actor's thread: {e}")))?;
        } else {
            let thread = match self.actor_thread.get() {
                Some(thread) => thread,
                None => {
                    let started = ActorThread::start().map_err(|e| {
                        TaskError::system(format!("cannot start the actor thread: {e}"))
                    })?;
                    let _ = self.actor_thread.set(started);
                    self.actor_thread
                        .get()
                        .ok_or_else(|| TaskError::system("the actor thread did not start"))?
                }
            };
            thread
                .jobs
                .send(job)
                .map_err(|_| TaskError::system("the actor thread has stopped"))?;
        }
        let hosted = HostedActor { mailbox: tx, stop };
        // A new instance of an actor this process already hosts (its owner restarted it
        // here) replaces the old one, which stops.
        if let Some(old) = self.actors.insert(spec.actor_id.clone(), hosted) {
            old.stop.cancel();
        }
        Ok(Vec::new())
    }

    /// Stops one hosted actor; the process goes on.
    fn stop_actor(&self, actor_id: &str) -> bool {
        match self.actors.remove(actor_id) {
            Some((_, actor)) => {
                actor.stop.cancel();
                true
            }
            None => false,
        }
    }
}

/// What an actor's calls report through `fleet::context()`: its job and restart count.
struct ActorIdentity {
    job_id: String,
    restarts: u32,
    /// The placement group that captures what its methods submit.
    capture_group: Option<String>,
}

impl ActorIdentity {
    fn running(
        &self,
        task_id: &str,
        actor_id: &str,
        stream: Option<StreamTarget>,
    ) -> crate::runtime_context::Running {
        crate::runtime_context::Running {
            job_id: self.job_id.clone(),
            task_id: task_id.to_string(),
            actor: Some((actor_id.to_string(), self.restarts)),
            stream,
            capture_group: self.capture_group.clone(),
        }
    }
}

/// One caller process's order: its newest incarnation (a link, or a link after a failure),
/// the next call number due, and the calls that arrived ahead of their turn.
#[derive(Default)]
struct CallerOrder {
    incarnation: u64,
    expected: u64,
    pending: BTreeMap<u64, ActorCall>,
}

/// Per-caller ordering: calls are released in each caller's sequence order. Kept per caller
/// *process*: a caller id is `process#incarnation`, incarnations grow, and a newer one
/// replaces the older order (whose calls all finished or failed on the caller's side), so
/// the map holds one entry per process that ever called, not one per handle.
#[derive(Default)]
struct CallOrder {
    callers: HashMap<String, CallerOrder>,
}

/// Splits `process#incarnation`; a caller id without one is incarnation 0.
fn split_caller(caller: &str) -> (&str, u64) {
    match caller.rsplit_once('#') {
        Some((process, incarnation)) => match incarnation.parse() {
            Ok(incarnation) => (process, incarnation),
            Err(_) => (caller, 0),
        },
        None => (caller, 0),
    }
}

impl CallOrder {
    /// Takes a call in; appends to `ready` the calls whose turn has come, in order. A call
    /// from an older incarnation than its process's newest, or a number already run, is
    /// answered with an error at once (it would otherwise wait forever for its turn).
    fn admit(&mut self, call: ActorCall, ready: &mut VecDeque<ActorCall>) {
        let (process, incarnation) = split_caller(&call.caller);
        let order = self.callers.entry(process.to_string()).or_default();
        if incarnation > order.incarnation {
            // Dropping the older incarnation's waiting calls drops their reply senders.
            *order = CallerOrder {
                incarnation,
                ..CallerOrder::default()
            };
        }
        if incarnation < order.incarnation || call.seq < order.expected {
            let why = if incarnation < order.incarnation {
                format!(
                    "call {} of {} came after its caller's newer incarnation {} (the caller gave up on it)",
                    call.seq, call.caller, order.incarnation
                )
            } else {
                format!("call {} of {} arrived twice", call.seq, call.caller)
            };
            call.reply.send((Err(TaskError::system(why)), Vec::new()));
            return;
        }
        order.pending.insert(call.seq, call);
        while let Some(call) = order.pending.remove(&order.expected) {
            order.expected += 1;
            ready.push_back(call);
        }
    }
}

/// A finished call's outcome and the references it retained.
type Outcome = (Result<Vec<u8>, TaskError>, Retained);

/// Writes a finished call's reply where its caller waits (see [`ReplySender::Direct`]).
type DirectReply = Box<dyn FnOnce(Outcome) + Send>;

/// Where an actor call's reply goes.
enum ReplySender {
    /// To a task awaiting it (the gRPC path, calls with arguments to fetch).
    Waiting(Option<oneshot::Sender<Outcome>>),
    /// Straight onto the caller's connection, from wherever the call finished (the actor's
    /// thread): no task is woken to carry it. A call dropped unanswered (its actor was
    /// stopped) is answered "not hosted", as a closed `Waiting` one is.
    Direct {
        write: Option<DirectReply>,
        actor_id: String,
    },
}

impl ReplySender {
    fn send(mut self, outcome: Outcome) {
        match &mut self {
            ReplySender::Waiting(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(outcome);
                }
            }
            ReplySender::Direct { write, .. } => {
                if let Some(write) = write.take() {
                    write(outcome);
                }
            }
        }
    }
}

impl Drop for ReplySender {
    fn drop(&mut self) {
        if let ReplySender::Direct { write, actor_id } = self {
            if let Some(write) = write.take() {
                write((Err(TaskError::actor_not_hosted(actor_id)), Vec::new()));
            }
        }
    }
}

/// A reply waiting for the checkpoint that covers its call (group commit).
struct HeldReply {
    reply: ReplySender,
    outcome: Result<Vec<u8>, TaskError>,
    retained: Retained,
}

/// Sends a finished call's reply now, or holds it for the checkpoint that will cover it.
fn finish(
    policy: &CheckpointPolicy,
    held: &mut Vec<HeldReply>,
    reply: ReplySender,
    outcome: Result<Vec<u8>, TaskError>,
    retained: Retained,
) {
    if policy.holds_replies() {
        held.push(HeldReply {
            reply,
            outcome,
            retained,
        });
    } else {
        reply.send((outcome, retained));
    }
}

/// Checkpoints the actor and answers every held reply: with its outcome once the
/// checkpoint is committed, with the failure otherwise (the caller then knows its call is
/// not durable, instead of believing it is).
async fn commit_group(
    runtime: &CoreWorker,
    instance: &dyn ActorObject,
    policy: &mut CheckpointPolicy,
    held: &mut Vec<HeldReply>,
) -> Result<u64, TaskError> {
    let result = checkpoint(runtime, instance.checkpoint(), policy).await;
    if let Err(error) = &result {
        tracing::warn!(
            actor = %policy.actor_id,
            error = %error.message,
            calls = held.len(),
            "checkpoint failed; the calls it was to cover are answered with the failure"
        );
    }
    for held in held.drain(..) {
        let outcome = match &result {
            Ok(_) => held.outcome,
            Err(error) => Err(uncovered_call_error(error)),
        };
        held.reply.send((outcome, held.retained));
    }
    result
}

async fn actor_loop(
    runtime: Arc<CoreWorker>,
    mut instance: Box<dyn ActorObject>,
    mut rx: mpsc::Receiver<ActorCall>,
    mut policy: CheckpointPolicy,
    concurrency: usize,
    identity: ActorIdentity,
) {
    let mut order = CallOrder::default();
    let mut ready: VecDeque<ActorCall> = VecDeque::new();
    // Replies waiting for their checkpoint; always empty while the mailbox is waited on.
    let mut held: Vec<HeldReply> = Vec::new();
    let mut calls_since_checkpoint = 0u64;
    let mut ticker = policy.interval.map(|period| {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    loop {
        if ready.is_empty() {
            tokio::select! {
                call = rx.recv() => match call {
                    Some(call) => order.admit(call, &mut ready),
                    None => return,
                },
                _ = next_tick(&mut ticker) => {
                    // Answer-first actors: the timed checkpoint. Under group commit
                    // everything answered is already covered, and nothing ran since.
                    if calls_since_checkpoint > 0 {
                        calls_since_checkpoint = 0;
                        let _ = commit_group(&runtime, instance.as_ref(), &mut policy, &mut held).await;
                    }
                }
            }
            continue;
        }
        take_available(&mut rx, &mut order, &mut ready);
        let Some(call) = ready.pop_front() else {
            continue;
        };
        let Some(call) = unless_cancelled(&runtime, call) else {
            continue;
        };
        if call.method == CHECKPOINT_METHOD {
            calls_since_checkpoint = 0;
            let result = commit_group(&runtime, instance.as_ref(), &mut policy, &mut held)
                .await
                .and_then(|seq| registry::encode_return(&seq, "checkpoint"));
            call.reply.send((result, Vec::new()));
            continue;
        }
        let call = if concurrency > 1 || instance.has_concurrency_groups() {
            match run_shared(
                instance.as_ref(),
                call,
                SharedQueues {
                    rx: &mut rx,
                    order: &mut order,
                    ready: &mut ready,
                    runtime: &runtime,
                },
                concurrency,
                &identity,
                &mut policy,
                &mut held,
            )
            .await
            {
                SharedOutcome::Done(calls) => {
                    calls_since_checkpoint += calls;
                    None
                }
                SharedOutcome::Exclusive(call) if call.method == CHECKPOINT_METHOD => {
                    // Handled at the top of the loop, after the shared calls before it.
                    ready.push_front(call);
                    None
                }
                SharedOutcome::Exclusive(call) => Some(call),
            }
        } else {
            Some(call)
        };
        if let Some(call) = call {
            // A retry of a call whose effect is already in the restored checkpoint (its reply
            // was lost with the old worker): answer it again, do not run it twice.
            if let Some(answer) = policy.answered(&call.task_id) {
                finish(&policy, &mut held, call.reply, answer, Vec::new());
            } else {
                let running = identity.running(&call.task_id, &policy.actor_id, call.stream);
                let dispatch = catching(instance.dispatch(&call.method, call.args));
                let (outcome, trace) =
                    Traced::new(crate::runtime_context::run_as(running, dispatch)).await;
                if let Ok(bytes) = &outcome {
                    policy.remember(&call.task_id, bytes);
                }
                calls_since_checkpoint += 1;
                finish(&policy, &mut held, call.reply, outcome, trace.retained());
            }
        }
        // Commit the group when it is full or no further call is ready to join it.
        take_available(&mut rx, &mut order, &mut ready);
        if policy.due(calls_since_checkpoint, held.len(), ready.is_empty()) {
            calls_since_checkpoint = 0;
            let _ = commit_group(&runtime, instance.as_ref(), &mut policy, &mut held).await;
        }
    }
}

/// The placement group that captures what a task submits (none unless it asked).
fn capture_group(spec: &TaskSpec) -> Option<String> {
    (!spec.capture_placement_group.is_empty()).then(|| spec.capture_placement_group.clone())
}

/// Where a streaming task's items go (none for other tasks).
fn stream_target(task_id: &str, streaming: bool, owner: &str) -> Option<StreamTarget> {
    streaming.then(|| StreamTarget {
        owner: owner.to_string(),
        task_id: task_id.to_string(),
    })
}

/// The call, unless its caller cancelled it before it started: then it is answered
/// "cancelled" (at once: it changed nothing a checkpoint must cover) and never runs.
fn unless_cancelled(runtime: &CoreWorker, call: ActorCall) -> Option<ActorCall> {
    if call.cancelled || runtime.cancels.take_early(&call.task_id) {
        call.reply.send((Err(TaskError::cancelled()), Vec::new()));
        return None;
    }
    Some(call)
}

/// Moves the calls waiting in the mailbox into the order, until `READY_LIMIT` calls are
/// ready to run (the rest stay in the bounded mailbox, holding their senders back).
fn take_available(
    rx: &mut mpsc::Receiver<ActorCall>,
    order: &mut CallOrder,
    ready: &mut VecDeque<ActorCall>,
) {
    while ready.len() < READY_LIMIT {
        let Ok(call) = rx.try_recv() else { break };
        order.admit(call, ready);
    }
}

enum SharedOutcome {
    /// Ran this many shared calls; nothing is waiting for exclusive access.
    Done(u64),
    /// These shared calls finished; this `&mut self` call must run next, alone.
    Exclusive(ActorCall),
}

/// The actor's mailbox and its ordering state, lent to [`run_shared`].
struct SharedQueues<'a> {
    rx: &'a mut mpsc::Receiver<ActorCall>,
    order: &'a mut CallOrder,
    ready: &'a mut VecDeque<ActorCall>,
    /// Whose cancels skip calls not yet started.
    runtime: &'a CoreWorker,
}

/// Runs `first` and the shared calls after it, up to `concurrency` at once, until none is in
/// flight; stops admitting at the first call that needs `&mut self` (returned to run alone).
/// Checkpointed actors keep exactly-once here too: a retried call already applied is
/// answered from memory, and under group commit the replies are held (at most a group's
/// worth of calls is started) for the checkpoint taken after the run.
async fn run_shared(
    instance: &dyn ActorObject,
    first: ActorCall,
    queues: SharedQueues<'_>,
    concurrency: usize,
    identity: &ActorIdentity,
    policy: &mut CheckpointPolicy,
    held: &mut Vec<HeldReply>,
) -> SharedOutcome {
    use futures::stream::{FuturesUnordered, StreamExt};
    type Running<'a> = registry::LocalBoxFuture<
        'a,
        (
            String,
            ReplySender,
            Result<Vec<u8>, TaskError>,
            Retained,
            usize,
        ),
    >;
    let SharedQueues {
        rx,
        order,
        ready,
        runtime,
    } = queues;
    let limit = if policy.holds_replies() {
        policy.group_limit()
    } else {
        usize::MAX
    };
    let mut running: FuturesUnordered<Running<'_>> = FuturesUnordered::new();
    let mut exclusive: Option<ActorCall> = None;
    let mut done = 0u64;
    let mut started = 0usize;
    let mut next = Some(first);
    // Calls in flight per concurrency group, and calls whose group was full (in arrival
    // order): a full group holds back only its own calls.
    let mut in_group = GroupSlots::new(concurrency);
    let mut parked: VecDeque<ActorCall> = VecDeque::new();
    loop {
        // Start what may start.
        while exclusive.is_none() && started < limit {
            // A parked call whose group has room goes first (it came earlier).
            let call = match parked
                .iter()
                .position(|c| in_group.has_room(instance, &c.method))
            {
                Some(index) => parked.remove(index),
                None => None,
            };
            let call = match call {
                Some(call) => call,
                None => {
                    let Some(call) = next.take().or_else(|| ready.pop_front()) else {
                        break;
                    };
                    let Some(call) = unless_cancelled(runtime, call) else {
                        continue;
                    };
                    if call.method == CHECKPOINT_METHOD {
                        exclusive = Some(call);
                        break;
                    }
                    if let Some(answer) = policy.answered(&call.task_id) {
                        finish(policy, held, call.reply, answer, Vec::new());
                        continue;
                    }
                    if !in_group.has_room(instance, &call.method) {
                        if ready.len() + parked.len() >= READY_LIMIT {
                            ready.push_front(call);
                            break;
                        }
                        parked.push_back(call);
                        continue;
                    }
                    call
                }
            };
            let group = in_group.take(instance, &call.method);
            let ActorCall {
                task_id,
                caller,
                seq,
                method,
                args,
                reply,
                cancelled,
                stream,
            } = call;
            match instance.dispatch_shared(&method, args) {
                Ok(future) => {
                    started += 1;
                    let as_call = identity.running(&task_id, &policy.actor_id, stream);
                    running.push(Box::pin(async move {
                        let call = crate::runtime_context::run_as(as_call, catching(future));
                        let (result, trace) = Traced::new(call).await;
                        (task_id, reply, result, trace.retained(), group)
                    }))
                }
                Err(args) => {
                    in_group.give_back(group);
                    exclusive = Some(ActorCall {
                        task_id,
                        caller,
                        seq,
                        method,
                        args,
                        reply,
                        cancelled,
                        stream,
                    })
                }
            }
        }
        if running.is_empty() {
            if let Some(call) = next.take() {
                // Not started (the group was full): it runs after the checkpoint.
                ready.push_front(call);
            }
            // Likewise the parked ones, ahead of it, in their order.
            while let Some(call) = parked.pop_back() {
                ready.push_front(call);
            }
            return match exclusive {
                Some(call) => SharedOutcome::Exclusive(call),
                None => SharedOutcome::Done(done),
            };
        }
        tokio::select! {
            Some((task_id, reply, result, retained, group)) = running.next() => {
                in_group.give_back(group);
                if let Ok(bytes) = &result {
                    policy.remember(&task_id, bytes);
                }
                finish(policy, held, reply, result, retained);
                done += 1;
            }
            call = rx.recv(), if exclusive.is_none() && ready.len() + parked.len() < READY_LIMIT => {
                if let Some(call) = call {
                    order.admit(call, ready);
                }
            }
        }
    }
}

/// The default group's number (methods without `#[group]`).
const DEFAULT_GROUP: usize = usize::MAX;

/// Calls in flight per concurrency group.
struct GroupSlots {
    default_limit: usize,
    busy: HashMap<usize, usize>,
}

impl GroupSlots {
    fn new(default_limit: usize) -> Self {
        GroupSlots {
            default_limit: default_limit.max(1),
            busy: HashMap::new(),
        }
    }

    fn group_of(&self, instance: &dyn ActorObject, method: &str) -> (usize, usize) {
        instance
            .concurrency_group(method)
            .unwrap_or((DEFAULT_GROUP, self.default_limit))
    }

    fn has_room(&self, instance: &dyn ActorObject, method: &str) -> bool {
        let (group, limit) = self.group_of(instance, method);
        self.busy.get(&group).copied().unwrap_or(0) < limit
    }

    /// Takes a place in the method's group; returns the group (to give it back).
    fn take(&mut self, instance: &dyn ActorObject, method: &str) -> usize {
        let (group, _) = self.group_of(instance, method);
        *self.busy.entry(group).or_default() += 1;
        group
    }

    fn give_back(&mut self, group: usize) {
        if let Some(busy) = self.busy.get_mut(&group) {
            *busy = busy.saturating_sub(1);
        }
    }
}

async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Writes the actor's state to the checkpoint store and commits its pointer in the GCS; the
/// checkpoint counts only once committed.
async fn checkpoint(
    runtime: &CoreWorker,
    state: Option<Result<Vec<u8>, TaskError>>,
    policy: &mut CheckpointPolicy,
) -> Result<u64, TaskError> {
    let state = state.ok_or_else(|| {
        TaskError::system("this actor is not checkpointable: declare it with #[fleet::actor(checkpoint)] on a serde Serialize + Deserialize struct")
    })??;
    let envelope = CheckpointEnvelope {
        state,
        answers: policy.answers.iter().cloned().collect(),
    };
    let state = crate::codec::encode(&envelope, "the checkpoint")
        .map_err(|e| TaskError::system(e.to_string()))?;
    let sequence = policy.sequence + 1;
    let dir = policy.dir.join(&policy.actor_id);
    // The file is this worker's own: an old incarnation that wakes up (a node frozen past
    // its owner's patience) may write the same sequence, and must never overwrite the file
    // the other incarnation's commit points to. The GCS then keeps whichever commit of that
    // sequence came first and refuses the other.
    let name = format!("{sequence:012}-{}", runtime.worker_id);
    let path = dir.join(format!("{name}.ckpt"));
    let temp = dir.join(format!("{name}.ckpt.tmp"));
    let size = state.len() as u64;
    let write = async {
        tokio::fs::create_dir_all(&dir).await?;
        let mut file = tokio::fs::File::create(&temp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &state).await?;
        file.sync_all().await?;
        tokio::fs::rename(&temp, &path).await
    };
    write.await.map_err(|e| {
        TaskError::system(format!("cannot write checkpoint {}: {e}", path.display()))
    })?;
    let info = CheckpointInfo {
        owner_id: policy.actor_id.clone(),
        sequence,
        url: format!("file://{}", path.display()),
        size,
        committed_at_ms: fleet_gcs::clock::now_ms(),
    };
    if let Err(error) = runtime.gcs.commit_checkpoint(info).await {
        // Not committed: nobody will read it.
        let _ = tokio::fs::remove_file(&path).await;
        return Err(TaskError::system(format!(
            "cannot commit checkpoint {sequence}: {error}"
        )));
    }
    policy.sequence = sequence;
    policy.written.push_back(path);
    // Keep the previous checkpoint as well: a reader may be restoring it right now.
    while policy.written.len() > 2 {
        if let Some(old) = policy.written.pop_front() {
            let _ = tokio::fs::remove_file(old).await;
        }
    }
    Ok(sequence)
}

type ReplyStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<TaskReply, Status>> + Send>>;

#[tonic::async_trait]
impl CoreWorkerRpc for Executor {
    async fn push_task(&self, request: Request<TaskSpec>) -> Result<Response<TaskReply>, Status> {
        Ok(Response::new(self.execute(request.into_inner()).await))
    }

    type PushTasksStream = ReplyStream;

    async fn push_tasks(
        &self,
        request: Request<tonic::Streaming<TaskSpec>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<TaskReply, Status>>(REPLY_STREAM_CAPACITY);
        let executor = self.clone();
        self.runtime.tasks.spawn(async move {
            while let Ok(Some(spec)) = incoming.message().await {
                let tx = tx.clone();
                executor
                    .take_task(spec, move |reply| async move {
                        let _ = tx.send(Ok(reply)).await;
                    })
                    .await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_object(
        &self,
        request: Request<GetObjectRequest>,
    ) -> Result<Response<GetObjectReply>, Status> {
        let request = request.into_inner();
        self.serve_object(request.object_id, request.lost_at).await
    }

    async fn pin_objects(
        &self,
        request: Request<fleet_proto::runtime::PinObjectsRequest>,
    ) -> Result<Response<fleet_proto::runtime::PinObjectsReply>, Status> {
        for r in request.into_inner().refs {
            self.runtime
                .store
                .add_borrower(&r.object_id, &r.borrower, r.permanent);
        }
        Ok(Response::new(fleet_proto::runtime::PinObjectsReply {}))
    }

    async fn release_borrow(
        &self,
        request: Request<fleet_proto::runtime::ReleaseBorrowRequest>,
    ) -> Result<Response<fleet_proto::runtime::ReleaseBorrowReply>, Status> {
        let request = request.into_inner();
        if let Some(stored) = self
            .runtime
            .store
            .release_borrower(&request.object_id, &request.borrower)
        {
            self.runtime.free(&request.object_id, stored);
        }
        Ok(Response::new(fleet_proto::runtime::ReleaseBorrowReply {}))
    }

    async fn exit(&self, request: Request<ExitRequest>) -> Result<Response<ExitReply>, Status> {
        let actor_id = request.into_inner().actor_id;
        if self.is_host && !actor_id.is_empty() {
            // One actor of a shared host: the others go on.
            if self.stop_actor(&actor_id) {
                tracing::info!(actor = %actor_id, "actor stopped");
            }
        } else {
            // A process of its own (or the whole process asked to go): it exits.
            self.exit.cancel();
        }
        Ok(Response::new(ExitReply {}))
    }

    async fn cancel_task(
        &self,
        request: Request<fleet_proto::runtime::CancelTaskRequest>,
    ) -> Result<Response<fleet_proto::runtime::CancelTaskReply>, Status> {
        crate::cancel::on_request(&self.runtime, request.into_inner())
            .await
            .map_err(|error| match error {
                Error::InvalidArgument(message) => Status::invalid_argument(message),
                other => Status::unavailable(other.to_string()),
            })?;
        Ok(Response::new(fleet_proto::runtime::CancelTaskReply {}))
    }

    async fn report_stream_item(
        &self,
        request: Request<fleet_proto::runtime::StreamItem>,
    ) -> Result<Response<fleet_proto::runtime::StreamItemReply>, Status> {
        match crate::stream::on_item(&self.runtime, request.into_inner()).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(error) => Err(Status::invalid_argument(error.to_string())),
        }
    }
}

impl Executor {
    /// Takes the next task of a stream (gRPC or direct): an actor call takes its place in
    /// the mailbox here, before the next task is read (a full mailbox stops the stream, and
    /// its caller, instead of growing), then runs on a task of its own (calls are
    /// pipelined); a function runs right here (a lease runs one at a time: one hand-off
    /// fewer per call). `answer` sends the reply.
    pub(crate) async fn take_task<F, Fut>(&self, spec: TaskSpec, answer: F)
    where
        F: FnOnce(TaskReply) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let kind = TaskKind::try_from(spec.kind).unwrap_or(TaskKind::Function);
        let permit = match kind {
            TaskKind::ActorMethod => self.reserve_mailbox(&spec.actor_id).await,
            _ => None,
        };
        let executor = self.clone();
        let run = async move {
            let task_id = spec.task_id.clone();
            let mut reply = executor.execute_with(spec, permit).await;
            reply.task_id = task_id;
            answer(reply).await;
        };
        if kind == TaskKind::Function {
            run.await;
        } else {
            self.runtime.tasks.spawn(run);
        }
    }

    /// Takes the next task of a direct connection (`direct`). An actor call whose
    /// arguments are all inline goes into the actor's mailbox from here, with a reply that
    /// the actor's thread writes straight onto the connection (no task per call, no
    /// hand-off back); anything else takes the general path.
    pub(crate) async fn take_direct_task(
        &self,
        spec: TaskSpec,
        writer: crate::direct::FrameWriter,
    ) {
        use fleet_proto::runtime::arg::Value;
        let is_call = spec.kind == TaskKind::ActorMethod as i32;
        let inline = spec
            .args
            .iter()
            .all(|a| !matches!(a.value, Some(Value::Stored(_))));
        if is_call && inline {
            if let Some(permit) = self.reserve_mailbox(&spec.actor_id).await {
                let executor = self.clone();
                let handle = tokio::runtime::Handle::current();
                let function = format!("{}::{}", spec.function, spec.method);
                let task_id = spec.task_id.clone();
                let write: DirectReply = Box::new(move |(result, retained): Outcome| {
                    let large = matches!(&result, Ok(bytes) if bytes.len() >= INLINE_LIMIT);
                    if large {
                        // To the object store first: that waits, so on a task.
                        handle.spawn(async move {
                            let mut reply = executor.reply(&function, result, retained).await;
                            reply.task_id = task_id;
                            let _ = writer.send_now(&reply);
                        });
                    } else {
                        let mut reply = executor.reply_inline(&function, result, retained);
                        reply.task_id = task_id;
                        let _ = writer.send_now(&reply);
                    }
                });
                let args = spec
                    .args
                    .into_iter()
                    .map(|a| match a.value {
                        Some(Value::Inline(bytes)) => bytes,
                        _ => Vec::new(),
                    })
                    .collect();
                let stream = stream_target(&spec.task_id, spec.streaming, &spec.owner_address);
                permit.send(ActorCall {
                    task_id: spec.task_id,
                    caller: spec.caller_id,
                    seq: spec.seq,
                    method: spec.method,
                    args,
                    reply: ReplySender::Direct {
                        write: Some(write),
                        actor_id: spec.actor_id,
                    },
                    cancelled: spec.cancelled,
                    stream,
                });
                return;
            }
        }
        self.take_task(spec, move |reply| async move {
            if let Err(cause) = writer.send(&reply).await {
                tracing::debug!(%cause, "a reply could not be sent (the caller is gone)");
            }
        })
        .await;
    }

    /// A place in the mailbox of the actor `actor_id`, waiting while it is full; `None` when
    /// this worker does not host it.
    async fn reserve_mailbox(&self, actor_id: &str) -> Option<mpsc::OwnedPermit<ActorCall>> {
        let mailbox = self.actors.get(actor_id).map(|m| m.mailbox.clone())?;
        mailbox.reserve_owned().await.ok()
    }

    async fn execute(&self, spec: TaskSpec) -> TaskReply {
        let permit = if spec.kind == TaskKind::ActorMethod as i32 {
            self.reserve_mailbox(&spec.actor_id).await
        } else {
            None
        };
        self.execute_with(spec, permit).await
    }

    /// Runs a task; an actor call goes into the mailbox place `permit` holds (none: the
    /// actor is not hosted here).
    async fn execute_with(
        &self,
        spec: TaskSpec,
        permit: Option<mpsc::OwnedPermit<ActorCall>>,
    ) -> TaskReply {
        let mut args: Args = Vec::with_capacity(spec.args.len());
        for arg in &spec.args {
            match &arg.value {
                Some(fleet_proto::runtime::arg::Value::Inline(bytes)) => args.push(bytes.clone()),
                Some(fleet_proto::runtime::arg::Value::Stored(stored)) => {
                    match self.runtime.stored_arg(stored).await {
                        Ok(data) => args.push(data.to_vec()),
                        Err(error) => {
                            return self
                                .reply(
                                    &spec.function,
                                    Err(TaskError::system(format!(
                                        "cannot read an argument: {error}"
                                    ))),
                                    Vec::new(),
                                )
                                .await
                        }
                    }
                }
                None => args.push(Vec::new()),
            }
        }
        let kind = TaskKind::try_from(spec.kind).unwrap_or(TaskKind::Function);
        let reply = match kind {
            TaskKind::Function => {
                let name = spec.function.clone();
                let (result, retained) = match registry::function(&name) {
                    // Cancelled before it arrived.
                    Some(_) if self.runtime.cancels.take_early(&spec.task_id) => {
                        (Err(TaskError::cancelled()), Vec::new())
                    }
                    Some(function) => {
                        let running = crate::runtime_context::Running {
                            job_id: spec.job_id.clone(),
                            task_id: spec.task_id.clone(),
                            actor: None,
                            stream: stream_target(
                                &spec.task_id,
                                spec.streaming,
                                &spec.owner_address,
                            ),
                            capture_group: capture_group(&spec),
                        };
                        let work = catching((function.call)(args));
                        let work = self.runtime.cancels.interruptible(&spec.task_id, work);
                        let call = crate::runtime_context::run_as(running, work);
                        let (result, trace) = Traced::new(call).await;
                        (result, trace.retained())
                    }
                    None => (
                        Err(TaskError::system(format!(
                            "no remote function named {name} in this binary (is it declared with #[fleet::remote]?)"
                        ))),
                        Vec::new(),
                    ),
                };
                self.reply(&name, result, retained).await
            }
            TaskKind::ActorCreation => {
                let name = format!("{}::new", spec.function);
                let (result, retained) = self.create_actor(spec, args).await;
                self.reply(&name, result, retained).await
            }
            TaskKind::ActorMethod => {
                let name = format!("{}::{}", spec.function, spec.method);
                let Some(permit) = permit else {
                    let error = TaskError::actor_not_hosted(&spec.actor_id);
                    return self.reply(&name, Err(error), Vec::new()).await;
                };
                let (tx, rx) = oneshot::channel();
                let tx = ReplySender::Waiting(Some(tx));
                permit.send(ActorCall {
                    task_id: spec.task_id.clone(),
                    caller: spec.caller_id,
                    seq: spec.seq,
                    method: spec.method,
                    args,
                    reply: tx,
                    cancelled: spec.cancelled,
                    stream: stream_target(&spec.task_id, spec.streaming, &spec.owner_address),
                });
                // No answer: the actor was stopped before it answered (killed, or replaced by
                // a restart): the caller follows it, as for a call that found it gone.
                let (result, retained) = rx.await.unwrap_or_else(|_| {
                    (Err(TaskError::actor_not_hosted(&spec.actor_id)), Vec::new())
                });
                self.reply(&name, result, retained).await
            }
        };
        reply
    }

    /// Answers a borrower's get. `lost_at`: the borrower could not read the copy at that
    /// raylet (its node died): rebuild the value first if that is still where it is.
    async fn serve_object(
        &self,
        id: String,
        lost_at: String,
    ) -> Result<Response<GetObjectReply>, Status> {
        let Some(slot) = self.runtime.store.existing(&id) else {
            return Ok(Response::new(GetObjectReply {
                result: Some(get_object_reply::Result::Error(self.locate(
                    "get",
                    TaskError::system(format!(
                        "object {id} is not held by its owner (freed, or never created)"
                    )),
                ))),
                stored_at: String::new(),
            }));
        };
        let mut value = slot.wait().await;
        if let Ok(Stored::Plasma(_, at)) = &value {
            if !lost_at.is_empty() && **at == *lost_at {
                value = self.runtime.reconstruct(&id, at.clone()).await;
            }
        }
        let mut stored_at = String::new();
        let result = match value {
            Ok(Stored::Inline(bytes)) => get_object_reply::Result::Value(bytes.as_ref().clone()),
            Ok(Stored::Plasma(stored, at)) => {
                stored_at = at.to_string();
                get_object_reply::Result::StoredId(stored.to_string())
            }
            Err(error) => get_object_reply::Result::Error(
                self.locate("get", TaskError::system(error.to_string())),
            ),
        };
        Ok(Response::new(GetObjectReply {
            result: Some(result),
            stored_at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type ReplyReceiver = oneshot::Receiver<(Result<Vec<u8>, TaskError>, Retained)>;

    fn call(caller: &str, seq: u64) -> (ActorCall, ReplyReceiver) {
        let (reply, rx) = oneshot::channel();
        let reply = ReplySender::Waiting(Some(reply));
        let call = ActorCall {
            task_id: format!("{caller}/{seq}"),
            caller: caller.into(),
            seq,
            method: "m".into(),
            args: Vec::new(),
            reply,
            cancelled: false,
            stream: None,
        };
        (call, rx)
    }

    fn seqs(ready: &VecDeque<ActorCall>) -> Vec<(String, u64)> {
        ready.iter().map(|c| (c.caller.clone(), c.seq)).collect()
    }

    #[test]
    fn calls_are_released_in_each_callers_order() {
        let mut order = CallOrder::default();
        let mut ready = VecDeque::new();
        let (c2, _r2) = call("p#1", 2);
        let (c0, _r0) = call("p#1", 0);
        let (q0, _q0) = call("q#4", 0);
        let (c1, _r1) = call("p#1", 1);
        order.admit(c2, &mut ready);
        assert!(ready.is_empty(), "2 waits for 0 and 1");
        order.admit(c0, &mut ready);
        order.admit(q0, &mut ready);
        order.admit(c1, &mut ready);
        assert_eq!(
            seqs(&ready),
            vec![
                ("p#1".into(), 0),
                ("q#4".into(), 0),
                ("p#1".into(), 1),
                ("p#1".into(), 2)
            ]
        );
    }

    #[test]
    fn a_newer_incarnation_replaces_the_older_order_and_stale_calls_are_answered() {
        let mut order = CallOrder::default();
        let mut ready = VecDeque::new();
        let (a0, _ra0) = call("p#1", 0);
        order.admit(a0, &mut ready);
        // Call 2 of incarnation 1 waits for a call 1 that will never come (its stream broke).
        let (a2, ra2) = call("p#1", 2);
        order.admit(a2, &mut ready);
        // A new handle in the same process starts again at 0, with a newer incarnation:
        // before, a new handle reused the old caller id and its call 0 waited forever.
        let (b0, _rb0) = call("p#7", 0);
        order.admit(b0, &mut ready);
        assert_eq!(seqs(&ready), vec![("p#1".into(), 0), ("p#7".into(), 0)]);
        assert!(
            ra2.blocking_recv().is_err(),
            "the superseded waiter is dropped, not left"
        );
        // A late call of the older incarnation, and a repeated number, are refused at once.
        let (late, rlate) = call("p#1", 1);
        order.admit(late, &mut ready);
        let (again, ragain) = call("p#7", 0);
        order.admit(again, &mut ready);
        for rx in [rlate, ragain] {
            let (outcome, _) = rx.blocking_recv().expect("answered");
            assert!(outcome.is_err());
        }
        assert_eq!(ready.len(), 2);
        assert_eq!(order.callers.len(), 1, "one entry per caller process");
    }

    #[test]
    fn failure_kinds_survive_the_wire_and_decide_without_the_message() {
        for kind in [
            TaskFailure::Application,
            TaskFailure::Panic,
            TaskFailure::System,
            TaskFailure::ActorNotHosted,
        ] {
            let wire = fleet_proto::runtime::TaskError {
                kind: kind_to_wire(&kind) as i32,
                // A message that would have fooled the old string matching.
                message: "actor x is not hosted by this worker SYSTEM".into(),
                ..Default::default()
            };
            assert_eq!(failure_kind(&wire), kind);
            let remote = error_from_wire(wire);
            assert_eq!(remote.remote().map(|r| r.kind.clone()), Some(kind));
        }
        let unknown = fleet_proto::runtime::TaskError {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(failure_kind(&unknown), TaskFailure::System);
        assert!(TaskFailure::Application.is_user_failure());
        assert!(!TaskFailure::ActorNotHosted.is_user_failure());
    }
}
