//! Fleet's wire types, generated from the `.proto` files in `proto/proto/`.
//!
//! - [`gcs`]: the control store: client-facing `Gcs` service (writes, linearizable reads,
//!   watches, status, membership), the replica-to-replica `RaftTransport` service, the typed
//!   table records and the commands that change them.
//! - [`runtime`]: the raylet (worker leases) and the core worker (task push, object fetch).
//! - [`etcd`]: the small subset of etcd's v3 KV API that `fleet bench gcs` drives, so the
//!   same client stack measures Fleet's GCS and etcd side by side.
//!
//! - [`fuzz`] (tests, or the `fuzz` feature): strategies that make protobuf-shaped bytes, and
//!   the property test that feeds them to every request and stream message type.
//!
//! Raft's own messages (`eraftpb`, protobuf-2 types from the `raft` crate) never appear
//! here as types: they travel as opaque bytes inside [`gcs::RaftEnvelope`].

/// The control store's services and records (`package fleet.gcs`).
#[allow(clippy::all, missing_docs)]
pub mod gcs {
    tonic::include_proto!("fleet.gcs");
}

/// The raylet and core-worker services (`package fleet.runtime`).
#[allow(clippy::all, missing_docs)]
pub mod runtime {
    tonic::include_proto!("fleet.runtime");
}

/// The part of etcd's `etcdserverpb.KV` service that the GCS benchmark uses.
#[allow(clippy::all, missing_docs)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
