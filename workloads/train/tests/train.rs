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
use fleet_train::{Ddp, DdpConfig};

/// A small MLP: 4 → hidden → 1.
struct Mlp {
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
}

struct Trained {
    varmap: VarMap,
    norms: Vec<f64>,
    /// Loss on held-out examples before and after training.
    held_out: (f32, f32),
}

const HELD_OUT: std::ops::Range<usize> = 100_000..100_256;

/// Trains `run` as rank `rank` of `group`: this rank's examples of step `s` are its slice
/// of the step's `world · batch` examples.
async fn train(group: Group, hidden: usize, seed: u64, run: Run) -> Result<Trained, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let (rank, world) = (group.rank(), group.world_size());
    let varmap = VarMap::new();
    let model = Mlp::new(&varmap, hidden, seed).map_err(|e| text(&e))?;
    let config = DdpConfig {
        max_grad_norm: run.max_grad_norm,
        // Small buckets: this model's 4 parameters go in 3 all-reduces.
        bucket_bytes: 64,
    };
    let mut ddp = Ddp::new(group, &varmap, config)
        .await
        .map_err(|e| text(&e))?;
    let mut optimizer = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 0.01,
            ..ParamsAdamW::default()
        },
    )
    .map_err(|e| text(&e))?;
    let mut norms = Vec::new();
    let held_out = |model: &Mlp| -> Result<f32, String> {
        model
            .loss(HELD_OUT)
            .and_then(|l| l.to_scalar::<f32>())
            .map_err(|e| e.to_string())
    };
    let before = held_out(&model)?;
    let micro = run.batch / run.micro_batches;
    for step in 0..run.steps {
        let start = step * world * run.batch + rank * run.batch;
        for m in 0..run.micro_batches {
            let from = start + m * micro;
            let loss = model.loss(from..from + micro).map_err(|e| text(&e))?;
            ddp.backward(&loss).map_err(|e| text(&e))?;
        }
        let stats = ddp.step(&mut optimizer).await.map_err(|e| text(&e))?;
        norms.push(stats.grad_norm);
    }
    let after = held_out(&model)?;
    Ok(Trained {
        varmap,
        norms,
        held_out: (before, after),
    })
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

    /// Trains; returns (final weights, each step's gradient norm).
    pub async fn train(
        &mut self,
        name: String,
        hidden: usize,
        seed: u64,
        run: Run,
    ) -> Result<(Vec<f32>, Vec<f64>), String> {
        let group = Group::init(&name, self.world, self.rank)
            .await
            .map_err(|e| e.to_string())?;
        let trained = train(group, hidden, seed, run).await?;
        Ok((
            weights(&trained.varmap).map_err(|e| e.to_string())?,
            trained.norms,
        ))
    }
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

async fn two_ranks_train_as_one_rank_with_twice_the_batch() -> Result<()> {
    let cases = [
        (
            "plain",
            Run {
                steps: 6,
                batch: 8,
                micro_batches: 1,
                max_grad_norm: None,
            },
        ),
        (
            "accumulated and clipped",
            Run {
                steps: 6,
                batch: 8,
                micro_batches: 2,
                max_grad_norm: Some(0.05),
            },
        ),
    ];
    for (index, (label, run)) in cases.into_iter().enumerate() {
        // The reference: one rank (a group of one in this driver) with both ranks' examples.
        let single = Group::init(&format!("reference-{index}"), 1, 0).await?;
        let reference_run = Run {
            batch: run.batch * 2,
            micro_batches: run.micro_batches,
            ..run
        };
        let reference = train(single, 16, 7, reference_run)
            .await
            .map_err(anyhow::Error::msg)?;
        let expected = weights(&reference.varmap)?;
        let (before, after) = reference.held_out;
        ensure!(
            after < before * 0.7,
            "{label}: the reference does not learn: held-out loss {before} -> {after}"
        );
        // Two ranks from different random starts (seeds 7 and 8): rank 0's wins.
        let ranks = [
            TrainRank::remote(2usize, 0usize).spawn().await?,
            TrainRank::remote(2usize, 1usize).spawn().await?,
        ];
        let name = format!("ddp-{index}");
        let runs: Vec<ObjectRef<(Vec<f32>, Vec<f64>)>> = ranks
            .iter()
            .enumerate()
            .map(|(r, actor)| actor.train(name.clone(), 16, 7 + r as u64, run))
            .collect();
        let results = fleet::get_all(&runs).await?;
        ensure!(
            results[0].0 == results[1].0,
            "{label}: the two ranks' weights differ after training"
        );
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
        println!(
            "  {label}: 2 ranks match 1 rank within {difference:e}; held-out loss {before:.4} -> {after:.4}"
        );
        for rank in &ranks {
            fleet::kill(rank.raw()).await?;
        }
    }
    Ok(())
}

async fn ranks_with_different_models_fail_together() -> Result<()> {
    let ranks = [
        TrainRank::remote(2usize, 0usize).spawn().await?,
        TrainRank::remote(2usize, 1usize).spawn().await?,
    ];
    let run = Run {
        steps: 1,
        batch: 4,
        micro_batches: 1,
        max_grad_norm: None,
    };
    let runs = [
        ranks[0].train("mismatch".to_string(), 16, 1, run),
        ranks[1].train("mismatch".to_string(), 12, 1, run),
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
            ("ranks_with_different_models_fail_together", || {
                Box::pin(ranks_with_different_models_fail_together())
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
