//! Shared actor hosts: worker processes that each run many actors of one job.
//!
//! An actor that needs no isolation (no GPUs, not `isolate()`d) does not get a process of
//! its own: the raylet places it in one of its job's *hosts* on the node, at most
//! `actor_hosts_per_job` of them (the node's CPUs by default), so thousands of actors cost a
//! few processes, not thousands. Its resources are still held per actor, by its own lease.
//!
//! This module holds the pure decisions (which host gets the next actor; what a host's
//! state is while it starts), unit-tested; `server` does the process work around them.

use tokio::sync::watch;

/// Which actors may share a host: one job's, running one program, detached or not (a host
/// of detached actors outlives the job's driver; one of ordinary actors ends with it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostKey {
    /// The program's pool key (the raylet's own binary, or a job's uploaded one).
    pub pool_key: String,
    /// The job.
    pub job_id: String,
    /// Hosts detached actors.
    pub detached: bool,
}

/// A host's process while and after it starts.
#[derive(Clone, Debug)]
pub enum HostStart {
    /// Spawned (or about to be); not registered yet.
    Starting,
    /// Registered: the worker and where it serves.
    Ready {
        /// The worker's id.
        worker_id: String,
        /// Its CoreWorker address.
        address: String,
    },
    /// It could not start (the reason, for every actor that waited on it).
    Failed(String),
}

/// One host of the node.
pub struct ActorHost {
    /// Whose actors it runs.
    pub key: HostKey,
    /// Its process, once registered.
    pub worker_id: Option<String>,
    /// How its start went (actors placed on a starting host wait on this).
    pub start: watch::Receiver<HostStart>,
    /// Actors placed in it (leases granted or being granted).
    pub actors: u32,
    /// Since when it has had no actor (a host left empty exits after `host_idle_grace`).
    pub empty_since: Option<std::time::Instant>,
}

/// The hosts that have been empty for at least `grace` at `now`: they exit (a job that
/// creates actors again soon reuses a host within the grace instead of starting one).
pub fn idle_hosts<'a>(
    hosts: impl Iterator<Item = (&'a u64, &'a ActorHost)>,
    now: std::time::Instant,
    grace: std::time::Duration,
) -> Vec<u64> {
    hosts
        .filter(|(_, host)| {
            host.actors == 0
                && host
                    .empty_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= grace)
        })
        .map(|(&id, _)| id)
        .collect()
}

/// A host's load, as [`choose_host`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct HostLoad {
    /// The host's id.
    pub host: u64,
    /// Actors in it.
    pub actors: u32,
}

/// Where the next actor goes.
#[derive(Debug, PartialEq, Eq)]
pub enum HostChoice {
    /// Into this existing (possibly still starting) host.
    Existing(u64),
    /// Into a new host.
    Start,
}

/// Picks the host for the next actor of a job: a new one while the job has fewer than
/// `limit` hosts here and none of them is empty (so the first `limit` actors land in
/// `limit` processes, spreading CPU-bound actors over the node's cores), else the least
/// loaded (the oldest on ties, so choices are stable).
pub fn choose_host(hosts: &[HostLoad], limit: usize) -> HostChoice {
    let limit = limit.max(1);
    if hosts.len() < limit && hosts.iter().all(|h| h.actors > 0) {
        return HostChoice::Start;
    }
    hosts
        .iter()
        .min_by_key(|h| (h.actors, h.host))
        .map_or(HostChoice::Start, |h| HostChoice::Existing(h.host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_empty_for_the_grace_are_idle_and_no_others() {
        use std::time::{Duration, Instant};
        let now = Instant::now();
        let (_tx, start) = watch::channel(HostStart::Starting);
        let host = |actors: u32, empty_for: Option<u64>| ActorHost {
            key: HostKey {
                pool_key: "p".into(),
                job_id: "j".into(),
                detached: false,
            },
            worker_id: Some("w".into()),
            start: start.clone(),
            actors,
            empty_since: empty_for.map(|s| now - Duration::from_secs(s)),
        };
        let hosts: std::collections::BTreeMap<u64, ActorHost> = [
            (1, host(0, Some(5))),
            (2, host(0, Some(1))),
            (3, host(2, None)),
            // Emptied once, then given an actor again (its `empty_since` not yet cleared
            // by a sweep): an actor in it keeps it.
            (4, host(1, Some(9))),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            idle_hosts(hosts.iter(), now, Duration::from_secs(3)),
            vec![1]
        );
    }

    fn loads(actors: &[u32]) -> Vec<HostLoad> {
        actors
            .iter()
            .enumerate()
            .map(|(i, &actors)| HostLoad {
                host: i as u64 + 1,
                actors,
            })
            .collect()
    }

    /// Replays `n` placements, each counted at once (as the raylet does under its lock), and
    /// returns the actors per host.
    fn place(n: usize, limit: usize) -> Vec<u32> {
        let mut hosts: Vec<HostLoad> = Vec::new();
        for _ in 0..n {
            match choose_host(&hosts, limit) {
                HostChoice::Start => hosts.push(HostLoad {
                    host: hosts.len() as u64 + 1,
                    actors: 1,
                }),
                HostChoice::Existing(id) => {
                    let host = hosts.iter_mut().find(|h| h.host == id);
                    host.expect("the chosen host exists").actors += 1;
                }
            }
        }
        hosts.iter().map(|h| h.actors).collect()
    }

    #[test]
    fn the_first_actors_get_a_host_each_up_to_the_limit_then_the_least_loaded() {
        assert_eq!(choose_host(&[], 2), HostChoice::Start);
        assert_eq!(choose_host(&loads(&[1]), 2), HostChoice::Start);
        assert_eq!(choose_host(&loads(&[1, 1]), 2), HostChoice::Existing(1));
        assert_eq!(choose_host(&loads(&[3, 2]), 2), HostChoice::Existing(2));
        // An emptied host is reused before another starts.
        assert_eq!(choose_host(&loads(&[4, 0]), 3), HostChoice::Existing(2));
        // A limit of 0 still means one host.
        assert_eq!(choose_host(&[], 0), HostChoice::Start);
        assert_eq!(choose_host(&loads(&[5]), 0), HostChoice::Existing(1));
    }

    #[test]
    fn thousands_of_actors_spread_evenly_over_a_bounded_number_of_hosts() {
        assert_eq!(place(10_000, 2), vec![5_000, 5_000]);
        let per_host = place(1_001, 8);
        assert_eq!(per_host.len(), 8);
        assert!(
            per_host.iter().all(|&n| n == 125 || n == 126),
            "{per_host:?}"
        );
    }
}
