//! Progress through the source's WAL, as types that only move forward.
//!
//! Capture acknowledges a position to the replication slot only when every
//! event before it is durable in Kafka. [`Acknowledged`] holds that position:
//! it can advance, never go back, and asserts so in debug builds. The
//! [`Ledger`] decides when a position may be acknowledged: entries are
//! appended in the order events are produced, each one either a delivery to
//! wait for or a position that becomes safe once everything appended before it
//! is delivered.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pg::Lsn;

/// The replication client's LSN as ours.
pub fn from_wire(lsn: pgwire_replication::Lsn) -> Lsn {
    Lsn(lsn.as_u64())
}

/// Our LSN as the replication client's.
pub fn to_wire(lsn: Lsn) -> pgwire_replication::Lsn {
    pgwire_replication::Lsn::from_u64(lsn.0)
}

/// The position acknowledged to the slot: everything before it is in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Acknowledged(Lsn);

impl Acknowledged {
    pub fn new(start: Lsn) -> Self {
        Acknowledged(start)
    }

    pub fn get(&self) -> Lsn {
        self.0
    }

    /// Moves forward to `to` and returns true, or returns false and stays put
    /// when `to` is not ahead (a keepalive can repeat an older position).
    pub fn advance(&mut self, to: Lsn) -> bool {
        if to > self.0 {
            self.0 = to;
            true
        } else {
            false
        }
    }
}

/// One entry of the [`Ledger`].
enum Entry<D> {
    /// An event handed to Kafka, with the position that becomes safe once it
    /// (and everything before it) is delivered: set on a transaction's last event.
    Delivery { pending: D, then_safe: Option<Lsn> },
    /// A position that is safe once everything before it is delivered
    /// (a keepalive or heartbeat between transactions).
    Position(Lsn),
}

/// Deliveries in production order and the positions they guard.
///
/// Contract: entries complete strictly in the order they were appended; a
/// position is released only after every delivery appended before it
/// succeeded. A failed delivery stops the ledger: the caller must end the
/// session and resume from the slot, which replays every transaction after
/// the last released position (duplicates, never gaps).
pub struct Ledger<D> {
    entries: VecDeque<Entry<D>>,
    deliveries: usize,
}

impl<D> Default for Ledger<D> {
    fn default() -> Self {
        Ledger {
            entries: VecDeque::new(),
            deliveries: 0,
        }
    }
}

impl<D, E> Ledger<D>
where
    D: Future<Output = Result<(), E>> + Unpin,
{
    /// Appends a delivery; `then_safe` is the position released once it lands.
    pub fn push_delivery(&mut self, pending: D, then_safe: Option<Lsn>) {
        self.deliveries += 1;
        self.entries
            .push_back(Entry::Delivery { pending, then_safe });
    }

    /// Appends a position that is safe once every earlier delivery has landed.
    pub fn push_position(&mut self, lsn: Lsn) {
        // Two positions in a row: the later one supersedes the earlier.
        if let Some(Entry::Position(last)) = self.entries.back_mut() {
            if lsn > *last {
                *last = lsn;
            }
            return;
        }
        self.entries.push_back(Entry::Position(lsn));
    }

    /// Deliveries still in flight.
    pub fn in_flight(&self) -> usize {
        self.deliveries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Waits until at least one entry completes, then returns the newest
    /// position released so far (if any) after consuming every entry that is
    /// already complete. Pending forever when the ledger is empty.
    pub fn released(&mut self) -> Released<'_, D> {
        Released { ledger: self }
    }

    fn poll_released(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Lsn>, E>> {
        let mut released = None;
        let mut progressed = false;
        while let Some(front) = self.entries.front_mut() {
            match front {
                Entry::Position(lsn) => {
                    released = Some(*lsn);
                }
                Entry::Delivery { pending, then_safe } => match Pin::new(pending).poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Ready(Ok(())) => {
                        if let Some(lsn) = then_safe {
                            released = Some(*lsn);
                        }
                        self.deliveries -= 1;
                    }
                },
            }
            progressed = true;
            self.entries.pop_front();
        }
        if progressed {
            Poll::Ready(Ok(released))
        } else {
            Poll::Pending
        }
    }
}

/// Future returned by [`Ledger::released`].
pub struct Released<'a, D> {
    ledger: &'a mut Ledger<D>,
}

impl<D, E> Future for Released<'_, D>
where
    D: Future<Output = Result<(), E>> + Unpin,
{
    type Output = Result<Option<Lsn>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().ledger.poll_released(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::channel::oneshot;
    use futures::FutureExt;

    type Pending = futures::future::Map<
        oneshot::Receiver<Result<(), &'static str>>,
        fn(Result<Result<(), &'static str>, oneshot::Canceled>) -> Result<(), &'static str>,
    >;

    fn delivery() -> (oneshot::Sender<Result<(), &'static str>>, Pending) {
        let (tx, rx) = oneshot::channel();
        let flatten: fn(_) -> _ =
            |r: Result<Result<(), &'static str>, oneshot::Canceled>| r.unwrap_or(Err("canceled"));
        (tx, rx.map(flatten))
    }

    #[test]
    fn acknowledged_position_never_moves_back() {
        let mut ack = Acknowledged::new(Lsn(10));
        assert!(ack.advance(Lsn(20)));
        assert!(!ack.advance(Lsn(15)));
        assert!(!ack.advance(Lsn(20)));
        assert_eq!(ack.get(), Lsn(20));
    }

    #[test]
    fn a_position_is_released_only_after_every_earlier_delivery() {
        let mut ledger = Ledger::default();
        let (first, first_rx) = delivery();
        let (second, second_rx) = delivery();
        ledger.push_delivery(first_rx, None);
        ledger.push_delivery(second_rx, Some(Lsn(100)));
        ledger.push_position(Lsn(150));

        // The second delivery lands first: nothing may be released yet.
        second.send(Ok(())).unwrap();
        assert!(ledger.released().now_or_never().is_none());

        first.send(Ok(())).unwrap();
        let released = ledger.released().now_or_never().unwrap().unwrap();
        assert_eq!(released, Some(Lsn(150)));
        assert!(ledger.is_empty());
        assert_eq!(ledger.in_flight(), 0);
    }

    #[test]
    fn a_failed_delivery_releases_nothing_after_it() {
        let mut ledger = Ledger::default();
        let (first, first_rx) = delivery();
        let (second, second_rx) = delivery();
        ledger.push_delivery(first_rx, Some(Lsn(10)));
        ledger.push_delivery(second_rx, Some(Lsn(20)));
        first.send(Err("broker said no")).unwrap();
        second.send(Ok(())).unwrap();
        assert_eq!(
            ledger.released().now_or_never().unwrap(),
            Err("broker said no")
        );
    }

    #[test]
    fn consecutive_positions_collapse_into_the_newest() {
        let mut ledger: Ledger<Pending> = Ledger::default();
        ledger.push_position(Lsn(5));
        ledger.push_position(Lsn(9));
        ledger.push_position(Lsn(7));
        let released = ledger.released().now_or_never().unwrap().unwrap();
        assert_eq!(released, Some(Lsn(9)));
    }
}
