//! Nobody gets in without the cluster's token: every RPC of every service in `proto/`
//! refuses a call that carries no token, or another cluster's, with `Unauthenticated`; the
//! dangerous ones (write the GCS, change its membership, upload a binary and lease a worker
//! for it, detach a driver, kill a worker) change nothing.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use fleet_gcs::auth::{authed, AuthChannel, AuthInterceptor, ClusterToken, TokenSource};
use fleet_proto::gcs::gcs_client::GcsClient as GcsGrpc;
use fleet_proto::gcs::{ChangeMemberRequest, MemberChange};
use fleet_proto::runtime::core_worker_client::CoreWorkerClient;
use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::{
    AttachDriverRequest, BinaryChunk, ExitRequest, HasBinaryRequest, LeaseRequest, NodeInfoRequest,
};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Every `rpc` of every `service` in the `.proto` files, as `(service, "/pkg.Service/Rpc")`.
fn every_rpc() -> Result<Vec<(String, String)>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto");
    let mut rpcs = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("proto") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let mut package = String::new();
        let mut service = None::<String>;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("package ") {
                package = rest.trim_end_matches(';').trim().to_string();
            } else if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
            } else if line == "}" {
                service = None;
            } else if let (Some(service), Some(rest)) = (&service, line.strip_prefix("rpc ")) {
                let method = rest.split('(').next().unwrap_or_default().trim();
                rpcs.push((service.clone(), format!("/{package}.{service}/{method}")));
            }
        }
    }
    Ok(rpcs)
}

fn plain_channel(address: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy())
}

/// A channel presenting `token` (None: no token at all).
fn channel_with(address: &str, token: Option<&ClusterToken>) -> Result<AuthChannel> {
    Ok(InterceptedService::new(
        plain_channel(address)?,
        AuthInterceptor::new(token),
    ))
}

/// Calls `path` with an empty message; the status (or Ok), or a timeout after 3 s (a
/// stream that was let in and is waiting for more).
async fn call_raw(channel: AuthChannel, path: &str) -> Result<Result<(), tonic::Status>> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| anyhow!("{path}: {e}"))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = PathAndQuery::from_str(path)?;
    match tokio::time::timeout(
        Duration::from_secs(3),
        grpc.unary(tonic::Request::new(()), path, codec),
    )
    .await
    {
        Ok(result) => Ok(result.map(|_| ())),
        Err(_) => Ok(Err(tonic::Status::deadline_exceeded(
            "let in; still waiting",
        ))),
    }
}

fn refused(outcome: &Result<impl std::fmt::Debug, tonic::Status>) -> bool {
    matches!(outcome, Err(status) if status.code() == tonic::Code::Unauthenticated)
}

pub async fn strangers_are_refused_by_every_rpc_of_every_service() -> Result<()> {
    let address = fleet::cluster_address()?;
    let gcs = fleet_gcs::GcsClient::connect(&address)?;
    let gcs_address = address.split(',').next().unwrap_or_default().to_string();
    let node = gcs
        .list_nodes()
        .await?
        .into_iter()
        .next()
        .context("a node")?;
    // A live worker (an actor's) and this driver's own core worker.
    let actor = super::Log::remote().spawn().await?;
    actor.push(1).await?;
    let actor_info = gcs
        .get_actor(actor.raw().actor_id())
        .await?
        .context("the actor's record")?;
    let job = gcs
        .list_jobs()
        .await?
        .into_iter()
        .find(|j| j.state == fleet_proto::gcs::JobState::JobRunning as i32)
        .context("this driver's job")?;
    let servers: BTreeMap<&str, Vec<String>> = BTreeMap::from([
        ("Gcs", vec![gcs_address.clone()]),
        ("RaftTransport", vec![gcs_address.clone()]),
        ("Raylet", vec![node.address.clone()]),
        (
            "CoreWorker",
            vec![actor_info.address.clone(), job.driver_address.clone()],
        ),
    ]);
    let stranger =
        ClusterToken::parse(&"f".repeat(64), TokenSource::Environment).map_err(|e| anyhow!(e))?;
    let rpcs = every_rpc()?;
    let mut checked = 0;
    for (service, path) in &rpcs {
        let Some(addresses) = servers.get(service.as_str()) else {
            // etcd's KV: the peer `fleet bench gcs` talks to, not a Fleet service.
            ensure!(
                service == "KV",
                "no server known for service {service}; add it here"
            );
            continue;
        };
        for address in addresses {
            for (who, token) in [("no token", None), ("a wrong token", Some(&stranger))] {
                let outcome = call_raw(channel_with(address, token)?, path).await?;
                ensure!(
                    refused(&outcome),
                    "{path} at {address} with {who}: expected Unauthenticated, got {outcome:?}"
                );
                checked += 1;
            }
        }
    }
    ensure!(
        checked >= 2 * 30,
        "only {checked} refusals checked: the proto parse missed RPCs"
    );

    // The same paths with the right token are let in (so the refusals above were the
    // token's doing, not a wrong path): anything but Unauthenticated and Unimplemented.
    // Exit is left out: it would stop the worker it reached.
    for (service, path) in &rpcs {
        let Some(addresses) = servers.get(service.as_str()) else {
            continue;
        };
        if path.ends_with("/Exit") {
            continue;
        }
        let address = &addresses[0];
        let outcome = call_raw(authed(plain_channel(address)?), path).await?;
        ensure!(
            !refused(&outcome)
                && !matches!(&outcome, Err(s) if s.code() == tonic::Code::Unimplemented),
            "{path} at {address} with the cluster's token: {outcome:?}"
        );
    }

    // Changes nothing: a GCS write...
    let key = b"written-by-a-stranger";
    let mut stranger_gcs = GcsGrpc::new(channel_with(&gcs_address, Some(&stranger))?);
    let members_before = gcs.replica_status(&gcs_address).await?.members;
    let change = stranger_gcs
        .change_member(ChangeMemberRequest {
            change: MemberChange::AddVoter as i32,
            id: 99,
            address: "127.0.0.1:1".into(),
        })
        .await;
    ensure!(refused(&change), "ChangeMember: {change:?}");
    ensure!(
        gcs.replica_status(&gcs_address).await?.members == members_before,
        "the membership is unchanged"
    );
    let stranger_client = fleet_gcs::GcsClient::with_connector(
        vec![gcs_address.clone()],
        std::sync::Arc::new(StrangerConnector(stranger.clone())),
        fleet_gcs::client::ClientOptions::default(),
    );
    match stranger_client.kv_put("stranger", key, b"x").await {
        Err(fleet_gcs::Error::Unauthenticated { message, .. }) => ensure!(
            message.contains(&stranger.fingerprint()),
            "the refusal names the token presented: {message}"
        ),
        other => return Err(anyhow!("a stranger's KV write: {other:?}")),
    }
    ensure!(
        gcs.kv_get("stranger", key).await?.is_none(),
        "nothing written"
    );

    // ...an upload and a lease for it (what would run a stranger's code on the node)...
    let mut stranger_raylet = RayletClient::new(channel_with(&node.address, Some(&stranger))?);
    let digest = "0".repeat(64);
    let chunks = futures_stream(vec![BinaryChunk {
        digest: digest.clone(),
        data: b"#!/bin/sh\necho owned\n".to_vec(),
    }]);
    let upload = stranger_raylet.upload_binary(chunks).await;
    ensure!(refused(&upload), "UploadBinary: {upload:?}");
    let mut raylet = RayletClient::new(authed(plain_channel(&node.address)?));
    ensure!(
        !raylet
            .has_binary(HasBinaryRequest {
                digest: digest.clone()
            })
            .await?
            .into_inner()
            .present,
        "no binary was stored"
    );
    let before = raylet.node_info(NodeInfoRequest {}).await?.into_inner();
    let lease = stranger_raylet
        .request_worker_lease(LeaseRequest {
            resources: [("CPU".to_string(), 1.0)].into(),
            job_id: job.job_id.clone(),
            job_binary: digest,
            ..Default::default()
        })
        .await;
    ensure!(refused(&lease), "RequestWorkerLease: {lease:?}");
    let after = raylet.node_info(NodeInfoRequest {}).await?.into_inner();
    ensure!(
        after.leased_workers == before.leased_workers && after.available == before.available,
        "no worker was leased"
    );

    // ...a driver attachment that would fail the job when dropped...
    let attach = stranger_raylet
        .attach_driver(AttachDriverRequest {
            job_id: job.job_id.clone(),
            driver_address: "127.0.0.1:1".into(),
        })
        .await;
    ensure!(refused(&attach), "AttachDriver: {attach:?}");
    drop(stranger_raylet);

    // ...and an Exit to a worker.
    let mut stranger_worker =
        CoreWorkerClient::new(channel_with(&actor_info.address, Some(&stranger))?);
    let exit = stranger_worker.exit(ExitRequest::default()).await;
    ensure!(refused(&exit), "Exit: {exit:?}");
    let stop = stranger_worker
        .exit(ExitRequest {
            actor_id: actor.raw().actor_id().to_string(),
        })
        .await;
    ensure!(refused(&stop), "Exit of one actor: {stop:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(actor.push(2).await? == 2, "the actor's worker still serves");
    let job_now = gcs
        .list_jobs()
        .await?
        .into_iter()
        .find(|j| j.job_id == job.job_id)
        .context("the job")?;
    ensure!(
        job_now.state == fleet_proto::gcs::JobState::JobRunning as i32,
        "the job still runs"
    );
    actor.raw().kill().await?;
    println!(
        "  {checked} calls without the token or with a wrong one refused, over {} RPCs",
        rpcs.len()
    );
    Ok(())
}

fn futures_stream<T: Send + 'static>(items: Vec<T>) -> impl tokio_stream::Stream<Item = T> {
    tokio_stream::iter(items)
}

/// A connector presenting another cluster's token.
struct StrangerConnector(ClusterToken);

impl fleet_gcs::transport::Connector for StrangerConnector {
    fn channel(&self, address: &str) -> Result<AuthChannel, String> {
        channel_with(address, Some(&self.0)).map_err(|e| e.to_string())
    }
}
