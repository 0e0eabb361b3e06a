//! The GCS error type. Every variant names the thing that went wrong and, where there is
//! one, the fix; `is_retryable` decides (with no catch-all arm) what `GcsClient` retries.

use std::path::PathBuf;

/// Errors from the control store, its storage, its server and its client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is unusable.
    #[error("invalid GCS configuration: {field}: {reason}")]
    InvalidConfig {
        /// The flag or config key.
        field: &'static str,
        /// Why, and what to use instead.
        reason: String,
    },

    /// The data directory holds the state of a different replica or cluster.
    #[error(
        "data dir {} belongs to replica {found_id} of cluster '{found_cluster}', not replica \
         {expected_id} of cluster '{expected_cluster}'; pass --id {found_id} --cluster-name \
         {found_cluster}, or point --data-dir at an empty directory",
        path.display()
    )]
    DataDirMismatch {
        /// The data directory.
        path: PathBuf,
        /// The replica id recorded in it.
        found_id: u64,
        /// The cluster name recorded in it.
        found_cluster: String,
        /// The replica id asked for.
        expected_id: u64,
        /// The cluster name asked for.
        expected_cluster: String,
    },

    /// The data directory cannot be opened or holds undecodable state.
    #[error(
        "GCS data dir {} is unreadable or corrupt ({reason}); if other replicas are healthy, \
         move it aside and restart this replica with an empty --data-dir and --join so it \
         catches up from the leader",
        path.display()
    )]
    CorruptDataDir {
        /// The data directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },

    /// Writing to disk failed (a full disk, an I/O error). The replica stops rather than
    /// acknowledge a write it could not make durable.
    #[error("GCS storage write failed in {}: {reason}; free space or fix the disk, then restart the replica", path.display())]
    StorageWrite {
        /// The data directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },

    /// The raft library refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),

    /// This replica is not the leader; `leader_address` is where to go, when known.
    #[error("replica is not the leader (leader: {})", leader_address.as_deref().unwrap_or("unknown, an election is in progress"))]
    NotLeader {
        /// The leader's client address, if this replica knows it.
        leader_address: Option<String>,
    },

    /// The replica is shutting down or has stopped.
    #[error("the GCS replica is shutting down")]
    ShuttingDown,

    /// A write or read did not finish in time (the replica may have lost its quorum).
    #[error("timed out after {millis} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long.
        millis: u64,
    },

    /// No replica of the cluster could serve the request.
    #[error(
        "no GCS replica answered at {endpoints} within {millis} ms (last error: {last_error}); \
         check that the cluster is running and that --address / FLEET_ADDRESS lists its replicas"
    )]
    Unavailable {
        /// The addresses tried.
        endpoints: String,
        /// How long the client kept trying.
        millis: u64,
        /// The last failure seen.
        last_error: String,
    },

    /// The state machine refused the write (CAS failure, name taken, ...).
    #[error("write rejected ({code:?}): {message}")]
    Rejected {
        /// Why, as a code.
        code: fleet_proto::gcs::RejectCode,
        /// Why, as a sentence.
        message: String,
        /// The record as it is now, when there is one.
        current: Option<Box<fleet_proto::gcs::Record>>,
    },

    /// The server answered with something this client cannot decode or use.
    #[error("bad response from GCS at {endpoint}: {reason}")]
    BadResponse {
        /// The replica.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },

    /// A request was malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The replica refused this process's cluster token (or its lack of one).
    #[error(
        "the GCS at {endpoint} refused this client: {message}; {}",
        crate::auth::describe_own_token()
    )]
    Unauthenticated {
        /// The replica.
        endpoint: String,
        /// The server's reason.
        message: String,
    },

    /// A gRPC error from a replica that is not one of the cases above.
    #[error("GCS RPC to {endpoint} failed: {}", describe_status(status))]
    Rpc {
        /// The replica.
        endpoint: String,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },

    /// Listening on or binding an address failed.
    #[error("cannot listen on {address}: {source}; choose a free address with --listen")]
    Listen {
        /// The address.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether a client should retry the same request (possibly at another replica).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::NotLeader { .. }
            | Error::ShuttingDown
            | Error::Timeout { .. }
            | Error::Rpc { .. }
            | Error::Raft(_) => true,
            Error::InvalidConfig { .. }
            | Error::DataDirMismatch { .. }
            | Error::CorruptDataDir { .. }
            | Error::StorageWrite { .. }
            | Error::Unavailable { .. }
            | Error::Rejected { .. }
            | Error::BadResponse { .. }
            | Error::InvalidRequest(_)
            | Error::Unauthenticated { .. }
            | Error::Listen { .. } => false,
        }
    }
}

/// Metadata key carrying the leader's client address on a NOT-LEADER answer.
pub const LEADER_METADATA_KEY: &str = "x-fleet-leader";

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = format!("{error:#}");
        match &error {
            Error::NotLeader { leader_address } => {
                let mut status = tonic::Status::unavailable(message);
                if let Some(address) = leader_address {
                    if let Ok(value) = address.parse() {
                        status.metadata_mut().insert(LEADER_METADATA_KEY, value);
                    }
                }
                status
            }
            Error::ShuttingDown | Error::Timeout { .. } | Error::Raft(_) => {
                tonic::Status::unavailable(message)
            }
            Error::InvalidRequest(_) | Error::InvalidConfig { .. } => {
                tonic::Status::invalid_argument(message)
            }
            Error::Rejected { .. } => tonic::Status::failed_precondition(message),
            Error::Unauthenticated { .. } => tonic::Status::unauthenticated(message),
            Error::Rpc { status, .. } => (**status).clone(),
            Error::DataDirMismatch { .. }
            | Error::CorruptDataDir { .. }
            | Error::StorageWrite { .. }
            | Error::Unavailable { .. }
            | Error::BadResponse { .. }
            | Error::Listen { .. } => tonic::Status::internal(message),
        }
    }
}

/// The GCS result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A gRPC status as one line: its message and the root cause (e.g. "connection refused").
pub fn describe_status(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    let mut root = None;
    while let Some(cause) = source {
        root = Some(cause.to_string());
        source = cause.source();
    }
    if let Some(root) = root {
        if !text.contains(&root) {
            text = format!("{text}: {root}");
        }
    }
    if status.code() == tonic::Code::Unauthenticated {
        text = format!("{text}; {}", crate::auth::describe_own_token());
    }
    text
}
