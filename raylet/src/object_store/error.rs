//! Object store errors: each names the object or path involved and, where there is one, the fix.
//!
//! The raylet's crate error wraps these transparently (`Error::ObjectStore`), so each message
//! here is the whole sentence a user sees.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::id::ObjectId;

/// What can go wrong in the object store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's configuration is unusable.
    #[error("invalid object store config: {field} {reason}")]
    InvalidConfig {
        /// The config field at fault.
        field: &'static str,
        /// What is wrong with it and what to set instead.
        reason: String,
    },

    /// One of the store's directories could not be created.
    #[error(
        "cannot create the object store's {field} {}: {source} \
         (point {field} at a directory this user may create)",
        path.display()
    )]
    CreateDir {
        /// Which directory (`shm_dir` or `spill_dir`).
        field: &'static str,
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },

    /// One of the store's directories exists but files cannot be created in it.
    #[error(
        "the object store's {field} {} is not writable: {source} \
         (give this user write access to it, or point {field} elsewhere)",
        path.display()
    )]
    DirNotWritable {
        /// Which directory (`shm_dir` or `spill_dir`).
        field: &'static str,
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },

    /// The object is larger than the whole store, so no amount of spilling makes room.
    #[error(
        "object {id} is {size} bytes, larger than the whole object store ({capacity} bytes); \
         raise the store's capacity or split the object"
    )]
    ObjectTooLarge {
        /// The object.
        id: ObjectId,
        /// Its size in bytes.
        size: u64,
        /// The store's capacity in bytes.
        capacity: u64,
    },

    /// There was no room for the object even after spilling everything unpinned, and no
    /// reader released enough within the store's `full_timeout`.
    #[error(
        "object store full: object {id} needs {needed} bytes but {pinned} of the store's \
         {capacity} bytes are pinned by readers or in use, and not enough was released within \
         {waited:?}; release object references (drop ObjectBuffers, delete objects no longer \
         needed) or raise the store's capacity"
    )]
    StoreFull {
        /// The object that did not fit.
        id: ObjectId,
        /// Its size in bytes.
        needed: u64,
        /// The store's capacity in bytes.
        capacity: u64,
        /// Bytes that could not be spilled: pinned by readers, or being written or restored.
        pinned: u64,
        /// How long the put or get waited for space.
        waited: Duration,
    },

    /// A put under an existing id carried a different number of bytes.
    #[error(
        "object {id} already exists with {existing} bytes, and a put of {new} bytes under the \
         same id was refused; object ids name immutable values, so the caller reused an id"
    )]
    SizeMismatch {
        /// The object.
        id: ObjectId,
        /// The size already stored.
        existing: u64,
        /// The size of the refused put.
        new: u64,
    },

    /// Writing an object into shared memory failed.
    #[error(
        "cannot write object {id} to {}: {source} (check that the shared-memory filesystem \
         has at least the store's capacity free)",
        path.display()
    )]
    Write {
        /// The object.
        id: ObjectId,
        /// Where it was being written.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },

    /// Moving an object out of shared memory to the spill directory failed; the object
    /// stays in shared memory.
    #[error(
        "cannot spill object {id} from {} to {}: {source} (check free space and permissions \
         of the spill directory)",
        from.display(),
        to.display()
    )]
    Spill {
        /// The object.
        id: ObjectId,
        /// Its shared-memory file.
        from: PathBuf,
        /// The spill file being written.
        to: PathBuf,
        /// The cause.
        source: io::Error,
    },

    /// A spilled object's file has disappeared from the spill directory.
    #[error(
        "object {id} was spilled to {} but that file is gone (removed behind the store's \
         back); the object is lost: delete it and recreate it",
        path.display()
    )]
    SpilledFileMissing {
        /// The object.
        id: ObjectId,
        /// The missing spill file.
        path: PathBuf,
    },

    /// An object's file does not have the object's size: it was truncated or rewritten
    /// behind the store's back.
    #[error(
        "object {id}'s file {} is corrupt: it holds {found} bytes, not the {expected} that \
         were stored; the object is lost: delete it and recreate it",
        path.display()
    )]
    Corrupt {
        /// The object.
        id: ObjectId,
        /// The file.
        path: PathBuf,
        /// The size the store recorded.
        expected: u64,
        /// The size found on disk.
        found: u64,
    },

    /// Copying a spilled object back into shared memory failed; it stays spilled, and a
    /// later get tries again.
    #[error(
        "cannot restore spilled object {id} from {}: {source}",
        path.display()
    )]
    Restore {
        /// The object.
        id: ObjectId,
        /// The spill file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },

    /// The object has no file in the shared-memory directory.
    #[error(
        "object {id} has no file at {}: it was never put, was deleted or spilled, or the file \
         was removed behind the store's back",
        path.display()
    )]
    NotFound {
        /// The object.
        id: ObjectId,
        /// Where its file should be.
        path: PathBuf,
    },

    /// Opening or memory-mapping an object's file failed.
    #[error("cannot map object {id} from {}: {source}", path.display())]
    Map {
        /// The object.
        id: ObjectId,
        /// Its file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },

    /// Removing a file the store owns failed.
    #[error("cannot remove object store file {}: {source}", path.display())]
    Remove {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },

    /// The store was destroyed (the raylet is shutting down).
    #[error("the object store was destroyed because the raylet is shutting down")]
    Destroyed,

    /// A string is not an object id.
    #[error("invalid object id {input:?}: {reason} (an object id is 40 hex digits)")]
    InvalidObjectId {
        /// The string (its start, when long).
        input: String,
        /// Why it is not an id.
        reason: String,
    },

    /// A spill or restore running on the blocking thread pool did not finish (the runtime
    /// is shutting down, or the task panicked).
    #[error("the object store's background {op} of object {id} did not finish: {source}")]
    Background {
        /// `spill` or `restore`.
        op: &'static str,
        /// The object.
        id: ObjectId,
        /// The cause.
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// Whether the same call may succeed if tried again later, without anyone fixing
    /// configuration or data.
    pub fn is_retryable(&self) -> bool {
        // No `_` arm: a new variant must decide.
        match self {
            // Readers may release space, a full spill disk may drain, a restore may have hit
            // a transient I/O error (the object stays spilled).
            Error::StoreFull { .. } | Error::Spill { .. } | Error::Restore { .. } => true,
            Error::InvalidConfig { .. }
            | Error::CreateDir { .. }
            | Error::DirNotWritable { .. }
            | Error::ObjectTooLarge { .. }
            | Error::SizeMismatch { .. }
            | Error::Write { .. }
            | Error::SpilledFileMissing { .. }
            | Error::Corrupt { .. }
            | Error::NotFound { .. }
            | Error::Map { .. }
            | Error::Remove { .. }
            | Error::Destroyed
            | Error::InvalidObjectId { .. }
            | Error::Background { .. } => false,
        }
    }
}

/// Object store result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
