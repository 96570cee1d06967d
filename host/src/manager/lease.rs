//! Leases: a reader that keeps getting from a queue with a backlog is handed a short run of the
//! items behind the one it asked for, and takes them one by one without asking the host again.
//!
//! The host keeps the leased items (still counted against the queue's limits) until the lease is
//! *settled*; the worker keeps a copy. They agree on how many the worker has taken through one
//! word of memory both map, the worker's [`Tally`]: the worker *claims* the next item with a
//! compare-and-swap before handing it to its task, and the host *revokes* the lease with an
//! atomic OR, which fails every later claim and tells it exactly how many were taken. So a lease
//! can be taken back at any moment, without the worker's help — from a worker that is frozen,
//! busy, or dead — and no item is ever both taken and given back: delivery stays exactly once.
//!
//! The word: bit 63 says revoked, bits 32–62 the lease's generation (so a claim on an old lease
//! fails), bits 0–31 how many items have been claimed.
//!
//! The host believes the count: a count over the lease, or of another generation, is taken as
//! all claimed. What it cannot tell is a worker that read its leased items and then claimed
//! fewer: only a worker whose sandbox has been broken can, and the items it read would then be
//! given to another getter too. Without leases such a worker sees only the items it gets.
//!
//! This module is the protocol on the word; where leases are granted and settled is the queue
//! table's (`memory.rs`), and the worker's side is in `worker`.

use std::sync::atomic::{AtomicU64, Ordering};

/// The shared word of one worker's leases: memory the host and the worker both map.
pub(crate) trait Tally: Send + Sync {
    /// The word.
    fn word(&self) -> &AtomicU64;
}

/// A word in this process's memory: for the queue table's tests, where the "worker" is a thread.
impl Tally for AtomicU64 {
    fn word(&self) -> &AtomicU64 {
        self
    }
}

const REVOKED: u64 = 1 << 63;
const GENERATIONS: u32 = 1 << 31;
const COUNT: u64 = (1 << 32) - 1;

fn packed(generation: u32, taken: u32) -> u64 {
    (u64::from(generation % GENERATIONS) << 32) | u64::from(taken)
}

fn generation_of(word: u64) -> u32 {
    ((word & !REVOKED) >> 32) as u32
}

/// The host starts lease `generation` on `tally`, with nothing taken. Only while the worker waits
/// for the answer that carries the lease, so it cannot be claiming on the word meanwhile; the
/// answer's write to the socket orders this store before the worker's first claim.
pub(crate) fn grant(tally: &dyn Tally, generation: u32) {
    tally.word().store(packed(generation, 0), Ordering::Release);
}

/// The worker claims the item after the `taken` it has: `true` if it is now the worker's to hand
/// to its task, `false` if the lease has been revoked (and the item, with those after it, is the
/// host's again).
pub(crate) fn claim(tally: &dyn Tally, generation: u32, taken: u32) -> bool {
    tally
        .word()
        .compare_exchange(
            packed(generation, taken),
            packed(generation, taken + 1),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
}

/// Revokes lease `generation` of `len` items: no claim succeeds after this. Returns how many the
/// worker had claimed. A word the worker has scribbled on (another generation, a count over the
/// lease) counts as all claimed: an item may then be lost, never given twice.
pub(crate) fn revoke(tally: &dyn Tally, generation: u32, len: u32) -> u32 {
    taken_in(tally.word().fetch_or(REVOKED, Ordering::AcqRel), generation, len)
}

/// How many of lease `generation`'s `len` items the worker has claimed so far: a look, for
/// counting, that changes nothing.
pub(crate) fn claimed(tally: &dyn Tally, generation: u32, len: u32) -> u32 {
    taken_in(tally.word().load(Ordering::Acquire), generation, len)
}

fn taken_in(word: u64, generation: u32, len: u32) -> u32 {
    let count = (word & COUNT) as u32;
    if generation_of(word) != generation % GENERATIONS || count > len {
        len
    } else {
        count
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use super::*;

    #[test]
    fn claims_count_until_revoked_and_then_fail() {
        let tally = AtomicU64::new(0);
        grant(&tally, 7);
        assert!(claim(&tally, 7, 0));
        assert!(claim(&tally, 7, 1));
        assert_eq!(claimed(&tally, 7, 5), 2);
        assert_eq!(revoke(&tally, 7, 5), 2);
        assert!(!claim(&tally, 7, 2));
        assert_eq!(claimed(&tally, 7, 5), 2);
        // Revoking twice is harmless.
        assert_eq!(revoke(&tally, 7, 5), 2);
    }

    #[test]
    fn a_claim_on_another_generation_or_out_of_turn_fails() {
        let tally = AtomicU64::new(0);
        grant(&tally, 3);
        assert!(!claim(&tally, 2, 0));
        assert!(!claim(&tally, 3, 1));
        assert!(claim(&tally, 3, 0));
        // A new lease starts afresh, revoked or not before.
        revoke(&tally, 3, 4);
        grant(&tally, 4);
        assert!(claim(&tally, 4, 0));
        assert_eq!(claimed(&tally, 4, 1), 1);
    }

    #[test]
    fn generations_wrap_without_confusing_the_word() {
        let tally = AtomicU64::new(0);
        let generation = u32::MAX;
        grant(&tally, generation);
        assert!(claim(&tally, generation, 0));
        assert_eq!(revoke(&tally, generation, 3), 1);
    }

    #[test]
    fn a_scribbled_word_counts_as_all_taken() {
        let tally = AtomicU64::new(0);
        grant(&tally, 1);
        tally.store(packed(9, 0), Ordering::Relaxed);
        assert_eq!(revoke(&tally, 1, 6), 6);
        tally.store(packed(1, 99), Ordering::Relaxed);
        assert_eq!(revoke(&tally, 1, 6), 6);
    }

    /// A worker claiming as fast as it can while the host revokes: every item is either claimed
    /// or given back, never both, never neither.
    #[test]
    fn a_race_of_claims_and_a_revoke_splits_the_items_exactly() {
        for round in 0..200u32 {
            let tally = Arc::new(AtomicU64::new(0));
            let len = 1_000;
            grant(tally.as_ref(), round);
            let worker = {
                let tally = tally.clone();
                thread::spawn(move || {
                    let mut taken = 0;
                    while taken < len && claim(tally.as_ref(), round, taken) {
                        taken += 1;
                    }
                    taken
                })
            };
            let given_back = len - revoke(tally.as_ref(), round, len);
            let taken = worker.join().unwrap();
            assert_eq!(taken + given_back, len, "round {round}");
        }
    }
}
