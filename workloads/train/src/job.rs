//! What a user's training job is ([`TrainingJob`]) and how a rank process finds it again.
//!
//! A rank runs in another process (this program's binary, re-executed as a worker), so the
//! job cannot travel as a closure. It travels as its configuration (the job type's serde
//! form) plus the type's name; [`register_job!`](crate::register_job) puts the type's
//! rank loop in a table that every process of the binary has, under that name (as
//! `#[fleet::actor]` does for actors).

use std::ops::Range;

use candle_core::Tensor;
use candle_nn::VarMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::rank::{RankCall, RankOutcome};

/// A model and the data it trains on, as every rank builds and reads them.
///
/// The job value itself is its configuration: it is serialized once by the driver and
/// deserialized in each rank, so it holds sizes, paths, seeds — not tensors.
///
/// **The data order is the trainer's.** Step `s` trains on the global examples
/// `s·B .. (s+1)·B` (`B` the global batch); each rank takes an equal, contiguous part of
/// them and passes it to [`TrainingJob::loss`] in micro-batches. What an example index
/// *means* (a row, a random window of a text drawn from a hash of the index, a file shard)
/// is the job's. Because the order depends only on the step, a run resumed from a
/// checkpoint, with as many ranks or fewer, trains on the same examples as one that never
/// stopped.
pub trait TrainingJob: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The model: whatever holds the variables' tensors and computes with them.
    type Model: Send + Sync + 'static;

    /// Builds the model's variables in `varmap` (every rank builds the same model: the same
    /// names and shapes). Rank 0's initial values are broadcast to the others; for runs
    /// that repeat bit for bit, set them from a seed here (candle's CPU generator cannot be
    /// seeded).
    fn build(&self, varmap: &VarMap) -> candle_core::Result<Self::Model>;

    /// The mean loss over global examples `examples` of step `step`'s batch (a scalar).
    fn loss(
        &self,
        model: &Self::Model,
        step: u64,
        examples: Range<u64>,
    ) -> candle_core::Result<Tensor>;

    /// A held-out loss, measured on rank 0 every `eval_every` steps and after the last.
    fn evaluate(&self, _model: &Self::Model) -> candle_core::Result<Option<f32>> {
        Ok(None)
    }

    /// Tokens in one example (for tokens/s; 1 when examples are not sequences).
    fn tokens_per_example(&self) -> u64 {
        1
    }

    /// What rank 0 makes of the trained model at the end (a text sample, a metric):
    /// returned in the report.
    fn finish(&self, _model: &Self::Model) -> candle_core::Result<Option<String>> {
        Ok(None)
    }
}

/// Runs one rank of a job whose configuration arrives encoded (the registered type's loop).
pub type RankEntryPoint =
    fn(RankCall) -> futures_like::BoxFuture<'static, Result<RankOutcome, String>>;

/// A registered job type.
#[doc(hidden)]
pub struct JobEntry {
    /// `std::any::type_name` of the job type.
    pub name: fn() -> &'static str,
    /// Its rank loop.
    pub run: RankEntryPoint,
}

inventory::collect!(JobEntry);

/// The rank loop of the job type named `name`, when it is registered in this binary.
pub(crate) fn find(name: &str) -> Option<RankEntryPoint> {
    inventory::iter::<JobEntry>
        .into_iter()
        .find(|entry| (entry.name)() == name)
        .map(|entry| entry.run)
}

/// The erased rank loop of job type `J` (what [`register_job!`](crate::register_job) records).
#[doc(hidden)]
pub fn entry_point<J: TrainingJob>(
    call: RankCall,
) -> futures_like::BoxFuture<'static, Result<RankOutcome, String>> {
    Box::pin(crate::rank::run_rank::<J>(call))
}

/// Makes a [`TrainingJob`] type runnable by [`Trainer`](crate::Trainer): call it once at
/// the top level of the crate that defines the type.
///
/// ```ignore
/// #[derive(Serialize, Deserialize)]
/// struct MyJob { hidden: usize }
/// impl fleet_train::TrainingJob for MyJob { /* build, loss */ }
/// fleet_train::register_job!(MyJob);
/// ```
#[macro_export]
macro_rules! register_job {
    ($job:ty) => {
        $crate::__private::inventory::submit! {
            $crate::job::JobEntry {
                name: ::std::any::type_name::<$job>,
                run: $crate::job::entry_point::<$job>,
            }
        }
    };
}

/// A boxed, sendable future (without a dependency on `futures` for one alias).
pub mod futures_like {
    /// `Pin<Box<dyn Future + Send>>`.
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}
