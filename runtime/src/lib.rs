//! Fleet's core worker, linked into every driver and worker process.
//!
//! - [`init`]: `init()` — worker mode, cluster mode or an embedded single-node cluster.
//! - [`context`]: this process's core worker (identity, connections, memory store).
//! - [`object_ref`]: `ObjectRef<T>`, arguments, the memory store of owned values.
//! - `direct`: the direct call path: task frames on a Unix socket or TCP, not through HTTP/2.
//! - [`submitter`]: remote function calls over reused worker leases, with retries.
//! - [`actor`]: spawning actors, typed handles, ordered calls, restarts, named lookup, kill.
//! - [`executor`]: the worker side: runs functions, hosts actors, checkpoints, serves objects.
//! - [`checkpoint`]: a checkpointed actor's policy as pure decisions (group commit, dedup of
//!   retried calls, checkpoint paths from the wire).
//! - [`placement`]: placement groups, reserved across raylets with two-phase commit.
//! - [`plasma`]: large objects in the node's shared-memory object store.
//! - [`registry`]: remote functions and actor classes registered at link time.
//! - [`api`]: `put`, `get`, `get_all`, `wait` (and `wait_with`: `fetch_local`).
//! - [`cancel`]: `fleet::cancel`, for queued and running tasks and actor calls.
//! - [`stream`]: streaming returns: `Emitter<T>` in the producer, `ObjectRefStream<T>` for
//!   the caller, with backpressure and exactly-once delivery across re-runs.
//! - [`channel`]: `fleet::channel`, a typed bounded stream between actors on any nodes.
//! - [`kv`]: `fleet::kv`, the cluster's small replicated key-value store (coordination).
//! - [`runtime_context`]: `context()`, where and as what the calling code runs.
//! - `tasks`: the owner of every background task (ended by `shutdown()`).
//! - [`codec`], [`ids`], [`error`].

pub mod actor;
pub mod api;
pub mod cancel;
pub mod channel;
pub mod checkpoint;
pub mod codec;
pub mod context;
mod direct;
pub mod error;
pub mod executor;
pub mod ids;
pub mod init;
pub mod kv;
pub mod object_ref;
pub mod placement;
pub mod plasma;
pub mod registry;
pub mod runtime_context;
pub mod stream;
pub mod submitter;
mod tasks;

pub use actor::{get_actor, get_actor_in, ActorBuilder, ActorHandle, ActorOptions, ActorType};
pub use api::{get, get_all, get_timeout, kill, put, wait, wait_with, WaitOptions};
pub use cancel::{cancel, cancel_with, CancelOptions};
pub use channel::{channel, Receiver, Sender};
pub use error::{Error, Location, RemoteError, Result, TaskFailure};
pub use init::{
    cluster_address, cluster_token, gpu_ids, init, init_with, node_id, shutdown, InitOptions,
};
pub use object_ref::{Arg, IntoArg, ObjectRef};
pub use placement::{
    remove_placement_group, Bundle, PlacementGroup, PlacementGroupHandle, PlacementStrategy,
};
pub use runtime_context::{context, RuntimeContext};
pub use stream::{submit_with_returns, Emitter, ObjectRefStream, Returns, STREAM_WINDOW};
pub use submitter::{submit_streaming_task, submit_task, LabelSelector, Scheduling, TaskOptions};
