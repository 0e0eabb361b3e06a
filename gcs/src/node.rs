//! The Raft driver: one task owns the `RawNode` (raft-rs's decision logic, no I/O) and does
//! the I/O it asks for, in the order raft-rs requires: send messages, apply a snapshot, apply
//! committed entries, persist new entries and the hard state (fsync), send the messages that
//! needed that persistence, advance.
//!
//! Everything reaches the driver through bounded channels: client proposals and reads
//! ([`NodeRequest`]), peer messages, and transport feedback. Answers go back on oneshots.
//! The state machine is shared (`Arc<RwLock<_>>`) so reads and watches never queue behind
//! the driver; `applied` is published on a `watch` channel.

mod catch_up;
mod logger;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use fleet_proto::gcs::{
    ChangeMemberRequest, Member, MemberChange, StatusResponse, WriteRequest, WriteResponse,
};
use prost::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::GcsConfig;
use crate::error::{Error, Result};
use crate::state_machine::StateMachine;
use crate::storage::{decode_pb, LogStore};
use crate::transport::{PeerFeedback, PeerTransport};
use catch_up::CatchUp;

pub use logger::tracing_logger;

/// A request from the client-facing service to the driver.
// Proposals are the hot path: boxing the write would cost an allocation per request to save
// a few bytes of channel slot.
#[allow(clippy::large_enum_variant)]
pub enum NodeRequest {
    /// Replicate a write; answered once applied.
    Propose {
        /// The write.
        request: WriteRequest,
        /// Its answer.
        respond: oneshot::Sender<Result<WriteResponse>>,
    },
    /// A linearizable read barrier: answered once this replica's applied index reaches a
    /// ReadIndex confirmed by a quorum.
    ReadBarrier {
        /// Answered when the read may proceed.
        respond: oneshot::Sender<Result<()>>,
    },
    /// Add or remove a member.
    ChangeMember {
        /// The change.
        change: ChangeMemberRequest,
        /// The membership once applied.
        respond: oneshot::Sender<Result<Vec<Member>>>,
    },
    /// Report Raft status.
    Status {
        /// The status.
        respond: oneshot::Sender<StatusResponse>,
    },
}

/// What the service can see of the driver without asking it.
#[derive(Default)]
pub struct RaftView {
    /// The leader's id (0 when unknown).
    pub leader_id: AtomicU64,
    /// The current term.
    pub term: AtomicU64,
    /// 0 follower, 1 candidate, 2 leader, 3 pre-candidate.
    role: AtomicU8,
}

impl RaftView {
    /// Whether this replica currently believes it leads.
    pub fn is_leader(&self) -> bool {
        self.role.load(Ordering::Acquire) == 2
    }
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::Leader => "leader",
        StateRole::PreCandidate => "pre-candidate",
    }
}

fn role_code(role: StateRole) -> u8 {
    match role {
        StateRole::Follower => 0,
        StateRole::Candidate => 1,
        StateRole::Leader => 2,
        StateRole::PreCandidate => 3,
    }
}

/// Shared handles to one replica, used by the service.
#[derive(Clone)]
pub struct NodeHandle {
    /// Requests into the driver.
    pub requests: mpsc::Sender<NodeRequest>,
    /// Peer messages into the driver.
    pub raft_messages: mpsc::Sender<Message>,
    /// The state machine.
    pub state: Arc<RwLock<StateMachine>>,
    /// The applied index, published after every apply.
    pub applied: watch::Receiver<u64>,
    /// Leader and role.
    pub view: Arc<RaftView>,
    /// Addresses of the members (from the state machine and the configured peers).
    pub addresses: Arc<RwLock<BTreeMap<u64, String>>>,
    /// The configuration.
    pub config: Arc<GcsConfig>,
}

impl NodeHandle {
    /// The leader's client address, if known.
    pub fn leader_address(&self) -> Option<String> {
        let leader = self.view.leader_id.load(Ordering::Acquire);
        if leader == 0 {
            return None;
        }
        self.addresses
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&leader)
            .cloned()
    }

    /// A NOT-LEADER error with the leader hint.
    pub fn not_leader(&self) -> Error {
        Error::NotLeader {
            leader_address: self.leader_address(),
        }
    }
}

enum Waiter {
    Write(oneshot::Sender<Result<WriteResponse>>),
    Member(oneshot::Sender<Result<Vec<Member>>>),
}

/// Identifies a proposal in an entry's context: (replica, incarnation, seq). Only the
/// replica and incarnation that proposed an entry answer for it when it applies.
fn proposal_context(replica: u64, incarnation: u64, seq: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(24);
    ctx.extend_from_slice(&replica.to_be_bytes());
    ctx.extend_from_slice(&incarnation.to_be_bytes());
    ctx.extend_from_slice(&seq.to_be_bytes());
    ctx
}

fn parse_context(ctx: &[u8]) -> Option<(u64, u64, u64)> {
    if ctx.len() != 24 {
        return None;
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&ctx[i * 8..i * 8 + 8]);
        u64::from_be_bytes(b)
    };
    Some((word(0), word(1), word(2)))
}

/// The driver. Build with [`Driver::new`], then `run` it on a task.
pub struct Driver {
    raw: RawNode<LogStore>,
    config: Arc<GcsConfig>,
    handle: NodeHandle,
    requests: mpsc::Receiver<NodeRequest>,
    raft_messages: mpsc::Receiver<Message>,
    feedback: mpsc::Receiver<PeerFeedback>,
    transport: PeerTransport,
    applied_tx: watch::Sender<u64>,
    incarnation: u64,
    next_proposal: u64,
    waiters: HashMap<u64, Waiter>,
    reads_unissued: Vec<oneshot::Sender<Result<()>>>,
    reads_in_flight: HashMap<u64, Vec<oneshot::Sender<Result<()>>>>,
    reads_ready: Vec<(u64, Vec<oneshot::Sender<Result<()>>>)>,
    next_read: u64,
    was_leader: bool,
    removed: bool,
    /// Set while this replica catches up after starting on an empty disk (see [`catch_up`]).
    catch_up: Option<CatchUp>,
}

impl Driver {
    /// Builds the driver over an opened (and, for a new cluster, bootstrapped) store.
    pub fn new(
        config: Arc<GcsConfig>,
        store: LogStore,
        transport: PeerTransport,
        feedback: mpsc::Receiver<PeerFeedback>,
    ) -> Result<(Self, NodeHandle)> {
        let mut state =
            StateMachine::with_retention(config.watch_history, config.retention.clone());
        let snapshot = store.latest_snapshot();
        if !snapshot.data.is_empty() {
            state
                .restore_bytes(&snapshot.data)
                .map_err(|reason| Error::CorruptDataDir {
                    path: config.data_dir.clone(),
                    reason,
                })?;
        }
        state.advance(store.snapshot_index());
        let applied = store.snapshot_index();
        let catch_up = store.is_catching_up().then(CatchUp::default);
        if catch_up.is_some() {
            tracing::warn!(
                id = config.id,
                "this replica started on an empty disk in a cluster that already exists: it \
                 will not vote or campaign until it has caught up with a leader"
            );
        }
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks + config.election_ticks / 2,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, store, &tracing_logger(config.id))?;

        let addresses = transport.addresses();
        {
            let mut map = addresses.write().unwrap_or_else(|e| e.into_inner());
            map.extend(config.peers.clone());
            for (id, member) in state.members() {
                map.insert(*id, member.address.clone());
            }
            map.insert(config.id, config.advertise_address.clone());
        }

        let (request_tx, requests) = mpsc::channel(4096);
        let (raft_tx, raft_messages) = mpsc::channel(4096);
        let (applied_tx, applied_rx) = watch::channel(applied);
        let handle = NodeHandle {
            requests: request_tx,
            raft_messages: raft_tx,
            state: Arc::new(RwLock::new(state)),
            applied: applied_rx,
            view: Arc::new(RaftView::default()),
            addresses,
            config: config.clone(),
        };
        let driver = Driver {
            raw,
            config,
            handle: handle.clone(),
            requests,
            raft_messages,
            feedback,
            transport,
            applied_tx,
            incarnation: rand::random(),
            next_proposal: 1,
            waiters: HashMap::new(),
            reads_unissued: Vec::new(),
            reads_in_flight: HashMap::new(),
            reads_ready: Vec::new(),
            next_read: 1,
            was_leader: false,
            removed: false,
            catch_up,
        };
        Ok((driver, handle))
    }

    /// Runs until `shutdown` or a fatal storage error (returned).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    // Ticks only drive elections and heartbeats: a replica still catching
                    // up must not campaign.
                    if self.catch_up.is_none() {
                        self.raw.tick();
                    }
                }
                Some(message) = self.raft_messages.recv() => {
                    self.step(message);
                    while let Ok(message) = self.raft_messages.try_recv() {
                        self.step(message);
                    }
                }
                Some(request) = self.requests.recv() => {
                    self.handle_request(request);
                    let mut more = 0;
                    while more < 4096 {
                        match self.requests.try_recv() {
                            Ok(request) => self.handle_request(request),
                            Err(_) => break,
                        }
                        more += 1;
                    }
                }
                Some(feedback) = self.feedback.recv() => self.handle_feedback(feedback),
            }
            self.issue_reads();
            if let Err(error) = self.on_ready() {
                tracing::error!(error = %format!("{error:#}"), "GCS replica stopping: storage failed");
                self.fail_all(|| Error::ShuttingDown);
                return Err(error);
            }
            self.update_view();
            self.finish_catch_up()?;
            self.maybe_compact()?;
            if self.removed {
                tracing::warn!(
                    id = self.config.id,
                    "this replica was removed from the cluster; stopping"
                );
                break;
            }
        }
        self.fail_all(|| Error::ShuttingDown);
        Ok(())
    }

    fn step(&mut self, mut message: Message) {
        if let Some(catch_up) = &mut self.catch_up {
            if !catch_up.admit(&message) {
                tracing::debug!(from = message.from, kind = ?message.get_msg_type(), "not voting while catching up");
                return;
            }
        }
        self.tolerate_lost_log(&mut message);
        if let Err(error) = self.raw.step(message) {
            tracing::debug!(%error, "dropped raft message");
        }
    }

    /// A replica whose data dir was wiped comes back with an empty log under its old id.
    /// raft-rs assumes logs are never lost: the leader keeps its old match index (and ignores
    /// the follower's rejections as stale), and the follower panics when a heartbeat commits
    /// past its log. Both sides are corrected here so the replica is caught up by snapshot.
    fn tolerate_lost_log(&mut self, message: &mut Message) {
        match message.get_msg_type() {
            MessageType::MsgHeartbeat => {
                let last = self.raw.store().last_log_index();
                if message.commit > last {
                    message.commit = last;
                }
            }
            MessageType::MsgAppendResponse
                if message.reject && self.raw.raft.state == StateRole::Leader =>
            {
                let hint = message.reject_hint;
                if let Some(progress) = self.raw.raft.mut_prs().get_mut(message.from) {
                    if hint < progress.matched {
                        tracing::warn!(
                            replica = message.from,
                            had = progress.matched,
                            has = hint,
                            "replica lost its log (wiped data dir?); catching it up from scratch"
                        );
                        progress.matched = hint;
                        progress.next_idx = hint + 1;
                        progress.become_probe();
                    }
                }
            }
            _ => {}
        }
    }

    /// Ends the catch-up once the log is durable up to its target, clearing the mark on
    /// disk first (a crash before that only repeats the catch-up).
    fn finish_catch_up(&mut self) -> Result<()> {
        // The store writes through to disk before the driver moves on: its last index is
        // durable.
        let persisted = self.raw.store().last_log_index();
        let Some(catch_up) = &self.catch_up else {
            return Ok(());
        };
        if !catch_up.caught_up(persisted) {
            return Ok(());
        }
        let target = catch_up.target();
        self.raw.mut_store().set_catching_up(false)?;
        self.catch_up = None;
        tracing::info!(
            id = self.config.id,
            persisted,
            target,
            "caught up with the leader; voting again"
        );
        Ok(())
    }

    fn handle_feedback(&mut self, feedback: PeerFeedback) {
        match feedback {
            PeerFeedback::Unreachable(id) => self.raw.report_unreachable(id),
            PeerFeedback::Snapshot(id, status) => self.raw.report_snapshot(id, status),
        }
    }

    fn next_context(&mut self) -> (u64, Vec<u8>) {
        let seq = self.next_proposal;
        self.next_proposal += 1;
        (seq, proposal_context(self.config.id, self.incarnation, seq))
    }

    fn handle_request(&mut self, request: NodeRequest) {
        let is_leader = self.raw.raft.state == StateRole::Leader;
        match request {
            NodeRequest::Status { respond } => {
                let _ = respond.send(self.status());
            }
            NodeRequest::Propose { request, respond } => {
                if !is_leader {
                    let _ = respond.send(Err(self.handle.not_leader()));
                    return;
                }
                let (seq, ctx) = self.next_context();
                match self.raw.propose(ctx, request.encode_to_vec()) {
                    Ok(()) => {
                        self.waiters.insert(seq, Waiter::Write(respond));
                    }
                    Err(_) => {
                        let _ = respond.send(Err(self.handle.not_leader()));
                    }
                }
            }
            NodeRequest::ReadBarrier { respond } => {
                if !is_leader {
                    let _ = respond.send(Err(self.handle.not_leader()));
                    return;
                }
                self.reads_unissued.push(respond);
            }
            NodeRequest::ChangeMember { change, respond } => {
                if !is_leader {
                    let _ = respond.send(Err(self.handle.not_leader()));
                    return;
                }
                let mut cc = ConfChange {
                    node_id: change.id,
                    ..ConfChange::default()
                };
                cc.set_change_type(match MemberChange::try_from(change.change) {
                    Ok(MemberChange::AddVoter) => ConfChangeType::AddNode,
                    Ok(MemberChange::AddLearner) => ConfChangeType::AddLearnerNode,
                    Ok(MemberChange::Remove) => ConfChangeType::RemoveNode,
                    Err(_) => {
                        let _ = respond.send(Err(Error::InvalidRequest(format!(
                            "unknown member change {}",
                            change.change
                        ))));
                        return;
                    }
                });
                cc.context = change.address.into_bytes().into();
                let (seq, ctx) = self.next_context();
                match self.raw.propose_conf_change(ctx, cc) {
                    Ok(()) => {
                        self.waiters.insert(seq, Waiter::Member(respond));
                    }
                    Err(error) => {
                        let _ = respond.send(Err(Error::Raft(error)));
                    }
                }
            }
        }
    }

    fn issue_reads(&mut self) {
        if self.reads_unissued.is_empty() {
            return;
        }
        let ctx = self.next_read;
        self.next_read += 1;
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        let batch = std::mem::take(&mut self.reads_unissued);
        self.reads_in_flight.insert(ctx, batch);
    }

    fn status(&self) -> StatusResponse {
        let raft = &self.raw.raft;
        let state = self.handle.state.read().unwrap_or_else(|e| e.into_inner());
        let store = self.raw.store();
        let conf = store.conf_state();
        let addresses = self
            .handle
            .addresses
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let address_of = |id: &u64| addresses.get(id).cloned().unwrap_or_default();
        let members = conf
            .voters
            .iter()
            .map(|id| Member {
                id: *id,
                address: address_of(id),
                voter: true,
            })
            .chain(conf.learners.iter().map(|id| Member {
                id: *id,
                address: address_of(id),
                voter: false,
            }))
            .collect();
        StatusResponse {
            id: self.config.id,
            role: role_name(raft.state).to_string(),
            leader_id: raft.leader_id,
            leader_address: address_of(&raft.leader_id),
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: state.applied(),
            members,
            cluster_name: self.config.cluster_name.clone(),
            snapshot_index: store.snapshot_index(),
            last_log_index: store.last_log_index(),
            address: self.config.advertise_address.clone(),
            catching_up: self.catch_up.is_some(),
        }
    }

    fn update_view(&mut self) {
        let raft = &self.raw.raft;
        self.handle
            .view
            .leader_id
            .store(raft.leader_id, Ordering::Release);
        self.handle.view.term.store(raft.term, Ordering::Release);
        self.handle
            .view
            .role
            .store(role_code(raft.state), Ordering::Release);
        let is_leader = raft.state == StateRole::Leader;
        if self.was_leader && !is_leader {
            // Proposals of a deposed leader may or may not commit; the client retries and the
            // session table answers a retry of a write that did commit from its cache.
            let handle = self.handle.clone();
            self.fail_all(|| handle.not_leader());
        }
        self.was_leader = is_leader;
    }

    fn fail_all(&mut self, error: impl Fn() -> Error) {
        for (_, waiter) in self.waiters.drain() {
            match waiter {
                Waiter::Write(tx) => {
                    let _ = tx.send(Err(error()));
                }
                Waiter::Member(tx) => {
                    let _ = tx.send(Err(error()));
                }
            }
        }
        let reads = self
            .reads_unissued
            .drain(..)
            .chain(self.reads_in_flight.drain().flat_map(|(_, v)| v))
            .chain(self.reads_ready.drain(..).flat_map(|(_, v)| v));
        for tx in reads {
            let _ = tx.send(Err(error()));
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        for read in ready.take_read_states() {
            let ctx = read
                .request_ctx
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if let Some(batch) = self.reads_in_flight.remove(&ctx) {
                self.reads_ready.push((read.index, batch));
            }
        }
        self.apply_committed(ready.take_committed_entries())?;
        let entries = ready.take_entries();
        let hard_state = ready.hs().cloned();
        if !entries.is_empty() || hard_state.is_some() {
            self.raw.mut_store().persist(entries, hard_state)?;
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().note_commit(commit);
        }
        self.transport.send(light.take_messages());
        self.apply_committed(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.answer_reads();
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        let index = snapshot.get_metadata().index;
        {
            let mut state = self.handle.state.write().unwrap_or_else(|e| e.into_inner());
            state
                .restore_bytes(&snapshot.data)
                .map_err(|reason| Error::CorruptDataDir {
                    path: self.config.data_dir.clone(),
                    reason: format!("snapshot at {index} from the leader: {reason}"),
                })?;
            let mut addresses = self
                .handle
                .addresses
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for (id, member) in state.members() {
                addresses.insert(*id, member.address.clone());
            }
        }
        self.raw.mut_store().apply_snapshot(snapshot)?;
        tracing::info!(index, "installed snapshot from the leader");
        let _ = self.applied_tx.send(index);
        Ok(())
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut answers: Vec<(u64, Result<WriteResponse>)> = Vec::new();
        for entry in entries {
            let index = entry.index;
            let mine = parse_context(&entry.context)
                .filter(|(replica, incarnation, _)| {
                    *replica == self.config.id && *incarnation == self.incarnation
                })
                .map(|(_, _, seq)| seq);
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    let mut state = self.handle.state.write().unwrap_or_else(|e| e.into_inner());
                    if entry.data.is_empty() {
                        state.advance(index);
                        continue;
                    }
                    let answer = match WriteRequest::decode(entry.data.as_ref()) {
                        Ok(request) => Ok(state.apply_write(index, request)),
                        Err(error) => {
                            state.advance(index);
                            tracing::error!(index, %error, "skipping undecodable log entry");
                            Err(Error::InvalidRequest(format!(
                                "undecodable write at {index}: {error}"
                            )))
                        }
                    };
                    if let Some(seq) = mine {
                        answers.push((seq, answer));
                    }
                }
                EntryType::EntryConfChange => {
                    let members = self.apply_conf_change(index, &entry.data)?;
                    if let Some(Waiter::Member(tx)) = mine.and_then(|seq| self.waiters.remove(&seq))
                    {
                        let _ = tx.send(Ok(members));
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    tracing::error!(
                        index,
                        "ConfChangeV2 entries are not proposed by Fleet; skipped"
                    );
                    self.handle
                        .state
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .advance(index);
                }
            }
        }
        for (seq, answer) in answers {
            if let Some(Waiter::Write(tx)) = self.waiters.remove(&seq) {
                let _ = tx.send(answer);
            }
        }
        let applied = self
            .handle
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .applied();
        let _ = self.applied_tx.send(applied);
        Ok(())
    }

    /// Releases the reads whose ReadIndex this replica has applied.
    fn answer_reads(&mut self) {
        if self.reads_ready.is_empty() {
            return;
        }
        let applied = self
            .handle
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .applied();
        let mut still_waiting = Vec::new();
        for (index, batch) in self.reads_ready.drain(..) {
            if index <= applied {
                for tx in batch {
                    let _ = tx.send(Ok(()));
                }
            } else {
                still_waiting.push((index, batch));
            }
        }
        self.reads_ready = still_waiting;
    }

    fn apply_conf_change(&mut self, index: u64, data: &[u8]) -> Result<Vec<Member>> {
        let cc: ConfChange =
            decode_pb(data, "conf change").map_err(|reason| Error::CorruptDataDir {
                path: self.config.data_dir.clone(),
                reason,
            })?;
        let conf_state = self.raw.apply_conf_change(&cc)?;
        self.raw.mut_store().set_conf_state(conf_state.clone())?;
        let address = String::from_utf8_lossy(&cc.context).into_owned();
        let mut state = self.handle.state.write().unwrap_or_else(|e| e.into_inner());
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let voter = cc.get_change_type() == ConfChangeType::AddNode;
                state.set_member(
                    index,
                    cc.node_id,
                    Some(Member {
                        id: cc.node_id,
                        address: address.clone(),
                        voter,
                    }),
                );
                if !address.is_empty() {
                    self.handle
                        .addresses
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(cc.node_id, address);
                }
            }
            ConfChangeType::RemoveNode => {
                state.set_member(index, cc.node_id, None);
                if cc.node_id == self.config.id {
                    self.removed = true;
                }
            }
        }
        tracing::info!(index, node = cc.node_id, change = ?cc.get_change_type(), voters = ?conf_state.voters, "membership changed");
        Ok(state.members().values().cloned().collect())
    }

    fn maybe_compact(&mut self) -> Result<()> {
        let applied = self.raw.raft.raft_log.applied;
        let store = self.raw.store();
        if applied < store.snapshot_index() + self.config.snapshot_threshold {
            return Ok(());
        }
        let data = self
            .handle
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot_bytes();
        let conf_state = store.conf_state().clone();
        self.raw.mut_store().compact(applied, conf_state, data)?;
        tracing::debug!(index = applied, "log compacted behind a snapshot");
        Ok(())
    }
}
