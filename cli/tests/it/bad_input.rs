//! Bad input gets a sentence that names the thing and the fix, and a non-zero exit.

use std::process::Command;

use anyhow::{ensure, Result};
use fleet_gcs::auth::{ensure_process_token, TOKEN_ENV};

use crate::{fleet_binary, serial};

fn fleet(args: &[&str]) -> Result<(bool, String)> {
    let output = Command::new(fleet_binary())
        .args(args)
        .env("RUST_LOG", "error")
        .env(TOKEN_ENV, ensure_process_token().secret())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

#[test]
fn malformed_flags_name_the_flag() -> Result<()> {
    let _serial = serial();
    let (ok, out) = fleet(&[
        "gcs",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--peers",
        "1=127.0.0.1:1,x=y",
    ])?;
    ensure!(
        !ok && out.contains("--peers") && out.contains("'x'"),
        "{out}"
    );
    let (ok, out) = fleet(&[
        "gcs",
        "--id",
        "2",
        "--listen",
        "127.0.0.1:1",
        "--peers",
        "1=127.0.0.1:1",
    ])?;
    ensure!(!ok && out.contains("--join"), "{out}");
    let (ok, out) = fleet(&["gcs", "--listen", "not-an-address"])?;
    ensure!(!ok && out.contains("--listen"), "{out}");
    let (ok, out) = fleet(&["gcs", "--id", "0"])?;
    ensure!(!ok && out.contains("--id"), "{out}");
    Ok(())
}

#[test]
fn data_dir_of_another_replica_is_refused() -> Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.to_str().unwrap_or_default();
    // Replica 1 initialises the dir, then stops.
    let address = fleet_gcs::local_cluster::free_loopback_address()?;
    let mut child = Command::new(fleet_binary())
        .args(["gcs", "--id", "1", "--listen", &address, "--data-dir", data])
        .env("RUST_LOG", "error")
        .env(TOKEN_ENV, ensure_process_token().secret())
        .spawn()?;
    let client = fleet_gcs::GcsClient::connect(&address)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(client.kv_put("t", b"k", b"v"))?;
    child.kill()?;
    child.wait()?;
    let peers = format!("2={address}");
    let (ok, out) = fleet(&[
        "gcs",
        "--id",
        "2",
        "--listen",
        &address,
        "--peers",
        &peers,
        "--data-dir",
        data,
    ])?;
    ensure!(
        !ok && out.contains("belongs to replica 1") && out.contains("--id 1"),
        "{out}"
    );
    let (ok, out) = fleet(&[
        "gcs",
        "--id",
        "1",
        "--listen",
        &address,
        "--cluster-name",
        "other",
        "--data-dir",
        data,
    ])?;
    ensure!(!ok && out.contains("cluster 'fleet'"), "{out}");
    Ok(())
}

#[test]
fn corrupt_data_dir_is_a_clear_error() -> Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(
        data.join("conf"),
        b"\x00\x01garbage that is not sled's config",
    )?;
    std::fs::write(data.join("db"), vec![0xAB; 4096])?;
    let address = fleet_gcs::local_cluster::free_loopback_address()?;
    let (ok, out) = fleet(&[
        "gcs",
        "--listen",
        &address,
        "--data-dir",
        data.to_str().unwrap_or_default(),
    ])?;
    ensure!(!ok, "{out}");
    ensure!(out.contains("corrupt") && out.contains("--join"), "{out}");
    ensure!(!out.contains("panicked"), "no panic: {out}");
    Ok(())
}

#[test]
fn unreachable_cluster_is_named() -> Result<()> {
    let _serial = serial();
    let address = fleet_gcs::local_cluster::free_loopback_address()?;
    let (ok, out) = fleet(&[
        "kv",
        "--address",
        &address,
        "--timeout-secs",
        "2",
        "get",
        "k",
    ])?;
    ensure!(
        !ok && out.contains(&address) && out.contains("FLEET_ADDRESS"),
        "{out}"
    );
    let (ok, out) = fleet(&["gcs", "status", "--address", &address])?;
    ensure!(!ok && out.contains("unreachable"), "{out}");
    Ok(())
}
