//! DDP across real actor processes on an embedded cluster: 2 ranks with batch `b` each
//! train exactly as 1 rank with batch `2b` (AdamW, gradient clipping, accumulation over
//! micro-batches), from different random starts made identical by the broadcast; ranks
//! with different models fail together.
//!
//! Runs as a plain program (`harness = false`): `fleet::init` first (a worker re-executing
//! this binary turns into a worker there), then every scenario in turn.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use fleet::ObjectRef;
use fleet_collective::Group;
use fleet_train::{Checkpoints, Ddp, DdpConfig, ShardedAdamW, TrainError, ZeroStage};

/// A small MLP: 4 → hidden → 1.
pub struct Mlp {
    first: candle_nn::Linear,
    second: candle_nn::Linear,
}

impl Mlp {
    fn new(varmap: &VarMap, hidden: usize, seed: u64) -> candle_core::Result<Mlp> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
        let mlp = Mlp {
            first: candle_nn::linear(4, hidden, vb.pp("first"))?,
            second: candle_nn::linear(hidden, 1, vb.pp("second"))?,
        };
        // Deterministic weights from the seed (candle's CPU generator cannot be seeded).
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        for name in names {
            let var = &vars[name];
            let values: Vec<f32> = (0..var.as_tensor().elem_count())
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8
                })
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?)?;
        }
        Ok(mlp)
    }

    fn loss(&self, range: std::ops::Range<usize>) -> candle_core::Result<Tensor> {
        let (x, y) = examples(range)?;
        let predicted = self.second.forward(&self.first.forward(&x)?.relu()?)?;
        candle_nn::loss::mse(&predicted, &y)
    }
}

/// Examples `range` of a fixed regression task.
fn examples(range: std::ops::Range<usize>) -> candle_core::Result<(Tensor, Tensor)> {
    let n = range.len();
    let mut x = Vec::with_capacity(n * 4);
    let mut y = Vec::with_capacity(n);
    for k in range {
        let f = [
            (k as f32 * 0.37).sin(),
            (k as f32 * 0.11).cos(),
            (k % 7) as f32 / 7.0,
            (k % 3) as f32 / 3.0,
        ];
        y.push(0.5 * f[0] - 0.8 * f[1] + 1.2 * f[2] * f[3] + 0.3);
        x.extend_from_slice(&f);
    }
    Ok((
        Tensor::from_vec(x, (n, 4), &Device::Cpu)?,
        Tensor::from_vec(y, (n, 1), &Device::Cpu)?,
    ))
}

fn weights(varmap: &VarMap) -> candle_core::Result<Vec<f32>> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut all = Vec::new();
    for name in names {
        all.extend(vars[name].as_tensor().flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(all)
}

/// What a training run is.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Run {
    steps: usize,
    /// Examples per rank per step.
    batch: usize,
    micro_batches: usize,
    max_grad_norm: Option<f64>,
    /// `None`: candle's AdamW through `Ddp::step`; else the sharded AdamW at this stage.
    zero: Option<ZeroStage>,
    /// Checkpoint every this many steps (0: never).
    checkpoint_every: usize,
    /// The first instance of rank 1 SIGKILLs itself before this step.
    die_at: Option<usize>,
}

impl Run {
    fn plain(steps: usize, batch: usize) -> Run {
        Run {
            steps,
            batch,
            micro_batches: 1,
            max_grad_norm: None,
            zero: None,
            checkpoint_every: 0,
            die_at: None,
        }
    }
}

struct Trained {
    varmap: VarMap,
    norms: Vec<f64>,
    /// Loss on held-out examples before and after training.
    held_out: (f32, f32),
    /// Optimizer state bytes this rank held (the sharded optimizer only).
    optimizer_bytes: usize,
    /// How many times the group was formed (more than once after a failure).
    formed: usize,
}

const HELD_OUT: std::ops::Range<usize> = 100_000..100_256;

fn adamw_params() -> ParamsAdamW {
    ParamsAdamW {
        lr: 0.01,
        ..ParamsAdamW::default()
    }
}

/// Trains `run` as rank `rank` of group `name`: this rank's examples of step `s` are its
/// slice of the step's `world · batch` examples. When the group breaks (a rank lost), it
/// forms the group again, takes up the last committed checkpoint and goes on.
async fn train(
    name: &str,
    world: usize,
    rank: usize,
    hidden: usize,
    seed: u64,
    run: Run,
    checkpoints: Option<Checkpoints>,
) -> Result<Trained, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let varmap = VarMap::new();
    let model = Mlp::new(&varmap, hidden, seed).map_err(|e| text(&e))?;
    let held_out = |model: &Mlp| -> Result<f32, String> {
        model
            .loss(HELD_OUT)
            .and_then(|l| l.to_scalar::<f32>())
            .map_err(|e| e.to_string())
    };
    let before = held_out(&model)?;
    let restarts = fleet::context().map(|c| c.actor_restarts).unwrap_or(0);
    let micro = run.batch / run.micro_batches;
    let mut formed = 0;
    loop {
        formed += 1;
        if formed > 4 {
            return Err("the group broke 4 times".into());
        }
        let group = Group::init(name, world, rank).await.map_err(|e| text(&e))?;
        let config = DdpConfig {
            max_grad_norm: run.max_grad_norm,
            // Small buckets: this model's 4 parameters go in 3 all-reduces.
            bucket_bytes: 64,
        };
        let mut ddp = Ddp::new(group, &varmap, config)
            .await
            .map_err(|e| text(&e))?;
        let mut candle_adamw =
            AdamW::new(varmap.all_vars(), adamw_params()).map_err(|e| text(&e))?;
        let stage = run.zero.unwrap_or(ZeroStage::None);
        let mut sharded = ShardedAdamW::new(adamw_params(), stage, ddp.update_range(stage))
            .map_err(|e| text(&e))?;
        let mut first = 0;
        if let Some(checkpoints) = &checkpoints {
            if let Some(step) = checkpoints
                .restore(&ddp, &mut sharded)
                .await
                .map_err(|e| text(&e))?
            {
                first = step as usize;
            }
        }
        let mut norms = Vec::new();
        let outcome: Result<(), TrainError> = async {
            for step in first..run.steps {
                if run.die_at == Some(step) && rank == 1 && restarts == 0 {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &std::process::id().to_string()])
                        .status();
                }
                let start = step * world * run.batch + rank * run.batch;
                for m in 0..run.micro_batches {
                    let from = start + m * micro;
                    ddp.backward(&model.loss(from..from + micro)?)?;
                }
                let stats = match run.zero {
                    None => ddp.step(&mut candle_adamw).await?,
                    Some(_) => ddp.step_sharded(&mut sharded).await?,
                };
                norms.push(stats.grad_norm);
                if let Some(checkpoints) = &checkpoints {
                    if run.checkpoint_every > 0 && (step + 1) % run.checkpoint_every == 0 {
                        checkpoints
                            .save(&mut ddp, &sharded, step as u64 + 1)
                            .await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                return Ok(Trained {
                    varmap,
                    norms,
                    held_out: (before, held_out(&model)?),
                    optimizer_bytes: sharded.state_bytes(),
                    formed,
                })
            }
            Err(TrainError::Collective(error)) if checkpoints.is_some() => {
                println!("  rank {rank}: {error}; forming the group again");
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// One rank of a data-parallel run.
#[fleet::actor]
pub struct TrainRank {
    rank: usize,
    world: usize,
}

#[fleet::actor]
impl TrainRank {
    pub fn new(world: usize, rank: usize) -> Self {
        TrainRank { rank, world }
    }

    /// Trains; returns (final weights, each step's gradient norm, optimizer state bytes,
    /// how many times the group was formed).
    pub async fn train(
        &mut self,
        name: String,
        hidden: usize,
        seed: u64,
        run: Run,
        checkpoint_dir: Option<std::path::PathBuf>,
    ) -> Result<(Vec<f32>, Vec<f64>, usize, usize), String> {
        let checkpoints = checkpoint_dir.map(|dir| Checkpoints::new(&name, dir));
        let trained = train(&name, self.world, self.rank, hidden, seed, run, checkpoints).await?;
        Ok((
            weights(&trained.varmap).map_err(|e| e.to_string())?,
            trained.norms,
            trained.optimizer_bytes,
            trained.formed,
        ))
    }
}

type RankResult = (Vec<f32>, Vec<f64>, usize, usize);

/// Runs `run` on two rank actors (seeds 7 and 8: different starts, rank 0's wins).
async fn two_ranks(
    name: &str,
    run: Run,
    checkpoint_dir: Option<std::path::PathBuf>,
) -> Result<Vec<RankResult>> {
    let mut ranks = Vec::new();
    for rank in 0..2usize {
        ranks.push(
            TrainRank::remote(2usize, rank)
                .max_restarts(1)
                .max_task_retries(1)
                .isolate()
                .spawn()
                .await?,
        );
    }
    let runs: Vec<ObjectRef<RankResult>> = ranks
        .iter()
        .enumerate()
        .map(|(r, actor)| {
            actor.train(
                name.to_string(),
                16,
                7 + r as u64,
                run,
                checkpoint_dir.clone(),
            )
        })
        .collect();
    let results = fleet::get_all(&runs).await?;
    for rank in &ranks {
        fleet::kill(rank.raw()).await?;
    }
    ensure!(
        results[0].0 == results[1].0,
        "{name}: the two ranks' weights differ after training"
    );
    Ok(results)
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

async fn two_ranks_train_as_one_rank_with_twice_the_batch() -> Result<()> {
    let accumulated = Run {
        micro_batches: 2,
        max_grad_norm: Some(0.05),
        ..Run::plain(30, 8)
    };
    let cases = [
        ("plain", Run::plain(30, 8)),
        ("accumulated and clipped", accumulated),
        (
            "ZeRO-1",
            Run {
                zero: Some(ZeroStage::One),
                ..accumulated
            },
        ),
        (
            "ZeRO-2",
            Run {
                zero: Some(ZeroStage::Two),
                ..accumulated
            },
        ),
        (
            "sharded AdamW without ZeRO",
            Run {
                zero: Some(ZeroStage::None),
                ..accumulated
            },
        ),
    ];
    for (index, (label, run)) in cases.into_iter().enumerate() {
        // The reference: one rank (a group of one in this driver) with both ranks' examples,
        // candle's own AdamW.
        let reference_run = Run {
            batch: run.batch * 2,
            zero: None,
            ..run
        };
        let reference = train(
            &format!("reference-{index}"),
            1,
            0,
            16,
            7,
            reference_run,
            None,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let expected = weights(&reference.varmap)?;
        let (before, after) = reference.held_out;
        ensure!(
            after < before * 0.7,
            "{label}: the reference does not learn: held-out loss {before} -> {after}"
        );
        let results = two_ranks(&format!("ddp-{index}"), run, None).await?;
        let difference = max_difference(&results[0].0, &expected);
        ensure!(
            difference < 1e-4,
            "{label}: 2 ranks x batch {} differ from 1 rank x batch {} by {difference}",
            run.batch,
            run.batch * 2
        );
        if run.max_grad_norm.is_some() {
            ensure!(
                results[0].1.iter().any(|n| *n > 0.05),
                "{label}: no step needed clipping: {:?}",
                results[0].1
            );
        }
        let state = results[0].2 + results[1].2;
        if let Some(stage) = run.zero {
            let whole = 2 * 4 * expected.len();
            let per_rank = results[0].2;
            match stage {
                ZeroStage::None => ensure!(per_rank == whole, "{label}: {per_rank} bytes of state"),
                _ => ensure!(
                    per_rank * 2 <= whole + 8 && state == whole,
                    "{label}: rank 0 holds {per_rank} of {whole} bytes of optimizer state"
                ),
            }
            println!(
                "  {label}: optimizer state per rank {per_rank} bytes of {whole} ({:.2})",
                per_rank as f64 / whole as f64
            );
        }
        println!(
            "  {label}: 2 ranks match 1 rank within {difference:e}; held-out loss {before:.4} -> {after:.4}"
        );
    }
    Ok(())
}

async fn a_rank_killed_mid_run_resumes_from_the_last_checkpoint_on_the_same_curve() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fleet-train-test-{}", std::process::id()));
    let run = Run {
        zero: Some(ZeroStage::Two),
        checkpoint_every: 5,
        ..Run::plain(20, 8)
    };
    let clean = two_ranks("elastic-clean", run, Some(dir.join("clean"))).await?;
    ensure!(
        clean[0].3 == 1,
        "the run without a fault formed its group {} times",
        clean[0].3
    );
    let started = Instant::now();
    let faulty = two_ranks(
        "elastic-faulty",
        Run {
            die_at: Some(12),
            ..run
        },
        Some(dir.join("faulty")),
    )
    .await?;
    let difference = max_difference(&faulty[0].0, &clean[0].0);
    ensure!(
        difference == 0.0,
        "after a rank's SIGKILL at step 12 and a resume from step 10, the weights differ from the run without a fault by {difference}"
    );
    ensure!(
        faulty[0].3 == 2,
        "the survivor formed its group {} times",
        faulty[0].3
    );
    println!(
        "  rank 1 SIGKILLed before step 12: resumed from step 10, the same weights bit for bit ({:?} for the faulty run)",
        started.elapsed()
    );
    for name in ["elastic-clean", "elastic-faulty"] {
        Checkpoints::new(name, &dir).forget().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn ranks_with_different_models_fail_together() -> Result<()> {
    let ranks = [
        TrainRank::remote(2usize, 0usize).spawn().await?,
        TrainRank::remote(2usize, 1usize).spawn().await?,
    ];
    let run = Run::plain(1, 4);
    let runs = [
        ranks[0].train("mismatch".to_string(), 16, 1, run, None),
        ranks[1].train("mismatch".to_string(), 12, 1, run, None),
    ];
    for (r, outcome) in runs.into_iter().enumerate() {
        let message = outcome
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        ensure!(
            message.contains("differs in size between ranks"),
            "rank {r} with a different hidden size: {message:?}"
        );
    }
    Ok(())
}

/// The regression task as a [`fleet_train::TrainingJob`] for the [`fleet_train::Trainer`]
/// scenarios: example `k` is `examples(k..k+1)`; weights from the seed.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RegressionJob {
    hidden: usize,
    seed: u64,
    /// The first process to train global example `die_at_example` (as the start of a
    /// micro-batch) SIGKILLs itself; the marker file makes it happen once per run.
    die_at_example: Option<(u64, std::path::PathBuf)>,
}

impl fleet_train::TrainingJob for RegressionJob {
    type Model = Mlp;

    fn build(&self, varmap: &VarMap) -> candle_core::Result<Mlp> {
        Mlp::new(varmap, self.hidden, self.seed)
    }

    fn loss(
        &self,
        model: &Mlp,
        _step: u64,
        examples: std::ops::Range<u64>,
    ) -> candle_core::Result<Tensor> {
        if let Some((at, marker)) = &self.die_at_example {
            if examples.start == *at
                && std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(marker)
                    .is_ok()
            {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &std::process::id().to_string()])
                    .status();
                std::thread::sleep(Duration::from_secs(5));
            }
        }
        model.loss(examples.start as usize..examples.end as usize)
    }

    fn evaluate(&self, model: &Mlp) -> candle_core::Result<Option<f32>> {
        Ok(Some(model.loss(HELD_OUT)?.to_scalar::<f32>()?))
    }
}

fleet_train::register_job!(RegressionJob);

fn regression(die_at_example: Option<(u64, std::path::PathBuf)>) -> RegressionJob {
    RegressionJob {
        hidden: 16,
        seed: 7,
        die_at_example,
    }
}

/// 20 steps of 16 examples in micro-batches of 4, AdamW at 0.01, clipped, ZeRO-1.
fn trainer(run: &str, world: usize, job: RegressionJob) -> fleet_train::Trainer<RegressionJob> {
    fleet_train::Trainer::new(run, job)
        .world_size(world)
        .steps(20)
        .global_batch(16)
        .micro_batch(4)
        .learning_rate(fleet_train::LearningRate::Constant(0.01))
        .weight_decay(0.0)
        .max_grad_norm(0.5)
        .zero(ZeroStage::One)
        .bucket_bytes(64)
        .eval_every(5)
        .cpus_per_rank(0.5)
}

fn losses(report: &fleet_train::TrainReport) -> Vec<f32> {
    report.history.iter().map(|r| r.loss).collect()
}

async fn the_trainer_with_two_ranks_follows_one_ranks_curve() -> Result<()> {
    let mut steps_seen = 0;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = counter.clone();
    let two = trainer("trainer-two", 2, regression(None))
        .on_progress(move |record| {
            seen.store(record.step, std::sync::atomic::Ordering::Relaxed);
        })
        .run()
        .await?;
    let one = trainer("trainer-one", 1, regression(None)).run().await?;
    steps_seen += counter.load(std::sync::atomic::Ordering::Relaxed);
    ensure!(
        two.history.len() == 20 && one.history.len() == 20,
        "20 steps each"
    );
    let difference = max_difference(&losses(&two), &losses(&one));
    ensure!(
        difference < 1e-5,
        "2 ranks x 8 examples and 1 rank x 16 differ in loss by {difference}"
    );
    let before = Mlp::new(&VarMap::new(), 16, 7)?
        .loss(HELD_OUT)?
        .to_scalar::<f32>()?;
    let after = two.val_loss.unwrap_or(f32::NAN);
    ensure!(
        after < before * 0.5,
        "the trainer does not learn: held-out loss {before} -> {after}"
    );
    ensure!(
        steps_seen == 20,
        "the progress callback saw up to step {steps_seen}"
    );
    let whole = 2 * 4 * two.parameters;
    ensure!(
        two.optimizer_state_bytes.iter().all(|b| b * 2 <= whole + 8),
        "ZeRO-1 ranks hold {:?} bytes of {whole}",
        two.optimizer_state_bytes
    );
    println!(
        "  Trainer: 2 ranks match 1 rank within {difference:e} over 20 steps; held-out loss {before:.4} -> {after:.4}; optimizer state per rank {:?} of {whole} bytes",
        two.optimizer_state_bytes
    );
    Ok(())
}

async fn the_trainer_restarts_a_sigkilled_rank_on_the_same_curve() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fleet-trainer-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let elastic = fleet_train::Elastic {
        restarts_per_rank: 2,
        min_world: 2,
    };
    let clean = trainer("trainer-clean", 2, regression(None))
        .checkpoints(dir.join("clean"), 5)
        .elastic(elastic)
        .run()
        .await?;
    // Slot 1 takes examples 8..16 of each step: step 12's first micro-batch starts at 200.
    let faulty = trainer(
        "trainer-faulty",
        2,
        regression(Some((12 * 16 + 8, dir.join("die-once")))),
    )
    .checkpoints(dir.join("faulty"), 5)
    .elastic(elastic)
    .run()
    .await?;
    ensure!(
        faulty.restarts == 1 && faulty.recoveries.len() == 1,
        "restarts {} recoveries {:?}",
        faulty.restarts,
        faulty.recoveries
    );
    let recovery = &faulty.recoveries[0];
    ensure!(
        recovery.failed_at_step == 12 && recovery.resumed_from == 10,
        "{recovery:?}"
    );
    ensure!(
        faulty.digest == clean.digest && losses(&faulty) == losses(&clean),
        "after the restart the run differs from the one without a fault: final loss {} vs {}",
        faulty.final_loss,
        clean.final_loss
    );
    ensure!(
        faulty.replays_match() && !faulty.replayed.is_empty(),
        "{:?}",
        faulty.replayed
    );
    println!(
        "  Trainer: slot 1 SIGKILLed at step 12, restarted, resumed from step 10 in {:.2} s; final weights equal the clean run's bit for bit",
        recovery.seconds
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn the_trainer_goes_on_with_fewer_ranks_when_one_is_lost_for_good() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fleet-trainer-shrink-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let clean = trainer("trainer-shrink-clean", 2, regression(None))
        .run()
        .await?;
    let shrunk = trainer(
        "trainer-shrink",
        2,
        regression(Some((12 * 16 + 8, dir.join("die-once")))),
    )
    .checkpoints(dir.join("shrink"), 5)
    .elastic(fleet_train::Elastic {
        restarts_per_rank: 0,
        min_world: 1,
    })
    .run()
    .await?;
    ensure!(
        shrunk.world == 1 && shrunk.dropped.len() == 1 && shrunk.dropped[0].0 == 1,
        "world {} dropped {:?}",
        shrunk.world,
        shrunk.dropped
    );
    ensure!(
        shrunk.history.iter().skip(10).all(|r| r.world == 1),
        "steps after the resume ran with {:?} ranks",
        shrunk.history.iter().map(|r| r.world).collect::<Vec<_>>()
    );
    let difference = max_difference(&losses(&shrunk), &losses(&clean));
    ensure!(
        difference < 1e-5,
        "1 survivor after step 10 differs from 2 ranks throughout by {difference} in loss"
    );
    println!(
        "  Trainer: slot 1 lost for good at step 12; slot 0 alone resumed from step 10 ({:.2} s after the loss), loss curve within {difference:e} of the 2-rank run",
        shrunk.recoveries.first().map_or(f64::NAN, |r| r.seconds)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn the_trainer_refuses_what_cannot_run() -> Result<()> {
    let uneven = trainer("trainer-uneven", 3, regression(None)).run().await;
    let message = uneven.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(
        message.contains("does not split evenly over 3 ranks"),
        "{message:?}"
    );
    let no_checkpoints = trainer("trainer-elastic", 2, regression(None))
        .elastic(fleet_train::Elastic {
            restarts_per_rank: 1,
            min_world: 1,
        })
        .run()
        .await;
    let message = no_checkpoints
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(message.contains("Trainer::checkpoints"), "{message:?}");
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Unregistered;
    impl fleet_train::TrainingJob for Unregistered {
        type Model = ();
        fn build(&self, _: &VarMap) -> candle_core::Result<()> {
            Ok(())
        }
        fn loss(&self, _: &(), _: u64, _: std::ops::Range<u64>) -> candle_core::Result<Tensor> {
            Tensor::new(0f32, &Device::Cpu)
        }
    }
    let message = fleet_train::Trainer::new("trainer-unregistered", Unregistered)
        .run()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(
        message.contains("register_job!(Unregistered)"),
        "{message:?}"
    );
    Ok(())
}

type Scenario = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>>>>;

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start a runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        if let Err(error) = fleet::init_with(fleet::InitOptions {
            num_cpus: Some(4.0),
            ..Default::default()
        })
        .await
        {
            eprintln!("fleet::init failed: {error}");
            return std::process::ExitCode::FAILURE;
        }
        let scenarios: Vec<(&str, Scenario)> = vec![
            ("two_ranks_train_as_one_rank_with_twice_the_batch", || {
                Box::pin(two_ranks_train_as_one_rank_with_twice_the_batch())
            }),
            (
                "a_rank_killed_mid_run_resumes_from_the_last_checkpoint_on_the_same_curve",
                || {
                    Box::pin(
                        a_rank_killed_mid_run_resumes_from_the_last_checkpoint_on_the_same_curve(),
                    )
                },
            ),
            ("ranks_with_different_models_fail_together", || {
                Box::pin(ranks_with_different_models_fail_together())
            }),
            ("the_trainer_with_two_ranks_follows_one_ranks_curve", || {
                Box::pin(the_trainer_with_two_ranks_follows_one_ranks_curve())
            }),
            (
                "the_trainer_restarts_a_sigkilled_rank_on_the_same_curve",
                || Box::pin(the_trainer_restarts_a_sigkilled_rank_on_the_same_curve()),
            ),
            (
                "the_trainer_goes_on_with_fewer_ranks_when_one_is_lost_for_good",
                || Box::pin(the_trainer_goes_on_with_fewer_ranks_when_one_is_lost_for_good()),
            ),
            ("the_trainer_refuses_what_cannot_run", || {
                Box::pin(the_trainer_refuses_what_cannot_run())
            }),
        ];
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        let (mut passed, mut failed) = (0, 0);
        for (name, scenario) in scenarios {
            if filter.as_deref().is_some_and(|f| !name.contains(f)) {
                continue;
            }
            let started = Instant::now();
            match tokio::time::timeout(Duration::from_secs(180), scenario()).await {
                Ok(Ok(())) => {
                    passed += 1;
                    println!("test {name} ... ok ({:?})", started.elapsed());
                }
                Ok(Err(error)) => {
                    failed += 1;
                    println!("test {name} ... FAILED: {error:#}");
                }
                Err(_) => {
                    failed += 1;
                    println!("test {name} ... FAILED: timed out after 180 s");
                }
            }
        }
        fleet::shutdown().await;
        println!("{passed} passed, {failed} failed");
        if failed == 0 {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    })
}
