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
//!
//! Failures: each shard is two replica actors (`crate::shard`: chain replication, an
//! acknowledged push is on both), restarted without limit by this process, which watches
//! them ([`Builder::watch_interval`]). A worker's call cut off by a lost replica follows it
//! to its restarted instance (the runtime's task retries); a push sent again is applied
//! once. A worker that is itself restarted (its task retried) calls [`PsWorker::resume`]
//! to go on from the clock the shards have.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::{ObjectRef, Scheduling};
use serde::{Deserialize, Serialize};

use crate::config::{Consistency, KeySpace, Optimizer, PsConfig};
use crate::shard::{replica_name, PsShard, PsShardHandle, ReplicaStatus, Role};
use crate::{PsError, Result};

/// Where the replicas of the shards go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On the least used nodes, round-robin (the default: with two nodes or more, a
    /// shard's two replicas land on different nodes as far as the cluster allows).
    Spread,
    /// Where the scheduler likes (the caller's node first).
    Default,
    /// Shard `i`'s primary on `nodes[i % n]` and its backup on the next node,
    /// `nodes[(i + 1) % n]`, as OSDI'14 replicates a key range to its ring neighbour
    /// (soft: a replica whose node is gone restarts elsewhere).
    Nodes(Vec<String>),
}

impl Placement {
    fn scheduling(&self, shard: usize, role: Role) -> Scheduling {
        match self {
            Placement::Spread => Scheduling::Spread,
            Placement::Default => Scheduling::Default,
            Placement::Nodes(nodes) if nodes.is_empty() => Scheduling::Spread,
            Placement::Nodes(nodes) => {
                let at = shard + usize::from(role == Role::Backup);
                Scheduling::NodeAffinity {
                    node_id: nodes[at % nodes.len()].clone(),
                    soft: true,
                }
            }
        }
    }
}

/// Builds a [`ParameterServer`].
pub struct Builder {
    config: PsConfig,
    seed: u64,
    name: Option<String>,
    placement: Placement,
    checkpoint_dir: Option<PathBuf>,
    checkpoint_interval: Duration,
    watch_interval: Duration,
}

impl Builder {
    /// Server shards (two replica actors each).
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

    /// How long a pull waits for slow workers, and a push for a recovering shard, before
    /// failing (default 60 s).
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

    /// The server's name: its replica actors are named `<name>/shard-<i>` and
    /// `<name>/shard-<i>/backup` (default: unique to this process and moment).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where the replicas go (default [`Placement::Spread`]).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Every replica checkpoints its shard into `dir` (shared storage across nodes) every
    /// `interval`, committed in the GCS (default: `$FLEET_CHECKPOINT_DIR` or
    /// `/tmp/fleet-checkpoints`, every 10 s). A checkpoint bounds what a restarted replica
    /// must take from the other one, and is all there is if both are lost at once.
    pub fn checkpoints(mut self, dir: impl Into<PathBuf>, interval: Duration) -> Self {
        self.checkpoint_dir = Some(dir.into());
        self.checkpoint_interval = interval;
        self
    }

    /// How often the server's owner (this process) checks that every replica answers, so
    /// that a lost one is restarted at once rather than on its next call (default 250 ms).
    pub fn watch_interval(mut self, interval: Duration) -> Self {
        self.watch_interval = interval;
        self
    }

    /// Starts the replica actors (the backups first), and the watch over them.
    pub async fn build(self) -> Result<ParameterServer> {
        self.config.validate().map_err(PsError::Invalid)?;
        if self.checkpoint_interval.is_zero() || self.watch_interval.is_zero() {
            return Err(PsError::Invalid(
                "the checkpoint and watch intervals must be longer than zero".into(),
            ));
        }
        let name = self.name.clone().unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("ps-{}-{nanos:x}", std::process::id())
        });
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(PsError::Invalid(format!(
                "server name {name:?}: give a non-empty name without spaces"
            )));
        }
        let mut primaries = Vec::with_capacity(self.config.shards);
        let mut backups = Vec::with_capacity(self.config.shards);
        for index in 0..self.config.shards {
            backups.push(self.spawn(&name, index, Role::Backup).await?);
            primaries.push(self.spawn(&name, index, Role::Primary).await?);
        }
        let replicas: Vec<(String, PsShardHandle)> = (0..self.config.shards)
            .flat_map(|i| {
                [
                    (replica_name(&name, i, Role::Primary), primaries[i].clone()),
                    (replica_name(&name, i, Role::Backup), backups[i].clone()),
                ]
            })
            .collect();
        let recoveries = Arc::new(Mutex::new(Vec::new()));
        let watch = tokio::spawn(watch(replicas, self.watch_interval, recoveries.clone()));
        Ok(ParameterServer {
            name,
            config: self.config,
            primaries,
            backups,
            recoveries,
            watch: watch.abort_handle(),
        })
    }

    async fn spawn(&self, name: &str, index: usize, role: Role) -> Result<PsShardHandle> {
        let peer = match role {
            Role::Primary => Role::Backup,
            Role::Backup => Role::Primary,
        };
        let mut builder = PsShard::remote(
            self.config.clone(),
            index,
            self.seed,
            role,
            Some(replica_name(name, index, peer)),
        )
        .name(replica_name(name, index, role))
        .num_cpus(0.0)
        // Pulls that wait for slow workers must not hold up the pushes they wait for, nor
        // the backup's catch-up calls: every worker's calls run at once.
        .max_concurrency(4 * self.config.workers as u32 + 64)
        // A process per replica: a shard's primary and backup are separate failure domains
        // even on one node (in a shared host one crash would take both).
        .isolate()
        .max_restarts(-1)
        // A call cut off by a lost replica follows it to its restarted instance; pushes
        // are applied once per (worker, clock), so sending one again is safe.
        .max_task_retries(16)
        .checkpoint_interval(self.checkpoint_interval)
        .answer_before_checkpoint()
        .scheduling(self.placement.scheduling(index, role));
        if let Some(dir) = &self.checkpoint_dir {
            builder = builder.checkpoint_dir(dir);
        }
        builder.spawn().await.map_err(|e| {
            PsError::Fleet(format!("starting {}: {e}", replica_name(name, index, role)))
        })
    }
}

/// A replica that was lost and came back (restarted and caught up), as the owner's watch
/// saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recovery {
    /// The replica's actor name.
    pub replica: String,
    /// Its restarts so far.
    pub restarts: u32,
    /// Seconds from the old instance's last answer to the new instance's first: the outage
    /// as seen from outside, at most one watch interval longer than the real one.
    pub seconds: f64,
}

/// The owner's watch: asks every replica to answer, every `interval`. A call that finds a
/// replica's worker dead makes its owner restart it (the runtime's actor restarts are
/// owner-driven), so a lost replica comes back before a worker's call needs it; an answer
/// from a restarted instance is a [`Recovery`].
async fn watch(
    replicas: Vec<(String, PsShardHandle)>,
    interval: Duration,
    recoveries: Arc<Mutex<Vec<Recovery>>>,
) {
    let mut last: Vec<(Instant, u32)> = vec![(Instant::now(), 0); replicas.len()];
    loop {
        let checks = replicas.iter().map(|(_, handle)| async move {
            fleet::get_timeout(&handle.ping(), WATCH_TIMEOUT).await
        });
        let answers = futures::future::join_all(checks).await;
        for (i, answer) in answers.into_iter().enumerate() {
            let Ok((_, restarts)) = answer else {
                continue;
            };
            let (answered_at, known) = last[i];
            if restarts > known {
                let recovery = Recovery {
                    replica: replicas[i].0.clone(),
                    restarts,
                    seconds: answered_at.elapsed().as_secs_f64(),
                };
                tracing::info!(replica = %recovery.replica, seconds = recovery.seconds, "replica back");
                recoveries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(recovery);
            }
            last[i] = (Instant::now(), restarts);
        }
        tokio::time::sleep(interval).await;
    }
}

/// How long one watch check waits for its answer.
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A running parameter server: its shards' replica actors, watched by this process.
pub struct ParameterServer {
    name: String,
    config: PsConfig,
    primaries: Vec<PsShardHandle>,
    backups: Vec<PsShardHandle>,
    recoveries: Arc<Mutex<Vec<Recovery>>>,
    watch: tokio::task::AbortHandle,
}

impl Drop for ParameterServer {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl ParameterServer {
    /// A builder with defaults: 1 shard, 2²⁰ hashed keys of width 1, SGD at 0.1, BSP, 1
    /// worker, spread, checkpoints every 10 s.
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
            name: None,
            placement: Placement::Spread,
            checkpoint_dir: None,
            checkpoint_interval: Duration::from_secs(10),
            watch_interval: Duration::from_millis(250),
        }
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
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
            shards: self.primaries.clone(),
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
            .map(|(shard, slots)| (*shard, self.primaries[*shard].read(slots.clone())))
            .collect();
        plan.gather(&self.config, collect(calls).await?)
    }

    /// Per shard: clocks pushed per worker, and pushes applied per worker.
    pub async fn clocks(&self) -> Result<Vec<(Vec<u64>, Vec<u64>)>> {
        let calls: Vec<ObjectRef<(Vec<u64>, Vec<u64>)>> =
            self.primaries.iter().map(|s| s.clocks()).collect();
        fleet::get_all(&calls).await.map_err(PsError::from_call)
    }

    /// Per shard: its primary's and its backup's status (sequence, clocks, digest).
    pub async fn replicas(&self) -> Result<Vec<(ReplicaStatus, ReplicaStatus)>> {
        let primaries: Vec<ObjectRef<ReplicaStatus>> =
            self.primaries.iter().map(|s| s.status()).collect();
        let backups: Vec<ObjectRef<ReplicaStatus>> =
            self.backups.iter().map(|s| s.status()).collect();
        let primaries = fleet::get_all(&primaries)
            .await
            .map_err(PsError::from_call)?;
        let backups = fleet::get_all(&backups).await.map_err(PsError::from_call)?;
        Ok(primaries.into_iter().zip(backups).collect())
    }

    /// The replicas that were lost and came back so far, with their recovery times.
    pub fn recoveries(&self) -> Vec<Recovery> {
        self.recoveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Checkpoints every replica now; answers once every checkpoint is committed.
    pub async fn checkpoint(&self) -> Result<()> {
        let calls: Vec<ObjectRef<u64>> = self
            .primaries
            .iter()
            .chain(&self.backups)
            .map(|s| s.checkpoint())
            .collect();
        fleet::get_all(&calls)
            .await
            .map(|_| ())
            .map_err(PsError::from_call)
    }

    /// Stops the watch and the replica actors.
    pub async fn shutdown(self) -> Result<()> {
        self.watch.abort();
        // Every replica is asked to stop, even after one refused; the first refusal is told.
        let mut first_error = None;
        for shard in self.primaries.iter().chain(&self.backups) {
            if let Err(error) = fleet::kill(shard.raw()).await {
                first_error.get_or_insert(PsError::Fleet(error.to_string()));
            }
        }
        first_error.map_or(Ok(()), Err)
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

/// A shard's answer to a push-then-pull: the pushes applied from the worker, and the
/// weights pulled.
type Answered = (u64, Vec<f32>);

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

    /// Goes on from where the shards have this worker: the first clock some shard has not
    /// applied (a worker restarted after a failure, e.g. its task retried on another node,
    /// calls it first). Clocks some shards applied are sent to all again; the ones that
    /// have them answer without applying twice. Returns that clock.
    pub async fn resume(&mut self) -> Result<u64> {
        let calls: Vec<ObjectRef<(Vec<u64>, Vec<u64>)>> =
            self.shards.iter().map(|s| s.clocks()).collect();
        let clocks = fleet::get_all(&calls).await.map_err(PsError::from_call)?;
        self.pending.clear();
        self.clock = clocks
            .iter()
            .map(|(pushed, _)| pushed.get(self.id).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        Ok(self.clock)
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

    /// Per shard: the distinct slots of `keys` and their gradients (a key given twice has
    /// its gradients summed); every shard is in the map, most with nothing.
    fn push_parts(&self, keys: &[u64], grads: &[f32]) -> Result<Vec<(Vec<u64>, Vec<f32>)>> {
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
        let mut parts: Vec<(Vec<u64>, Vec<f32>)> = (0..self.shards.len())
            .map(|shard| {
                let slots = plan.per_shard.get(&shard).cloned().unwrap_or_default();
                let sums = vec![0.0; slots.len() * width];
                (slots, sums)
            })
            .collect();
        for (k, (shard, index)) in plan.places.iter().enumerate() {
            let sums = &mut parts[*shard].1;
            for j in 0..width {
                sums[index * width + j] += grads[k * width + j];
            }
        }
        Ok(parts)
    }

    /// Sends the gradients of `keys` (`width` floats each; a key given twice has its
    /// gradients summed) for this worker's clock and moves to the next; returns the clock
    /// sent, for [`PsWorker::wait`]. The shards apply it as they receive it.
    pub fn push_async(&mut self, keys: &[u64], grads: &[f32]) -> Result<u64> {
        let parts = self.push_parts(keys, grads)?;
        let clock = self.clock;
        let answers = parts
            .into_iter()
            .enumerate()
            .map(|(shard, (slots, grads))| self.shards[shard].push(self.id, clock, slots, grads))
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

    /// Pushes the gradients of `keys` for this worker's clock and pulls the weights of
    /// `next` at the next clock, in **one message per shard** (ps-lite's PushPull, with the
    /// next mini-batch's keys: a worker's loop needs one round trip per batch). The push
    /// is acknowledged (on both replicas) when this returns.
    pub async fn push_then_pull(
        &mut self,
        keys: &[u64],
        grads: &[f32],
        next: &[u64],
    ) -> Result<Vec<f32>> {
        let parts = self.push_parts(keys, grads)?;
        let plan = Plan::of(&self.config, next)?;
        let clock = self.clock;
        let calls: Vec<(usize, ObjectRef<Answered>)> = parts
            .into_iter()
            .enumerate()
            .map(|(shard, (slots, grads))| {
                let pull = plan.per_shard.get(&shard).cloned().unwrap_or_default();
                (
                    shard,
                    self.shards[shard].push_then_pull(self.id, clock, slots, grads, pull),
                )
            })
            .collect();
        self.clock += 1;
        let answers = collect(calls)
            .await?
            .into_iter()
            .map(|(shard, (_, values))| (shard, values))
            .collect();
        plan.gather(&self.config, answers)
    }

    /// Pushes the gradients of `keys` and pulls their weights at the next clock (ps-lite's
    /// `PushPull`), in one message per shard.
    pub async fn push_pull(&mut self, keys: &[u64], grads: &[f32]) -> Result<Vec<f32>> {
        self.push_then_pull(keys, grads, keys).await
    }
}
