//! `fleet bench train`: data-parallel training of nanoGPT's CPU GPT (`fleet_train::gpt`)
//! on an embedded single-node cluster, 1 and 2 ranks of one thread each: tokens/s and the
//! step time split into computation and communication. With `--peer PYTHON`, PyTorch DDP
//! (gloo, `bench/torch_ddp_gpt.py`) trains the same model configuration on the same text
//! with the same batch, schedule and optimizer first, on a quiet machine, and `ratio_*`
//! lines compare the two.

use std::time::Instant;

use fleet_train::gpt::{CharGpt, GptConfig};
use fleet_train::{LearningRate, Trainer};

/// What to run.
pub struct TrainBench {
    /// Rank counts to measure.
    pub ranks: Vec<usize>,
    /// Steps per run (the first of each run is not timed).
    pub steps: u64,
    /// Sequences per rank per step.
    pub batch: u64,
    /// A Python with PyTorch, to run the DDP peer.
    pub peer_python: Option<String>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the benchmark; prints `name value unit` lines.
pub async fn run(options: TrainBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.steps >= 2 && options.batch >= 1 && options.ranks.iter().all(|r| *r >= 1),
        "--steps must be at least 2, --batch and every rank count at least 1"
    );
    // The peer first, on a quiet machine (no cluster processes yet).
    let mut peer = Vec::new();
    if let Some(python) = &options.peer_python {
        for world in &options.ranks {
            let args = [
                "--ranks".to_string(),
                world.to_string(),
                "--steps".to_string(),
                options.steps.to_string(),
            ];
            let text = super::run_peer(python, "torch_ddp_gpt.py", &args, "PyTorch DDP")?;
            let tokens_per_s =
                super::collective::figures_with_prefix(&text, "torch_ddp_tokens_per_s_")
                    .into_iter()
                    .find(|(label, _)| *label == format!("{world}r"))
                    .map(|(_, value)| value);
            peer.push((*world, tokens_per_s));
        }
    }
    // One thread per rank for candle's matrix products, as the peer's processes: the
    // workers inherit it (set before the embedded cluster starts them).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let most = options.ranks.iter().copied().max().unwrap_or(1);
    fleet::init_with(fleet::InitOptions {
        num_cpus: Some(most.max(2) as f64),
        ..Default::default()
    })
    .await?;
    let outcome = measure(&options).await;
    fleet::shutdown().await;
    let figures = outcome?;
    for (world, peer_tokens) in peer {
        let ours = figures.iter().find(|(w, _)| *w == world).map(|f| f.1);
        if let (Some(ours), Some(theirs)) = (ours, peer_tokens) {
            println!(
                "ratio_fleet_over_torch_ddp_tokens_per_s_{world}r {:.3} ratio",
                ours / theirs
            );
        }
    }
    Ok(())
}

/// (ranks, tokens/s) of each run.
async fn measure(options: &TrainBench) -> anyhow::Result<Vec<(usize, f64)>> {
    let mut figures = Vec::new();
    for world in &options.ranks {
        let world = *world;
        let job = CharGpt {
            sample_chars: 0,
            ..CharGpt::shakespeare(GptConfig::nano())
        };
        let started = Instant::now();
        let report = Trainer::new(&format!("bench-train-{world}r-{}", std::process::id()), job)
            .world_size(world)
            .steps(options.steps)
            .global_batch(options.batch * world as u64)
            // The peer's schedule and optimizer (nanoGPT's).
            .learning_rate(LearningRate::WarmupCosine {
                peak: 1e-3,
                warmup: 100.min(options.steps / 10).max(1),
                floor: 1e-4,
            })
            .betas(0.9, 0.99)
            .weight_decay(0.1)
            .max_grad_norm(1.0)
            .cpus_per_rank(1.0)
            .run()
            .await?;
        let timed = report.history.get(1..).unwrap_or_default();
        let mut step_ms: Vec<f64> = timed.iter().map(|r| r.seconds * 1e3).collect();
        let mut comm_ms: Vec<f64> = timed.iter().map(|r| r.communication * 1e3).collect();
        println!(
            "train_tokens_per_s_{world}r {:.0} tokens/s",
            report.tokens_per_s
        );
        println!("train_step_ms_{world}r {:.2} ms", median(&mut step_ms));
        println!("train_comm_ms_{world}r {:.3} ms", median(&mut comm_ms));
        println!(
            "train_comm_fraction_{world}r {:.4} ratio",
            report.communication_fraction
        );
        println!(
            "train_val_loss_{world}r {:.4} loss",
            report.val_loss.unwrap_or(f32::NAN)
        );
        eprintln!(
            "{world} rank(s): {} steps of {}x{} tokens per rank, {} parameters, in {:.1} s",
            options.steps,
            options.batch,
            GptConfig::nano().context,
            report.parameters,
            started.elapsed().as_secs_f64()
        );
        figures.push((world, report.tokens_per_s));
    }
    Ok(figures)
}
