//! Tests of resource accounting: the behaviour the scheduler relies on.

use super::*;

fn set(pairs: &[(&str, f64)]) -> ResourceSet {
    ResourceSet::from_pairs(pairs.iter().copied()).expect("test resource sets are valid")
}

fn amount(value: f64) -> Amount {
    Amount::from_f64(value).expect("test amounts are valid")
}

fn gpus(value: f64) -> ResourceSet {
    set(&[(GPU, value)])
}

fn two_gpu_node() -> NodeResources {
    NodeResources::new(set(&[(CPU, 8.0)]), 2)
}

#[test]
fn amounts_accept_up_to_four_decimal_places() {
    assert_eq!(amount(0.5).units(), 5_000);
    assert_eq!(amount(0.25).units(), 2_500);
    assert_eq!(amount(0.1).units(), 1_000);
    assert_eq!(amount(0.0001).units(), 1);
    assert_eq!(amount(123456789.1234).units(), 1_234_567_891_234);
    assert_eq!(amount(0.0).units(), 0);
    assert_eq!(amount(-0.0).units(), 0);
}

#[test]
fn amounts_reject_negative_nan_infinite_too_precise_too_large() {
    assert_eq!(Amount::from_f64(-1.0), Err(AmountProblem::Negative));
    assert_eq!(Amount::from_f64(f64::NAN), Err(AmountProblem::NotFinite));
    assert_eq!(
        Amount::from_f64(f64::INFINITY),
        Err(AmountProblem::NotFinite)
    );
    assert_eq!(Amount::from_f64(0.00001), Err(AmountProblem::TooPrecise));
    assert_eq!(Amount::from_f64(0.12345), Err(AmountProblem::TooPrecise));
    assert_eq!(Amount::from_f64(1e20), Err(AmountProblem::TooLarge));
    assert_eq!(Amount::whole(u64::MAX), Err(AmountProblem::TooLarge));
}

#[test]
fn invalid_amounts_name_the_resource_and_the_fix() {
    let cases = [
        ("CPU", -1.0, "negative"),
        ("GPU", f64::NAN, "not a finite number"),
        ("my_accelerator", 0.12345, "more than 4 decimal places"),
    ];
    for (resource, value, reason) in cases {
        let error =
            ResourceSet::from_pairs([(resource, value)]).expect_err("invalid amount must fail");
        assert!(
            matches!(&error, ResourceError::InvalidAmount { resource: r, .. } if r == resource),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(resource), "{message}");
        assert!(message.contains(reason), "{message}");
    }
}

#[test]
fn names_must_be_non_empty_unique_and_unpadded() {
    assert!(matches!(
        ResourceSet::from_pairs([("", 1.0)]),
        Err(ResourceError::InvalidName { .. })
    ));
    assert!(matches!(
        ResourceSet::from_pairs([(" CPU", 1.0)]),
        Err(ResourceError::InvalidName { .. })
    ));
    assert_eq!(
        ResourceSet::from_pairs([("CPU", 1.0), ("CPU", 2.0)]),
        Err(ResourceError::DuplicateName {
            resource: "CPU".to_string()
        })
    );
}

#[test]
fn display_is_compact_and_in_name_order() {
    assert_eq!(
        set(&[(GPU, 0.5), (CPU, 1.0)]).to_string(),
        "{CPU: 1, GPU: 0.5}"
    );
    assert_eq!(
        set(&[(MEMORY, 1_073_741_824.0), (CPU, 0.1234)]).to_string(),
        "{CPU: 0.1234, memory: 1073741824}"
    );
    assert_eq!(ResourceSet::new().to_string(), "{}");
    assert_eq!(amount(2.05).to_string(), "2.05");
    assert_eq!(Amount::MAX.to_string(), "1844674407370955.1615");
}

#[test]
fn zero_amounts_are_the_same_as_absent() {
    assert_eq!(set(&[(CPU, 1.0), (GPU, 0.0)]), set(&[(CPU, 1.0)]));
    assert_eq!(set(&[(GPU, 0.0)]).get(GPU), Amount::ZERO);
    assert!(set(&[(GPU, 0.0)]).is_empty());
}

#[test]
fn serde_round_trips_and_validates() {
    let original = set(&[(CPU, 0.5), (GPU, 0.25), (MEMORY, 4_294_967_296.0)]);
    let json = serde_json::to_string(&original).expect("serializes");
    assert_eq!(json, r#"{"CPU":0.5,"GPU":0.25,"memory":4294967296.0}"#);
    let back: ResourceSet = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, original);

    let error = serde_json::from_str::<ResourceSet>(r#"{"CPU": -2}"#).expect_err("negative");
    assert!(error.to_string().contains("`CPU`"), "{error}");
}

#[test]
fn fractional_cpus_do_not_drift_after_ten_thousand_cycles() {
    let mut node = NodeResources::new(set(&[(CPU, 1.0)]), 0);
    let tenth = set(&[(CPU, 0.1)]);
    // 1_000 rounds of filling the node with ten 0.1-CPU grants and returning them all:
    // 10_000 grants and releases of 0.1. With f64 the node would end slightly below 1.
    for _ in 0..1_000 {
        let grants: Vec<Allocation> = (0..10)
            .map(|_| node.try_allocate(&tenth).expect("0.1 CPU fits"))
            .collect();
        assert_eq!(node.available().get(CPU), Amount::ZERO);
        assert!(matches!(
            node.try_allocate(&tenth),
            Err(AllocateError::Insufficient { .. })
        ));
        for grant in &grants {
            assert!(node.release(grant));
        }
    }
    assert_eq!(node.available(), node.total());
    assert_eq!(node.available().get(CPU), Amount::ONE);
    node.try_allocate(&set(&[(CPU, 1.0)]))
        .expect("a whole CPU fits after all releases");
}

#[test]
fn whole_gpu_requests_get_distinct_ids_then_wait_then_reuse_the_freed_id() {
    let mut node = two_gpu_node();
    let first = node.try_allocate(&gpus(1.0)).expect("first GPU");
    let second = node.try_allocate(&gpus(1.0)).expect("second GPU");
    assert_eq!(first.gpu_ids.len(), 1);
    assert_eq!(second.gpu_ids.len(), 1);
    assert_ne!(first.gpu_ids, second.gpu_ids);

    let third = node.try_allocate(&gpus(1.0));
    assert_eq!(
        third,
        Err(AllocateError::Insufficient {
            resource: GPU.to_string(),
            requested: Amount::ONE,
            available: Amount::ZERO,
        })
    );
    assert!(third.as_ref().is_err_and(AllocateError::is_retryable));

    assert!(node.release(&second));
    let third = node.try_allocate(&gpus(1.0)).expect("fits after release");
    assert_eq!(third.gpu_ids, second.gpu_ids);
}

#[test]
fn half_gpus_pack_onto_one_gpu_before_using_the_next() {
    let mut node = two_gpu_node();
    let a = node.try_allocate(&gpus(0.5)).expect("first half");
    let b = node.try_allocate(&gpus(0.5)).expect("second half");
    assert_eq!(a.gpu_ids, b.gpu_ids);
    assert_eq!(a.gpu_ids.len(), 1);
    let c = node.try_allocate(&gpus(0.5)).expect("third half");
    assert_eq!(c.gpu_ids.len(), 1);
    assert_ne!(c.gpu_ids, a.gpu_ids);
    assert_eq!(
        c.gpu_shares(),
        [GpuShare {
            id: c.gpu_ids[0],
            amount: amount(0.5)
        }]
    );
    assert_eq!(node.available().get(GPU), amount(0.5));
}

#[test]
fn fractional_requests_prefer_the_most_used_gpu_that_fits() {
    let mut node = two_gpu_node();
    let small = node.try_allocate(&gpus(0.3)).expect("0.3");
    assert_eq!(small.gpu_ids, [0]);
    // GPU 0 has 0.7 free, GPU 1 is fully free: a half goes to GPU 0, keeping GPU 1 whole.
    let half = node.try_allocate(&gpus(0.5)).expect("0.5");
    assert_eq!(half.gpu_ids, [0]);
    let whole = node.try_allocate(&gpus(1.0)).expect("GPU 1 is still whole");
    assert_eq!(whole.gpu_ids, [1]);
}

#[test]
fn free_shares_on_different_gpus_do_not_combine() {
    let mut node = two_gpu_node();
    node.try_allocate(&gpus(0.6)).expect("0.6 on one GPU");
    node.try_allocate(&gpus(0.6)).expect("0.6 on the other");
    assert_eq!(node.available().get(GPU), amount(0.8));
    assert_eq!(
        node.try_allocate(&gpus(0.5)),
        Err(AllocateError::Insufficient {
            resource: GPU.to_string(),
            requested: amount(0.5),
            available: amount(0.4),
        })
    );
}

#[test]
fn whole_gpu_requests_wait_while_a_share_is_in_use() {
    let mut node = two_gpu_node();
    let share = node.try_allocate(&gpus(0.25)).expect("share");
    assert_eq!(
        node.try_allocate(&gpus(2.0)),
        Err(AllocateError::Insufficient {
            resource: GPU.to_string(),
            requested: amount(2.0),
            available: Amount::ONE,
        })
    );
    assert!(node.release(&share));
    let both = node.try_allocate(&gpus(2.0)).expect("both GPUs free");
    assert_eq!(both.gpu_ids, [0, 1]);
    assert_eq!(cuda_visible_devices(&both), "0,1");
}

#[test]
fn fractional_gpu_request_above_one_is_invalid() {
    let mut node = two_gpu_node();
    let expected = AllocateError::InvalidGpuRequest {
        requested: amount(1.5),
    };
    assert_eq!(node.is_feasible(&gpus(1.5)), Err(expected.clone()));
    let error = node.try_allocate(&gpus(1.5)).expect_err("1.5 GPUs");
    assert_eq!(error, expected);
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("whole"), "{error}");
    assert_eq!(node.available(), node.total());
}

#[test]
fn more_gpus_than_the_node_has_is_infeasible() {
    let mut node = two_gpu_node();
    let expected = AllocateError::Infeasible {
        resource: GPU.to_string(),
        requested: amount(3.0),
        total: amount(2.0),
    };
    assert_eq!(node.is_feasible(&gpus(3.0)), Err(expected.clone()));
    let error = node.try_allocate(&gpus(3.0)).expect_err("3 GPUs on 2");
    assert_eq!(error, expected);
    assert!(!error.is_retryable());

    let cpu_only = NodeResources::new(set(&[(CPU, 4.0)]), 0);
    assert!(matches!(
        cpu_only.is_feasible(&gpus(0.5)),
        Err(AllocateError::Infeasible { resource, .. }) if resource == GPU
    ));
}

#[test]
fn infeasible_wins_over_insufficient() {
    let mut node = two_gpu_node();
    node.try_allocate(&set(&[(CPU, 8.0)])).expect("all CPUs");
    // CPU is merely busy, but 3 GPUs can never fit: the caller must not wait.
    assert!(matches!(
        node.try_allocate(&set(&[(CPU, 1.0), (GPU, 3.0)])),
        Err(AllocateError::Infeasible { resource, .. }) if resource == GPU
    ));
}

#[test]
fn custom_resources_are_counted_like_any_other() {
    let mut node = NodeResources::new(set(&[(CPU, 4.0), ("accelerator_x", 2.0)]), 0);
    let request = set(&[("accelerator_x", 1.0)]);
    let a = node.try_allocate(&request).expect("first");
    node.try_allocate(&request).expect("second");
    assert!(matches!(
        node.try_allocate(&request),
        Err(AllocateError::Insufficient { resource, .. }) if resource == "accelerator_x"
    ));
    assert!(node.release(&a));
    node.try_allocate(&request).expect("after release");

    assert_eq!(
        node.is_feasible(&set(&[("tpu", 1.0)])),
        Err(AllocateError::Infeasible {
            resource: "tpu".to_string(),
            requested: Amount::ONE,
            total: Amount::ZERO,
        })
    );
}

#[test]
fn memory_is_counted_in_exact_bytes() {
    const GIB: u64 = 1 << 30;
    let bytes = |n: u64| {
        let mut set = ResourceSet::new();
        set.insert_amount(MEMORY, Amount::whole(n).expect("fits"))
            .expect("valid name");
        set
    };
    let mut node = NodeResources::new(bytes(4 * GIB), 0);
    let big = node.try_allocate(&bytes(3 * GIB)).expect("3 GiB of 4");
    assert_eq!(
        node.try_allocate(&bytes(2 * GIB)),
        Err(AllocateError::Insufficient {
            resource: MEMORY.to_string(),
            requested: Amount::whole(2 * GIB).expect("fits"),
            available: Amount::whole(GIB).expect("fits"),
        })
    );
    assert!(matches!(
        node.try_allocate(&bytes(5 * GIB)),
        Err(AllocateError::Infeasible { .. })
    ));
    assert!(node.release(&big));
    assert_eq!(
        node.available().get(MEMORY),
        Amount::whole(4 * GIB).expect("fits")
    );

    // A terabyte node round-trips through the f64 wire format exactly.
    let tib = bytes(1 << 40);
    let json = serde_json::to_string(&tib).expect("serializes");
    assert_eq!(
        serde_json::from_str::<ResourceSet>(&json).expect("parses"),
        tib
    );
}

#[test]
fn a_failed_allocation_changes_nothing() {
    let mut node = two_gpu_node();
    node.try_allocate(&gpus(2.0)).expect("both GPUs");
    let before = node.available().clone();
    assert!(node.try_allocate(&set(&[(CPU, 1.0), (GPU, 1.0)])).is_err());
    assert_eq!(node.available(), &before);
    assert_eq!(node.available().get(CPU), amount(8.0));
    assert_eq!(node.outstanding(), 1);
}

#[test]
fn releasing_twice_or_on_another_node_changes_nothing() {
    let mut node = two_gpu_node();
    let mut other = two_gpu_node();
    let first = node
        .try_allocate(&set(&[(CPU, 2.0), (GPU, 1.0)]))
        .expect("fits");
    let _still_held = node
        .try_allocate(&set(&[(CPU, 2.0), (GPU, 1.0)]))
        .expect("fits");
    let _held_elsewhere = other.try_allocate(&set(&[(CPU, 1.0)])).expect("fits");

    assert!(node.release(&first));
    let after_one_release = node.available().clone();
    assert!(!node.release(&first), "second release must be refused");
    assert_eq!(node.available(), &after_one_release);

    // `other` has a grant with the same id 0 but different contents.
    assert!(!other.release(&first));
    assert_eq!(other.available().get(CPU), amount(7.0));
}

#[test]
fn new_sets_the_gpu_total_from_num_gpus() {
    let node = NodeResources::new(set(&[(CPU, 4.0), (GPU, 7.0)]), 2);
    assert_eq!(node.total().get(GPU), amount(2.0));
    assert_eq!(node.available().get(GPU), amount(2.0));
    assert_eq!(node.num_gpus(), 2);
    assert_eq!(node.gpu_free(1), Some(Amount::ONE));
    assert_eq!(node.gpu_free(2), None);

    let none = NodeResources::new(set(&[(CPU, 4.0), (GPU, 7.0)]), 0);
    assert_eq!(none.total().get(GPU), Amount::ZERO);
}

#[test]
fn cuda_visible_devices_lists_granted_ids() {
    let mut node = two_gpu_node();
    let cpu_only = node.try_allocate(&set(&[(CPU, 1.0)])).expect("CPU");
    assert_eq!(cuda_visible_devices(&cpu_only), "");
    let one = node.try_allocate(&gpus(1.0)).expect("GPU");
    assert_eq!(cuda_visible_devices(&one), "0");
    let share = node.try_allocate(&gpus(0.5)).expect("share of GPU 1");
    assert_eq!(cuda_visible_devices(&share), "1");
}
