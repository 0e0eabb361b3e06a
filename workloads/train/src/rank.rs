//! One rank of a [`Trainer`](crate::Trainer) run: the actor, and the loop it runs.
//!
//! **Membership.** The driver keeps the run's members in `fleet::kv` (namespace
//! [`crate::checkpoint::NAMESPACE`], key `<run>/members`): a generation number and the
//! *slots* (the ranks the run started with) that still take part. A rank's place in that
//! list is its rank; the group of generation `g` is `<run>.g<g>`.
//!
//! **The loop.** Read the membership, form the group (a rendezvous attempt of a few
//! seconds, retried while the membership may change), wrap the model in [`Ddp`], take up
//! the last committed checkpoint (committing step 0's weights first when there is none), and
//! train from there. When a collective fails (a rank lost), go round again: a restarted rank
//! joins the same generation's group in a new round, or, when the driver gave up on it, the
//! survivors form the next generation's smaller group. Either way every rank resumes from
//! the same committed step, so the data order — which depends only on the step — and hence
//! the loss curve are those of a run without the fault.

use std::time::{Duration, Instant};

use candle_nn::VarMap;
use fleet::Sender;
use fleet_collective::{CollectiveError, Group, GroupOptions, ReduceOp};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoints, NAMESPACE};
use crate::ddp::{Ddp, DdpConfig, TrainError};
use crate::job::TrainingJob;
use crate::sharded::ShardedAdamW;
use crate::trainer::TrainConfig;

/// One trained step, as the run reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed (1 for the first).
    pub step: u64,
    /// The mean training loss over the step's global batch.
    pub loss: f32,
    /// The held-out loss, on the steps it was measured.
    pub val_loss: Option<f32>,
    /// Ranks that trained the step.
    pub world: usize,
    /// The step's wall time on rank 0 (seconds).
    pub seconds: f64,
    /// Of it, in collectives (seconds).
    pub communication: f64,
}

/// A lost rank, and how the run got over it (as a survivor saw it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recovery {
    /// What failed.
    pub cause: String,
    /// The step being trained when it failed (0-based).
    pub failed_at_step: u64,
    /// The committed step training resumed from.
    pub resumed_from: u64,
    /// Ranks after the recovery.
    pub world: usize,
    /// From the failure to the first step trained after it (seconds).
    pub seconds: f64,
}

/// A step trained twice (before a failure and again after resuming) and its two losses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Replayed {
    /// The step (1-based, as in [`StepRecord`]).
    pub step: u64,
    /// Its loss the first time.
    pub first: f32,
    /// Its loss after resuming.
    pub again: f32,
}

/// What the driver sends each rank.
#[derive(Debug, Serialize, Deserialize)]
pub struct RankCall {
    /// `std::any::type_name` of the job type.
    pub job_type: String,
    /// The job value, bincode.
    pub job: Vec<u8>,
    /// The run's settings.
    pub config: TrainConfig,
    /// The rank this actor started as.
    pub slot: usize,
    /// Where to report each step (slot 0 only; best effort).
    pub progress: Option<Sender<StepRecord>>,
}

/// What a rank returns.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RankOutcome {
    /// The rank it started as.
    pub slot: usize,
    /// It was left out of a smaller group (the run went on without it).
    pub retired: bool,
    /// How many times this instance was restarted by the runtime before this call.
    pub restarts: u32,
    /// How many times it formed the group.
    pub formed: usize,
    /// The steps it trained, the last attempt of each.
    pub history: Vec<StepRecord>,
    /// Failures it saw and recovered from.
    pub recoveries: Vec<Recovery>,
    /// Steps it trained twice.
    pub replayed: Vec<Replayed>,
    /// Parameters of the model.
    pub parameters: usize,
    /// Bytes of optimizer state it held at the end.
    pub optimizer_state_bytes: usize,
    /// Global examples per second over its timed steps.
    pub examples_per_s: f64,
    /// Of its timed steps' time, the share in collectives.
    pub communication_fraction: f64,
    /// FNV-1a of the final parameters' bits (equal on every rank when they agree).
    pub digest: u64,
    /// The held-out loss after the last step (rank 0).
    pub val_loss: Option<f32>,
    /// The job's `finish` (rank 0).
    pub finish: Option<String>,
    /// Ranks at the end.
    pub world: usize,
    /// Records of steps to be trained again (after going back to a checkpoint).
    #[serde(skip)]
    first_attempts: Vec<StepRecord>,
}

/// The run's membership, as kept in the KV.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Membership {
    pub generation: u64,
    /// Slots taking part, in rank order.
    pub slots: Vec<usize>,
    /// Set when the driver stopped the run: every rank returns with this cause.
    pub aborted: Option<String>,
}

pub(crate) fn membership_key(run: &str) -> String {
    format!("{run}/members")
}

pub(crate) fn group_name(run: &str, generation: u64) -> String {
    format!("{run}.g{generation}")
}

pub(crate) async fn read_membership(run: &str) -> Result<Option<(Membership, u64)>, String> {
    let entry = fleet::kv::get(NAMESPACE, &membership_key(run))
        .await
        .map_err(|e| format!("reading run {run}'s membership: {e}"))?;
    entry
        .map(|entry| {
            serde_json::from_slice(&entry.value)
                .map(|m| (m, entry.version))
                .map_err(|e| format!("run {run}'s membership record is unreadable ({e})"))
        })
        .transpose()
}

/// FNV-1a over the values' bits.
pub(crate) fn digest(values: &[f32]) -> u64 {
    values.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, v| {
        v.to_bits().to_le_bytes().iter().fold(hash, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
    })
}

/// How long one rendezvous attempt waits before the rank looks at the membership again
/// (the driver may have shrunk the run meanwhile).
const ATTEMPT: Duration = Duration::from_secs(2);

/// One data-parallel rank of a [`Trainer`](crate::Trainer) run.
#[fleet::actor]
pub struct TrainRank {
    slot: usize,
}

#[fleet::actor]
impl TrainRank {
    pub fn new(slot: usize) -> Self {
        TrainRank { slot }
    }

    /// Trains the job to the end (see the module docs).
    pub async fn train(&mut self, call: RankCall) -> Result<RankOutcome, String> {
        let run = crate::job::find(&call.job_type).ok_or_else(|| {
            format!(
                "job type {} is not registered in this binary: add fleet_train::register_job!({}) at the top level of the crate that defines it",
                call.job_type,
                call.job_type.rsplit("::").next().unwrap_or(&call.job_type)
            )
        })?;
        let slot = self.slot;
        run(call)
            .await
            .map_err(|e| format!("rank (slot {slot}): {e}"))
    }
}

/// Waits for a membership (the driver writes it before it calls the ranks).
async fn current_membership(run: &str) -> Result<Membership, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((members, _)) = read_membership(run).await? {
            return Ok(members);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "run {run} has no membership record: start it with Trainer::run"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Global examples `step` gives `rank` of `world`, in micro-batches.
pub(crate) fn rank_examples(
    config: &TrainConfig,
    world: usize,
    rank: usize,
    step: u64,
) -> Result<Vec<std::ops::Range<u64>>, String> {
    let world = world as u64;
    if world == 0 || !config.global_batch.is_multiple_of(world) {
        return Err(format!(
            "a global batch of {} examples does not split evenly over {world} ranks",
            config.global_batch
        ));
    }
    let per_rank = config.global_batch / world;
    let micro = config.micro_batch.unwrap_or(per_rank).clamp(1, per_rank);
    if !per_rank.is_multiple_of(micro) {
        return Err(format!(
            "{per_rank} examples per rank do not split into micro-batches of {micro}"
        ));
    }
    let first = step * config.global_batch + rank as u64 * per_rank;
    Ok((0..per_rank / micro)
        .map(|m| first + m * micro..first + (m + 1) * micro)
        .collect())
}

/// The rank loop of job type `J` (see the module docs).
pub(crate) async fn run_rank<J: TrainingJob>(call: RankCall) -> Result<RankOutcome, String> {
    let job: J = bincode::deserialize(&call.job)
        .map_err(|e| format!("the job's configuration does not decode ({e})"))?;
    let c = call.config;
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let varmap = VarMap::new();
    let model = job.build(&varmap).map_err(|e| text(&e))?;
    let checkpoints = c
        .checkpoint
        .as_ref()
        .map(|policy| Checkpoints::new(&c.run, &policy.dir));
    let mut outcome = RankOutcome {
        slot: call.slot,
        restarts: fleet::context().map(|c| c.actor_restarts).unwrap_or(0),
        ..RankOutcome::default()
    };
    let mut progress = call.progress;
    // A failure not yet recovered from: (cause, the step it hit, when).
    let mut failure: Option<(String, u64, Instant)> = None;
    let mut rendezvous_deadline = Instant::now() + c.rendezvous_timeout;
    let (mut busy, mut communication, mut timed_steps) = (Duration::ZERO, Duration::ZERO, 0u64);
    let mut ddp = loop {
        let members = current_membership(&c.run).await?;
        if let Some(cause) = members.aborted {
            return Err(format!("the driver stopped the run: {cause}"));
        }
        let Some(rank) = members.slots.iter().position(|s| *s == call.slot) else {
            outcome.retired = true;
            return Ok(outcome);
        };
        let world = members.slots.len();
        let options = GroupOptions {
            rendezvous_timeout: ATTEMPT,
            op_timeout: c.op_timeout,
            ..GroupOptions::default()
        };
        let group_name = group_name(&c.run, members.generation);
        let group = match Group::init_with(&group_name, world, rank, options).await {
            Ok(group) => group,
            Err(CollectiveError::Rendezvous { reason, .. }) => {
                if Instant::now() > rendezvous_deadline {
                    return Err(format!(
                        "group {group_name} did not form in {:?}: {reason}",
                        c.rendezvous_timeout
                    ));
                }
                continue;
            }
            Err(error) => return Err(error.to_string()),
        };
        outcome.formed += 1;
        if outcome.formed > c.max_formations {
            return Err(format!(
                "the group was formed {} times, the limit (lost ranks keep coming back and failing?)",
                c.max_formations
            ));
        }
        outcome.world = world;
        let formed = async {
            let mut ddp = Ddp::new(
                group,
                &varmap,
                DdpConfig {
                    bucket_bytes: c.bucket_bytes,
                    max_grad_norm: c.max_grad_norm,
                },
            )
            .await?;
            let mut optimizer =
                ShardedAdamW::new(c.adamw_params(), c.zero, ddp.update_range(c.zero))?;
            let mut start = 0;
            if let Some(checkpoints) = &checkpoints {
                let restored = checkpoints.restore(&ddp, &mut optimizer).await?;
                // Every rank must resume from the same step (a commit racing with the
                // reads would split them): each learns the others' through the maximum of
                // the value and of its negation.
                let mine = restored.map_or(-1, |s| s as i64);
                let mut steps = vec![mine, -mine];
                ddp.group().all_reduce(&mut steps, ReduceOp::Max).await?;
                if steps[0] != -steps[1] {
                    return Err(TrainError::Invalid(format!(
                        "the ranks read different committed checkpoints (steps {} to {}); run again",
                        -steps[1], steps[0]
                    )));
                }
                match restored {
                    Some(step) => start = step,
                    // Step 0's weights committed first: a group re-formed before the first
                    // periodic checkpoint starts again from the same weights.
                    None => {
                        checkpoints.save(&mut ddp, &optimizer, 0).await?;
                    }
                }
            }
            Ok::<_, TrainError>((ddp, optimizer, start))
        }
        .await;
        let (mut ddp, mut optimizer, start) = match formed {
            Ok(formed) => formed,
            Err(TrainError::Collective(error)) => {
                failure.get_or_insert((error.to_string(), 0, Instant::now()));
                continue;
            }
            Err(error) => return Err(error.to_string()),
        };
        rendezvous_deadline = Instant::now() + c.rendezvous_timeout;
        let mut current = start;
        let trained: Result<(), TrainError> = async {
            let mut first_of_formation = true;
            for step in start..c.steps {
                current = step;
                let started = Instant::now();
                optimizer.set_learning_rate(c.learning_rate.at(step, c.steps));
                let micro_batches =
                    rank_examples(&c, world, rank, step).map_err(TrainError::Invalid)?;
                let mut loss_sum = 0.0f32;
                for examples in &micro_batches {
                    let loss = job.loss(&model, step, examples.clone())?;
                    loss_sum += loss.to_scalar::<f32>()?;
                    ddp.backward(&loss)?;
                }
                let stats = ddp.step_sharded(&mut optimizer).await?;
                let reducing = Instant::now();
                let mut mean = vec![loss_sum / micro_batches.len() as f32];
                ddp.group().all_reduce(&mut mean, ReduceOp::Mean).await?;
                let step_communication = stats.communication + reducing.elapsed();
                if let Some((cause, failed_at_step, since)) = failure.take() {
                    outcome.recoveries.push(Recovery {
                        cause,
                        failed_at_step,
                        resumed_from: start,
                        world,
                        seconds: since.elapsed().as_secs_f64(),
                    });
                }
                let elapsed = started.elapsed();
                if !first_of_formation {
                    // The first step after forming warms up (allocations, connections).
                    busy += elapsed;
                    communication += step_communication;
                    timed_steps += 1;
                }
                first_of_formation = false;
                let evaluate =
                    rank == 0 && c.eval_every.is_some_and(|every| (step + 1) % every == 0);
                let val_loss = if evaluate {
                    job.evaluate(&model)?
                } else {
                    None
                };
                let record = StepRecord {
                    step: step + 1,
                    loss: mean[0],
                    val_loss,
                    world,
                    seconds: elapsed.as_secs_f64(),
                    communication: step_communication.as_secs_f64(),
                };
                record_step(&mut outcome, record.clone());
                if rank == 0 {
                    if let Some(tx) = progress.as_mut() {
                        // Progress is best effort: a driver that stopped listening (or a
                        // sender already used by this rank's earlier instance) costs nothing.
                        if tx.send(record).await.is_err() {
                            progress = None;
                        }
                    }
                }
                if let (Some(checkpoints), Some(policy)) = (&checkpoints, &c.checkpoint) {
                    if policy.every > 0 && (step + 1) % policy.every == 0 {
                        checkpoints.save(&mut ddp, &optimizer, step + 1).await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        match trained {
            Ok(()) => {
                outcome.optimizer_state_bytes = optimizer.state_bytes();
                break ddp;
            }
            Err(TrainError::Collective(error)) if checkpoints.is_some() => {
                tracing::info!(slot = call.slot, %error, "a rank was lost; forming the group again");
                failure = Some((error.to_string(), current, Instant::now()));
            }
            Err(TrainError::Collective(error)) => {
                return Err(format!(
                    "{error}; the run has no checkpoints to resume from (Trainer::checkpoints)"
                ))
            }
            Err(error) => return Err(error.to_string()),
        }
    };
    if let Some(tx) = progress.take() {
        let _ = tx.close().await;
    }
    let parameters = ddp.flat_parameters().map_err(|e| text(&e))?;
    outcome.parameters = parameters.len();
    outcome.digest = digest(&parameters);
    if ddp.group().rank() == 0 {
        outcome.val_loss = match outcome.history.last().and_then(|r| r.val_loss) {
            Some(val) => Some(val),
            None => job.evaluate(&model).map_err(|e| text(&e))?,
        };
        outcome.finish = job.finish(&model).map_err(|e| text(&e))?;
    }
    if !busy.is_zero() {
        outcome.examples_per_s = (timed_steps * c.global_batch) as f64 / busy.as_secs_f64();
        outcome.communication_fraction = communication.as_secs_f64() / busy.as_secs_f64();
    }
    Ok(outcome)
}

/// Appends a step's record; a step trained again after a resume replaces the first
/// attempt's (and the pair is kept, to show that resuming repeats the same computation).
fn record_step(outcome: &mut RankOutcome, record: StepRecord) {
    if let Some(at) = outcome.history.iter().position(|r| r.step == record.step) {
        // Training went back to an earlier step: the records from there on are first
        // attempts, to be compared as the steps come again.
        outcome.first_attempts = outcome.history.split_off(at);
    }
    if let Some(at) = outcome
        .first_attempts
        .iter()
        .position(|r| r.step == record.step)
    {
        let first = outcome.first_attempts.remove(at);
        outcome.replayed.push(Replayed {
            step: record.step,
            first: first.loss,
            again: record.loss,
        });
    }
    outcome.history.push(record);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(global_batch: u64, micro_batch: Option<u64>) -> TrainConfig {
        TrainConfig {
            global_batch,
            micro_batch,
            ..TrainConfig::new("t")
        }
    }

    #[test]
    fn each_rank_takes_an_equal_contiguous_part_of_the_steps_examples() {
        let c = config(8, Some(2));
        assert_eq!(
            rank_examples(&c, 2, 1, 3).expect("splits"),
            vec![28..30, 30..32]
        );
        // One rank takes the whole batch, in the same micro-batch size.
        assert_eq!(
            rank_examples(&c, 1, 0, 3).expect("splits"),
            vec![24..26, 26..28, 28..30, 30..32]
        );
        assert!(rank_examples(&c, 3, 0, 0).is_err());
        assert!(rank_examples(&config(8, Some(3)), 2, 0, 0).is_err());
        assert_eq!(
            rank_examples(&config(8, None), 2, 0, 1).expect("splits"),
            vec![8..12]
        );
    }

    #[test]
    fn a_replayed_step_replaces_the_first_attempt_and_is_kept_as_a_pair() {
        let record = |step, loss| StepRecord {
            step,
            loss,
            val_loss: None,
            world: 2,
            seconds: 0.0,
            communication: 0.0,
        };
        let mut outcome = RankOutcome::default();
        for step in 1..=4 {
            record_step(&mut outcome, record(step, step as f32));
        }
        record_step(&mut outcome, record(3, 3.0));
        record_step(&mut outcome, record(4, 4.5));
        let steps: Vec<u64> = outcome.history.iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        assert_eq!(outcome.replayed.len(), 2);
        assert_eq!(outcome.replayed[1].first, 4.0);
        assert_eq!(outcome.replayed[1].again, 4.5);
    }

    #[test]
    fn the_digest_tells_bits_apart() {
        assert_eq!(digest(&[1.0, 2.0]), digest(&[1.0, 2.0]));
        assert_ne!(digest(&[1.0, 2.0]), digest(&[2.0, 1.0]));
        assert_ne!(digest(&[0.0]), digest(&[-0.0]));
    }
}
