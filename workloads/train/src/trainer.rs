//! [`Trainer`]: a data-parallel run from the driver — spawn and place one rank actor per
//! worker, keep the membership, follow progress, survive lost ranks, report.
//!
//! ```ignore
//! fleet_train::register_job!(MyJob);
//!
//! let report = Trainer::new("my-run", MyJob { .. })
//!     .world_size(2)
//!     .steps(600)
//!     .global_batch(24)
//!     .learning_rate(LearningRate::WarmupCosine { peak: 1e-3, warmup: 60, floor: 1e-4 })
//!     .zero(ZeroStage::One)
//!     .checkpoints("/tmp/ckpt", 50)
//!     .elastic(Elastic { restarts_per_rank: 2, min_world: 1 })
//!     .on_progress(|record| println!("{} {}", record.step, record.loss))
//!     .run()
//!     .await?;
//! ```
//!
//! **Failures.** A rank's actor is restarted by the runtime (up to
//! `Elastic::restarts_per_rank` times) and its call runs again: it joins the group in a new
//! round, and every rank resumes from the last committed checkpoint. When a rank's call
//! fails for good (its restarts spent, or it cannot be placed), the driver writes a new
//! generation of the membership without it, and the survivors go on with fewer ranks —
//! as long as at least `min_world` are left and the global batch splits evenly over them.
//! The global batch stays the same, so the loss curve stays that of the run without the
//! fault (within float rounding: the sums are taken in another order).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_nn::ParamsAdamW;
use fleet::{ObjectRef, PlacementGroup, PlacementStrategy, Scheduling};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoints, NAMESPACE};
use crate::ddp::{Result, TrainError};
use crate::job::TrainingJob;
use crate::rank::{
    group_name, membership_key, read_membership, Membership, RankCall, RankOutcome, Recovery,
    Replayed, StepRecord, TrainRank,
};
use crate::sharded::ZeroStage;

/// The learning rate at each step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum LearningRate {
    /// The same at every step.
    Constant(f64),
    /// Linear warm-up to `peak` over `warmup` steps, then cosine decay to `floor` at the
    /// last step (nanoGPT's schedule).
    WarmupCosine {
        /// The rate at the end of the warm-up.
        peak: f64,
        /// Warm-up steps.
        warmup: u64,
        /// The rate at the last step.
        floor: f64,
    },
}

impl LearningRate {
    /// The rate at step `step` (0-based) of `steps`.
    pub fn at(&self, step: u64, steps: u64) -> f64 {
        match *self {
            LearningRate::Constant(rate) => rate,
            LearningRate::WarmupCosine {
                peak,
                warmup,
                floor,
            } => {
                if step < warmup {
                    return peak * (step + 1) as f64 / warmup as f64;
                }
                let progress =
                    (step - warmup) as f64 / (steps.saturating_sub(warmup)).max(1) as f64;
                floor + 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (peak - floor)
            }
        }
    }
}

/// Where checkpoints go and how often.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointPolicy {
    /// A directory every rank can read and write (one node's disk, or a shared file system
    /// across nodes).
    pub dir: PathBuf,
    /// Commit one every this many steps (step 0's weights are committed too).
    pub every: u64,
}

/// What the ranks run with (sent to each rank).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The run's name: its group, membership and checkpoint records.
    pub run: String,
    /// Steps to train.
    pub steps: u64,
    /// Examples per step over all ranks.
    pub global_batch: u64,
    /// At most this many examples per backward pass (gradient accumulation); `None`: a
    /// rank's whole part of the batch at once.
    pub micro_batch: Option<u64>,
    /// The schedule.
    pub learning_rate: LearningRate,
    /// AdamW's first-moment decay.
    pub beta1: f64,
    /// AdamW's second-moment decay.
    pub beta2: f64,
    /// AdamW's epsilon.
    pub eps: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// How much of the optimizer state each rank keeps.
    pub zero: ZeroStage,
    /// Clip the averaged gradients to this global norm.
    pub max_grad_norm: Option<f64>,
    /// Bytes of gradients per all-reduce.
    pub bucket_bytes: usize,
    /// Measure the held-out loss on rank 0 every this many steps.
    pub eval_every: Option<u64>,
    /// Checkpoints (needed to survive a lost rank).
    pub checkpoint: Option<CheckpointPolicy>,
    /// How long the ranks wait for each other when (re-)forming the group.
    pub rendezvous_timeout: Duration,
    /// How long one collective waits for its peers.
    pub op_timeout: Duration,
    /// A rank gives up after forming the group this many times.
    pub max_formations: usize,
}

impl TrainConfig {
    /// The defaults for run `run`: 100 steps of 32 examples, AdamW at 1e-3 (candle's
    /// defaults otherwise), plain DDP, 25 MiB buckets, no checkpoints.
    pub fn new(run: &str) -> Self {
        let adamw = ParamsAdamW::default();
        TrainConfig {
            run: run.to_string(),
            steps: 100,
            global_batch: 32,
            micro_batch: None,
            learning_rate: LearningRate::Constant(1e-3),
            beta1: adamw.beta1,
            beta2: adamw.beta2,
            eps: adamw.eps,
            weight_decay: adamw.weight_decay,
            zero: ZeroStage::None,
            max_grad_norm: None,
            bucket_bytes: 25 << 20,
            eval_every: None,
            checkpoint: None,
            rendezvous_timeout: Duration::from_secs(120),
            op_timeout: Duration::from_secs(600),
            max_formations: 16,
        }
    }

    /// AdamW's parameters at the schedule's first rate.
    pub(crate) fn adamw_params(&self) -> ParamsAdamW {
        ParamsAdamW {
            lr: self.learning_rate.at(0, self.steps),
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

/// How a run survives lost ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elastic {
    /// How many times the runtime restarts each rank's actor (and runs its call again).
    pub restarts_per_rank: i32,
    /// Go on with fewer ranks, down to this many, when a rank is lost for good (equal to
    /// the world size: never shrink).
    pub min_world: usize,
}

/// Where the rank actors go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The scheduler's default (this node first, then the least used).
    Any,
    /// The least used node for each.
    Spread,
    /// Rank `i` on node `nodes[i % len]`, elsewhere when that node is dead or full.
    Nodes(Vec<String>),
    /// A placement group of one bundle per rank, reserved together (a gang). A rank
    /// restarted after its bundle's node died cannot be placed: pair it with
    /// `Elastic::min_world` below the world size.
    Gang(PlacementStrategy),
}

/// What a run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    /// The run.
    pub run: String,
    /// One record per step, in order (the last attempt of steps trained twice).
    pub history: Vec<StepRecord>,
    /// The last step's training loss.
    pub final_loss: f32,
    /// The held-out loss after the last step.
    pub val_loss: Option<f32>,
    /// Ranks at the start.
    pub initial_world: usize,
    /// Ranks at the end.
    pub world: usize,
    /// Parameters of the model.
    pub parameters: usize,
    /// Global examples per second (rank 0's timed steps; the first step of each forming
    /// is not timed).
    pub examples_per_s: f64,
    /// `examples_per_s` times the job's tokens per example.
    pub tokens_per_s: f64,
    /// The share of step time in collectives.
    pub communication_fraction: f64,
    /// Bytes of optimizer state each finishing rank held.
    pub optimizer_state_bytes: Vec<usize>,
    /// Lost ranks and how the run got over each.
    pub recoveries: Vec<Recovery>,
    /// Ranks the run went on without: (slot, why).
    pub dropped: Vec<(usize, String)>,
    /// Steps trained twice, with both losses.
    pub replayed: Vec<Replayed>,
    /// Restarts of the rank actors, summed.
    pub restarts: u32,
    /// FNV-1a of the final parameters (the same on every rank).
    pub digest: u64,
    /// The job's `finish` on rank 0.
    pub finish: Option<String>,
    /// Wall time of the run.
    pub seconds: f64,
}

impl TrainReport {
    /// Whether every step trained twice gave the same loss both times (a resumed run
    /// repeats the computation it lost).
    pub fn replays_match(&self) -> bool {
        self.replayed.iter().all(|r| r.first == r.again)
    }
}

type Progress = Box<dyn FnMut(&StepRecord) + Send>;

/// A data-parallel run of a [`TrainingJob`] (see the module docs).
pub struct Trainer<J: TrainingJob> {
    job: J,
    config: TrainConfig,
    world: usize,
    cpus_per_rank: f64,
    placement: Placement,
    elastic: Option<Elastic>,
    resume: bool,
    progress: Option<Progress>,
}

fn invalid(what: impl Into<String>) -> TrainError {
    TrainError::Invalid(what.into())
}

impl<J: TrainingJob> Trainer<J> {
    /// A run named `run` of `job`, with [`TrainConfig::new`]'s defaults and 2 ranks.
    pub fn new(run: &str, job: J) -> Self {
        Trainer {
            job,
            config: TrainConfig::new(run),
            world: 2,
            cpus_per_rank: 1.0,
            placement: Placement::Any,
            elastic: None,
            resume: false,
            progress: None,
        }
    }

    /// Ranks (rank actors) to train with.
    pub fn world_size(mut self, ranks: usize) -> Self {
        self.world = ranks;
        self
    }

    /// Steps to train.
    pub fn steps(mut self, steps: u64) -> Self {
        self.config.steps = steps;
        self
    }

    /// Examples per step over all ranks (it must split evenly over the ranks).
    pub fn global_batch(mut self, examples: u64) -> Self {
        self.config.global_batch = examples;
        self
    }

    /// At most this many examples per backward pass: a rank accumulates the gradients of
    /// its part of the batch in micro-batches of this size.
    pub fn micro_batch(mut self, examples: u64) -> Self {
        self.config.micro_batch = Some(examples);
        self
    }

    /// The learning-rate schedule.
    pub fn learning_rate(mut self, schedule: LearningRate) -> Self {
        self.config.learning_rate = schedule;
        self
    }

    /// AdamW's moment decays (candle's defaults: 0.9, 0.999).
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.config.beta1 = beta1;
        self.config.beta2 = beta2;
        self
    }

    /// AdamW's decoupled weight decay.
    pub fn weight_decay(mut self, decay: f64) -> Self {
        self.config.weight_decay = decay;
        self
    }

    /// The ZeRO stage (how much optimizer state each rank keeps).
    pub fn zero(mut self, stage: ZeroStage) -> Self {
        self.config.zero = stage;
        self
    }

    /// Clip the averaged gradients to this global L2 norm.
    pub fn max_grad_norm(mut self, norm: f64) -> Self {
        self.config.max_grad_norm = Some(norm);
        self
    }

    /// Bytes of gradients per all-reduce.
    pub fn bucket_bytes(mut self, bytes: usize) -> Self {
        self.config.bucket_bytes = bytes;
        self
    }

    /// Measure the held-out loss ([`TrainingJob::evaluate`]) every this many steps.
    pub fn eval_every(mut self, steps: u64) -> Self {
        self.config.eval_every = Some(steps);
        self
    }

    /// Commit a checkpoint under `dir` every `every` steps (and step 0's weights). A
    /// relative `dir` is taken from the driver's working directory (the ranks run in
    /// others).
    pub fn checkpoints(mut self, dir: impl Into<PathBuf>, every: u64) -> Self {
        let dir = dir.into();
        self.config.checkpoint = Some(CheckpointPolicy {
            dir: std::path::absolute(&dir).unwrap_or(dir),
            every,
        });
        self
    }

    /// Survive lost ranks (needs checkpoints).
    pub fn elastic(mut self, elastic: Elastic) -> Self {
        self.elastic = Some(elastic);
        self
    }

    /// Go on from the run's last committed checkpoint instead of starting over.
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// CPUs each rank actor holds.
    pub fn cpus_per_rank(mut self, cpus: f64) -> Self {
        self.cpus_per_rank = cpus;
        self
    }

    /// Where the rank actors go.
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// How long the ranks wait for each other when forming the group.
    pub fn rendezvous_timeout(mut self, timeout: Duration) -> Self {
        self.config.rendezvous_timeout = timeout;
        self
    }

    /// Called on the driver with each step's record (rank 0 sends them as it trains).
    pub fn on_progress(mut self, progress: impl FnMut(&StepRecord) + Send + 'static) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// The settings the ranks will run with.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    fn validate(&self) -> Result<()> {
        let c = &self.config;
        if c.run.is_empty() || c.run.len() > 150 || c.run.contains(['/', '.']) {
            return Err(invalid(format!(
                "run name {:?}: 1 to 150 bytes without '/' or '.'",
                c.run
            )));
        }
        if crate::job::find(std::any::type_name::<J>()).is_none() {
            return Err(invalid(format!(
                "job type {} is not registered: add fleet_train::register_job!({}) at the top level of the crate that defines it",
                std::any::type_name::<J>(),
                std::any::type_name::<J>().rsplit("::").next().unwrap_or_default()
            )));
        }
        if self.world == 0 || c.steps == 0 {
            return Err(invalid("world_size and steps must be at least 1"));
        }
        crate::rank::rank_examples(c, self.world, 0, 0).map_err(TrainError::Invalid)?;
        if let Some(elastic) = self.elastic {
            if c.checkpoint.is_none() {
                return Err(invalid(
                    "an elastic run resumes from checkpoints: set Trainer::checkpoints too",
                ));
            }
            if elastic.min_world == 0 || elastic.min_world > self.world {
                return Err(invalid(format!(
                    "Elastic::min_world is {}: it must be 1 to the world size ({})",
                    elastic.min_world, self.world
                )));
            }
        }
        if c.checkpoint.as_ref().is_some_and(|p| p.every == 0) {
            return Err(invalid(
                "checkpoints every 0 steps: pick a positive interval",
            ));
        }
        Ok(())
    }

    /// Spawns the ranks, trains, and returns the report (see the module docs).
    pub async fn run(mut self) -> Result<TrainReport> {
        self.validate()?;
        let started = Instant::now();
        let run = self.config.run.clone();
        let checkpoints = self
            .config
            .checkpoint
            .as_ref()
            .map(|p| Checkpoints::new(&run, &p.dir));
        if let (Some(checkpoints), false) = (&checkpoints, self.resume) {
            checkpoints.forget().await?;
        }
        let previous = read_membership(&run).await.map_err(TrainError::Invalid)?;
        let first_generation = previous.as_ref().map_or(1, |(m, _)| m.generation + 1);
        let mut members = Membership {
            generation: first_generation,
            slots: (0..self.world).collect(),
            aborted: None,
        };
        write_membership(&run, &members).await?;
        let job = bincode::serialize(&self.job)
            .map_err(|e| invalid(format!("the job does not encode: {e}")))?;
        let restarts = self.elastic.map_or(0, |e| e.restarts_per_rank);
        let gang = match &self.placement {
            Placement::Gang(strategy) => Some(
                PlacementGroup::new(
                    (0..self.world)
                        .map(|_| fleet::Bundle::from([("CPU".to_string(), self.cpus_per_rank)]))
                        .collect(),
                )
                .strategy(*strategy)
                .name(format!("{run}-ranks"))
                .create()
                .await
                .map_err(|e| invalid(format!("reserving the ranks' placement group: {e}")))?,
            ),
            _ => None,
        };
        let mut ranks = Vec::with_capacity(self.world);
        for slot in 0..self.world {
            let scheduling = match (&self.placement, &gang) {
                (_, Some(gang)) => gang.scheduling(Some(slot)),
                (Placement::Spread, _) => Scheduling::Spread,
                (Placement::Nodes(nodes), _) if !nodes.is_empty() => Scheduling::NodeAffinity {
                    node_id: nodes[slot % nodes.len()].clone(),
                    soft: true,
                },
                _ => Scheduling::Default,
            };
            // A process per rank: a rank that crashes (or runs out of memory) takes no other
            // rank along, and the group re-forms around its replacement.
            let rank = TrainRank::remote(slot)
                .isolate()
                .num_cpus(self.cpus_per_rank)
                .max_restarts(restarts)
                .max_task_retries(restarts.max(0) as u32)
                .scheduling(scheduling)
                .spawn()
                .await
                .map_err(|e| invalid(format!("starting rank {slot}: {e}")))?;
            ranks.push(rank);
        }
        let (tx, rx) = fleet::channel::<StepRecord>(256);
        let mut progress_tx = Some(tx);
        let calls: Vec<ObjectRef<RankOutcome>> = ranks
            .iter()
            .enumerate()
            .map(|(slot, rank)| {
                rank.train(RankCall {
                    job_type: std::any::type_name::<J>().to_string(),
                    job: job.clone(),
                    config: self.config.clone(),
                    slot,
                    progress: if slot == 0 { progress_tx.take() } else { None },
                })
            })
            .collect();
        let mut pending: futures::stream::FuturesUnordered<_> = calls
            .into_iter()
            .enumerate()
            .map(|(slot, call)| async move { (slot, call.await) })
            .collect();
        // `Receiver::recv` is not cancel-safe, so it runs in a task of its own and hands
        // each record on through a channel that is (the loop below selects on it).
        let (records_tx, mut records) = tokio::sync::mpsc::unbounded_channel();
        let forwarding = tokio::spawn(async move {
            let mut rx = rx;
            // Ends with the stream, or when its sender's process died: progress stops,
            // training does not.
            while let Ok(Some(record)) = rx.recv().await {
                if records_tx.send(record).is_err() {
                    break;
                }
            }
        });
        let mut outcomes = Vec::new();
        let mut dropped = Vec::new();
        let mut failure: Option<String> = None;
        while !pending.is_empty() {
            tokio::select! {
                Some(record) = records.recv() => {
                    if let Some(progress) = self.progress.as_mut() {
                        progress(&record);
                    }
                }
                Some((slot, result)) = pending.next() => match result {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(error) => {
                        let cause = error.to_string();
                        tracing::warn!(slot, %cause, "a rank was lost for good");
                        dropped.push((slot, cause.clone()));
                        members.slots.retain(|s| *s != slot);
                        if failure.is_none() {
                            match self.shrink_to(members.slots.len()) {
                                Ok(()) => {
                                    members.generation += 1;
                                    write_membership(&run, &members).await?;
                                }
                                Err(why) => {
                                    let stopped = format!("rank {slot} was lost ({cause}) and {why}");
                                    members.aborted = Some(stopped.clone());
                                    write_membership(&run, &members).await?;
                                    failure = Some(stopped);
                                }
                            }
                        }
                    }
                },
            }
        }
        // The last steps' progress: the stream ends with the rank's call.
        let _ = tokio::time::timeout(Duration::from_secs(2), forwarding).await;
        while let Ok(record) = records.try_recv() {
            if let Some(progress) = self.progress.as_mut() {
                progress(&record);
            }
        }
        for rank in &ranks {
            let _ = fleet::kill(rank.raw()).await;
        }
        if let Some(gang) = &gang {
            let _ = fleet::remove_placement_group(gang).await;
        }
        for generation in first_generation..=members.generation {
            let _ = fleet_collective::remove_group(&group_name(&run, generation)).await;
        }
        if let Some(failure) = failure {
            return Err(invalid(format!("run {run}: {failure}")));
        }
        self.report(run, outcomes, dropped, started)
    }

    /// Whether the run may go on with `survivors` ranks (`Err`: why not).
    fn shrink_to(&self, survivors: usize) -> std::result::Result<(), String> {
        let Some(elastic) = self.elastic else {
            return Err("the run is not elastic (Trainer::elastic)".into());
        };
        if survivors < elastic.min_world {
            return Err(format!(
                "{survivors} rank(s) are left, fewer than Elastic::min_world ({})",
                elastic.min_world
            ));
        }
        crate::rank::rank_examples(&self.config, survivors, 0, 0)
            .map(|_| ())
            .map_err(|why| format!("the run cannot go on with {survivors} rank(s): {why}"))
    }

    fn report(
        &self,
        run: String,
        outcomes: Vec<RankOutcome>,
        dropped: Vec<(usize, String)>,
        started: Instant,
    ) -> Result<TrainReport> {
        let finishing: Vec<&RankOutcome> = outcomes.iter().filter(|o| !o.retired).collect();
        let first = finishing
            .iter()
            .find(|o| o.finish.is_some() || o.val_loss.is_some())
            .or(finishing.first())
            .copied()
            .ok_or_else(|| invalid(format!("run {run}: no rank finished")))?;
        if let Some(other) = finishing.iter().find(|o| o.digest != first.digest) {
            return Err(invalid(format!(
                "run {run}: ranks {} and {} finished with different weights",
                first.slot, other.slot
            )));
        }
        // Every step from whichever rank trained it last (all ranks agree on each step's
        // loss: it is all-reduced).
        let mut steps: BTreeMap<u64, StepRecord> = BTreeMap::new();
        for outcome in &outcomes {
            for record in &outcome.history {
                steps.insert(record.step, record.clone());
            }
        }
        let history: Vec<StepRecord> = steps.into_values().collect();
        let final_loss = history.last().map_or(f32::NAN, |r| r.loss);
        let mut seen = BTreeSet::new();
        let recoveries = outcomes
            .iter()
            .flat_map(|o| o.recoveries.iter())
            .filter(|r| seen.insert((r.failed_at_step, r.resumed_from, r.world)))
            .cloned()
            .collect();
        let mut replayed: Vec<Replayed> = outcomes
            .iter()
            .flat_map(|o| o.replayed.iter().cloned())
            .collect();
        replayed.sort_by_key(|r| r.step);
        replayed.dedup_by(|a, b| a.step == b.step && a.first == b.first && a.again == b.again);
        let examples_per_s = first.examples_per_s;
        Ok(TrainReport {
            run,
            history,
            final_loss,
            val_loss: first.val_loss,
            initial_world: self.world,
            world: first.world,
            parameters: first.parameters,
            examples_per_s,
            tokens_per_s: examples_per_s * self.job.tokens_per_example() as f64,
            communication_fraction: first.communication_fraction,
            optimizer_state_bytes: finishing.iter().map(|o| o.optimizer_state_bytes).collect(),
            recoveries,
            dropped,
            replayed,
            restarts: outcomes.iter().map(|o| o.restarts).sum(),
            digest: first.digest,
            finish: finishing.iter().find_map(|o| o.finish.clone()),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

async fn write_membership(run: &str, members: &Membership) -> Result<()> {
    let value = serde_json::to_vec(members)
        .map_err(|e| invalid(format!("cannot encode the membership: {e}")))?;
    fleet::kv::put(NAMESPACE, &membership_key(run), &value)
        .await
        .map_err(|e| invalid(format!("writing run {run}'s membership: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_its_floor() {
        let schedule = LearningRate::WarmupCosine {
            peak: 1.0,
            warmup: 10,
            floor: 0.1,
        };
        assert!((schedule.at(0, 100) - 0.1).abs() < 1e-12);
        assert!((schedule.at(9, 100) - 1.0).abs() < 1e-12);
        assert!((schedule.at(10, 100) - 1.0).abs() < 1e-12);
        assert!((schedule.at(100, 100) - 0.1).abs() < 1e-12);
        assert!(schedule.at(55, 100) < 1.0 && schedule.at(55, 100) > 0.1);
        assert_eq!(LearningRate::Constant(0.5).at(7, 10), 0.5);
    }
}
