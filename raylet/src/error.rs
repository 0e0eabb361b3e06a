//! Raylet errors: each names the thing and, where there is one, the fix.

use std::path::PathBuf;

/// Errors of the node daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request can never fit this node, however long it waits.
    #[error("{what} asks for {requested} but this node only has {total}; no worker here can ever run it (lower the request, or add a node that has it)")]
    Infeasible {
        /// What asked.
        what: String,
        /// The request.
        requested: String,
        /// The node's total resources.
        total: String,
    },
    /// The request can never fit the placement group bundle it asks for.
    #[error("{what}: {reason}")]
    NeverFitsBundle {
        /// What asked.
        what: String,
        /// Why, naming the bundle and what it reserves.
        reason: String,
    },
    /// Too many lease requests already wait at this node: ask again later.
    #[error("node {node} already has {queued} lease requests waiting (its limit, max_queued_leases); the requester should back off and ask again")]
    LeaseQueueFull {
        /// The node.
        node: String,
        /// How many wait.
        queued: usize,
    },
    /// A resource request is malformed (e.g. 1.5 GPUs).
    #[error("invalid resource request for {what}: {reason}")]
    InvalidRequest {
        /// What asked.
        what: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A worker process could not be started or did not register in time.
    #[error("worker process {} could not start: {reason}", binary.display())]
    WorkerStart {
        /// The binary.
        binary: PathBuf,
        /// What happened.
        reason: String,
    },
    /// No such lease.
    #[error("lease {lease_id} is unknown (already returned, or its worker died)")]
    UnknownLease {
        /// The lease.
        lease_id: u64,
    },
    /// Listening failed.
    #[error("raylet cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The object store failed.
    #[error(transparent)]
    ObjectStore(#[from] crate::object_store::Error),
    /// The node could not join its cluster.
    #[error("node {node} cannot join the cluster: {reason}")]
    Registration {
        /// The node.
        node: String,
        /// Why (names the GCS address and the fix).
        reason: String,
    },
    /// The raylet is shutting down.
    #[error("the raylet is shutting down")]
    ShuttingDown,
}

/// Metadata key naming the kind of a raylet error, so callers classify it by type.
pub const ERROR_KIND_METADATA: &str = "x-fleet-error";
/// The kind of a request no node (or bundle) can ever satisfy.
const INFEASIBLE: &str = "infeasible";

/// Whether a raylet's answer says the request can never be satisfied.
pub fn is_infeasible(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(ERROR_KIND_METADATA)
        .is_some_and(|kind| kind.as_bytes() == INFEASIBLE.as_bytes())
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = format!("{error:#}");
        match error {
            Error::Infeasible { .. } | Error::NeverFitsBundle { .. } => {
                let mut status = tonic::Status::failed_precondition(message);
                status.metadata_mut().insert(
                    ERROR_KIND_METADATA,
                    tonic::metadata::MetadataValue::from_static(INFEASIBLE),
                );
                status
            }
            Error::InvalidRequest { .. } => tonic::Status::invalid_argument(message),
            Error::LeaseQueueFull { .. } => tonic::Status::resource_exhausted(message),
            Error::UnknownLease { .. } => tonic::Status::not_found(message),
            Error::ShuttingDown => tonic::Status::unavailable(message),
            Error::WorkerStart { .. }
            | Error::Listen { .. }
            | Error::ObjectStore(_)
            | Error::Registration { .. } => tonic::Status::internal(message),
        }
    }
}

/// Raylet result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
