//! `fleet-ps`: a parameter server on Fleet actors (the pattern of Li et al., OSDI'14, and
//! ps-lite): server shards hold contiguous ranges of the key space; workers pull the
//! weights of the keys they need and push gradients back, vectorized (one message per
//! shard per call); the shards apply an optimizer (SGD, Adagrad, FTRL-proximal); a
//! consistency model (BSP, SSP with a staleness bound, ASP) decides when a pull may read.
//! Each shard is a primary and a backup actor on different nodes; a push is acknowledged
//! once both applied it, and either may be lost (SIGKILL, a node) without losing one.
//!
//! ```ignore
//! let ps = ParameterServer::builder()
//!     .shards(2)
//!     .key_space(KeySpace::Hashed { buckets: 1 << 20 })
//!     .optimizer(Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 1.0, l2: 1.0 })
//!     .consistency(Consistency::Ssp(2))
//!     .workers(4)
//!     .build()
//!     .await?;
//! let mut worker = ps.worker(0)?;            // serializable: hand it to a task or actor
//! let weights = worker.pull(&feature_ids).await?;
//! worker.push(&feature_ids, &gradients).await?;
//! ```
//!
//! Modules: [`config`] (key space, optimizers, consistency, the shard map; pure),
//! [`shard`] (a shard's state and its replica actor: chain replication, catch-up after a
//! restart, exactly-once pushes), [`client`] (the driver's server handle and
//! each worker's client), [`data`] (a generated sparse logistic-regression set with a
//! planted model and a known optimum), [`logreg`] (sparse logistic regression on it: the
//! worker task and the held-out loss), [`bench`] (what `fleet bench ps` runs).

pub mod bench;
pub mod client;
pub mod config;
pub mod data;
pub mod logreg;
pub mod shard;

pub use client::{Builder, ParameterServer, Placement, PsWorker, Recovery};
pub use config::{Consistency, KeySpace, Optimizer, PsConfig};

/// What a parameter-server call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PsError {
    /// A key, a gradient or a setting that cannot be used (the message names it).
    #[error("parameter server: {0}")]
    Invalid(String),
    /// A shard refused the call or timed out waiting for slow workers (its message says
    /// which).
    #[error("parameter server: {0}")]
    Shard(String),
    /// The runtime failed (a shard's process lost, the cluster gone).
    #[error("parameter server: {0}")]
    Fleet(String),
}

impl PsError {
    /// A shard call's failure: the shard's own error, or the runtime's.
    fn from_call(error: fleet::Error) -> PsError {
        match error.remote() {
            Some(remote) if remote.kind == fleet::TaskFailure::Application => {
                PsError::Shard(remote.message.clone())
            }
            _ => PsError::Fleet(error.to_string()),
        }
    }
}

/// `Result` with [`PsError`].
pub type Result<T> = std::result::Result<T, PsError>;
