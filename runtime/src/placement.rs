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

    /// Reserves every bundle; resolves once all are reserved. A group that can never fit
    /// the cluster fails at once, one that does not fit what is free after a few tries
    /// fails too; either error names the bundles and the nodes.
    pub async fn create(self) -> Result<PlacementGroupHandle> {
        let runtime = crate::context::current()?;
        let id = crate::ids::new_id("pg");
        let label = if self.name.is_empty() {
            id.clone()
        } else {
            self.name.clone()
        };
        let fail = |reason: String| Error::PlacementGroup {
            group: label.clone(),
            reason,
        };
        validate(&self.bundles).map_err(fail)?;
        runtime
            .gcs
            .create_placement_group(PlacementGroupInfo {
                placement_group_id: id.clone(),
                name: self.name.clone(),
                job_id: runtime.job_id.clone(),
                strategy: wire_strategy(self.strategy) as i32,
                state: PlacementGroupState::PgPending as i32,
                bundles: self
                    .bundles
                    .iter()
                    .map(|b| WireBundle {
                        resources: b.clone().into_iter().collect(),
                        node_id: String::new(),
                    })
                    .collect(),
            })
            .await?;
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
        Ok(PlacementGroupHandle {
            id,
            name: self.name,
            strategy: self.strategy,
            bundles: self.bundles,
            bundle_nodes,
            addresses,
        })
    }
}

/// A created placement group.
#[derive(Clone, Debug)]
pub struct PlacementGroupHandle {
    id: String,
    name: String,
    strategy: PlacementStrategy,
    bundles: Vec<Bundle>,
    bundle_nodes: Vec<String>,
    addresses: Vec<String>,
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

    /// The node holding each bundle, in bundle order.
    pub fn bundle_nodes(&self) -> &[String] {
        &self.bundle_nodes
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
    let mut first_error = None;
    let addresses: BTreeSet<&String> = handle.addresses.iter().collect();
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
    let mut per_node: BTreeMap<usize, Vec<BundleSpec>> = BTreeMap::new();
    for (index, (bundle, &node)) in bundles.iter().zip(chosen).enumerate() {
        per_node.entry(node).or_default().push(BundleSpec {
            placement_group_id: group.to_string(),
            bundle_index: index as u32,
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
    let addresses: BTreeSet<&String> = addresses.collect();
    let cancels = addresses.into_iter().filter_map(|address| {
        let mut client = runtime.leaser.raylet_at(address).ok()?;
        let request = CancelBundlesRequest {
            placement_group_id: group.to_string(),
            bundle_indexes: Vec::new(),
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
