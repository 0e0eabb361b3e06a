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
use crate::error::{Error, Result};
use crate::object_ref::{resolve_args, Arg, ObjectRef, RefGuard, Stored};
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
}

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
    /// Where it is placed (spread, or pinned to a node).
    pub fn scheduling(mut self, scheduling: Scheduling) -> Self {
        self.options.scheduling = scheduling;
        self
    }

    /// Creates the actor and returns its handle once it is alive.
    pub async fn spawn(self) -> Result<A::Handle> {
        let runtime = current()?;
        let args = resolve_args(self.args).await?;
        let handle = spawn_actor(&runtime, A::NAME, args.values, args.guards, self.options).await?;
        Ok(A::Handle::from(handle))
    }
}

struct OwnerPart {
    args: Vec<Vec<u8>>,
    options: ActorOptions,
    /// References inside the constructor's arguments: a restart decodes them again.
    _guards: Vec<RefGuard>,
}

struct LinkState {
    address: Option<String>,
    incarnation: u64,
    next_seq: u64,
    lease: Option<Lease>,
    dead: Option<String>,
}

struct Call {
    method: String,
    args: Vec<Arg>,
    result_id: String,
}

pub(crate) struct ActorLink {
    actor_id: String,
    class: String,
    label: String,
    owner: Option<OwnerPart>,
    max_task_retries: u32,
    state: Mutex<LinkState>,
    queue: mpsc::UnboundedSender<Call>,
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

fn new_link(
    runtime: &Arc<CoreWorker>,
    actor_id: String,
    class: String,
    label: String,
    owner: Option<OwnerPart>,
    address: Option<String>,
) -> Arc<ActorLink> {
    let max_task_retries = owner.as_ref().map_or(0, |o| o.options.max_task_retries);
    let (tx, rx) = mpsc::unbounded_channel();
    let link = Arc::new(ActorLink {
        actor_id: actor_id.clone(),
        class,
        label,
        owner,
        max_task_retries,
        state: Mutex::new(LinkState {
            address,
            incarnation: 0,
            next_seq: 0,
            lease: None,
            dead: None,
        }),
        queue: tx,
    });
    runtime.links.insert(actor_id, link.clone());
    runtime
        .runtime
        .spawn(dispatch(runtime.clone(), Arc::downgrade(&link), rx));
    link
}

async fn spawn_actor(
    runtime: &Arc<CoreWorker>,
    class: &'static str,
    args: Vec<Vec<u8>>,
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
    );
    let started = start_instance(runtime, &link, None).await;
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
            runtime.links.remove(&actor_id);
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

/// Leases a worker of its own and runs the constructor (or restores `checkpoint`) there.
async fn start_instance(
    runtime: &CoreWorker,
    link: &ActorLink,
    checkpoint: Option<(Vec<u8>, u64)>,
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
            dedicated: true,
            detached: owner.options.detached,
            scheduling: &owner.options.scheduling,
        })
        .await?;
    let reply = lease.clone();
    let (restore_state, checkpoint_sequence) = checkpoint.unwrap_or_default();
    let spec = TaskSpec {
        task_id: crate::ids::new_id("task"),
        job_id: runtime.job_id.clone(),
        kind: TaskKind::ActorCreation as i32,
        function: link.class.clone(),
        args: owner
            .args
            .iter()
            .map(|a| fleet_proto::runtime::Arg {
                value: Some(fleet_proto::runtime::arg::Value::Inline(a.clone())),
            })
            .collect(),
        actor_id: link.actor_id.clone(),
        restore_state,
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

/// The latest committed checkpoint of `actor_id`, read only from its own directory of the
/// checkpoint store (a record naming another path is refused).
async fn latest_checkpoint(
    runtime: &CoreWorker,
    actor_id: &str,
    checkpoint_dir: &std::path::Path,
) -> Result<Option<(Vec<u8>, u64)>> {
    let Some(info) = runtime.gcs.latest_checkpoint(actor_id).await? else {
        return Ok(None);
    };
    let unavailable = |reason: String| Error::ObjectUnavailable {
        object_id: format!("checkpoint {} of actor {actor_id}", info.sequence),
        reason,
    };
    let path = crate::checkpoint::checkpoint_file(&info.url, checkpoint_dir, actor_id)
        .map_err(unavailable)?;
    // Bounded: a checkpoint travels whole in the actor's creation message.
    let size = tokio::fs::metadata(&path)
        .await
        .map_err(|e| unavailable(format!("cannot read {}: {e}", path.display())))?
        .len();
    if size > crate::checkpoint::MAX_CHECKPOINT_BYTES {
        return Err(unavailable(format!(
            "{} holds {size} bytes, more than a checkpoint may ({} bytes)",
            path.display(),
            crate::checkpoint::MAX_CHECKPOINT_BYTES
        )));
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| unavailable(format!("cannot read {}: {e}", path.display())))?;
    Ok(Some((bytes, info.sequence)))
}

impl ActorLink {
    /// Where to send the next call, and its number.
    async fn target(&self, runtime: &CoreWorker) -> Result<(String, u64, u64)> {
        let mut state = self.state.lock().await;
        if let Some(cause) = &state.dead {
            return Err(Error::ActorDied {
                actor: self.label.clone(),
                cause: cause.clone(),
            });
        }
        if state.address.is_none() {
            let info = runtime
                .gcs
                .get_actor(&self.actor_id)
                .await?
                .ok_or_else(|| Error::ActorDied {
                    actor: self.label.clone(),
                    cause: "the control store does not know it".into(),
                })?;
            if info.state == ActorState::ActorDead as i32 {
                state.dead = Some(info.death_cause.clone());
                return Err(Error::ActorDied {
                    actor: self.label.clone(),
                    cause: info.death_cause,
                });
            }
            if info.address.is_empty() {
                drop(state);
                self.wait_alive(runtime, "").await?;
                return Box::pin(self.target(runtime)).await;
            }
            state.address = Some(info.address);
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let address = state.address.clone().unwrap_or_default();
        Ok((address, state.incarnation, seq))
    }

    /// The worker of incarnation `incarnation` failed: restart the actor (owner) or wait for
    /// its owner to (others).
    async fn on_failure(&self, runtime: &CoreWorker, incarnation: u64, cause: &str) {
        let mut state = self.state.lock().await;
        if state.incarnation != incarnation || state.dead.is_some() {
            return;
        }
        let Some(owner) = &self.owner else {
            let old = state.address.take().unwrap_or_default();
            drop(state);
            let outcome = self.wait_alive(runtime, &old).await;
            let mut state = self.state.lock().await;
            match outcome {
                Ok(address) => {
                    state.address = Some(address);
                    state.incarnation += 1;
                    state.next_seq = 0;
                }
                Err(error) => state.dead = Some(error.to_string()),
            }
            return;
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
        match restarting {
            Ok(_) => {}
            Err(fleet_gcs::Error::Rejected {
                code: RejectCode::RestartsExhausted,
                ..
            }) => {
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
                state.dead = Some(death);
                return;
            }
            Err(fleet_gcs::Error::Rejected { current, .. }) => {
                // Killed meanwhile.
                let reason = current
                    .and_then(|r| <ActorInfo as prost::Message>::decode(r.value.as_slice()).ok())
                    .map(|a| a.death_cause)
                    .unwrap_or_else(|| cause.clone());
                state.dead = Some(reason);
                return;
            }
            Err(error) => {
                state.dead = Some(format!("{cause}; restarting it failed: {error}"));
                return;
            }
        }
        let checkpoint_dir = self
            .owner
            .as_ref()
            .map(|o| o.options.checkpoint_dir.clone())
            .unwrap_or_default();
        let checkpoint = match latest_checkpoint(runtime, &self.actor_id, &checkpoint_dir).await {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                tracing::warn!(actor = %self.label, %error, "restarting without a checkpoint");
                None
            }
        };
        // The state lock is held through the restart: new calls wait for the new address.
        match start_instance(runtime, self, checkpoint).await {
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
                state.incarnation += 1;
                state.next_seq = 0;
                tracing::info!(actor = %self.label, incarnation = state.incarnation, "actor restarted");
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
                state.dead = Some(death);
            }
        }
    }

    /// Polls the GCS until the actor is alive at an address other than `old` (or dead).
    async fn wait_alive(&self, runtime: &CoreWorker, old: &str) -> Result<String> {
        let started = tokio::time::Instant::now();
        loop {
            if let Some(info) = runtime.gcs.get_actor(&self.actor_id).await? {
                if info.state == ActorState::ActorDead as i32 {
                    return Err(Error::ActorDied {
                        actor: self.label.clone(),
                        cause: info.death_cause,
                    });
                }
                if info.state == ActorState::ActorAlive as i32
                    && !info.address.is_empty()
                    && info.address != old
                {
                    return Ok(info.address);
                }
            }
            if started.elapsed() > std::time::Duration::from_secs(60) {
                return Err(Error::ActorDied {
                    actor: self.label.clone(),
                    cause: "it did not come back within 60 s".into(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

async fn dispatch(
    runtime: Arc<CoreWorker>,
    link: std::sync::Weak<ActorLink>,
    mut queue: mpsc::UnboundedReceiver<Call>,
) {
    while let Some(call) = queue.recv().await {
        let Some(link) = link.upgrade() else { return };
        let args = match resolve_args(call.args).await {
            Ok(args) => args,
            Err(error) => {
                runtime.store.set(&call.result_id, Err(error));
                continue;
            }
        };
        match link.target(&runtime).await {
            Ok(target) => {
                let runtime = runtime.clone();
                runtime.runtime.clone().spawn(push_call(
                    runtime,
                    link,
                    target,
                    call.method,
                    args,
                    call.result_id,
                ));
            }
            Err(error) => runtime.store.set(&call.result_id, Err(error)),
        }
    }
}

async fn push_call(
    runtime: Arc<CoreWorker>,
    link: Arc<ActorLink>,
    target: (String, u64, u64),
    method: String,
    args: crate::object_ref::ResolvedArgs,
    result_id: String,
) {
    // The references inside the arguments live until the reply (and its retained list).
    let crate::object_ref::ResolvedArgs {
        values: args,
        guards: _guards,
    } = args;
    let (mut address, mut incarnation, mut seq) = target;
    let mut retries = 0u32;
    // One id for every attempt: a restored actor recognizes a retry it already applied.
    let task_id = crate::ids::new_id("task");
    loop {
        let spec = TaskSpec {
            task_id: task_id.clone(),
            job_id: runtime.job_id.clone(),
            kind: TaskKind::ActorMethod as i32,
            function: link.class.clone(),
            method: method.clone(),
            args: args
                .iter()
                .map(|a| fleet_proto::runtime::Arg {
                    value: Some(fleet_proto::runtime::arg::Value::Inline(a.clone())),
                })
                .collect(),
            actor_id: link.actor_id.clone(),
            caller_id: format!("{}#{incarnation}", runtime.worker_id),
            seq,
            owner_address: runtime.address.clone(),
            ..TaskSpec::default()
        };
        let outcome = runtime.push(&address, spec).await;
        match outcome {
            Ok(reply) => {
                runtime.pin_retained(&reply.retained).await;
                let result = match reply.result {
                    Some(task_reply::Result::Value(bytes)) => Ok(Stored::Inline(Arc::new(bytes))),
                    Some(task_reply::Result::StoredId(id)) => {
                        crate::submitter::stored_id(&id, &reply.stored_at)
                    }
                    Some(task_reply::Result::Error(error)) => {
                        if error.kind == "SYSTEM" && error.message.contains("is not hosted") {
                            // The call raced the actor's death.
                            Err(Error::ActorDied {
                                actor: link.label.clone(),
                                cause: error.message.clone(),
                            })
                        } else {
                            Err(crate::executor::error_from_wire(error))
                        }
                    }
                    None => Err(Error::Internal("empty reply to an actor call".into())),
                };
                runtime.store.set_stored(&result_id, result);
                return;
            }
            Err(cause) => {
                link.on_failure(&runtime, incarnation, &cause).await;
                if retries >= link.max_task_retries {
                    let state = link.state.lock().await;
                    let cause = state.dead.clone().unwrap_or_else(|| {
                        format!("the call was interrupted: its worker died ({cause})")
                    });
                    runtime.store.set(
                        &result_id,
                        Err(Error::ActorDied {
                            actor: link.label.clone(),
                            cause,
                        }),
                    );
                    return;
                }
                retries += 1;
                match link.target(&runtime).await {
                    Ok((a, i, s)) => {
                        address = a;
                        incarnation = i;
                        seq = s;
                    }
                    Err(error) => {
                        runtime.store.set(&result_id, Err(error));
                        return;
                    }
                }
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
        if self
            .link
            .queue
            .send(Call {
                method: method.to_string(),
                args,
                result_id: result_id.clone(),
            })
            .is_err()
        {
            runtime.store.set(
                &result_id,
                Err(Error::ActorDied {
                    actor: self.link.label.clone(),
                    cause: "its handle was closed".into(),
                }),
            );
        }
        result
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
        state.dead = Some(cause);
        if let Some(address) = state.address.take() {
            if let Ok(mut client) = runtime.worker_client(&address) {
                let _ = client.exit(fleet_proto::runtime::ExitRequest {}).await;
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
}

impl Serialize for ActorHandle {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        WireHandle {
            actor_id: self.link.actor_id.clone(),
            class: self.link.class.clone(),
            label: self.link.label.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ActorHandle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let wire = WireHandle::deserialize(deserializer)?;
        let runtime = current().map_err(serde::de::Error::custom)?;
        if let Some(link) = runtime.links.get(&wire.actor_id) {
            return Ok(ActorHandle { link: link.clone() });
        }
        Ok(ActorHandle {
            link: new_link(&runtime, wire.actor_id, wire.class, wire.label, None, None),
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
    if let Some(link) = runtime.links.get(&info.actor_id) {
        return Ok(A::Handle::from(ActorHandle { link: link.clone() }));
    }
    let address = (!info.address.is_empty()).then_some(info.address);
    let link = new_link(
        &runtime,
        info.actor_id,
        info.class_name,
        format!("'{name}'"),
        None,
        address,
    );
    Ok(A::Handle::from(ActorHandle { link }))
}
