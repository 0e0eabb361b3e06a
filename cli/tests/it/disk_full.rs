//! A full disk stops the replica with a clear error and loses nothing acknowledged: after
//! space is freed, a restart serves every write that was acknowledged before.
//!
//! Needs root (it mounts a small tmpfs); elsewhere it says so and does nothing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fleet_gcs::client::ClientOptions;
use fleet_gcs::local_cluster::free_loopback_address;
use fleet_gcs::GcsClient;

use crate::{fleet_binary, serial};

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_stops_the_replica_and_loses_nothing_acknowledged() -> Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let mount = dir.path().join("disk");
    std::fs::create_dir_all(&mount)?;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mount)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return Ok(());
    }
    let _tmpfs = Tmpfs(mount.clone());
    let data = mount.join("data");
    let address = free_loopback_address()?;
    let start = || {
        Command::new(fleet_binary())
            .args(["gcs", "--listen", &address, "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "error")
            .env(
                fleet_gcs::auth::TOKEN_ENV,
                fleet_gcs::auth::ensure_process_token().secret(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    };
    let replica = start()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let options = ClientOptions {
        deadline: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let client = GcsClient::connect_with(&address, options)?;
    let value = vec![b'x'; 30_000];
    let mut acked = 0;
    let started = Instant::now();
    loop {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the 4 MiB disk never filled"
        );
        match runtime.block_on(client.kv_put("disk", format!("k{acked}").as_bytes(), &value)) {
            Ok(_) => acked += 1,
            Err(_) => break,
        }
    }
    let output = replica.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "the replica stopped with a failure status"
    );
    ensure!(
        stderr.contains("storage write failed") && stderr.contains("free space"),
        "clear error: {stderr}"
    );
    ensure!(!stderr.contains("panicked"), "no panic: {stderr}");
    ensure!(
        acked > 10,
        "some writes were acknowledged before the disk filled ({acked})"
    );

    // Free space (grow the filesystem), restart, and read back every acknowledged write.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mount)
        .status()?;
    ensure!(grown.success(), "remount failed");
    let mut replica = start()?;
    let client = GcsClient::connect(&address)?;
    let records = runtime.block_on(client.kv_list("disk", b""));
    let _ = replica.kill();
    let _ = replica.wait();
    let records = records.context("reading back after the restart")?;
    for i in 0..acked {
        let key = format!("k{i}");
        let record = records
            .iter()
            .find(|r| r.key == key.as_bytes())
            .with_context(|| format!("acknowledged {key} lost"))?;
        ensure!(record.value == value, "{key} intact");
    }
    eprintln!("{acked} acknowledged writes survived the full disk");
    Ok(())
}
