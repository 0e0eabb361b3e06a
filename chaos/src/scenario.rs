//! A scenario file:
//!
//! ```toml
//! name = "node-loss-under-counters"
//! seed = 7                 # the fault schedule's jitter; `--seed` overrides
//! duration_secs = 20       # the workload runs this long (faults happen inside it)
//!
//! [cluster]                # a `fleet cluster up` config (docs/cluster.md)
//! gcs = { replicas = 3, base_port = 0, node_timeout_ms = 1500, health_check_ms = 200 }
//! nodes = [{ num_cpus = 2, count = 3 }]
//!
//! [workload]
//! kind = "counters"        # counters | fanout | register | actor_creation | training | parameter_server | stream
//! actors = 4               # counters: how many checkpointed counter actors
//! task_retries = 20        # counters: the runtime's retries per call before the workload's
//!                          # own retry with the call's idempotency token takes over
//! tasks = 16               # fanout: tasks per round
//!
//! [[faults]]
//! at_secs = 5              # after the workload starts (plus up to jitter_ms, seeded)
//! kind = "kill_node"       # kill_node | restart_node | pause_node | kill_gcs_leader | kill_gcs_follower
//!                          # | partition | latency | loss
//! node = 2                 # node index (kill_node, restart_node, pause_node; network faults)
//! duration_secs = 3        # pause_node, network faults: how long; kill_gcs_*: restart after this
//!
//! [[faults]]               # a network fault: between one side and its peers, both ways
//! at_secs = 8
//! kind = "partition"
//! node = 2                 # the side: node 2, and/or
//! gcs_replica = 3          #   GCS replica 3, and/or
//! gcs_leader = false       #   whichever replica leads when the fault starts
//! peer_nodes = []          # its peers (both empty: every other daemon and the driver)
//! peer_gcs_replicas = []
//! duration_secs = 5
//! # latency: delay_ms = 50 (added each way); loss: loss_percent = 10
//! ```
//!
//! `network = "proxy"` (the default) runs network faults through the harness's
//! fault-injecting proxies ([`crate::network`]); `network = "netem"` uses `tc netem` on
//! loopback instead (root and a kernel with sch_prio and sch_netem).

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// A whole scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name (in the report).
    pub name: String,
    /// Seed of the schedule's jitter.
    #[serde(default)]
    pub seed: u64,
    /// How long the workload runs.
    pub duration_secs: f64,
    /// Largest random delay added to each fault's time.
    #[serde(default = "default_jitter_ms")]
    pub jitter_ms: u64,
    /// The cluster to start (a `fleet cluster up` config as a table); may be left out for
    /// runs that attach to a running cluster (`--attach`).
    #[serde(default)]
    pub cluster: Option<toml::Table>,
    /// The workload.
    pub workload: WorkloadSpec,
    /// The faults.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// How network faults are made.
    #[serde(default)]
    pub network: NetworkMode,
}

/// How network faults (partition, latency, loss) are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Each daemon on its own loopback IP behind the harness's egress proxy (no root, no
    /// kernel modules).
    #[default]
    Proxy,
    /// `tc netem` on loopback, matching the daemons' ports (root; sch_prio and sch_netem).
    Netem,
}

fn default_jitter_ms() -> u64 {
    500
}

/// Which built-in workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// `counters` or `fanout`.
    pub kind: WorkloadKind,
    /// counters: actors.
    #[serde(default = "default_actors")]
    pub actors: usize,
    /// counters: the runtime's retries of a call (`max_task_retries`); a call that still
    /// fails is retried by the workload with its idempotency token.
    #[serde(default = "default_task_retries")]
    pub task_retries: u32,
    /// fanout: tasks per round.
    #[serde(default = "default_tasks")]
    pub tasks: usize,
    /// register, actor_creation: concurrent clients.
    #[serde(default = "default_clients")]
    pub clients: usize,
    /// register: registers (keys).
    #[serde(default = "default_keys")]
    pub keys: usize,
    /// training: data-parallel ranks.
    #[serde(default = "default_ranks")]
    pub ranks: usize,
    /// training: steps to train; parameter_server: pushes per worker.
    #[serde(default = "default_steps")]
    pub steps: u64,
    /// training: commit a checkpoint every this many steps.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// parameter_server: worker tasks (each pushes `steps` times).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// parameter_server: server shards (two replica actors each).
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// stream: Nexmark events in all.
    #[serde(default = "default_events")]
    pub events: u64,
    /// stream: the source's pace, events per second.
    #[serde(default = "default_rate")]
    pub rate: u64,
}

fn default_events() -> u64 {
    200_000
}
fn default_rate() -> u64 {
    20_000
}

fn default_workers() -> usize {
    4
}
fn default_shards() -> usize {
    2
}

fn default_ranks() -> usize {
    2
}
fn default_steps() -> u64 {
    120
}
fn default_checkpoint_every() -> u64 {
    10
}

fn default_clients() -> usize {
    4
}
fn default_keys() -> usize {
    3
}

fn default_actors() -> usize {
    4
}
fn default_task_retries() -> u32 {
    20
}
fn default_tasks() -> usize {
    16
}

/// Built-in workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    /// Checkpointed counter actors, incremented without pause; final counts must equal the
    /// acknowledged increments exactly.
    Counters,
    /// Rounds of tasks summing squares; every round's sum must be exact.
    Fanout,
    /// Clients reading and writing GCS registers; the history must be linearizable.
    Register,
    /// Clients creating, calling and killing actors; every acknowledged creation recorded
    /// once, none twice.
    ActorCreation,
    /// A checkpointed, elastic data-parallel run of a small GPT; its losses and final
    /// weights must equal a run without faults.
    Training,
    /// Sparse logistic regression on a replicated parameter server; every acknowledged
    /// push applied exactly once on both replicas of every shard, the target loss reached.
    ParameterServer,
    /// Nexmark q5 on `fleet-stream` with checkpoints every second; the committed output
    /// must equal the exact answer (nothing lost, nothing twice).
    Stream,
}

/// One fault.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// When, after the workload starts.
    pub at_secs: f64,
    /// What.
    pub kind: FaultKind,
    /// The node's index in the cluster config's expanded node list.
    #[serde(default)]
    pub node: Option<usize>,
    /// pause_node, partition: how long; kill_gcs_*: restart the replica after this (none:
    /// stays down).
    #[serde(default)]
    pub duration_secs: Option<f64>,
    /// Network faults: a GCS replica on the fault's side.
    #[serde(default)]
    pub gcs_replica: Option<u64>,
    /// Network faults: the replica leading when the fault starts is on its side.
    #[serde(default)]
    pub gcs_leader: bool,
    /// Network faults: nodes on the other side (with `peer_gcs_replicas` empty too: every
    /// daemon not on the side, and the driver).
    #[serde(default)]
    pub peer_nodes: Vec<usize>,
    /// Network faults: GCS replicas on the other side.
    #[serde(default)]
    pub peer_gcs_replicas: Vec<u64>,
    /// latency: added one-way delay.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// loss: share of packets (proxy: chunks) lost, 0 to 100.
    #[serde(default)]
    pub loss_percent: Option<f64>,
}

impl FaultSpec {
    /// A partition, latency or loss.
    pub fn is_network(&self) -> bool {
        matches!(
            self.kind,
            FaultKind::Partition | FaultKind::Latency | FaultKind::Loss
        )
    }
}

/// Fault kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL a raylet and its workers; wipe its object-store and spill directories.
    KillNode,
    /// Start a killed node again (as a new node id).
    RestartNode,
    /// SIGSTOP a raylet and its workers for `duration_secs`, then SIGCONT.
    PauseNode,
    /// SIGKILL the GCS leader.
    KillGcsLeader,
    /// SIGKILL a GCS follower.
    KillGcsFollower,
    /// Cut a side (`node`, `gcs_replica`, `gcs_leader`) off from its peers for
    /// `duration_secs`: nothing crosses.
    Partition,
    /// Add `delay_ms` each way between a side and its peers for `duration_secs`.
    Latency,
    /// Lose `loss_percent` of the traffic between a side and its peers for `duration_secs`.
    Loss,
}

impl Scenario {
    /// Parses and validates a scenario; errors name the key.
    pub fn from_toml_str(text: &str, origin: &str) -> anyhow::Result<Self> {
        let scenario: Scenario =
            toml::from_str(text).with_context(|| format!("{origin} is not a valid scenario"))?;
        scenario.validate(origin)?;
        Ok(scenario)
    }

    /// Reads a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the scenario {}", path.display()))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// The cluster config it starts.
    pub fn cluster_config(&self, origin: &str) -> anyhow::Result<fleet_cluster::ClusterConfig> {
        let Some(cluster) = &self.cluster else {
            bail!("{origin} has no [cluster] table: add one (the cluster the run starts) or attach to a running cluster (`fleet chaos run --attach NAME`)");
        };
        let text = toml::to_string(cluster)?;
        Ok(fleet_cluster::ClusterConfig::from_toml_str(
            &text,
            &format!("{origin} [cluster]"),
        )?)
    }

    fn validate(&self, origin: &str) -> anyhow::Result<()> {
        if !(self.duration_secs.is_finite()
            && self.duration_secs > 0.0
            && self.duration_secs <= 3600.0)
        {
            bail!("{origin}: duration_secs must be in (0, 3600] (every chaos run is bounded)");
        }
        // Without a [cluster] (an attached run) node and replica numbers are checked when
        // the faults are injected.
        let (nodes, replicas) = match &self.cluster {
            Some(_) => {
                let config = self.cluster_config(origin)?;
                let nodes: usize = config.nodes.iter().map(|n| n.count as usize).sum();
                (nodes, config.gcs.replicas)
            }
            None => (usize::MAX, u32::MAX),
        };
        if self.workload.actors == 0 || self.workload.tasks == 0 {
            bail!("{origin}: workload.actors and workload.tasks must be at least 1");
        }
        for (i, fault) in self.faults.iter().enumerate() {
            let key = format!("{origin}: faults[{i}]");
            if !(fault.at_secs.is_finite()
                && fault.at_secs >= 0.0
                && fault.at_secs < self.duration_secs)
            {
                bail!("{key}.at_secs must fall inside the run (0 to duration_secs)");
            }
            if fault.is_network() {
                self.validate_network_fault(&key, fault, nodes, replicas)?;
                continue;
            }
            match fault.kind {
                FaultKind::Partition | FaultKind::Latency | FaultKind::Loss => {}
                FaultKind::KillNode | FaultKind::RestartNode | FaultKind::PauseNode => {
                    let node = fault
                        .node
                        .with_context(|| format!("{key}.node is required for {:?}", fault.kind))?;
                    if node >= nodes {
                        bail!("{key}.node is {node} but the cluster has {nodes} node(s) (0-based)");
                    }
                    if node == 0 {
                        bail!("{key}.node is 0: node 0 hosts the harness's driver; fault another node");
                    }
                }
                FaultKind::KillGcsLeader | FaultKind::KillGcsFollower => {
                    if replicas < 3 {
                        bail!("{key}: killing a GCS replica needs [cluster] gcs.replicas >= 3");
                    }
                }
            }
            if fault.kind == FaultKind::PauseNode && fault.duration_secs.is_none() {
                bail!("{key}.duration_secs is required for {:?}", fault.kind);
            }
            if fault.gcs_replica.is_some()
                || fault.gcs_leader
                || !fault.peer_nodes.is_empty()
                || !fault.peer_gcs_replicas.is_empty()
                || fault.delay_ms.is_some()
                || fault.loss_percent.is_some()
            {
                bail!(
                    "{key}: gcs_replica, gcs_leader, peer_*, delay_ms and loss_percent belong to \
                     network faults (partition, latency, loss), not {:?}",
                    fault.kind
                );
            }
        }
        Ok(())
    }

    fn validate_network_fault(
        &self,
        key: &str,
        fault: &FaultSpec,
        nodes: usize,
        replicas: u32,
    ) -> anyhow::Result<()> {
        let replica_ok = |replica: u64| replica >= 1 && replica <= u64::from(replicas);
        if fault.node.is_none() && fault.gcs_replica.is_none() && !fault.gcs_leader {
            bail!(
                "{key}: a {:?} needs a side: node, gcs_replica or gcs_leader = true",
                fault.kind
            );
        }
        for node in fault.node.iter().chain(&fault.peer_nodes) {
            if *node >= nodes {
                bail!(
                    "{key}: node {node} does not exist; the cluster has {nodes} node(s) (0-based)"
                );
            }
        }
        for replica in fault.gcs_replica.iter().chain(&fault.peer_gcs_replicas) {
            if !replica_ok(*replica) {
                bail!("{key}: GCS replica {replica} does not exist; replicas are numbered 1 to {replicas}");
            }
        }
        if fault.kind == FaultKind::Partition && fault.node == Some(0) {
            bail!("{key}.node is 0: node 0 hosts the harness's driver, which must keep reaching the cluster; partition another node");
        }
        if fault.duration_secs.is_none() {
            bail!(
                "{key}.duration_secs is required for {:?} (every fault ends)",
                fault.kind
            );
        }
        match fault.kind {
            FaultKind::Latency => match fault.delay_ms {
                Some(ms) if (1..=10_000).contains(&ms) => {}
                _ => bail!("{key}.delay_ms is required for latency, 1 to 10000"),
            },
            FaultKind::Loss => match fault.loss_percent {
                Some(p) if p > 0.0 && p <= 100.0 => {}
                _ => bail!("{key}.loss_percent is required for loss, above 0 and at most 100"),
            },
            _ => {}
        }
        if self.network == NetworkMode::Netem {
            // tc holds one netem at a time: a second fault would replace the first.
            let ends = fault.at_secs + fault.duration_secs.unwrap_or_default();
            let overlaps = self.faults.iter().any(|other| {
                !std::ptr::eq(other, fault)
                    && other.is_network()
                    && other.at_secs >= fault.at_secs
                    && other.at_secs < ends + self.jitter_ms as f64 / 1000.0
            });
            if overlaps {
                bail!(
                    "{key}: network = \"netem\" makes one network fault at a time and another \
                     starts before this one ends (jitter included); space them out or use \
                     network = \"proxy\""
                );
            }
        }
        if self.network == NetworkMode::Netem
            && (!fault.peer_nodes.is_empty() || !fault.peer_gcs_replicas.is_empty())
        {
            bail!(
                "{key}: network = \"netem\" cuts a side off from everyone (it matches ports); \
                 peer_nodes and peer_gcs_replicas need network = \"proxy\""
            );
        }
        Ok(())
    }

    /// Whether the run needs the fault-injecting proxies.
    pub fn needs_fault_network(&self) -> bool {
        self.network == NetworkMode::Proxy && self.faults.iter().any(FaultSpec::is_network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
duration_secs = 10
[cluster]
gcs = { replicas = 3, base_port = 0 }
nodes = [{ num_cpus = 1, count = 3 }]
[workload]
kind = "counters"
[[faults]]
at_secs = 2
kind = "kill_node"
node = 2
"#;

    #[test]
    fn a_good_scenario_parses() {
        let s = Scenario::from_toml_str(GOOD, "good.toml").expect("valid");
        assert_eq!(s.faults.len(), 1);
        assert_eq!(s.workload.kind, WorkloadKind::Counters);
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let bad = GOOD.replace("node = 2", "node = 7");
        let e = format!(
            "{:#}",
            Scenario::from_toml_str(&bad, "bad.toml").expect_err("bad")
        );
        assert!(
            e.contains("faults[0].node") && e.contains("3 node(s)"),
            "{e}"
        );
        let driver = GOOD.replace("node = 2", "node = 0");
        let e = format!(
            "{:#}",
            Scenario::from_toml_str(&driver, "bad.toml").expect_err("bad")
        );
        assert!(e.contains("driver"), "{e}");
        let unknown = GOOD.replace("kind = \"kill_node\"", "kind = \"kill_node\"\nnodes = 1");
        let e = format!(
            "{:#}",
            Scenario::from_toml_str(&unknown, "bad.toml").expect_err("bad")
        );
        assert!(e.contains("nodes"), "{e}");
        let long = GOOD.replace("duration_secs = 10", "duration_secs = 99999");
        assert!(Scenario::from_toml_str(&long, "bad.toml").is_err());
    }

    #[test]
    fn network_faults_are_checked_key_by_key() {
        let with = |fault: &str| GOOD.replace("kind = \"kill_node\"\nnode = 2", fault);
        let error = |text: String| {
            format!(
                "{:#}",
                Scenario::from_toml_str(&text, "net.toml").expect_err("refused")
            )
        };
        let ok =
            with("kind = \"latency\"\nnode = 1\ngcs_replica = 3\ndelay_ms = 40\nduration_secs = 2");
        let scenario = Scenario::from_toml_str(&ok, "net.toml").expect("valid");
        assert!(scenario.needs_fault_network());
        let e = error(with("kind = \"latency\"\nnode = 1\nduration_secs = 2"));
        assert!(e.contains("delay_ms"), "{e}");
        let e = error(with(
            "kind = \"loss\"\nnode = 1\nloss_percent = 150\nduration_secs = 2",
        ));
        assert!(e.contains("loss_percent"), "{e}");
        let e = error(with("kind = \"partition\"\nduration_secs = 2"));
        assert!(e.contains("needs a side"), "{e}");
        let e = error(with("kind = \"partition\"\nnode = 0\nduration_secs = 2"));
        assert!(e.contains("driver"), "{e}");
        let e = error(with(
            "kind = \"partition\"\ngcs_replica = 4\nduration_secs = 2",
        ));
        assert!(e.contains("replica 4"), "{e}");
        let e = error(with("kind = \"partition\"\nnode = 1"));
        assert!(e.contains("duration_secs"), "{e}");
        let e = error(format!(
            "network = \"netem\"\n{}",
            with("kind = \"partition\"\nnode = 1\npeer_nodes = [2]\nduration_secs = 2")
        ));
        assert!(e.contains("network = \"proxy\""), "{e}");
        let two = with("kind = \"partition\"\nnode = 1\nduration_secs = 3")
            + "[[faults]]\nat_secs = 3\nkind = \"latency\"\nnode = 2\ndelay_ms = 9\nduration_secs = 1\n";
        assert!(
            Scenario::from_toml_str(&two, "net.toml").is_ok(),
            "the proxy overlaps faults"
        );
        let e = error(format!("network = \"netem\"\n{two}"));
        assert!(e.contains("one network fault at a time"), "{e}");
        let e = error(with("kind = \"kill_node\"\nnode = 2\ndelay_ms = 5"));
        assert!(e.contains("network faults"), "{e}");
        // Attached runs have no [cluster]: numbers are checked at injection.
        let attached = ok.replace("[cluster]\ngcs = { replicas = 3, base_port = 0 }\nnodes = [{ num_cpus = 1, count = 3 }]\n", "");
        let scenario =
            Scenario::from_toml_str(&attached, "net.toml").expect("valid without [cluster]");
        assert!(scenario.cluster.is_none());
        assert!(scenario.cluster_config("net.toml").is_err());
    }

    proptest::proptest! {
        /// A damaged scenario (any shipped one, edited) is a scenario or an error that names
        /// the file, never a panic.
        #[test]
        fn damaged_scenarios_parse_or_fail_cleanly(
            text in proptest::prop_oneof![
                fleet_proto::fuzz::mutated_config_text(GOOD.to_string()),
                fleet_proto::fuzz::mutated_config_text(
                    include_str!("../../scenarios/soak-mixed.toml").to_string()
                ),
                fleet_proto::fuzz::mutated_config_text(
                    include_str!("../../scenarios/partition-node-and-replica.toml").to_string()
                ),
                fleet_proto::fuzz::mutated_config_text(
                    include_str!("../../scenarios/slow-network-counters.toml").to_string()
                ),
            ]
        ) {
            if let Err(error) = Scenario::from_toml_str(&text, "edited.toml") {
                let message = format!("{error:#}");
                proptest::prop_assert!(message.contains("edited.toml"), "{}", message);
            }
        }
    }
}
