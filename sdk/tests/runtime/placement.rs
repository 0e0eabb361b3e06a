//! Placement groups that capture child tasks (Ray's `placement_group_capture_child_tasks`):
//! what a task inside a capturing group submits without a placement of its own is held to
//! the group's bundles.

use anyhow::{anyhow, ensure, Result};
use fleet::Error;

/// Submits a child with no placement of its own (one GPU when `gpu`); returns its node.
#[fleet::remote]
async fn parent_of_one(gpu: bool) -> Result<String, String> {
    let child = if gpu {
        super::where_am_i::options().num_gpus(1.0).remote()
    } else {
        super::where_am_i::remote()
    };
    child.await.map_err(|e| e.to_string())
}

pub async fn a_capturing_placement_group_takes_in_child_tasks() -> Result<()> {
    use std::collections::BTreeMap;
    let group = fleet::PlacementGroup::new(vec![BTreeMap::from([("CPU".to_string(), 2.0)])])
        .name("captures")
        .create()
        .await?;
    let in_group = || {
        parent_of_one::options()
            .scheduling(group.scheduling(Some(0)))
            .capture_child_tasks(true)
    };
    // A CPU child fits the bundle beside its parent.
    ensure!(in_group().remote(false).await? == fleet::node_id());
    // A GPU child is held to the bundle (which has no GPU): refused naming the group,
    // where uncaptured it runs on the node's GPUs.
    match in_group().remote(true).await {
        Err(Error::Task(remote)) if remote.message.contains("placement group") => {}
        other => return Err(anyhow!("a captured GPU child: {other:?}")),
    }
    let uncaptured = parent_of_one::options()
        .scheduling(group.scheduling(Some(0)))
        .remote(true)
        .await?;
    ensure!(uncaptured == fleet::node_id());
    fleet::remove_placement_group(&group).await?;
    Ok(())
}

fn cpus(n: f64) -> std::collections::BTreeMap<String, f64> {
    std::collections::BTreeMap::from([("CPU".to_string(), n)])
}

pub async fn a_submitted_placement_group_waits_for_room() -> Result<()> {
    use std::time::Duration;
    // 3 of the node's 4 CPUs held: a 2-CPU group cannot be placed yet.
    let holder = fleet::PlacementGroup::new(vec![cpus(3.0)]).create().await?;
    let waiting = fleet::PlacementGroup::new(vec![cpus(2.0)])
        .name("waits")
        .submit()
        .await?;
    match waiting.ready(Duration::from_millis(500)).await {
        Err(Error::Timeout(_)) => {}
        other => return Err(anyhow!("a group with no room yet: {other:?}")),
    }
    ensure!(!waiting.is_ready());
    // Work for it waits with it, rather than failing.
    let inside = super::where_am_i::options()
        .scheduling(waiting.scheduling(Some(0)))
        .remote();
    fleet::remove_placement_group(&holder).await?;
    waiting.ready(Duration::from_secs(30)).await?;
    ensure!(waiting.bundle_nodes() == vec![fleet::node_id()]);
    ensure!(inside.await? == fleet::node_id());
    fleet::remove_placement_group(&waiting).await?;
    // One that can never fit says so through `ready`, at once.
    let never = fleet::PlacementGroup::new(vec![cpus(64.0)])
        .name("never")
        .submit()
        .await?;
    match never.ready(Duration::from_secs(30)).await {
        Err(Error::PlacementGroup { group, reason })
            if group == "never" && reason.contains("64") => {}
        other => return Err(anyhow!("a group that can never fit: {other:?}")),
    }
    Ok(())
}
