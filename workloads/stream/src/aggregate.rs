//! Incremental aggregations for windows: an accumulator per (key, window), mergeable so
//! that session windows (and partial aggregates of parallel instances) combine.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// An incremental, mergeable aggregation (Flink's `AggregateFunction`).
pub trait AggregateFunction<T>: Send + Sync + 'static {
    /// The running state of one window.
    type Acc: Serialize + DeserializeOwned + Send + 'static;
    /// What a fired window emits.
    type Out: Serialize + DeserializeOwned + Send + 'static;

    /// An empty accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds one record.
    fn add(&self, acc: &mut Self::Acc, value: &T);
    /// Combines two accumulators of the same key (merging sessions, partial aggregates).
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
    /// The window's result.
    fn result(&self, acc: Self::Acc) -> Self::Out;
}

/// Counts records.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<T> AggregateFunction<T> for Count {
    type Acc = u64;
    type Out = u64;

    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _value: &T) {
        *acc += 1;
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
    fn result(&self, acc: u64) -> u64 {
        acc
    }
}

/// Sums a numeric field of each record.
#[derive(Clone)]
pub struct Sum<F>(pub F);

impl<T, F> AggregateFunction<T> for Sum<F>
where
    F: Fn(&T) -> i64 + Send + Sync + 'static,
{
    type Acc = i64;
    type Out = i64;

    fn create(&self) -> i64 {
        0
    }
    fn add(&self, acc: &mut i64, value: &T) {
        *acc = acc.wrapping_add((self.0)(value));
    }
    fn merge(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    fn result(&self, acc: i64) -> i64 {
        acc
    }
}

/// Keeps every record whose field is the largest of the window (ties kept, in no order).
#[derive(Clone)]
pub struct MaxBy<F>(pub F);

impl<T, F> AggregateFunction<T> for MaxBy<F>
where
    T: Clone + Serialize + DeserializeOwned + Send + 'static,
    F: Fn(&T) -> i64 + Send + Sync + 'static,
{
    type Acc = (i64, Vec<T>);
    type Out = (i64, Vec<T>);

    fn create(&self) -> (i64, Vec<T>) {
        (i64::MIN, Vec::new())
    }
    fn add(&self, acc: &mut (i64, Vec<T>), value: &T) {
        let field = (self.0)(value);
        if field > acc.0 {
            acc.0 = field;
            acc.1.clear();
        }
        if field == acc.0 {
            acc.1.push(value.clone());
        }
    }
    fn merge(&self, a: (i64, Vec<T>), b: (i64, Vec<T>)) -> (i64, Vec<T>) {
        match a.0.cmp(&b.0) {
            std::cmp::Ordering::Greater => a,
            std::cmp::Ordering::Less => b,
            std::cmp::Ordering::Equal => {
                let mut all = a.1;
                all.extend(b.1);
                (a.0, all)
            }
        }
    }
    fn result(&self, acc: (i64, Vec<T>)) -> (i64, Vec<T>) {
        acc
    }
}

/// Counts records and sums a field, for averages (the result is `(count, sum)`).
#[derive(Clone)]
pub struct CountAndSum<F>(pub F);

impl<T, F> AggregateFunction<T> for CountAndSum<F>
where
    F: Fn(&T) -> i64 + Send + Sync + 'static,
{
    type Acc = (u64, i64);
    type Out = (u64, i64);

    fn create(&self) -> (u64, i64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, i64), value: &T) {
        acc.0 += 1;
        acc.1 = acc.1.wrapping_add((self.0)(value));
    }
    fn merge(&self, a: (u64, i64), b: (u64, i64)) -> (u64, i64) {
        (a.0 + b.0, a.1.wrapping_add(b.1))
    }
    fn result(&self, acc: (u64, i64)) -> (u64, i64) {
        acc
    }
}
