//! The chaos smoke subset CI runs: ten shipped scenarios through `fleet chaos run --json`
//! (real daemons; SIGKILLs, partitions, latency and loss through the fault proxies); each
//! must pass with no acknowledged operation lost. The other
//! scenarios and longer soaks are documented commands (docs/chaos.md).

use std::path::Path;
use std::process::Command;

fn run_scenario(file: &str) -> serde_json::Value {
    let _serial = crate::serial();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scenarios")
        .join(file);
    let work = tempfile::tempdir().expect("temp dir");
    let output = Command::new(crate::fleet_binary())
        .args(["chaos", "run", "--json", "--work-dir"])
        .arg(work.path())
        .arg(&scenario)
        .output()
        .expect("fleet chaos runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{file} failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{file}: bad JSON ({e}): {stdout}"))
}

#[test]
fn node_loss_under_counters_loses_nothing() {
    let report = run_scenario("node-loss-counters.toml");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["lost_acknowledged"], 0, "{report:#}");
    let kill = &report["faults"][0];
    assert!(kill["target"]
        .as_str()
        .unwrap_or_default()
        .starts_with("kill_node"));
    assert!(
        kill["detected_ms"].as_u64().is_some(),
        "the killed node is detected: {report:#}"
    );
    assert!(
        kill["recovered_ms"].as_u64().is_some(),
        "the workload recovers: {report:#}"
    );
    assert!(report["acknowledged"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn node_loss_under_training_resumes_on_the_same_curve() {
    let report = run_scenario("node-loss-training.toml");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["lost_acknowledged"], 0, "{report:#}");
    let kill = &report["faults"][0];
    assert!(
        kill["detected_ms"].as_u64().is_some() && kill["recovered_ms"].as_u64().is_some(),
        "the killed node is detected and training goes on: {report:#}"
    );
    let invariants = report["invariants"].as_array().cloned().unwrap_or_default();
    assert_eq!(invariants.len(), 5, "{report:#}");
    // The fault hit a rank mid-run (not before or after training): a recovery is reported.
    assert!(
        invariants[0]["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("failed at step"),
        "{report:#}"
    );
}

#[test]
fn node_loss_under_parameter_server_training_applies_every_push_once() {
    let report = run_scenario("node-loss-parameter-server.toml");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["lost_acknowledged"], 0, "{report:#}");
    let invariants = report["invariants"].as_array().cloned().unwrap_or_default();
    assert_eq!(invariants.len(), 3, "{report:#}");
    // Both faults hit mid-run: a replica came back, and a worker task resumed mid-way.
    let evidence = invariants[0]["evidence"].as_str().unwrap_or_default();
    assert!(
        evidence.contains("back after") && evidence.contains("resumed at clock"),
        "{report:#}"
    );
    for fault in report["faults"].as_array().cloned().unwrap_or_default() {
        assert!(
            fault["detected_ms"].as_u64().is_some() && fault["recovered_ms"].as_u64().is_some(),
            "every killed node is detected and every worker pushes again: {report:#}"
        );
    }
}

#[test]
fn node_and_gcs_leader_loss_under_a_stream_commits_every_result_once() {
    let report = run_scenario("node-and-gcs-leader-loss-stream.toml");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["lost_acknowledged"], 0, "{report:#}");
    let invariants = report["invariants"].as_array().cloned().unwrap_or_default();
    assert_eq!(invariants.len(), 2, "{report:#}");
    // The node kill hit operator instances mid-run: the job failed over at least once.
    let evidence = invariants[0]["evidence"].as_str().unwrap_or_default();
    assert!(!evidence.contains(" 0 failovers"), "{report:#}");
    for fault in report["faults"].as_array().cloned().unwrap_or_default() {
        assert!(
            fault["recovered_ms"].as_u64().is_some(),
            "checkpoints complete again after every fault: {report:#}"
        );
    }
}

#[test]
fn gcs_leader_loss_under_fanout_loses_nothing() {
    let report = run_scenario("gcs-leader-loss-fanout.toml");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["lost_acknowledged"], 0, "{report:#}");
    assert!(report["acknowledged"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn gcs_leader_loss_under_actor_creation_creates_each_actor_once() {
    let report = run_scenario("gcs-leader-loss-actor-creation.toml");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["lost_acknowledged"], 0, "{report:#}");
    let invariants = report["invariants"].as_array().cloned().unwrap_or_default();
    assert_eq!(invariants.len(), 4, "{report:#}");
    assert!(
        report["acknowledged"].as_u64().unwrap_or(0) > 0,
        "{report:#}"
    );
}

#[test]
fn gcs_leader_loss_under_registers_stays_linearizable() {
    let report = run_scenario("gcs-leader-loss-register.toml");
    assert_eq!(report["passed"], true, "{report:#}");
    let verdict = &report["invariants"][0];
    assert!(
        verdict["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("linearizable"),
        "{report:#}"
    );
}

#[test]
fn partition_of_a_node_and_a_replica_loses_nothing() {
    let report = run_scenario("partition-node-and-replica.toml");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["lost_acknowledged"], 0, "{report:#}");
    let cut = &report["faults"][0];
    assert!(
        cut["detected_ms"].as_u64().is_some(),
        "the cut-off node is declared dead: {report:#}"
    );
    // The traffic really crossed the fault proxies, and the partition held connections.
    assert!(
        report["network"]["held_at_connect"].as_u64().unwrap_or(0) > 0,
        "{report:#}"
    );
}

#[test]
fn partitioned_gcs_leader_keeps_the_registers_linearizable() {
    let report = run_scenario("partition-gcs-leader-register.toml");
    assert_eq!(report["passed"], true, "{report:#}");
    let faults = report["faults"].as_array().cloned().unwrap_or_default();
    assert_eq!(faults.len(), 2, "{report:#}");
    assert!(
        faults.iter().all(|f| f["recovered_ms"].as_u64().is_some()),
        "the clients serve again after each cut: {report:#}"
    );
}

#[test]
fn latency_and_loss_slow_the_counters_down_but_lose_nothing() {
    let report = run_scenario("slow-network-counters.toml");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["lost_acknowledged"], 0, "{report:#}");
    assert!(
        report["network"]["lost_chunks"].as_u64().unwrap_or(0) > 0,
        "the loss fault charged retransmissions: {report:#}"
    );
}

/// Stops the attached test's cluster whatever happens.
struct ClusterDown<'a> {
    home: &'a Path,
}

impl Drop for ClusterDown<'_> {
    fn drop(&mut self) {
        let _ = Command::new(crate::fleet_binary())
            .args([
                "cluster",
                "down",
                "--name",
                "chaos-attach",
                "--grace-secs",
                "2",
            ])
            .env("FLEET_HOME", self.home)
            .output();
    }
}

#[test]
fn a_scenario_runs_against_a_cluster_started_by_cluster_up() {
    let _serial = crate::serial();
    let home = tempfile::tempdir().expect("temp dir");
    let config = home.path().join("fleet.toml");
    std::fs::write(
        &config,
        r#"name = "chaos-attach"
gcs = { replicas = 3, base_port = 0, health_check_ms = 200, node_timeout_ms = 1500, fsync = false }
nodes = [{ num_cpus = 1, count = 3 }]
"#,
    )
    .expect("config written");
    // No [cluster]: the run attaches.
    let scenario = home.path().join("attached.toml");
    std::fs::write(
        &scenario,
        r#"name = "attached-node-loss"
duration_secs = 8
[workload]
kind = "counters"
actors = 3
[[faults]]
at_secs = 2
kind = "kill_node"
node = 2
[[faults]]
at_secs = 5
kind = "restart_node"
node = 2
"#,
    )
    .expect("scenario written");
    let up = Command::new(crate::fleet_binary())
        .args(["cluster", "up", "--config"])
        .arg(&config)
        .env("FLEET_HOME", home.path())
        .output()
        .expect("fleet cluster up runs");
    let _down = ClusterDown { home: home.path() };
    assert!(
        up.status.success(),
        "cluster up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let run = Command::new(crate::fleet_binary())
        .args([
            "chaos",
            "run",
            "--json",
            "--attach",
            "chaos-attach",
            "--work-dir",
        ])
        .arg(home.path().join("work"))
        .arg(&scenario)
        .env("FLEET_HOME", home.path())
        .output()
        .expect("fleet chaos runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "attached run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["lost_acknowledged"], 0, "{report:#}");
    assert!(
        report["faults"][0]["detected_ms"].as_u64().is_some(),
        "{report:#}"
    );
    // The cluster outlives the run (attached runs leave it up): its GCS still answers.
    let status = Command::new(crate::fleet_binary())
        .args([
            "status",
            "--cluster",
            "chaos-attach",
            "--timeout-secs",
            "10",
        ])
        .env("FLEET_HOME", home.path())
        .output()
        .expect("fleet status runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}
