//! `fleet cluster up` → `fleet status` → kill/restart a node → `fleet cluster down` leaves
//! no process and no shared memory behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use fleet_cluster::{ClusterHandle, ClusterState};

use crate::fleet_binary;

struct Fleet {
    binary: PathBuf,
    home: PathBuf,
}

impl Fleet {
    fn run(&self, args: &[&str]) -> Result<(Output, String)> {
        let output = Command::new(&self.binary)
            .args(args)
            .env("FLEET_HOME", &self.home)
            .env_remove("FLEET_ADDRESS")
            .env_remove("FLEET_CLUSTER")
            .env("RUST_LOG", "warn")
            .output()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output, text))
    }
}

/// Stops the cluster even when the test fails half-way.
struct DownOnDrop<'a>(&'a Fleet, &'a str);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .run(&["cluster", "down", "--name", self.1, "--grace-secs", "1"]);
    }
}

fn setup() -> Option<(Fleet, tempfile::TempDir)> {
    let Some(binary) = fleet_binary() else {
        eprintln!("skipped: no fleet binary next to the test (run `cargo build -p fleet-cli`)");
        return None;
    };
    let home = tempfile::tempdir().ok()?;
    Some((
        Fleet {
            binary,
            home: home.path().to_path_buf(),
        },
        home,
    ))
}

fn has_raylet(fleet: &Fleet) -> bool {
    Command::new(&fleet.binary)
        .args(["raylet", "--help"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn up_status_kill_restart_down() -> Result<()> {
    let Some((fleet, _home)) = setup() else {
        return Ok(());
    };
    let with_nodes = has_raylet(&fleet);
    if !with_nodes {
        eprintln!("notice: `fleet raylet` is missing; testing a GCS-only cluster");
    }
    let nodes = if with_nodes {
        "[[nodes]]\nnum_cpus = 1\nnum_gpus = 1\nobject_store_bytes = 67108864\nlabels = { zone = \"a\" }\ncount = 2\n"
    } else {
        ""
    };
    let config = fleet.home.join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"it\"\nready_timeout_secs = 20\n[gcs]\nreplicas = 3\nbase_port = 0\ntick_ms = 50\nfsync = false\n{nodes}"
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let _down = DownOnDrop(&fleet, "it");

    let (out, text) = fleet.run(&["cluster", "up", "--config", &config])?;
    ensure!(out.status.success(), "cluster up failed: {text}");
    ensure!(text.contains("export FLEET_ADDRESS=127.0.0.1:"), "{text}");

    let (out, text) = fleet.run(&["cluster", "up", "--config", &config])?;
    ensure!(
        !out.status.success()
            && text.contains("'it' is already running")
            && text.contains("fleet cluster down"),
        "second up: {text}"
    );

    let (out, text) = fleet.run(&["status", "--cluster", "it", "--json"])?;
    ensure!(out.status.success(), "status failed: {text}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(!status["gcs"]["leader"].is_null(), "no leader: {text}");
    ensure!(
        status["gcs"]["replicas"].as_array().map(Vec::len) == Some(3),
        "{text}"
    );
    let expected_nodes = if with_nodes { 2 } else { 0 };
    let alive: Vec<&serde_json::Value> = status["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|n| n["state"] == "ALIVE").collect())
        .unwrap_or_default();
    ensure!(alive.len() == expected_nodes, "{text}");
    for node in &alive {
        ensure!(node["usage"].get("unreachable").is_none(), "{text}");
        ensure!(
            node["resources_total"]["GPU"] == 1.0,
            "declared GPU: {text}"
        );
    }

    let dir = fleet.home.join("clusters").join("it");
    let state = ClusterState::load(&dir)?.context("no cluster.json after up")?;
    ensure!(state.gcs.len() == 3 && state.nodes.len() == expected_nodes);
    for node in &state.nodes {
        ensure!(
            node.daemon.object_store_dir.is_dir(),
            "{:?}",
            node.daemon.object_store_dir
        );
    }

    if with_nodes {
        let (out, text) = fleet.run(&[
            "list",
            "nodes",
            "--cluster",
            "it",
            "--state",
            "alive",
            "--json",
        ])?;
        ensure!(out.status.success(), "{text}");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        ensure!(
            rows.len() == 2 && rows[0]["labels"]["zone"] == "a",
            "{text}"
        );

        // The library API the chaos harness uses, from another process than `up`.
        let mut handle = ClusterHandle::attach(&dir)?;
        let store = handle
            .object_store_dir(1)
            .map(Path::to_path_buf)
            .context("node 1")?;
        handle.kill_node(1)?;
        ensure!(!store.exists(), "object store of the killed node remains");
        let runtime = tokio::runtime::Runtime::new()?;
        let new_id = runtime.block_on(handle.restart_node(1))?;
        ensure!(new_id == "node-1-r1", "{new_id}");
        ensure!(runtime.block_on(handle.gcs_leader()).is_some());
    }

    let state = ClusterState::load(&dir)?.context("no cluster.json")?;
    let (out, text) = fleet.run(&["cluster", "down", "--name", "it", "--grace-secs", "5"])?;
    ensure!(
        out.status.success() && text.contains("is down"),
        "down: {text}"
    );
    for record in &state.gcs {
        let pid = record.pid.context("gcs pid")?;
        ensure!(
            !pid.is_alive() && !pid.group_alive(),
            "gcs-{} survives",
            record.daemon.id
        );
        ensure!(!record.daemon.data_dir.exists());
    }
    for record in &state.nodes {
        let pid = record.pid.context("node pid")?;
        ensure!(
            !pid.is_alive() && !pid.group_alive(),
            "node-{} survives",
            record.daemon.index
        );
        ensure!(
            !record.daemon.object_store_dir.exists(),
            "object store remains"
        );
    }
    ensure!(ClusterState::load(&dir)?.is_none(), "cluster.json remains");

    let (out, text) = fleet.run(&["cluster", "down", "--name", "it"])?;
    ensure!(
        out.status.success() && text.contains("nothing to stop"),
        "{text}"
    );
    let (out, text) = fleet.run(&["status", "--cluster", "it"])?;
    ensure!(
        !out.status.success()
            && text.contains("--address")
            && text.contains("FLEET_ADDRESS")
            && text.contains("cluster.json"),
        "{text}"
    );
    Ok(())
}

#[test]
fn bad_config_names_the_key_and_starts_nothing() -> Result<()> {
    let Some((fleet, _home)) = setup() else {
        return Ok(());
    };
    let config = fleet.home.join("bad.toml");
    std::fs::write(&config, "[[nodes]]\nnum_cpus = 1\n[[nodes]]\ngpu = 1\n")?;
    let (out, text) = fleet.run(&["cluster", "up", "--config", &config.to_string_lossy()])?;
    ensure!(!out.status.success(), "{text}");
    ensure!(
        text.contains("nodes[1].gpu") && text.contains("num_gpus"),
        "{text}"
    );
    ensure!(
        !fleet.home.join("clusters").exists(),
        "a bad config created state"
    );
    Ok(())
}
