//! The per-node daemon (raylet): resources and GPUs, the worker pool and leases, and the
//! shared-memory object store.
//!
//! - [`config`]: what a raylet is given.
//! - [`error`]: its errors.
//! - [`resources`]: resource accounting with fractional amounts and GPU ids (pure).
//! - [`limits`]: open-file and process limits, raised where allowed and named with the fix.
//! - [`gpu`]: GPU detection that never panics (no GPU is zero GPUs).
//! - [`actor_hosts`]: shared processes hosting many actors of a job (which host is next; pure).
//! - [`worker_pool`]: starting worker processes and watching them exit.
//! - [`server`]: the gRPC service (worker registration, leases) and `start`.
//! - [`object_store`]: the shared-memory object store with LRU spilling.
//! - [`scheduling`]: where a lease goes (hybrid, spread, node affinity; pure).
//! - [`labels`]: label selectors (required and preferred node labels; pure).
//! - [`cluster_view`]: the other nodes' free resources, for spillback.
//! - [`transfer`]: pulling objects between nodes, chunked and deduplicated.
//! - [`bundles`]: placement-group bundles reserved on this node (two-phase commit; pure).
//! - [`binaries`]: content-addressed job binaries, uploaded once and fetched once per node.
//! - [`daemon`]: `fleet raylet`: a node of a cluster (registration, shutdown).

pub mod actor_hosts;
pub mod binaries;
pub mod bundles;
pub mod cluster_view;
pub mod config;
pub mod daemon;
pub mod error;
pub mod gpu;
pub mod labels;
pub mod limits;
pub mod object_store;
pub mod resources;
pub mod scheduling;
pub mod server;
pub mod transfer;
pub mod worker_pool;

pub use config::RayletConfig;
pub use error::{Error, Result};
