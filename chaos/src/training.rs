//! The `training` workload: data-parallel training of a small GPT (`fleet_train::gpt`)
//! with a [`Trainer`], checkpointed and elastic, while the scenario kills a rank's node.
//!
//! Before the clock starts it trains the same job once without faults (the reference).
//! Invariants, with no slack while the run keeps its ranks:
//! - training finishes;
//! - every step's loss, and the final weights, equal the reference's bit for bit (the
//!   run resumed from a committed checkpoint on the same data order); if the run had to go
//!   on with fewer ranks, the losses agree to float rounding (the sums' order changed);
//! - the steps trained twice (before the fault and again after resuming) gave the same
//!   loss both times;
//! - the committed checkpoint is whole (the model and every rank's optimizer shard there and
//!   readable); a save cut short by the fault was never committed.
//!
//! Each trained step is an acknowledged operation (lane 0); a step whose loss differs
//! from the reference's counts as a lost one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fleet_train::gpt::{CharGpt, GptConfig};
use fleet_train::{Checkpoints, Elastic, LearningRate, Placement, TrainReport, Trainer};

use crate::workloads::{BoxFuture, Progress, Verdict, Workload};

/// The `training` workload (see the module docs).
pub struct Training {
    ranks: usize,
    steps: u64,
    checkpoint_every: u64,
    dir: PathBuf,
    /// Where the ranks go: rank `i` on `nodes[i % len]` (the driver's node left out when
    /// there are others, so that killing a node takes a rank and not the driver).
    nodes: Vec<String>,
    reference: Option<TrainReport>,
    outcome: Mutex<Option<Result<TrainReport, String>>>,
}

impl Training {
    /// `ranks` ranks training `steps` steps, checkpointing every `checkpoint_every` under
    /// `dir`, placed over `nodes` (the cluster's, the driver's first).
    pub fn new(
        ranks: usize,
        steps: u64,
        checkpoint_every: u64,
        dir: PathBuf,
        nodes: Vec<String>,
    ) -> Self {
        let nodes = if nodes.len() > 1 {
            nodes[1..].to_vec()
        } else {
            nodes
        };
        Training {
            ranks,
            steps,
            checkpoint_every,
            dir,
            nodes,
            reference: None,
            outcome: Mutex::new(None),
        }
    }

    fn trainer(&self, run: &str) -> Trainer<CharGpt> {
        let job = CharGpt {
            eval_batch: 4,
            sample_chars: 0,
            ..CharGpt::shakespeare(GptConfig::tiny())
        };
        Trainer::new(run, job)
            .world_size(self.ranks)
            .steps(self.steps)
            .global_batch(8 * self.ranks as u64)
            .micro_batch(4)
            .learning_rate(LearningRate::Constant(3e-3))
            .max_grad_norm(1.0)
            .zero(fleet_train::ZeroStage::One)
            .cpus_per_rank(1.0)
            .placement(Placement::Nodes(self.nodes.clone()))
    }
}

impl Workload for Training {
    fn name(&self) -> String {
        format!(
            "training ({} ranks, {} steps, checkpoints every {})",
            self.ranks, self.steps, self.checkpoint_every
        )
    }

    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            anyhow::ensure!(
                self.ranks >= 1 && self.steps >= 1 && self.checkpoint_every >= 1,
                "the training workload needs ranks, steps and checkpoint_every of at least 1"
            );
            let reference = self
                .trainer("chaos-training-reference")
                .run()
                .await
                .map_err(|e| anyhow::anyhow!("the reference run without faults failed: {e}"))?;
            self.reference = Some(reference);
            Ok(())
        })
    }

    fn run(
        &self,
        _deadline: Instant,
        progress: Arc<Progress>,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            // A step "starts" when the one before it is acknowledged.
            let last = Arc::new(Mutex::new(Instant::now()));
            let outcome = self
                .trainer("chaos-training")
                .checkpoints(&self.dir, self.checkpoint_every)
                .elastic(Elastic {
                    restarts_per_rank: 3,
                    min_world: 1,
                })
                .on_progress(move |_| {
                    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                    progress.acked(0, *last);
                    *last = Instant::now();
                })
                .run()
                .await
                .map_err(|e| e.to_string());
            *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
            Ok(())
        })
    }

    fn check(&self) -> BoxFuture<'_, (Vec<Verdict>, u64)> {
        Box::pin(async move {
            let outcome = self
                .outcome
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let verdict = |invariant: &str, passed: bool, evidence: String| Verdict {
                invariant: invariant.to_string(),
                passed,
                evidence,
            };
            let (Some(reference), Some(Ok(report))) = (&self.reference, &outcome) else {
                let evidence = match &outcome {
                    Some(Err(error)) => error.clone(),
                    _ => "the run did not report".to_string(),
                };
                return (
                    vec![verdict("training finishes", false, evidence)],
                    self.steps,
                );
            };
            let mut verdicts = vec![verdict(
                "training finishes",
                report.history.len() as u64 == self.steps,
                format!(
                    "{} of {} steps; {} -> {} ranks; {} restart(s); recoveries: {}",
                    report.history.len(),
                    self.steps,
                    report.initial_world,
                    report.world,
                    report.restarts,
                    report
                        .recoveries
                        .iter()
                        .map(|r| format!(
                            "failed at step {}, resumed from {} with {} rank(s) after {:.2} s",
                            r.failed_at_step, r.resumed_from, r.world, r.seconds
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )];
            let shrunk = report.world != reference.world;
            let tolerance = if shrunk { 1e-4 } else { 0.0 };
            let mut lost = 0u64;
            let mut worst = 0.0f32;
            for (ours, theirs) in report.history.iter().zip(&reference.history) {
                let difference = (ours.loss - theirs.loss).abs();
                worst = worst.max(difference);
                if difference > tolerance * theirs.loss.abs() {
                    lost += 1;
                }
            }
            lost += (reference.history.len() as u64).saturating_sub(report.history.len() as u64);
            verdicts.push(verdict(
                "every step's loss equals the run without faults",
                lost == 0,
                format!(
                    "{lost} step(s) differ; largest difference {worst:e}; final loss {} vs {}{}",
                    report.final_loss,
                    reference.final_loss,
                    if shrunk {
                        " (fewer ranks: float rounding allowed)"
                    } else {
                        ""
                    }
                ),
            ));
            if !shrunk {
                verdicts.push(verdict(
                    "the final weights equal the run without faults, bit for bit",
                    report.digest == reference.digest,
                    format!("digest {:016x} vs {:016x}", report.digest, reference.digest),
                ));
            }
            verdicts.push(verdict(
                "steps trained twice repeat their losses",
                report.replays_match(),
                format!(
                    "{} step(s) trained twice: {}",
                    report.replayed.len(),
                    report
                        .replayed
                        .iter()
                        .filter(|r| r.first != r.again)
                        .map(|r| format!("step {}: {} then {}", r.step, r.first, r.again))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            verdicts.push(self.committed_checkpoint_is_whole().await);
            (verdicts, lost)
        })
    }
}

impl Training {
    /// The committed checkpoint has every part, and every part reads.
    async fn committed_checkpoint_is_whole(&self) -> Verdict {
        let verdict = |passed: bool, evidence: String| Verdict {
            invariant: "no checkpoint is half-committed".to_string(),
            passed,
            evidence,
        };
        let checkpoints = Checkpoints::new("chaos-training", &self.dir);
        let committed = match checkpoints.latest().await {
            Ok(Some(committed)) => committed,
            Ok(None) => return verdict(false, "no checkpoint was committed".into()),
            Err(error) => return verdict(false, error.to_string()),
        };
        let mut missing = Vec::new();
        let model = committed.path.join("model.safetensors");
        if candle_core::safetensors::load(&model, &candle_core::Device::Cpu).is_err() {
            missing.push(model.display().to_string());
        }
        for rank in 0..committed.world {
            let shard = committed.path.join(format!("optimizer-{rank}.bin"));
            if std::fs::metadata(&shard).map_or(true, |m| m.len() == 0) {
                missing.push(shard.display().to_string());
            }
        }
        // Directories of saves cut short (a `.partial` file left): never the committed one.
        let partial: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|f| f.path().extension().is_some_and(|e| e == "partial"))
            })
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        let committed_name = committed
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let whole = missing.is_empty() && !partial.contains(&committed_name);
        let _ = checkpoints.forget().await;
        verdict(
            whole && committed.step == self.steps - self.steps % self.checkpoint_every,
            format!(
                "committed step {} ({} optimizer shard(s)); missing or unreadable: {missing:?}; saves cut short, never committed: {partial:?}",
                committed.step, committed.world
            ),
        )
    }
}
