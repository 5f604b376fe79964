//! Offsets that follow one another.
//!
//! Capture's producers are idempotent, not transactional, and its topics are
//! not compacted, so a partition's offsets are dense: the message after
//! offset `n` is at `n + 1`. A fetch that answers with a later offset means
//! the broker showed a record batch before an earlier one was readable, and
//! a consumer that moves on has skipped that batch for good. Tansu 0.6 does
//! this: it advances a partition's high watermark before it stores the
//! batch, so a fetch racing two producers of one topic (the streaming
//! capture and a snapshot) can be answered with the later batch while the
//! earlier one is still being stored.
//!
//! [`Continuity`] tells a reader of one partition (an apply direction,
//! `capture tail`), for each message received, whether to handle it, to
//! drop it (received again after a seek), or to fetch again from the first
//! offset missing after a short pause. A gap that stays open for the whole
//! patience is not a batch on its way (a produce that failed after its
//! offsets were taken leaves one; the producer's retry stores the batch at
//! later offsets): the reader reports it and goes on. The first message of
//! an apply session is only required to be at or before the position it
//! resumes from (it starts fetching before it, see apply's
//! `RESUME_LOOKBACK`); a gap there that stays open means the messages after
//! the position are gone, which apply refuses.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaResult;
use rdkafka::Offset;

/// What to do with a message just received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The offset that was due: handle it.
    Handle,
    /// An offset already handled, received again after a fetch from an
    /// earlier offset: drop it.
    Drop,
    /// Offsets `missing.0 .. missing.1` have not been received: fetch again
    /// from `from` after `pause`, dropping this message. `attempt` counts
    /// the fetches of this gap, from 0; `slow` is set on the one fetch at
    /// which the gap has been open for [`SLOW_GAP`].
    FetchAgain {
        from: i64,
        pause: Duration,
        missing: (i64, i64),
        attempt: u32,
        slow: bool,
    },
    /// Offsets `missing.0 .. missing.1` stayed unreadable for the whole
    /// patience, after the first message of the session was received:
    /// handle this message, without them.
    HandleAfterGap { missing: (i64, i64) },
    /// The first message of the session is after the offset it must resume
    /// from, and the offsets between stayed unreadable for the whole
    /// patience: the messages after the position are gone.
    Missing { missing: (i64, i64) },
}

/// The offsets a session has received so far on one partition.
#[derive(Debug)]
pub struct Continuity {
    /// Where the session's consumer started fetching.
    fetch_start: i64,
    /// The first offset the session must receive (the one after its
    /// position); `None` when it reads from the partition's beginning,
    /// wherever that now is.
    resume_at: Option<i64>,
    /// The last offset received in order.
    last: Option<i64>,
    gap: Option<Gap>,
    patience: Duration,
}

/// A gap being waited for.
#[derive(Debug, Clone, Copy)]
struct Gap {
    /// The first offset missing.
    first: i64,
    since: Instant,
    fetches: u32,
    /// Whether it was reported slow.
    slow: bool,
}

/// The first pause before fetching a gap again; doubled on each attempt.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between fetches of a gap.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// How long a gap stays open before the reader says so: longer than any
/// batch takes to be stored by a healthy broker.
pub const SLOW_GAP: Duration = Duration::from_secs(30);

impl Continuity {
    /// A session whose consumer fetches from `fetch_start` and must receive
    /// every offset from `resume_at` on, waiting up to `patience` for a
    /// missing one.
    pub fn new(fetch_start: i64, resume_at: Option<i64>, patience: Duration) -> Self {
        Continuity {
            fetch_start,
            resume_at,
            last: None,
            gap: None,
            patience,
        }
    }

    /// Judges the message at `offset`, received at `now`.
    pub fn received(&mut self, offset: i64, now: Instant) -> Next {
        let (first_missing, refetch_from) = match self.last {
            Some(last) if offset <= last => return Next::Drop,
            Some(last) if offset == last + 1 => return self.accept(offset),
            Some(last) => (last + 1, last + 1),
            None => match self.resume_at {
                Some(resume_at) if offset > resume_at => (resume_at, self.fetch_start),
                _ => return self.accept(offset),
            },
        };
        let missing = (first_missing, offset);
        let gap = match self.gap {
            Some(gap) if gap.first == first_missing => gap,
            _ => Gap {
                first: first_missing,
                since: now,
                fetches: 0,
                slow: false,
            },
        };
        let open_for = now.saturating_duration_since(gap.since);
        if open_for >= self.patience {
            self.gap = None;
            if self.last.is_none() {
                return Next::Missing { missing };
            }
            self.accept(offset);
            return Next::HandleAfterGap { missing };
        }
        let pause = FIRST_PAUSE
            .saturating_mul(1 << gap.fetches.min(16))
            .min(MAX_PAUSE);
        let slow = !gap.slow && open_for >= SLOW_GAP;
        self.gap = Some(Gap {
            fetches: gap.fetches + 1,
            slow: gap.slow || slow,
            ..gap
        });
        Next::FetchAgain {
            from: refetch_from,
            pause,
            missing,
            attempt: gap.fetches,
            slow,
        }
    }

    fn accept(&mut self, offset: i64) -> Next {
        self.last = Some(offset);
        self.gap = None;
        Next::Handle
    }
}

/// Does what [`Next::FetchAgain`] asks of the reader of partition 0 of
/// `topic`: waits `pause`, then moves `consumer` back to `from`. Messages
/// fetched before the seek are discarded by librdkafka.
pub async fn fetch_again(
    consumer: &(impl Consumer + Sync),
    topic: &str,
    from: i64,
    pause: Duration,
) -> KafkaResult<()> {
    tokio::time::sleep(pause).await;
    consumer.seek(topic, 0, Offset::Offset(from), Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(30);

    /// The first fetch of a gap: from `from`, for `missing`.
    fn first_fetch(from: i64, missing: (i64, i64)) -> Next {
        Next::FetchAgain {
            from,
            pause: FIRST_PAUSE,
            missing,
            attempt: 0,
            slow: false,
        }
    }

    /// The pause and the slow flag of a fetch again.
    fn fetch_of(next: Next) -> (Duration, bool) {
        match next {
            Next::FetchAgain { pause, slow, .. } => (pause, slow),
            other => panic!("expected a fetch again, got {other:?}"),
        }
    }

    fn resuming_at(resume_at: i64) -> Continuity {
        Continuity::new(
            resume_at.saturating_sub(100).max(0),
            Some(resume_at),
            PATIENCE,
        )
    }

    #[test]
    fn consecutive_offsets_are_handled_and_repeated_ones_dropped() {
        let now = Instant::now();
        let mut continuity = Continuity::new(0, None, PATIENCE);
        assert_eq!(continuity.received(7, now), Next::Handle);
        assert_eq!(continuity.received(8, now), Next::Handle);
        assert_eq!(continuity.received(8, now), Next::Drop);
        assert_eq!(continuity.received(3, now), Next::Drop);
        assert_eq!(continuity.received(9, now), Next::Handle);
    }

    #[test]
    fn a_later_batch_shown_first_is_dropped_and_the_gap_fetched_again() {
        let now = Instant::now();
        let mut continuity = Continuity::new(0, None, PATIENCE);
        assert_eq!(continuity.received(0, now), Next::Handle);
        assert_eq!(continuity.received(184, now), first_fetch(1, (1, 184)));
        // The earlier batch became readable.
        assert_eq!(continuity.received(1, now), Next::Handle);
        assert_eq!(continuity.received(2, now), Next::Handle);
    }

    #[test]
    fn fetching_a_gap_again_backs_off_up_to_a_second() {
        let now = Instant::now();
        let mut continuity = Continuity::new(0, None, PATIENCE);
        continuity.received(0, now);
        let pauses: Vec<Duration> = (0..10)
            .map(|i| fetch_of(continuity.received(5, now + Duration::from_millis(i))).0)
            .collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(pauses[6], Duration::from_millis(640));
        assert_eq!(pauses[7], MAX_PAUSE);
        assert_eq!(pauses[9], MAX_PAUSE);
    }

    #[test]
    fn a_gap_open_for_the_whole_patience_is_reported_and_passed() {
        let now = Instant::now();
        let mut continuity = Continuity::new(0, None, PATIENCE);
        continuity.received(10, now);
        assert!(matches!(
            continuity.received(13, now),
            Next::FetchAgain { from: 11, .. }
        ));
        assert!(matches!(
            continuity.received(13, now + PATIENCE - Duration::from_millis(1)),
            Next::FetchAgain { from: 11, .. }
        ));
        assert_eq!(
            continuity.received(13, now + PATIENCE),
            Next::HandleAfterGap { missing: (11, 13) }
        );
        assert_eq!(continuity.received(14, now + PATIENCE), Next::Handle);
    }

    #[test]
    fn a_new_gap_gets_its_own_patience() {
        let now = Instant::now();
        let mut continuity = Continuity::new(0, None, PATIENCE);
        continuity.received(0, now);
        continuity.received(2, now);
        assert_eq!(continuity.received(1, now + PATIENCE / 2), Next::Handle);
        assert_eq!(continuity.received(2, now + PATIENCE / 2), Next::Handle);
        // Opened later than the first gap: not yet overdue.
        assert!(matches!(
            continuity.received(9, now + PATIENCE),
            Next::FetchAgain { from: 3, .. }
        ));
    }

    #[test]
    fn resuming_accepts_any_first_offset_up_to_the_position() {
        let now = Instant::now();
        assert_eq!(resuming_at(500).received(400, now), Next::Handle);
        assert_eq!(resuming_at(500).received(500, now), Next::Handle);
    }

    #[test]
    fn resuming_past_the_position_fetches_again_from_the_start() {
        let now = Instant::now();
        let mut continuity = resuming_at(500);
        assert_eq!(continuity.received(520, now), first_fetch(400, (500, 520)));
        assert_eq!(
            continuity.received(520, now + PATIENCE),
            Next::Missing {
                missing: (500, 520)
            }
        );
    }

    #[test]
    fn a_gap_open_for_thirty_seconds_is_reported_slow_once() {
        let now = Instant::now();
        let mut continuity = Continuity::new(0, None, Duration::from_secs(300));
        continuity.received(0, now);
        let slow_at = |continuity: &mut Continuity, after: Duration| {
            fetch_of(continuity.received(4, now + after)).1
        };
        assert!(!slow_at(&mut continuity, Duration::ZERO));
        assert!(!slow_at(
            &mut continuity,
            SLOW_GAP - Duration::from_millis(1)
        ));
        assert!(slow_at(&mut continuity, SLOW_GAP));
        assert!(!slow_at(&mut continuity, SLOW_GAP * 2));
    }
}
