//! What a replica may do while it catches up after starting on an empty disk.
//!
//! Raft's safety rests on every replica remembering what it acknowledged and whom it voted
//! for. A replica whose data dir was lost comes back under its old id without that memory:
//! if it voted now, it could elect a stale replica that lacks entries committed with its own
//! lost acknowledgement (leader and follower commit, the follower is wiped, the leader dies:
//! the wiped follower and a stale third replica form a majority without those entries).
//!
//! So, until it holds everything a leader had committed when it first heard from one, the
//! replica neither votes (vote and pre-vote requests are not answered) nor campaigns (it is
//! not ticked, and leader transfers to it are dropped). It still takes appends and snapshots
//! and acknowledges them: an acknowledgement of an entry it has persisted is true. The
//! decision is a pure function of the messages seen, tested below; the driver persists the
//! mark so that a crash while catching up does not make a full voter of it.

use raft::prelude::{Message, MessageType};

/// Progress of one replica's catch-up.
#[derive(Debug, Default)]
pub(crate) struct CatchUp {
    /// The commit index of the first append a leader sent: everything committed before this
    /// replica came back (with or without its lost acknowledgements) is at or below it.
    target: Option<u64>,
}

impl CatchUp {
    /// Whether `message` may be stepped into Raft while catching up; notes the target from
    /// the first append.
    pub(crate) fn admit(&mut self, message: &Message) -> bool {
        match message.get_msg_type() {
            MessageType::MsgRequestVote
            | MessageType::MsgRequestPreVote
            | MessageType::MsgTimeoutNow => false,
            MessageType::MsgAppend => {
                if self.target.is_none() {
                    self.target = Some(message.commit.max(1));
                }
                true
            }
            _ => true,
        }
    }

    /// Whether a replica whose log is durable up to `persisted` has caught up.
    pub(crate) fn caught_up(&self, persisted: u64) -> bool {
        self.target.is_some_and(|target| persisted >= target)
    }

    /// The index the replica must reach (once a leader was heard).
    pub(crate) fn target(&self) -> Option<u64> {
        self.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageType, commit: u64) -> Message {
        let mut message = Message {
            commit,
            ..Message::default()
        };
        message.set_msg_type(kind);
        message
    }

    #[test]
    fn votes_and_leader_transfers_are_refused_until_caught_up() {
        let mut catch_up = CatchUp::default();
        for kind in [
            MessageType::MsgRequestVote,
            MessageType::MsgRequestPreVote,
            MessageType::MsgTimeoutNow,
        ] {
            assert!(!catch_up.admit(&message(kind, 0)), "{kind:?} refused");
        }
        assert!(catch_up.admit(&message(MessageType::MsgHeartbeat, 0)));
        assert!(catch_up.admit(&message(MessageType::MsgSnapshot, 0)));
        assert!(!catch_up.caught_up(u64::MAX), "no leader heard yet");
    }

    #[test]
    fn the_first_append_fixes_the_target() {
        let mut catch_up = CatchUp::default();
        assert!(catch_up.admit(&message(MessageType::MsgAppend, 40)));
        // Later appends carry later commits; the replica would never catch up if each one
        // moved the target.
        assert!(catch_up.admit(&message(MessageType::MsgAppend, 90)));
        assert_eq!(catch_up.target(), Some(40));
        assert!(!catch_up.caught_up(39));
        assert!(catch_up.caught_up(40));
    }

    #[test]
    fn a_zero_commit_still_needs_the_bootstrap_entry() {
        let mut catch_up = CatchUp::default();
        catch_up.admit(&message(MessageType::MsgAppend, 0));
        assert!(!catch_up.caught_up(0));
        assert!(catch_up.caught_up(1));
    }
}
