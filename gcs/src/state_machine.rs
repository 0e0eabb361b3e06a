//! The replicated state machine: typed tables, client sessions for exactly-once writes, the
//! membership, and the history of changes that watch streams serve.
//!
//! Pure: `apply` takes a committed entry's payload and its log index and returns the answer;
//! no I/O, no clocks, no randomness, so every replica that applies the same log holds the
//! same state and emits the same events with the same versions.

pub mod table;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use fleet_proto::gcs::{
    command::Op, ActorInfo, ActorState, CachedResponse, CheckpointInfo, ClientSession, JobInfo,
    JobState, LocationChange, Member, NodeInfo, NodeState, ObjectInfo, PlacementGroupInfo,
    PlacementGroupState, ReadRequest, Record, RejectCode, Rejection, StateSnapshot,
    Table as TableKind, TaskEvent, WatchEvent, WatchFilter, WriteRequest, WriteResponse,
};
use prost::Message;

pub use table::{kv_key, split_kv_key, Row, Table, TableValue};

/// Task events kept; the oldest are dropped first (they are for listing and timelines, the
/// authoritative task state lives with the owner).
pub const MAX_TASK_EVENTS: usize = 100_000;
/// Client sessions kept; the least recently active is dropped first.
pub const MAX_SESSIONS: usize = 50_000;
/// Answers kept per session (writes in flight at once from one client).
pub const MAX_CACHED_PER_SESSION: usize = 4_096;

#[derive(Clone, Debug, Default)]
struct Session {
    first_unacked: u64,
    last_active_index: u64,
    responses: BTreeMap<u64, WriteResponse>,
}

/// How many ended rows each table keeps: dead actors (and their checkpoint records),
/// finished jobs, removed placement groups. Beyond the limit the oldest ended row is deleted
/// (deterministically, in apply order, so every replica deletes the same rows). Every
/// replica of a cluster must run with the same policy. Live rows are never deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Dead actors kept for `fleet list actors` and late lookups.
    pub dead_actors: usize,
    /// Finished (succeeded, failed, stopped) jobs kept.
    pub finished_jobs: usize,
    /// Removed placement groups kept.
    pub removed_placement_groups: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            dead_actors: 10_000,
            finished_jobs: 10_000,
            removed_placement_groups: 10_000,
        }
    }
}

/// Keys of rows that ended, oldest first by the log index at which they ended (their
/// `mod_version`, which an ended row keeps: so a snapshot restore rebuilds the same order).
#[derive(Clone, Debug, Default)]
struct Tombstones {
    by_age: BTreeSet<(u64, Vec<u8>)>,
    ages: HashMap<Vec<u8>, u64>,
}

impl Tombstones {
    fn bury(&mut self, key: &[u8], version: u64) {
        if let Some(old) = self.ages.insert(key.to_vec(), version) {
            self.by_age.remove(&(old, key.to_vec()));
        }
        self.by_age.insert((version, key.to_vec()));
    }

    /// The oldest keys beyond `limit`, forgotten here.
    fn beyond(&mut self, limit: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while self.by_age.len() > limit {
            let Some((_, key)) = self.by_age.pop_first() else {
                break;
            };
            self.ages.remove(&key);
            out.push(key);
        }
        out
    }

    fn len(&self) -> usize {
        self.by_age.len()
    }
}

/// All replicated state.
#[derive(Clone, Debug)]
pub struct StateMachine {
    applied: u64,
    nodes: Table<NodeInfo>,
    jobs: Table<JobInfo>,
    actors: Table<ActorInfo>,
    placement_groups: Table<PlacementGroupInfo>,
    objects: Table<ObjectInfo>,
    task_events: Table<TaskEvent>,
    checkpoints: Table<CheckpointInfo>,
    kv: Table<Vec<u8>>,
    /// (namespace, name) → actor id, for live named actors.
    actor_names: HashMap<(String, String), String>,
    /// Task event keys in insertion order, for eviction.
    task_event_order: VecDeque<Vec<u8>>,
    sessions: HashMap<u64, Session>,
    members: BTreeMap<u64, Member>,
    history: VecDeque<WatchEvent>,
    history_capacity: usize,
    /// Changes at or below this version may be missing from `history`.
    history_floor: u64,
    retention: Retention,
    dead_actors: Tombstones,
    finished_jobs: Tombstones,
    removed_placement_groups: Tombstones,
}

fn reject(code: RejectCode, message: impl Into<String>, current: Option<Record>) -> Box<Rejection> {
    Box::new(Rejection {
        code: code as i32,
        message: message.into(),
        current,
    })
}

type Applied = Result<(), Box<Rejection>>;

impl StateMachine {
    /// An empty state machine that keeps `history_capacity` changes for watchers.
    pub fn new(history_capacity: usize) -> Self {
        StateMachine {
            applied: 0,
            nodes: Table::new(TableKind::Nodes),
            jobs: Table::new(TableKind::Jobs),
            actors: Table::new(TableKind::Actors),
            placement_groups: Table::new(TableKind::PlacementGroups),
            objects: Table::new(TableKind::Objects),
            task_events: Table::new(TableKind::TaskEvents),
            checkpoints: Table::new(TableKind::Checkpoints),
            kv: Table::new(TableKind::Kv),
            actor_names: HashMap::new(),
            task_event_order: VecDeque::new(),
            sessions: HashMap::new(),
            members: BTreeMap::new(),
            history: VecDeque::new(),
            history_capacity: history_capacity.max(1),
            history_floor: 0,
            retention: Retention::default(),
            dead_actors: Tombstones::default(),
            finished_jobs: Tombstones::default(),
            removed_placement_groups: Tombstones::default(),
        }
    }

    /// The same, keeping ended rows as `retention` says.
    pub fn with_retention(history_capacity: usize, retention: Retention) -> Self {
        let mut machine = StateMachine::new(history_capacity);
        machine.retention = retention;
        machine
    }

    /// How many ended rows are kept now: (dead actors, finished jobs, removed placement
    /// groups).
    pub fn ended_rows(&self) -> (usize, usize, usize) {
        (
            self.dead_actors.len(),
            self.finished_jobs.len(),
            self.removed_placement_groups.len(),
        )
    }

    /// Deletes the oldest ended rows beyond the retention policy (a dead actor's checkpoint
    /// record goes with it: nobody restores a dead actor).
    fn enforce_retention(&mut self, v: u64, ev: &mut Vec<WatchEvent>) {
        for key in self.dead_actors.beyond(self.retention.dead_actors) {
            self.actors.delete(&key, v, ev);
            self.checkpoints.delete(&key, v, ev);
        }
        for key in self.finished_jobs.beyond(self.retention.finished_jobs) {
            self.jobs.delete(&key, v, ev);
        }
        for key in self
            .removed_placement_groups
            .beyond(self.retention.removed_placement_groups)
        {
            self.placement_groups.delete(&key, v, ev);
        }
    }

    /// The last applied log index (the version of the newest change).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Marks `index` applied without a command (an empty entry, a conf change).
    pub fn advance(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// Members by id.
    pub fn members(&self) -> &BTreeMap<u64, Member> {
        &self.members
    }

    /// Records a membership change (applied from a Raft conf change at `index`).
    pub fn set_member(&mut self, index: u64, id: u64, member: Option<Member>) {
        match member {
            Some(member) => {
                self.members.insert(id, member);
            }
            None => {
                self.members.remove(&id);
            }
        }
        self.advance(index);
    }

    /// Applies a committed client write at `index` and returns its answer. A retried write
    /// (same client id and seq) is answered from the session without applying again.
    pub fn apply_write(&mut self, index: u64, request: WriteRequest) -> WriteResponse {
        self.advance(index);
        let client_id = request.client_id;
        if client_id != 0 {
            let session = self.sessions.entry(client_id).or_default();
            if let Some(cached) = session.responses.get(&request.seq) {
                return cached.clone();
            }
            if request.seq < session.first_unacked {
                return WriteResponse {
                    version: index,
                    rejection: Some(*reject(
                        RejectCode::StaleSession,
                        format!(
                            "write {} of client {client_id:x} was already answered and forgotten",
                            request.seq
                        ),
                        None,
                    )),
                };
            }
        }
        let mut events = Vec::new();
        let outcome = match request.command.and_then(|c| c.op) {
            Some(op) => self.apply_op(index, op, &mut events),
            None => Err(reject(
                RejectCode::InvalidArgument,
                "write carries no command",
                None,
            )),
        };
        self.enforce_retention(index, &mut events);
        let response = WriteResponse {
            version: index,
            rejection: outcome.err().map(|rejection| *rejection),
        };
        self.record_events(events);
        if client_id != 0 {
            self.remember(
                index,
                client_id,
                request.seq,
                request.first_unacked,
                &response,
            );
        }
        response
    }

    fn remember(
        &mut self,
        index: u64,
        client_id: u64,
        seq: u64,
        first_unacked: u64,
        response: &WriteResponse,
    ) {
        let session = self.sessions.entry(client_id).or_default();
        session.last_active_index = index;
        session.first_unacked = session.first_unacked.max(first_unacked);
        let floor = session.first_unacked;
        session.responses.retain(|s, _| *s >= floor);
        session.responses.insert(seq, response.clone());
        while session.responses.len() > MAX_CACHED_PER_SESSION {
            session.responses.pop_first();
        }
        if self.sessions.len() > MAX_SESSIONS {
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(id, s)| (s.last_active_index, **id))
                .map(|(id, _)| *id)
            {
                self.sessions.remove(&oldest);
            }
        }
    }

    fn record_events(&mut self, events: Vec<WatchEvent>) {
        for event in events {
            if self.history.len() >= self.history_capacity {
                if let Some(dropped) = self.history.pop_front() {
                    self.history_floor = self.history_floor.max(dropped.version);
                }
            }
            self.history.push_back(event);
        }
    }

    fn apply_op(&mut self, v: u64, op: Op, ev: &mut Vec<WatchEvent>) -> Applied {
        match op {
            Op::Noop(_) => Ok(()),
            Op::KvPut(put) => {
                if put.namespace.contains('\0') {
                    return Err(reject(
                        RejectCode::InvalidArgument,
                        "KV namespaces cannot contain NUL",
                        None,
                    ));
                }
                let key = kv_key(&put.namespace, &put.key);
                let current = self.kv.get(&key);
                if put.if_absent {
                    if let Some(row) = current {
                        let record = self.kv.record(&key, row);
                        return Err(reject(
                            RejectCode::AlreadyExists,
                            "key exists",
                            Some(record),
                        ));
                    }
                }
                if let Some(expected) = put.expected_version {
                    let actual = current.map_or(0, |row| row.mod_version);
                    if actual != expected {
                        let record = current.map(|row| self.kv.record(&key, row));
                        return Err(reject(
                            RejectCode::CasFailed,
                            format!("key is at version {actual}, not {expected}"),
                            record,
                        ));
                    }
                }
                self.kv.put(key, put.value, v, ev);
                Ok(())
            }
            Op::KvDelete(delete) => {
                let key = kv_key(&delete.namespace, &delete.key);
                if delete.prefix {
                    let keys: Vec<_> = self.kv.scan_prefix(&key).map(|(k, _)| k.clone()).collect();
                    for k in keys {
                        self.kv.delete(&k, v, ev);
                    }
                } else {
                    self.kv.delete(&key, v, ev);
                }
                Ok(())
            }
            Op::RegisterNode(node) => self.register_node(v, node, ev),
            Op::MarkNodeDead(dead) => {
                let key = dead.node_id.as_bytes().to_vec();
                let Some(row) = self.nodes.get(&key) else {
                    return Err(reject(
                        RejectCode::NotFound,
                        format!("no node {}", dead.node_id),
                        None,
                    ));
                };
                if row.value.state == NodeState::NodeDead as i32 {
                    return Ok(());
                }
                let mut node = row.value.clone();
                node.state = NodeState::NodeDead as i32;
                node.death_cause = dead.cause;
                self.nodes.put(key, node, v, ev);
                Ok(())
            }
            Op::AddJob(job) => {
                if job.job_id.is_empty() {
                    return Err(reject(RejectCode::InvalidArgument, "job_id is empty", None));
                }
                let key = job.job_id.as_bytes().to_vec();
                if let Some(row) = self.jobs.get(&key) {
                    let record = self.jobs.record(&key, row);
                    return Err(reject(
                        RejectCode::AlreadyExists,
                        format!("job {} exists", job.job_id),
                        Some(record),
                    ));
                }
                let mut job = job;
                if job.state == JobState::Unspecified as i32 {
                    job.state = JobState::JobRunning as i32;
                }
                self.jobs.put(key, job, v, ev);
                Ok(())
            }
            Op::FinishJob(finish) => {
                let key = finish.job_id.as_bytes().to_vec();
                let Some(row) = self.jobs.get(&key) else {
                    return Err(reject(
                        RejectCode::NotFound,
                        format!("no job {}", finish.job_id),
                        None,
                    ));
                };
                if row.value.state != JobState::JobRunning as i32 {
                    let record = self.jobs.record(&key, row);
                    return Err(reject(
                        RejectCode::InvalidTransition,
                        format!("job {} is not running", finish.job_id),
                        Some(record),
                    ));
                }
                if !matches!(
                    JobState::try_from(finish.state),
                    Ok(JobState::JobSucceeded | JobState::JobFailed | JobState::JobStopped)
                ) {
                    return Err(reject(
                        RejectCode::InvalidArgument,
                        "a finished job's state must be SUCCEEDED, FAILED or STOPPED",
                        None,
                    ));
                }
                let mut job = row.value.clone();
                job.state = finish.state;
                job.end_ms = finish.end_ms;
                job.message = finish.message;
                self.finished_jobs.bury(&key, v);
                self.jobs.put(key, job, v, ev);
                Ok(())
            }
            Op::RegisterActor(actor) => self.register_actor(v, actor, ev),
            Op::UpdateActor(update) => self.update_actor(v, update, ev),
            Op::CreatePlacementGroup(pg) => {
                if pg.placement_group_id.is_empty() || pg.bundles.is_empty() {
                    return Err(reject(
                        RejectCode::InvalidArgument,
                        "a placement group needs an id and at least one bundle",
                        None,
                    ));
                }
                let key = pg.placement_group_id.as_bytes().to_vec();
                if let Some(row) = self.placement_groups.get(&key) {
                    let record = self.placement_groups.record(&key, row);
                    return Err(reject(
                        RejectCode::AlreadyExists,
                        format!("placement group {} exists", pg.placement_group_id),
                        Some(record),
                    ));
                }
                let mut pg = pg;
                if pg.state == PlacementGroupState::Unspecified as i32 {
                    pg.state = PlacementGroupState::PgPending as i32;
                }
                self.placement_groups.put(key, pg, v, ev);
                Ok(())
            }
            Op::UpdatePlacementGroup(update) => {
                let key = update.placement_group_id.as_bytes().to_vec();
                let Some(row) = self.placement_groups.get(&key) else {
                    return Err(reject(
                        RejectCode::NotFound,
                        format!("no placement group {}", update.placement_group_id),
                        None,
                    ));
                };
                if row.value.state != update.expected_state {
                    let record = self.placement_groups.record(&key, row);
                    return Err(reject(
                        RejectCode::CasFailed,
                        "placement group state changed",
                        Some(record),
                    ));
                }
                if row.value.state == PlacementGroupState::PgRemoved as i32 {
                    return Err(reject(
                        RejectCode::InvalidTransition,
                        "placement group was removed",
                        None,
                    ));
                }
                let mut pg = row.value.clone();
                pg.state = update.new_state;
                if !update.bundles.is_empty() {
                    if update.bundles.len() != pg.bundles.len() {
                        return Err(reject(
                            RejectCode::InvalidArgument,
                            "bundle count cannot change",
                            None,
                        ));
                    }
                    pg.bundles = update.bundles;
                }
                self.placement_groups.put(key, pg, v, ev);
                Ok(())
            }
            Op::RemovePlacementGroup(remove) => {
                let key = remove.placement_group_id.as_bytes().to_vec();
                let Some(row) = self.placement_groups.get(&key) else {
                    return Err(reject(
                        RejectCode::NotFound,
                        format!("no placement group {}", remove.placement_group_id),
                        None,
                    ));
                };
                if row.value.state == PlacementGroupState::PgRemoved as i32 {
                    // Removing twice changes nothing (and keeps its place in retention).
                    return Ok(());
                }
                let mut pg = row.value.clone();
                pg.state = PlacementGroupState::PgRemoved as i32;
                self.removed_placement_groups.bury(&key, v);
                self.placement_groups.put(key, pg, v, ev);
                Ok(())
            }
            Op::ObjectLocations(batch) => {
                for update in batch.updates {
                    self.apply_location(v, update, ev);
                }
                Ok(())
            }
            Op::TaskEvents(batch) => {
                for event in batch.events {
                    let key = format!("{}/{:010}", event.task_id, event.attempt).into_bytes();
                    if self.task_events.get(&key).is_none() {
                        self.task_event_order.push_back(key.clone());
                    }
                    self.task_events.put(key, event, v, ev);
                    while self.task_event_order.len() > MAX_TASK_EVENTS {
                        if let Some(oldest) = self.task_event_order.pop_front() {
                            self.task_events.delete(&oldest, v, ev);
                        }
                    }
                }
                Ok(())
            }
            Op::CommitCheckpoint(commit) => {
                let Some(checkpoint) = commit.checkpoint else {
                    return Err(reject(
                        RejectCode::InvalidArgument,
                        "commit carries no checkpoint",
                        None,
                    ));
                };
                if checkpoint.owner_id.is_empty() {
                    return Err(reject(
                        RejectCode::InvalidArgument,
                        "checkpoint owner_id is empty",
                        None,
                    ));
                }
                let key = checkpoint.owner_id.as_bytes().to_vec();
                if let Some(row) = self.checkpoints.get(&key) {
                    if row.value.sequence >= checkpoint.sequence {
                        let record = self.checkpoints.record(&key, row);
                        return Err(reject(
                            RejectCode::StaleCheckpoint,
                            format!(
                                "checkpoint {} of {} is not newer than the committed {}",
                                checkpoint.sequence, checkpoint.owner_id, row.value.sequence
                            ),
                            Some(record),
                        ));
                    }
                }
                self.checkpoints.put(key, checkpoint, v, ev);
                Ok(())
            }
        }
    }

    fn register_node(&mut self, v: u64, node: NodeInfo, ev: &mut Vec<WatchEvent>) -> Applied {
        if node.node_id.is_empty() {
            return Err(reject(
                RejectCode::InvalidArgument,
                "node_id is empty",
                None,
            ));
        }
        let key = node.node_id.as_bytes().to_vec();
        if let Some(row) = self.nodes.get(&key) {
            if row.value.state == NodeState::NodeDead as i32 {
                let record = self.nodes.record(&key, row);
                return Err(reject(
                    RejectCode::AlreadyExists,
                    format!(
                        "node {} was declared dead; a restarted raylet registers under a new node id",
                        node.node_id
                    ),
                    Some(record),
                ));
            }
        }
        let mut node = node;
        node.state = NodeState::NodeAlive as i32;
        self.nodes.put(key, node, v, ev);
        Ok(())
    }

    fn register_actor(&mut self, v: u64, actor: ActorInfo, ev: &mut Vec<WatchEvent>) -> Applied {
        if actor.actor_id.is_empty() {
            return Err(reject(
                RejectCode::InvalidArgument,
                "actor_id is empty",
                None,
            ));
        }
        let key = actor.actor_id.as_bytes().to_vec();
        if let Some(row) = self.actors.get(&key) {
            let record = self.actors.record(&key, row);
            return Err(reject(
                RejectCode::AlreadyExists,
                format!("actor {} exists", actor.actor_id),
                Some(record),
            ));
        }
        if actor.state != ActorState::Unspecified as i32
            && actor.state != ActorState::ActorPending as i32
        {
            return Err(reject(
                RejectCode::InvalidTransition,
                "actors are registered PENDING",
                None,
            ));
        }
        if !actor.name.is_empty() {
            let name_key = (actor.namespace.clone(), actor.name.clone());
            if let Some(holder) = self.actor_names.get(&name_key) {
                let record = self
                    .actors
                    .get(holder.as_bytes())
                    .map(|row| self.actors.record(holder.as_bytes(), row));
                return Err(reject(
                    RejectCode::NameTaken,
                    format!(
                        "an actor named '{}' already lives in namespace '{}' ({holder})",
                        actor.name, actor.namespace
                    ),
                    record,
                ));
            }
            self.actor_names.insert(name_key, actor.actor_id.clone());
        }
        let mut actor = actor;
        actor.state = ActorState::ActorPending as i32;
        self.actors.put(key, actor, v, ev);
        Ok(())
    }

    fn update_actor(
        &mut self,
        v: u64,
        update: fleet_proto::gcs::UpdateActor,
        ev: &mut Vec<WatchEvent>,
    ) -> Applied {
        use ActorState::*;
        let key = update.actor_id.as_bytes().to_vec();
        let Some(row) = self.actors.get(&key) else {
            return Err(reject(
                RejectCode::NotFound,
                format!("no actor {}", update.actor_id),
                None,
            ));
        };
        let record = self.actors.record(&key, row);
        if row.value.state != update.expected_state {
            return Err(reject(
                RejectCode::CasFailed,
                format!(
                    "actor {} is {:?}, not {:?}",
                    update.actor_id,
                    ActorState::try_from(row.value.state).unwrap_or(Unspecified),
                    ActorState::try_from(update.expected_state).unwrap_or(Unspecified)
                ),
                Some(record),
            ));
        }
        let from = ActorState::try_from(row.value.state).unwrap_or(Unspecified);
        let to = ActorState::try_from(update.new_state).unwrap_or(Unspecified);
        let legal = matches!(
            (from, to),
            (ActorPending, ActorAlive | ActorDead)
                | (ActorAlive, ActorRestarting | ActorDead)
                | (ActorRestarting, ActorAlive | ActorDead)
        );
        if !legal {
            return Err(reject(
                RejectCode::InvalidTransition,
                format!(
                    "actor {} cannot go from {from:?} to {to:?}",
                    update.actor_id
                ),
                Some(record),
            ));
        }
        let mut actor = row.value.clone();
        if update.count_restart {
            if to != ActorRestarting {
                return Err(reject(
                    RejectCode::InvalidArgument,
                    "count_restart goes with RESTARTING",
                    None,
                ));
            }
            if actor.max_restarts >= 0 && actor.num_restarts >= actor.max_restarts as u32 {
                return Err(reject(
                    RejectCode::RestartsExhausted,
                    format!(
                        "actor {} used all {} restarts",
                        update.actor_id, actor.max_restarts
                    ),
                    Some(record),
                ));
            }
            actor.num_restarts += 1;
        }
        actor.state = update.new_state;
        if !update.node_id.is_empty() {
            actor.node_id = update.node_id;
        }
        if !update.address.is_empty() {
            actor.address = update.address;
        }
        if to == ActorDead {
            self.dead_actors.bury(&key, v);
            actor.death_cause = update.death_cause;
            if !actor.name.is_empty() {
                self.actor_names
                    .remove(&(actor.namespace.clone(), actor.name.clone()));
            }
        }
        self.actors.put(key, actor, v, ev);
        Ok(())
    }

    fn apply_location(
        &mut self,
        v: u64,
        update: fleet_proto::gcs::ObjectLocationUpdate,
        ev: &mut Vec<WatchEvent>,
    ) {
        let key = update.object_id.as_bytes().to_vec();
        let change = LocationChange::try_from(update.change).unwrap_or(LocationChange::LocationAdd);
        if change == LocationChange::LocationFree {
            self.objects.delete(&key, v, ev);
            return;
        }
        let mut object = self
            .objects
            .get(&key)
            .map(|row| row.value.clone())
            .unwrap_or_else(|| ObjectInfo {
                object_id: update.object_id.clone(),
                ..ObjectInfo::default()
            });
        match change {
            LocationChange::LocationAdd => {
                if let Err(at) = object.node_ids.binary_search(&update.node_id) {
                    object.node_ids.insert(at, update.node_id);
                }
            }
            LocationChange::LocationRemove => object.node_ids.retain(|n| *n != update.node_id),
            LocationChange::LocationSpilled => object.spilled_url = update.spilled_url,
            LocationChange::LocationFree => {}
        }
        if update.size != 0 {
            object.size = update.size;
        }
        if !update.owner.is_empty() {
            object.owner = update.owner;
        }
        self.objects.put(key, object, v, ev);
    }

    /// Serves a read from the applied state.
    pub fn read(&self, request: &ReadRequest) -> Vec<Record> {
        let limit = if request.limit == 0 {
            usize::MAX
        } else {
            request.limit as usize
        };
        let kind = TableKind::try_from(request.table).unwrap_or(TableKind::Unspecified);
        if request.by_name {
            // The live actor named `key` in `namespace`, from the name index (not a scan).
            if kind != TableKind::Actors {
                return Vec::new();
            }
            let name = String::from_utf8_lossy(&request.key);
            let Some(id) = self
                .actor_names
                .get(&(request.namespace.clone(), name.into_owned()))
            else {
                return Vec::new();
            };
            return self
                .actors
                .get(id.as_bytes())
                .map(|row| self.actors.record(id.as_bytes(), row))
                .into_iter()
                .collect();
        }
        macro_rules! scan {
            ($table:expr, $key:expr) => {{
                let key: Vec<u8> = $key;
                if request.prefix {
                    $table
                        .scan_prefix(&key)
                        .take(limit)
                        .map(|(k, row)| $table.record(k, row))
                        .collect()
                } else {
                    $table
                        .get(&key)
                        .map(|row| $table.record(&key, row))
                        .into_iter()
                        .collect()
                }
            }};
        }
        match kind {
            TableKind::Unspecified => Vec::new(),
            TableKind::Nodes => scan!(self.nodes, request.key.clone()),
            TableKind::Jobs => scan!(self.jobs, request.key.clone()),
            TableKind::Actors => scan!(self.actors, request.key.clone()),
            TableKind::PlacementGroups => scan!(self.placement_groups, request.key.clone()),
            TableKind::Objects => scan!(self.objects, request.key.clone()),
            TableKind::TaskEvents => scan!(self.task_events, request.key.clone()),
            TableKind::Checkpoints => scan!(self.checkpoints, request.key.clone()),
            TableKind::Kv => scan!(self.kv, kv_key(&request.namespace, &request.key)),
        }
    }

    /// Looks up a live named actor.
    pub fn named_actor(&self, namespace: &str, name: &str) -> Option<&ActorInfo> {
        let id = self
            .actor_names
            .get(&(namespace.to_string(), name.to_string()))?;
        self.actors.get(id.as_bytes()).map(|row| &row.value)
    }

    /// Changes with version >= `from` matching `filters`, or `None` when some of them were
    /// dropped from the history (the watcher must resync).
    pub fn changes_since(&self, from: u64, filters: &[WatchFilter]) -> Option<Vec<WatchEvent>> {
        if from <= self.history_floor {
            return None;
        }
        let start = self.history.partition_point(|e| e.version < from);
        Some(
            self.history
                .range(start..)
                .filter(|e| {
                    e.record
                        .as_ref()
                        .is_some_and(|r| matches_filters(r, filters))
                })
                .cloned()
                .collect(),
        )
    }

    /// Every record matching `filters`, for a resync.
    pub fn matching_records(&self, filters: &[WatchFilter]) -> Vec<Record> {
        let mut out = Vec::new();
        for filter in filters {
            let request = ReadRequest {
                table: filter.table,
                namespace: filter.namespace.clone(),
                key: filter.key_prefix.clone(),
                prefix: true,
                ..ReadRequest::default()
            };
            out.extend(self.read(&request));
        }
        out
    }

    /// The whole state, for a Raft snapshot.
    pub fn snapshot(&self) -> StateSnapshot {
        let mut records = Vec::new();
        macro_rules! dump {
            ($($table:expr),*) => {$(
                records.extend($table.iter().map(|(k, row)| $table.record(k, row)));
            )*};
        }
        dump!(
            self.nodes,
            self.jobs,
            self.actors,
            self.placement_groups,
            self.objects,
            self.checkpoints,
            self.kv
        );
        // Task events in insertion order, so eviction order survives a restore.
        for key in &self.task_event_order {
            if let Some(row) = self.task_events.get(key) {
                records.push(self.task_events.record(key, row));
            }
        }
        let mut sessions: Vec<ClientSession> = self
            .sessions
            .iter()
            .map(|(id, s)| ClientSession {
                client_id: *id,
                first_unacked: s.first_unacked,
                last_active_index: s.last_active_index,
                responses: s
                    .responses
                    .iter()
                    .map(|(seq, response)| CachedResponse {
                        seq: *seq,
                        response: Some(response.clone()),
                    })
                    .collect(),
            })
            .collect();
        sessions.sort_by_key(|s| s.client_id);
        StateSnapshot {
            applied_index: self.applied,
            records,
            members: self.members.values().cloned().collect(),
            sessions,
            task_event_seq: 0,
        }
    }

    /// Encoded [`StateMachine::snapshot`].
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        self.snapshot().encode_to_vec()
    }

    /// Replaces the state with a snapshot's. Watchers behind it must resync.
    pub fn restore(&mut self, snapshot: StateSnapshot) -> Result<(), String> {
        let mut fresh = StateMachine::with_retention(self.history_capacity, self.retention.clone());
        fresh.applied = snapshot.applied_index;
        fresh.history_floor = snapshot.applied_index;
        for record in &snapshot.records {
            match TableKind::try_from(record.table).unwrap_or(TableKind::Unspecified) {
                TableKind::Nodes => fresh.nodes.restore(record)?,
                TableKind::Jobs => fresh.jobs.restore(record)?,
                TableKind::Actors => fresh.actors.restore(record)?,
                TableKind::PlacementGroups => fresh.placement_groups.restore(record)?,
                TableKind::Objects => fresh.objects.restore(record)?,
                TableKind::TaskEvents => {
                    fresh.task_events.restore(record)?;
                    fresh.task_event_order.push_back(record.key.clone());
                }
                TableKind::Checkpoints => fresh.checkpoints.restore(record)?,
                TableKind::Kv => fresh.kv.restore(record)?,
                TableKind::Unspecified => return Err("snapshot record without a table".into()),
            }
        }
        for (key, row) in fresh.jobs.iter() {
            if row.value.state != JobState::JobRunning as i32 {
                fresh.finished_jobs.bury(key, row.mod_version);
            }
        }
        for (key, row) in fresh.placement_groups.iter() {
            if row.value.state == PlacementGroupState::PgRemoved as i32 {
                fresh.removed_placement_groups.bury(key, row.mod_version);
            }
        }
        for (key, row) in fresh.actors.iter() {
            if row.value.state == ActorState::ActorDead as i32 {
                fresh.dead_actors.bury(key, row.mod_version);
            }
        }
        for (_, row) in fresh.actors.iter() {
            let actor = &row.value;
            if !actor.name.is_empty() && actor.state != ActorState::ActorDead as i32 {
                fresh.actor_names.insert(
                    (actor.namespace.clone(), actor.name.clone()),
                    actor.actor_id.clone(),
                );
            }
        }
        for session in snapshot.sessions {
            fresh.sessions.insert(
                session.client_id,
                Session {
                    first_unacked: session.first_unacked,
                    last_active_index: session.last_active_index,
                    responses: session
                        .responses
                        .into_iter()
                        .filter_map(|c| Some((c.seq, c.response?)))
                        .collect(),
                },
            );
        }
        fresh.members = snapshot.members.into_iter().map(|m| (m.id, m)).collect();
        *self = fresh;
        Ok(())
    }

    /// Restores from encoded snapshot bytes.
    pub fn restore_bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        let snapshot =
            StateSnapshot::decode(bytes).map_err(|e| format!("undecodable snapshot: {e}"))?;
        self.restore(snapshot)
    }
}

/// Whether a record passes any of the filters (no filters: everything).
pub fn matches_filters(record: &Record, filters: &[WatchFilter]) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            (f.table == TableKind::Unspecified as i32 || f.table == record.table)
                && (f.table != TableKind::Kv as i32 || f.namespace == record.namespace)
                && record.key.starts_with(&f.key_prefix)
        })
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
