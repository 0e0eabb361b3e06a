//! Fleet's public API: an actor-based distributed runtime for Rust.
//!
//! ```ignore
//! #[fleet::remote]
//! fn square(x: u64) -> u64 { x * x }
//!
//! #[fleet::main]
//! async fn main() -> fleet::Result<()> {
//!     let refs: Vec<_> = (0..100).map(|i| square::remote(i)).collect();
//!     let total: u64 = fleet::get_all(&refs).await?.iter().sum();
//!     Ok(())
//! }
//! ```
//!
//! `fleet::init()` with no `FLEET_ADDRESS` starts an embedded single-node cluster inside the
//! program; worker processes are this program's own binary re-executed in worker mode, so
//! `init()` must run first in `main` (`#[fleet::main]` does it).

pub use fleet_macros::{actor, main, remote};
pub use fleet_runtime::{cancel, cancel_with, CancelOptions};
pub use fleet_runtime::{channel, context, kv, Receiver, RuntimeContext, Sender};
pub use fleet_runtime::{
    cluster_address, cluster_token, get, get_actor, get_actor_in, get_all, get_timeout, gpu_ids,
    init, init_with, kill, node_id, put, remove_placement_group, shutdown, submit_task, wait,
    ActorBuilder, ActorHandle, ActorOptions, ActorType, Bundle, Error, InitOptions, IntoArg,
    LabelSelector, Location, ObjectRef, PlacementGroup, PlacementGroupHandle, PlacementStrategy,
    RemoteError, Result, Scheduling, TaskFailure, TaskOptions,
};
pub use fleet_runtime::{submit_streaming_task, Emitter, ObjectRefStream, STREAM_WINDOW};
pub use fleet_runtime::{wait_with, WaitOptions};

/// Used by the macros' generated code; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use fleet_runtime::registry::{
        decode_arg, encode_return, ActorFactory, ActorObject, Args, BoxFuture, LocalBoxFuture,
        RemoteFunction, TaskError,
    };
    pub use fleet_runtime::stream::{
        emitter, next_item, send_returns, submit_with_returns, Returns,
    };
    pub use inventory;
    pub use serde;
    pub use tokio;

    /// Removes the directories of embedded clusters whose process died (also done by every
    /// embedded start); returns how many.
    pub fn sweep_stale_embedded() -> usize {
        fleet_runtime::init::sweep_stale_embedded()
    }

    /// Values this process holds, and bytes in the node's object store (when hosted here).
    pub fn held_objects() -> Result<(usize, Option<u64>), fleet_runtime::Error> {
        Ok(fleet_runtime::context::current()?.held_objects())
    }

    /// Links to actors this process holds handles to, and how many of them it owns.
    pub fn actor_links() -> Result<(usize, usize), fleet_runtime::Error> {
        Ok(fleet_runtime::context::current()?.actor_links())
    }

    /// Background tasks of this process's core worker running now.
    pub fn background_tasks() -> Result<usize, fleet_runtime::Error> {
        Ok(fleet_runtime::context::current()?.background_tasks())
    }

    /// Decodes a checkpointed actor state.
    pub fn decode_state<T: serde::de::DeserializeOwned>(
        bytes: &[u8],
        what: &str,
    ) -> Result<T, TaskError> {
        fleet_runtime::codec::decode(bytes, &format!("the checkpoint of {what}"))
            .map_err(TaskError::system)
    }
}
