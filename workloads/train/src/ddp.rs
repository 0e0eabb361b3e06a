//! Distributed data parallel (DDP) over a `fleet_collective::Group`, for candle models.
//!
//! - **Identical start.** `Ddp::new` broadcasts rank 0's weights to every rank, parameter
//!   by parameter in name order (the order every rank agrees on).
//! - **Accumulation.** `backward` runs a micro-batch's backward pass and adds its gradients
//!   to this rank's sums; `step` averages them over the micro-batches and the ranks.
//! - **Buckets.** The averaged gradients travel in buckets (default 25 MiB, reverse
//!   parameter order, as PyTorch DDP): a few large ring all-reduces instead of one per
//!   parameter. A parameter without a gradient on this rank takes part with zeros, so every
//!   rank's buckets have the same sizes.
//! - **Clipping** to a global norm, computed from the averaged gradients (the same on every
//!   rank, so every rank scales the same).
//! - Then any `candle_nn::Optimizer` steps with the averaged gradients: every rank applies
//!   the same update to the same weights, and the weights stay identical.
//!
//! With per-rank batches of `b` and `n` ranks, a step equals one on a single rank with the
//! `n·b` examples (for a loss that is a mean over its batch), within float rounding.

use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarMap};
use fleet_collective::{CollectiveError, Group, ReduceOp};

use crate::sharded::{ShardedAdamW, ZeroStage};

/// What can fail in training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The collective group failed (a rank lost, a mismatch): re-form it and resume.
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The model or a call cannot be used as it is.
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;

/// How [`Ddp`] averages gradients.
#[derive(Clone, Debug)]
pub struct DdpConfig {
    /// Bytes of gradients per all-reduce.
    pub bucket_bytes: usize,
    /// Clip the averaged gradients to this global L2 norm.
    pub max_grad_norm: Option<f64>,
}

impl Default for DdpConfig {
    fn default() -> Self {
        DdpConfig {
            bucket_bytes: 25 << 20,
            max_grad_norm: None,
        }
    }
}

/// Where one step's time went, and its gradient norm.
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    /// In all-reduces.
    pub communication: Duration,
    /// Packing and unpacking the buckets, clipping and the optimizer's update.
    pub update: Duration,
    /// The averaged gradients' global L2 norm, before clipping.
    pub grad_norm: f64,
    /// Micro-batches averaged.
    pub micro_batches: usize,
}

struct Param {
    name: String,
    var: Var,
    len: usize,
}

/// One rank's data-parallel training state (see the module docs).
pub struct Ddp {
    group: Group,
    params: Vec<Param>,
    buckets: Vec<Vec<usize>>,
    /// Per parameter, the sum of this rank's micro-batch gradients since the last step.
    sums: Vec<Option<Vec<f32>>>,
    /// The last backward's store: what the optimizer is given, with averaged gradients.
    store: Option<GradStore>,
    micro_batches: usize,
    config: DdpConfig,
}

fn flat(tensor: &Tensor) -> Result<Vec<f32>> {
    Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
}

impl Ddp {
    /// Wraps a model's variables: every rank calls it with the same model (the same
    /// parameter names and shapes) and gets rank 0's weights.
    pub async fn new(mut group: Group, varmap: &VarMap, config: DdpConfig) -> Result<Ddp> {
        let mut params: Vec<Param> = {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| TrainError::Invalid("the model's VarMap lock is poisoned".into()))?;
            data.iter()
                .map(|(name, var)| Param {
                    name: name.clone(),
                    var: var.clone(),
                    len: var.as_tensor().elem_count(),
                })
                .collect()
        };
        params.sort_by(|a, b| a.name.cmp(&b.name));
        for param in &params {
            let tensor = param.var.as_tensor();
            if tensor.dtype() != DType::F32 || !matches!(tensor.device(), Device::Cpu) {
                return Err(TrainError::Invalid(format!(
                    "parameter {} is {:?} on {:?}; DDP here trains f32 parameters on the CPU",
                    param.name,
                    tensor.dtype(),
                    tensor.device()
                )));
            }
        }
        // Every rank checks that it holds the same model. Each all-reduce (Max) carries
        // the values and their negations, so every rank learns the maximum and the minimum
        // and all of them fail together on a difference (none is left waiting).
        let count = params.len() as i64;
        let mut counts = vec![count, -count];
        group.all_reduce(&mut counts, ReduceOp::Max).await?;
        if counts[0] != -counts[1] {
            return Err(TrainError::Invalid(format!(
                "the ranks' models have between {} and {} parameters (rank {} has {count}): every rank must build the same model",
                -counts[1],
                counts[0],
                group.rank()
            )));
        }
        let mut sizes: Vec<i64> = params
            .iter()
            .map(|p| p.len as i64)
            .chain(params.iter().map(|p| -(p.len as i64)))
            .collect();
        group.all_reduce(&mut sizes, ReduceOp::Max).await?;
        if let Some(index) = (0..params.len()).find(|i| sizes[*i] != -sizes[params.len() + i]) {
            return Err(TrainError::Invalid(format!(
                "parameter {} differs in size between ranks ({} and {} elements): every rank must build the same model",
                params[index].name,
                -sizes[params.len() + index],
                sizes[index]
            )));
        }
        for param in &params {
            let mut values = flat(param.var.as_tensor())?;
            group.broadcast(&mut values, 0).await?;
            let tensor = Tensor::from_vec(values, param.var.shape(), &Device::Cpu)?;
            param.var.set(&tensor)?;
        }
        let lens: Vec<usize> = params.iter().map(|p| p.len).collect();
        let buckets = crate::buckets::plan(&lens, 4, config.bucket_bytes.max(4));
        Ok(Ddp {
            sums: (0..params.len()).map(|_| None).collect(),
            group,
            params,
            buckets,
            store: None,
            micro_batches: 0,
            config,
        })
    }

    /// The group (for the training loop's own collectives: a loss average, a barrier).
    pub fn group(&mut self) -> &mut Group {
        &mut self.group
    }

    /// Parameter names in the order every rank uses.
    pub fn parameter_names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// The number of all-reduces a step makes.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Runs one micro-batch's backward pass; its gradients add to this rank's sums until
    /// the next `step`.
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        for (param, sum) in self.params.iter().zip(self.sums.iter_mut()) {
            let Some(grad) = grads.get(param.var.as_tensor()) else {
                continue;
            };
            let values = flat(grad)?;
            match sum {
                Some(total) => total.iter_mut().zip(&values).for_each(|(t, v)| *t += v),
                None => *sum = Some(values),
            }
        }
        self.store = Some(grads);
        self.micro_batches += 1;
        Ok(())
    }

    /// The gradient sums of `indices` (in that order) times `scale`, one vector; zeros for
    /// a parameter without a gradient on this rank.
    fn scaled_sums(&self, indices: impl Iterator<Item = usize>, scale: f32) -> Vec<f32> {
        let mut packed = Vec::new();
        for index in indices {
            match &self.sums[index] {
                Some(sum) => packed.extend(sum.iter().map(|v| v * scale)),
                None => packed.resize(packed.len() + self.params[index].len, 0.0),
            }
        }
        packed
    }

    /// Averages the gradients over this rank's micro-batches and over the ranks, clips
    /// them, and steps `optimizer` with them.
    pub async fn step<O: Optimizer>(&mut self, optimizer: &mut O) -> Result<StepStats> {
        let mut store = self.store.take().ok_or_else(|| {
            TrainError::Invalid("step called before any backward since the last step".into())
        })?;
        let started = Instant::now();
        let mut communication = Duration::ZERO;
        let scale = 1.0 / self.micro_batches as f32;
        let mut averaged: Vec<Option<Vec<f32>>> = (0..self.params.len()).map(|_| None).collect();
        for bucket in &self.buckets {
            let mut packed = self.scaled_sums(bucket.iter().copied(), scale);
            let reducing = Instant::now();
            self.group.all_reduce(&mut packed, ReduceOp::Mean).await?;
            communication += reducing.elapsed();
            let mut at = 0;
            for index in bucket {
                let len = self.params[*index].len;
                averaged[*index] = Some(packed[at..at + len].to_vec());
                at += len;
            }
        }
        let grad_norm = averaged
            .iter()
            .flatten()
            .flat_map(|g| g.iter())
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt();
        let clip = match self.config.max_grad_norm {
            Some(max) if grad_norm > max => (max / (grad_norm + 1e-6)) as f32,
            _ => 1.0,
        };
        for (param, grad) in self.params.iter().zip(averaged) {
            let mut grad = grad.unwrap_or_else(|| vec![0.0; param.len]);
            if clip != 1.0 {
                grad.iter_mut().for_each(|v| *v *= clip);
            }
            let tensor = Tensor::from_vec(grad, param.var.shape(), &Device::Cpu)?;
            store.insert(param.var.as_tensor(), tensor);
        }
        optimizer.step(&store)?;
        self.sums.iter_mut().for_each(|s| *s = None);
        let micro_batches = std::mem::take(&mut self.micro_batches);
        Ok(StepStats {
            communication,
            update: started.elapsed().saturating_sub(communication),
            grad_norm,
            micro_batches,
        })
    }
}

impl Ddp {
    /// Parameters in all (the length of the flat parameter vector).
    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|p| p.len).sum()
    }

    /// The range of the flat parameter vector this rank updates at `stage` (everything
    /// without ZeRO, its shard with it): what a [`ShardedAdamW`] is made for.
    pub fn update_range(&self, stage: ZeroStage) -> std::ops::Range<usize> {
        match stage {
            ZeroStage::None => 0..self.parameter_count(),
            ZeroStage::One | ZeroStage::Two => self.group.shard_range(self.parameter_count()),
        }
    }

    /// The model's parameters as one vector, in name order.
    pub fn flat_parameters(&self) -> Result<Vec<f32>> {
        let mut all = Vec::with_capacity(self.parameter_count());
        for param in &self.params {
            all.extend(flat(param.var.as_tensor())?);
        }
        Ok(all)
    }

    /// Sets the model's parameters from one vector in name order.
    pub fn set_flat_parameters(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.parameter_count() {
            return Err(TrainError::Invalid(format!(
                "{} values for a model of {} parameters",
                values.len(),
                self.parameter_count()
            )));
        }
        let mut at = 0;
        for param in &self.params {
            let part = &values[at..at + param.len];
            param
                .var
                .set(&Tensor::from_slice(part, param.var.shape(), &Device::Cpu)?)?;
            at += param.len;
        }
        Ok(())
    }

    /// `step` with the built-in sharded AdamW (ZeRO stages, checkpointable state): the
    /// gradients averaged over micro-batches and ranks (all-reduced, or reduce-scattered at
    /// stage two), clipped by their global norm, this rank's range updated, and the updated
    /// shards all-gathered (stages one and two).
    pub async fn step_sharded(&mut self, optimizer: &mut ShardedAdamW) -> Result<StepStats> {
        if self.micro_batches == 0 {
            return Err(TrainError::Invalid(
                "step_sharded called before any backward since the last step".into(),
            ));
        }
        let stage = optimizer.stage();
        let range = self.update_range(stage);
        if optimizer.range() != range {
            return Err(TrainError::Invalid(format!(
                "the optimizer covers {:?} of the parameters but this rank updates {range:?} at {stage:?}; make it with update_range",
                optimizer.range()
            )));
        }
        let started = Instant::now();
        let mut communication = Duration::ZERO;
        let scale = 1.0 / self.micro_batches as f32;
        let mut grads = self.scaled_sums(0..self.params.len(), scale);
        let reducing = Instant::now();
        match stage {
            ZeroStage::None | ZeroStage::One => {
                self.group.all_reduce(&mut grads, ReduceOp::Mean).await?;
            }
            ZeroStage::Two => {
                self.group
                    .reduce_scatter(&mut grads, ReduceOp::Mean)
                    .await?;
            }
        }
        communication += reducing.elapsed();
        let shard = &mut grads[range.clone()];
        let mut squares = vec![shard
            .iter()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()];
        if stage != ZeroStage::None {
            let reducing = Instant::now();
            self.group.all_reduce(&mut squares, ReduceOp::Sum).await?;
            communication += reducing.elapsed();
        }
        let grad_norm = squares[0].sqrt();
        if let Some(max) = self.config.max_grad_norm {
            if grad_norm > max {
                let clip = (max / (grad_norm + 1e-6)) as f32;
                shard.iter_mut().for_each(|v| *v *= clip);
            }
        }
        let mut parameters = self.flat_parameters()?;
        let updated = optimizer.update(&parameters[range.clone()], shard)?;
        parameters[range].copy_from_slice(&updated);
        if stage != ZeroStage::None {
            let gathering = Instant::now();
            self.group.all_gather(&mut parameters).await?;
            communication += gathering.elapsed();
        }
        self.set_flat_parameters(&parameters)?;
        self.sums.iter_mut().for_each(|s| *s = None);
        self.store = None;
        let micro_batches = std::mem::take(&mut self.micro_batches);
        Ok(StepStats {
            communication,
            update: started.elapsed().saturating_sub(communication),
            grad_norm,
            micro_batches,
        })
    }
}

impl Ddp {
    /// The parameters by name (what a checkpoint saves).
    pub fn named_parameters(&self) -> std::collections::HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect()
    }

    /// Sets every parameter from `values` by name (a checkpoint's); each must be there with
    /// its shape.
    pub fn set_named_parameters(
        &self,
        values: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        for param in &self.params {
            let value = values.get(&param.name).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "the checkpoint has no parameter {}: it was saved from another model",
                    param.name
                ))
            })?;
            if value.dims() != param.var.dims() {
                return Err(TrainError::Invalid(format!(
                    "parameter {} is {:?} in the checkpoint and {:?} in the model",
                    param.name,
                    value.dims(),
                    param.var.dims()
                )));
            }
            param.var.set(value)?;
        }
        Ok(())
    }
}
