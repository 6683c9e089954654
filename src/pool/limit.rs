//! The per-peer connection limit and the tie-break for simultaneous dials.
//!
//! Both ends of a connection know who dialled it and the dialler's sequence
//! number for it (sent in the hello), so both rank it the same way:
//! connections dialled by the node with the lexicographically smaller peer id
//! come first, then older before newer. When a pair holds more than N
//! connections, each end retires the worst-ranked ones, and since both ends
//! rank alike they retire the same ones: the pair settles on N, not 2N, and
//! never flaps (libp2p resolves simultaneous connects the same way).

use std::cmp::Ordering;

/// What both ends know about a connection, for ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnRank {
    /// Whether the dialler's peer id is the smaller of the two.
    pub(crate) dialed_by_smaller_id: bool,
    /// The dialler's sequence number for this connection (increasing).
    pub(crate) seq: u64,
}

impl Ord for ConnRank {
    /// `Less` is better: kept first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .dialed_by_smaller_id
            .cmp(&self.dialed_by_smaller_id)
            .then(self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for ConnRank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What to do with a connection that arrives while `existing` are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Under the limit: keep it.
    Admit,
    /// At the limit, but it outranks `existing[i]`: keep it, retire that one.
    Displace(usize),
    /// At the limit and it ranks last: refuse it.
    Refuse,
}

/// Decides on a new connection given the ones held (excluding any already
/// being retired) and the limit N.
pub(crate) fn admit(existing: &[ConnRank], candidate: ConnRank, limit: usize) -> Admission {
    if existing.len() < limit {
        return Admission::Admit;
    }
    match worst(existing) {
        Some(i) if candidate < existing[i] => Admission::Displace(i),
        _ => Admission::Refuse,
    }
}

/// Indices of the connections to retire so that at most `limit` remain,
/// worst first.
pub(crate) fn excess(existing: &[ConnRank], limit: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..existing.len()).collect();
    order.sort_by(|&a, &b| existing[b].cmp(&existing[a]));
    order.truncate(existing.len().saturating_sub(limit));
    order
}

fn worst(existing: &[ConnRank]) -> Option<usize> {
    (0..existing.len()).max_by(|&a, &b| existing[a].cmp(&existing[b]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(smaller: bool, seq: u64) -> ConnRank {
        ConnRank {
            dialed_by_smaller_id: smaller,
            seq,
        }
    }

    #[test]
    fn the_smaller_ids_dials_win_a_simultaneous_connect() {
        // Each side dialled 3: the pair keeps the smaller id's 3.
        let all = [
            r(true, 1),
            r(false, 1),
            r(true, 2),
            r(false, 2),
            r(true, 3),
            r(false, 3),
        ];
        let mut retired = excess(&all, 3);
        retired.sort();
        assert_eq!(retired, [1, 3, 5]);
    }

    #[test]
    fn a_newer_dial_by_the_same_node_never_displaces_an_older_one() {
        let held = [r(false, 1), r(false, 2), r(false, 3)];
        assert_eq!(admit(&held, r(false, 4), 3), Admission::Refuse);
        assert_eq!(admit(&held, r(true, 9), 3), Admission::Displace(2));
        assert_eq!(admit(&held[..2], r(false, 4), 3), Admission::Admit);
    }

    proptest! {
        /// Two ends seeing the same set in any order retire the same
        /// connections, and what remains is exactly the best `limit`.
        #[test]
        fn both_ends_agree(mut ranks in proptest::collection::vec((any::<bool>(), 0u64..1000), 0..20), limit in 1usize..8, seed in any::<u64>()) {
            ranks.sort();
            ranks.dedup();
            let a: Vec<ConnRank> = ranks.iter().map(|&(s, q)| r(s, q)).collect();
            let mut b = a.clone();
            // A deterministic shuffle: the other end lists them differently.
            let n = b.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                b.swap(i, j);
            }
            let mut gone_a: Vec<ConnRank> = excess(&a, limit).into_iter().map(|i| a[i]).collect();
            let mut gone_b: Vec<ConnRank> = excess(&b, limit).into_iter().map(|i| b[i]).collect();
            gone_a.sort();
            gone_b.sort();
            prop_assert_eq!(&gone_a, &gone_b);
            prop_assert_eq!(gone_a.len(), n.saturating_sub(limit));
            let kept: Vec<_> = a.iter().filter(|c| !gone_a.contains(c)).collect();
            for k in &kept {
                for g in &gone_a {
                    prop_assert!(*k < g);
                }
            }
        }
    }
}
