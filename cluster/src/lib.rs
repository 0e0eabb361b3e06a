//! `fleet-cluster`: start, inspect and stop a Fleet cluster of real processes.
//!
//! A cluster is `gcs.replicas` GCS replicas (`fleet gcs`) and one raylet (`fleet raylet`) per
//! node, described by a TOML [`config::ClusterConfig`]. The same description becomes a
//! [`plan::ClusterPlan`] (every daemon's flags, ports, directories and log), which a provider
//! carries out: [`local`] runs the daemons on this machine as detached process groups;
//! [`hosts`] starts them on other machines over SSH. What was started is recorded in the
//! cluster directory's `cluster.json` ([`state`]), so `fleet cluster down`, `fleet status`
//! and `fleet job` find the cluster again from another process.
//!
//! - [`config`]: the TOML file, defaults, validation with errors that name the key.
//! - [`plan`]: config → daemons and their command lines (no I/O).
//! - [`state`]: the cluster directory (`$FLEET_HOME/clusters/<name>`) and `cluster.json`.
//! - [`process`]: signals, liveness (pid + start time), detached spawning, log tails.
//! - [`ready`]: waiting for a GCS leader and for raylets to be ALIVE in the nodes table.
//! - [`local`]: [`local::LocalCluster::up`] → [`local::ClusterHandle`] (kill/restart nodes and
//!   GCS replicas, find the leader, `down`).
//! - [`hosts`]: the SSH provider's commands and its up/down.
//! - [`error`]: [`Error`] and [`Result`].
//!
//! Failure semantics are in `docs/cluster.md`.

pub mod config;
pub mod error;
pub mod hosts;
pub mod local;
pub mod plan;
pub mod process;
pub mod ready;
pub mod state;

pub use config::ClusterConfig;
pub use error::{Error, Result};
pub use local::{ClusterHandle, LocalCluster};
pub use state::ClusterState;
