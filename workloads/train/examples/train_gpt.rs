//! Trains a small character-level GPT on Shakespeare with 2 data-parallel ranks on an
//! embedded Fleet cluster, then samples from it: the template to copy for DDP training.
//!
//! ```sh
//! cargo run --release -p fleet-train --example train_gpt            # 600 steps
//! cargo run --release -p fleet-train --example train_gpt -- --steps 2000 --zero 2
//! ```
//!
//! The model is nanoGPT's CPU configuration (4 layers, 4 heads, 128-dim embeddings, a
//! 64-character context: about 0.8 M parameters), written with candle-nn. Each rank is an
//! actor: it builds the model, joins the collective group, wraps the model in `Ddp`
//! (rank 0's weights everywhere), and trains on its own random batches of the text's first
//! 90%. Rank 0 reports each step through a `fleet::channel` to this driver (the progress
//! bar), measures the loss on the last 10% every `--eval-every` steps, and samples text at
//! the end. The last line is `val_loss <value>`.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use fleet::{ObjectRef, Receiver, Sender};
use fleet_collective::Group;
use fleet_train::{Ddp, DdpConfig, ShardedAdamW, ZeroStage};
use serde::{Deserialize, Serialize};

/// The text, in every process's binary (workers are this binary too).
const TEXT: &str = include_str!("../data/shakespeare.txt");

/// The model and run configuration (the same on every rank).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Config {
    layers: usize,
    heads: usize,
    embedding: usize,
    context: usize,
    /// Sequences per rank per step.
    batch: usize,
    steps: usize,
    learning_rate: f64,
    eval_every: usize,
    /// 0: candle's AdamW through `Ddp::step`; 1 or 2: the sharded AdamW at that ZeRO stage.
    zero: u8,
    seed: u64,
}

/// One step, as rank 0 reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    step: usize,
    loss: f32,
    val_loss: Option<f32>,
}

/// What each rank returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    val_loss: f32,
    tokens_per_s: f64,
    /// Of the step time, the share spent in all-reduces.
    communication: f64,
    sample: String,
    parameters: usize,
}

/// The characters of the text, as token ids.
struct Vocabulary {
    chars: Vec<char>,
}

impl Vocabulary {
    fn of(text: &str) -> Vocabulary {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Vocabulary { chars }
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        text.chars()
            .map(|c| self.chars.binary_search(&c).unwrap_or(0) as u32)
            .collect()
    }

    fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|i| self.chars.get(*i as usize).copied().unwrap_or('?'))
            .collect()
    }
}

/// A small deterministic generator (batches and sampling must not depend on the process).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f32 {
        (self.next() as f32) / (1u64 << 31) as f32
    }
}

/// Weights drawn as nanoGPT draws them (normal, standard deviation 0.02; biases zero):
/// candle-nn's defaults (unit-variance embeddings) train far slower here.
fn linear(
    inputs: usize,
    outputs: usize,
    bias: bool,
    std: f64,
    vb: VarBuilder,
) -> candle_core::Result<candle_nn::Linear> {
    let weight = vb.get_with_hints(
        (outputs, inputs),
        "weight",
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )?;
    let bias = if bias {
        Some(vb.get_with_hints(outputs, "bias", candle_nn::Init::Const(0.0))?)
    } else {
        None
    };
    Ok(candle_nn::Linear::new(weight, bias))
}

fn embedding(
    count: usize,
    dims: usize,
    vb: VarBuilder,
) -> candle_core::Result<candle_nn::Embedding> {
    let table = vb.get_with_hints(
        (count, dims),
        "weight",
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    )?;
    Ok(candle_nn::Embedding::new(table, dims))
}

/// Layer normalization from differentiable tensor ops. candle-nn's `LayerNorm` (and its
/// `softmax_last_dim`) take a fused kernel that has no backward pass: gradients stop there,
/// and a GPT built on them learns no better than a bigram table.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(dims: usize, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dims, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dims, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(variance + 1e-5)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: candle_nn::Linear,
    projection: candle_nn::Linear,
    norm2: LayerNorm,
    up: candle_nn::Linear,
    down: candle_nn::Linear,
    heads: usize,
}

impl Block {
    fn new(c: &Config, vb: VarBuilder) -> candle_core::Result<Block> {
        let e = c.embedding;
        // Residual projections scaled down with depth, as GPT-2.
        let residual = 0.02 / (2.0 * c.layers as f64).sqrt();
        Ok(Block {
            norm1: LayerNorm::new(e, vb.pp("norm1"))?,
            qkv: linear(e, 3 * e, true, 0.02, vb.pp("qkv"))?,
            projection: linear(e, e, true, residual, vb.pp("projection"))?,
            norm2: LayerNorm::new(e, vb.pp("norm2"))?,
            up: linear(e, 4 * e, true, 0.02, vb.pp("up"))?,
            down: linear(4 * e, e, true, residual, vb.pp("down"))?,
            heads: c.heads,
        })
    }

    /// `x`: (batch, time, embedding); `mask`: (time, time), 1 where attention is not allowed.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        let d = e / self.heads;
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x)?)?
            .reshape((b, t, 3, self.heads, d))?;
        let q = qkv.i((.., .., 0))?.transpose(1, 2)?.contiguous()?;
        let k = qkv.i((.., .., 1))?.transpose(1, 2)?.contiguous()?;
        let v = qkv.i((.., .., 2))?.transpose(1, 2)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let blocked = mask.broadcast_as(scores.shape())?;
        let minus_infinity =
            Tensor::new(f32::NEG_INFINITY, x.device())?.broadcast_as(scores.shape())?;
        let scores = blocked.where_cond(&minus_infinity, &scores)?;
        let attention = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let mixed = attention
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, e))?;
        let x = (x + self.projection.forward(&mixed)?)?;
        let hidden = self.up.forward(&self.norm2.forward(&x)?)?.gelu()?;
        x + self.down.forward(&hidden)?
    }
}

struct Gpt {
    tokens: candle_nn::Embedding,
    positions: candle_nn::Embedding,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: candle_nn::Linear,
    context: usize,
}

impl Gpt {
    fn new(c: &Config, vocabulary: usize, vb: VarBuilder) -> candle_core::Result<Gpt> {
        Ok(Gpt {
            tokens: embedding(vocabulary, c.embedding, vb.pp("tokens"))?,
            positions: embedding(c.context, c.embedding, vb.pp("positions"))?,
            blocks: (0..c.layers)
                .map(|i| Block::new(c, vb.pp(format!("block{i}"))))
                .collect::<candle_core::Result<_>>()?,
            norm: LayerNorm::new(c.embedding, vb.pp("norm"))?,
            head: linear(c.embedding, vocabulary, false, 0.02, vb.pp("head"))?,
            context: c.context,
        })
    }

    /// Logits (batch, time, vocabulary) for token ids (batch, time).
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, ids.device())?;
        let mut x = self
            .tokens
            .forward(ids)?
            .broadcast_add(&self.positions.forward(&positions)?)?;
        let mask: Vec<u8> = (0..t)
            .flat_map(|i| (0..t).map(move |j| u8::from(j > i)))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), ids.device())?;
        for block in &self.blocks {
            x = block.forward(&x, &mask)?;
        }
        self.head.forward(&self.norm.forward(&x)?)
    }

    fn loss(&self, inputs: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
        let logits = self.forward(inputs)?;
        let (b, t, v) = logits.dims3()?;
        candle_nn::loss::cross_entropy(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?)
    }

    /// `count` characters after `prompt`, sampled.
    fn sample(&self, prompt: &[u32], count: usize, rng: &mut Lcg) -> candle_core::Result<Vec<u32>> {
        let mut ids = prompt.to_vec();
        for _ in 0..count {
            let start = ids.len().saturating_sub(self.context);
            let window = Tensor::new(&ids[start..], &Device::Cpu)?.unsqueeze(0)?;
            let logits = self.forward(&window)?;
            let last = logits.i((0, logits.dim(1)? - 1))?;
            let probabilities = candle_nn::ops::softmax(&last, D::Minus1)?.to_vec1::<f32>()?;
            let mut threshold = rng.unit();
            let mut chosen = probabilities.len() - 1;
            for (i, p) in probabilities.iter().enumerate() {
                if threshold < *p {
                    chosen = i;
                    break;
                }
                threshold -= p;
            }
            ids.push(chosen as u32);
        }
        Ok(ids[prompt.len()..].to_vec())
    }
}

/// A batch of `batch` sequences from `data` at offsets drawn from `rng`: (inputs, targets).
fn batch(data: &[u32], c: &Config, rng: &mut Lcg) -> candle_core::Result<(Tensor, Tensor)> {
    let mut inputs = Vec::with_capacity(c.batch * c.context);
    let mut targets = Vec::with_capacity(c.batch * c.context);
    for _ in 0..c.batch {
        let at = rng.below(data.len() - c.context - 1);
        inputs.extend_from_slice(&data[at..at + c.context]);
        targets.extend_from_slice(&data[at + 1..at + c.context + 1]);
    }
    Ok((
        Tensor::from_vec(inputs, (c.batch, c.context), &Device::Cpu)?,
        Tensor::from_vec(targets, (c.batch, c.context), &Device::Cpu)?,
    ))
}

/// Linear warm-up over 100 steps, then cosine decay to a tenth.
fn learning_rate(c: &Config, step: usize) -> f64 {
    let warmup = 100.min(c.steps / 10).max(1);
    if step < warmup {
        return c.learning_rate * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (c.steps - warmup).max(1) as f64;
    let minimum = c.learning_rate / 10.0;
    minimum + 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (c.learning_rate - minimum)
}

/// The mean loss over fixed batches of the validation text.
fn validation_loss(model: &Gpt, data: &[u32], c: &Config) -> candle_core::Result<f32> {
    let mut rng = Lcg(12345);
    let mut total = 0.0;
    let rounds = 8;
    for _ in 0..rounds {
        let (x, y) = batch(data, c, &mut rng)?;
        total += model.loss(&x, &y)?.to_scalar::<f32>()?;
    }
    Ok(total / rounds as f32)
}

async fn train(
    c: Config,
    world: usize,
    rank: usize,
    progress: Option<Sender<Progress>>,
) -> anyhow::Result<Report> {
    let vocabulary = Vocabulary::of(TEXT);
    let ids = vocabulary.encode(TEXT);
    let split = ids.len() * 9 / 10;
    let (train_ids, val_ids) = ids.split_at(split);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Gpt::new(&c, vocabulary.chars.len(), vb)?;
    let group = Group::init("train-gpt", world, rank).await?;
    let mut ddp = Ddp::new(
        group,
        &varmap,
        DdpConfig {
            max_grad_norm: Some(1.0),
            ..DdpConfig::default()
        },
    )
    .await?;
    let params = ParamsAdamW {
        lr: c.learning_rate,
        weight_decay: 0.01,
        ..ParamsAdamW::default()
    };
    let mut adamw = AdamW::new(varmap.all_vars(), params.clone())?;
    let stage = match c.zero {
        1 => ZeroStage::One,
        2 => ZeroStage::Two,
        _ => ZeroStage::None,
    };
    let mut sharded = ShardedAdamW::new(params, stage, ddp.update_range(stage))?;
    let mut progress = progress;
    let mut rng = Lcg(c.seed ^ (rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (mut busy, mut communication) = (Duration::ZERO, Duration::ZERO);
    let mut val_loss = f32::NAN;
    for step in 0..c.steps {
        let started = Instant::now();
        let lr = learning_rate(&c, step);
        adamw.set_learning_rate(lr);
        sharded.set_learning_rate(lr);
        let (x, y) = batch(train_ids, &c, &mut rng)?;
        let loss = model.loss(&x, &y)?;
        let loss_value = loss.to_scalar::<f32>()?;
        ddp.backward(&loss)?;
        let stats = if c.zero == 0 {
            ddp.step(&mut adamw).await?
        } else {
            ddp.step_sharded(&mut sharded).await?
        };
        if step > 0 {
            // The first step warms up (allocations, connections).
            busy += started.elapsed();
            communication += stats.communication;
        }
        let evaluate = (step + 1) % c.eval_every == 0 || step + 1 == c.steps;
        let val = if rank == 0 && evaluate {
            val_loss = validation_loss(&model, val_ids, &c)?;
            Some(val_loss)
        } else {
            None
        };
        if let Some(tx) = progress.as_mut() {
            tx.send(Progress {
                step: step + 1,
                loss: loss_value,
                val_loss: val,
            })
            .await?;
        }
    }
    if let Some(tx) = progress.take() {
        tx.close().await?;
    }
    let tokens = (c.steps.saturating_sub(1) * c.batch * c.context * world) as f64;
    let sample = if rank == 0 {
        let prompt = vocabulary.encode("\n");
        vocabulary.decode(&model.sample(&prompt, 400, &mut Lcg(c.seed))?)
    } else {
        String::new()
    };
    Ok(Report {
        val_loss,
        tokens_per_s: tokens / busy.as_secs_f64().max(1e-9),
        communication: communication.as_secs_f64() / busy.as_secs_f64().max(1e-9),
        sample,
        parameters: ddp.parameter_count(),
    })
}

/// One data-parallel rank.
#[fleet::actor]
pub struct GptRank {
    world: usize,
    rank: usize,
}

#[fleet::actor]
impl GptRank {
    pub fn new(world: usize, rank: usize) -> Self {
        GptRank { world, rank }
    }

    pub async fn train(
        &mut self,
        config: Config,
        progress: Option<Sender<Progress>>,
    ) -> Result<Report, String> {
        train(config, self.world, self.rank, progress)
            .await
            .map_err(|e| format!("rank {}: {e:#}", self.rank))
    }
}

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
    let config = Config {
        layers: 4,
        heads: 4,
        embedding: 128,
        context: 64,
        batch: number("--batch", 12)?,
        steps: number("--steps", 600)?,
        learning_rate: 1e-3,
        eval_every: number("--eval-every", 100)?,
        zero: number("--zero", 0)?,
        seed: 1337,
    };
    anyhow::ensure!(
        config.steps > 0 && config.eval_every > 0 && config.batch > 0,
        "--steps, --eval-every and --batch must be positive"
    );
    anyhow::ensure!(config.zero <= 2, "--zero is 0 (DDP), 1 or 2");
    let world: usize = number("--ranks", 2)?;
    anyhow::ensure!(world >= 1, "--ranks must be at least 1");
    let mut ranks = Vec::new();
    for rank in 0..world {
        ranks.push(GptRank::remote(world, rank).spawn().await?);
    }
    let (tx, mut rx): (Sender<Progress>, Receiver<Progress>) = fleet::channel(64);
    let mut progress = Some(tx);
    let runs: Vec<ObjectRef<Report>> = ranks
        .iter()
        .enumerate()
        .map(|(rank, actor)| actor.train(config, if rank == 0 { progress.take() } else { None }))
        .collect();
    let bar = indicatif::ProgressBar::new(config.steps as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]",
    )?);
    let started = Instant::now();
    let mut last_val = None;
    // Progress until the stream ends, or until the runs end first (a rank that failed
    // before its first report never connected its sender: the stream would not end).
    let finished = fleet::get_all(&runs);
    tokio::pin!(finished);
    let mut reports = None;
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(p) = message? else { break };
                if p.val_loss.is_some() {
                    last_val = p.val_loss;
                }
                let tokens = (p.step * config.batch * config.context * world) as f64;
                bar.set_position(p.step as u64);
                bar.set_message(format!(
                    "loss {:.3}  val {}  {:.0} tokens/s",
                    p.loss,
                    last_val.map_or("-".to_string(), |v| format!("{v:.3}")),
                    tokens / started.elapsed().as_secs_f64()
                ));
            }
            outcome = &mut finished => {
                reports = Some(outcome?);
                break;
            }
        }
    }
    bar.finish();
    let reports = match reports {
        Some(reports) => reports,
        None => finished.await?,
    };
    let first = &reports[0];
    println!(
        "{} ranks, {} parameters, {} steps of {}x{} tokens per rank: {:.0} tokens/s, {:.1}% of step time in all-reduces",
        world,
        first.parameters,
        config.steps,
        config.batch,
        config.context,
        first.tokens_per_s,
        100.0 * first.communication
    );
    println!("--- sampled ---\n{}\n---", first.sample);
    // Figures a script can read (`bench/torch_ddp_gpt.py` prints the peer's).
    println!(
        "train_tokens_per_s_{world}r {:.0} tokens/s",
        first.tokens_per_s
    );
    println!(
        "train_comm_fraction_{world}r {:.4} ratio",
        first.communication
    );
    println!("val_loss {:.4}", first.val_loss);
    Ok(())
}
