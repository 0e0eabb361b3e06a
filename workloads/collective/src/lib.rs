//! `fleet-collective`: collective communication between Fleet actors — all-reduce,
//! reduce-scatter, all-gather, broadcast, reduce, barrier, send/recv — over
//! `fleet::channel` (a shared-memory ring between processes of one node, TCP across nodes),
//! on the public `fleet` SDK only.
//!
//! ```ignore
//! // Inside each of `world` actors (rank r):
//! let mut group = fleet_collective::Group::init("grads", world, r).await?;
//! group.all_reduce(&mut gradients, ReduceOp::Mean).await?;
//! ```
//!
//! Modules:
//! - [`group`]: forming a group (rendezvous in `fleet::kv`, a channel per pair of ranks),
//!   groups declared by a driver, and how a failure breaks a group on every rank.
//! - [`ops`]: the operations and their algorithms.
//! - [`schedule`]: the ring's arithmetic (shards, pieces, steps), pure.
//! - [`element`]: the element types and reduce operations.
//! - [`error`]: what can fail.

pub mod element;
pub mod error;
pub mod group;
pub mod ops;
pub mod schedule;

pub use element::{Element, ReduceOp};
pub use error::{CollectiveError, Result};
pub use group::{declare_group, remove_group, Group, GroupOptions};
pub use half::{bf16, f16};
