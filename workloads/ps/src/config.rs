//! What a parameter server is: its key space, value width, optimizer and consistency, and
//! how the key space is cut into shards (pure).

use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The keys a server holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeySpace {
    /// Keys `0..keys`; any other key is an error.
    Dense {
        /// How many.
        keys: u64,
    },
    /// Any `u64` key (a feature id), hashed into `buckets` slots (the hashing trick: keys
    /// that share a slot share its value).
    Hashed {
        /// How many slots.
        buckets: u64,
    },
}

impl KeySpace {
    /// Slots in the store.
    pub fn slots(&self) -> u64 {
        match *self {
            KeySpace::Dense { keys } => keys,
            KeySpace::Hashed { buckets } => buckets,
        }
    }

    /// The slot of `key`, or why it has none.
    pub fn slot(&self, key: u64) -> Result<u64, String> {
        match *self {
            KeySpace::Dense { keys } if key < keys => Ok(key),
            KeySpace::Dense { keys } => Err(format!(
                "key {key} is outside the key space 0..{keys} (use KeySpace::Hashed for arbitrary feature ids)"
            )),
            KeySpace::Hashed { buckets } => Ok(mix(key) % buckets),
        }
    }
}

/// SplitMix64's finalizer: a well-mixed 64-bit hash.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The update a shard applies to a pushed gradient.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Optimizer {
    /// `w -= lr · g`.
    Sgd {
        /// Learning rate.
        lr: f32,
    },
    /// `n += g²; w -= lr · g / (sqrt(n) + eps)` (Duchi et al.).
    Adagrad {
        /// Learning rate.
        lr: f32,
        /// Added to the root.
        eps: f32,
    },
    /// FTRL-proximal (McMahan et al., KDD'13), the sparse logistic-regression classic:
    /// per coordinate `z` and `n`; the weight is 0 while `|z| ≤ l1`, which makes the model
    /// sparse.
    Ftrl {
        /// Per-coordinate learning rate's scale.
        alpha: f32,
        /// Its smoothing.
        beta: f32,
        /// L1 strength.
        l1: f32,
        /// L2 strength.
        l2: f32,
    },
}

impl Optimizer {
    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be positive and finite, not {v}"))
            }
        };
        let non_negative = |name: &str, v: f32| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be at least 0 and finite, not {v}"))
            }
        };
        match *self {
            Optimizer::Sgd { lr } => positive("Sgd lr", lr),
            Optimizer::Adagrad { lr, eps } => {
                positive("Adagrad lr", lr)?;
                non_negative("Adagrad eps", eps)
            }
            Optimizer::Ftrl {
                alpha,
                beta,
                l1,
                l2,
            } => {
                positive("Ftrl alpha", alpha)?;
                non_negative("Ftrl beta", beta)?;
                non_negative("Ftrl l1", l1)?;
                non_negative("Ftrl l2", l2)
            }
        }
    }

    /// The model weight of a coordinate from its stored state (`value` is the weight for
    /// SGD and Adagrad, `z` for FTRL; `n` the squared-gradient sum).
    pub fn weight(&self, value: f32, n: f32) -> f32 {
        match *self {
            Optimizer::Ftrl {
                alpha,
                beta,
                l1,
                l2,
            } => {
                if value.abs() <= l1 {
                    0.0
                } else {
                    -(value - value.signum() * l1) / ((beta + n.sqrt()) / alpha + l2)
                }
            }
            _ => value,
        }
    }

    /// Applies gradient `g` to a coordinate's state.
    pub fn apply(&self, value: &mut f32, n: &mut f32, g: f32) {
        match *self {
            Optimizer::Sgd { lr } => *value -= lr * g,
            Optimizer::Adagrad { lr, eps } => {
                *n += g * g;
                *value -= lr * g / (n.sqrt() + eps);
            }
            Optimizer::Ftrl { alpha, .. } => {
                let w = self.weight(*value, *n);
                let sigma = ((*n + g * g).sqrt() - n.sqrt()) / alpha;
                *value += g - sigma * w;
                *n += g * g;
            }
        }
    }
}

/// When a pull may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Bulk synchronous: a pull of clock `t` sees every worker's pushes of clocks
    /// `0..t` (SSP with staleness 0).
    Bsp,
    /// Stale synchronous: a pull of clock `t` waits until every worker has pushed clocks
    /// `0..t-s`: no worker runs more than `s` clocks ahead of the slowest.
    Ssp(u64),
    /// Asynchronous: a pull never waits.
    Asp,
}

impl Consistency {
    /// How many clocks every worker must have pushed before a pull of `clock` reads
    /// (`None`: it never waits).
    pub fn required(&self, clock: u64) -> Option<u64> {
        match *self {
            Consistency::Bsp => Some(clock),
            Consistency::Ssp(staleness) => Some(clock.saturating_sub(staleness)),
            Consistency::Asp => None,
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;

    /// `bsp`, `ssp<N>` (e.g. `ssp2`) or `asp`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "bsp" => Ok(Consistency::Bsp),
            "asp" => Ok(Consistency::Asp),
            other => match other.strip_prefix("ssp").map(str::parse::<u64>) {
                Some(Ok(staleness)) => Ok(Consistency::Ssp(staleness)),
                _ => Err(format!(
                    "consistency {other:?}: bsp, ssp<N> (e.g. ssp2) or asp"
                )),
            },
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Consistency::Bsp => write!(f, "bsp"),
            Consistency::Ssp(s) => write!(f, "ssp{s}"),
            Consistency::Asp => write!(f, "asp"),
        }
    }
}

/// Everything a shard and a worker need to agree on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PsConfig {
    /// The keys.
    pub key_space: KeySpace,
    /// Floats per key.
    pub width: usize,
    /// The update rule.
    pub optimizer: Optimizer,
    /// When pulls read.
    pub consistency: Consistency,
    /// Workers pushing (their ids are `0..workers`).
    pub workers: usize,
    /// Shards.
    pub shards: usize,
    /// How long a pull waits for slow workers before failing.
    pub wait_timeout: Duration,
    /// Initial weights are drawn uniformly from `±init_scale` (0: all zero).
    pub init_scale: f32,
}

impl PsConfig {
    /// The slots shard `index` holds (contiguous; sizes differ by at most one).
    pub fn shard_slots(&self, index: usize) -> Range<u64> {
        let slots = self.key_space.slots();
        let shards = self.shards.max(1) as u64;
        let (base, extra) = (slots / shards, slots % shards);
        let index = index as u64;
        let start = index * base + index.min(extra);
        start..start + base + u64::from(index < extra)
    }

    /// The shard holding `slot`.
    pub fn shard_of(&self, slot: u64) -> usize {
        let slots = self.key_space.slots();
        let shards = self.shards.max(1) as u64;
        let (base, extra) = (slots / shards, slots % shards);
        let wide = extra * (base + 1);
        if slot < wide {
            (slot / (base + 1)) as usize
        } else {
            (extra + (slot - wide) / base.max(1)) as usize
        }
    }

    /// Checks the whole configuration.
    pub fn validate(&self) -> Result<(), String> {
        if self.key_space.slots() == 0 {
            return Err("the key space is empty: give it at least one key or bucket".into());
        }
        if self.width == 0 {
            return Err("the value width must be at least 1".into());
        }
        if self.shards == 0 || self.shards as u64 > self.key_space.slots() {
            return Err(format!(
                "{} shards for {} slots: between 1 and the number of slots",
                self.shards,
                self.key_space.slots()
            ));
        }
        if self.workers == 0 {
            return Err("a parameter server needs at least one worker".into());
        }
        if !(self.init_scale.is_finite() && self.init_scale >= 0.0) {
            return Err(format!(
                "init_scale must be at least 0, not {}",
                self.init_scale
            ));
        }
        self.optimizer.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(slots: u64, shards: usize) -> PsConfig {
        PsConfig {
            key_space: KeySpace::Dense { keys: slots },
            width: 1,
            optimizer: Optimizer::Sgd { lr: 0.1 },
            consistency: Consistency::Asp,
            workers: 1,
            shards,
            wait_timeout: Duration::from_secs(1),
            init_scale: 0.0,
        }
    }

    #[test]
    fn shards_cover_the_slots_and_every_slot_finds_its_shard() {
        for (slots, shards) in [(10, 3), (7, 7), (1_000_003, 4), (5, 1)] {
            let c = config(slots, shards);
            let mut next = 0;
            for shard in 0..shards {
                let range = c.shard_slots(shard);
                assert_eq!(range.start, next);
                next = range.end;
                for slot in [range.start, range.end - 1] {
                    assert_eq!(c.shard_of(slot), shard, "slot {slot} of {slots}/{shards}");
                }
            }
            assert_eq!(next, slots);
        }
    }

    #[test]
    fn consistency_says_how_many_clocks_a_pull_waits_for() {
        assert_eq!(Consistency::Bsp.required(5), Some(5));
        assert_eq!(Consistency::Ssp(2).required(5), Some(3));
        assert_eq!(Consistency::Ssp(2).required(1), Some(0));
        assert_eq!(Consistency::Asp.required(5), None);
        for text in ["bsp", "ssp2", "asp"] {
            let parsed: Consistency = text.parse().expect("parses");
            assert_eq!(parsed.to_string(), text);
        }
        assert!("ssp".parse::<Consistency>().is_err());
    }

    #[test]
    fn ftrl_keeps_weights_at_zero_until_the_evidence_passes_l1() {
        let ftrl = Optimizer::Ftrl {
            alpha: 0.1,
            beta: 1.0,
            l1: 1.0,
            l2: 0.0,
        };
        let (mut z, mut n) = (0.0, 0.0);
        ftrl.apply(&mut z, &mut n, 0.5);
        assert_eq!(ftrl.weight(z, n), 0.0);
        for _ in 0..10 {
            ftrl.apply(&mut z, &mut n, 0.5);
        }
        // A positive gradient pushes the weight negative.
        assert!(ftrl.weight(z, n) < 0.0);
        let (mut w, mut acc) = (1.0, 0.0);
        Optimizer::Adagrad { lr: 0.5, eps: 0.0 }.apply(&mut w, &mut acc, 2.0);
        assert!((w - 0.5).abs() < 1e-6 && (acc - 4.0).abs() < 1e-6);
    }

    #[test]
    fn bad_configurations_are_named() {
        assert!(config(0, 1)
            .validate()
            .expect_err("refused")
            .contains("empty"));
        assert!(config(3, 4)
            .validate()
            .expect_err("refused")
            .contains("4 shards"));
        let mut c = config(10, 2);
        c.optimizer = Optimizer::Sgd { lr: -1.0 };
        assert!(c.validate().expect_err("refused").contains("Sgd lr"));
        assert!(KeySpace::Dense { keys: 4 }
            .slot(9)
            .expect_err("refused")
            .contains("0..4"));
        assert!(KeySpace::Hashed { buckets: 4 }.slot(u64::MAX).unwrap_or(9) < 4);
    }
}
