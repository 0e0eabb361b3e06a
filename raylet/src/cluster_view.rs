//! This raylet's view of the other nodes, for spillback decisions: the live nodes from the
//! GCS nodes table (re-read every [`MEMBERSHIP_REFRESH`]) and each one's free resources from
//! its own `NodeInfo` (every [`LOAD_REFRESH`]). A node that does not answer is left out at
//! once, before the GCS declares it dead: leases must not be sent where nothing answers.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fleet_proto::gcs::NodeState;
use fleet_proto::runtime::NodeInfoRequest;
use tokio_util::sync::CancellationToken;

use crate::scheduling::NodeView;

/// How often the node list is re-read from the GCS.
pub const MEMBERSHIP_REFRESH: Duration = Duration::from_millis(250);
/// How often other nodes' free resources are polled.
pub const LOAD_REFRESH: Duration = Duration::from_millis(200);

/// The other live nodes, as last seen.
#[derive(Clone, Default)]
pub struct ClusterView {
    nodes: Arc<RwLock<Vec<NodeView>>>,
}

impl ClusterView {
    /// The other live nodes.
    pub fn others(&self) -> Vec<NodeView> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts `wanted` as taken on `node_id` until its next report (work just sent there).
    pub fn reserve(&self, node_id: &str, wanted: &BTreeMap<String, f64>) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = nodes.iter_mut().find(|n| n.node_id == node_id) {
            for (name, amount) in wanted {
                let free = node.available.entry(name.clone()).or_insert(0.0);
                *free = (*free - amount).max(0.0);
            }
        }
    }

    /// Forgets a node at once (a lease sent there failed to connect).
    pub fn forget(&self, address: &str) {
        self.nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| n.address != address);
    }

    /// Keeps the view fresh until `stop`.
    pub async fn refresh(
        self,
        gcs: fleet_gcs::GcsClient,
        local_node_id: String,
        stop: CancellationToken,
    ) {
        let mut members: Vec<(String, String, BTreeMap<String, f64>)> = Vec::new();
        let mut last_membership: Option<tokio::time::Instant> = None;
        let mut clients = std::collections::HashMap::new();
        loop {
            if last_membership.is_none_or(|t| t.elapsed() >= MEMBERSHIP_REFRESH) {
                if let Ok(nodes) = gcs.list_nodes().await {
                    members = nodes
                        .into_iter()
                        .filter(|n| {
                            n.state == NodeState::NodeAlive as i32
                                && n.node_id != local_node_id
                                && !n.address.is_empty()
                        })
                        .map(|n| {
                            (
                                n.node_id,
                                n.address,
                                n.resources_total.into_iter().collect(),
                            )
                        })
                        .collect();
                    last_membership = Some(tokio::time::Instant::now());
                }
            }
            let mut polls = tokio::task::JoinSet::new();
            for (node_id, address, total) in &members {
                let client = match clients.get(address) {
                    Some(client) => Client::clone(client),
                    None => match crate::transfer::connect(address) {
                        Ok(client) => {
                            clients.insert(address.clone(), client.clone());
                            client
                        }
                        Err(_) => continue,
                    },
                };
                let (node_id, address, total) = (node_id.clone(), address.clone(), total.clone());
                polls.spawn(async move {
                    let mut client = client;
                    let reply = tokio::time::timeout(
                        Duration::from_millis(500),
                        client.node_info(NodeInfoRequest {}),
                    )
                    .await;
                    match reply {
                        Ok(Ok(reply)) => {
                            let reply = reply.into_inner();
                            Some(NodeView {
                                node_id,
                                address,
                                total: if reply.total.is_empty() {
                                    total
                                } else {
                                    reply.total.into_iter().collect()
                                },
                                available: reply.available.into_iter().collect(),
                            })
                        }
                        Ok(Err(status)) => {
                            tracing::debug!(node = %node_id, %address, status = %fleet_gcs::error::describe_status(&status), "load poll failed");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(node = %node_id, %address, "load poll: no answer in 500 ms");
                            None
                        }
                    }
                });
            }
            let mut fresh = Vec::new();
            while let Some(view) = polls.join_next().await {
                if let Ok(Some(view)) = view {
                    fresh.push(view);
                }
            }
            fresh.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            *self.nodes.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LOAD_REFRESH) => {}
            }
        }
    }
}

type Client = fleet_proto::runtime::raylet_client::RayletClient<fleet_gcs::auth::AuthChannel>;
