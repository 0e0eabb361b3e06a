//! `fleet bench transfer`: node-to-node object transfer. Two raylets (real gRPC servers on
//! loopback, each with its own shared-memory store) in this process; an object put into
//! node A's store is pulled by node B (`PullObject`: chunked `ReadObject` stream, stored on
//! B) and timed. The bound to compare with: the same bytes through one plain TCP socket on
//! loopback, read into memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::PullObjectRequest;
use fleet_raylet::object_store::ObjectId;
use fleet_raylet::RayletConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Scratch(PathBuf, Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        for dir in &self.1 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn raylet(
    name: &str,
    gcs: &str,
    scratch: &std::path::Path,
    capacity: u64,
) -> anyhow::Result<(fleet_raylet::server::RunningRaylet, PathBuf)> {
    let node_id = format!("bench-{name}-{}", std::process::id());
    let mut config = RayletConfig::local(node_id.clone(), 1.0, 0, std::env::current_exe()?, gcs);
    config.prestart_workers = 0;
    config.object_store_bytes = capacity;
    config.spill_dir = scratch.join(format!("spill-{name}"));
    config.node_dir = scratch.join(format!("node-{name}"));
    let shm = config.object_store_dir.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok((fleet_raylet::server::start(config, listener).await?, shm))
}

async fn tcp_loopback(size: usize) -> anyhow::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let sender = tokio::spawn(async move {
        let chunk = vec![7u8; 4 << 20];
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let mut sent = 0;
        while sent < size {
            let n = chunk.len().min(size - sent);
            socket.write_all(&chunk[..n]).await?;
            sent += n;
        }
        socket.shutdown().await?;
        Ok::<(), std::io::Error>(())
    });
    let started = Instant::now();
    let mut socket = TcpStream::connect(address).await?;
    let mut received = vec![0u8; size];
    socket.read_exact(&mut received).await?;
    let elapsed = started.elapsed();
    sender.await??;
    anyhow::ensure!(received[size - 1] == 7, "the socket delivered wrong bytes");
    Ok(elapsed)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs `repeat` rounds of a `size`-byte transfer and prints medians in GB/s.
pub async fn run(size: usize, repeat: usize) -> anyhow::Result<()> {
    anyhow::ensure!(size > 0, "--bytes must be positive");
    let root = std::env::temp_dir().join(format!("fleet-bench-transfer-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let mut scratch = Scratch(root.clone(), Vec::new());
    let gcs = fleet_gcs::server::EmbeddedGcs::start(root.join("gcs")).await?;
    let capacity = (size as u64).saturating_mul(2) + (64 << 20);
    let (a, shm_a) = raylet("a", &gcs.address, &root, capacity).await?;
    let (b, shm_b) = raylet("b", &gcs.address, &root, capacity).await?;
    scratch.1.extend([shm_a, shm_b]);
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut client = RayletClient::connect(format!("http://{}", b.address))
        .await
        .context("connecting to raylet B")?;
    let mut pulls = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..repeat.max(1) {
        let id = ObjectId::random();
        a.service.object_store().put(id, &data).await?;
        let started = Instant::now();
        let reply = client
            .pull_object(PullObjectRequest {
                object_id: id.to_string(),
                from_address: a.address.clone(),
            })
            .await?
            .into_inner();
        let elapsed = started.elapsed();
        anyhow::ensure!(
            reply.size == size as u64,
            "pulled {} of {size} bytes",
            reply.size
        );
        let copy = b
            .service
            .object_store()
            .get(id)
            .await?
            .context("the pulled copy is not in node B's store")?;
        anyhow::ensure!(copy[..] == data[..], "the copy differs from the original");
        drop(copy);
        let _ = b.service.object_store().delete(id);
        let _ = a.service.object_store().delete(id);
        pulls.push(size as f64 / elapsed.as_secs_f64() / 1e9);
        sockets.push(size as f64 / tcp_loopback(size).await?.as_secs_f64() / 1e9);
    }
    let listed = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (pull_runs, socket_runs) = (listed(&pulls), listed(&sockets));
    let pull = median(&mut pulls);
    let socket = median(&mut sockets);
    let label = if size.is_multiple_of(1 << 30) {
        format!("{}GiB", size >> 30)
    } else {
        format!("{}MiB", size >> 20)
    };
    println!("node_to_node_transfer_{label} {pull:.3} GB/s  # runs: {pull_runs}");
    println!("tcp_loopback_socket_{label} {socket:.3} GB/s  # runs: {socket_runs}");
    println!("transfer_vs_socket_ratio {:.2}", pull / socket);
    a.stop().await;
    b.stop().await;
    let _ = gcs.stop().await;
    drop(scratch);
    Ok(())
}
