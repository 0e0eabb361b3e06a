//! Placement groups (Ray's): a gang of resource bundles reserved across the cluster at
//! once, so that work scheduled into them (`Scheduling::PlacementGroup`) finds its
//! resources on the nodes the strategy chose.
//!
//! The creating process coordinates a two-phase commit over the raylets:
//! 1. record the group PENDING in the GCS;
//! 2. read the cluster (the GCS nodes table and each raylet's `NodeInfo`) and pick a node
//!    per bundle with [`fleet_raylet::scheduling::place_bundles`];
//! 3. `PrepareBundles` on every chosen node (each reserves its share, all or nothing);
//! 4. when every prepare succeeded, `CommitBundles` on every node; otherwise
//!    `CancelBundles` on all of them and start again from 2 with a fresh view, a few times;
//! 5. record the group CREATED with each bundle's node in the GCS.
//!
//! A coordinator that dies between 3 and 4 leaks nothing: uncommitted prepares expire on
//! the raylets. Groups are released when removed ([`remove_placement_group`]) and when
//! their job ends.
//!
//! **Rescheduling**: the creating process watches the nodes (the GCS's dead-node events).
//! When a node holding some of a group's bundles dies, it marks the group RESCHEDULING,
//! places just the lost bundles again on live nodes (keeping the strategy: under
//! STRICT_SPREAD away from the nodes the other bundles use), reserves them with the same
//! two-phase commit, and records the group CREATED with the new nodes; it keeps trying, with
//! backoff, until that succeeds or the group is removed. Meanwhile work asking for the
//! group's bundles waits (raylets answer "ask again") instead of failing, and
//! [`PlacementGroupHandle::ready`] waits for the group to be placed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::gcs::{
    Bundle as WireBundle, PlacementGroupInfo, PlacementGroupState,
    PlacementStrategy as WireStrategy, UpdatePlacementGroup,
};
use fleet_proto::runtime::{
    BundleSpec, CancelBundlesRequest, CommitBundlesRequest, NodeInfoRequest, PrepareBundlesRequest,
};
pub use fleet_raylet::scheduling::PlacementStrategy;
use fleet_raylet::scheduling::{place_bundles, NodeView, PlacementError};

use crate::context::CoreWorker;
use crate::error::{Error, Result};
use crate::submitter::Scheduling;

/// A bundle: resource name → amount (`CPU`, `GPU`, `memory` in bytes, custom names).
pub type Bundle = BTreeMap<String, f64>;

/// Rounds of (view, place, prepare) before a group that does not fit now fails.
const ATTEMPTS: u32 = 5;
/// The longest pause between two rescheduling rounds.
const RESCHEDULE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a raylet may take to answer `NodeInfo` before it is left out of the view.
const NODE_INFO_TIMEOUT: Duration = Duration::from_secs(2);

/// A placement group to create: `PlacementGroup::new(bundles).strategy(..).create()`.
#[derive(Clone, Debug)]
pub struct PlacementGroup {
    bundles: Vec<Bundle>,
    strategy: PlacementStrategy,
    name: String,
}

impl PlacementGroup {
    /// A PACK group of these bundles.
    pub fn new(bundles: Vec<Bundle>) -> Self {
        PlacementGroup {
            bundles,
            strategy: PlacementStrategy::Pack,
            name: String::new(),
        }
    }

    /// How the bundles spread over nodes (default PACK).
    pub fn strategy(mut self, strategy: PlacementStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// A name, for listings and messages.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Records the group PENDING and returns at once, placing it in the background until
    /// it fits (Ray's `placement_group()`): wait for it with
    /// [`PlacementGroupHandle::ready`]. Work scheduled into it waits meanwhile. A group that
    /// can never fit the cluster fails its `ready` naming the bundles and nodes; malformed
    /// bundles fail here.
    pub async fn submit(self) -> Result<PlacementGroupHandle> {
        let runtime = crate::context::current()?;
        let id = crate::ids::new_id("pg");
        validate(&self.bundles).map_err(|reason| Error::PlacementGroup {
            group: label(&self.name, &id),
            reason,
        })?;
        record_pending(&runtime, &id, &self).await?;
        let handle = PlacementGroupHandle {
            id: id.clone(),
            name: self.name,
            strategy: self.strategy,
            placed: Arc::new(Placed {
                at: std::sync::Mutex::new(vec![(String::new(), String::new()); self.bundles.len()]),
                rescheduling: std::sync::atomic::AtomicBool::new(true),
                failure: std::sync::Mutex::new(None),
                changed: tokio::sync::Notify::new(),
            }),
            bundles: self.bundles,
        };
        runtime.placement_groups.insert(id, handle.clone());
        let rt = runtime.clone();
        let placing = handle.clone();
        runtime.tasks.spawn(async move {
            place_in_background(&rt, placing, PlacementGroupState::PgPending).await
        });
        Ok(handle)
    }

    /// Reserves every bundle; resolves once all are reserved. A group that can never fit
    /// the cluster fails at once, one that does not fit what is free after a few tries
    /// fails too; either error names the bundles and the nodes.
    pub async fn create(self) -> Result<PlacementGroupHandle> {
        let runtime = crate::context::current()?;
        let id = crate::ids::new_id("pg");
        let label = label(&self.name, &id);
        let fail = |reason: String| Error::PlacementGroup {
            group: label.clone(),
            reason,
        };
        validate(&self.bundles).map_err(fail)?;
        record_pending(&runtime, &id, &self).await?;
        let mut last = String::new();
        let mut placed = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
            let nodes = cluster_nodes(&runtime).await?;
            let chosen = match place_bundles(self.strategy, &self.bundles, &nodes) {
                Ok(chosen) => chosen,
                Err(PlacementError::Infeasible(reason)) => {
                    forget(&runtime, &id).await;
                    return Err(fail(reason));
                }
                Err(PlacementError::Unavailable(reason)) => {
                    last = reason;
                    continue;
                }
            };
            match reserve(&runtime, &id, &self.bundles, &nodes, &chosen).await {
                Ok(()) => {
                    placed = Some((nodes, chosen));
                    break;
                }
                Err(reason) => {
                    tracing::debug!(group = %label, %reason, attempt, "placement group reservation failed; retrying");
                    cancel_everywhere(&runtime, &id, chosen.iter().map(|&n| &nodes[n].address))
                        .await;
                    last = reason;
                }
            }
        }
        let Some((nodes, chosen)) = placed else {
            forget(&runtime, &id).await;
            return Err(fail(format!(
                "could not reserve its bundles in {ATTEMPTS} attempts: {last}"
            )));
        };
        let bundle_nodes: Vec<String> = chosen.iter().map(|&n| nodes[n].node_id.clone()).collect();
        let addresses: Vec<String> = chosen.iter().map(|&n| nodes[n].address.clone()).collect();
        let placed = Arc::new(Placed {
            at: std::sync::Mutex::new(
                bundle_nodes
                    .iter()
                    .cloned()
                    .zip(addresses.iter().cloned())
                    .collect(),
            ),
            rescheduling: std::sync::atomic::AtomicBool::new(false),
            failure: std::sync::Mutex::new(None),
            changed: tokio::sync::Notify::new(),
        });
        let recorded = runtime
            .gcs
            .update_placement_group(UpdatePlacementGroup {
                placement_group_id: id.clone(),
                expected_state: PlacementGroupState::PgPending as i32,
                new_state: PlacementGroupState::PgCreated as i32,
                bundles: self
                    .bundles
                    .iter()
                    .zip(&bundle_nodes)
                    .map(|(b, node)| WireBundle {
                        resources: b.clone().into_iter().collect(),
                        node_id: node.clone(),
                    })
                    .collect(),
            })
            .await;
        if let Err(error) = recorded {
            cancel_everywhere(&runtime, &id, addresses.iter()).await;
            return Err(fail(format!("could not record it created: {error}")));
        }
        let handle = PlacementGroupHandle {
            id,
            name: self.name,
            strategy: self.strategy,
            bundles: self.bundles,
            placed,
        };
        // This process reschedules it when one of its nodes dies.
        runtime
            .placement_groups
            .insert(handle.id.clone(), handle.clone());
        Ok(handle)
    }
}

/// Where a group's bundles are now (each bundle's node and raylet), and whether they are
/// being placed again after a node died.
#[derive(Debug)]
struct Placed {
    at: std::sync::Mutex<Vec<(String, String)>>,
    /// Not every bundle is reserved on a live node (just submitted, or a node died).
    rescheduling: std::sync::atomic::AtomicBool,
    /// A submitted group that can never fit: why.
    failure: std::sync::Mutex<Option<Error>>,
    changed: tokio::sync::Notify,
}

impl Placed {
    fn snapshot(&self) -> Vec<(String, String)> {
        self.at.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How a group is named in errors: its name, or its id when it has none.
fn label(name: &str, id: &str) -> String {
    if name.is_empty() { id } else { name }.to_string()
}

/// Records a group PENDING in the GCS.
async fn record_pending(runtime: &Arc<CoreWorker>, id: &str, group: &PlacementGroup) -> Result<()> {
    runtime
        .gcs
        .create_placement_group(PlacementGroupInfo {
            placement_group_id: id.to_string(),
            name: group.name.clone(),
            job_id: runtime.job_id.clone(),
            strategy: wire_strategy(group.strategy) as i32,
            state: PlacementGroupState::PgPending as i32,
            bundles: group
                .bundles
                .iter()
                .map(|b| WireBundle {
                    resources: b.clone().into_iter().collect(),
                    node_id: String::new(),
                })
                .collect(),
        })
        .await?;
    Ok(())
}

/// A created placement group.
#[derive(Clone, Debug)]
pub struct PlacementGroupHandle {
    id: String,
    name: String,
    strategy: PlacementStrategy,
    bundles: Vec<Bundle>,
    placed: Arc<Placed>,
}

impl PlacementGroupHandle {
    /// The group's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its name (empty when unnamed).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its strategy.
    pub fn strategy(&self) -> PlacementStrategy {
        self.strategy
    }

    /// Its bundles, in order.
    pub fn bundles(&self) -> &[Bundle] {
        &self.bundles
    }

    /// The node holding each bundle now, in bundle order (bundles move when their node
    /// dies; see [`ready`](Self::ready)).
    pub fn bundle_nodes(&self) -> Vec<String> {
        self.placed
            .snapshot()
            .into_iter()
            .map(|(node, _)| node)
            .collect()
    }

    /// Whether every bundle is reserved on a live node now (false while the group is being
    /// placed again after one of its nodes died).
    pub fn is_ready(&self) -> bool {
        !self
            .placed
            .rescheduling
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until every bundle is reserved on a live node (Ray's `pg.ready()`): at once
    /// for a group placed and intact, once placed for one [`submit`](PlacementGroup::submit)
    /// ted, after its rescheduling for one that lost a node. `Error::Timeout` when that
    /// takes longer than `within`; the group's error when it can never fit the cluster.
    pub async fn ready(&self, within: Duration) -> Result<()> {
        let wait = async {
            loop {
                let changed = self.placed.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(error) = self
                    .placed
                    .failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                {
                    return Err(error);
                }
                if self.is_ready() {
                    return Ok(());
                }
                changed.await;
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .map_err(|_| Error::Timeout(within))?
    }

    /// Scheduling into bundle `index` (`None`: any bundle that fits).
    pub fn scheduling(&self, bundle_index: Option<usize>) -> Scheduling {
        Scheduling::PlacementGroup {
            id: self.id.clone(),
            bundle_index,
        }
    }
}

/// Removes a placement group: marks it REMOVED in the GCS and releases its bundles on every
/// node; the leases running inside them end (their workers are retired).
pub async fn remove_placement_group(handle: &PlacementGroupHandle) -> Result<()> {
    let runtime = crate::context::current()?;
    runtime.gcs.remove_placement_group(&handle.id).await?;
    runtime.placement_groups.remove(&handle.id);
    let mut first_error = None;
    let placed = handle.placed.snapshot();
    let addresses: BTreeSet<&String> = placed.iter().map(|(_, address)| address).collect();
    let mut cancels = tokio::task::JoinSet::new();
    for address in addresses {
        let mut client = runtime.leaser.raylet_at(address)?;
        let request = CancelBundlesRequest {
            placement_group_id: handle.id.clone(),
            bundle_indexes: Vec::new(),
        };
        let address = address.clone();
        cancels.spawn(async move { (address, client.cancel_bundles(request).await) });
    }
    while let Some(done) = cancels.join_next().await {
        let Ok((address, outcome)) = done else {
            continue;
        };
        match outcome {
            Ok(_) => {}
            // A node that is gone took its reservation with it.
            Err(status) if status.code() == tonic::Code::Unavailable => {}
            Err(status) => {
                first_error.get_or_insert(Error::rpc(
                    format!(
                        "releasing placement group {} on the raylet at {address}",
                        handle.id
                    ),
                    &status,
                ));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn wire_strategy(strategy: PlacementStrategy) -> WireStrategy {
    match strategy {
        PlacementStrategy::Pack => WireStrategy::Pack,
        PlacementStrategy::Spread => WireStrategy::Spread,
        PlacementStrategy::StrictPack => WireStrategy::StrictPack,
        PlacementStrategy::StrictSpread => WireStrategy::StrictSpread,
    }
}

fn validate(bundles: &[Bundle]) -> std::result::Result<(), String> {
    if bundles.is_empty() {
        return Err("a placement group needs at least one bundle".into());
    }
    for (i, bundle) in bundles.iter().enumerate() {
        fleet_raylet::resources::ResourceSet::try_from_map(bundle)
            .map_err(|e| format!("bundle {i}: {e}"))?;
        if !bundle.values().any(|v| *v > 0.0) {
            return Err(format!(
                "bundle {i} reserves nothing; give it at least one positive amount"
            ));
        }
    }
    Ok(())
}

/// The live nodes with what each has free now (nodes that do not answer are left out).
async fn cluster_nodes(runtime: &Arc<CoreWorker>) -> Result<Vec<NodeView>> {
    let members = runtime.gcs.list_nodes().await?;
    let mut polls = tokio::task::JoinSet::new();
    for node in members {
        if node.state != fleet_proto::gcs::NodeState::NodeAlive as i32 || node.address.is_empty() {
            continue;
        }
        let Ok(mut client) = runtime.leaser.raylet_at(&node.address) else {
            continue;
        };
        polls.spawn(async move {
            let reply =
                tokio::time::timeout(NODE_INFO_TIMEOUT, client.node_info(NodeInfoRequest {})).await;
            match reply {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    Some(NodeView {
                        node_id: node.node_id,
                        address: node.address,
                        total: reply.total.into_iter().collect(),
                        available: reply.available.into_iter().collect(),
                        labels: node.labels.into_iter().collect(),
                    })
                }
                _ => None,
            }
        });
    }
    let mut nodes = Vec::new();
    while let Some(view) = polls.join_next().await {
        if let Ok(Some(view)) = view {
            nodes.push(view);
        }
    }
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(nodes)
}

/// Prepares on every chosen node, then commits on every one; `Err` (with why) as soon as
/// one prepare or commit fails (the caller cancels).
async fn reserve(
    runtime: &Arc<CoreWorker>,
    group: &str,
    bundles: &[Bundle],
    nodes: &[NodeView],
    chosen: &[usize],
) -> std::result::Result<(), String> {
    let all: Vec<(u32, &Bundle, usize)> = bundles
        .iter()
        .zip(chosen)
        .enumerate()
        .map(|(index, (bundle, &node))| (index as u32, bundle, node))
        .collect();
    reserve_these(runtime, group, &all, nodes).await
}

/// Reserves these bundles (index, resources, node) with the two-phase commit.
async fn reserve_these(
    runtime: &Arc<CoreWorker>,
    group: &str,
    placements: &[(u32, &Bundle, usize)],
    nodes: &[NodeView],
) -> std::result::Result<(), String> {
    let mut per_node: BTreeMap<usize, Vec<BundleSpec>> = BTreeMap::new();
    for &(index, bundle, node) in placements {
        per_node.entry(node).or_default().push(BundleSpec {
            placement_group_id: group.to_string(),
            bundle_index: index,
            resources: bundle.clone().into_iter().collect(),
            job_id: runtime.job_id.clone(),
        });
    }
    let mut clients = Vec::new();
    for &node in per_node.keys() {
        let client = runtime
            .leaser
            .raylet_at(&nodes[node].address)
            .map_err(|e| format!("node {}: {e}", nodes[node].node_id))?;
        clients.push((node, client));
    }
    let prepares = clients.iter().map(|(node, client)| {
        let mut client = client.clone();
        let request = PrepareBundlesRequest {
            bundles: per_node[node].clone(),
        };
        let node_id = nodes[*node].node_id.clone();
        async move {
            match client.prepare_bundles(request).await {
                Ok(reply) if reply.get_ref().success => Ok(()),
                Ok(reply) => Err(reply.into_inner().reason),
                Err(status) => Err(format!(
                    "node {node_id} did not prepare: {}",
                    fleet_gcs::error::describe_status(&status)
                )),
            }
        }
    });
    for outcome in futures::future::join_all(prepares).await {
        outcome?;
    }
    let commits = clients.iter().map(|(node, client)| {
        let mut client = client.clone();
        let request = CommitBundlesRequest {
            placement_group_id: group.to_string(),
            bundle_indexes: per_node[node].iter().map(|b| b.bundle_index).collect(),
        };
        let node_id = nodes[*node].node_id.clone();
        async move {
            client.commit_bundles(request).await.map_err(|status| {
                format!(
                    "node {node_id} did not commit: {}",
                    fleet_gcs::error::describe_status(&status)
                )
            })
        }
    });
    for outcome in futures::future::join_all(commits).await {
        outcome?;
    }
    Ok(())
}

/// Releases whatever the group holds on these raylets (best effort: a node that does not
/// answer releases an uncommitted prepare by itself).
async fn cancel_everywhere<'a>(
    runtime: &Arc<CoreWorker>,
    group: &str,
    addresses: impl Iterator<Item = &'a String>,
) {
    cancel_bundles_at(runtime, group, addresses, &[]).await;
}

/// Releases these bundles (all of the group's when `indexes` is empty) on these raylets.
async fn cancel_bundles_at<'a>(
    runtime: &Arc<CoreWorker>,
    group: &str,
    addresses: impl Iterator<Item = &'a String>,
    indexes: &[u32],
) {
    let addresses: BTreeSet<&String> = addresses.collect();
    let cancels = addresses.into_iter().filter_map(|address| {
        let mut client = runtime.leaser.raylet_at(address).ok()?;
        let request = CancelBundlesRequest {
            placement_group_id: group.to_string(),
            bundle_indexes: indexes.to_vec(),
        };
        Some(async move {
            if let Err(status) = client.cancel_bundles(request).await {
                tracing::debug!(status = %status.message(), "cancelling bundles failed");
            }
        })
    });
    futures::future::join_all(cancels).await;
}

/// Marks a group that failed REMOVED, so no PENDING record is left behind.
async fn forget(runtime: &Arc<CoreWorker>, group: &str) {
    if let Err(error) = runtime.gcs.remove_placement_group(group).await {
        tracing::debug!(%error, group, "could not mark a failed placement group removed");
    }
}

/// A node died: every group this process created with a bundle there is placed again (in
/// the background, until it succeeds or the group is removed).
pub(crate) fn on_node_dead(runtime: &Arc<CoreWorker>, node_id: &str) {
    for group in runtime.placement_groups.iter() {
        let handle = group.value().clone();
        let lost = handle
            .placed
            .snapshot()
            .iter()
            .any(|(node, _)| node == node_id);
        if !lost
            || handle
                .placed
                .rescheduling
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            // Not affected, or already being placed again (that round sees this death).
            continue;
        }
        handle.placed.changed.notify_waiters();
        tracing::info!(group = %handle.id, node = node_id, "a node holding bundles of a placement group died; rescheduling them");
        let rt = runtime.clone();
        runtime.tasks.spawn(async move {
            place_in_background(&rt, handle, PlacementGroupState::PgCreated).await
        });
    }
}

/// Places the bundles of `handle` that are on no live node (all of them for a group just
/// submitted, PENDING; those of dead nodes for a CREATED group, marked RESCHEDULING first);
/// returns when the group is whole (CREATED), was removed, or (just submitted) can never
/// fit the cluster.
async fn place_in_background(
    runtime: &Arc<CoreWorker>,
    handle: PlacementGroupHandle,
    from: PlacementGroupState,
) {
    let id = handle.id.clone();
    let placing = if from == PlacementGroupState::PgPending {
        PlacementGroupState::PgPending
    } else {
        PlacementGroupState::PgRescheduling
    };
    let bundles_wire = |at: &[(String, String)]| -> Vec<WireBundle> {
        handle
            .bundles
            .iter()
            .zip(at)
            .map(|(b, (node, _))| WireBundle {
                resources: b.clone().into_iter().collect(),
                node_id: node.clone(),
            })
            .collect()
    };
    if from == PlacementGroupState::PgCreated {
        let marked = runtime
            .gcs
            .update_placement_group(UpdatePlacementGroup {
                placement_group_id: id.clone(),
                expected_state: PlacementGroupState::PgCreated as i32,
                new_state: PlacementGroupState::PgRescheduling as i32,
                bundles: Vec::new(),
            })
            .await;
        if let Err(error) = marked {
            // Removed meanwhile (or already RESCHEDULING from an earlier round that failed
            // to record its end): the loop below finds out which.
            tracing::debug!(group = %id, %error, "marking a placement group RESCHEDULING");
        }
    }
    let mut pause = Duration::from_millis(200);
    loop {
        if !runtime.placement_groups.contains_key(&id) {
            return;
        }
        match reschedule_round(runtime, &handle).await {
            Ok(at) => {
                let recorded = runtime
                    .gcs
                    .update_placement_group(UpdatePlacementGroup {
                        placement_group_id: id.clone(),
                        expected_state: placing as i32,
                        new_state: PlacementGroupState::PgCreated as i32,
                        bundles: bundles_wire(&at),
                    })
                    .await;
                match recorded {
                    Ok(_) => {
                        *handle.placed.at.lock().unwrap_or_else(|e| e.into_inner()) = at;
                        handle
                            .placed
                            .rescheduling
                            .store(false, std::sync::atomic::Ordering::Release);
                        handle.placed.changed.notify_waiters();
                        tracing::info!(group = %id, "placement group placed");
                        // A node that died during this round: place again.
                        let now_dead = dead_nodes_among(runtime, &handle).await;
                        if let Some(node) = now_dead.first() {
                            on_node_dead(runtime, node);
                        }
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(group = %id, %error, "could not record a rescheduled placement group; releasing and trying again");
                        let addresses: Vec<String> = at.into_iter().map(|(_, a)| a).collect();
                        let lost: Vec<u32> = lost_indexes(runtime, &handle).await;
                        cancel_bundles_at(runtime, &id, addresses.iter(), &lost).await;
                        if let Ok(Some(info)) = runtime.gcs.get_placement_group(&id).await {
                            if info.state == PlacementGroupState::PgRemoved as i32 {
                                runtime.placement_groups.remove(&id);
                                return;
                            }
                        }
                    }
                }
            }
            Err(PlacementError::Infeasible(reason)) if from == PlacementGroupState::PgPending => {
                // Never fits the cluster: the submitter's `ready` says so; nothing is held.
                runtime.placement_groups.remove(&id);
                forget(runtime, &id).await;
                *handle
                    .placed
                    .failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Error::PlacementGroup {
                    group: label(&handle.name, &id),
                    reason,
                });
                handle.placed.changed.notify_waiters();
                return;
            }
            Err(reason) => {
                tracing::debug!(group = %id, %reason, "placement round failed; trying again");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RESCHEDULE_BACKOFF_MAX);
    }
}

/// Where lost bundles may go, and how they are placed there, keeping the group's strategy:
/// under STRICT_SPREAD not on a node another bundle keeps; under STRICT_PACK on the node
/// the others keep (a node's death takes all of a strict-packed group, so normally there is
/// none and the whole group is placed again); best-effort strategies anywhere.
fn replacement_nodes(
    strategy: PlacementStrategy,
    nodes: &[NodeView],
    kept: &BTreeSet<&String>,
) -> (PlacementStrategy, Vec<NodeView>) {
    let filtered = |keep: bool| -> Vec<NodeView> {
        nodes
            .iter()
            .filter(|n| kept.contains(&n.node_id) == keep)
            .cloned()
            .collect()
    };
    match strategy {
        PlacementStrategy::StrictSpread => (strategy, filtered(false)),
        PlacementStrategy::StrictPack if !kept.is_empty() => (strategy, filtered(true)),
        other => (other, nodes.to_vec()),
    }
}

/// The bundles (by index) whose node is not alive now.
async fn lost_indexes(runtime: &Arc<CoreWorker>, handle: &PlacementGroupHandle) -> Vec<u32> {
    let alive = alive_node_ids(runtime).await;
    handle
        .placed
        .snapshot()
        .iter()
        .enumerate()
        .filter(|(_, (node, _))| !alive.contains(node))
        .map(|(i, _)| i as u32)
        .collect()
}

async fn dead_nodes_among(runtime: &Arc<CoreWorker>, handle: &PlacementGroupHandle) -> Vec<String> {
    let alive = alive_node_ids(runtime).await;
    let mut dead: Vec<String> = handle
        .placed
        .snapshot()
        .into_iter()
        .map(|(node, _)| node)
        .filter(|node| !alive.contains(node))
        .collect();
    dead.dedup();
    dead
}

async fn alive_node_ids(runtime: &Arc<CoreWorker>) -> BTreeSet<String> {
    runtime
        .gcs
        .list_nodes()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.state == fleet_proto::gcs::NodeState::NodeAlive as i32)
        .map(|n| n.node_id)
        .collect()
}

/// One round: the lost bundles placed and reserved; returns where every bundle is now.
async fn reschedule_round(
    runtime: &Arc<CoreWorker>,
    handle: &PlacementGroupHandle,
) -> std::result::Result<Vec<(String, String)>, PlacementError> {
    let nodes = cluster_nodes(runtime)
        .await
        .map_err(|e| PlacementError::Unavailable(e.to_string()))?;
    let mut at = handle.placed.snapshot();
    let lost: Vec<usize> = at
        .iter()
        .enumerate()
        .filter(|(_, (node, _))| !nodes.iter().any(|n| &n.node_id == node))
        .map(|(i, _)| i)
        .collect();
    if lost.is_empty() {
        return Ok(at);
    }
    let kept_nodes: BTreeSet<&String> = at
        .iter()
        .enumerate()
        .filter(|(i, _)| !lost.contains(i))
        .map(|(_, (node, _))| node)
        .collect();
    let lost_bundles: Vec<Bundle> = lost.iter().map(|&i| handle.bundles[i].clone()).collect();
    let (strategy, candidates) = replacement_nodes(handle.strategy, &nodes, &kept_nodes);
    let chosen = place_bundles(strategy, &lost_bundles, &candidates)?;
    let placements: Vec<(u32, &Bundle, usize)> = lost
        .iter()
        .zip(&lost_bundles)
        .zip(&chosen)
        .map(|((&index, bundle), &node)| (index as u32, bundle, node))
        .collect();
    if let Err(reason) = reserve_these(runtime, &handle.id, &placements, &candidates).await {
        let addresses: Vec<String> = chosen
            .iter()
            .map(|&n| candidates[n].address.clone())
            .collect();
        let indexes: Vec<u32> = lost.iter().map(|&i| i as u32).collect();
        cancel_bundles_at(runtime, &handle.id, addresses.iter(), &indexes).await;
        return Err(PlacementError::Unavailable(reason));
    }
    for (&index, &node) in lost.iter().zip(&chosen) {
        at[index] = (
            candidates[node].node_id.clone(),
            candidates[node].address.clone(),
        );
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeView {
        NodeView {
            node_id: id.into(),
            address: format!("{id}:1"),
            total: BTreeMap::from([("CPU".to_string(), 2.0)]),
            available: BTreeMap::from([("CPU".to_string(), 2.0)]),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn lost_bundles_go_where_the_strategy_still_holds() {
        let nodes = vec![node("a"), node("b"), node("c")];
        let (a, b) = ("a".to_string(), "b".to_string());
        let kept: BTreeSet<&String> = [&a, &b].into_iter().collect();
        let ids = |v: Vec<NodeView>| v.into_iter().map(|n| n.node_id).collect::<Vec<_>>();
        // STRICT_SPREAD: only the node no surviving bundle uses.
        let (strategy, spread) = replacement_nodes(PlacementStrategy::StrictSpread, &nodes, &kept);
        assert_eq!(
            (strategy, ids(spread)),
            (PlacementStrategy::StrictSpread, vec!["c".to_string()])
        );
        // STRICT_PACK with survivors: with them.
        let only_a: BTreeSet<&String> = [&a].into_iter().collect();
        let (_, pack) = replacement_nodes(PlacementStrategy::StrictPack, &nodes, &only_a);
        assert_eq!(ids(pack), vec!["a".to_string()]);
        // STRICT_PACK, whole group lost: anywhere, still all on one node.
        let none = BTreeSet::new();
        let (strategy, pack) = replacement_nodes(PlacementStrategy::StrictPack, &nodes, &none);
        assert_eq!((strategy, pack.len()), (PlacementStrategy::StrictPack, 3));
        // Best effort: anywhere.
        let (_, anywhere) = replacement_nodes(PlacementStrategy::Spread, &nodes, &kept);
        assert_eq!(anywhere.len(), 3);
        // And the placement over the candidates keeps STRICT_SPREAD's promise.
        let lost = vec![BTreeMap::from([("CPU".to_string(), 1.0)])];
        let (strategy, candidates) =
            replacement_nodes(PlacementStrategy::StrictSpread, &nodes, &kept);
        let chosen = place_bundles(strategy, &lost, &candidates).expect("c has room");
        assert_eq!(candidates[chosen[0]].node_id, "c");
    }
}
