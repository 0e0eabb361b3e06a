//! Node health checks, run by the GCS leader: every [`GcsConfig::health_check_period`] it
//! asks each live raylet for its `NodeInfo`; a node that has not answered for
//! [`GcsConfig::node_timeout`] is declared dead (a committed write, so every watcher hears it
//! and a new leader does not resurrect it). Followers do nothing; a new leader starts every
//! node's clock afresh, so a leader change never kills a node early.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::gcs::{NodeInfo, NodeState, ReadRequest, Table};
use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::NodeInfoRequest;
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::GcsClient;
use crate::node::NodeHandle;
use crate::transport::{Connector, TcpConnector};

/// Pure bookkeeping: when each node last answered, and who is overdue.
#[derive(Default)]
pub struct HealthBook {
    last_ok: HashMap<String, Instant>,
}

impl HealthBook {
    /// Starts (or keeps) the clocks of `alive` nodes at `now`, forgets the others.
    pub fn track(&mut self, alive: &[String], now: Instant) {
        self.last_ok.retain(|id, _| alive.contains(id));
        for id in alive {
            self.last_ok.entry(id.clone()).or_insert(now);
        }
    }

    /// Records an answer.
    pub fn answered(&mut self, node_id: &str, now: Instant) {
        if let Some(at) = self.last_ok.get_mut(node_id) {
            *at = now;
        }
    }

    /// Nodes silent for longer than `timeout`, with how long.
    pub fn overdue(&self, now: Instant, timeout: Duration) -> Vec<(String, Duration)> {
        let mut overdue: Vec<(String, Duration)> = self
            .last_ok
            .iter()
            .filter_map(|(id, at)| {
                let silent = now.saturating_duration_since(*at);
                (silent > timeout).then(|| (id.clone(), silent))
            })
            .collect();
        overdue.sort();
        overdue
    }

    /// Forgets everything (this replica stopped leading).
    pub fn clear(&mut self) {
        self.last_ok.clear();
    }
}

fn alive_nodes(handle: &NodeHandle) -> Vec<NodeInfo> {
    let state = handle.state.read().unwrap_or_else(|e| e.into_inner());
    state
        .read(&ReadRequest {
            table: Table::Nodes as i32,
            prefix: true,
            ..ReadRequest::default()
        })
        .iter()
        .filter_map(|r| NodeInfo::decode(r.value.as_slice()).ok())
        .filter(|n| n.state == NodeState::NodeAlive as i32 && !n.address.is_empty())
        .collect()
}

/// Runs the checks until `stop`.
pub async fn run(handle: NodeHandle, stop: CancellationToken) {
    let period = handle.config.health_check_period;
    let timeout = handle.config.node_timeout;
    if period.is_zero() || timeout.is_zero() {
        return;
    }
    let Ok(gcs) = GcsClient::connect(&handle.config.advertise_address) else {
        return;
    };
    let mut book = HealthBook::default();
    let mut clients: HashMap<String, RayletClient<crate::auth::AuthChannel>> = HashMap::new();
    let declared: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if !handle.view.is_leader() {
            book.clear();
            continue;
        }
        let nodes = alive_nodes(&handle);
        let ids: Vec<String> = nodes.iter().map(|n| n.node_id.clone()).collect();
        let now = Instant::now();
        book.track(&ids, now);
        let mut probes = tokio::task::JoinSet::new();
        for node in &nodes {
            let client = match clients.get(&node.address) {
                Some(client) => client.clone(),
                None => match TcpConnector.channel(&node.address) {
                    Ok(channel) => {
                        let client = RayletClient::new(channel);
                        clients.insert(node.address.clone(), client.clone());
                        client
                    }
                    Err(_) => continue,
                },
            };
            let node_id = node.node_id.clone();
            probes.spawn(async move {
                let mut client = client;
                let answered = tokio::time::timeout(period, client.node_info(NodeInfoRequest {}))
                    .await
                    .is_ok_and(|r| r.is_ok());
                (node_id, answered)
            });
        }
        while let Some(probe) = probes.join_next().await {
            if let Ok((node_id, true)) = probe {
                book.answered(&node_id, Instant::now());
            }
        }
        clients.retain(|address, _| nodes.iter().any(|n| &n.address == address));
        for (node_id, silent) in book.overdue(Instant::now(), timeout) {
            {
                let declared = declared.lock().unwrap_or_else(|e| e.into_inner());
                if declared.contains(&node_id) {
                    continue;
                }
            }
            let cause = format!(
                "missed health checks for {} ms (timeout {} ms)",
                silent.as_millis(),
                timeout.as_millis()
            );
            tracing::warn!(node = %node_id, %cause, "declaring node dead");
            match gcs.mark_node_dead(&node_id, &cause).await {
                Ok(_) => declared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(node_id),
                Err(error) => {
                    tracing::warn!(%error, node = %node_id, "could not declare node dead")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_node_is_overdue_after_the_timeout_and_an_answer_resets_it() {
        let start = Instant::now();
        let mut book = HealthBook::default();
        book.track(&["a".into(), "b".into()], start);
        let timeout = Duration::from_secs(3);
        assert!(book
            .overdue(start + Duration::from_secs(2), timeout)
            .is_empty());
        book.answered("a", start + Duration::from_secs(2));
        let overdue = book.overdue(start + Duration::from_millis(3500), timeout);
        assert_eq!(overdue.len(), 1);
        assert_eq!(overdue[0].0, "b");
    }

    #[test]
    fn nodes_no_longer_alive_are_forgotten_and_new_ones_start_fresh() {
        let start = Instant::now();
        let mut book = HealthBook::default();
        book.track(&["a".into()], start);
        book.track(&["b".into()], start + Duration::from_secs(10));
        let overdue = book.overdue(start + Duration::from_secs(11), Duration::from_secs(3));
        assert!(overdue.is_empty(), "{overdue:?}");
    }
}
