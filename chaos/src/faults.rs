//! Injecting faults into a cluster of real processes.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fleet_cluster::ClusterHandle;
use fleet_proto::gcs::NodeState;

use crate::network::{Cut, FaultId, FaultNetwork, LinkEffect};
use crate::scenario::{FaultKind, FaultSpec};

/// A fault as it happened.
#[derive(Clone, Debug)]
pub struct Injected {
    /// When (the workload's clock).
    pub at: Instant,
    /// What and where, in words ("kill_node node-2", "kill_gcs_leader gcs-1").
    pub target: String,
    /// The node id affected (to detect its death), if a node.
    pub node_id: Option<String>,
    /// Follow-up: restart this GCS replica, or SIGCONT this node, after a while.
    pub undo: Option<(Duration, Undo)>,
}

/// What to do when a fault's duration is over.
#[derive(Clone, Debug)]
pub enum Undo {
    /// Start GCS replica `id` again.
    RestartGcs(u64),
    /// SIGCONT node `index`.
    Resume(usize),
    /// End a network fault: the proxies' (Some) or tc's (None).
    Heal(Option<FaultId>),
}

/// Network faults with `tc` (`network = "netem"`): a priority qdisc on `lo` whose extra band
/// is a `netem` (dropping everything for a partition, delaying or dropping some for latency
/// and loss), and filters sending the side's ports' traffic (both directions) to it. Needs
/// root (CAP_NET_ADMIN) and a kernel with sch_prio and sch_netem.
pub mod partition {
    use anyhow::{bail, Context};

    fn tc(args: &[&str]) -> anyhow::Result<()> {
        let output = std::process::Command::new("tc")
            .args(args)
            .output()
            .context("cannot run tc (iproute2); partitions need it")?;
        if !output.status.success() {
            bail!(
                "tc {} failed: {} (partitions need root (CAP_NET_ADMIN) and a kernel with the sch_prio and sch_netem qdiscs; `modprobe sch_prio sch_netem` where they are modules)",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Applies `netem` (e.g. `["loss", "100%"]`) to all loopback traffic to and from `ports`.
    pub fn cut(ports: &[u16], netem: &[&str]) -> anyhow::Result<()> {
        heal();
        tc(&[
            "qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio", "bands", "4",
        ])?;
        let mut qdisc = vec![
            "qdisc", "add", "dev", "lo", "parent", "1:4", "handle", "40:", "netem",
        ];
        qdisc.extend_from_slice(netem);
        tc(&qdisc)?;
        for port in ports {
            let port = port.to_string();
            for direction in ["dport", "sport"] {
                tc(&[
                    "filter", "add", "dev", "lo", "parent", "1:0", "protocol", "ip", "prio", "1",
                    "u32", "match", "ip", direction, &port, "0xffff", "flowid", "1:4",
                ])?;
            }
        }
        Ok(())
    }

    /// Removes any partition (and the qdisc holding it).
    pub fn heal() {
        let _ = std::process::Command::new("tc")
            .args(["qdisc", "del", "dev", "lo", "root"])
            .output();
    }
}

fn port_of(address: &str) -> anyhow::Result<u16> {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {address:?}"))
}

fn node_pid(
    cluster: &ClusterHandle,
    index: usize,
) -> anyhow::Result<fleet_cluster::process::ProcessId> {
    cluster
        .state()
        .nodes
        .get(index)
        .and_then(|n| n.pid)
        .with_context(|| format!("node {index} is not running"))
}

/// Injects one fault.
pub async fn inject(
    cluster: &mut ClusterHandle,
    network: Option<&FaultNetwork>,
    fault: &FaultSpec,
) -> anyhow::Result<Injected> {
    let at = Instant::now();
    let node_id = |cluster: &ClusterHandle, index: usize| {
        cluster
            .state()
            .nodes
            .get(index)
            .map(|n| n.daemon.node_id.clone())
    };
    let injected = match fault.kind {
        FaultKind::KillNode => {
            let index = fault.node.context("kill_node needs a node")?;
            let id = node_id(cluster, index);
            cluster.kill_node(index)?;
            Injected {
                at,
                target: format!("kill_node {}", id.clone().unwrap_or_default()),
                node_id: id,
                undo: None,
            }
        }
        FaultKind::RestartNode => {
            let index = fault.node.context("restart_node needs a node")?;
            let id = cluster.restart_node(index).await?;
            Injected {
                at,
                target: format!("restart_node {id}"),
                node_id: None,
                undo: None,
            }
        }
        FaultKind::PauseNode => {
            let index = fault.node.context("pause_node needs a node")?;
            let pid = node_pid(cluster, index)?;
            if !pid.signal_group(libc::SIGSTOP) {
                bail!("cannot SIGSTOP node {index}");
            }
            let seconds = fault.duration_secs.unwrap_or(1.0);
            let id = node_id(cluster, index);
            Injected {
                at,
                target: format!(
                    "pause_node {} for {seconds} s",
                    id.clone().unwrap_or_default()
                ),
                // Paused past the node timeout, it is declared dead like a lost node (and
                // its detection is measured); a shorter pause must not be.
                node_id: id.filter(|_| {
                    Duration::from_secs_f64(seconds)
                        > node_timeout(cluster) + Duration::from_secs(1)
                }),
                undo: Some((Duration::from_secs_f64(seconds), Undo::Resume(index))),
            }
        }
        FaultKind::Partition | FaultKind::Latency | FaultKind::Loss => {
            inject_network(cluster, network, fault, at).await?
        }
        FaultKind::KillGcsLeader | FaultKind::KillGcsFollower => {
            let leader = cluster
                .gcs_leader()
                .await
                .context("the GCS has no leader")?;
            let id = if fault.kind == FaultKind::KillGcsLeader {
                leader
            } else {
                cluster
                    .state()
                    .gcs
                    .iter()
                    .map(|g| g.daemon.id)
                    .find(|id| *id != leader)
                    .context("no follower")?
            };
            cluster.kill_gcs(id)?;
            let kind = if id == leader { "leader" } else { "follower" };
            Injected {
                at,
                target: format!("kill_gcs_{kind} gcs-{id}"),
                node_id: None,
                undo: fault
                    .duration_secs
                    .map(|s| (Duration::from_secs_f64(s), Undo::RestartGcs(id))),
            }
        }
    };
    Ok(injected)
}

/// Ends a fault (restart a replica, resume a node).
pub fn undo(
    cluster: &mut ClusterHandle,
    network: Option<&FaultNetwork>,
    undo: &Undo,
) -> anyhow::Result<()> {
    match undo {
        Undo::RestartGcs(id) => cluster.restart_gcs(*id)?,
        Undo::Heal(Some(id)) => {
            if let Some(network) = network {
                network.heal(*id);
            }
        }
        Undo::Heal(None) => partition::heal(),
        Undo::Resume(index) => {
            let pid = node_pid(cluster, *index)?;
            if !pid.signal_group(libc::SIGCONT) {
                bail!("cannot SIGCONT node {index}");
            }
        }
    }
    Ok(())
}

/// How long the cluster's GCS waits before declaring a silent node dead.
fn node_timeout(cluster: &ClusterHandle) -> Duration {
    match cluster.state().config.gcs.node_timeout_ms {
        Some(ms) => Duration::from_millis(ms),
        None => fleet_gcs::GcsConfig::default().node_timeout,
    }
}

/// The effect a network fault asks for.
fn effect_of(fault: &FaultSpec) -> LinkEffect {
    match fault.kind {
        FaultKind::Partition => LinkEffect {
            blocked: true,
            ..Default::default()
        },
        FaultKind::Latency => LinkEffect {
            delay: Duration::from_millis(fault.delay_ms.unwrap_or_default()),
            ..Default::default()
        },
        _ => LinkEffect {
            loss: fault.loss_percent.unwrap_or_default() / 100.0,
            ..Default::default()
        },
    }
}

/// Partition, latency or loss: through the fault network's proxies, or `tc` when the
/// scenario asks for netem (no `network`).
async fn inject_network(
    cluster: &mut ClusterHandle,
    network: Option<&FaultNetwork>,
    fault: &FaultSpec,
    at: Instant,
) -> anyhow::Result<Injected> {
    let mut side_nodes = Vec::new();
    let mut side_replicas = Vec::new();
    if let Some(index) = fault.node {
        side_nodes.push(index);
    }
    if let Some(replica) = fault.gcs_replica {
        side_replicas.push(replica);
    }
    if fault.gcs_leader {
        let leader = cluster
            .gcs_leader()
            .await
            .context("the GCS has no leader to cut off")?;
        if !side_replicas.contains(&leader) {
            side_replicas.push(leader);
        }
    }
    let node_ids: Vec<String> = side_nodes
        .iter()
        .map(|i| {
            cluster
                .state()
                .nodes
                .get(*i)
                .map(|n| n.daemon.node_id.clone())
                .with_context(|| format!("no node {i}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut what: Vec<String> = node_ids.clone();
    what.extend(side_replicas.iter().map(|r| format!("gcs-{r}")));
    let peers: Vec<String> = fault
        .peer_nodes
        .iter()
        .map(|i| format!("node-{i}"))
        .chain(fault.peer_gcs_replicas.iter().map(|r| format!("gcs-{r}")))
        .collect();
    let effect = effect_of(fault);
    let seconds = fault.duration_secs.unwrap_or(1.0);
    let heal = match network {
        Some(network) => {
            let cut = Cut {
                side: side_nodes
                    .iter()
                    .map(|i| format!("node-{i}"))
                    .chain(side_replicas.iter().map(|r| format!("gcs-{r}")))
                    .collect(),
                peers: (!peers.is_empty()).then(|| peers.iter().cloned().collect()),
            };
            Some(network.inject(cut, effect))
        }
        None => {
            let mut ports = Vec::new();
            for id in &node_ids {
                let address = cluster
                    .client()?
                    .list_nodes()
                    .await?
                    .into_iter()
                    .find(|n| &n.node_id == id)
                    .map(|n| n.address)
                    .with_context(|| format!("{id} is not in the nodes table"))?;
                ports.push(port_of(&address)?);
            }
            for replica in &side_replicas {
                let record = cluster
                    .state()
                    .gcs
                    .iter()
                    .find(|g| g.daemon.id == *replica)
                    .with_context(|| format!("no GCS replica {replica}"))?;
                ports.push(port_of(&record.daemon.address)?);
            }
            let delay = format!("{}ms", effect.delay.as_millis());
            let loss = format!("{}%", fault.loss_percent.unwrap_or_default());
            let netem: Vec<&str> = match fault.kind {
                FaultKind::Partition => vec!["loss", "100%"],
                FaultKind::Latency => vec!["delay", &delay],
                _ => vec!["loss", &loss],
            };
            partition::cut(&ports, &netem)?;
            None
        }
    };
    let kind = match fault.kind {
        FaultKind::Partition => "partition".to_string(),
        FaultKind::Latency => format!("latency +{} ms", effect.delay.as_millis()),
        _ => format!("loss {}%", fault.loss_percent.unwrap_or_default()),
    };
    let from = if peers.is_empty() {
        String::new()
    } else {
        format!(" from {}", peers.join(" + "))
    };
    // A node cut off from everyone past the node timeout is declared dead: detection is
    // expected (and measured) then.
    let expect_death = fault.kind == FaultKind::Partition
        && peers.is_empty()
        && Duration::from_secs_f64(seconds) > node_timeout(cluster) + Duration::from_secs(1);
    Ok(Injected {
        at,
        target: format!("{kind} {}{from} for {seconds} s", what.join(" + ")),
        node_id: if expect_death {
            node_ids.first().cloned()
        } else {
            None
        },
        undo: Some((Duration::from_secs_f64(seconds), Undo::Heal(heal))),
    })
}

/// How long after `at` the GCS declared `node_id` dead (polls up to `limit`).
pub async fn detection(
    gcs: &fleet_gcs::GcsClient,
    node_id: &str,
    at: Instant,
    limit: Duration,
) -> Option<Duration> {
    while at.elapsed() < limit {
        if let Ok(nodes) = gcs.list_nodes().await {
            if nodes
                .iter()
                .any(|n| n.node_id == node_id && n.state == NodeState::NodeDead as i32)
            {
                return Some(at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
