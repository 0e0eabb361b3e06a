//! Trains a small character-level GPT on Shakespeare with 2 data-parallel ranks on an
//! embedded Fleet cluster, then samples from it: the template to copy for DDP training.
//!
//! ```sh
//! cargo run --release -p fleet-train --example train_gpt            # 600 steps
//! cargo run --release -p fleet-train --example train_gpt -- --steps 2000 --zero 2
//! ```
//!
//! The model is nanoGPT's CPU configuration (4 layers, 4 heads, 128-dim embeddings, a
//! 64-character context: about 0.8 M parameters, `fleet_train::gpt`). A [`Trainer`] spawns
//! one rank actor per worker; each builds the model from the same seed, trains on its part
//! of every step's global batch (12 sequences per rank), averages gradients with the others
//! in buckets, and steps AdamW (sharded at `--zero 1/2`). Rank 0 reports each step to this
//! driver (the progress bar), measures the loss on the held-out 10% every `--eval-every`
//! steps, and samples text at the end. Checkpoints every 100 steps let a lost rank come
//! back (or the run go on without it) from the last one. The last line is
//! `val_loss <value>`.

use std::time::Instant;

use fleet_train::gpt::{CharGpt, GptConfig};
use fleet_train::{Elastic, LearningRate, Trainer, ZeroStage};

fn argument(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match argument(name) {
        Some(text) => text
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} {text:?}: expected a number")),
        None => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    // One thread per rank for candle's matrix products (as PyTorch's peer runs, one thread
    // per process): set before Fleet starts, so that every worker process inherits it.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        fleet::init().await?;
        let outcome = run().await;
        fleet::shutdown().await;
        outcome
    })
}

async fn run() -> anyhow::Result<()> {
    let steps: u64 = number("--steps", 600)?;
    let batch: u64 = number("--batch", 12)?;
    let eval_every: u64 = number("--eval-every", 100)?;
    let zero: u8 = number("--zero", 0)?;
    let world: usize = number("--ranks", 2)?;
    anyhow::ensure!(
        steps > 0 && eval_every > 0 && batch > 0 && world > 0,
        "--steps, --eval-every, --batch and --ranks must be positive"
    );
    let stage = match zero {
        0 => ZeroStage::None,
        1 => ZeroStage::One,
        2 => ZeroStage::Two,
        _ => anyhow::bail!("--zero is 0 (DDP), 1 or 2"),
    };
    let job = CharGpt::shakespeare(GptConfig::nano());
    let context = job.model.context as u64;
    let checkpoints = std::env::temp_dir().join(format!("fleet-train-gpt-{}", std::process::id()));
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]",
    )?);
    let started = Instant::now();
    let progress_bar = bar.clone();
    let mut last_val = None;
    let report = Trainer::new("train-gpt", job)
        .world_size(world)
        .steps(steps)
        .global_batch(batch * world as u64)
        // nanoGPT's schedule: warm-up, then cosine decay to a tenth.
        .learning_rate(LearningRate::WarmupCosine {
            peak: 1e-3,
            warmup: 100.min(steps / 10).max(1),
            floor: 1e-4,
        })
        .betas(0.9, 0.99)
        .weight_decay(0.1)
        .max_grad_norm(1.0)
        .zero(stage)
        .eval_every(eval_every)
        .checkpoints(&checkpoints, 100)
        .elastic(Elastic {
            restarts_per_rank: 2,
            min_world: 1,
        })
        .on_progress(move |record| {
            if record.val_loss.is_some() {
                last_val = record.val_loss;
            }
            let tokens = (record.step * batch * world as u64 * context) as f64;
            progress_bar.set_position(record.step);
            progress_bar.set_message(format!(
                "loss {:.3}  val {}  {:.0} tokens/s",
                record.loss,
                last_val.map_or("-".to_string(), |v| format!("{v:.3}")),
                tokens / started.elapsed().as_secs_f64()
            ));
        })
        .run()
        .await;
    bar.finish();
    let _ = std::fs::remove_dir_all(&checkpoints);
    let report = report?;
    println!(
        "{} ranks, {} parameters, {} steps of {}x{} tokens per rank: {:.0} tokens/s, {:.1}% of step time in collectives",
        report.world,
        report.parameters,
        steps,
        batch,
        context,
        report.tokens_per_s,
        100.0 * report.communication_fraction
    );
    for recovery in &report.recoveries {
        println!(
            "recovered from a lost rank at step {} (resumed from step {} with {} ranks, {:.1} s): {}",
            recovery.failed_at_step,
            recovery.resumed_from,
            recovery.world,
            recovery.seconds,
            recovery.cause
        );
    }
    if let Some(sample) = &report.finish {
        println!("--- sampled ---\n{sample}\n---");
    }
    // Figures a script can read (`bench/torch_ddp_gpt.py` prints the peer's).
    println!(
        "train_tokens_per_s_{world}r {:.0} tokens/s",
        report.tokens_per_s
    );
    println!(
        "train_comm_fraction_{world}r {:.4} ratio",
        report.communication_fraction
    );
    println!("val_loss {:.4}", report.val_loss.unwrap_or(f32::NAN));
    Ok(())
}
