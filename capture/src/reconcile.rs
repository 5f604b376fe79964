//! Deletes for the polling fallback: which keys capture sent that the table
//! no longer has.
//!
//! ```text
//!   table keys (sorted, paged) ──┐
//!                                ├──► KeyMerge ──► gone keys ──► Delete events
//!   capture_keys (sorted, paged) ┘
//! ```
//!
//! Polling cannot see a deleted row: it is simply not there any more. Capture
//! therefore keeps, per table, the keys it has sent (`syncbridge.capture_keys`,
//! kept up to date as pages are confirmed) and, every
//! `polling.reconcile_interval`, walks the table's current keys and that
//! ledger side by side, both sorted the same way (`text[]` in the "C"
//! collation, which orders like Rust's `Vec<String>`: element by element,
//! bytewise), a page at a time: a sorted merge in memory bounded by two
//! pages. A key in the ledger and not in the table was deleted; a key in the
//! table and not in the ledger was written since the last poll, or behind
//! the watermark (apply writes the other side's `updated_at`): it is added
//! to the ledger (its row is sent by the next poll if it is new enough), so
//! that its delete is found later.

use std::cmp::Ordering;
use std::collections::VecDeque;

/// What the merge needs or found next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeStep<K> {
    /// This key was sent before and is no longer in the table.
    Gone(K),
    /// This key is in the table and not in the ledger.
    Unknown(K),
    /// Feed the next page of the table's keys ([`KeyMerge::feed_live`]).
    NeedLive,
    /// Feed the next page of the ledger's keys ([`KeyMerge::feed_known`]).
    NeedKnown,
    /// Both sides are exhausted.
    Done,
}

/// A sorted merge of two key streams, fed a page at a time: yields the keys
/// of the `known` stream that the `live` stream does not have, and those of
/// `live` that `known` does not have. Both streams
/// must be sorted ascending without duplicates; an empty page ends a stream.
#[derive(Debug)]
pub struct KeyMerge<K> {
    live: VecDeque<K>,
    known: VecDeque<K>,
    live_done: bool,
    known_done: bool,
}

impl<K: Ord> Default for KeyMerge<K> {
    fn default() -> Self {
        KeyMerge {
            live: VecDeque::new(),
            known: VecDeque::new(),
            live_done: false,
            known_done: false,
        }
    }
}

impl<K: Ord> KeyMerge<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next page of the table's keys; an empty page: there are no more.
    pub fn feed_live(&mut self, page: Vec<K>) {
        if page.is_empty() {
            self.live_done = true;
        }
        self.live.extend(page);
    }

    /// The next page of the ledger's keys; an empty page: there are no more.
    pub fn feed_known(&mut self, page: Vec<K>) {
        if page.is_empty() {
            self.known_done = true;
        }
        self.known.extend(page);
    }

    /// Advances as far as the pages fed allow.
    pub fn next_step(&mut self) -> MergeStep<K> {
        loop {
            if self.known.is_empty() && !self.known_done {
                return MergeStep::NeedKnown;
            }
            if self.live.is_empty() && !self.live_done {
                return MergeStep::NeedLive;
            }
            let (Some(live), Some(known)) = (self.live.front(), self.known.front()) else {
                if let Some(key) = self.known.pop_front() {
                    return MergeStep::Gone(key);
                }
                if let Some(key) = self.live.pop_front() {
                    return MergeStep::Unknown(key);
                }
                return MergeStep::Done;
            };
            match live.cmp(known) {
                Ordering::Less => {
                    if let Some(key) = self.live.pop_front() {
                        return MergeStep::Unknown(key);
                    }
                }
                Ordering::Equal => {
                    self.live.pop_front();
                    self.known.pop_front();
                }
                Ordering::Greater => return self.pop_gone(),
            }
        }
    }

    fn pop_gone(&mut self) -> MergeStep<K> {
        match self.known.pop_front() {
            Some(key) => MergeStep::Gone(key),
            None => MergeStep::Done,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// Drives a merge over two sorted sets cut into pages of the given sizes.
    fn run_merge(
        live: &BTreeSet<Vec<String>>,
        known: &BTreeSet<Vec<String>>,
        live_page: usize,
        known_page: usize,
    ) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let mut live_pages = live
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .chunks(live_page)
            .map(<[_]>::to_vec)
            .collect::<VecDeque<_>>();
        let mut known_pages = known
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .chunks(known_page)
            .map(<[_]>::to_vec)
            .collect::<VecDeque<_>>();
        let mut merge = KeyMerge::new();
        let mut gone = Vec::new();
        let mut unknown = Vec::new();
        loop {
            match merge.next_step() {
                MergeStep::Gone(key) => gone.push(key),
                MergeStep::Unknown(key) => unknown.push(key),
                MergeStep::NeedLive => merge.feed_live(live_pages.pop_front().unwrap_or_default()),
                MergeStep::NeedKnown => {
                    merge.feed_known(known_pages.pop_front().unwrap_or_default())
                }
                MergeStep::Done => return (gone, unknown),
            }
        }
    }

    fn key(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn keys_missing_from_the_table_are_gone_and_new_ones_are_left_alone() {
        let live: BTreeSet<_> = [key(&["1"]), key(&["3"]), key(&["4"])].into();
        let known: BTreeSet<_> = [key(&["1"]), key(&["2"]), key(&["4"]), key(&["5"])].into();
        assert_eq!(
            run_merge(&live, &known, 1, 2),
            (vec![key(&["2"]), key(&["5"])], vec![key(&["3"])])
        );
    }

    #[test]
    fn an_empty_table_means_every_known_key_is_gone() {
        let known: BTreeSet<_> = [key(&["a", "1"]), key(&["a", "2"])].into();
        let all: Vec<_> = known.iter().cloned().collect();
        assert_eq!(
            run_merge(&BTreeSet::new(), &known, 3, 1),
            (all.clone(), vec![])
        );
        assert_eq!(run_merge(&known, &BTreeSet::new(), 1, 1), (vec![], all));
    }

    proptest! {
        #[test]
        fn the_merge_equals_the_set_differences(
            live in proptest::collection::btree_set(proptest::collection::vec("[a-c0-9]{0,3}", 1..3), 0..60),
            known in proptest::collection::btree_set(proptest::collection::vec("[a-c0-9]{0,3}", 1..3), 0..60),
            live_page in 1usize..8,
            known_page in 1usize..8,
        ) {
            let gone: Vec<Vec<String>> = known.difference(&live).cloned().collect();
            let unknown: Vec<Vec<String>> = live.difference(&known).cloned().collect();
            prop_assert_eq!(run_merge(&live, &known, live_page, known_page), (gone, unknown));
        }
    }
}
