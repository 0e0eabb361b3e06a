//! A checkpointed actor's policy, as pure decisions: when a checkpoint is due, whether a
//! reply waits for one, which retried call was already answered, and which checkpoint
//! paths and actor ids from the wire are acceptable. The executor performs them.
//!
//! **Group commit** (the default): a reply goes out only once a committed checkpoint covers
//! its call, so an acknowledged call is never lost by a crash. Calls run back to back while
//! more are waiting in the mailbox, their replies held; one checkpoint then covers the whole
//! group (at most `checkpoint_every` calls, or [`MAX_GROUP_CALLS`]), and every held reply is
//! released — or, if the commit failed, answered with that failure. A caller that waits for
//! each reply gets one checkpoint per call; a caller that pipelines gets one per group.
//!
//! **Answer first** (`ActorBuilder::answer_before_checkpoint`): replies go out at once and a
//! checkpoint is taken every `checkpoint_every` calls or `checkpoint_interval`; a crash loses
//! the calls answered since the last checkpoint. Named so that nobody gets it by accident.

use std::collections::VecDeque;
use std::path::{Component, Path, PathBuf};

use crate::registry::TaskError;

/// The largest group of calls one checkpoint covers when `checkpoint_every` sets no bound.
pub const MAX_GROUP_CALLS: usize = 1024;
/// Answers kept per actor for deduplicating retried calls.
pub const REMEMBERED_ANSWERS: usize = 1024;
/// Larger answers are not kept (every checkpoint carries them): a retry of such a call after
/// a restart is refused with an error instead of being applied twice.
pub const REMEMBERED_ANSWER_BYTES: usize = 16 << 10;

/// The largest checkpoint restored (the restoring worker reads it whole into memory).
pub const MAX_CHECKPOINT_BYTES: u64 = 4 << 30;

/// The size of the checkpoint file at `path`, refused when it is larger than a checkpoint
/// may be.
pub async fn checked_size(path: &Path) -> Result<u64, String> {
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if size > MAX_CHECKPOINT_BYTES {
        return Err(format!(
            "{} holds {size} bytes, more than a checkpoint may ({MAX_CHECKPOINT_BYTES} bytes)",
            path.display()
        ));
    }
    Ok(size)
}

/// Reads the checkpoint a creation message names (`url`), only from `actor_id`'s own
/// directory of `checkpoint_dir` and only up to `MAX_CHECKPOINT_BYTES`.
pub async fn read_checkpoint(
    url: &str,
    checkpoint_dir: &Path,
    actor_id: &str,
) -> Result<Vec<u8>, String> {
    let path = checkpoint_file(url, checkpoint_dir, actor_id)?;
    checked_size(&path).await?;
    tokio::fs::read(&path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// What a checkpoint file holds: the actor's state and the answers of its latest calls, so
/// that a call retried after a restart (applied before the crash, its reply lost) is
/// answered from here instead of being applied twice.
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub(crate) struct CheckpointEnvelope {
    pub state: Vec<u8>,
    pub answers: Vec<(String, Option<Vec<u8>>)>,
}

/// One actor's checkpoint settings and the state of its policy.
pub(crate) struct CheckpointPolicy {
    /// Answers of the latest calls (task id, reply), carried in checkpoints.
    pub answers: VecDeque<(String, Option<Vec<u8>>)>,
    pub actor_id: String,
    /// Checkpoint every this many calls (answer first), or at most this many calls per
    /// group (group commit); 0: no count.
    pub every: u64,
    pub interval: Option<std::time::Duration>,
    /// Replies go out before the checkpoint that covers them (loses calls on a crash).
    pub answer_first: bool,
    pub dir: PathBuf,
    pub sequence: u64,
    /// Checkpoint files this instance committed, oldest first (it removes its own only).
    pub written: VecDeque<PathBuf>,
}

impl CheckpointPolicy {
    /// Whether this actor checkpoints by itself (not only on demand).
    pub fn checkpointing(&self) -> bool {
        self.every > 0 || self.interval.is_some()
    }

    /// Whether replies wait for the checkpoint covering their call (group commit).
    pub fn holds_replies(&self) -> bool {
        self.checkpointing() && !self.answer_first
    }

    /// The most calls one checkpoint covers under group commit.
    pub fn group_limit(&self) -> usize {
        if self.every > 0 {
            (self.every as usize).min(MAX_GROUP_CALLS)
        } else {
            MAX_GROUP_CALLS
        }
    }

    /// Whether to checkpoint now, after a call finished: `calls_since` calls ran since the
    /// last checkpoint, `held` replies wait for one, and `mailbox_empty` says no further
    /// call is ready to join the group.
    pub fn due(&self, calls_since: u64, held: usize, mailbox_empty: bool) -> bool {
        if self.holds_replies() {
            held > 0 && (held >= self.group_limit() || mailbox_empty)
        } else {
            self.every > 0 && calls_since >= self.every
        }
    }

    /// The answer of a call already applied (a retry after a restart), if remembered.
    pub fn answered(&self, task_id: &str) -> Option<Result<Vec<u8>, TaskError>> {
        if task_id.is_empty() {
            return None;
        }
        self.answers
            .iter()
            .rev()
            .find(|(id, _)| id == task_id)
            .map(|(_, answer)| {
                answer.clone().ok_or_else(|| {
                    TaskError::system(format!(
                        "call {task_id} was already applied before the actor restarted, and its answer (over {REMEMBERED_ANSWER_BYTES} bytes) was not kept; it is not applied twice"
                    ))
                })
            })
    }

    /// Remembers a call's answer for the next checkpoint.
    pub fn remember(&mut self, task_id: &str, answer: &[u8]) {
        if !self.checkpointing() || task_id.is_empty() {
            return;
        }
        if self.answers.len() >= REMEMBERED_ANSWERS {
            self.answers.pop_front();
        }
        let kept = (answer.len() <= REMEMBERED_ANSWER_BYTES).then(|| answer.to_vec());
        self.answers.push_back((task_id.to_string(), kept));
    }
}

/// What a held reply gets when the checkpoint that was to cover its call failed.
pub fn uncovered_call_error(error: &TaskError) -> TaskError {
    TaskError::system(format!(
        "the call ran, but the checkpoint that was to cover it failed ({}); its effect is in \
         the actor's memory and is lost if the actor restarts before its next checkpoint",
        error.message
    ))
}

/// An actor id names a directory of the checkpoint store: letters, digits, '-', '_' only
/// (what Fleet makes), so that an id from the wire cannot climb out of the store.
pub fn validate_actor_id(actor_id: &str) -> Result<(), String> {
    if actor_id.is_empty()
        || actor_id.len() > 128
        || !actor_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "actor id {actor_id:?} is not a valid id (1 to 128 letters, digits, '-' or '_')"
        ));
    }
    Ok(())
}

/// The file a committed checkpoint's URL (from the GCS) names, accepted only inside
/// `checkpoint_dir/actor_id/` and with no `..`: a record pointing elsewhere is refused, not
/// read.
pub fn checkpoint_file(
    url: &str,
    checkpoint_dir: &Path,
    actor_id: &str,
) -> Result<PathBuf, String> {
    validate_actor_id(actor_id)?;
    let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
    let store = checkpoint_dir.join(actor_id);
    let climbs = path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir));
    if climbs || !path.starts_with(&store) || path.parent() != Some(store.as_path()) {
        return Err(format!(
            "the checkpoint record of actor {actor_id} names {}, which is not a file of its \
             checkpoint store {}; refusing to read it",
            path.display(),
            store.display()
        ));
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(every: u64, interval: bool, answer_first: bool) -> CheckpointPolicy {
        CheckpointPolicy {
            answers: VecDeque::new(),
            actor_id: "actor-1".into(),
            every,
            interval: interval.then(|| std::time::Duration::from_millis(100)),
            answer_first,
            dir: PathBuf::from("/ckpt"),
            sequence: 0,
            written: VecDeque::new(),
        }
    }

    #[test]
    fn group_commit_holds_replies_until_the_group_is_full_or_nothing_waits() {
        let p = policy(10, false, false);
        assert!(p.holds_replies());
        // More calls are ready: keep grouping until 10.
        assert!(!p.due(3, 3, false));
        assert!(p.due(10, 10, false));
        // Nothing else ready: commit what is held now, whatever the count.
        assert!(p.due(1, 1, true));
        // Nothing held: nothing to commit.
        assert!(!p.due(0, 0, true));
        // Interval only: groups bounded by MAX_GROUP_CALLS.
        let timed = policy(0, true, false);
        assert!(timed.holds_replies());
        assert!(!timed.due(5, 5, false));
        assert!(timed.due(5, MAX_GROUP_CALLS, false));
        assert!(timed.due(1, 1, true));
    }

    #[test]
    fn answer_first_checkpoints_by_count_only() {
        let p = policy(10, false, true);
        assert!(!p.holds_replies());
        assert!(!p.due(9, 0, true));
        assert!(p.due(10, 0, false));
        // Not checkpointing at all: nothing is due, nothing held.
        let off = policy(0, false, false);
        assert!(!off.holds_replies());
        assert!(!off.due(100, 0, true));
    }

    #[test]
    fn retried_calls_are_answered_from_memory_and_large_answers_refused() {
        let mut p = policy(1, false, false);
        p.remember("t1", b"one");
        p.remember("t2", &vec![0u8; REMEMBERED_ANSWER_BYTES + 1]);
        assert_eq!(p.answered("t1").and_then(|a| a.ok()), Some(b"one".to_vec()));
        let big = p.answered("t2").and_then(|a| a.err());
        assert!(big.is_some_and(|e| e.message.contains("not applied twice")));
        assert!(p.answered("t3").is_none());
        assert!(p.answered("").is_none());
        for i in 0..REMEMBERED_ANSWERS {
            p.remember(&format!("x{i}"), b"");
        }
        assert!(
            p.answered("t1").is_none(),
            "the oldest answers are forgotten"
        );
    }

    #[test]
    fn actor_ids_and_checkpoint_paths_from_the_wire_stay_in_the_store() {
        assert!(validate_actor_id("actor-0123abcd_x").is_ok());
        for bad in ["", "..", "a/b", "../../etc", "a b", &"x".repeat(129)] {
            assert!(validate_actor_id(bad).is_err(), "{bad:?}");
        }
        let dir = Path::new("/ckpt");
        let good = checkpoint_file("file:///ckpt/actor-1/000000000003-w.ckpt", dir, "actor-1");
        assert_eq!(
            good.ok(),
            Some(PathBuf::from("/ckpt/actor-1/000000000003-w.ckpt"))
        );
        for url in [
            "file:///etc/shadow",
            "file:///ckpt/actor-1/../actor-2/x.ckpt",
            "file:///ckpt/actor-2/x.ckpt",
            "file:///ckpt/actor-1/sub/x.ckpt",
            "file://ckpt/actor-1/x.ckpt",
        ] {
            let refused = checkpoint_file(url, dir, "actor-1");
            assert!(
                refused.as_ref().is_err_and(|e| e.contains("refusing")),
                "{url}: {refused:?}"
            );
        }
        assert!(checkpoint_file("file:///ckpt/../x", dir, "..").is_err());
    }

    proptest::proptest! {
        /// A checkpoint from disk, damaged: an envelope or an error, never a panic.
        #[test]
        fn damaged_checkpoints_decode_or_fail_cleanly(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            flip in proptest::prelude::any::<(usize, u8)>(),
        ) {
            let _ = crate::codec::decode::<CheckpointEnvelope>(&bytes, "a checkpoint");
            let mut valid = crate::codec::encode(
                &CheckpointEnvelope {
                    state: vec![1, 2, 3],
                    answers: vec![("task-1".into(), Some(vec![4])), ("task-2".into(), None)],
                },
                "a checkpoint",
            )
            .expect("encodes");
            let at = flip.0 % valid.len();
            valid[at] ^= flip.1;
            let _ = crate::codec::decode::<CheckpointEnvelope>(&valid, "a checkpoint");
        }

        /// Whatever a checkpoint record names and whatever actor id comes with it, a path
        /// that is accepted is a file directly inside that actor's directory of the store.
        #[test]
        fn accepted_checkpoint_paths_stay_in_the_store(
            url in "(file://)?(/ckpt/|/|\\.\\./|/ckpt/actor-1/)?[a-z0-9./_-]{0,30}",
            actor_id in "[a-z0-9./_-]{0,12}|actor-1",
        ) {
            let store = Path::new("/ckpt");
            if let Ok(path) = checkpoint_file(&url, store, &actor_id) {
                proptest::prop_assert!(validate_actor_id(&actor_id).is_ok());
                let actor_dir = store.join(&actor_id);
                proptest::prop_assert_eq!(path.parent(), Some(actor_dir.as_path()));
                proptest::prop_assert!(!path
                    .components()
                    .any(|c| matches!(c, Component::ParentDir | Component::CurDir)));
            }
        }
    }
}
