//! Mergeable sketches as window aggregations: count-min (frequency estimates and heavy
//! hitters, Cormode & Muthukrishnan 2005) and HyperLogLog (distinct counts, Flajolet et al.
//! 2007, with linear counting for small cardinalities). Both merge across parallel
//! instances and windows (cell-wise sum, register-wise max), so partial sketches combine.

use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::aggregate::AggregateFunction;
use crate::operators::key_hash;

/// splitmix64's finalizer: spreads a hash's bits (FNV of small keys is poorly mixed).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A count-min sketch: `depth` rows of `width` counters. An estimate is never below the
/// true count, and exceeds it by more than `ε·N` (`ε = e / width`, `N` the total count)
/// with probability at most `δ = e^-depth`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountMinSketch {
    width: usize,
    depth: usize,
    cells: Vec<u64>,
    total: u64,
}

impl CountMinSketch {
    /// A sketch with error at most `epsilon · N` with probability `1 - delta`.
    pub fn with_error(epsilon: f64, delta: f64) -> CountMinSketch {
        let width = (std::f64::consts::E / epsilon.clamp(1e-6, 1.0)).ceil() as usize;
        let depth = (1.0 / delta.clamp(1e-12, 0.5)).ln().ceil() as usize;
        CountMinSketch::new(width, depth)
    }

    /// A sketch of `depth` rows of `width` counters.
    pub fn new(width: usize, depth: usize) -> CountMinSketch {
        let (width, depth) = (width.max(1), depth.max(1));
        CountMinSketch {
            width,
            depth,
            cells: vec![0; width * depth],
            total: 0,
        }
    }

    fn cell(&self, row: usize, hash: u64) -> usize {
        let h = mix(hash ^ (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        row * self.width + (h % self.width as u64) as usize
    }

    /// Counts `item` `count` times.
    pub fn add<K: Hash>(&mut self, item: &K, count: u64) {
        let hash = key_hash(item);
        for row in 0..self.depth {
            let cell = self.cell(row, hash);
            self.cells[cell] += count;
        }
        self.total += count;
    }

    /// The estimated count of `item` (never below the true one).
    pub fn estimate<K: Hash>(&self, item: &K) -> u64 {
        let hash = key_hash(item);
        (0..self.depth)
            .map(|row| self.cells[self.cell(row, hash)])
            .min()
            .unwrap_or(0)
    }

    /// Everything counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The additive error bound `ε·N` of every estimate (with probability `1 - δ`).
    pub fn error_bound(&self) -> f64 {
        std::f64::consts::E / self.width as f64 * self.total as f64
    }

    /// Adds another sketch of the same shape.
    pub fn merge(&mut self, other: &CountMinSketch) -> Result<(), String> {
        if (self.width, self.depth) != (other.width, other.depth) {
            return Err(format!(
                "count-min sketches of {}x{} and {}x{} cannot merge",
                self.depth, self.width, other.depth, other.width
            ));
        }
        for (a, b) in self.cells.iter_mut().zip(&other.cells) {
            *a += b;
        }
        self.total += other.total;
        Ok(())
    }
}

/// Heavy hitters: a count-min sketch plus the `k` items with the largest estimates seen.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeavyHitters<K> {
    /// The sketch every item is counted in.
    pub sketch: CountMinSketch,
    /// Candidates and their estimates, at most `k`.
    pub top: Vec<(K, u64)>,
    k: usize,
}

impl<K: Hash + Eq + Clone> HeavyHitters<K> {
    fn offer(&mut self, item: &K) {
        let estimate = self.sketch.estimate(item);
        if let Some(slot) = self.top.iter_mut().find(|(k, _)| k == item) {
            slot.1 = estimate;
        } else if self.top.len() < self.k {
            self.top.push((item.clone(), estimate));
        } else if let Some(min) = self.top.iter_mut().min_by_key(|(_, c)| *c) {
            if estimate > min.1 {
                *min = (item.clone(), estimate);
            }
        }
    }

    /// The candidates, largest estimate first.
    pub fn ranked(mut self) -> Vec<(K, u64)> {
        self.top.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        self.top
    }
}

/// A window aggregation: the `k` most frequent values of a field, estimated with a
/// count-min sketch of error `epsilon` (probability `1 - delta`).
pub struct TopK<F> {
    /// The field counted.
    pub field: F,
    /// How many heavy hitters to keep.
    pub k: usize,
    /// Relative error of the sketch (of the window's record count).
    pub epsilon: f64,
    /// Failure probability of the bound.
    pub delta: f64,
}

impl<T, K, F> AggregateFunction<T> for TopK<F>
where
    K: Hash + Eq + Clone + Serialize + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(&T) -> K + Send + Sync + 'static,
{
    type Acc = HeavyHitters<K>;
    type Out = Vec<(K, u64)>;

    fn create(&self) -> HeavyHitters<K> {
        HeavyHitters {
            sketch: CountMinSketch::with_error(self.epsilon, self.delta),
            top: Vec::new(),
            k: self.k.max(1),
        }
    }
    fn add(&self, acc: &mut HeavyHitters<K>, value: &T) {
        let item = (self.field)(value);
        acc.sketch.add(&item, 1);
        acc.offer(&item);
    }
    fn merge(&self, mut a: HeavyHitters<K>, b: HeavyHitters<K>) -> HeavyHitters<K> {
        if a.sketch.merge(&b.sketch).is_err() {
            // One aggregation makes every sketch the same shape; keep the larger side.
            return if a.sketch.total() >= b.sketch.total() {
                a
            } else {
                b
            };
        }
        let candidates: Vec<K> = a.top.iter().chain(&b.top).map(|(k, _)| k.clone()).collect();
        a.top.clear();
        for item in candidates {
            a.offer(&item);
        }
        a
    }
    fn result(&self, acc: HeavyHitters<K>) -> Vec<(K, u64)> {
        acc.ranked()
    }
}

/// A HyperLogLog sketch of `2^precision` registers: relative standard error
/// `1.04 / sqrt(2^precision)` (precision 12: 1.6%).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HyperLogLog {
    precision: u8,
    registers: Vec<u8>,
}

impl HyperLogLog {
    /// A sketch with `2^precision` registers (precision clamped to 4..=18).
    pub fn new(precision: u8) -> HyperLogLog {
        let precision = precision.clamp(4, 18);
        HyperLogLog {
            precision,
            registers: vec![0; 1 << precision],
        }
    }

    /// Adds an item.
    pub fn add<K: Hash>(&mut self, item: &K) {
        let hash = mix(key_hash(item));
        let index = (hash >> (64 - self.precision)) as usize;
        let rest = (hash << self.precision) | (1 << (self.precision - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        if rank > self.registers[index] {
            self.registers[index] = rank;
        }
    }

    /// The estimated number of distinct items added.
    pub fn estimate(&self) -> f64 {
        let m = self.registers.len() as f64;
        let alpha = match self.registers.len() {
            16 => 0.673,
            32 => 0.697,
            64 => 0.709,
            _ => 0.7213 / (1.0 + 1.079 / m),
        };
        let sum: f64 = self.registers.iter().map(|r| 2f64.powi(-(*r as i32))).sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|r| **r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }

    /// The relative standard error of estimates.
    pub fn standard_error(&self) -> f64 {
        1.04 / (self.registers.len() as f64).sqrt()
    }

    /// Takes the union with another sketch of the same precision.
    pub fn merge(&mut self, other: &HyperLogLog) -> Result<(), String> {
        if self.precision != other.precision {
            return Err(format!(
                "HyperLogLog sketches of precision {} and {} cannot merge",
                self.precision, other.precision
            ));
        }
        for (a, b) in self.registers.iter_mut().zip(&other.registers) {
            *a = (*a).max(*b);
        }
        Ok(())
    }
}

/// A window aggregation: the estimated number of distinct values of a field.
pub struct DistinctCount<F> {
    /// The field whose distinct values are counted.
    pub field: F,
    /// HyperLogLog precision (registers = 2^precision).
    pub precision: u8,
}

impl<T, K, F> AggregateFunction<T> for DistinctCount<F>
where
    K: Hash,
    F: Fn(&T) -> K + Send + Sync + 'static,
{
    type Acc = HyperLogLog;
    type Out = u64;

    fn create(&self) -> HyperLogLog {
        HyperLogLog::new(self.precision)
    }
    fn add(&self, acc: &mut HyperLogLog, value: &T) {
        acc.add(&(self.field)(value));
    }
    fn merge(&self, mut a: HyperLogLog, b: HyperLogLog) -> HyperLogLog {
        if a.merge(&b).is_err() {
            return a;
        }
        a
    }
    fn result(&self, acc: HyperLogLog) -> u64 {
        acc.estimate().round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A Zipf-like stream: item i appears about N / (i + 1) times.
    fn skewed(n: u64) -> Vec<u64> {
        let mut items = Vec::new();
        let mut state = 7u64;
        for _ in 0..n {
            state = mix(state);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            items.push((1.0 / (u + 1e-4)) as u64 % 5_000);
        }
        items
    }

    #[test]
    fn count_min_never_underestimates_and_stays_within_its_bound() {
        let items = skewed(200_000);
        let mut exact: HashMap<u64, u64> = HashMap::new();
        let mut sketch = CountMinSketch::with_error(0.001, 0.01);
        for item in &items {
            *exact.entry(*item).or_default() += 1;
            sketch.add(item, 1);
        }
        let bound = sketch.error_bound();
        let mut over_bound = 0;
        for (item, count) in &exact {
            let estimate = sketch.estimate(item);
            assert!(estimate >= *count, "{item}: {estimate} < {count}");
            if (estimate - count) as f64 > bound {
                over_bound += 1;
            }
        }
        // δ = 1%: allow a few items past the bound, never many.
        assert!(
            over_bound * 100 <= exact.len(),
            "{over_bound} of {} past ε·N",
            exact.len()
        );
    }

    #[test]
    fn count_min_merges_as_if_one_sketch_saw_everything() {
        let items = skewed(50_000);
        let (left, right) = items.split_at(20_000);
        let mut whole = CountMinSketch::new(500, 4);
        let mut a = CountMinSketch::new(500, 4);
        let mut b = CountMinSketch::new(500, 4);
        items.iter().for_each(|i| whole.add(i, 1));
        left.iter().for_each(|i| a.add(i, 1));
        right.iter().for_each(|i| b.add(i, 1));
        a.merge(&b).expect("same shape");
        assert_eq!(a, whole);
        assert!(a.merge(&CountMinSketch::new(10, 4)).is_err());
    }

    #[test]
    fn top_k_finds_the_true_heavy_hitters() {
        let items = skewed(100_000);
        let mut exact: HashMap<u64, u64> = HashMap::new();
        items
            .iter()
            .for_each(|i| *exact.entry(*i).or_default() += 1);
        let mut truth: Vec<(u64, u64)> = exact.into_iter().collect();
        truth.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        let top = TopK {
            field: |v: &u64| *v,
            k: 10,
            epsilon: 0.0005,
            delta: 0.01,
        };
        // Two partial aggregates merged, as two parallel instances would make them.
        let mut a = top.create();
        let mut b = top.create();
        for (n, item) in items.iter().enumerate() {
            top.add(if n % 2 == 0 { &mut a } else { &mut b }, item);
        }
        let found = top.result(top.merge(a, b));
        let found: Vec<u64> = found.iter().map(|(k, _)| *k).take(5).collect();
        let expected: Vec<u64> = truth.iter().map(|(k, _)| *k).take(5).collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn hyperloglog_is_within_three_standard_errors_and_merges() {
        for distinct in [10u64, 1_000, 100_000] {
            let mut a = HyperLogLog::new(12);
            let mut b = HyperLogLog::new(12);
            for i in 0..distinct {
                // Every item twice, split over two sketches: duplicates must not count.
                a.add(&i);
                b.add(&i);
                if i % 3 == 0 {
                    b.add(&(i + distinct));
                }
            }
            let truth = distinct + distinct.div_ceil(3);
            a.merge(&b).expect("same precision");
            let error = (a.estimate() - truth as f64).abs() / truth as f64;
            assert!(
                error <= 3.0 * a.standard_error(),
                "{truth} distinct: estimate {} ({error:.4} off)",
                a.estimate()
            );
        }
    }
}
