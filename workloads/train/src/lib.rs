//! `fleet-train`: data-parallel training of candle models across Fleet actors.
//!
//! Each rank is an actor that builds its model in a `candle_nn::VarMap`, joins a
//! `fleet_collective::Group`, and wraps both in a [`Ddp`]: identical initial weights
//! (broadcast from rank 0, parameters in name order), gradients of any number of
//! micro-batches accumulated, then averaged over ranks in buckets, clipped, and applied by
//! any candle optimizer.
//!
//! ```ignore
//! let group = Group::init("train", world, rank).await?;
//! let mut ddp = Ddp::new(group, &varmap, DdpConfig::default()).await?;
//! let mut optimizer = candle_nn::AdamW::new(varmap.all_vars(), params)?;
//! for batch in my_shard {
//!     ddp.backward(&model.loss(&batch)?)?;
//!     ddp.step(&mut optimizer).await?;
//! }
//! ```
//!
//! Most runs need none of that by hand: a [`Trainer`] takes a [`TrainingJob`] (the model
//! and the data, as the user defines them), spawns and places one rank actor per worker,
//! keeps their membership, follows progress, and survives lost ranks (restarted, or the run
//! going on with fewer) by resuming every rank from the last committed checkpoint.
//!
//! Modules: [`trainer`] (the driver's side of a run), [`rank`] (the rank actor and its
//! loop), [`job`] (what a job is, and the registry that finds it in a worker), [`ddp`] (the
//! wrapper), [`gpt`] (a character-level GPT as a job: the template's model), [`sharded`] (AdamW with its state sharded: ZeRO stages one and two),
//! [`checkpoint`] (model and optimizer shards on disk, committed in the GCS), [`buckets`]
//! (which gradients go together; pure).

pub mod buckets;
pub mod checkpoint;
pub mod ddp;
pub mod gpt;
pub mod job;
pub mod rank;
pub mod sharded;
pub mod trainer;

pub use checkpoint::{Checkpoints, Committed};
pub use ddp::{Ddp, DdpConfig, StepStats, TrainError};
pub use job::TrainingJob;
pub use rank::{Recovery, Replayed, StepRecord};
pub use sharded::{ShardState, ShardedAdamW, ZeroStage};
pub use trainer::{
    CheckpointPolicy, Elastic, LearningRate, Placement, TrainConfig, TrainReport, Trainer,
};

/// Used by [`register_job!`]'s expansion; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
