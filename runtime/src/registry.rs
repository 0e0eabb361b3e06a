//! Remote functions and actor classes, found by name in a registry built at link time
//! (`inventory`): a worker process is the driver's own binary, so every `#[fleet::remote]`
//! and `#[fleet::actor]` of the program is registered in it too.

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::error::TaskFailure;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed future that stays on the actor's thread.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A failure inside user code, before it is located (node, worker) by the executor.
#[derive(Debug, Clone)]
pub struct TaskError {
    /// What kind.
    pub kind: TaskFailure,
    /// The message.
    pub message: String,
    /// Backtrace, if any.
    pub backtrace: String,
}

impl TaskError {
    /// An application error (`Err` returned by user code).
    pub fn application(message: impl std::fmt::Display) -> Self {
        TaskError {
            kind: TaskFailure::Application,
            message: message.to_string(),
            backtrace: String::new(),
        }
    }

    /// The call's actor is not hosted by this worker.
    pub fn actor_not_hosted(actor_id: &str) -> Self {
        TaskError {
            kind: TaskFailure::ActorNotHosted,
            message: format!("actor {actor_id} is not hosted by this worker"),
            backtrace: String::new(),
        }
    }

    /// The task was cancelled (`fleet::cancel`) before it finished.
    pub fn cancelled() -> Self {
        TaskError {
            kind: TaskFailure::Cancelled,
            message: "cancelled (fleet::cancel) before it finished".to_string(),
            backtrace: String::new(),
        }
    }

    /// A failure of Fleet itself.
    pub fn system(message: impl std::fmt::Display) -> Self {
        TaskError {
            kind: TaskFailure::System,
            message: message.to_string(),
            backtrace: String::new(),
        }
    }
}

/// Serialized arguments and return values.
pub type Args = Vec<Vec<u8>>;

/// A `#[fleet::remote]` function.
pub struct RemoteFunction {
    /// `module::path::name`.
    pub name: &'static str,
    /// Decodes the arguments, runs the function, encodes the result.
    pub call: fn(Args) -> BoxFuture<'static, Result<Vec<u8>, TaskError>>,
}
inventory::collect!(RemoteFunction);

/// A live actor instance, behind its type.
pub trait ActorObject: Send + 'static {
    /// Runs one method.
    fn dispatch<'a>(
        &'a mut self,
        method: &'a str,
        args: Args,
    ) -> BoxFuture<'a, Result<Vec<u8>, TaskError>>;
    /// Runs a `&self` method; gives the arguments back when `method` needs `&mut self`.
    /// Shared calls of an actor with `max_concurrency > 1` interleave at their await points.
    fn dispatch_shared<'a>(
        &'a self,
        method: &str,
        args: Args,
    ) -> Result<LocalBoxFuture<'a, Result<Vec<u8>, TaskError>>, Args>;
    /// Its state for a checkpoint (`None`: the actor is not checkpointable).
    fn checkpoint(&self) -> Option<Result<Vec<u8>, TaskError>>;
    /// The concurrency group of a `&self` method (`#[group(name)]` under
    /// `#[fleet::actor(concurrency_groups(...))]`): the group's number and how many of its
    /// calls may run at once. `None`: the default group (`max_concurrency`).
    fn concurrency_group(&self, _method: &str) -> Option<(usize, usize)> {
        None
    }
    /// Whether it declares concurrency groups (its `&self` calls then run by group, even
    /// with `max_concurrency` 1).
    fn has_concurrency_groups(&self) -> bool {
        false
    }
}

/// A constructed (or restored) actor, or why not.
pub type ActorInstance = Result<Box<dyn ActorObject>, TaskError>;

/// A `#[fleet::actor]` class.
pub struct ActorFactory {
    /// The actor type's name (`module::path::Type`).
    pub name: &'static str,
    /// Runs the constructor (`new`) with encoded arguments.
    pub create: fn(Args) -> BoxFuture<'static, ActorInstance>,
    /// Rebuilds the actor from a checkpoint.
    pub restore: fn(&[u8]) -> ActorInstance,
}
inventory::collect!(ActorFactory);

/// Finds a remote function.
pub fn function(name: &str) -> Option<&'static RemoteFunction> {
    inventory::iter::<RemoteFunction>
        .into_iter()
        .find(|f| f.name == name)
}

/// Finds an actor class.
pub fn actor_class(name: &str) -> Option<&'static ActorFactory> {
    inventory::iter::<ActorFactory>
        .into_iter()
        .find(|f| f.name == name)
}

/// Decodes argument `index` for `function` (used by generated code).
pub fn decode_arg<T: DeserializeOwned>(
    args: &Args,
    index: usize,
    function: &str,
) -> Result<T, TaskError> {
    let bytes = args.get(index).ok_or_else(|| {
        TaskError::system(format!(
            "{function}: argument {index} missing ({} given)",
            args.len()
        ))
    })?;
    codec::decode(bytes, &format!("argument {index} of {function}")).map_err(TaskError::system)
}

/// Encodes a return value (used by generated code).
pub fn encode_return<T: Serialize>(value: &T, function: &str) -> Result<Vec<u8>, TaskError> {
    codec::encode(value, &format!("the value returned by {function}")).map_err(TaskError::system)
}
