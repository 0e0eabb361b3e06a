use std::time::{Duration, Instant};

use super::*;

fn set(pairs: &[(&str, f64)]) -> ResourceSet {
    ResourceSet::from_pairs(pairs.iter().copied()).expect("valid resources")
}

fn node() -> NodeResources {
    NodeResources::new(set(&[("CPU", 4.0)]), 2)
}

fn key(group: &str, index: u32) -> BundleKey {
    BundleKey {
        group: group.into(),
        index,
    }
}

fn bundle(group: &str, index: u32, pairs: &[(&str, f64)]) -> BundleRequest {
    BundleRequest {
        key: key(group, index),
        resources: set(pairs),
        job_id: "job-1".into(),
    }
}

fn free(node: &NodeResources, name: &str) -> f64 {
    node.available().get(name).to_f64()
}

#[test]
fn prepare_reserves_out_of_the_free_pool_and_commit_keeps_it() {
    let mut node = node();
    let mut bundles = Bundles::new(Duration::from_secs(10));
    let now = Instant::now();
    bundles
        .prepare(
            &mut node,
            &[
                bundle("pg", 0, &[("CPU", 1.0)]),
                bundle("pg", 1, &[("CPU", 1.0), ("GPU", 1.0)]),
            ],
            now,
        )
        .expect("fits");
    assert_eq!(free(&node, "CPU"), 2.0);
    assert_eq!(free(&node, "GPU"), 1.0);
    // A retried prepare reserves nothing more.
    bundles
        .prepare(&mut node, &[bundle("pg", 0, &[("CPU", 1.0)])], now)
        .expect("idempotent");
    assert_eq!(free(&node, "CPU"), 2.0);
    assert!(!bundles.is_committed(&key("pg", 0)));
    bundles.commit("pg", &[0, 1]).expect("prepared");
    assert!(bundles.is_committed(&key("pg", 1)));
    // Committed bundles never expire.
    assert!(bundles
        .expire(&mut node, now + Duration::from_secs(3600))
        .is_empty());
    assert_eq!(bundles.len(), 2);
}

#[test]
fn prepare_is_all_or_nothing() {
    let mut node = node();
    let mut bundles = Bundles::default();
    let error = bundles
        .prepare(
            &mut node,
            &[
                bundle("pg", 0, &[("CPU", 3.0)]),
                bundle("pg", 1, &[("CPU", 2.0)]),
            ],
            Instant::now(),
        )
        .expect_err("5 CPUs do not fit 4");
    assert!(error.contains("bundle 1 of placement group pg"), "{error}");
    assert_eq!(free(&node, "CPU"), 4.0);
    assert!(bundles.is_empty());
}

#[test]
fn an_uncommitted_prepare_expires_and_then_cannot_commit() {
    let mut node = node();
    let mut bundles = Bundles::new(Duration::from_secs(10));
    let now = Instant::now();
    bundles
        .prepare(&mut node, &[bundle("pg", 0, &[("CPU", 2.0)])], now)
        .expect("fits");
    assert!(bundles
        .expire(&mut node, now + Duration::from_secs(5))
        .is_empty());
    assert_eq!(
        bundles.expire(&mut node, now + Duration::from_secs(10)),
        vec![key("pg", 0)]
    );
    assert_eq!(free(&node, "CPU"), 4.0);
    assert!(matches!(
        bundles.commit("pg", &[0]),
        Err(BundleError::NotHere { .. })
    ));
}

#[test]
fn cancel_gives_everything_back_and_is_idempotent() {
    let mut node = node();
    let mut bundles = Bundles::default();
    bundles
        .prepare(
            &mut node,
            &[
                bundle("pg", 0, &[("CPU", 1.0), ("GPU", 2.0)]),
                bundle("other", 0, &[("CPU", 1.0)]),
            ],
            Instant::now(),
        )
        .expect("fits");
    bundles.commit("pg", &[]).expect("prepared");
    let (lease, _) = bundles
        .allocate(&key("pg", 0), &set(&[("GPU", 1.0)]))
        .expect("fits the bundle");
    assert_eq!(bundles.cancel(&mut node, "pg", &[]), vec![key("pg", 0)]);
    assert!(bundles.cancel(&mut node, "pg", &[]).is_empty());
    // The lease's allocation went back with the bundle.
    assert!(!bundles.release(&key("pg", 0), &lease));
    assert_eq!(free(&node, "CPU"), 3.0);
    assert_eq!(free(&node, "GPU"), 2.0);
    assert_eq!(node.gpu_free(0), Some(Amount::ONE));
    assert_eq!(bundles.len(), 1);
}

#[test]
fn leases_allocate_from_the_bundle_never_from_the_node() {
    let mut node = node();
    let mut bundles = Bundles::default();
    bundles
        .prepare(
            &mut node,
            &[bundle("pg", 0, &[("CPU", 2.0), ("GPU", 1.0)])],
            Instant::now(),
        )
        .expect("fits");
    // Not committed yet: no leases inside.
    assert!(matches!(
        bundles.allocate(&key("pg", 0), &set(&[("CPU", 1.0)])),
        Err(BundleError::NotHere { .. })
    ));
    bundles.commit("pg", &[0]).expect("prepared");
    let before_cpu = free(&node, "CPU");
    let (a, gpus_a) = bundles
        .allocate(&key("pg", 0), &set(&[("CPU", 1.0), ("GPU", 1.0)]))
        .expect("fits");
    // The bundle's GPU is the node's GPU 0 (the first free one when it was reserved).
    assert_eq!(gpus_a, vec![0]);
    let (b, _) = bundles
        .allocate(&key("pg", 0), &set(&[("CPU", 1.0)]))
        .expect("fits");
    assert_eq!(
        free(&node, "CPU"),
        before_cpu,
        "the node's pool is untouched"
    );
    // Full now: the next one waits.
    assert_eq!(
        bundles.allocate(&key("pg", 0), &set(&[("CPU", 1.0)])),
        Err(BundleError::Busy { key: key("pg", 0) })
    );
    // Larger than the bundle: never.
    match bundles.allocate(&key("pg", 0), &set(&[("CPU", 3.0)])) {
        Err(BundleError::TooLarge { reserved, .. }) => {
            assert!(reserved.contains("CPU"), "{reserved}")
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(bundles.release(&key("pg", 0), &b));
    assert!(bundles.release(&key("pg", 0), &a));
    assert_eq!(
        bundles
            .available(&key("pg", 0))
            .map(|s| s.get("CPU").to_f64()),
        Some(2.0)
    );
}

#[test]
fn gpu_ids_inside_a_bundle_are_the_nodes() {
    let mut node = node();
    // Take GPU 0 first, so the bundle gets GPU 1.
    let other = node.try_allocate(&set(&[("GPU", 1.0)])).expect("GPU 0");
    assert_eq!(other.gpu_ids, vec![0]);
    let mut bundles = Bundles::default();
    bundles
        .prepare(
            &mut node,
            &[bundle("pg", 0, &[("GPU", 1.0)])],
            Instant::now(),
        )
        .expect("fits");
    bundles.commit("pg", &[]).expect("prepared");
    let (_, ids) = bundles
        .allocate(&key("pg", 0), &set(&[("GPU", 1.0)]))
        .expect("fits");
    assert_eq!(ids, vec![1]);
}

#[test]
fn any_bundle_picks_one_that_fits_now_then_one_to_wait_on() {
    let mut node = node();
    let mut bundles = Bundles::default();
    bundles
        .prepare(
            &mut node,
            &[
                bundle("pg", 0, &[("CPU", 1.0)]),
                bundle("pg", 1, &[("CPU", 1.0)]),
            ],
            Instant::now(),
        )
        .expect("fits");
    bundles.commit("pg", &[]).expect("prepared");
    let one = set(&[("CPU", 1.0)]);
    assert_eq!(bundles.pick("pg", &one), Some(key("pg", 0)));
    bundles.allocate(&key("pg", 0), &one).expect("fits");
    assert_eq!(bundles.pick("pg", &one), Some(key("pg", 1)));
    bundles.allocate(&key("pg", 1), &one).expect("fits");
    // Both busy: still one to wait on; too large for any: none.
    assert_eq!(bundles.pick("pg", &one), Some(key("pg", 0)));
    assert_eq!(bundles.pick("pg", &set(&[("CPU", 2.0)])), None);
    assert_eq!(bundles.pick("nope", &one), None);
}

#[test]
fn a_finished_jobs_bundles_are_released() {
    let mut node = node();
    let mut bundles = Bundles::default();
    bundles
        .prepare(
            &mut node,
            &[bundle("pg", 0, &[("CPU", 4.0)])],
            Instant::now(),
        )
        .expect("fits");
    bundles.commit("pg", &[]).expect("prepared");
    assert!(bundles.release_job(&mut node, "job-2").is_empty());
    assert_eq!(bundles.release_job(&mut node, "job-1"), vec![key("pg", 0)]);
    assert_eq!(free(&node, "CPU"), 4.0);
}
