//! Fleet's control store on an embedded single-replica cluster: nothing to start first.
//!
//! `cargo run --release -p fleet-gcs --example control_store`
//!
//! It starts a one-replica GCS (real gRPC server, real Raft, sled on disk) inside this
//! process, then does what a raylet and a driver will do with it: register a node and a
//! job, take an actor through PENDING → ALIVE → RESTARTING → ALIVE with compare-and-set,
//! commit a checkpoint, batch object locations, watch the actors table, use the KV store;
//! then restarts the replica from its data dir and reads everything back.

use std::time::Duration;

use anyhow::{ensure, Context};
use fleet_gcs::server::EmbeddedGcs;
use fleet_gcs::GcsClient;
use fleet_proto::gcs::{
    ActorInfo, ActorState, CheckpointInfo, JobInfo, NodeInfo, ObjectLocationUpdate, Table,
    UpdateActor, WatchFilter,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("gcs");
    let gcs = EmbeddedGcs::start(&data_dir).await?;
    println!(
        "embedded GCS serving at {} (data in {})",
        gcs.address,
        data_dir.display()
    );
    let client = GcsClient::connect(&gcs.address)?;

    // A watcher on the actors table, as a driver waiting for its actor would have.
    let mut watch = client.watch(
        vec![WatchFilter {
            table: Table::Actors as i32,
            ..Default::default()
        }],
        0,
    );
    watch.next().await?; // the initial (empty) snapshot

    let node = NodeInfo {
        node_id: "node-1".into(),
        address: "127.0.0.1:7000".into(),
        resources_total: [("CPU".to_string(), 2.0), ("GPU".to_string(), 0.0)].into(),
        ..Default::default()
    };
    client.register_node(node).await?;
    client
        .add_job(JobInfo {
            job_id: "job-1".into(),
            entrypoint: "control_store".into(),
            ..Default::default()
        })
        .await?;

    client
        .register_actor(ActorInfo {
            actor_id: "actor-1".into(),
            job_id: "job-1".into(),
            name: "counter".into(),
            namespace: "default".into(),
            class_name: "Counter".into(),
            max_restarts: 3,
            ..Default::default()
        })
        .await?;
    let step = |from: ActorState, to: ActorState, count_restart: bool| UpdateActor {
        actor_id: "actor-1".into(),
        expected_state: from as i32,
        new_state: to as i32,
        node_id: "node-1".into(),
        address: "127.0.0.1:7001".into(),
        count_restart,
        ..Default::default()
    };
    client
        .update_actor(step(
            ActorState::ActorPending,
            ActorState::ActorAlive,
            false,
        ))
        .await?;
    // A second scheduler racing on the same transition loses the compare-and-set.
    let lost = client
        .update_actor(step(
            ActorState::ActorPending,
            ActorState::ActorAlive,
            false,
        ))
        .await;
    println!(
        "racing PENDING→ALIVE again: {}",
        lost.err().map(|e| e.to_string()).unwrap_or_default()
    );
    client
        .update_actor(step(
            ActorState::ActorAlive,
            ActorState::ActorRestarting,
            true,
        ))
        .await?;
    client
        .update_actor(step(
            ActorState::ActorRestarting,
            ActorState::ActorAlive,
            false,
        ))
        .await?;

    let mut transitions = Vec::new();
    while transitions.len() < 4 {
        let update = tokio::time::timeout(Duration::from_secs(5), watch.next()).await??;
        for event in update.events {
            let record = event.record.context("event record")?;
            let actor: ActorInfo = prost::Message::decode(record.value.as_slice())?;
            transitions.push(format!(
                "{:?}@{}",
                ActorState::try_from(actor.state)?,
                event.version
            ));
        }
    }
    println!("watched actor-1: {}", transitions.join(" → "));

    client
        .commit_checkpoint(CheckpointInfo {
            owner_id: "actor-1".into(),
            sequence: 1,
            url: "file:///checkpoints/actor-1/1".into(),
            ..Default::default()
        })
        .await?;
    client
        .update_object_locations(
            (0..3)
                .map(|i| ObjectLocationUpdate {
                    object_id: format!("obj-{i}"),
                    node_id: "node-1".into(),
                    size: 1 << 20,
                    ..Default::default()
                })
                .collect(),
        )
        .await?;
    client
        .kv_put("named_actors", b"counter", b"actor-1")
        .await?;

    // Restart the replica on the same data dir: everything acknowledged is still there.
    gcs.stop().await?;
    let gcs = EmbeddedGcs::start(&data_dir).await?;
    let client = GcsClient::connect(&gcs.address)?;
    let actor = client
        .get_named_actor("default", "counter")
        .await?
        .context("named actor")?;
    ensure!(actor.state == ActorState::ActorAlive as i32 && actor.num_restarts == 1);
    let checkpoint = client
        .latest_checkpoint("actor-1")
        .await?
        .context("checkpoint")?;
    let objects = client.list_objects().await?;
    let value = client
        .kv_get("named_actors", b"counter")
        .await?
        .context("kv")?;
    println!(
        "after restart: actor {} is {:?} with {} restart(s); checkpoint {} at {}; {} objects; kv counter={}",
        actor.actor_id,
        ActorState::try_from(actor.state)?,
        actor.num_restarts,
        checkpoint.sequence,
        checkpoint.url,
        objects.len(),
        String::from_utf8_lossy(&value.value)
    );
    let status = client.replica_status(&gcs.address).await?;
    println!(
        "replica {} is {} at term {}, applied index {}",
        status.id, status.role, status.term, status.applied_index
    );
    gcs.stop().await?;
    Ok(())
}
