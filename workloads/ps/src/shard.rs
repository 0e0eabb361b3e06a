//! One server shard, replicated on two actors: a shard's slots with their values and
//! optimizer state, the workers' clocks, and the replica actor that serves them.
//!
//! **Chain replication** (two links, as OSDI'14 replicates key ranges to a ring neighbour):
//! the *primary* applies a push, numbers it (the shard's update sequence) and forwards it
//! to the *backup*, which applies updates strictly in sequence order; the push is
//! acknowledged only once the backup applied it. So every acknowledged push is on both
//! replicas, and losing either one loses none of them.
//!
//! **Recovery.** Both replicas are checkpointed actors (`#[fleet::actor(checkpoint)]`,
//! periodic checkpoints committed in the GCS) restarted without limit by their owner. A
//! restarted replica comes back from its last checkpoint and, before it serves anything,
//! catches up from the other one:
//! - a restarted *primary* takes the backup's state (`handover`), which holds every
//!   acknowledged push; pushes it had applied but not yet replicated were never
//!   acknowledged, and their workers send them again;
//! - a restarted *backup* takes the primary's state (`snapshot`);
//! - only when both replicas are lost at once does a primary fall back to its own
//!   checkpoint, losing the pushes since (documented in `docs/parameter-server.md`).
//!
//! **Epochs** keep a dead primary's updates out: every primary incarnation has an epoch
//! (`2 · restarts`, or `2 · restarts + 1` when it fell back to its checkpoint); `handover`
//! moves the backup to the new primary's epoch, updates of an older epoch are refused, and
//! an update of a newer epoch the backup was not handed over to (the fallback) makes it
//! take the primary's state first.
//!
//! **Exactly once.** A push is identified by its worker and clock: a replica applies each
//! (worker, clock) once, so a push sent again after a failure (by the runtime's retries or
//! a restarted worker) is answered without being applied twice, once it is replicated.
//!
//! A replica's methods take `&self` and the actor runs many calls at once
//! (`max_concurrency`), so a pull that waits for slow workers (BSP, SSP) does not hold up
//! the pushes it waits for. The state sits behind a mutex never held across an await; an
//! update wakes the waiting pulls.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{mix, PsConfig};

/// A shard's data and clocks (no I/O; the actor wraps it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardState {
    config: PsConfig,
    slots: Range<u64>,
    /// Per slot, `width` values: the weights (SGD, Adagrad) or FTRL's `z`.
    values: Vec<f32>,
    /// Per value, the sum of squared gradients (Adagrad, FTRL).
    squares: Vec<f32>,
    /// Per worker, how many clocks it has pushed without a gap (clocks `0..pushed` are all
    /// applied): what the consistency models wait on.
    pushed: Vec<u64>,
    /// Per worker, the clocks applied past a gap (pushes that arrived out of order).
    ahead: Vec<BTreeSet<u64>>,
    /// Per worker, pushes applied here.
    applied: Vec<u64>,
    /// Updates applied: the replication sequence (update `seq` is the `seq`-th).
    seq: u64,
    /// The primary incarnation whose sequence this state follows.
    epoch: u32,
}

impl ShardState {
    /// Shard `index` of `config`, its weights drawn from `seed`.
    pub fn new(config: PsConfig, index: usize, seed: u64) -> Self {
        let slots = config.shard_slots(index);
        let width = config.width;
        let len = (slots.end - slots.start) as usize * width;
        let scale = config.init_scale;
        let values = (0..len)
            .map(|i| {
                if scale == 0.0 {
                    return 0.0;
                }
                let bits = mix(seed ^ mix(slots.start * width as u64 + i as u64));
                ((bits >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        ShardState {
            slots,
            values,
            squares: vec![0.0; len],
            pushed: vec![0; config.workers],
            ahead: vec![BTreeSet::new(); config.workers],
            applied: vec![0; config.workers],
            seq: 0,
            epoch: 0,
            config,
        }
    }

    fn offset(&self, slot: u64) -> Result<usize, String> {
        if !self.slots.contains(&slot) {
            return Err(format!(
                "slot {slot} is not on this shard (slots {}..{}): the worker's shard map is stale",
                self.slots.start, self.slots.end
            ));
        }
        Ok((slot - self.slots.start) as usize * self.config.width)
    }

    fn check_worker(&self, worker: usize) -> Result<(), String> {
        if worker >= self.config.workers {
            return Err(format!(
                "worker {worker} is not one of the server's {} workers",
                self.config.workers
            ));
        }
        Ok(())
    }

    /// The weights of `slots` (`width` each, in order).
    pub fn read(&self, slots: &[u64]) -> Result<Vec<f32>, String> {
        let width = self.config.width;
        let mut out = Vec::with_capacity(slots.len() * width);
        for slot in slots {
            let at = self.offset(*slot)?;
            for i in at..at + width {
                out.push(
                    self.config
                        .optimizer
                        .weight(self.values[i], self.squares[i]),
                );
            }
        }
        Ok(out)
    }

    /// Whether `worker`'s push of `clock` was applied here.
    pub fn has_applied(&self, worker: usize, clock: u64) -> bool {
        clock < self.pushed[worker] || self.ahead[worker].contains(&clock)
    }

    /// Applies `worker`'s gradients of clock `clock` (`width` per slot) as the next update
    /// of the sequence; `Ok(false)` when that push was applied before (nothing changes).
    /// Nothing is applied when anything in the push is wrong.
    pub fn apply(
        &mut self,
        worker: usize,
        clock: u64,
        slots: &[u64],
        grads: &[f32],
    ) -> Result<bool, String> {
        self.check_worker(worker)?;
        let width = self.config.width;
        if grads.len() != slots.len() * width {
            return Err(format!(
                "{} gradient values for {} keys of width {width}: expected {}",
                grads.len(),
                slots.len(),
                slots.len() * width
            ));
        }
        if let Some(bad) = grads.iter().find(|g| !g.is_finite()) {
            return Err(format!("a gradient value is {bad}: not applied"));
        }
        let offsets = slots
            .iter()
            .map(|s| self.offset(*s))
            .collect::<Result<Vec<_>, _>>()?;
        if self.has_applied(worker, clock) {
            return Ok(false);
        }
        let optimizer = self.config.optimizer;
        for (k, at) in offsets.into_iter().enumerate() {
            for j in 0..width {
                let i = at + j;
                optimizer.apply(
                    &mut self.values[i],
                    &mut self.squares[i],
                    grads[k * width + j],
                );
            }
        }
        let ahead = &mut self.ahead[worker];
        ahead.insert(clock);
        while ahead.remove(&self.pushed[worker]) {
            self.pushed[worker] += 1;
        }
        self.applied[worker] += 1;
        self.seq += 1;
        Ok(true)
    }

    /// Whether a pull of `clock` may read now.
    pub fn readable(&self, clock: u64) -> bool {
        match self.config.consistency.required(clock) {
            None => true,
            Some(needed) => self.pushed.iter().all(|p| *p >= needed),
        }
    }

    /// The workers a pull of `clock` waits for.
    pub fn lagging(&self, clock: u64) -> Vec<usize> {
        let needed = self.config.consistency.required(clock).unwrap_or(0);
        (0..self.pushed.len())
            .filter(|w| self.pushed[*w] < needed)
            .collect()
    }

    /// Clocks pushed without a gap, per worker.
    pub fn pushed(&self) -> &[u64] {
        &self.pushed
    }

    /// Pushes applied, per worker.
    pub fn applied(&self) -> &[u64] {
        &self.applied
    }

    /// Updates applied (the replication sequence).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A hash of the values and optimizer state (replicas that applied the same updates in
    /// the same order have the same one).
    pub fn digest(&self) -> u64 {
        let mut hash = 0xCBF2_9CE4_8422_2325u64;
        for v in self.values.iter().chain(&self.squares) {
            hash = (hash ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01B3);
        }
        hash
    }
}

/// Which link of a shard's chain a replica is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Serves the workers; forwards every update to the backup.
    Primary,
    /// Applies the primary's updates in sequence; hands its state over when the primary
    /// comes back.
    Backup,
}

/// The actor name of shard `index`'s replica `role` in server `server`.
pub fn replica_name(server: &str, index: usize, role: Role) -> String {
    match role {
        Role::Primary => format!("{server}/shard-{index}"),
        Role::Backup => format!("{server}/shard-{index}/backup"),
    }
}

/// What a replica reports of itself: for checks and the chaos workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Which link.
    pub role: Role,
    /// Updates applied.
    pub seq: u64,
    /// The primary incarnation followed.
    pub epoch: u32,
    /// Pushes applied per worker.
    pub applied: Vec<u64>,
    /// Clocks pushed without a gap, per worker.
    pub pushed: Vec<u64>,
    /// [`ShardState::digest`].
    pub digest: u64,
    /// How many times this replica's actor was restarted.
    pub restarts: u32,
    /// The process it runs in.
    pub pid: u32,
}

/// How long a restarted primary waits for its backup's state before it falls back to its
/// own checkpoint (the backup is then taken to be lost too).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts to replicate an update the backup did not take.
const REPLICATE_RETRY: Duration = Duration::from_millis(100);

/// Sequence numbers replicated so far (the primary's view): all of `1..=upto`, and the
/// ones past a gap.
#[derive(Debug, Default)]
struct Replicated {
    upto: u64,
    past_gap: BTreeSet<u64>,
}

impl Replicated {
    fn complete(&mut self, seq: u64) {
        if seq <= self.upto {
            return;
        }
        self.past_gap.insert(seq);
        while self.past_gap.remove(&(self.upto + 1)) {
            self.upto += 1;
        }
    }
}

/// What a replica keeps only while it runs.
#[derive(Debug, Default)]
struct Volatile {
    /// An update was applied (pulls waiting on clocks, backups waiting on sequence).
    changed: tokio::sync::Notify,
    /// Whether this instance's state is current (a restored one catches up first).
    synced: AtomicBool,
    /// One catch-up at a time.
    syncing: tokio::sync::Mutex<()>,
    /// The other replica, once looked up.
    peer: Mutex<Option<PsShardHandle>>,
    /// The primary's replicated sequence numbers, and a wakeup when they move.
    replicated: Mutex<Replicated>,
    replicated_changed: tokio::sync::Notify,
    /// The primary's updates not yet sent to the backup, in sequence order, and whether a
    /// batch is on its way (one at a time, so the backup receives them in order).
    outbox: Mutex<Outbox>,
}

/// Updates waiting to be replicated (see [`PsShard::replicate_through`]).
#[derive(Debug, Default)]
struct Outbox {
    queue: Vec<Update>,
    sending: bool,
}

/// A batch on its way to the backup. Dropped with its batch still in it (not replicated: an
/// error, or the sending call's future dropped), it puts the batch back at the front of the
/// outbox; either way it clears `sending` and wakes the waiting pushes, so one of them sends
/// next.
struct InFlightBatch<'a> {
    volatile: &'a Volatile,
    batch: Option<Vec<Update>>,
}

impl Drop for InFlightBatch<'_> {
    fn drop(&mut self) {
        {
            let mut outbox = self
                .volatile
                .outbox
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            outbox.sending = false;
            if let Some(batch) = self.batch.take() {
                let later = std::mem::replace(&mut outbox.queue, batch);
                outbox.queue.extend(later);
            }
        }
        self.volatile.replicated_changed.notify_waiters();
    }
}

/// One update as the primary forwards it: the `seq`-th of the sequence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Update {
    seq: u64,
    worker: usize,
    clock: u64,
    slots: Vec<u64>,
    grads: Vec<f32>,
}

/// One replica of one shard of a parameter server (see the module docs).
#[fleet::actor(checkpoint)]
#[derive(Serialize, Deserialize)]
pub struct PsShard {
    index: usize,
    role: Role,
    /// The other replica's actor name (`None`: a shard without a backup).
    peer: Option<String>,
    state: Mutex<ShardState>,
    #[serde(skip)]
    volatile: Volatile,
}

impl PsShard {
    fn with_state<T>(&self, f: impl FnOnce(&mut ShardState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    fn named(&self, error: impl std::fmt::Display) -> String {
        format!("shard {} ({:?}): {error}", self.index, self.role)
    }

    fn restarts() -> u32 {
        fleet::context().map_or(0, |c| c.actor_restarts)
    }

    /// The other replica's handle (`None` without a backup).
    async fn peer_handle(&self) -> Result<Option<PsShardHandle>, String> {
        let Some(name) = &self.peer else {
            return Ok(None);
        };
        if let Some(handle) = self
            .volatile
            .peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(Some(handle));
        }
        let handle = fleet::get_actor::<PsShard>(name)
            .await
            .map_err(|e| self.named(format!("its peer replica {name}: {e}")))?;
        *self.volatile.peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle.clone());
        Ok(Some(handle))
    }

    /// Catches a restored replica up from the other one, once (see the module docs).
    async fn ensure_synced(&self) -> Result<(), String> {
        if self.volatile.synced.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one_at_a_time = self.volatile.syncing.lock().await;
        if self.volatile.synced.load(Ordering::Acquire) {
            return Ok(());
        }
        let peer = self.peer_handle().await?;
        match (self.role, peer) {
            (_, None) => {}
            (Role::Primary, Some(backup)) => {
                let epoch = 2 * Self::restarts();
                let handed = fleet::get_timeout(&backup.handover(epoch), HANDOVER_TIMEOUT).await;
                let seq = match handed {
                    Ok(state) => {
                        let seq = state.seq;
                        self.with_state(|s| *s = state);
                        seq
                    }
                    Err(error) => {
                        // Both replicas were lost (or the backup cannot be reached): the
                        // checkpoint is all there is, and the backup must follow it.
                        tracing::warn!(shard = self.index, %error, "the backup did not hand its state over: going on from this replica's checkpoint");
                        self.with_state(|s| {
                            s.epoch = epoch + 1;
                            s.seq
                        })
                    }
                };
                let mut replicated = self
                    .volatile
                    .replicated
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                *replicated = Replicated {
                    upto: seq,
                    past_gap: BTreeSet::new(),
                };
            }
            (Role::Backup, Some(primary)) => {
                let state = fleet::get_timeout(&primary.snapshot(), HANDOVER_TIMEOUT)
                    .await
                    .map_err(|e| {
                        self.named(format!(
                            "catching up from the primary after a restart: {e} (try again once it is back)"
                        ))
                    })?;
                self.with_state(|s| *s = state);
            }
        }
        self.volatile.synced.store(true, Ordering::Release);
        self.volatile.changed.notify_waiters();
        Ok(())
    }

    fn primary_only(&self, method: &str) -> Result<(), String> {
        if self.role != Role::Primary {
            return Err(self.named(format!("{method} goes to the primary, not the backup")));
        }
        Ok(())
    }

    /// Returns once updates `1..=seq` are all on the backup. Updates go out in batches, one
    /// batch at a time: a push that finds no batch on its way sends everything queued (its
    /// own update and the ones that arrived meanwhile) and waits for the backup's answer;
    /// the others wait for that answer, and the next one sends what queued up behind it. So
    /// concurrent pushes share one replication call instead of one each.
    async fn replicate_through(&self, backup: &PsShardHandle, seq: u64) -> Result<(), String> {
        let deadline = Instant::now() + self.with_state(|s| s.config.wait_timeout);
        loop {
            let notified = self.volatile.replicated_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let upto = self
                .volatile
                .replicated
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .upto;
            if upto >= seq {
                return Ok(());
            }
            let batch = {
                let mut outbox = self
                    .volatile
                    .outbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if outbox.sending || outbox.queue.is_empty() {
                    None
                } else {
                    outbox.sending = true;
                    Some(std::mem::take(&mut outbox.queue))
                }
            };
            let Some(batch) = batch else {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, notified).await.is_err() {
                    return Err(self.named(format!(
                        "update {seq} is not on the backup yet (replicated up to {upto}): is the backup recovering?"
                    )));
                }
                continue;
            };
            // Whatever happens to this call (an answer, an error, or the future dropped),
            // the guard hands the outbox back: unsent updates at the front, not sending.
            let mut in_flight = InFlightBatch {
                volatile: &self.volatile,
                batch: Some(batch),
            };
            let sent = match &in_flight.batch {
                Some(batch) => self.send_batch(backup, batch, deadline).await,
                None => Ok(()),
            };
            if sent.is_ok() {
                if let Some(batch) = in_flight.batch.take() {
                    let mut replicated = self
                        .volatile
                        .replicated
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    for update in &batch {
                        replicated.complete(update.seq);
                    }
                }
            }
            drop(in_flight);
            sent?;
        }
    }

    /// Sends one batch until the backup takes it (the runtime follows the backup through
    /// its restarts) or `deadline`; a refusal ends it.
    async fn send_batch(
        &self,
        backup: &PsShardHandle,
        batch: &[Update],
        deadline: Instant,
    ) -> Result<(), String> {
        let epoch = self.with_state(|s| s.epoch);
        loop {
            let error = match backup.replicate(epoch, batch.to_vec()).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let refused = error
                .remote()
                .is_some_and(|r| r.kind == fleet::TaskFailure::Application);
            if refused || Instant::now() >= deadline {
                return Err(self.named(format!(
                    "updates {}..={} were not replicated to the backup: {error}",
                    batch.first().map_or(0, |u| u.seq),
                    batch.last().map_or(0, |u| u.seq)
                )));
            }
            tokio::time::sleep(REPLICATE_RETRY).await;
        }
    }

    /// A push's work on the primary: applied (once), queued for the backup, and answered
    /// once the backup has it: the pushes applied from `worker` so far.
    async fn apply_push(
        &self,
        worker: usize,
        clock: u64,
        slots: Vec<u64>,
        grads: Vec<f32>,
    ) -> Result<u64, String> {
        self.ensure_synced().await?;
        let backup = self.peer_handle().await?;
        // Applied, numbered and queued under one lock: the queue is in sequence order.
        let outcome = self.with_state(|s| {
            let fresh = s.apply(worker, clock, &slots, &grads)?;
            if fresh && backup.is_some() {
                self.volatile
                    .outbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .queue
                    .push(Update {
                        seq: s.seq,
                        worker,
                        clock,
                        slots,
                        grads,
                    });
            }
            Ok::<_, String>((s.seq, s.applied[worker]))
        });
        let (seq, applied) = outcome.map_err(|e| self.named(e))?;
        self.volatile.changed.notify_waiters();
        if let Some(backup) = backup {
            // A push applied before is answered once everything applied so far is on the
            // backup too (its first attempt may still be on its way there).
            self.replicate_through(&backup, seq).await?;
        }
        Ok(applied)
    }

    /// A pull's work on the primary: the weights of `slots` once the consistency model lets
    /// worker `worker` read at `clock`.
    async fn read_at(&self, worker: usize, clock: u64, slots: &[u64]) -> Result<Vec<f32>, String> {
        self.ensure_synced().await?;
        let timeout = self.with_state(|s| s.config.wait_timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.volatile.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let ready = self.with_state(|s| {
                s.check_worker(worker)?;
                Ok::<_, String>(s.readable(clock).then(|| s.read(slots)))
            })?;
            if let Some(values) = ready {
                return values;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                let lagging = self.with_state(|s| s.lagging(clock));
                return Err(format!(
                    "shard {}: worker {worker}'s pull at clock {clock} waited {timeout:?} for worker(s) {lagging:?} to push (are they alive? the consistency model waits for every worker)",
                    self.index
                ));
            }
        }
    }
}

#[fleet::actor]
impl PsShard {
    pub fn new(
        config: PsConfig,
        index: usize,
        seed: u64,
        role: Role,
        peer: Option<String>,
    ) -> Self {
        let shard = PsShard {
            index,
            role,
            peer,
            state: Mutex::new(ShardState::new(config, index, seed)),
            volatile: Volatile::default(),
        };
        // A first instance starts from the seeded state both replicas share; a restarted
        // one without a checkpoint yet must catch up like a restored one.
        shard
            .volatile
            .synced
            .store(Self::restarts() == 0, Ordering::Release);
        shard
    }

    /// The weights of `slots`, once the consistency model allows worker `worker` to read
    /// at `clock` (an error naming the slow workers after the wait timeout).
    pub async fn pull(
        &self,
        worker: usize,
        clock: u64,
        slots: Vec<u64>,
    ) -> Result<Vec<f32>, String> {
        self.primary_only("a pull")?;
        self.read_at(worker, clock, &slots).await
    }

    /// Applies worker `worker`'s gradients of clock `clock` and answers (once the backup
    /// applied them too) the pushes applied from that worker so far. A push applied before
    /// is not applied again. An empty push only advances the worker's clock.
    pub async fn push(
        &self,
        worker: usize,
        clock: u64,
        slots: Vec<u64>,
        grads: Vec<f32>,
    ) -> Result<u64, String> {
        self.primary_only("a push")?;
        self.apply_push(worker, clock, slots, grads).await
    }

    /// A push of clock `clock`, then a pull of `pull_slots` at clock `clock + 1`, in one
    /// message (ps-lite's PushPull): the pushes applied from the worker, and the weights.
    pub async fn push_then_pull(
        &self,
        worker: usize,
        clock: u64,
        slots: Vec<u64>,
        grads: Vec<f32>,
        pull_slots: Vec<u64>,
    ) -> Result<(u64, Vec<f32>), String> {
        self.primary_only("a push")?;
        // The read waits for the push to be applied here, not for the backup: it runs
        // while the push is being replicated, and the answer waits for both. (Caught up
        // and with the backup's handle first, the push is applied in its first poll, before
        // the read starts.)
        self.ensure_synced().await?;
        self.peer_handle().await?;
        let (applied, values) = tokio::join!(self.apply_push(worker, clock, slots, grads), async {
            tokio::task::yield_now().await;
            self.read_at(worker, clock + 1, &pull_slots).await
        });
        Ok((applied?, values?))
    }

    /// The backup's side of replication: applies the primary (incarnation `epoch`)'s
    /// `updates`, consecutive in its sequence, each after every update before it.
    pub async fn replicate(&self, epoch: u32, updates: Vec<Update>) -> Result<(), String> {
        if self.role != Role::Backup {
            return Err(self.named("only a backup takes replicated updates"));
        }
        self.ensure_synced().await?;
        let deadline = Instant::now() + self.with_state(|s| s.config.wait_timeout);
        enum Step {
            Done,
            Wait,
            CatchUp,
        }
        for update in &updates {
            let seq = update.seq;
            loop {
                let notified = self.volatile.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let step = self.with_state(|s| {
                    if epoch < s.epoch {
                        return Err(format!(
                            "update {seq} comes from primary epoch {epoch}, older than epoch {}: refused",
                            s.epoch
                        ));
                    }
                    if epoch > s.epoch {
                        return Ok(Step::CatchUp);
                    }
                    if seq <= s.seq {
                        return Ok(Step::Done);
                    }
                    if seq > s.seq + 1 {
                        return Ok(Step::Wait);
                    }
                    match s.apply(update.worker, update.clock, &update.slots, &update.grads)? {
                        true => Ok(Step::Done),
                        false => Err(format!(
                            "update {seq} (worker {}, clock {}) was applied before under another number: the replicas diverged",
                            update.worker, update.clock
                        )),
                    }
                });
                match step.map_err(|e| self.named(e))? {
                    Step::Done => {
                        self.volatile.changed.notify_waiters();
                        break;
                    }
                    Step::CatchUp => {
                        // A primary that came back from its own checkpoint: take its state.
                        self.volatile.synced.store(false, Ordering::Release);
                        self.ensure_synced().await?;
                        if self.with_state(|s| s.epoch) < epoch {
                            return Err(self.named(format!(
                                "caught up, yet the primary's epoch is older than {epoch}"
                            )));
                        }
                    }
                    Step::Wait => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if tokio::time::timeout(left, notified).await.is_err() {
                            let at = self.with_state(|s| s.seq);
                            return Err(self.named(format!(
                                "update {seq} waited for update {} that never came",
                                at + 1
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The backup's state for a restarted primary of epoch `epoch`, which takes it over;
    /// updates of older epochs are refused from here on.
    pub fn handover(&self, epoch: u32) -> Result<ShardState, String> {
        if self.role != Role::Backup || !self.volatile.synced.load(Ordering::Acquire) {
            return Err(self.named("no current backup state to hand over"));
        }
        self.with_state(|s| {
            if epoch < s.epoch {
                return Err(format!(
                    "a primary of epoch {epoch} asked for the state, but epoch {} took it",
                    s.epoch
                ));
            }
            s.epoch = epoch;
            Ok(s.clone())
        })
        .map_err(|e| self.named(e))
    }

    /// The primary's state, for a restarted backup.
    pub async fn snapshot(&self) -> Result<ShardState, String> {
        self.primary_only("snapshot")?;
        self.ensure_synced().await?;
        Ok(self.with_state(|s| s.clone()))
    }

    /// Clocks pushed per worker (without a gap), and pushes applied per worker.
    pub async fn clocks(&self) -> Result<(Vec<u64>, Vec<u64>), String> {
        self.ensure_synced().await?;
        Ok(self.with_state(|s| (s.pushed().to_vec(), s.applied().to_vec())))
    }

    /// The weights of `slots`, without waiting.
    pub async fn read(&self, slots: Vec<u64>) -> Result<Vec<f32>, String> {
        self.ensure_synced().await?;
        self.with_state(|s| s.read(&slots))
    }

    /// Answers once this replica is current (caught up after a restart): its sequence and
    /// how many times it was restarted.
    /// The owner's watch calls it, so a lost replica is restarted without waiting for a
    /// worker's call.
    pub async fn ping(&self) -> Result<(u64, u32), String> {
        self.ensure_synced().await?;
        Ok((self.with_state(|s| s.seq), Self::restarts()))
    }

    /// This replica's sequence, clocks and digest (caught up first).
    pub async fn status(&self) -> Result<ReplicaStatus, String> {
        self.ensure_synced().await?;
        Ok(self.with_state(|s| ReplicaStatus {
            role: self.role,
            seq: s.seq,
            epoch: s.epoch,
            applied: s.applied.clone(),
            pushed: s.pushed.clone(),
            digest: s.digest(),
            restarts: Self::restarts(),
            pid: std::process::id(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Consistency, KeySpace, Optimizer};

    fn state(consistency: Consistency) -> ShardState {
        let config = PsConfig {
            key_space: KeySpace::Dense { keys: 10 },
            width: 2,
            optimizer: Optimizer::Sgd { lr: 0.5 },
            consistency,
            workers: 2,
            shards: 2,
            wait_timeout: std::time::Duration::from_secs(1),
            init_scale: 0.0,
        };
        ShardState::new(config, 1, 7)
    }

    #[test]
    fn a_push_applies_to_its_slots_and_advances_the_workers_clock() {
        let mut s = state(Consistency::Bsp);
        s.apply(0, 0, &[5, 9], &[1.0, 2.0, 3.0, 4.0])
            .expect("applies");
        assert_eq!(
            s.read(&[9, 5]).expect("reads"),
            vec![-1.5, -2.0, -0.5, -1.0]
        );
        assert_eq!(s.pushed(), &[1, 0]);
        assert_eq!(s.applied(), &[1, 0]);
    }

    #[test]
    fn bsp_and_ssp_pulls_wait_for_the_slowest_worker_and_asp_never() {
        let mut s = state(Consistency::Bsp);
        assert!(s.readable(0));
        s.apply(0, 0, &[], &[]).expect("applies");
        assert!(!s.readable(1));
        assert_eq!(s.lagging(1), vec![1]);
        s.apply(1, 0, &[], &[]).expect("applies");
        assert!(s.readable(1));
        let mut s = state(Consistency::Ssp(2));
        for clock in 0..3 {
            s.apply(0, clock, &[], &[]).expect("applies");
        }
        // Worker 0 is 3 clocks ahead of worker 1, which has pushed nothing.
        assert!(s.readable(2) && !s.readable(3));
        assert!(state(Consistency::Asp).readable(1_000));
    }

    #[test]
    fn each_push_is_applied_once_in_any_order_and_clocks_count_without_gaps() {
        let mut s = state(Consistency::Asp);
        assert!(s.apply(0, 1, &[5], &[1.0, 1.0]).expect("applies"));
        // Clock 1 before clock 0: applied, but the worker's clock waits for 0.
        assert_eq!(s.pushed(), &[0, 0]);
        assert!(!s.apply(0, 1, &[5], &[1.0, 1.0]).expect("a repeat"));
        assert!(s.apply(0, 0, &[5], &[1.0, 1.0]).expect("applies"));
        assert_eq!(s.pushed(), &[2, 0]);
        assert!(!s.apply(0, 0, &[5], &[1.0, 1.0]).expect("a repeat"));
        assert_eq!(s.applied(), &[2, 0]);
        assert_eq!(s.seq(), 2);
        assert_eq!(s.read(&[5]).expect("reads"), vec![-1.0, -1.0]);
    }

    #[test]
    fn replicated_sequence_numbers_count_up_to_the_first_gap() {
        let mut r = Replicated::default();
        r.complete(2);
        assert_eq!(r.upto, 0);
        r.complete(1);
        r.complete(1);
        assert_eq!(r.upto, 2);
        r.complete(4);
        r.complete(3);
        assert_eq!((r.upto, r.past_gap.len()), (4, 0));
    }

    #[test]
    fn replicas_applying_the_same_updates_in_order_have_the_same_digest() {
        let (mut a, mut b) = (state(Consistency::Asp), state(Consistency::Asp));
        for s in [&mut a, &mut b] {
            s.apply(0, 0, &[5], &[1.0, 2.0]).expect("applies");
            s.apply(1, 0, &[6], &[3.0, 4.0]).expect("applies");
        }
        assert_eq!(a.digest(), b.digest());
        b.apply(0, 1, &[5], &[1.0, 1.0]).expect("applies");
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn a_wrong_push_is_refused_whole() {
        let mut s = state(Consistency::Asp);
        assert!(s
            .apply(0, 0, &[5], &[1.0])
            .expect_err("refused")
            .contains("expected 2"));
        assert!(s
            .apply(0, 0, &[2], &[1.0, 1.0])
            .expect_err("refused")
            .contains("not on this shard"));
        assert!(s
            .apply(3, 0, &[5], &[1.0, 1.0])
            .expect_err("refused")
            .contains("worker 3"));
        assert!(s
            .apply(0, 0, &[5, 6], &[1.0, 1.0, f32::NAN, 1.0])
            .expect_err("refused")
            .contains("NaN"));
        assert_eq!(s.read(&[5, 6]).expect("reads"), vec![0.0; 4]);
        assert_eq!(s.applied(), &[0, 0]);
    }
}
