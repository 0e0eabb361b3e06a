//! [`GcsClient`]: what raylets, drivers and the CLI use to talk to the control store.
//!
//! It finds the leader (following the `x-fleet-leader` hint of a follower's answer), retries
//! with capped exponential backoff across leader changes and dead replicas, and makes retried
//! writes idempotent: every write carries (client id, sequence number), which the state
//! machine deduplicates, so a write retried after a leader crash is applied once.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::AuthChannel;
use fleet_proto::gcs::command::Op;
use fleet_proto::gcs::gcs_client::GcsClient as GcsGrpc;
use fleet_proto::gcs::{
    ActorInfo, ChangeMemberRequest, CheckpointInfo, Command, CommitCheckpoint, FinishJob, JobInfo,
    JobState, KvDelete, KvPut, MarkNodeDead, Member, MemberChange, NodeInfo, ObjectInfo,
    ObjectLocationBatch, ObjectLocationUpdate, PlacementGroupInfo, ReadRequest, ReadResponse,
    Record, RejectCode, RemovePlacementGroup, StatusRequest, StatusResponse, Table, TaskEvent,
    TaskEventBatch, UpdateActor, UpdatePlacementGroup, WatchEvent, WatchFilter, WatchRequest,
    WatchResponse, WriteRequest,
};
use tonic::{Code, Status, Streaming};

use crate::error::{Error, Result, LEADER_METADATA_KEY};
use crate::transport::{Connector, ControlStoreConnector, MAX_MESSAGE_BYTES};

/// How hard the client tries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Give up on a request after this long (then `Error::Unavailable`).
    pub deadline: Duration,
    /// First backoff between rounds over the replicas.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Limit on one RPC.
    pub rpc_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            deadline: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            rpc_timeout: Duration::from_secs(10),
        }
    }
}

struct Inner {
    endpoints: Vec<String>,
    connector: Arc<dyn Connector>,
    channels: Mutex<HashMap<String, GcsGrpc<AuthChannel>>>,
    leader: Mutex<Option<String>>,
    next_endpoint: AtomicUsize,
    client_id: u64,
    next_seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
    options: ClientOptions,
}

/// A handle to a GCS cluster; cheap to clone (clones share the session and connections).
#[derive(Clone)]
pub struct GcsClient {
    inner: Arc<Inner>,
}

/// A change stream update.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchUpdate {
    /// The events are a full snapshot of the watched records: replace the local view.
    pub resync: bool,
    /// Changes (or, on resync, current records) in version order.
    pub events: Vec<WatchEvent>,
    /// Everything up to this version has been delivered.
    pub version: u64,
}

/// Splits `host:port,host:port` (the `--address` / `FLEET_ADDRESS` form).
pub fn parse_endpoints(spec: &str) -> Result<Vec<String>> {
    let endpoints: Vec<String> = spec
        .split(',')
        .map(|s| s.trim().trim_start_matches("http://").to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(Error::InvalidConfig {
            field: "--address",
            reason:
                "no GCS address given; pass --address HOST:PORT[,HOST:PORT...] or set FLEET_ADDRESS"
                    .into(),
        });
    }
    for endpoint in &endpoints {
        if !endpoint.contains(':') {
            return Err(Error::InvalidConfig {
                field: "--address",
                reason: format!("'{endpoint}' is not HOST:PORT"),
            });
        }
    }
    Ok(endpoints)
}

fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn decode<T: prost::Message + Default>(record: &Record) -> Result<T> {
    T::decode(record.value.as_slice()).map_err(|e| Error::BadResponse {
        endpoint: String::new(),
        reason: format!(
            "undecodable record {}: {e}",
            String::from_utf8_lossy(&record.key)
        ),
    })
}

impl GcsClient {
    /// A client for the cluster at `addresses` (comma-separated `HOST:PORT`s).
    pub fn connect(addresses: &str) -> Result<Self> {
        Self::connect_with(addresses, ClientOptions::default())
    }

    /// Like [`GcsClient::connect`], with options.
    pub fn connect_with(addresses: &str, options: ClientOptions) -> Result<Self> {
        Ok(Self::with_connector(
            parse_endpoints(addresses)?,
            Arc::new(ControlStoreConnector),
            options,
        ))
    }

    /// A client over a given connector (simulation) with given options.
    pub fn with_connector(
        endpoints: Vec<String>,
        connector: Arc<dyn Connector>,
        options: ClientOptions,
    ) -> Self {
        GcsClient {
            inner: Arc::new(Inner {
                endpoints,
                connector,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                next_endpoint: AtomicUsize::new(0),
                client_id: rand::random::<u64>() | 1,
                next_seq: AtomicU64::new(1),
                in_flight: Mutex::new(BTreeSet::new()),
                options,
            }),
        }
    }

    /// This client's session id.
    pub fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    /// The replicas this client knows.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    fn grpc(&self, endpoint: &str) -> Result<GcsGrpc<AuthChannel>> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(client) = channels.get(endpoint) {
            return Ok(client.clone());
        }
        let channel =
            self.inner
                .connector
                .channel(endpoint)
                .map_err(|reason| Error::InvalidConfig {
                    field: "--address",
                    reason,
                })?;
        let client = GcsGrpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::transport::MAX_CLIENT_REQUEST_BYTES);
        channels.insert(endpoint.to_string(), client.clone());
        Ok(client)
    }

    fn pick_endpoint(&self) -> String {
        if let Some(leader) = self
            .inner
            .leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return leader;
        }
        let i = self.inner.next_endpoint.fetch_add(1, Ordering::Relaxed);
        // An empty list (only possible through `with_connector`) fails at connect time with a
        // named error rather than here with a division by zero.
        let count = self.inner.endpoints.len().max(1);
        self.inner
            .endpoints
            .get(i % count)
            .cloned()
            .unwrap_or_default()
    }

    /// Drops the cached channel to `endpoint`: a call that timed out may sit on a connection
    /// that a partition stalled, and the next one must open a new connection instead.
    fn forget_channel(&self, endpoint: &str) {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(endpoint);
    }

    fn current_leader(&self) -> Option<String> {
        self.inner
            .leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn forget_leader(&self, endpoint: &str) {
        let mut leader = self.inner.leader.lock().unwrap_or_else(|e| e.into_inner());
        if leader.as_deref() == Some(endpoint) {
            *leader = None;
        }
    }

    /// Runs `call` against the leader, retrying across leader changes until the deadline.
    async fn with_leader<T, F, Fut>(&self, what: &'static str, mut call: F) -> Result<T>
    where
        F: FnMut(GcsGrpc<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let options = &self.inner.options;
        let started = Instant::now();
        let mut backoff = options.initial_backoff;
        let mut last_error;
        let mut failures_this_round = 0usize;
        loop {
            let endpoint = self.pick_endpoint();
            let client = self.grpc(&endpoint)?;
            let outcome = tokio::time::timeout(options.rpc_timeout, call(client)).await;
            let status = match outcome {
                Ok(Ok(value)) => {
                    *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint);
                    return Ok(value);
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    self.forget_channel(&endpoint);
                    Status::deadline_exceeded(format!(
                        "{what}: no answer in {:?}",
                        options.rpc_timeout
                    ))
                }
            };
            match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted => {}
                Code::InvalidArgument => {
                    return Err(Error::InvalidRequest(status.message().to_string()))
                }
                // Another replica would say the same: the token is the cluster's.
                Code::Unauthenticated => {
                    return Err(Error::Unauthenticated {
                        endpoint,
                        message: status.message().to_string(),
                    })
                }
                _ => {
                    return Err(Error::Rpc {
                        endpoint,
                        status: Box::new(status),
                    });
                }
            }
            last_error = format!("{endpoint}: {}", status.message());
            self.forget_leader(&endpoint);
            let hint = leader_hint(&status).filter(|h| *h != endpoint);
            if started.elapsed() >= options.deadline {
                return Err(Error::Unavailable {
                    endpoints: self.inner.endpoints.join(","),
                    millis: started.elapsed().as_millis() as u64,
                    last_error,
                });
            }
            if let Some(hint) = hint {
                *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) = Some(hint);
                continue;
            }
            failures_this_round += 1;
            if failures_this_round >= self.inner.endpoints.len() {
                failures_this_round = 0;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(options.max_backoff);
            }
        }
    }

    /// Replicates a command (exactly once, across retries). Returns the version it applied at.
    pub async fn write(&self, op: Op) -> Result<u64> {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq);
        let command = Command { op: Some(op) };
        let result = self
            .with_leader("write", |mut client| {
                let first_unacked = self
                    .inner
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .first()
                    .copied()
                    .unwrap_or(seq);
                let request = WriteRequest {
                    client_id: self.inner.client_id,
                    seq,
                    first_unacked,
                    command: Some(command.clone()),
                };
                async move { client.write(request).await.map(|r| r.into_inner()) }
            })
            .await;
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
        let response = result?;
        match response.rejection {
            None => Ok(response.version),
            Some(rejection) => Err(Error::Rejected {
                code: RejectCode::try_from(rejection.code).unwrap_or(RejectCode::Unspecified),
                message: rejection.message,
                current: rejection.current.map(Box::new),
            }),
        }
    }

    /// A linearizable read (or, with `stale_ok`, one from whichever replica answers).
    pub async fn read(&self, request: ReadRequest) -> Result<ReadResponse> {
        self.with_leader("read", |mut client| {
            let request = request.clone();
            async move { client.read(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    async fn read_table<T: prost::Message + Default>(
        &self,
        table: Table,
        key: &str,
        prefix: bool,
    ) -> Result<Vec<T>> {
        let response = self
            .read(ReadRequest {
                table: table as i32,
                key: key.as_bytes().to_vec(),
                prefix,
                ..ReadRequest::default()
            })
            .await?;
        response.records.iter().map(decode).collect()
    }

    // ----- KV -----

    /// Puts a value.
    pub async fn kv_put(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<u64> {
        self.write(Op::KvPut(KvPut {
            namespace: namespace.into(),
            key: key.to_vec(),
            value: value.to_vec(),
            ..KvPut::default()
        }))
        .await
    }

    /// Puts a value only when the key is at `expected_version` (0: absent).
    pub async fn kv_compare_and_set(
        &self,
        namespace: &str,
        key: &[u8],
        value: &[u8],
        expected_version: u64,
    ) -> Result<u64> {
        self.write(Op::KvPut(KvPut {
            namespace: namespace.into(),
            key: key.to_vec(),
            value: value.to_vec(),
            expected_version: Some(expected_version),
            ..KvPut::default()
        }))
        .await
    }

    /// Reads one key.
    pub async fn kv_get(&self, namespace: &str, key: &[u8]) -> Result<Option<Record>> {
        let response = self
            .read(ReadRequest {
                table: Table::Kv as i32,
                namespace: namespace.into(),
                key: key.to_vec(),
                ..ReadRequest::default()
            })
            .await?;
        Ok(response.records.into_iter().next())
    }

    /// Lists keys starting with `prefix`.
    pub async fn kv_list(&self, namespace: &str, prefix: &[u8]) -> Result<Vec<Record>> {
        let response = self
            .read(ReadRequest {
                table: Table::Kv as i32,
                namespace: namespace.into(),
                key: prefix.to_vec(),
                prefix: true,
                ..ReadRequest::default()
            })
            .await?;
        Ok(response.records)
    }

    /// Deletes a key (or, with `prefix`, every key starting with it).
    pub async fn kv_delete(&self, namespace: &str, key: &[u8], prefix: bool) -> Result<u64> {
        self.write(Op::KvDelete(KvDelete {
            namespace: namespace.into(),
            key: key.to_vec(),
            prefix,
        }))
        .await
    }

    // ----- nodes, jobs -----

    /// Registers (or re-registers) a live node.
    pub async fn register_node(&self, node: NodeInfo) -> Result<u64> {
        self.write(Op::RegisterNode(node)).await
    }

    /// Declares a node dead.
    pub async fn mark_node_dead(&self, node_id: &str, cause: &str) -> Result<u64> {
        self.write(Op::MarkNodeDead(MarkNodeDead {
            node_id: node_id.into(),
            cause: cause.into(),
        }))
        .await
    }

    /// All nodes.
    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>> {
        self.read_table(Table::Nodes, "", true).await
    }

    /// Adds a running job.
    pub async fn add_job(&self, job: JobInfo) -> Result<u64> {
        self.write(Op::AddJob(job)).await
    }

    /// Marks a running job finished.
    pub async fn finish_job(
        &self,
        job_id: &str,
        state: JobState,
        end_ms: u64,
        message: &str,
    ) -> Result<u64> {
        self.write(Op::FinishJob(FinishJob {
            job_id: job_id.into(),
            state: state as i32,
            end_ms,
            message: message.into(),
        }))
        .await
    }

    /// Marks the job's actors that are not detached DEAD with `cause` (the job ended: its
    /// workers are stopped); returns how many.
    pub async fn mark_job_actors_dead(&self, job_id: &str, cause: &str) -> Result<usize> {
        use fleet_proto::gcs::ActorState;
        let mut marked = 0;
        for actor in self.list_actors().await? {
            if actor.job_id != job_id
                || actor.detached
                || actor.state == ActorState::ActorDead as i32
            {
                continue;
            }
            let update = UpdateActor {
                actor_id: actor.actor_id.clone(),
                expected_state: actor.state,
                new_state: ActorState::ActorDead as i32,
                death_cause: cause.to_string(),
                ..UpdateActor::default()
            };
            // Rejected: it changed meanwhile (killed, restarted); nothing to do.
            if self.update_actor(update).await.is_ok() {
                marked += 1;
            }
        }
        Ok(marked)
    }

    /// One job.
    pub async fn get_job(&self, job_id: &str) -> Result<Option<JobInfo>> {
        Ok(self.read_table(Table::Jobs, job_id, false).await?.pop())
    }

    /// All jobs.
    pub async fn list_jobs(&self) -> Result<Vec<JobInfo>> {
        self.read_table(Table::Jobs, "", true).await
    }

    // ----- actors -----

    /// Registers a PENDING actor (its name, if any, must be free in its namespace).
    pub async fn register_actor(&self, actor: ActorInfo) -> Result<u64> {
        self.write(Op::RegisterActor(actor)).await
    }

    /// Compare-and-set on an actor's state.
    pub async fn update_actor(&self, update: UpdateActor) -> Result<u64> {
        self.write(Op::UpdateActor(update)).await
    }

    /// One actor.
    pub async fn get_actor(&self, actor_id: &str) -> Result<Option<ActorInfo>> {
        Ok(self.read_table(Table::Actors, actor_id, false).await?.pop())
    }

    /// All actors.
    pub async fn list_actors(&self) -> Result<Vec<ActorInfo>> {
        self.read_table(Table::Actors, "", true).await
    }

    /// The live actor with this name in this namespace (one lookup in the GCS's name index).
    pub async fn get_named_actor(&self, namespace: &str, name: &str) -> Result<Option<ActorInfo>> {
        let response = self
            .read(ReadRequest {
                table: Table::Actors as i32,
                namespace: namespace.into(),
                key: name.as_bytes().to_vec(),
                by_name: true,
                ..ReadRequest::default()
            })
            .await?;
        Ok(response
            .records
            .iter()
            .map(decode::<ActorInfo>)
            .collect::<Result<Vec<_>>>()?
            .pop())
    }

    // ----- placement groups -----

    /// Creates a PENDING placement group.
    pub async fn create_placement_group(&self, group: PlacementGroupInfo) -> Result<u64> {
        self.write(Op::CreatePlacementGroup(group)).await
    }

    /// Compare-and-set on a placement group's state (and bundles).
    pub async fn update_placement_group(&self, update: UpdatePlacementGroup) -> Result<u64> {
        self.write(Op::UpdatePlacementGroup(update)).await
    }

    /// Marks a placement group removed.
    pub async fn remove_placement_group(&self, id: &str) -> Result<u64> {
        self.write(Op::RemovePlacementGroup(RemovePlacementGroup {
            placement_group_id: id.into(),
        }))
        .await
    }

    /// One placement group.
    pub async fn get_placement_group(&self, id: &str) -> Result<Option<PlacementGroupInfo>> {
        Ok(self
            .read_table(Table::PlacementGroups, id, false)
            .await?
            .into_iter()
            .next())
    }

    /// All placement groups.
    pub async fn list_placement_groups(&self) -> Result<Vec<PlacementGroupInfo>> {
        self.read_table(Table::PlacementGroups, "", true).await
    }

    // ----- objects, task events, checkpoints -----

    /// Applies a batch of object location changes in one proposal.
    pub async fn update_object_locations(&self, updates: Vec<ObjectLocationUpdate>) -> Result<u64> {
        self.write(Op::ObjectLocations(ObjectLocationBatch { updates }))
            .await
    }

    /// One object's locations.
    pub async fn get_object(&self, object_id: &str) -> Result<Option<ObjectInfo>> {
        Ok(self
            .read_table(Table::Objects, object_id, false)
            .await?
            .pop())
    }

    /// All objects.
    pub async fn list_objects(&self) -> Result<Vec<ObjectInfo>> {
        self.read_table(Table::Objects, "", true).await
    }

    /// Records a batch of task events in one proposal.
    pub async fn add_task_events(&self, events: Vec<TaskEvent>) -> Result<u64> {
        self.write(Op::TaskEvents(TaskEventBatch { events })).await
    }

    /// Task events, oldest task id first.
    pub async fn list_task_events(&self) -> Result<Vec<TaskEvent>> {
        self.read_table(Table::TaskEvents, "", true).await
    }

    /// Commits a checkpoint pointer (refused unless newer than the committed one).
    pub async fn commit_checkpoint(&self, checkpoint: CheckpointInfo) -> Result<u64> {
        self.write(Op::CommitCheckpoint(CommitCheckpoint {
            checkpoint: Some(checkpoint),
        }))
        .await
    }

    /// The latest committed checkpoint of an owner.
    pub async fn latest_checkpoint(&self, owner_id: &str) -> Result<Option<CheckpointInfo>> {
        Ok(self
            .read_table(Table::Checkpoints, owner_id, false)
            .await?
            .pop())
    }

    // ----- operations -----

    /// The status one replica reports of itself (no leader redirection).
    pub async fn replica_status(&self, endpoint: &str) -> Result<StatusResponse> {
        let mut client = self.grpc(endpoint)?;
        let timeout = self.inner.options.rpc_timeout.min(Duration::from_secs(3));
        match tokio::time::timeout(timeout, client.status(StatusRequest {})).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::Rpc {
                endpoint: endpoint.into(),
                status: Box::new(status),
            }),
            Err(_) => Err(Error::Timeout {
                what: "a status answer",
                millis: timeout.as_millis() as u64,
            }),
        }
    }

    /// Adds or removes a member through the leader; returns the new membership.
    pub async fn change_member(
        &self,
        change: MemberChange,
        id: u64,
        address: &str,
    ) -> Result<Vec<Member>> {
        let request = ChangeMemberRequest {
            change: change as i32,
            id,
            address: address.into(),
        };
        self.with_leader("member change", |mut client| {
            let request = request.clone();
            async move {
                client
                    .change_member(request)
                    .await
                    .map(|r| r.into_inner().members)
            }
        })
        .await
    }

    /// Watches changes matching `filters` from `start_version` (0: a snapshot first).
    pub fn watch(&self, filters: Vec<WatchFilter>, start_version: u64) -> WatchStream {
        WatchStream {
            client: self.clone(),
            filters,
            next_version: start_version,
            stream: None,
            serving: None,
        }
    }
}

/// A watch stream that hears nothing (not even the leader's progress reports, sent every
/// 500 ms) for this long is presumed cut off, dropped, and resumed at another replica.
pub const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A watch that survives leader changes: when its stream breaks it reconnects to the
/// (new) leader and resumes from the version after the last one delivered, so no change is
/// lost or delivered twice.
pub struct WatchStream {
    client: GcsClient,
    filters: Vec<WatchFilter>,
    next_version: u64,
    stream: Option<Streaming<WatchResponse>>,
    /// The replica serving `stream`.
    serving: Option<String>,
}

impl WatchStream {
    /// The version the next update will start at.
    pub fn next_version(&self) -> u64 {
        self.next_version
    }

    /// The next update (events or a resync); empty progress reports are skipped.
    pub async fn next(&mut self) -> Result<WatchUpdate> {
        loop {
            if self.stream.is_none() {
                let request = WatchRequest {
                    filters: self.filters.clone(),
                    start_version: self.next_version,
                };
                let stream = self
                    .client
                    .with_leader("watch", |mut client| {
                        let request = request.clone();
                        async move { client.watch(request).await.map(|r| r.into_inner()) }
                    })
                    .await?;
                self.stream = Some(stream);
                self.serving = self.client.current_leader();
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let message = match tokio::time::timeout(WATCH_IDLE_TIMEOUT, stream.message()).await {
                Ok(message) => message,
                Err(_) => {
                    // A leader partitioned away (or frozen) keeps the stream open and silent;
                    // its replacement is elsewhere.
                    if let Some(serving) = self.serving.take() {
                        tracing::info!(replica = %serving, "watch silent for {WATCH_IDLE_TIMEOUT:?}; resuming at another replica");
                        self.client.forget_leader(&serving);
                        self.client.forget_channel(&serving);
                    }
                    self.stream = None;
                    continue;
                }
            };
            match message {
                Ok(Some(response)) => {
                    // Drop events already delivered (a resumed stream never repeats them, this
                    // only guards against a server that would).
                    let events: Vec<WatchEvent> = if response.resync {
                        response.events
                    } else {
                        response
                            .events
                            .into_iter()
                            .filter(|e| e.version >= self.next_version)
                            .collect()
                    };
                    self.next_version = response.version + 1;
                    if events.is_empty() && !response.resync {
                        continue;
                    }
                    return Ok(WatchUpdate {
                        resync: response.resync,
                        events,
                        version: response.version,
                    });
                }
                Ok(None) | Err(_) => {
                    self.stream = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}
