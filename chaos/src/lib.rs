//! The chaos harness: `fleet chaos run SCENARIO.toml` starts a cluster of real `fleet`
//! processes, runs a workload against it, injects faults on a (seeded) schedule, checks the
//! workload's invariants and reports every fault with its detection and recovery times and
//! the count of acknowledged operations lost (which must be 0).
//!
//! - [`scenario`]: the scenario file (cluster, workload, faults), validated key by key.
//! - [`faults`]: injecting faults into a `fleet_cluster::ClusterHandle` (SIGKILL of a node
//!   with its directories wiped, SIGKILL of the GCS leader or a follower, SIGSTOP/SIGCONT of
//!   a node, restarts).
//! - [`network`]: the fault-injecting network (each daemon on its own loopback IP behind its
//!   own egress proxy) that partitions, delays and drops traffic between chosen daemons.
//! - [`workloads`]: built-in workloads with checkable invariants (checkpointed counters with
//!   exact final counts, a task fan-out/fan-in with exact sums) and the [`workloads::Workload`]
//!   trait a user's own workload implements.
//! - [`training`]: the `training` workload (a checkpointed, elastic data-parallel run of a
//!   small GPT whose losses and weights must equal a run without faults).
//! - [`parameter_server`]: the `parameter_server` workload (sparse logistic regression on a
//!   replicated `fleet-ps` server; every acknowledged push applied exactly once on both
//!   replicas of every shard).
//! - [`stream`]: the `stream` workload (Nexmark q5 on `fleet-stream`; the committed
//!   output must equal the exact answer across node and GCS-leader loss).
//! - [`report`]: the report, for people and (`--json`) machines.
//! - [`runner`]: ties them together.

pub mod faults;
pub mod network;
pub mod parameter_server;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod stream;
pub mod training;
pub mod workloads;

pub use report::Report;
pub use runner::{run, run_attached};
pub use scenario::Scenario;
