//! Fleet's control store (GCS): one Raft group (tikv's `raft` crate, `RawNode`) whose log and
//! snapshots live in `sled`, replicating a state machine of typed tables.
//!
//! - [`config`]: a replica's configuration and its validation.
//! - [`error`]: the crate's error type and its mapping to gRPC statuses.
//! - [`storage`]: Raft's durable state ([`storage::LogStore`] over a [`storage::RaftDisk`]:
//!   sled in production, memory in simulation).
//! - [`state_machine`]: the tables, client sessions (exactly-once writes) and the change
//!   history; pure, no I/O.
//! - [`node`]: the Raft driver: one task owning the `RawNode`, turning proposals, reads and
//!   peer messages into `Ready`s, persisting, sending and applying them.
//! - [`transport`]: how replicas reach each other and clients reach replicas (real TCP or an
//!   injected connector, for simulation).
//! - [`clock`]: wall-clock milliseconds for records, for every crate.
//! - [`auth`]: the cluster token: every request carries it, every server checks it.
//! - [`service`]: the gRPC services (`Gcs` for clients, `RaftTransport` for peers).
//! - [`health`]: the leader's health checks of raylets (declares silent nodes dead).
//! - [`server`]: `run(config, incoming, connector, shutdown)`: one replica.
//! - [`client`]: [`GcsClient`]: finds the leader, retries across leader changes, dedups
//!   retried writes, typed table operations and resumable watches.
//! - [`local_cluster`]: a cluster of real `fleet gcs` processes (tests, bench, chaos).
//! - [`linearizability`]: a checker for register histories (simulation, chaos harness).
//! - [`bench`]: the `fleet bench gcs` load generator.
//!
//! Reads are linearizable through Raft's ReadIndex (see `docs/gcs.md` for why not leases).

pub mod auth;
pub mod bench;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod health;
pub mod linearizability;
pub mod local_cluster;
pub mod node;
pub mod server;
pub mod service;
pub mod state_machine;
pub mod storage;
pub mod tls;
pub mod transport;

pub use client::GcsClient;
pub use config::GcsConfig;
pub use error::{Error, Result};
