//! `fleet::Error`: what a caller of a task, an actor or an object sees. Remote failures carry
//! the message, the remote backtrace and where they ran.

use std::fmt;

/// Why a task failed on the remote side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskFailure {
    /// The function or method returned `Err`.
    Application,
    /// It panicked.
    Panic,
    /// Fleet could not run it (unknown function, undecodable arguments...).
    System,
    /// The call reached a worker that no longer hosts its actor (it died or moved); the
    /// caller treats the actor as failed over, never the call as the method's failure.
    ActorNotHosted,
    /// It was cancelled (`fleet::cancel`) before it finished.
    Cancelled,
}

impl TaskFailure {
    /// The user's code failed (returned `Err` or panicked), as opposed to Fleet: what
    /// `retry_exceptions` retries.
    pub fn is_user_failure(&self) -> bool {
        matches!(self, TaskFailure::Application | TaskFailure::Panic)
    }
}

/// Where a failed task ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// Node id.
    pub node_id: String,
    /// Worker id.
    pub worker_id: String,
    /// Process id.
    pub pid: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker {} (pid {}) on node {}",
            self.worker_id, self.pid, self.node_id
        )
    }
}

/// A remote function or actor method's failure, as the caller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteError {
    /// The function or `Actor::method`.
    pub function: String,
    /// Application error, panic or system failure.
    pub kind: TaskFailure,
    /// The error's message.
    pub message: String,
    /// The remote backtrace (panics), if captured.
    pub backtrace: String,
    /// Where it ran.
    pub location: Location,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed ({:?}) on {}: {}",
            self.function, self.kind, self.location, self.message
        )
    }
}

/// Errors of the Fleet SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A remote function or actor method failed.
    #[error("{0}")]
    Task(Box<RemoteError>),
    /// The worker running the task died, and retries are used up.
    #[error("{function} could not finish: its worker died {attempts} time(s) ({cause}); raise max_retries to retry more")]
    WorkerDied {
        /// The function.
        function: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last cause.
        cause: String,
    },
    /// The actor is dead and will not restart.
    #[error("actor {actor} is dead: {cause}")]
    ActorDied {
        /// The actor (name or id).
        actor: String,
        /// Why.
        cause: String,
    },
    /// No live actor has this name.
    #[error("no actor named '{name}' in namespace '{namespace}' (is it spelled right, and still alive?)")]
    ActorNotFound {
        /// The name.
        name: String,
        /// The namespace.
        namespace: String,
    },
    /// The named actor is of another type than the handle asked for.
    #[error("actor '{name}' is a {found}, not a {expected}")]
    ActorTypeMismatch {
        /// The name.
        name: String,
        /// The type asked for.
        expected: String,
        /// Its real type.
        found: String,
    },
    /// An actor's name is taken.
    #[error("an actor named '{name}' already lives in namespace '{namespace}'")]
    ActorNameTaken {
        /// The name.
        name: String,
        /// The namespace.
        namespace: String,
    },
    /// The object's value is gone (its owner died or freed it).
    #[error("object {object_id} is unavailable: {reason}")]
    ObjectUnavailable {
        /// The object.
        object_id: String,
        /// Why.
        reason: String,
    },
    /// The only copy of a stored object was on a node that is gone, and it cannot be rebuilt.
    #[error(
        "object {object_id} is lost: its copy at node {location} cannot be read, and {reason}"
    )]
    ObjectLost {
        /// The object.
        object_id: String,
        /// The raylet whose store held it.
        location: String,
        /// Why it was not rebuilt.
        reason: String,
    },
    /// A value could not be serialized or deserialized.
    #[error("cannot {action} {what}: {reason} (handle and actor/function types must match)")]
    Serialization {
        /// "encode" or "decode".
        action: &'static str,
        /// What.
        what: String,
        /// Why.
        reason: String,
    },
    /// The resource request can never be satisfied.
    #[error("{0}")]
    Infeasible(String),
    /// A placement group could not be created (or removed).
    #[error("placement group {group}: {reason}")]
    PlacementGroup {
        /// Its name, or its id when unnamed.
        group: String,
        /// Why, naming the bundle and the nodes.
        reason: String,
    },
    /// `fleet::init()` has not run in this process.
    #[error("Fleet is not initialized: call fleet::init().await (or use #[fleet::main]) first")]
    NotInitialized,
    /// A wait ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A get with a timeout ran out of time before the object was ready (it may still be).
    #[error("object {object_id}{} was not ready after {after:?}; it may still come: wait longer, or look at the task with `fleet list tasks`", task.as_ref().map(|t| format!(" (the result of task {t})")).unwrap_or_default())]
    GetTimeout {
        /// The object.
        object_id: String,
        /// The task whose result it is, when it is one.
        task: Option<String>,
        /// How long the get waited.
        after: std::time::Duration,
    },
    /// The control store failed. Shared, so that every waiter of one failed operation gets
    /// the same error with its cause chain.
    #[error("control store: {0}")]
    Gcs(#[source] std::sync::Arc<fleet_gcs::Error>),
    /// The raylet failed.
    #[error("raylet: {0}")]
    Raylet(#[source] std::sync::Arc<fleet_raylet::Error>),
    /// An RPC failed.
    #[error("{what}: {message}")]
    Rpc {
        /// What was being done.
        what: String,
        /// The gRPC code the peer (or the transport) answered.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The actor cannot be reached right now (its connection broke, or the control store
    /// did not answer), but it is not known to be dead: the call may or may not have run,
    /// and the handle stays usable.
    #[error("actor {actor} is unavailable: {cause}; the call may or may not have run (retry it, or set max_task_retries on the actor)")]
    ActorUnavailable {
        /// The actor (name or id).
        actor: String,
        /// Why.
        cause: String,
    },
    /// A handle has as many calls in flight as it may hold; more would grow without bound.
    #[error("actor {actor} has {limit} calls pending from this handle, its limit (max_pending_calls); wait for some of them before submitting more")]
    PendingCallsExceeded {
        /// The actor (name or id).
        actor: String,
        /// The limit.
        limit: usize,
    },
    /// `fleet::shutdown()` ran in this process before the operation finished.
    #[error("Fleet was shut down in this process (fleet::shutdown()) before this finished")]
    ShutDown,
    /// A channel's other end is gone: its process died, or it was dropped.
    #[error("channel {channel}: its {peer} is gone ({cause}); a channel ends with either end's process: make a new one")]
    ChannelPeerLost {
        /// The channel id.
        channel: String,
        /// The other end: which end, which process, which node.
        peer: String,
        /// What was seen.
        cause: String,
    },
    /// A channel was used in a way it cannot serve (a second sender, an end moved after
    /// use, a receiver that never appeared, a message over the limit).
    #[error("channel {channel}: {reason}")]
    Channel {
        /// The channel id.
        channel: String,
        /// What happened, and what to do.
        reason: String,
    },
    /// The task or actor call was cancelled (`fleet::cancel`) before it finished; its
    /// result will never come.
    #[error("{task} was cancelled (fleet::cancel of object {object_id}) before it finished; its result will never come: submit it again to run it")]
    Cancelled {
        /// The function or `Actor::method`.
        task: String,
        /// The result that was cancelled.
        object_id: String,
    },
    /// A streaming task's consumer is gone: it dropped its `ObjectRefStream`, or cancelled
    /// the task, or its process died.
    #[error("the stream of {task} has no consumer any more (its ObjectRefStream was dropped, the task was cancelled, or the owner died: {cause}); stop producing")]
    StreamClosed {
        /// The streaming function or `Actor::method`.
        task: String,
        /// What was seen.
        cause: String,
    },
    /// A call's argument cannot be used (it says which, and what is accepted).
    #[error("{0}")]
    InvalidArgument(String),
    /// Something else went wrong inside Fleet.
    #[error("{0}")]
    Internal(String),
}

impl From<fleet_gcs::Error> for Error {
    fn from(error: fleet_gcs::Error) -> Self {
        Error::Gcs(std::sync::Arc::new(error))
    }
}

impl From<fleet_raylet::Error> for Error {
    fn from(error: fleet_raylet::Error) -> Self {
        Error::Raylet(std::sync::Arc::new(error))
    }
}

/// Fleet's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn rpc(what: impl Into<String>, status: &tonic::Status) -> Self {
        Error::Rpc {
            what: what.into(),
            code: status.code(),
            message: fleet_gcs::error::describe_status(status),
        }
    }

    /// The gRPC code of an RPC failure, when this is one.
    pub fn rpc_code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc { code, .. } => Some(*code),
            Error::Gcs(error) => match error.as_ref() {
                fleet_gcs::Error::Rpc { status, .. } => Some(status.code()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The remote failure, when it is one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            Error::Task(remote) => Some(remote),
            _ => None,
        }
    }
}

impl Clone for Error {
    fn clone(&self) -> Self {
        match self {
            Error::Task(remote) => Error::Task(remote.clone()),
            Error::WorkerDied {
                function,
                attempts,
                cause,
            } => Error::WorkerDied {
                function: function.clone(),
                attempts: *attempts,
                cause: cause.clone(),
            },
            Error::ActorDied { actor, cause } => Error::ActorDied {
                actor: actor.clone(),
                cause: cause.clone(),
            },
            Error::ChannelPeerLost {
                channel,
                peer,
                cause,
            } => Error::ChannelPeerLost {
                channel: channel.clone(),
                peer: peer.clone(),
                cause: cause.clone(),
            },
            Error::Channel { channel, reason } => Error::Channel {
                channel: channel.clone(),
                reason: reason.clone(),
            },
            Error::ActorNotFound { name, namespace } => Error::ActorNotFound {
                name: name.clone(),
                namespace: namespace.clone(),
            },
            Error::ActorTypeMismatch {
                name,
                expected,
                found,
            } => Error::ActorTypeMismatch {
                name: name.clone(),
                expected: expected.clone(),
                found: found.clone(),
            },
            Error::ActorNameTaken { name, namespace } => Error::ActorNameTaken {
                name: name.clone(),
                namespace: namespace.clone(),
            },
            Error::ObjectUnavailable { object_id, reason } => Error::ObjectUnavailable {
                object_id: object_id.clone(),
                reason: reason.clone(),
            },
            Error::ObjectLost {
                object_id,
                location,
                reason,
            } => Error::ObjectLost {
                object_id: object_id.clone(),
                location: location.clone(),
                reason: reason.clone(),
            },
            Error::Serialization {
                action,
                what,
                reason,
            } => Error::Serialization {
                action,
                what: what.clone(),
                reason: reason.clone(),
            },
            Error::Infeasible(s) => Error::Infeasible(s.clone()),
            Error::PlacementGroup { group, reason } => Error::PlacementGroup {
                group: group.clone(),
                reason: reason.clone(),
            },
            Error::NotInitialized => Error::NotInitialized,
            Error::Timeout(d) => Error::Timeout(*d),
            Error::GetTimeout {
                object_id,
                task,
                after,
            } => Error::GetTimeout {
                object_id: object_id.clone(),
                task: task.clone(),
                after: *after,
            },
            Error::Gcs(error) => Error::Gcs(error.clone()),
            Error::Raylet(error) => Error::Raylet(error.clone()),
            Error::Rpc {
                what,
                code,
                message,
            } => Error::Rpc {
                what: what.clone(),
                code: *code,
                message: message.clone(),
            },
            Error::ActorUnavailable { actor, cause } => Error::ActorUnavailable {
                actor: actor.clone(),
                cause: cause.clone(),
            },
            Error::PendingCallsExceeded { actor, limit } => Error::PendingCallsExceeded {
                actor: actor.clone(),
                limit: *limit,
            },
            Error::ShutDown => Error::ShutDown,
            Error::StreamClosed { task, cause } => Error::StreamClosed {
                task: task.clone(),
                cause: cause.clone(),
            },
            Error::Cancelled { task, object_id } => Error::Cancelled {
                task: task.clone(),
                object_id: object_id.clone(),
            },
            Error::InvalidArgument(message) => Error::InvalidArgument(message.clone()),
            Error::Internal(message) => Error::Internal(message.clone()),
        }
    }
}
