use fleet_proto::gcs::{
    command::Op, ActorInfo, ActorState, CheckpointInfo, Command, CommitCheckpoint, KvDelete, KvPut,
    ObjectLocationBatch, ObjectLocationUpdate, ReadRequest, RejectCode, Table as TableKind,
    UpdateActor, WatchFilter, WriteRequest, WriteResponse,
};

use super::StateMachine;

fn write(sm: &mut StateMachine, index: u64, client: u64, seq: u64, op: Op) -> WriteResponse {
    sm.apply_write(
        index,
        WriteRequest {
            client_id: client,
            seq,
            first_unacked: seq,
            command: Some(Command { op: Some(op) }),
        },
    )
}

fn kv_put(key: &str, value: &str) -> Op {
    Op::KvPut(KvPut {
        namespace: "ns".into(),
        key: key.into(),
        value: value.into(),
        ..KvPut::default()
    })
}

fn kv_get(sm: &StateMachine, key: &str) -> Option<Vec<u8>> {
    sm.read(&ReadRequest {
        table: TableKind::Kv as i32,
        namespace: "ns".into(),
        key: key.into(),
        ..ReadRequest::default()
    })
    .pop()
    .map(|r| r.value)
}

fn code(response: &WriteResponse) -> Option<RejectCode> {
    response
        .rejection
        .as_ref()
        .map(|r| RejectCode::try_from(r.code).expect("known code"))
}

#[test]
fn retried_write_applies_once() {
    let mut sm = StateMachine::new(100);
    let first = write(&mut sm, 2, 7, 1, kv_put("a", "1"));
    assert!(first.rejection.is_none());
    // Someone else overwrites the key; then client 7's retry of seq 1 arrives again.
    write(&mut sm, 3, 8, 1, kv_put("a", "2"));
    let retry = write(&mut sm, 4, 7, 1, kv_put("a", "1"));
    assert_eq!(retry, first, "the retry gets the original answer");
    assert_eq!(
        kv_get(&sm, "a").as_deref(),
        Some(&b"2"[..]),
        "and does not apply again"
    );
    // Once the client says seq 1 is acknowledged, a stale duplicate is refused.
    sm.apply_write(
        5,
        WriteRequest {
            client_id: 7,
            seq: 2,
            first_unacked: 2,
            command: Some(Command {
                op: Some(kv_put("b", "1")),
            }),
        },
    );
    let stale = write(&mut sm, 6, 7, 1, kv_put("a", "1"));
    assert_eq!(code(&stale), Some(RejectCode::StaleSession));
    assert_eq!(kv_get(&sm, "a").as_deref(), Some(&b"2"[..]));
}

#[test]
fn kv_compare_and_set() {
    let mut sm = StateMachine::new(100);
    let cas = |expected| {
        Op::KvPut(KvPut {
            namespace: "ns".into(),
            key: "k".into(),
            value: "v".into(),
            expected_version: Some(expected),
            ..KvPut::default()
        })
    };
    assert!(
        write(&mut sm, 2, 0, 0, cas(0)).rejection.is_none(),
        "absent key is version 0"
    );
    let failed = write(&mut sm, 3, 0, 0, cas(0));
    assert_eq!(code(&failed), Some(RejectCode::CasFailed));
    let current = failed
        .rejection
        .and_then(|r| r.current)
        .expect("current record");
    assert_eq!(current.mod_version, 2);
    assert!(write(&mut sm, 4, 0, 0, cas(2)).rejection.is_none());
    let absent = Op::KvPut(KvPut {
        namespace: "ns".into(),
        key: "k".into(),
        if_absent: true,
        ..KvPut::default()
    });
    assert_eq!(
        code(&write(&mut sm, 5, 0, 0, absent)),
        Some(RejectCode::AlreadyExists)
    );
    write(&mut sm, 6, 0, 0, kv_put("k2", "x"));
    write(
        &mut sm,
        7,
        0,
        0,
        Op::KvDelete(KvDelete {
            namespace: "ns".into(),
            key: "k".into(),
            prefix: true,
        }),
    );
    assert!(kv_get(&sm, "k").is_none() && kv_get(&sm, "k2").is_none());
}

fn actor(id: &str, name: &str, max_restarts: i32) -> Op {
    Op::RegisterActor(ActorInfo {
        actor_id: id.into(),
        name: name.into(),
        namespace: "default".into(),
        max_restarts,
        ..ActorInfo::default()
    })
}

fn transition(id: &str, from: ActorState, to: ActorState, count_restart: bool) -> Op {
    Op::UpdateActor(UpdateActor {
        actor_id: id.into(),
        expected_state: from as i32,
        new_state: to as i32,
        count_restart,
        node_id: "n1".into(),
        ..UpdateActor::default()
    })
}

#[test]
fn actor_state_machine_and_names() {
    use ActorState::*;
    let mut sm = StateMachine::new(100);
    assert!(write(&mut sm, 2, 0, 0, actor("a1", "counter", 1))
        .rejection
        .is_none());
    assert_eq!(
        code(&write(&mut sm, 3, 0, 0, actor("a2", "counter", 0))),
        Some(RejectCode::NameTaken)
    );
    assert_eq!(
        sm.named_actor("default", "counter")
            .map(|a| a.actor_id.as_str()),
        Some("a1")
    );
    // CAS: only the caller that saw PENDING wins.
    assert!(write(
        &mut sm,
        4,
        0,
        0,
        transition("a1", ActorPending, ActorAlive, false)
    )
    .rejection
    .is_none());
    assert_eq!(
        code(&write(
            &mut sm,
            5,
            0,
            0,
            transition("a1", ActorPending, ActorAlive, false)
        )),
        Some(RejectCode::CasFailed)
    );
    assert_eq!(
        code(&write(
            &mut sm,
            6,
            0,
            0,
            transition("a1", ActorAlive, ActorPending, false)
        )),
        Some(RejectCode::InvalidTransition)
    );
    assert!(write(
        &mut sm,
        7,
        0,
        0,
        transition("a1", ActorAlive, ActorRestarting, true)
    )
    .rejection
    .is_none());
    assert!(write(
        &mut sm,
        8,
        0,
        0,
        transition("a1", ActorRestarting, ActorAlive, false)
    )
    .rejection
    .is_none());
    assert_eq!(
        code(&write(
            &mut sm,
            9,
            0,
            0,
            transition("a1", ActorAlive, ActorRestarting, true)
        )),
        Some(RejectCode::RestartsExhausted)
    );
    assert!(write(
        &mut sm,
        10,
        0,
        0,
        transition("a1", ActorAlive, ActorDead, false)
    )
    .rejection
    .is_none());
    assert!(
        sm.named_actor("default", "counter").is_none(),
        "a dead actor frees its name"
    );
    assert!(write(&mut sm, 11, 0, 0, actor("a2", "counter", 0))
        .rejection
        .is_none());
    assert_eq!(
        code(&write(
            &mut sm,
            12,
            0,
            0,
            transition("a1", ActorDead, ActorAlive, false)
        )),
        Some(RejectCode::InvalidTransition)
    );
}

#[test]
fn checkpoints_only_move_forward() {
    let mut sm = StateMachine::new(100);
    let commit = |sequence| {
        Op::CommitCheckpoint(CommitCheckpoint {
            checkpoint: Some(CheckpointInfo {
                owner_id: "actor-1".into(),
                sequence,
                url: format!("file:///ckpt/{sequence}"),
                ..CheckpointInfo::default()
            }),
        })
    };
    assert!(write(&mut sm, 2, 0, 0, commit(5)).rejection.is_none());
    assert_eq!(
        code(&write(&mut sm, 3, 0, 0, commit(4))),
        Some(RejectCode::StaleCheckpoint)
    );
    assert_eq!(
        code(&write(&mut sm, 4, 0, 0, commit(5))),
        Some(RejectCode::StaleCheckpoint)
    );
    assert!(write(&mut sm, 5, 0, 0, commit(6)).rejection.is_none());
}

#[test]
fn batched_locations_and_watch_history() {
    let mut sm = StateMachine::new(4);
    let batch = Op::ObjectLocations(ObjectLocationBatch {
        updates: vec![
            ObjectLocationUpdate {
                object_id: "o1".into(),
                node_id: "n2".into(),
                size: 10,
                ..ObjectLocationUpdate::default()
            },
            ObjectLocationUpdate {
                object_id: "o1".into(),
                node_id: "n1".into(),
                ..ObjectLocationUpdate::default()
            },
            ObjectLocationUpdate {
                object_id: "o2".into(),
                node_id: "n1".into(),
                ..ObjectLocationUpdate::default()
            },
        ],
    });
    write(&mut sm, 2, 0, 0, batch);
    let objects = sm.read(&ReadRequest {
        table: TableKind::Objects as i32,
        prefix: true,
        ..ReadRequest::default()
    });
    assert_eq!(objects.len(), 2);
    let filter = [WatchFilter {
        table: TableKind::Objects as i32,
        key_prefix: b"o1".to_vec(),
        ..WatchFilter::default()
    }];
    let changes = sm.changes_since(1, &filter).expect("history complete");
    assert_eq!(changes.len(), 2, "two changes to o1 in one batch");
    assert!(changes.iter().all(|c| c.version == 2));
    // Overflow the history: resuming from before the floor needs a resync.
    for i in 3..8 {
        write(&mut sm, i, 0, 0, kv_put("x", "y"));
    }
    assert!(sm.changes_since(2, &filter).is_none());
    assert!(sm.changes_since(7, &[]).is_some());
}

#[test]
fn snapshot_round_trip() {
    let mut sm = StateMachine::new(100);
    write(&mut sm, 2, 9, 1, actor("a1", "named", -1));
    write(&mut sm, 3, 9, 2, kv_put("k", "v"));
    sm.set_member(
        4,
        1,
        Some(fleet_proto::gcs::Member {
            id: 1,
            address: "x:1".into(),
            voter: true,
        }),
    );
    let bytes = sm.snapshot_bytes();
    let mut restored = StateMachine::new(100);
    restored.restore_bytes(&bytes).expect("restore");
    assert_eq!(restored.applied(), 4);
    assert_eq!(restored.snapshot(), sm.snapshot());
    assert!(restored.named_actor("default", "named").is_some());
    // The session survived: a retry after restore is still deduplicated.
    let retry = write(&mut restored, 5, 9, 2, kv_put("k", "other"));
    assert_eq!(retry.version, 3);
    assert_eq!(kv_get(&restored, "k").as_deref(), Some(&b"v"[..]));
    // Watchers from before the snapshot must resync.
    assert!(restored.changes_since(3, &[]).is_none());
    assert!(restored.restore_bytes(b"\xff\xff garbage").is_err());
}

fn kill(id: &str, from: ActorState) -> Op {
    Op::UpdateActor(UpdateActor {
        actor_id: id.into(),
        expected_state: from as i32,
        new_state: ActorState::ActorDead as i32,
        death_cause: "test".into(),
        ..UpdateActor::default()
    })
}

fn actor_ids(sm: &StateMachine) -> Vec<String> {
    sm.read(&ReadRequest {
        table: TableKind::Actors as i32,
        prefix: true,
        ..ReadRequest::default()
    })
    .into_iter()
    .map(|r| String::from_utf8_lossy(&r.key).into_owned())
    .collect()
}

#[test]
fn ended_rows_are_kept_only_as_the_retention_policy_says() {
    use fleet_proto::gcs::{
        FinishJob, JobInfo, JobState, PlacementGroupInfo, RemovePlacementGroup,
    };
    let retention = super::Retention {
        dead_actors: 2,
        finished_jobs: 1,
        removed_placement_groups: 1,
    };
    let mut sm = StateMachine::with_retention(100, retention.clone());
    let mut index = 1;
    let mut next = || {
        index += 1;
        index
    };
    // A live actor is never deleted, however many die after it.
    write(&mut sm, next(), 0, 0, actor("live", "", 0));
    for i in 0..5 {
        let id = format!("dead{i}");
        write(&mut sm, next(), 0, 0, actor(&id, "", 0));
        let commit = Op::CommitCheckpoint(CommitCheckpoint {
            checkpoint: Some(CheckpointInfo {
                owner_id: id.clone(),
                sequence: 1,
                ..CheckpointInfo::default()
            }),
        });
        write(&mut sm, next(), 0, 0, commit);
        assert!(
            write(&mut sm, next(), 0, 0, kill(&id, ActorState::ActorPending))
                .rejection
                .is_none()
        );
    }
    assert_eq!(actor_ids(&sm), vec!["dead3", "dead4", "live"]);
    let checkpoints = sm.read(&ReadRequest {
        table: TableKind::Checkpoints as i32,
        prefix: true,
        ..ReadRequest::default()
    });
    assert_eq!(
        checkpoints.len(),
        2,
        "a deleted dead actor's checkpoint record goes too"
    );
    for job in ["j1", "j2", "j3"] {
        let add = Op::AddJob(JobInfo {
            job_id: job.into(),
            ..JobInfo::default()
        });
        write(&mut sm, next(), 0, 0, add);
    }
    for job in ["j1", "j2"] {
        let finish = Op::FinishJob(FinishJob {
            job_id: job.into(),
            state: JobState::JobSucceeded as i32,
            ..FinishJob::default()
        });
        assert!(write(&mut sm, next(), 0, 0, finish).rejection.is_none());
    }
    let jobs: Vec<_> = sm
        .read(&ReadRequest {
            table: TableKind::Jobs as i32,
            prefix: true,
            ..ReadRequest::default()
        })
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(
        jobs,
        vec![b"j2".to_vec(), b"j3".to_vec()],
        "the running job stays"
    );
    for pg in ["p1", "p2"] {
        let create = Op::CreatePlacementGroup(PlacementGroupInfo {
            placement_group_id: pg.into(),
            bundles: vec![Default::default()],
            ..PlacementGroupInfo::default()
        });
        write(&mut sm, next(), 0, 0, create);
        let remove = Op::RemovePlacementGroup(RemovePlacementGroup {
            placement_group_id: pg.into(),
        });
        write(&mut sm, next(), 0, 0, remove.clone());
        // Removing again keeps its place.
        write(&mut sm, next(), 0, 0, remove);
    }
    assert_eq!(sm.ended_rows(), (2, 1, 1));
    // A restored replica keeps the same rows and deletes the same ones next.
    let mut restored = StateMachine::with_retention(100, retention);
    restored
        .restore_bytes(&sm.snapshot_bytes())
        .expect("restore");
    assert_eq!(restored.ended_rows(), (2, 1, 1));
    let at = next();
    for machine in [&mut sm, &mut restored] {
        write(machine, at, 0, 0, actor("dead5", "", 0));
        write(
            machine,
            at + 1,
            0,
            0,
            kill("dead5", ActorState::ActorPending),
        );
    }
    assert_eq!(actor_ids(&sm), vec!["dead4", "dead5", "live"]);
    assert_eq!(restored.snapshot(), sm.snapshot());
}

#[test]
fn a_named_actor_is_found_through_the_name_index() {
    let mut sm = StateMachine::new(100);
    write(&mut sm, 2, 0, 0, actor("a1", "svc", 0));
    let by_name = |sm: &StateMachine, name: &str| {
        sm.read(&ReadRequest {
            table: TableKind::Actors as i32,
            namespace: "default".into(),
            key: name.into(),
            by_name: true,
            ..ReadRequest::default()
        })
    };
    assert_eq!(by_name(&sm, "svc").len(), 1);
    assert!(by_name(&sm, "other").is_empty());
    write(&mut sm, 3, 0, 0, kill("a1", ActorState::ActorPending));
    assert!(
        by_name(&sm, "svc").is_empty(),
        "a dead actor's name is free"
    );
}
