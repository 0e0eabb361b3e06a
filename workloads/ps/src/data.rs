//! A sparse logistic-regression data set with a planted model, generated from a seed (no
//! download): what the example, the tests and the benchmark train on.
//!
//! - Example `i` has `active` distinct binary features: feature 0 (the bias) and ids drawn
//!   from a Zipf-like law over `features` ids (the density of id `r` falls as `1/r`, as
//!   word and click features do), from a hash of `(seed, i)`.
//! - The true weight of feature `f` is uniform in `±scale`, from a hash of `(seed, f)`, for
//!   the `informative` most frequent ids, and 0 for the rest (rare features are noise, as
//!   in click logs: what L1 in FTRL is for); the label is drawn from `sigmoid(Σ w_f)`.
//! - So the best possible log-loss is known: the mean binary entropy of the true
//!   probabilities, [`SparseLogReg::optimal_log_loss`].

use serde::{Deserialize, Serialize};

use crate::config::mix;

/// The data set's shape (every example is a pure function of it and its index).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct SparseLogReg {
    /// Feature ids are `0..features`.
    pub features: u64,
    /// Examples `0..examples` train; the next `examples / 10` are held out.
    pub examples: u64,
    /// Features per example (the bias included).
    pub active: usize,
    /// True weights are uniform in `±scale`...
    pub scale: f32,
    /// ...for ids below this; 0 above.
    pub informative: u64,
    /// The seed.
    pub seed: u64,
}

/// A uniform float in [0, 1) from a hash.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `1 / (1 + e^-x)`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The log-loss of predicting `p` for label `y`.
pub fn log_loss(p: f32, y: f32) -> f64 {
    let p = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
    -(f64::from(y) * p.ln() + (1.0 - f64::from(y)) * (1.0 - p).ln())
}

impl SparseLogReg {
    /// The true weight of feature `f`.
    pub fn true_weight(&self, feature: u64) -> f32 {
        if feature >= self.informative {
            return 0.0;
        }
        ((unit(mix(self.seed ^ 0xA5A5_0000 ^ mix(feature))) * 2.0 - 1.0) as f32) * self.scale
    }

    /// Example `i`'s feature ids (distinct, the bias 0 first) and label.
    pub fn example(&self, i: u64) -> (Vec<u64>, f32) {
        let mut ids = Vec::with_capacity(self.active);
        ids.push(0);
        let mut draw = 0u64;
        while ids.len() < self.active.min(self.features as usize) {
            draw += 1;
            let u = unit(mix(self.seed ^ mix(i.wrapping_mul(0x1_0000) ^ draw)));
            // Density ∝ 1/r over 1..features: r = features^u.
            let id = ((self.features as f64).powf(u) as u64).clamp(1, self.features - 1);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let p = self.true_probability(&ids);
        let y = if unit(mix(self.seed ^ 0x5A5A ^ mix(i))) < f64::from(p) {
            1.0
        } else {
            0.0
        };
        (ids, y)
    }

    /// `sigmoid(Σ w_f)` under the true model.
    pub fn true_probability(&self, ids: &[u64]) -> f32 {
        sigmoid(ids.iter().map(|f| self.true_weight(*f)).sum())
    }

    /// The held-out examples' indices.
    pub fn held_out(&self) -> std::ops::Range<u64> {
        self.examples..self.examples + (self.examples / 10).max(1)
    }

    /// The best log-loss any model can reach on the held-out examples (the true model's
    /// expected loss: the mean binary entropy of its probabilities).
    pub fn optimal_log_loss(&self) -> f64 {
        let range = self.held_out();
        let n = range.end - range.start;
        range
            .map(|i| {
                let p = self.true_probability(&self.example(i).0);
                f64::from(p) * log_loss(p, 1.0) + f64::from(1.0 - p) * log_loss(p, 0.0)
            })
            .sum::<f64>()
            / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_deterministic_distinct_and_zipf_like() {
        let data = SparseLogReg {
            features: 1_000_000,
            examples: 10_000,
            active: 20,
            scale: 1.0,
            informative: 1000,
            seed: 3,
        };
        assert_eq!(data.example(17), data.example(17));
        let (ids, _) = data.example(5);
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        // Under 1/r, ids below 1000 are half of the draws (ln 1000 / ln 10⁶).
        let (mut low, mut all) = (0, 0);
        for i in 0..2000 {
            for id in &data.example(i).0[1..] {
                all += 1;
                low += usize::from(*id < 1000);
            }
        }
        let share = low as f64 / all as f64;
        assert!((0.4..0.6).contains(&share), "share below 1000: {share}");
        let positives: f32 = (0..2000).map(|i| data.example(i).1).sum();
        assert!(
            (600.0..1400.0).contains(&positives),
            "{positives} positives of 2000"
        );
        let optimum = data.optimal_log_loss();
        assert!(
            optimum > 0.1 && optimum < 0.69,
            "optimal log-loss {optimum}"
        );
    }
}
