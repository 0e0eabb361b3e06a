//! This raylet's view of the other nodes, for spillback decisions: the live nodes from the
//! GCS nodes table (re-read every [`MEMBERSHIP_REFRESH`]) and each one's free resources from
//! its own `NodeInfo` (every [`LOAD_REFRESH`]). A node that does not answer is left out at
//! once, before the GCS declares it dead: leases must not be sent where nothing answers.
//!
//! Work spilled to a node counts against it until that node's own report shows it: a
//! report polled before the spilled lease reached the node (the requester still on its way,
//! or the node still fetching the job's binary) would otherwise make it look free again, and
//! the next SPREAD decisions would send it a second lease while other nodes stay idle.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fleet_proto::gcs::NodeState;
use fleet_proto::runtime::NodeInfoRequest;
use tokio_util::sync::CancellationToken;

use crate::scheduling::NodeView;

/// A live node from the GCS's nodes table: what its polls are joined with.
struct Member {
    node_id: String,
    address: String,
    total: BTreeMap<String, f64>,
    labels: BTreeMap<String, String>,
}

/// How often the node list is re-read from the GCS.
pub const MEMBERSHIP_REFRESH: Duration = Duration::from_millis(250);
/// How often other nodes' free resources are polled.
pub const LOAD_REFRESH: Duration = Duration::from_millis(200);

/// How long spilled work counts against a node whose reports do not show it (the lease
/// was rejected there, or its requester gave up).
pub const RESERVATION_TTL: Duration = Duration::from_secs(5);
const EPSILON: f64 = 1e-6;

/// Work spilled to a node that its reports do not show yet.
#[derive(Clone, Debug)]
struct Reservation {
    node_id: String,
    wanted: BTreeMap<String, f64>,
    /// The node's free resources once this (and every earlier reservation) is taken: a
    /// report at or below them shows it.
    floor: BTreeMap<String, f64>,
    until: tokio::time::Instant,
}

/// The other live nodes, as last seen.
#[derive(Clone, Default)]
pub struct ClusterView {
    nodes: Arc<RwLock<Vec<NodeView>>>,
    reservations: Arc<std::sync::Mutex<Vec<Reservation>>>,
}

/// Applies the reservations that `fresh` reports do not show yet (dropping those they show,
/// and the expired ones).
fn apply_reservations(
    fresh: &mut [NodeView],
    reservations: &mut Vec<Reservation>,
    now: tokio::time::Instant,
) {
    reservations.retain(|reservation| {
        if now >= reservation.until {
            return false;
        }
        let Some(node) = fresh.iter_mut().find(|n| n.node_id == reservation.node_id) else {
            return false;
        };
        let shown = reservation.floor.iter().all(|(name, floor)| {
            node.available.get(name).copied().unwrap_or(0.0) <= floor + EPSILON
        });
        !shown
    });
    for reservation in reservations.iter() {
        if let Some(node) = fresh.iter_mut().find(|n| n.node_id == reservation.node_id) {
            for (name, amount) in &reservation.wanted {
                let free = node.available.entry(name.clone()).or_insert(0.0);
                *free = (*free - amount).max(0.0);
            }
        }
    }
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
            let mut floor = BTreeMap::new();
            for (name, amount) in wanted {
                let free = node.available.entry(name.clone()).or_insert(0.0);
                *free = (*free - amount).max(0.0);
                floor.insert(name.clone(), *free);
            }
            self.reservations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Reservation {
                    node_id: node_id.to_string(),
                    wanted: wanted.clone(),
                    floor,
                    until: tokio::time::Instant::now() + RESERVATION_TTL,
                });
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
        let mut members: Vec<Member> = Vec::new();
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
                        .map(|n| Member {
                            node_id: n.node_id,
                            address: n.address,
                            total: n.resources_total.into_iter().collect(),
                            labels: n.labels.into_iter().collect(),
                        })
                        .collect();
                    last_membership = Some(tokio::time::Instant::now());
                }
            }
            let mut polls = tokio::task::JoinSet::new();
            for member in &members {
                let Member {
                    node_id,
                    address,
                    total,
                    labels,
                } = member;
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
                let (node_id, address, total, labels) = (
                    node_id.clone(),
                    address.clone(),
                    total.clone(),
                    labels.clone(),
                );
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
                                labels,
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
            {
                // Under the nodes lock: a reservation made meanwhile is either applied to
                // the old view (and kept in the list) or made on the new one.
                let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
                apply_reservations(
                    &mut fresh,
                    &mut self.reservations.lock().unwrap_or_else(|e| e.into_inner()),
                    tokio::time::Instant::now(),
                );
                *nodes = fresh;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LOAD_REFRESH) => {}
            }
        }
    }
}

type Client = fleet_proto::runtime::raylet_client::RayletClient<fleet_gcs::auth::AuthChannel>;

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, cpus_free: f64) -> NodeView {
        NodeView {
            node_id: id.into(),
            address: format!("{id}:1"),
            total: BTreeMap::from([("CPU".to_string(), 2.0)]),
            available: BTreeMap::from([("CPU".to_string(), cpus_free)]),
            labels: BTreeMap::new(),
        }
    }

    fn cpus(view: &ClusterView, id: &str) -> f64 {
        view.others()
            .iter()
            .find(|n| n.node_id == id)
            .and_then(|n| n.available.get("CPU").copied())
            .unwrap_or(f64::NAN)
    }

    fn refresh(view: &ClusterView, mut fresh: Vec<NodeView>, now: tokio::time::Instant) {
        let mut nodes = view.nodes.write().unwrap_or_else(|e| e.into_inner());
        apply_reservations(
            &mut fresh,
            &mut view.reservations.lock().unwrap_or_else(|e| e.into_inner()),
            now,
        );
        *nodes = fresh;
    }

    #[tokio::test]
    async fn spilled_work_counts_until_the_nodes_report_shows_it() {
        let view = ClusterView::default();
        *view.nodes.write().unwrap_or_else(|e| e.into_inner()) =
            vec![node("a", 2.0), node("b", 2.0)];
        let one_cpu = BTreeMap::from([("CPU".to_string(), 1.0)]);
        view.reserve("a", &one_cpu);
        view.reserve("a", &one_cpu);
        assert_eq!(cpus(&view, "a"), 0.0);
        let now = tokio::time::Instant::now();
        // A report from before either lease arrived: both still count.
        refresh(&view, vec![node("a", 2.0), node("b", 2.0)], now);
        assert_eq!(
            cpus(&view, "a"),
            0.0,
            "a stale report must not free reserved CPUs"
        );
        assert_eq!(cpus(&view, "b"), 2.0);
        // The first lease shows: the second still counts.
        refresh(&view, vec![node("a", 1.0), node("b", 2.0)], now);
        assert_eq!(cpus(&view, "a"), 0.0);
        // Both show: nothing is counted twice.
        refresh(&view, vec![node("a", 0.0), node("b", 2.0)], now);
        assert!(view
            .reservations
            .lock()
            .map(|r| r.is_empty())
            .unwrap_or(false));
        // The node finished them: it is free again.
        refresh(&view, vec![node("a", 2.0), node("b", 2.0)], now);
        assert_eq!(cpus(&view, "a"), 2.0);
    }

    #[tokio::test]
    async fn a_reservation_that_never_shows_expires() {
        let view = ClusterView::default();
        *view.nodes.write().unwrap_or_else(|e| e.into_inner()) = vec![node("a", 2.0)];
        view.reserve("a", &BTreeMap::from([("CPU".to_string(), 1.0)]));
        let later = tokio::time::Instant::now() + RESERVATION_TTL;
        refresh(&view, vec![node("a", 2.0)], later);
        assert_eq!(
            cpus(&view, "a"),
            2.0,
            "a rejected spill stops counting after the TTL"
        );
    }
}
