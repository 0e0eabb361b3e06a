//! Gradient buckets, pure: which parameters are all-reduced together.
//!
//! As in PyTorch DDP, buckets are filled in reverse parameter order (the order backward
//! produces gradients in most models: the last layers first) up to a size, so that a
//! step makes a few large all-reduces instead of one per parameter.

/// Buckets of parameter indices for parameters of `lens` elements of `width` bytes, in
/// reverse order, each up to `bucket_bytes` (a larger parameter gets a bucket of its own).
pub fn plan(lens: &[usize], width: usize, bucket_bytes: usize) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_bytes = 0usize;
    for index in (0..lens.len()).rev() {
        let bytes = lens[index] * width;
        if !current.is_empty() && current_bytes + bytes > bucket_bytes {
            buckets.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(index);
        current_bytes += bytes;
    }
    if !current.is_empty() {
        buckets.push(current);
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fill_in_reverse_order_up_to_their_size() {
        // 4-byte elements, 100-byte buckets.
        let lens = [10, 10, 15, 5, 40];
        let buckets = plan(&lens, 4, 100);
        assert_eq!(buckets, vec![vec![4], vec![3, 2], vec![1, 0]]);
        let all: Vec<usize> = buckets.concat();
        assert_eq!(all.len(), lens.len(), "every parameter once");
    }

    #[test]
    fn a_parameter_larger_than_a_bucket_gets_its_own() {
        assert_eq!(plan(&[1000, 1, 1], 4, 100), vec![vec![2, 1], vec![0]]);
        assert_eq!(plan(&[], 4, 100), Vec::<Vec<usize>>::new());
    }
}
