//! `fleet bench channel`: `fleet::channel` throughput on a real two-node cluster (one GCS
//! replica and two raylets started as daemons on loopback, this binary as driver and
//! workers), each figure next to its bound measured in the same run:
//! - same node (Unix socket between the driver and an actor on its node), 1 MiB messages,
//!   against memcpy of the same messages into fresh buffers (what a receiver that gets its
//!   own copy must do at least);
//! - across nodes (TCP to an actor on the other node), against one plain TCP socket on
//!   loopback carrying the same bytes;
//! - small messages (u64, sent in batches) per second.

use std::time::{Duration, Instant};

use anyhow::Context;
use fleet::{Receiver, Scheduling};
use fleet_cluster::{ClusterConfig, LocalCluster};

#[fleet::actor]
pub struct ChannelSink {
    received: u64,
}

#[fleet::actor]
impl ChannelSink {
    pub fn new() -> Self {
        ChannelSink { received: 0 }
    }

    pub fn node(&self) -> String {
        fleet::node_id()
    }

    /// Receives byte vectors until the sender closes; returns the bytes.
    pub async fn drain_bytes(&mut self, mut rx: Receiver<Vec<u8>>) -> Result<u64, String> {
        let mut bytes = 0u64;
        while let Some(message) = rx.recv().await.map_err(|e| e.to_string())? {
            bytes += message.len() as u64;
        }
        self.received += bytes;
        Ok(bytes)
    }

    /// Receives byte vectors where they lie (`recv_with`: no copy of their own) until the
    /// sender closes; returns the bytes.
    pub async fn drain_in_place(&mut self, mut rx: Receiver<Vec<u8>>) -> Result<u64, String> {
        let mut bytes = 0u64;
        while let Some(len) = rx
            .recv_with(|message: &[u8]| {
                // Touch every cache line, as a consumer would read it.
                let mut check = 0u8;
                for line in message.chunks(64) {
                    check ^= line[0];
                }
                std::hint::black_box(check);
                message.len()
            })
            .await
            .map_err(|e| e.to_string())?
        {
            bytes += len as u64;
        }
        self.received += bytes;
        Ok(bytes)
    }

    /// Receives numbers until the sender closes; returns how many.
    pub async fn count(&mut self, mut rx: Receiver<u64>) -> Result<u64, String> {
        let mut count = 0u64;
        while rx.recv().await.map_err(|e| e.to_string())?.is_some() {
            count += 1;
        }
        self.received += count;
        Ok(count)
    }
}

/// Two nodes of 2 CPUs, one GCS replica (also the collective benchmark's cluster).
pub(crate) const CONFIG: &str = r#"
name = "bench-channel"
ready_timeout_secs = 90

[gcs]
replicas = 1
base_port = 0
fsync = false

[[nodes]]
num_cpus = 2
num_gpus = 0

[[nodes]]
num_cpus = 2
num_gpus = 0
"#;

/// The benchmark's cluster directory, removed at the end.
pub(crate) struct Scratch(pub(crate) std::path::PathBuf);

impl Scratch {
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Options of `fleet bench channel`.
pub struct ChannelBench {
    pub message_bytes: usize,
    pub messages: usize,
    pub small_messages: usize,
    pub repeat: usize,
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// memcpy of `messages` messages of `size` bytes, each into a fresh buffer, in GB/s.
fn memcpy_gbps(size: usize, messages: usize) -> f64 {
    let source: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let started = Instant::now();
    let mut check = 0u64;
    for _ in 0..messages {
        let mut copy = Vec::<u8>::with_capacity(size);
        copy.extend_from_slice(&source);
        check += u64::from(copy[size / 2]);
        std::hint::black_box(&copy);
    }
    std::hint::black_box(check);
    (size * messages) as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// One TCP socket on loopback carrying `messages` writes of `size` bytes, in GB/s.
pub(crate) async fn tcp_gbps(size: usize, messages: usize) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut buffer = vec![0u8; size];
        for _ in 0..messages {
            socket.read_exact(&mut buffer).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let data = vec![7u8; size];
    let started = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(address).await?;
    socket.set_nodelay(true)?;
    for _ in 0..messages {
        socket.write_all(&data).await?;
    }
    reader.await??;
    Ok((size * messages) as f64 / started.elapsed().as_secs_f64() / 1e9)
}

pub(crate) async fn sink_on(node: &str) -> anyhow::Result<ChannelSinkHandle> {
    let sink = ChannelSink::remote()
        .scheduling(Scheduling::NodeAffinity {
            node_id: node.into(),
            soft: false,
        })
        .spawn()
        .await?;
    let placed = sink.node().await?;
    anyhow::ensure!(placed == node, "the sink landed on {placed}, not {node}");
    Ok(sink)
}

/// Streams `messages` vectors of `size` bytes to `sink`; GB/s from the first send to the
/// sink's answer that it received them all.
async fn channel_gbps(
    sink: &ChannelSinkHandle,
    size: usize,
    messages: usize,
    in_place: bool,
) -> anyhow::Result<f64> {
    let (mut tx, rx) = fleet::channel::<Vec<u8>>(8);
    let drained = if in_place {
        sink.drain_in_place(rx)
    } else {
        sink.drain_bytes(rx)
    };
    let template = vec![3u8; size];
    // The first message connects (GCS lookup, handshake): not part of the rate.
    tx.send_ref(&template).await?;
    let started = Instant::now();
    for _ in 1..messages {
        if in_place {
            tx.send_slice(&template).await?;
        } else {
            tx.send_ref(&template).await?;
        }
    }
    tx.close().await?;
    let bytes = drained.await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        bytes == (size * messages) as u64,
        "the sink received {bytes} bytes of {}",
        size * messages
    );
    Ok((size * (messages - 1)) as f64 / elapsed.as_secs_f64() / 1e9)
}

async fn small_messages_per_s(sink: &ChannelSinkHandle, count: usize) -> anyhow::Result<f64> {
    let (mut tx, rx) = fleet::channel::<u64>(4096);
    let counted = sink.count(rx);
    tx.send(0).await?;
    let started = Instant::now();
    let mut next = 1u64;
    while (next as usize) < count {
        let end = (next + 1024).min(count as u64);
        tx.send_batch(next..end).await?;
        next = end;
    }
    tx.close().await?;
    let received = counted.await?;
    anyhow::ensure!(received == count as u64, "{received} of {count} arrived");
    Ok((count - 1) as f64 / started.elapsed().as_secs_f64())
}

/// Runs the benchmark; prints `name value unit` lines (medians over `repeat` rounds).
pub async fn run(options: ChannelBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.message_bytes > 0 && options.messages > 1 && options.small_messages > 1,
        "--message-bytes must be positive, --messages and --small-messages at least 2"
    );
    let (home, cluster) = two_node_cluster("channel").await?;
    let outcome = measure(&options).await;
    fleet::shutdown().await;
    drop(cluster);
    drop(home);
    outcome
}

/// Starts the two-node loopback cluster (in a scratch directory, removed when dropped,
/// after the cluster) and attaches this process to it as a driver on node-0.
pub(crate) async fn two_node_cluster(
    bench: &str,
) -> anyhow::Result<(Scratch, fleet_cluster::ClusterHandle)> {
    let home =
        Scratch(std::env::temp_dir().join(format!("fleet-bench-{bench}-{}", std::process::id())));
    std::fs::create_dir_all(home.path())?;
    let config = ClusterConfig::from_toml_str(CONFIG, &format!("the {bench} benchmark's cluster"))?;
    let binary = std::env::current_exe()?;
    let mut cluster = LocalCluster::up(&config, &binary, &home.path().join("cluster"))
        .await
        .context("starting a two-node cluster on loopback")?;
    cluster.set_stop_on_drop(true);
    std::env::set_var("FLEET_NODE_ID", "node-0");
    fleet::init_with(fleet::InitOptions {
        address: Some(cluster.address().to_string()),
        ..Default::default()
    })
    .await?;
    Ok((home, cluster))
}

async fn measure(options: &ChannelBench) -> anyhow::Result<()> {
    let local = sink_on("node-0").await?;
    let remote = sink_on("node-1").await?;
    let (size, messages) = (options.message_bytes, options.messages);
    let (mut memcpy, mut same, mut in_place, mut tcp, mut cross, mut small) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for _ in 0..options.repeat.max(1) {
        memcpy.push(memcpy_gbps(size, messages));
        same.push(channel_gbps(&local, size, messages, false).await?);
        in_place.push(channel_gbps(&local, size, messages, true).await?);
        tcp.push(tcp_gbps(size, messages).await?);
        cross.push(channel_gbps(&remote, size, messages, false).await?);
        small.push(small_messages_per_s(&local, options.small_messages).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let label = if size == 1 << 20 {
        "1MiB".to_string()
    } else {
        format!("{size}B")
    };
    let (memcpy, same, in_place, tcp, cross, small) = (
        median(&mut memcpy),
        median(&mut same),
        median(&mut in_place),
        median(&mut tcp),
        median(&mut cross),
        median(&mut small),
    );
    println!("memcpy_{label}_gbps {memcpy:.3} GB/s");
    println!("channel_same_node_{label}_gbps {same:.3} GB/s");
    println!("channel_same_node_vs_memcpy {:.3} ratio", same / memcpy);
    println!("channel_same_node_in_place_{label}_gbps {in_place:.3} GB/s");
    println!(
        "channel_same_node_in_place_vs_memcpy {:.3} ratio",
        in_place / memcpy
    );
    println!("tcp_loopback_{label}_gbps {tcp:.3} GB/s");
    println!("channel_cross_node_{label}_gbps {cross:.3} GB/s");
    println!("channel_cross_node_vs_tcp {:.3} ratio", cross / tcp);
    println!("channel_small_msgs_per_s {small:.0} msgs/s");
    Ok(())
}
