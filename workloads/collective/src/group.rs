//! A collective group: its rendezvous in `fleet::kv`, its channels, how a failure breaks it
//! on every rank.
//!
//! **Rendezvous.** The group's state in the KV is a round: its number, the world size and
//! the ranks that joined it. A rank joins the open round (or opens the next one when the
//! last is complete, as a restarted rank or survivors re-forming after a failure do) with a
//! compare-and-set, then waits for the round to fill. Each rank of a complete round makes
//! one channel from every other rank to itself and publishes its senders under the round;
//! it takes the senders the others published for it; a first exchange with every peer
//! proves every connection.
//!
//! **Failure.** An operation that fails on one rank (a peer's process or node gone, a
//! mismatch, a timeout) writes the cause under the round (the first writer wins) and
//! drops the group's channels: its neighbours' pending operations end at once, read the
//! cause, and drop theirs. So every rank's pending operation fails, naming the rank that
//! was lost, within the failure-detection time of the channels (at once on one node,
//! seconds across nodes), never a hang.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleet::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::error::{CollectiveError, Result};

/// The KV namespace of every group's records.
pub const NAMESPACE: &str = "fleet-collective";

/// How a group forms and runs.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    /// How long `init` waits for every rank to arrive.
    pub rendezvous_timeout: Duration,
    /// How long an operation waits for its peers before failing with `Timeout`.
    pub op_timeout: Duration,
    /// The size of the pieces a ring moves a shard in.
    pub piece_bytes: usize,
    /// Buffers up to this size take the direct algorithm (every rank sends its buffer to
    /// every other: one hop of latency instead of `2(n-1)`).
    pub small_bytes: usize,
    /// How many messages each channel holds in flight.
    pub channel_capacity: usize,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            rendezvous_timeout: Duration::from_secs(120),
            op_timeout: Duration::from_secs(600),
            piece_bytes: 1 << 20,
            small_bytes: 64 << 10,
            channel_capacity: 8,
        }
    }
}

/// A round of the rendezvous, as kept in the KV.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RoundState {
    round: u64,
    world: usize,
    /// Rank → the joining call's nonce (a restarted rank joins again with a new one).
    joined: BTreeMap<usize, String>,
    complete: bool,
}

/// Why a round's group broke, as kept in the KV (the first rank to see it writes it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Abort {
    /// The rank lost, when a rank was lost.
    pub lost_rank: Option<usize>,
    pub detected_by: usize,
    pub cause: String,
}

/// The ranks of a group declared by a driver (`declare_group`), in rank order.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Declared {
    actors: Vec<String>,
}

fn state_key(name: &str) -> String {
    format!("{name}/state")
}

fn round_prefix(name: &str, round: u64) -> String {
    format!("{name}/r{round}/")
}

fn sender_key(name: &str, round: u64, to: usize, from: usize) -> String {
    format!("{name}/r{round}/to{to}/from{from}")
}

pub(crate) fn abort_key(name: &str, round: u64) -> String {
    format!("{name}/r{round}/abort")
}

fn declared_key(name: &str) -> String {
    format!("{name}/declared")
}

/// The channels of one rank: `to[j]` sends to rank `j`, `from[j]` receives from it.
pub(crate) struct Links {
    pub to: Vec<Option<Sender<Vec<u8>>>>,
    pub from: Vec<Option<Receiver<Vec<u8>>>>,
}

/// One rank's membership of a collective group; the operations are in `ops`.
pub struct Group {
    pub(crate) name: String,
    pub(crate) rank: usize,
    pub(crate) world: usize,
    pub(crate) round: u64,
    pub(crate) options: GroupOptions,
    pub(crate) links: Links,
    /// Set by the first failed operation: every later one fails at once with it.
    pub(crate) broken: Option<String>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("round", &self.round)
            .field("broken", &self.broken)
            .finish()
    }
}

fn fleet_error(group: &str) -> impl Fn(fleet::Error) -> CollectiveError + '_ {
    move |source| CollectiveError::Fleet {
        group: group.to_string(),
        source,
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.len() > 200 {
        return Err(CollectiveError::InvalidArgument {
            group: name.to_string(),
            reason: "a group name must be 1 to 200 bytes without '/'".into(),
        });
    }
    Ok(())
}

/// Declares a group from a driver: `actors[i]` is rank `i`. Each actor then calls
/// [`Group::join_declared`] with the name (Ray's `create_collective_group`).
pub async fn declare_group(name: &str, actors: &[&fleet::ActorHandle]) -> Result<()> {
    check_name(name)?;
    if actors.is_empty() {
        return Err(CollectiveError::InvalidArgument {
            group: name.into(),
            reason: "a group needs at least one actor".into(),
        });
    }
    let declared = Declared {
        actors: actors.iter().map(|a| a.actor_id().to_string()).collect(),
    };
    let value = serde_json::to_vec(&declared).map_err(|e| CollectiveError::InvalidArgument {
        group: name.into(),
        reason: format!("cannot encode the declaration: {e}"),
    })?;
    fleet::kv::put(NAMESPACE, &declared_key(name), &value)
        .await
        .map_err(fleet_error(name))?;
    Ok(())
}

/// Removes every record of a group from the KV (call it once the group is done for good).
pub async fn remove_group(name: &str) -> Result<()> {
    check_name(name)?;
    fleet::kv::delete_prefix(NAMESPACE, &format!("{name}/"))
        .await
        .map_err(fleet_error(name))
}

/// Waits a little longer each time, up to 100 ms.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(2))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(100));
    }
}

enum Setup {
    Ready(Links),
    /// A newer round started while this one was being wired: join that one.
    Superseded,
}

impl Group {
    /// Joins group `name` as rank `rank` of `world` (Ray's `init_collective_group`), with
    /// the default options. Every rank calls it; it returns once all have and every
    /// connection works. A rank that calls it again (restarted, or after a failure) starts
    /// a new round that the others join by calling it again too.
    pub async fn init(name: &str, world: usize, rank: usize) -> Result<Group> {
        Group::init_with(name, world, rank, GroupOptions::default()).await
    }

    /// `init` with options.
    pub async fn init_with(
        name: &str,
        world: usize,
        rank: usize,
        options: GroupOptions,
    ) -> Result<Group> {
        check_name(name)?;
        if world == 0 || rank >= world {
            return Err(CollectiveError::InvalidArgument {
                group: name.into(),
                reason: format!("rank {rank} of a world of {world}: ranks are 0..world"),
            });
        }
        let deadline = Instant::now() + options.rendezvous_timeout;
        let nonce = format!("{:016x}", rand::random::<u64>());
        loop {
            let round = join_round(name, world, rank, &nonce).await?;
            if !wait_until_complete(name, world, rank, round, deadline).await? {
                continue;
            }
            match wire(name, world, rank, round, &options, deadline).await? {
                Setup::Ready(links) => {
                    let mut group = Group {
                        name: name.to_string(),
                        rank,
                        world,
                        round,
                        options,
                        links,
                        broken: None,
                    };
                    group.handshake(deadline).await?;
                    if rank == 0 && round > 1 {
                        // The previous round's records are of no use any more.
                        let _ = fleet::kv::delete_prefix(NAMESPACE, &round_prefix(name, round - 1))
                            .await;
                    }
                    tracing::debug!(group = name, rank, world, round, "collective group formed");
                    return Ok(group);
                }
                Setup::Superseded => continue,
            }
        }
    }

    /// Joins a group a driver declared with [`declare_group`]: this actor's rank is its
    /// place in the declaration. Only from inside an actor.
    pub async fn join_declared(name: &str, options: GroupOptions) -> Result<Group> {
        check_name(name)?;
        let me = fleet::context()
            .map_err(fleet_error(name))?
            .actor_id
            .ok_or_else(|| CollectiveError::InvalidArgument {
                group: name.into(),
                reason: "join_declared runs inside an actor (its id is its rank's key); elsewhere use Group::init with a rank".into(),
            })?;
        let deadline = Instant::now() + options.rendezvous_timeout;
        let mut backoff = Backoff::new();
        let declared = loop {
            if let Some(entry) = fleet::kv::get(NAMESPACE, &declared_key(name))
                .await
                .map_err(fleet_error(name))?
            {
                break serde_json::from_slice::<Declared>(&entry.value).map_err(|e| {
                    CollectiveError::Rendezvous {
                        group: name.into(),
                        rank: 0,
                        reason: format!("the declaration in the KV is unreadable ({e}); declare the group again"),
                    }
                })?;
            }
            if Instant::now() > deadline {
                return Err(CollectiveError::Rendezvous {
                    group: name.into(),
                    rank: 0,
                    reason: format!(
                        "no driver declared it in {:?}; call declare_group first",
                        options.rendezvous_timeout
                    ),
                });
            }
            backoff.wait().await;
        };
        let rank = declared
            .actors
            .iter()
            .position(|a| *a == me)
            .ok_or_else(|| CollectiveError::Rendezvous {
                group: name.into(),
                rank: 0,
                reason: format!("actor {me} is not one of its declared actors"),
            })?;
        Group::init_with(name, declared.actors.len(), rank, options).await
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many ranks the group has.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// The rendezvous round this membership belongs to (1 for the first forming, raised
    /// by each re-forming).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Whether an earlier operation broke the group (it must be formed again).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// The options it runs with.
    pub fn options(&self) -> &GroupOptions {
        &self.options
    }

    /// Sends a first message to every peer and reads theirs: every connection is up (and
    /// was wired to the rank it claims) before `init` returns.
    async fn handshake(&mut self, deadline: Instant) -> Result<()> {
        let hello = |rank: usize, round: u64| -> Vec<u8> {
            let mut v = (rank as u64).to_le_bytes().to_vec();
            v.extend_from_slice(&round.to_le_bytes());
            v
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        let (rank, round, name) = (self.rank, self.round, self.name.clone());
        let outcome = tokio::time::timeout(budget.max(Duration::from_secs(1)), async {
            let Links { to, from } = &mut self.links;
            let sending = async {
                for (j, tx) in to.iter_mut().enumerate() {
                    if let Some(tx) = tx {
                        tx.send(hello(rank, round))
                            .await
                            .map_err(|e| (j, e.to_string()))?;
                    }
                }
                Ok::<(), (usize, String)>(())
            };
            let receiving = async {
                for (j, rx) in from.iter_mut().enumerate() {
                    if let Some(rx) = rx {
                        match rx.recv().await {
                            Ok(Some(v)) if v == hello(j, round) => {}
                            Ok(Some(_)) => {
                                return Err((j, "its first message is not its hello for this round (wired to the wrong rank?)".to_string()))
                            }
                            Ok(None) => return Err((j, "it closed its channel".to_string())),
                            Err(e) => return Err((j, e.to_string())),
                        }
                    }
                }
                Ok(())
            };
            tokio::try_join!(sending, receiving)
        })
        .await;
        match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((peer, cause))) => Err(CollectiveError::Rendezvous {
                group: name,
                rank,
                reason: format!("the first exchange with rank {peer} failed: {cause}; call init again on every rank"),
            }),
            Err(_) => Err(CollectiveError::Rendezvous {
                group: name,
                rank,
                reason: "the first exchange with the other ranks did not finish in time; call init again on every rank".into(),
            }),
        }
    }
}

/// Joins the open round, or opens the next one; returns the round joined.
async fn join_round(name: &str, world: usize, rank: usize, nonce: &str) -> Result<u64> {
    let key = state_key(name);
    loop {
        let current = fleet::kv::get(NAMESPACE, &key)
            .await
            .map_err(fleet_error(name))?;
        let (next, version) = match current {
            None => (
                RoundState {
                    round: 1,
                    world,
                    joined: BTreeMap::from([(rank, nonce.to_string())]),
                    complete: world == 1,
                },
                0,
            ),
            Some(entry) => {
                let state: RoundState = serde_json::from_slice(&entry.value).map_err(|e| {
                    CollectiveError::Rendezvous {
                        group: name.into(),
                        rank,
                        reason: format!("its state in the KV is unreadable ({e}); remove_group and form it again"),
                    }
                })?;
                let mut next = if state.complete {
                    RoundState {
                        round: state.round + 1,
                        world,
                        joined: BTreeMap::new(),
                        complete: false,
                    }
                } else if state.world != world {
                    return Err(CollectiveError::Rendezvous {
                        group: name.into(),
                        rank,
                        reason: format!(
                            "round {} is forming with {} ranks, and this rank asked for {world}; every rank must pass the same world size",
                            state.round, state.world
                        ),
                    });
                } else {
                    state
                };
                next.joined.insert(rank, nonce.to_string());
                next.complete = next.joined.len() == world;
                (next, entry.version)
            }
        };
        let value = serde_json::to_vec(&next).map_err(|e| CollectiveError::Rendezvous {
            group: name.into(),
            rank,
            reason: format!("cannot encode the round: {e}"),
        })?;
        if fleet::kv::compare_and_set(NAMESPACE, &key, &value, version)
            .await
            .map_err(fleet_error(name))?
        {
            return Ok(next.round);
        }
    }
}

async fn read_state(name: &str, rank: usize) -> Result<Option<RoundState>> {
    let entry = fleet::kv::get(NAMESPACE, &state_key(name))
        .await
        .map_err(fleet_error(name))?;
    entry
        .map(|e| {
            serde_json::from_slice(&e.value).map_err(|e| CollectiveError::Rendezvous {
                group: name.into(),
                rank,
                reason: format!("its state in the KV is unreadable ({e})"),
            })
        })
        .transpose()
}

/// Waits for `round` to fill: `Ok(true)` when it did, `Ok(false)` when a newer round
/// replaced it (join that one).
async fn wait_until_complete(
    name: &str,
    world: usize,
    rank: usize,
    round: u64,
    deadline: Instant,
) -> Result<bool> {
    let mut backoff = Backoff::new();
    loop {
        match read_state(name, rank).await? {
            Some(state) if state.round == round && state.complete => return Ok(true),
            Some(state) if state.round == round => {
                if Instant::now() > deadline {
                    let missing: Vec<usize> = (0..world)
                        .filter(|r| !state.joined.contains_key(r))
                        .collect();
                    return Err(CollectiveError::Rendezvous {
                        group: name.into(),
                        rank,
                        reason: format!(
                            "rank(s) {missing:?} did not join round {round} in time; start them (every rank calls init with the same name and world size)"
                        ),
                    });
                }
            }
            _ => return Ok(false),
        }
        backoff.wait().await;
    }
}

/// Makes this rank's receivers, publishes their senders, takes the ones published for it.
async fn wire(
    name: &str,
    world: usize,
    rank: usize,
    round: u64,
    options: &GroupOptions,
    deadline: Instant,
) -> Result<Setup> {
    let mut links = Links {
        to: (0..world).map(|_| None).collect(),
        from: (0..world).map(|_| None).collect(),
    };
    for peer in (0..world).filter(|p| *p != rank) {
        let (tx, rx) = fleet::channel::<Vec<u8>>(options.channel_capacity);
        let bytes = bincode::serialize(&tx).map_err(|e| CollectiveError::Rendezvous {
            group: name.into(),
            rank,
            reason: format!("cannot encode a channel end: {e}"),
        })?;
        fleet::kv::put(NAMESPACE, &sender_key(name, round, rank, peer), &bytes)
            .await
            .map_err(fleet_error(name))?;
        links.from[peer] = Some(rx);
    }
    for peer in (0..world).filter(|p| *p != rank) {
        let key = sender_key(name, round, peer, rank);
        let mut backoff = Backoff::new();
        let tx = loop {
            if let Some(entry) = fleet::kv::get(NAMESPACE, &key)
                .await
                .map_err(fleet_error(name))?
            {
                let tx: Sender<Vec<u8>> = bincode::deserialize(&entry.value).map_err(|e| {
                    CollectiveError::Rendezvous {
                        group: name.into(),
                        rank,
                        reason: format!("rank {peer}'s channel end in the KV is unreadable ({e})"),
                    }
                })?;
                break tx.connect_timeout(options.op_timeout);
            }
            match read_state(name, rank).await? {
                Some(state) if state.round == round => {}
                _ => return Ok(Setup::Superseded),
            }
            if Instant::now() > deadline {
                return Err(CollectiveError::Rendezvous {
                    group: name.into(),
                    rank,
                    reason: format!("rank {peer} joined round {round} but did not publish its channels in time (did its process die?); call init again on every rank"),
                });
            }
            backoff.wait().await;
        };
        links.to[peer] = Some(tx);
    }
    Ok(Setup::Ready(links))
}
