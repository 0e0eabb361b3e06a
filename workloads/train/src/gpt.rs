//! A small character-level GPT and its [`TrainingJob`]: the template's model, and what
//! `fleet bench train` and the `training` chaos workload train.
//!
//! - The model is nanoGPT's: token and position embeddings, pre-norm blocks of causal
//!   self-attention and a GELU MLP, a final norm and an untied head (GPT-2's init: normal
//!   0.02, residual projections scaled by `1/sqrt(2·layers)`, biases 0, norms 1).
//! - Its weights are drawn from the job's seed, so two runs of one job start from the same
//!   weights (candle's CPU generator cannot be seeded).
//! - Global example `i` is a window of `context + 1` characters of the training text at an
//!   offset hashed from `(seed, i)`: any rank computes any example, and the data order is
//!   the step's.
//! - Layer norm and softmax are written with differentiable ops: candle-nn's fused
//!   `LayerNorm` (on contiguous input with a bias) and `ops::softmax_last_dim` have no
//!   backward pass, and a GPT built on them learns nothing past a bigram table.

use std::ops::Range;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::job::TrainingJob;

/// Nine Shakespeare plays (1.15 MB of ASCII; `data/README.md` says where from).
pub const SHAKESPEARE: &str = include_str!("../data/shakespeare.txt");

/// The model's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Embedding width.
    pub embedding: usize,
    /// Characters of context.
    pub context: usize,
}

impl GptConfig {
    /// nanoGPT's CPU configuration: 4 layers, 4 heads, 128 wide, 64 characters (~0.8 M
    /// parameters with a 65-character vocabulary).
    pub fn nano() -> Self {
        GptConfig {
            layers: 4,
            heads: 4,
            embedding: 128,
            context: 64,
        }
    }

    /// A model small enough for tests and chaos runs in a debug build: 1 layer, 2 heads,
    /// 32 wide, 32 characters.
    pub fn tiny() -> Self {
        GptConfig {
            layers: 1,
            heads: 2,
            embedding: 32,
            context: 32,
        }
    }
}

/// A character-level language model trained on a text (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CharGpt {
    /// The model's shape.
    pub model: GptConfig,
    /// Weights and example offsets are drawn from it.
    pub seed: u64,
    /// The text (`None`: the bundled [`SHAKESPEARE`]); its first 90% trains, the rest
    /// validates.
    pub text: Option<PathBuf>,
    /// Sequences per batch of the held-out loss (8 batches are averaged).
    pub eval_batch: usize,
    /// Characters sampled from the trained model at the end (0: none).
    pub sample_chars: usize,
}

impl CharGpt {
    /// The model on the bundled Shakespeare, seed 1337.
    pub fn shakespeare(model: GptConfig) -> Self {
        CharGpt {
            model,
            seed: 1337,
            text: None,
            eval_batch: 12,
            sample_chars: 400,
        }
    }
}

/// The trained model and its data (what each rank holds).
pub struct CharGptModel {
    gpt: Gpt,
    vocabulary: Vocabulary,
    train: Vec<u32>,
    val: Vec<u32>,
}

impl CharGptModel {
    /// Characters in the vocabulary.
    pub fn vocabulary_size(&self) -> usize {
        self.vocabulary.chars.len()
    }
}

impl TrainingJob for CharGpt {
    type Model = CharGptModel;

    fn build(&self, varmap: &VarMap) -> candle_core::Result<CharGptModel> {
        let text = match &self.text {
            None => SHAKESPEARE.to_string(),
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                candle_core::Error::Msg(format!(
                    "cannot read the training text {}: {e}",
                    path.display()
                ))
            })?,
        };
        let c = &self.model;
        if c.heads == 0 || !c.embedding.is_multiple_of(c.heads) || c.layers == 0 || c.context == 0 {
            return Err(candle_core::Error::Msg(format!(
                "{c:?}: layers, heads and context must be positive and the embedding a multiple of the heads"
            )));
        }
        let vocabulary = Vocabulary::of(&text);
        let ids = vocabulary.encode(&text);
        let split = ids.len() * 9 / 10;
        if split < 2 * c.context + 2 || ids.len() - split < c.context + 2 {
            return Err(candle_core::Error::Msg(format!(
                "a text of {} characters is too short for a context of {}",
                ids.len(),
                c.context
            )));
        }
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
        let gpt = Gpt::new(c, vocabulary.chars.len(), vb)?;
        seeded_init(varmap, c, self.seed)?;
        Ok(CharGptModel {
            gpt,
            vocabulary,
            val: ids[split..].to_vec(),
            train: ids[..split].to_vec(),
        })
    }

    fn loss(
        &self,
        model: &CharGptModel,
        _step: u64,
        examples: Range<u64>,
    ) -> candle_core::Result<Tensor> {
        let context = self.model.context;
        let offsets: Vec<usize> = examples
            .map(|i| (mix(self.seed ^ mix(i)) % (model.train.len() - context - 1) as u64) as usize)
            .collect();
        let (x, y) = windows(&model.train, &offsets, context)?;
        model.gpt.loss(&x, &y)
    }

    fn evaluate(&self, model: &CharGptModel) -> candle_core::Result<Option<f32>> {
        let context = self.model.context;
        let mut rng = Lcg(12345);
        let rounds = 8;
        let mut total = 0.0;
        for _ in 0..rounds {
            let offsets: Vec<usize> = (0..self.eval_batch.max(1))
                .map(|_| rng.below(model.val.len() - context - 1))
                .collect();
            let (x, y) = windows(&model.val, &offsets, context)?;
            total += model.gpt.loss(&x, &y)?.to_scalar::<f32>()?;
        }
        Ok(Some(total / rounds as f32))
    }

    fn tokens_per_example(&self) -> u64 {
        self.model.context as u64
    }

    fn finish(&self, model: &CharGptModel) -> candle_core::Result<Option<String>> {
        if self.sample_chars == 0 {
            return Ok(None);
        }
        let prompt = model.vocabulary.encode("\n");
        let ids = model
            .gpt
            .sample(&prompt, self.sample_chars, &mut Lcg(self.seed))?;
        Ok(Some(model.vocabulary.decode(&ids)))
    }
}

crate::register_job!(CharGpt);

/// SplitMix64's finalizer: a well-mixed 64-bit hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Inputs and next-character targets, (batch, context) each, at `offsets` of `data`.
fn windows(
    data: &[u32],
    offsets: &[usize],
    context: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let mut inputs = Vec::with_capacity(offsets.len() * context);
    let mut targets = Vec::with_capacity(offsets.len() * context);
    for at in offsets {
        inputs.extend_from_slice(&data[*at..*at + context]);
        targets.extend_from_slice(&data[*at + 1..*at + context + 1]);
    }
    Ok((
        Tensor::from_vec(inputs, (offsets.len(), context), &Device::Cpu)?,
        Tensor::from_vec(targets, (offsets.len(), context), &Device::Cpu)?,
    ))
}

/// The characters of a text, as token ids.
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

/// A small deterministic generator (evaluation batches, sampling, initial weights).
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

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() as f32) / (1u64 << 31) as f32
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f32 {
        let u1 = (self.next() as f64 + 1.0) / ((1u64 << 31) as f64 + 1.0);
        let u2 = self.next() as f64 / (1u64 << 31) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// Sets every variable from `seed` as GPT-2 initializes it (see the module docs), in name
/// order.
fn seeded_init(varmap: &VarMap, c: &GptConfig, seed: u64) -> candle_core::Result<()> {
    let residual = 0.02 / (2.0 * c.layers as f32).sqrt();
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("the model's VarMap lock is poisoned".into()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut rng = Lcg(mix(seed));
    for name in names {
        let var = &vars[name];
        let count = var.as_tensor().elem_count();
        let values: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; count]
        } else if var.as_tensor().rank() == 1 {
            vec![1.0; count]
        } else {
            let std = if name.ends_with("projection.weight") || name.ends_with("down.weight") {
                residual
            } else {
                0.02
            };
            (0..count).map(|_| rng.normal() * std).collect()
        };
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?)?;
    }
    Ok(())
}

fn linear(
    inputs: usize,
    outputs: usize,
    bias: bool,
    vb: VarBuilder,
) -> candle_core::Result<candle_nn::Linear> {
    let weight = vb.get((outputs, inputs), "weight")?;
    let bias = if bias {
        Some(vb.get(outputs, "bias")?)
    } else {
        None
    };
    Ok(candle_nn::Linear::new(weight, bias))
}

/// Layer normalization from differentiable tensor ops (see the module docs).
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(dims: usize, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
        Ok(LayerNorm {
            weight: vb.get(dims, "weight")?,
            bias: vb.get(dims, "bias")?,
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
    fn new(c: &GptConfig, vb: VarBuilder) -> candle_core::Result<Block> {
        let e = c.embedding;
        Ok(Block {
            norm1: LayerNorm::new(e, vb.pp("norm1"))?,
            qkv: linear(e, 3 * e, true, vb.pp("qkv"))?,
            projection: linear(e, e, true, vb.pp("projection"))?,
            norm2: LayerNorm::new(e, vb.pp("norm2"))?,
            up: linear(e, 4 * e, true, vb.pp("up"))?,
            down: linear(4 * e, e, true, vb.pp("down"))?,
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

/// The GPT itself.
struct Gpt {
    tokens: candle_nn::Embedding,
    positions: candle_nn::Embedding,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: candle_nn::Linear,
    context: usize,
}

impl Gpt {
    fn new(c: &GptConfig, vocabulary: usize, vb: VarBuilder) -> candle_core::Result<Gpt> {
        let embedding = |count: usize, vb: VarBuilder| -> candle_core::Result<_> {
            Ok(candle_nn::Embedding::new(
                vb.get((count, c.embedding), "weight")?,
                c.embedding,
            ))
        };
        Ok(Gpt {
            tokens: embedding(vocabulary, vb.pp("tokens"))?,
            positions: embedding(c.context, vb.pp("positions"))?,
            blocks: (0..c.layers)
                .map(|i| Block::new(c, vb.pp(format!("block{i}"))))
                .collect::<candle_core::Result<_>>()?,
            norm: LayerNorm::new(c.embedding, vb.pp("norm"))?,
            head: linear(c.embedding, vocabulary, false, vb.pp("head"))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_builds_from_one_seed_have_the_same_weights_and_the_right_init() {
        let job = CharGpt::shakespeare(GptConfig::tiny());
        let (a, b) = (VarMap::new(), VarMap::new());
        let model = job.build(&a).expect("builds");
        job.build(&b).expect("builds");
        let flat = |m: &VarMap| -> Vec<f32> {
            let vars = m.data().lock().expect("lock");
            let mut names: Vec<&String> = vars.keys().collect();
            names.sort();
            names
                .iter()
                .flat_map(|n| {
                    vars[*n]
                        .as_tensor()
                        .flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .expect("values")
                })
                .collect()
        };
        assert_eq!(flat(&a), flat(&b));
        let vars = a.data().lock().expect("lock");
        let head = vars["head.weight"]
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("values");
        let std = (head.iter().map(|v| v * v).sum::<f32>() / head.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.002, "head std {std}");
        assert_eq!(
            vars["norm.weight"].as_tensor().to_vec1::<f32>().expect("v")[0],
            1.0
        );
        drop(vars);
        // A fresh model predicts about uniformly: loss near ln(vocabulary).
        let loss = job
            .loss(&model, 0, 0..4)
            .and_then(|l| l.to_scalar::<f32>())
            .expect("loss");
        let uniform = (model.vocabulary_size() as f32).ln();
        assert!(
            (loss - uniform).abs() < 0.3,
            "loss {loss}, ln(vocab) {uniform}"
        );
    }

    #[test]
    fn a_text_too_short_for_the_context_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("fleet-gpt-short-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("short.txt");
        std::fs::write(&path, "to be or not").expect("write");
        let job = CharGpt {
            text: Some(path),
            ..CharGpt::shakespeare(GptConfig::tiny())
        };
        let error = job.build(&VarMap::new()).err().map(|e| e.to_string());
        assert!(
            error.as_deref().unwrap_or_default().contains("too short"),
            "{error:?}"
        );
        let missing = CharGpt {
            text: Some(dir.join("missing.txt")),
            ..CharGpt::shakespeare(GptConfig::tiny())
        };
        let error = missing.build(&VarMap::new()).err().map(|e| e.to_string());
        assert!(
            error.as_deref().unwrap_or_default().contains("missing.txt"),
            "{error:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
