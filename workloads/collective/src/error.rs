//! What a collective operation can fail with.

use std::time::Duration;

/// A collective operation's or a rendezvous's failure. After any failure of an operation
/// the group is broken on every rank (the first rank to see it tells the others): form it
/// again with [`crate::Group::init`] (or `join_declared`).
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// A rank's process or node died (or it left the group) during an operation.
    #[error("collective group {group}: rank {rank} was lost ({cause}; seen by rank {detected_by}); form the group again (Group::init) once the rank is back, or with fewer ranks")]
    RankLost {
        /// The group.
        group: String,
        /// The rank that was lost.
        rank: usize,
        /// The rank that saw it first.
        detected_by: usize,
        /// What it saw.
        cause: String,
    },
    /// An earlier operation failed and broke the group.
    #[error("collective group {group} is broken by an earlier failure ({cause}); form it again with Group::init")]
    Broken {
        /// The group.
        group: String,
        /// The earlier failure.
        cause: String,
    },
    /// The ranks called different operations or passed buffers that do not match.
    #[error("collective group {group}: {op} on rank {rank}: {reason}")]
    Mismatch {
        /// The group.
        group: String,
        /// The operation.
        op: &'static str,
        /// This rank.
        rank: usize,
        /// What did not match.
        reason: String,
    },
    /// An operation's peers did not take part in time (alive, but not calling it).
    #[error("collective group {group}: {op} on rank {rank} heard nothing from rank(s) {waiting_for:?} in {after:?}; every rank must call the same operations in the same order")]
    Timeout {
        /// The group.
        group: String,
        /// The operation.
        op: &'static str,
        /// This rank.
        rank: usize,
        /// The ranks it waited for.
        waiting_for: Vec<usize>,
        /// How long it waited.
        after: Duration,
    },
    /// The ranks did not all arrive, or asked for different groups.
    #[error("collective group {group}: rendezvous of rank {rank}: {reason}")]
    Rendezvous {
        /// The group.
        group: String,
        /// This rank.
        rank: usize,
        /// What went wrong, and what to do.
        reason: String,
    },
    /// A call's arguments cannot be used.
    #[error("collective group {group}: {reason}")]
    InvalidArgument {
        /// The group.
        group: String,
        /// What, and what is accepted.
        reason: String,
    },
    /// Fleet itself failed (the GCS, a channel's setup).
    #[error("collective group {group}: {source}")]
    Fleet {
        /// The group.
        group: String,
        /// Fleet's error.
        #[source]
        source: fleet::Error,
    },
}

impl CollectiveError {
    /// Whether the group must be formed again before the next operation (a rank was lost,
    /// or the group broke); a mismatch or bad argument leaves the group broken too.
    pub fn needs_reform(&self) -> bool {
        !matches!(
            self,
            CollectiveError::InvalidArgument { .. } | CollectiveError::Rendezvous { .. }
        )
    }
}

/// `Result` with [`CollectiveError`].
pub type Result<T> = std::result::Result<T, CollectiveError>;
