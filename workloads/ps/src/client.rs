//! The driver's [`ParameterServer`] (its shards) and each worker's [`PsWorker`].
//!
//! A worker's calls are vectorized as ps-lite's: the keys of one call are mapped to slots,
//! grouped by shard (duplicates summed for a push), and each shard gets one message; the
//! shards answer in parallel and the values come back in the order of the keys.
//!
//! Clocks: worker `w` counts its iterations. A pull reads at the worker's current clock
//! `t` (waiting as the consistency model says); a push sends clock `t`'s gradients to
//! *every* shard (an empty message to a shard none of its keys is on, so that every
//! shard's clock of `w` advances) and moves the worker to `t + 1`.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet::{ObjectRef, Scheduling};
use serde::{Deserialize, Serialize};

use crate::config::{Consistency, KeySpace, Optimizer, PsConfig};
use crate::shard::{PsShard, PsShardHandle};
use crate::{PsError, Result};

/// Builds a [`ParameterServer`].
pub struct Builder {
    config: PsConfig,
    seed: u64,
    spread: bool,
}

impl Builder {
    /// Server shards (one actor each).
    pub fn shards(mut self, shards: usize) -> Self {
        self.config.shards = shards;
        self
    }

    /// The keys.
    pub fn key_space(mut self, key_space: KeySpace) -> Self {
        self.config.key_space = key_space;
        self
    }

    /// Floats per key.
    pub fn width(mut self, width: usize) -> Self {
        self.config.width = width;
        self
    }

    /// The update rule applied by the shards.
    pub fn optimizer(mut self, optimizer: Optimizer) -> Self {
        self.config.optimizer = optimizer;
        self
    }

    /// When pulls read.
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.config.consistency = consistency;
        self
    }

    /// Workers that will push (ids `0..workers`).
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// How long a pull waits for slow workers before failing (default 60 s).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.config.wait_timeout = timeout;
        self
    }

    /// Initial weights uniform in `±scale` from `seed` (default: all zero).
    pub fn init(mut self, scale: f32, seed: u64) -> Self {
        self.config.init_scale = scale;
        self.seed = seed;
        self
    }

    /// Place the shards on the least used nodes (default: one per node as far as the
    /// cluster allows) or where the scheduler likes (`false`).
    pub fn spread(mut self, spread: bool) -> Self {
        self.spread = spread;
        self
    }

    /// Starts the shard actors.
    pub async fn build(self) -> Result<ParameterServer> {
        self.config.validate().map_err(PsError::Invalid)?;
        let mut shards = Vec::with_capacity(self.config.shards);
        for index in 0..self.config.shards {
            let shard = PsShard::remote(self.config.clone(), index, self.seed)
                .num_cpus(0.0)
                // Pulls that wait for slow workers must not hold up the pushes they wait
                // for: every worker's calls run at once.
                .max_concurrency(4 * self.config.workers as u32 + 16)
                .scheduling(if self.spread {
                    Scheduling::Spread
                } else {
                    Scheduling::Default
                })
                .spawn()
                .await
                .map_err(|e| PsError::Fleet(format!("starting shard {index}: {e}")))?;
            shards.push(shard);
        }
        Ok(ParameterServer {
            config: self.config,
            shards,
        })
    }
}

/// A running parameter server: its shard actors.
pub struct ParameterServer {
    config: PsConfig,
    shards: Vec<PsShardHandle>,
}

impl ParameterServer {
    /// A builder with defaults: 1 shard, 2²⁰ hashed keys of width 1, SGD at 0.1, BSP, 1
    /// worker.
    pub fn builder() -> Builder {
        Builder {
            config: PsConfig {
                key_space: KeySpace::Hashed { buckets: 1 << 20 },
                width: 1,
                optimizer: Optimizer::Sgd { lr: 0.1 },
                consistency: Consistency::Bsp,
                workers: 1,
                shards: 1,
                wait_timeout: Duration::from_secs(60),
                init_scale: 0.0,
            },
            seed: 0,
            spread: true,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PsConfig {
        &self.config
    }

    /// The client for worker `id` (serializable: pass it to the worker's task or actor).
    pub fn worker(&self, id: usize) -> Result<PsWorker> {
        if id >= self.config.workers {
            return Err(PsError::Invalid(format!(
                "worker {id}: this server has workers 0..{}",
                self.config.workers
            )));
        }
        Ok(PsWorker {
            config: self.config.clone(),
            shards: self.shards.clone(),
            id,
            clock: 0,
            pending: BTreeMap::new(),
        })
    }

    /// The current weights of `keys` (no waiting: for evaluation and checks).
    pub async fn read(&self, keys: &[u64]) -> Result<Vec<f32>> {
        let plan = Plan::of(&self.config, keys)?;
        let calls: Vec<(usize, ObjectRef<Vec<f32>>)> = plan
            .per_shard
            .iter()
            .map(|(shard, slots)| (*shard, self.shards[*shard].read(slots.clone())))
            .collect();
        plan.gather(&self.config, collect(calls).await?)
    }

    /// Per shard: clocks pushed per worker, and pushes applied per worker.
    pub async fn clocks(&self) -> Result<Vec<(Vec<u64>, Vec<u64>)>> {
        let calls: Vec<ObjectRef<(Vec<u64>, Vec<u64>)>> =
            self.shards.iter().map(|s| s.clocks()).collect();
        fleet::get_all(&calls)
            .await
            .map_err(|e| PsError::Fleet(e.to_string()))
    }

    /// Stops the shard actors.
    pub async fn shutdown(self) -> Result<()> {
        for shard in &self.shards {
            fleet::kill(shard.raw())
                .await
                .map_err(|e| PsError::Fleet(e.to_string()))?;
        }
        Ok(())
    }
}

/// Which shard gets which slots, and where each key's values go.
struct Plan {
    /// Shard → its distinct slots, sorted.
    per_shard: BTreeMap<usize, Vec<u64>>,
    /// Per key: (shard, index in that shard's slots).
    places: Vec<(usize, usize)>,
}

impl Plan {
    fn of(config: &PsConfig, keys: &[u64]) -> Result<Plan> {
        let slots = keys
            .iter()
            .map(|k| config.key_space.slot(*k))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(PsError::Invalid)?;
        let mut per_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for slot in &slots {
            per_shard
                .entry(config.shard_of(*slot))
                .or_default()
                .push(*slot);
        }
        for list in per_shard.values_mut() {
            list.sort_unstable();
            list.dedup();
        }
        let places = slots
            .iter()
            .map(|slot| {
                let shard = config.shard_of(*slot);
                let index = per_shard[&shard].binary_search(slot).unwrap_or(0);
                (shard, index)
            })
            .collect();
        Ok(Plan { per_shard, places })
    }

    /// Values per key, in key order, from each shard's answer.
    fn gather(&self, config: &PsConfig, answers: BTreeMap<usize, Vec<f32>>) -> Result<Vec<f32>> {
        let width = config.width;
        let mut out = Vec::with_capacity(self.places.len() * width);
        for (shard, index) in &self.places {
            let values = answers
                .get(shard)
                .ok_or_else(|| PsError::Fleet(format!("shard {shard} did not answer")))?;
            let part = values
                .get(index * width..(index + 1) * width)
                .ok_or_else(|| PsError::Fleet(format!("shard {shard} answered too few values")))?;
            out.extend_from_slice(part);
        }
        Ok(out)
    }
}

async fn collect<T: serde::de::DeserializeOwned + Send + 'static>(
    calls: Vec<(usize, ObjectRef<T>)>,
) -> Result<BTreeMap<usize, T>> {
    let (shards, refs): (Vec<usize>, Vec<ObjectRef<T>>) = calls.into_iter().unzip();
    let values = fleet::get_all(&refs).await.map_err(PsError::from_call)?;
    Ok(shards.into_iter().zip(values).collect())
}

/// One worker's client (see the module docs). Serializable: made by the driver with
/// [`ParameterServer::worker`], used in the worker's task or actor.
#[derive(Serialize, Deserialize)]
pub struct PsWorker {
    config: PsConfig,
    shards: Vec<PsShardHandle>,
    id: usize,
    clock: u64,
    /// Pushes sent and not yet waited for: clock → each shard's answer.
    #[serde(skip)]
    pending: BTreeMap<u64, Vec<ObjectRef<u64>>>,
}

impl PsWorker {
    /// This worker's id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The clock its next pull reads at and its next push sends.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Floats per key.
    pub fn width(&self) -> usize {
        self.config.width
    }

    /// The weights of `keys` (`width` floats each, in the order of `keys`), once the
    /// consistency model allows this worker's clock to read.
    pub async fn pull(&mut self, keys: &[u64]) -> Result<Vec<f32>> {
        let plan = Plan::of(&self.config, keys)?;
        let calls = plan
            .per_shard
            .iter()
            .map(|(shard, slots)| {
                (
                    *shard,
                    self.shards[*shard].pull(self.id, self.clock, slots.clone()),
                )
            })
            .collect();
        plan.gather(&self.config, collect(calls).await?)
    }

    /// Sends the gradients of `keys` (`width` floats each; a key given twice has its
    /// gradients summed) for this worker's clock and moves to the next; returns the clock
    /// sent, for [`PsWorker::wait`]. The shards apply it as they receive it.
    pub fn push_async(&mut self, keys: &[u64], grads: &[f32]) -> Result<u64> {
        let width = self.config.width;
        if grads.len() != keys.len() * width {
            return Err(PsError::Invalid(format!(
                "{} gradient values for {} keys of width {width}: expected {}",
                grads.len(),
                keys.len(),
                keys.len() * width
            )));
        }
        let plan = Plan::of(&self.config, keys)?;
        let mut sums: BTreeMap<usize, Vec<f32>> = plan
            .per_shard
            .iter()
            .map(|(shard, slots)| (*shard, vec![0.0; slots.len() * width]))
            .collect();
        for (k, (shard, index)) in plan.places.iter().enumerate() {
            if let Some(sum) = sums.get_mut(shard) {
                for j in 0..width {
                    sum[index * width + j] += grads[k * width + j];
                }
            }
        }
        let clock = self.clock;
        let answers = (0..self.shards.len())
            .map(|shard| {
                let slots = plan.per_shard.get(&shard).cloned().unwrap_or_default();
                let grads = sums.remove(&shard).unwrap_or_default();
                self.shards[shard].push(self.id, clock, slots, grads)
            })
            .collect();
        self.pending.insert(clock, answers);
        self.clock += 1;
        Ok(clock)
    }

    /// Waits until every shard has applied the push of clock `ts` (and the ones before
    /// it).
    pub async fn wait(&mut self, ts: u64) -> Result<()> {
        let later = self.pending.split_off(&(ts + 1));
        let done = std::mem::replace(&mut self.pending, later);
        for (_, answers) in done {
            fleet::get_all(&answers).await.map_err(PsError::from_call)?;
        }
        Ok(())
    }

    /// [`PsWorker::push_async`], then [`PsWorker::wait`] for it.
    pub async fn push(&mut self, keys: &[u64], grads: &[f32]) -> Result<u64> {
        let ts = self.push_async(keys, grads)?;
        self.wait(ts).await?;
        Ok(ts)
    }

    /// Pushes the gradients of `keys` and pulls their weights at the next clock (ps-lite's
    /// `PushPull`).
    pub async fn push_pull(&mut self, keys: &[u64], grads: &[f32]) -> Result<Vec<f32>> {
        self.push_async(keys, grads)?;
        let values = self.pull(keys).await;
        let ts = self.clock - 1;
        self.wait(ts).await?;
        values
    }
}
