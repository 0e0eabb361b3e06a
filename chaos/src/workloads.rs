//! Workloads with checkable invariants. Built in: checkpointed counters (exact final counts)
//! and a task fan-out/fan-in (exact sums). A user's workload implements [`Workload`] and is
//! run by [`crate::runner::run_with`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::{ObjectRef, Scheduling};
use serde::{Deserialize, Serialize};

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One invariant's verdict.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verdict {
    /// What was checked.
    pub invariant: String,
    /// Whether it held.
    pub passed: bool,
    /// The figures that show it.
    pub evidence: String,
}

/// What a workload did, as it went: acknowledged operations per lane (an actor, a stream of
/// rounds), with their times (for recovery times), and operations whose outcome is unknown.
#[derive(Default)]
pub struct Progress {
    /// Per lane: (started, acknowledged) of each acknowledged operation.
    lanes: Mutex<Vec<Vec<(Instant, Instant)>>>,
}

impl Progress {
    /// Records an operation on `lane`, started at `started`, acknowledged now.
    pub fn acked(&self, lane: usize, started: Instant) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if lanes.len() <= lane {
            lanes.resize(lane + 1, Vec::new());
        }
        lanes[lane].push((started, Instant::now()));
    }

    /// Acknowledged operations in all lanes.
    pub fn total(&self) -> usize {
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.iter().map(Vec::len).sum()
    }

    /// How long after `at` every lane had an operation *started after `at`* acknowledged
    /// (None: some lane never did). Operations already in flight at `at` do not count: they
    /// say nothing of whether the cluster serves new work.
    pub fn recovered_after(&self, at: Instant) -> Option<Duration> {
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let mut worst = Duration::ZERO;
        for lane in lanes.iter() {
            let (_, acked) = lane.iter().find(|(started, _)| *started >= at)?;
            worst = worst.max(acked.duration_since(at));
        }
        Some(worst)
    }
}

/// A workload the harness runs while it injects faults.
pub trait Workload: Send + Sync {
    /// Its name in the report.
    fn name(&self) -> String;
    /// Sets up (actors, data) before the clock starts.
    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Runs until `deadline`, recording acknowledged operations in `progress`.
    fn run(&self, deadline: Instant, progress: Arc<Progress>) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Checks its invariants after the run; also returns how many acknowledged operations
    /// were lost.
    fn check(&self) -> BoxFuture<'_, (Vec<Verdict>, u64)>;
}

/// A checkpointed counter whose increments carry idempotency tokens, so a caller can find out
/// whether a call that failed was applied.
#[fleet::actor(checkpoint)]
#[derive(Default, Serialize, Deserialize)]
pub struct ChaosCounter {
    count: u64,
    /// The newest token applied. Each caller numbers its increments 1, 2, 3… and sends the
    /// next only once the last one is resolved, so one number per caller remembers them all.
    last_token: u64,
}

#[fleet::actor]
impl ChaosCounter {
    pub fn new() -> Self {
        ChaosCounter::default()
    }

    /// Applies increment `token` unless it was applied before; answers the count.
    pub fn incr(&mut self, token: u64) -> u64 {
        if token > self.last_token {
            self.count += 1;
            self.last_token = token;
        }
        self.count
    }

    /// Whether increment `token` was applied.
    pub fn applied(&self, token: u64) -> bool {
        token <= self.last_token
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// x² (the fan-out's task).
#[fleet::remote]
pub fn chaos_square(x: u64) -> u64 {
    x * x
}

#[derive(Default)]
struct Lane {
    /// Increments answered on their first call.
    acked: u64,
    /// Increments whose first call failed (outcome unknown) and that a retry with the same
    /// token, or the final query, showed applied.
    resolved: u64,
    /// Increments shown not applied (only the one in flight at the deadline can be).
    not_applied: u64,
    /// Increments that failed at least once before they were resolved.
    failed_calls: u64,
    /// The token still unresolved when the run ended.
    pending: Option<u64>,
    /// Answers that were not the count their token implies.
    out_of_step: Vec<String>,
}

/// Checkpointed counter actors (spread over the nodes, restarted without limit, checkpoint
/// after every call), each incremented in a loop. Increment n carries token n; a failed call
/// is retried with its token until answered, and one still unresolved at the end is looked
/// up, so no outcome stays unknown. Invariants, with no slack: each final count equals its
/// acknowledged plus resolved increments, and increment n is always answered n.
pub struct Counters {
    actors: usize,
    task_retries: u32,
    checkpoint_dir: std::path::PathBuf,
    handles: Vec<ChaosCounterHandle>,
    lanes: Vec<Arc<Mutex<Lane>>>,
}

/// Pause between retries of a failed increment.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl Counters {
    /// `actors` counters checkpointing into `checkpoint_dir`, each call retried
    /// `task_retries` times by the runtime before the workload's own retry takes over.
    pub fn new(actors: usize, task_retries: u32, checkpoint_dir: std::path::PathBuf) -> Self {
        Counters {
            actors,
            task_retries,
            checkpoint_dir,
            handles: Vec::new(),
            lanes: Vec::new(),
        }
    }
}

impl Workload for Counters {
    fn name(&self) -> String {
        format!("counters ({} checkpointed actors)", self.actors)
    }

    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            for _ in 0..self.actors {
                let handle = ChaosCounter::remote()
                    .scheduling(Scheduling::Spread)
                    .max_restarts(-1)
                    .max_task_retries(self.task_retries)
                    .checkpoint_every(1)
                    .checkpoint_dir(&self.checkpoint_dir)
                    .spawn()
                    .await?;
                handle.count().await?;
                self.handles.push(handle);
                self.lanes.push(Arc::default());
            }
            Ok(())
        })
    }

    fn run(&self, deadline: Instant, progress: Arc<Progress>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let mut loops = Vec::new();
            for (index, handle) in self.handles.iter().enumerate() {
                let handle = handle.clone();
                let lane = self.lanes[index].clone();
                let progress = progress.clone();
                loops.push(tokio::spawn(async move {
                    let mut token = 0u64;
                    while Instant::now() < deadline {
                        token += 1;
                        let began = Instant::now();
                        let mut first_call = true;
                        loop {
                            let answer = handle.incr(token).await;
                            // Answered, or given up at the deadline (the guard must be gone
                            // before the pause: the future is Send).
                            let done = {
                                let mut lane = lane.lock().unwrap_or_else(|e| e.into_inner());
                                match answer {
                                    Ok(value) => {
                                        if first_call {
                                            lane.acked += 1;
                                        } else {
                                            lane.resolved += 1;
                                        }
                                        if value != token {
                                            let note =
                                                format!("increment {token} answered {value}");
                                            lane.out_of_step.push(note);
                                        }
                                        progress.acked(index, began);
                                        true
                                    }
                                    Err(error) => {
                                        if first_call {
                                            lane.failed_calls += 1;
                                            first_call = false;
                                            tracing::warn!(counter = index, token, %error, "increment failed; retrying with its token");
                                        }
                                        if Instant::now() >= deadline {
                                            lane.pending = Some(token);
                                        }
                                        lane.pending.is_some()
                                    }
                                }
                            };
                            if done {
                                break;
                            }
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                }));
            }
            for l in loops {
                l.await?;
            }
            Ok(())
        })
    }

    fn check(&self) -> BoxFuture<'_, (Vec<Verdict>, u64)> {
        Box::pin(async move {
            let mut verdicts = Vec::new();
            let mut lost = 0u64;
            for (index, handle) in self.handles.iter().enumerate() {
                let pending = self.lanes[index]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pending;
                let mut lookup_error = None;
                if let Some(token) = pending {
                    match handle.applied(token).await {
                        Ok(applied) => {
                            let mut lane =
                                self.lanes[index].lock().unwrap_or_else(|e| e.into_inner());
                            if applied {
                                lane.resolved += 1;
                            } else {
                                lane.not_applied += 1;
                            }
                            lane.pending = None;
                        }
                        Err(error) => lookup_error = Some(format!("{error:#}")),
                    }
                }
                let final_count = handle.count().await;
                let lane = self.lanes[index].lock().unwrap_or_else(|e| e.into_inner());
                let expected = lane.acked + lane.resolved;
                let summary = format!(
                    "acknowledged {}, resolved {} (of {} failed calls; {} not applied)",
                    lane.acked, lane.resolved, lane.failed_calls, lane.not_applied
                );
                let (passed, evidence) = match (final_count, lookup_error) {
                    (Ok(count), None) => {
                        lost += expected.saturating_sub(count);
                        (
                            count == expected && lane.out_of_step.is_empty(),
                            format!(
                                "final count {count}, {summary}{}",
                                if lane.out_of_step.is_empty() {
                                    String::new()
                                } else {
                                    format!("; out of step: {}", lane.out_of_step.join("; "))
                                }
                            ),
                        )
                    }
                    (_, Some(error)) => {
                        lost += expected;
                        (
                            false,
                            format!("cannot resolve the last increment: {error}; {summary}"),
                        )
                    }
                    (Err(error), None) => {
                        lost += expected;
                        (
                            false,
                            format!("cannot read the final count: {error:#}; {summary}"),
                        )
                    }
                };
                verdicts.push(Verdict {
                    invariant: format!(
                        "counter {index} counts exactly its acknowledged and resolved increments"
                    ),
                    passed,
                    evidence,
                });
            }
            (verdicts, lost)
        })
    }
}

/// Rounds of `tasks` tasks (spread) whose results are summed. Invariant: every round that
/// completes has the exact sum.
pub struct FanOut {
    tasks: usize,
    rounds: Arc<Mutex<(u64, u64, Vec<String>)>>,
}

impl FanOut {
    /// Rounds of `tasks` tasks.
    pub fn new(tasks: usize) -> Self {
        FanOut {
            tasks,
            rounds: Arc::default(),
        }
    }
}

impl Workload for FanOut {
    fn name(&self) -> String {
        format!("fan-out/fan-in ({} tasks per round)", self.tasks)
    }

    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn run(&self, deadline: Instant, progress: Arc<Progress>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let mut round = 0u64;
            while Instant::now() < deadline {
                let round_started = Instant::now();
                let base = round * self.tasks as u64;
                let refs: Vec<ObjectRef<u64>> = (0..self.tasks as u64)
                    .map(|i| {
                        chaos_square::options()
                            .scheduling(Scheduling::Spread)
                            .max_retries(10)
                            .remote(base + i)
                    })
                    .collect();
                let expected: u64 = (base..base + self.tasks as u64).map(|x| x * x).sum();
                let outcome = fleet::get_all(&refs).await;
                let began = round_started;
                let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok(values) => {
                        let sum: u64 = values.iter().sum();
                        rounds.0 += 1;
                        if sum != expected {
                            let note = format!("round {round}: sum {sum}, expected {expected}");
                            rounds.2.push(note);
                        }
                        progress.acked(0, began);
                    }
                    Err(error) => {
                        rounds.1 += 1;
                        rounds.2.push(format!("round {round} failed: {error:#}"));
                    }
                }
                round += 1;
            }
            Ok(())
        })
    }

    fn check(&self) -> BoxFuture<'_, (Vec<Verdict>, u64)> {
        Box::pin(async move {
            let rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
            let (done, failed, notes) = (rounds.0, rounds.1, rounds.2.clone());
            let wrong = notes.iter().filter(|n| n.contains("expected")).count() as u64;
            let verdicts = vec![
                Verdict {
                    invariant: "every completed round has the exact sum".into(),
                    passed: wrong == 0,
                    evidence: format!("{done} rounds completed, {wrong} with a wrong sum"),
                },
                Verdict {
                    invariant: "every round completes (tasks retry across faults)".into(),
                    passed: failed == 0,
                    evidence: if failed == 0 {
                        format!("{done} rounds, none failed")
                    } else {
                        format!("{failed} failed: {}", notes.join("; "))
                    },
                },
            ];
            (verdicts, wrong)
        })
    }
}

/// Clients reading and writing a few registers in the control store (the GCS KV) without
/// pause. Invariant: the history (each operation's call and return times, unknown outcomes
/// included) is linearizable, checked per key with `fleet_gcs::linearizability`.
pub struct Register {
    gcs: fleet_gcs::GcsClient,
    clients: usize,
    keys: usize,
    history: Arc<Mutex<History>>,
    started: Instant,
}

/// Operations on registers, by key.
type History = Vec<(String, fleet_gcs::linearizability::Operation<u64>)>;

/// The KV namespace the register workload uses.
pub const REGISTER_NAMESPACE: &str = "fleet.chaos.register";

impl Register {
    /// `clients` clients over `keys` registers.
    pub fn new(gcs: fleet_gcs::GcsClient, clients: usize, keys: usize) -> Self {
        Register {
            gcs,
            clients,
            keys: keys.max(1),
            history: Arc::default(),
            started: Instant::now(),
        }
    }
}

impl Workload for Register {
    fn name(&self) -> String {
        format!(
            "control-store registers ({} clients, {} keys)",
            self.clients, self.keys
        )
    }

    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.gcs.kv_delete(REGISTER_NAMESPACE, b"", true).await?;
            self.started = Instant::now();
            Ok(())
        })
    }

    fn run(&self, deadline: Instant, progress: Arc<Progress>) -> BoxFuture<'_, anyhow::Result<()>> {
        use fleet_gcs::linearizability::{OpKind, Operation};
        use rand::{Rng, SeedableRng};
        Box::pin(async move {
            let mut clients = Vec::new();
            for client in 0..self.clients {
                let gcs = self.gcs.clone();
                let history = self.history.clone();
                let progress = progress.clone();
                let (keys, started) = (self.keys, self.started);
                clients.push(tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64);
                    let mut seq = 0u64;
                    let micros = || started.elapsed().as_micros() as u64;
                    while Instant::now() < deadline {
                        let key = format!("k{}", rng.gen_range(0..keys));
                        let call = micros();
                        let began = Instant::now();
                        if rng.gen_bool(0.5) {
                            seq += 1;
                            let value = client as u64 * 1_000_000_000 + seq;
                            let written = gcs
                                .kv_put(REGISTER_NAMESPACE, key.as_bytes(), &value.to_le_bytes())
                                .await;
                            let ret = written.is_ok().then(micros);
                            if ret.is_some() {
                                progress.acked(client, began);
                            }
                            // A failed write may still have happened: its outcome is unknown.
                            let op = Operation {
                                client,
                                call,
                                ret,
                                kind: OpKind::Write(value),
                            };
                            history
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((key, op));
                        } else if let Ok(record) =
                            gcs.kv_get(REGISTER_NAMESPACE, key.as_bytes()).await
                        {
                            let ret = Some(micros());
                            let value = record.and_then(|r| {
                                <[u8; 8]>::try_from(r.value.as_slice())
                                    .ok()
                                    .map(u64::from_le_bytes)
                            });
                            progress.acked(client, began);
                            let op = Operation {
                                client,
                                call,
                                ret,
                                kind: OpKind::Read(value),
                            };
                            history
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((key, op));
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }));
            }
            for client in clients {
                client.await?;
            }
            Ok(())
        })
    }

    fn check(&self) -> BoxFuture<'_, (Vec<Verdict>, u64)> {
        Box::pin(async move {
            let history = self
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let unknown = history.iter().filter(|(_, op)| op.ret.is_none()).count();
            let checked = tokio::task::spawn_blocking(move || {
                let outcome = fleet_gcs::linearizability::check_kv(&history);
                (outcome, history.len())
            })
            .await;
            let (passed, evidence) = match checked {
                Ok((Ok(()), ops)) => (
                    true,
                    format!("{ops} operations ({unknown} with unknown outcome) linearizable"),
                ),
                Ok((Err(violation), ops)) => (
                    false,
                    format!(
                        "{ops} operations; key {}: {}",
                        violation.key, violation.explanation
                    ),
                ),
                Err(error) => (false, format!("the checker failed: {error}")),
            };
            // A non-linearizable history means an acknowledged write was lost or reordered.
            let lost = u64::from(!passed);
            (
                vec![Verdict {
                    invariant: "the register history is linearizable".into(),
                    passed,
                    evidence,
                }],
                lost,
            )
        })
    }
}

/// The actor-creation workload's actor: remembers the token it was created with.
#[fleet::actor]
pub struct ChaosProbe {
    token: u64,
}

#[fleet::actor]
impl ChaosProbe {
    pub fn new(token: u64) -> Self {
        ChaosProbe { token }
    }

    pub fn token(&self) -> u64 {
        self.token
    }
}

/// One creation attempt of the actor-creation workload.
struct Creation {
    /// The actor id, when the creation returned one.
    actor_id: Option<String>,
    /// Created and answered its token.
    acknowledged: bool,
}

#[derive(Default)]
struct CreationLog {
    creations: Vec<Creation>,
    /// Probes that answered someone else's token.
    wrong_tokens: Vec<String>,
    /// Probes whose kill failed during the run (retried in the check).
    to_kill: Vec<ChaosProbeHandle>,
}

/// Clients creating actors without pause (each: create with a unique token, ask for the
/// token, kill it). Invariants: every acknowledged creation is recorded in the control store,
/// no creation happened twice (no actor records beyond the attempts), every probe answered
/// its own token, and every probe is DEAD once killed.
pub struct ActorCreation {
    clients: usize,
    gcs: fleet_gcs::GcsClient,
    /// ChaosProbe records already in the control store before the run (an attached cluster).
    before: std::collections::BTreeSet<String>,
    log: Arc<Mutex<CreationLog>>,
}

const PROBE_CLASS: &str = "ChaosProbe";

impl ActorCreation {
    /// `clients` concurrent creators; `gcs` reads the actors table for the check.
    pub fn new(gcs: fleet_gcs::GcsClient, clients: usize) -> Self {
        ActorCreation {
            clients,
            gcs,
            before: Default::default(),
            log: Arc::default(),
        }
    }

    async fn probe_records(&self) -> anyhow::Result<Vec<fleet_proto::gcs::ActorInfo>> {
        Ok(self
            .gcs
            .list_actors()
            .await?
            .into_iter()
            .filter(|a| a.class_name.ends_with(PROBE_CLASS))
            .collect())
    }
}

impl Workload for ActorCreation {
    fn name(&self) -> String {
        format!("actor creation ({} clients)", self.clients)
    }

    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.before = self
                .probe_records()
                .await?
                .into_iter()
                .map(|a| a.actor_id)
                .collect();
            Ok(())
        })
    }

    fn run(&self, deadline: Instant, progress: Arc<Progress>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let mut clients = Vec::new();
            for client in 0..self.clients {
                let log = self.log.clone();
                let progress = progress.clone();
                clients.push(tokio::spawn(async move {
                    let mut seq = 0u64;
                    while Instant::now() < deadline {
                        seq += 1;
                        let token = client as u64 * 1_000_000_000 + seq;
                        let began = Instant::now();
                        let created = ChaosProbe::remote(token).spawn().await;
                        let handle = match created {
                            Ok(handle) => handle,
                            Err(error) => {
                                tracing::debug!(%error, "creation failed (outcome unknown)");
                                log.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .creations
                                    .push(Creation {
                                        actor_id: None,
                                        acknowledged: false,
                                    });
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        };
                        let actor_id = handle.raw().actor_id().to_string();
                        let answer = handle.token().await;
                        let acknowledged = matches!(answer, Ok(t) if t == token);
                        if acknowledged {
                            progress.acked(client, began);
                        }
                        let killed = handle.raw().kill().await;
                        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                        if let Ok(other) = answer {
                            if other != token {
                                log.wrong_tokens.push(format!(
                                    "{actor_id} created with {token} answered {other}"
                                ));
                            }
                        }
                        log.creations.push(Creation {
                            actor_id: Some(actor_id),
                            acknowledged,
                        });
                        if killed.is_err() {
                            log.to_kill.push(handle);
                        }
                    }
                }));
            }
            for client in clients {
                client.await?;
            }
            Ok(())
        })
    }

    fn check(&self) -> BoxFuture<'_, (Vec<Verdict>, u64)> {
        Box::pin(async move {
            let to_kill: Vec<ChaosProbeHandle> =
                std::mem::take(&mut self.log.lock().unwrap_or_else(|e| e.into_inner()).to_kill);
            for handle in &to_kill {
                let _ = handle.raw().kill().await;
            }
            let (acked, known, unknown_without_id, wrong) = {
                let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                let acked: Vec<String> = log
                    .creations
                    .iter()
                    .filter(|c| c.acknowledged)
                    .filter_map(|c| c.actor_id.clone())
                    .collect();
                let known: std::collections::BTreeSet<String> = log
                    .creations
                    .iter()
                    .filter_map(|c| c.actor_id.clone())
                    .collect();
                let unknown = log
                    .creations
                    .iter()
                    .filter(|c| c.actor_id.is_none())
                    .count();
                (acked, known, unknown, log.wrong_tokens.clone())
            };
            let records = match self.probe_records().await {
                Ok(records) => records,
                Err(error) => {
                    let verdict = Verdict {
                        invariant: "the actors table can be read".into(),
                        passed: false,
                        evidence: format!("{error:#}"),
                    };
                    return (vec![verdict], acked.len() as u64);
                }
            };
            let new: Vec<&fleet_proto::gcs::ActorInfo> = records
                .iter()
                .filter(|a| !self.before.contains(&a.actor_id))
                .collect();
            let recorded: std::collections::BTreeSet<&str> =
                new.iter().map(|a| a.actor_id.as_str()).collect();
            let missing: Vec<&String> = acked
                .iter()
                .filter(|id| !recorded.contains(id.as_str()))
                .collect();
            let phantoms: Vec<&str> = recorded
                .iter()
                .copied()
                .filter(|id| !known.contains(*id))
                .collect();
            let alive: Vec<&str> = new
                .iter()
                .filter(|a| {
                    known.contains(&a.actor_id)
                        && a.state != fleet_proto::gcs::ActorState::ActorDead as i32
                })
                .map(|a| a.actor_id.as_str())
                .collect();
            let restarted: Vec<&str> = new
                .iter()
                .filter(|a| a.num_restarts > 0)
                .map(|a| a.actor_id.as_str())
                .collect();
            let verdicts = vec![
                Verdict {
                    invariant: "every acknowledged creation is in the actors table".into(),
                    passed: missing.is_empty(),
                    evidence: format!(
                        "{} acknowledged, {} missing{}",
                        acked.len(),
                        missing.len(),
                        sample(&missing)
                    ),
                },
                Verdict {
                    invariant: "no actor was created twice (no records beyond the attempts)"
                        .into(),
                    passed: phantoms.len() <= unknown_without_id && restarted.is_empty(),
                    evidence: format!(
                        "{} records for {} attempts that returned an id; {} records of no attempt (at most {} creations failed without an id, whose outcome is unknown); {} restarted",
                        recorded.len(),
                        known.len(),
                        phantoms.len(),
                        unknown_without_id,
                        restarted.len()
                    ),
                },
                Verdict {
                    invariant: "every probe answered the token it was created with".into(),
                    passed: wrong.is_empty(),
                    evidence: format!("{} wrong{}", wrong.len(), sample(&wrong)),
                },
                Verdict {
                    invariant: "every killed probe is DEAD".into(),
                    passed: alive.is_empty(),
                    evidence: format!("{} not DEAD{}", alive.len(), sample(&alive)),
                },
            ];
            (verdicts, missing.len() as u64)
        })
    }
}

/// The first few of `items`, for evidence.
fn sample<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = items.iter().take(3).map(|i| i.to_string()).collect();
    format!(" (e.g. {})", shown.join(", "))
}
