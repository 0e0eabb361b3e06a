//! AdamW over the flattened parameters, with its state sharded across ranks (ZeRO).
//!
//! The model's parameters, in name order, make one flat vector; rank `r` owns shard `r` of
//! it (`Group::shard_range`). The update is candle's AdamW (the same formula, on candle
//! tensors), applied by each rank to the part of the vector it updates:
//! - [`ZeroStage::None`]: gradients all-reduced, every rank updates every parameter and
//!   keeps the whole optimizer state (plain DDP).
//! - [`ZeroStage::One`]: gradients all-reduced, each rank updates its own shard with the
//!   optimizer state of that shard only, then the updated shards are all-gathered.
//! - [`ZeroStage::Two`]: gradients reduce-scattered (each rank receives only its shard's
//!   average), then as stage one.
//!
//! In stages one and two a rank holds `1/n` of the optimizer state. The state is plain
//! vectors, so a checkpoint can save each rank's shard and a group of another size can
//! take it up again (`checkpoint`).

use std::ops::Range;

use candle_core::{Device, Tensor};
use candle_nn::ParamsAdamW;
use serde::{Deserialize, Serialize};

use crate::ddp::Result;

/// How much of the optimizer state each rank keeps (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZeroStage {
    /// Every rank keeps all of it (DDP).
    None,
    /// Optimizer state sharded.
    One,
    /// Optimizer state and gradients sharded.
    Two,
}

/// One rank's part of the optimizer state, as saved in a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardState {
    /// The range of the flat parameter vector it covers.
    pub start: usize,
    /// First moments of that range.
    pub first_moment: Vec<f32>,
    /// Second moments of that range.
    pub second_moment: Vec<f32>,
    /// Steps taken.
    pub step: u64,
}

/// AdamW on this rank's range of the flat parameter vector.
pub struct ShardedAdamW {
    params: ParamsAdamW,
    stage: ZeroStage,
    range: Range<usize>,
    first_moment: Tensor,
    second_moment: Tensor,
    step: u64,
}

impl ShardedAdamW {
    /// The optimizer for a rank that updates `range` of a flat vector (the whole vector for
    /// `ZeroStage::None`).
    pub fn new(params: ParamsAdamW, stage: ZeroStage, range: Range<usize>) -> Result<Self> {
        let zeros = Tensor::zeros(range.len(), candle_core::DType::F32, &Device::Cpu)?;
        Ok(ShardedAdamW {
            params,
            stage,
            range,
            first_moment: zeros.clone(),
            second_moment: zeros,
            step: 0,
        })
    }

    /// The ZeRO stage.
    pub fn stage(&self) -> ZeroStage {
        self.stage
    }

    /// The range of the flat parameter vector this rank updates.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The learning rate (a schedule may change it between steps).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Bytes of optimizer state this rank holds.
    pub fn state_bytes(&self) -> usize {
        2 * self.range.len() * std::mem::size_of::<f32>()
    }

    /// Updates `params` (this rank's range of the flat vector) with `grads` (the averaged
    /// gradients of the same range), as candle's AdamW.
    pub fn update(&mut self, params: &[f32], grads: &[f32]) -> Result<Vec<f32>> {
        self.step += 1;
        let p = &self.params;
        let (beta1, beta2) = (p.beta1, p.beta2);
        let scale_m = 1.0 / (1.0 - beta1.powi(self.step as i32));
        let scale_v = 1.0 / (1.0 - beta2.powi(self.step as i32));
        let theta = Tensor::from_slice(params, params.len(), &Device::Cpu)?;
        let g = Tensor::from_slice(grads, grads.len(), &Device::Cpu)?;
        let next_m = ((&self.first_moment * beta1)? + (&g * (1.0 - beta1))?)?;
        let next_v = ((&self.second_moment * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
        let m_hat = (&next_m * scale_m)?;
        let v_hat = (&next_v * scale_v)?;
        let decayed = (theta * (1.0 - p.lr * p.weight_decay))?;
        let adjusted = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
        let next_theta = (decayed - (adjusted * p.lr)?)?;
        self.first_moment = next_m;
        self.second_moment = next_v;
        Ok(next_theta.to_vec1::<f32>()?)
    }

    /// This rank's state, for a checkpoint.
    pub fn state(&self) -> Result<ShardState> {
        Ok(ShardState {
            start: self.range.start,
            first_moment: self.first_moment.to_vec1::<f32>()?,
            second_moment: self.second_moment.to_vec1::<f32>()?,
            step: self.step,
        })
    }

    /// Takes up the state of a checkpoint saved by any number of ranks: `shards` cover the
    /// whole vector (in any order); this rank keeps its range of them.
    pub fn restore(&mut self, shards: &[ShardState], total: usize) -> Result<()> {
        let mut first = vec![0.0f32; total];
        let mut second = vec![0.0f32; total];
        let mut covered = 0usize;
        for shard in shards {
            let end = shard.start + shard.first_moment.len();
            if end > total || shard.second_moment.len() != shard.first_moment.len() {
                return Err(crate::ddp::TrainError::Invalid(format!(
                    "an optimizer shard at {}..{end} does not fit a model of {total} parameters",
                    shard.start
                )));
            }
            first[shard.start..end].copy_from_slice(&shard.first_moment);
            second[shard.start..end].copy_from_slice(&shard.second_moment);
            covered += shard.first_moment.len();
        }
        if covered != total {
            return Err(crate::ddp::TrainError::Invalid(format!(
                "the optimizer shards cover {covered} of {total} parameters"
            )));
        }
        let range = self.range.clone();
        self.first_moment = Tensor::from_slice(&first[range.clone()], range.len(), &Device::Cpu)?;
        self.second_moment = Tensor::from_slice(&second[range.clone()], range.len(), &Device::Cpu)?;
        self.step = shards.first().map_or(0, |s| s.step);
        Ok(())
    }
}
