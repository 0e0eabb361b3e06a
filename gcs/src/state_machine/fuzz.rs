//! Property tests: the state machine and its snapshot decoder under made-up and damaged input
//! (`PROPTEST_CASES` sets the case count; docs/security.md).

use fleet_proto::fuzz::{mutated, wire_input};
use fleet_proto::gcs::{
    command::Op, ActorInfo, Command, KvPut, ReadRequest, Table as TableKind, UpdateActor,
    WriteRequest,
};
use proptest::prelude::*;
use prost::Message;

use super::StateMachine;

fn request(client_id: u64, seq: u64, op: Op) -> Vec<u8> {
    WriteRequest {
        client_id,
        seq,
        first_unacked: seq,
        command: Some(Command { op: Some(op) }),
    }
    .encode_to_vec()
}

fn samples() -> Vec<Vec<u8>> {
    vec![
        request(
            1,
            1,
            Op::KvPut(KvPut {
                namespace: "ns".into(),
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..KvPut::default()
            }),
        ),
        request(
            2,
            1,
            Op::RegisterActor(ActorInfo {
                actor_id: "actor-1".into(),
                name: "named".into(),
                namespace: "ns".into(),
                ..ActorInfo::default()
            }),
        ),
        request(
            2,
            2,
            Op::UpdateActor(UpdateActor {
                actor_id: "actor-1".into(),
                ..UpdateActor::default()
            }),
        ),
    ]
}

/// A state machine that applied every write in `inputs` that decodes.
fn applied(inputs: &[Vec<u8>]) -> StateMachine {
    let mut machine = StateMachine::new(64);
    for (offset, bytes) in inputs.iter().enumerate() {
        if let Ok(write) = WriteRequest::decode(bytes.as_slice()) {
            machine.apply_write(2 + offset as u64, write);
        }
    }
    machine
}

proptest! {
    /// Any sequence of writes (made up, damaged or valid) applies without a panic, every table
    /// reads back, and the snapshot restores to the same state.
    #[test]
    fn arbitrary_writes_apply_and_snapshot_round_trips(
        inputs in proptest::collection::vec(wire_input(samples()), 1..24)
    ) {
        let machine = applied(&inputs);
        for table in [
            TableKind::Nodes, TableKind::Jobs, TableKind::Actors, TableKind::PlacementGroups,
            TableKind::Objects, TableKind::TaskEvents, TableKind::Checkpoints, TableKind::Kv,
        ] {
            let _ = machine.read(&ReadRequest {
                table: table as i32,
                prefix: true,
                ..ReadRequest::default()
            });
        }
        let bytes = machine.snapshot_bytes();
        let mut restored = StateMachine::new(64);
        prop_assert!(restored.restore_bytes(&bytes).is_ok());
        prop_assert_eq!(restored.snapshot_bytes(), bytes);
    }

    /// A damaged snapshot (a corrupt data dir, a bad frame from the leader) is an error or a
    /// state, never a panic; a state it yields snapshots again.
    #[test]
    fn damaged_snapshots_restore_or_fail_cleanly(
        damaged in mutated(applied(&samples()).snapshot_bytes())
    ) {
        let mut machine = StateMachine::new(64);
        if machine.restore_bytes(&damaged).is_ok() {
            let mut again = StateMachine::new(64);
            prop_assert!(again.restore_bytes(&machine.snapshot_bytes()).is_ok());
        }
    }
}
