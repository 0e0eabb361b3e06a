//! What a collective buffer holds ([`Element`]: `f32`, `f64`, `bf16`, `f16`, `i32`, `i64`)
//! and how two buffers combine ([`ReduceOp`]).
//!
//! Received bytes are combined into the caller's buffer where they lie, without first
//! being copied into a typed vector: a message's memory comes from the allocator, which
//! aligns it for every element type here; bytes that are not aligned (never seen) are
//! copied first.

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// How `all_reduce`, `reduce_scatter` and `reduce` combine the ranks' buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise sum divided by the number of ranks (integer division for integers).
    Mean,
    /// Element-wise product.
    Product,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
}

/// A plain number a collective can move and combine.
pub trait Element: bytemuck::Pod + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// Its name in errors ("f32", ...).
    const DTYPE: &'static str;

    /// `acc[i] = op(acc[i], incoming[i])`; `Mean` adds (the division comes once, at the end).
    fn combine(op: ReduceOp, acc: &mut [Self], incoming: &[Self]);

    /// Divides every element by `ranks` (the end of a `Mean`).
    fn divide(acc: &mut [Self], ranks: usize);
}

macro_rules! native_element {
    ($t:ty, $name:literal, $max:expr, $min:expr, $div:expr) => {
        impl Element for $t {
            const DTYPE: &'static str = $name;

            fn combine(op: ReduceOp, acc: &mut [Self], incoming: &[Self]) {
                // Separate loops per op: each one vectorizes.
                match op {
                    ReduceOp::Sum | ReduceOp::Mean => {
                        for (a, b) in acc.iter_mut().zip(incoming) {
                            *a += *b;
                        }
                    }
                    ReduceOp::Product => {
                        for (a, b) in acc.iter_mut().zip(incoming) {
                            *a *= *b;
                        }
                    }
                    ReduceOp::Max => {
                        for (a, b) in acc.iter_mut().zip(incoming) {
                            *a = $max(*a, *b);
                        }
                    }
                    ReduceOp::Min => {
                        for (a, b) in acc.iter_mut().zip(incoming) {
                            *a = $min(*a, *b);
                        }
                    }
                }
            }

            fn divide(acc: &mut [Self], ranks: usize) {
                let divide: fn(Self, usize) -> Self = $div;
                for a in acc.iter_mut() {
                    *a = divide(*a, ranks);
                }
            }
        }
    };
}

native_element!(f32, "f32", f32::max, f32::min, |a, n| a / n as f32);
native_element!(f64, "f64", f64::max, f64::min, |a, n| a / n as f64);
native_element!(i32, "i32", Ord::max, Ord::min, |a, n| a / n as i32);
native_element!(i64, "i64", Ord::max, Ord::min, |a, n| a / n as i64);

macro_rules! half_element {
    ($t:ty, $name:literal) => {
        impl Element for $t {
            const DTYPE: &'static str = $name;

            /// Computed in f32 and rounded once per step, as NCCL does for 16-bit floats.
            fn combine(op: ReduceOp, acc: &mut [Self], incoming: &[Self]) {
                let apply: fn(f32, f32) -> f32 = match op {
                    ReduceOp::Sum | ReduceOp::Mean => |a, b| a + b,
                    ReduceOp::Product => |a, b| a * b,
                    ReduceOp::Max => f32::max,
                    ReduceOp::Min => f32::min,
                };
                for (a, b) in acc.iter_mut().zip(incoming) {
                    *a = <$t>::from_f32(apply(a.to_f32(), b.to_f32()));
                }
            }

            fn divide(acc: &mut [Self], ranks: usize) {
                for a in acc.iter_mut() {
                    *a = <$t>::from_f32(a.to_f32() / ranks as f32);
                }
            }
        }
    };
}

half_element!(bf16, "bf16");
half_element!(f16, "f16");

/// Combines received bytes into `acc` (their lengths were checked by the caller).
pub(crate) fn combine_bytes<T: Element>(op: ReduceOp, acc: &mut [T], incoming: &[u8]) {
    match bytemuck::try_cast_slice::<u8, T>(incoming) {
        Ok(values) => T::combine(op, acc, values),
        Err(_) => {
            let values: Vec<T> = incoming
                .chunks_exact(std::mem::size_of::<T>())
                .map(bytemuck::pod_read_unaligned)
                .collect();
            T::combine(op, acc, &values);
        }
    }
}

/// Copies received bytes over `target` (their lengths were checked by the caller).
pub(crate) fn copy_bytes<T: Element>(target: &mut [T], incoming: &[u8]) {
    bytemuck::cast_slice_mut::<T, u8>(target).copy_from_slice(incoming);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_combines_element_wise() {
        let cases = [
            (ReduceOp::Sum, [5.0, 1.0]),
            (ReduceOp::Mean, [5.0, 1.0]),
            (ReduceOp::Product, [6.0, -2.0]),
            (ReduceOp::Max, [3.0, 2.0]),
            (ReduceOp::Min, [2.0, -1.0]),
        ];
        for (op, expected) in cases {
            let mut acc = [2.0f32, -1.0];
            f32::combine(op, &mut acc, &[3.0, 2.0]);
            assert_eq!(acc, expected, "{op:?}");
        }
        let mut ints = [7i64, -9];
        i64::combine(ReduceOp::Sum, &mut ints, &[1, 1]);
        i64::divide(&mut ints, 2);
        assert_eq!(ints, [4, -4]);
    }

    #[test]
    fn half_precision_combines_in_f32() {
        let mut acc = [bf16::from_f32(1.5), bf16::from_f32(-2.0)];
        bf16::combine(
            ReduceOp::Sum,
            &mut acc,
            &[bf16::from_f32(0.5), bf16::from_f32(4.0)],
        );
        bf16::divide(&mut acc, 2);
        assert_eq!(acc, [bf16::from_f32(1.0), bf16::from_f32(1.0)]);
    }

    #[test]
    fn unaligned_bytes_combine_like_aligned_ones() {
        let values = [1.0f64, 2.0, 3.0];
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(bytemuck::cast_slice(&values));
        let mut acc = [1.0f64; 3];
        combine_bytes(ReduceOp::Sum, &mut acc, &bytes[1..]);
        assert_eq!(acc, [2.0, 3.0, 4.0]);
    }
}
