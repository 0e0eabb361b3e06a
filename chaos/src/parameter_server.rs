//! The `parameter_server` workload: sparse logistic regression on a replicated
//! parameter server (`fleet-ps`) while the scenario kills a server shard's node and,
//! separately, a worker's node.
//!
//! Shard replicas go on the nodes after the driver's (shard `i`'s primary on the `i`-th,
//! its backup on the next, as `fleet_ps::Placement::Nodes` does), workers on the others
//! and the driver's: a scenario can kill a node of replicas (one replica of two shards,
//! each with its peer alive elsewhere) and, later, a node of workers only.
//!
//! Invariants, with no slack:
//! - training finishes: every worker's every push is acknowledged (a worker task lost
//!   with its node is retried and resumes at the clock the shards have);
//! - every acknowledged push is applied exactly once on every shard, on both replicas:
//!   each shard counts the pushes it applied per worker, and the count equals the
//!   worker's acknowledged pushes; the replicas end at the same update with the same
//!   digest;
//! - the model reaches the target: the held-out log-loss ends within `target_gap` of the
//!   known optimum.
//!
//! The recoveries the server's owner saw (replica, seconds until it answered again) are in
//! the evidence. Each worker is a lane: a push counts as acknowledged when every shard's
//! clock of that worker passed it (polled), so the report's recovery times are the time
//! until every worker pushes again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::{ObjectRef, Scheduling};
use fleet_ps::data::SparseLogReg;
use fleet_ps::logreg::{held_out_log_loss, logreg_worker, WorkerReport};
use fleet_ps::{Consistency, KeySpace, Optimizer, ParameterServer, Placement};

use crate::workloads::{BoxFuture, Progress, Verdict, Workload};

/// The `parameter_server` workload (see the module docs).
pub struct ParameterServerWorkload {
    workers: usize,
    shards: usize,
    pushes: u64,
    dir: std::path::PathBuf,
    /// The cluster's nodes, the driver's first.
    nodes: Vec<String>,
    ps: Option<ParameterServer>,
    outcome: Mutex<Option<Result<Vec<WorkerReport>, String>>>,
}

/// The held-out log-loss must end within this relative gap of the optimum.
const TARGET_GAP: f64 = 0.03;
/// Examples per push.
const BATCH: u64 = 50;

fn data() -> SparseLogReg {
    SparseLogReg {
        features: 20_000,
        examples: 40_000,
        active: 10,
        scale: 1.0,
        informative: 200,
        seed: 11,
    }
}

impl ParameterServerWorkload {
    /// `workers` workers pushing `pushes` times each to `shards` shards, checkpointing
    /// under `dir`, over `nodes` (the cluster's, the driver's first).
    pub fn new(
        workers: usize,
        shards: usize,
        pushes: u64,
        dir: std::path::PathBuf,
        nodes: Vec<String>,
    ) -> Self {
        ParameterServerWorkload {
            workers,
            shards,
            pushes,
            dir,
            nodes,
            ps: None,
            outcome: Mutex::new(None),
        }
    }

    /// (nodes for the replicas, nodes for the workers).
    fn placement(&self) -> (Vec<String>, Vec<String>) {
        match self.nodes.len() {
            0 => (Vec::new(), Vec::new()),
            1 | 2 => (self.nodes.clone(), self.nodes.clone()),
            3 => (self.nodes[1..].to_vec(), self.nodes.clone()),
            _ => {
                // Nodes 1 and 2 hold the replicas; the driver's and the rest hold workers.
                let mut workers = vec![self.nodes[0].clone()];
                workers.extend(self.nodes[3..].iter().cloned());
                (self.nodes[1..3].to_vec(), workers)
            }
        }
    }
}

impl Workload for ParameterServerWorkload {
    fn name(&self) -> String {
        format!(
            "parameter_server ({} workers x {} pushes, {} replicated shards)",
            self.workers, self.pushes, self.shards
        )
    }

    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            anyhow::ensure!(
                self.workers >= 1 && self.shards >= 1 && self.pushes >= 1,
                "the parameter_server workload needs workers, shards and steps (pushes per worker) of at least 1"
            );
            let (replica_nodes, _) = self.placement();
            let ps = ParameterServer::builder()
                .name("chaos-ps")
                .key_space(KeySpace::Hashed { buckets: 1 << 16 })
                .shards(self.shards)
                .workers(self.workers)
                .optimizer(Optimizer::Adagrad { lr: 0.1, eps: 1e-6 })
                .consistency(Consistency::Ssp(2))
                .checkpoints(&self.dir, Duration::from_secs(1))
                .placement(Placement::Nodes(replica_nodes))
                .build()
                .await
                .map_err(|e| anyhow::anyhow!("starting the parameter server: {e}"))?;
            self.ps = Some(ps);
            Ok(())
        })
    }

    fn run(
        &self,
        _deadline: Instant,
        progress: Arc<Progress>,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let ps = self
                .ps
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the parameter server was not started"))?;
            let (_, worker_nodes) = self.placement();
            let data = data();
            let per_worker = data.examples / self.workers as u64;
            let runs: Vec<ObjectRef<WorkerReport>> = (0..self.workers)
                .map(|w| {
                    let mut options = logreg_worker::options().num_cpus(1.0).max_retries(5);
                    if !worker_nodes.is_empty() {
                        options = options.scheduling(Scheduling::NodeAffinity {
                            node_id: worker_nodes[w % worker_nodes.len()].clone(),
                            soft: true,
                        });
                    }
                    let w64 = w as u64;
                    Ok(options.remote(
                        ps.worker(w)?,
                        data,
                        (w64 * per_worker, (w64 + 1) * per_worker),
                        self.pushes,
                        BATCH,
                    ))
                })
                .collect::<anyhow::Result<_>>()?;
            let finished = fleet::get_all(&runs);
            tokio::pin!(finished);
            // Lanes: a push is acknowledged once every shard's clock of its worker passed it.
            let mut seen = vec![0u64; self.workers];
            let mut polled = Instant::now();
            let outcome = loop {
                tokio::select! {
                    reports = &mut finished => break reports.map_err(|e| e.to_string()),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        let Ok(Ok(clocks)) = tokio::time::timeout(Duration::from_secs(1), ps.clocks()).await else {
                            continue;
                        };
                        for (w, seen) in seen.iter_mut().enumerate() {
                            let clock = clocks.iter().map(|(pushed, _)| pushed.get(w).copied().unwrap_or(0)).min().unwrap_or(0);
                            for _ in *seen..clock {
                                progress.acked(w, polled);
                            }
                            *seen = (*seen).max(clock);
                        }
                        polled = Instant::now();
                    }
                }
            };
            *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
            Ok(())
        })
    }

    fn check(&self) -> BoxFuture<'_, (Vec<Verdict>, u64)> {
        Box::pin(async move {
            let verdict = |invariant: &str, passed: bool, evidence: String| Verdict {
                invariant: invariant.to_string(),
                passed,
                evidence,
            };
            let expected = self.pushes * self.workers as u64;
            let Some(ps) = &self.ps else {
                return (
                    vec![verdict(
                        "training finishes",
                        false,
                        "no parameter server".into(),
                    )],
                    expected,
                );
            };
            let outcome = self
                .outcome
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let recoveries = ps
                .recoveries()
                .iter()
                .map(|r| format!("{} back after {:.2} s", r.replica, r.seconds))
                .collect::<Vec<_>>()
                .join(", ");
            let reports = match outcome {
                Some(Ok(reports)) => reports,
                other => {
                    let evidence = match other {
                        Some(Err(error)) => error,
                        _ => "the run did not report".into(),
                    };
                    return (
                        vec![verdict("training finishes", false, evidence)],
                        expected,
                    );
                }
            };
            let resumed: Vec<String> = reports
                .iter()
                .filter(|r| r.resumed_at > 0)
                .map(|r| format!("worker {} resumed at clock {}", r.worker, r.resumed_at))
                .collect();
            let mut verdicts = vec![verdict(
                "training finishes",
                reports.len() == self.workers,
                format!(
                    "{} workers finished {} pushes each; replicas recovered: [{recoveries}]; workers replaced: [{}]",
                    reports.len(),
                    self.pushes,
                    resumed.join(", ")
                ),
            )];
            let mut lost = 0u64;
            let mut problems = Vec::new();
            match ps.replicas().await {
                Ok(replicas) => {
                    for (shard, (primary, backup)) in replicas.iter().enumerate() {
                        for replica in [primary, backup] {
                            for (w, applied) in replica.applied.iter().enumerate() {
                                if *applied != self.pushes {
                                    lost += self.pushes.saturating_sub(*applied);
                                    problems.push(format!(
                                        "shard {shard} {:?}: worker {w}'s pushes applied {applied} times, acknowledged {}",
                                        replica.role, self.pushes
                                    ));
                                }
                            }
                        }
                        if primary.seq != backup.seq || primary.digest != backup.digest {
                            problems.push(format!(
                                "shard {shard}: primary at update {} ({:016x}), backup at {} ({:016x})",
                                primary.seq, primary.digest, backup.seq, backup.digest
                            ));
                        }
                    }
                    verdicts.push(verdict(
                        "every acknowledged push is applied exactly once, on both replicas",
                        problems.is_empty(),
                        if problems.is_empty() {
                            format!(
                                "{} shards x 2 replicas: {} pushes from each of {} workers, same update count and digest on both replicas (restarts: {:?})",
                                replicas.len(),
                                self.pushes,
                                self.workers,
                                replicas.iter().map(|(p, b)| (p.restarts, b.restarts)).collect::<Vec<_>>()
                            )
                        } else {
                            problems.join("; ")
                        },
                    ));
                }
                Err(error) => {
                    lost = expected;
                    verdicts.push(verdict(
                        "every acknowledged push is applied exactly once, on both replicas",
                        false,
                        format!("the replicas did not answer: {error}"),
                    ));
                }
            }
            let data = data();
            let optimum = data.optimal_log_loss();
            let target = match held_out_log_loss(ps, &data).await {
                Ok(loss) => {
                    let gap = (loss - optimum) / optimum;
                    verdict(
                        "the model reaches the target loss",
                        gap <= TARGET_GAP,
                        format!(
                            "held-out log-loss {loss:.4}, optimum {optimum:.4}: gap {:.1}% (target {:.0}%)",
                            100.0 * gap,
                            100.0 * TARGET_GAP
                        ),
                    )
                }
                Err(error) => verdict(
                    "the model reaches the target loss",
                    false,
                    error.to_string(),
                ),
            };
            verdicts.push(target);
            let _ = std::fs::remove_dir_all(&self.dir);
            (verdicts, lost)
        })
    }
}
