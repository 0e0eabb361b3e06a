//! The per-node daemon (raylet): resources and GPUs, the worker pool and leases, and the
//! shared-memory object store.
//!
//! - [`config`]: what a raylet is given.
//! - [`error`]: its errors.
//! - [`resources`]: resource accounting with fractional amounts and GPU ids (pure).
//! - [`gpu`]: GPU detection that never panics (no GPU is zero GPUs).
//! - [`worker_pool`]: starting worker processes and watching them exit.
//! - [`server`]: the gRPC service (worker registration, leases) and `start`.
//! - [`object_store`]: the shared-memory object store with LRU spilling.

pub mod config;
pub mod error;
pub mod gpu;
pub mod object_store;
pub mod resources;
pub mod server;
pub mod worker_pool;

pub use config::RayletConfig;
pub use error::{Error, Result};
