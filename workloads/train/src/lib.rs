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
//! Modules: [`ddp`] (the wrapper), [`sharded`] (AdamW with its state sharded: ZeRO stages
//! one and two), [`checkpoint`] (model and optimizer shards on disk, committed in the
//! GCS), [`buckets`] (which gradients go together; pure).

pub mod buckets;
pub mod checkpoint;
pub mod ddp;
pub mod sharded;

pub use checkpoint::{Checkpoints, Committed};
pub use ddp::{Ddp, DdpConfig, StepStats, TrainError};
pub use sharded::{ShardState, ShardedAdamW, ZeroStage};
