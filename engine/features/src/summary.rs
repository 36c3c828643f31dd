//! Bounded structures for run summaries keyed by input data (client keys, labels): their
//! memory has a cap whatever the input holds.

use hashbrown::{HashMap, HashSet};

use crate::sketch::{fnv1a, mix};

/// Keys counted exactly before a [`DistinctCount`] switches to its sketch.
pub const EXACT_DISTINCT: usize = 64;
/// HyperLogLog precision: 2^12 registers (4 KiB), relative standard error 1.04/√4096 ≈ 1.6%.
const HLL_BITS: u32 = 12;

/// The number of distinct keys seen: exact up to [`EXACT_DISTINCT`] keys, then a HyperLogLog
/// estimate (4 KiB, about 1.6% relative standard error), so memory stays bounded under key
/// rotation.
#[derive(Debug, Clone, Default)]
pub struct DistinctCount {
    exact: HashSet<Box<str>>,
    registers: Vec<u8>,
}

impl DistinctCount {
    /// Counts `key`.
    pub fn add(&mut self, key: &str) {
        if self.registers.is_empty() {
            if self.exact.contains(key) {
                return;
            }
            if self.exact.len() < EXACT_DISTINCT {
                self.exact.insert(key.into());
                return;
            }
            self.registers = vec![0; 1 << HLL_BITS];
            for k in std::mem::take(&mut self.exact) {
                self.sketch(&k);
            }
        }
        self.sketch(key);
    }

    fn sketch(&mut self, key: &str) {
        let h = mix(fnv1a(key.as_bytes()));
        let idx = (h >> (64 - HLL_BITS)) as usize;
        let rank = ((h << HLL_BITS) | (1 << (HLL_BITS - 1))).leading_zeros() as u8 + 1;
        let r = &mut self.registers[idx];
        *r = (*r).max(rank);
    }

    /// Whether the count is exact (not yet an estimate).
    pub fn is_exact(&self) -> bool {
        self.registers.is_empty()
    }

    /// The number of distinct keys (exact, or the estimate rounded).
    pub fn count(&self) -> u64 {
        if self.registers.is_empty() {
            return self.exact.len() as u64;
        }
        let m = f64::from(1u32 << HLL_BITS);
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self
            .registers
            .iter()
            .map(|&r| 2f64.powi(-i32::from(r)))
            .sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|&&r| r == 0).count();
        let est = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        est.round() as u64
    }

    /// Bytes held, roughly.
    pub fn memory_bytes(&self) -> usize {
        self.registers.capacity()
            + self
                .exact
                .iter()
                .map(|k| k.len() + 2 * std::mem::size_of::<usize>() + 1)
                .sum::<usize>()
    }
}

/// Per-key summaries for at most `cap` keys. When full, the half that matters least by
/// `rank` is dropped (counted in [`dropped`](Self::dropped)): the `cap / 2` highest ranked
/// keys always stay, and memory stays bounded. A dropped key that comes back starts afresh.
#[derive(Debug, Clone)]
pub struct TopKeys<V> {
    cap: usize,
    map: HashMap<Box<str>, V>,
    dropped: u64,
}

impl<V> TopKeys<V> {
    /// At most `cap` keys (at least 2).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(2),
            map: HashMap::new(),
            dropped: 0,
        }
    }

    /// The value of `key`, inserted by `new` if absent; `rank` orders values when keys must
    /// be dropped (lowest dropped first).
    pub fn entry<R: PartialOrd + Copy>(
        &mut self,
        key: &str,
        new: impl FnOnce() -> V,
        rank: impl Fn(&V) -> R,
    ) -> &mut V {
        if !self.map.contains_key(key) {
            if self.map.len() >= self.cap {
                self.prune(&rank);
            }
            self.map.insert(key.into(), new());
        }
        self.map.get_mut(key).expect("present")
    }

    /// Drops all but the `cap / 2` highest ranked, in place (ties broken by a fixed hash of
    /// the key, so the outcome does not depend on the map's order).
    fn prune<R: PartialOrd + Copy>(&mut self, rank: &impl Fn(&V) -> R) {
        let keep = self.cap / 2;
        if self.map.len() <= keep {
            return;
        }
        let order = |a: &(R, u64), b: &(R, u64)| {
            a.0.partial_cmp(&b.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.1.cmp(&b.1))
        };
        let mut ranks: Vec<(R, u64)> = self
            .map
            .iter()
            .map(|(k, v)| (rank(v), fnv1a(k.as_bytes())))
            .collect();
        let at = ranks.len() - keep;
        ranks.select_nth_unstable_by(at, order);
        let cut = ranks[at];
        drop(ranks);
        let before = self.map.len();
        self.map.retain(|k, v| {
            order(&(rank(v), fnv1a(k.as_bytes())), &cut) != std::cmp::Ordering::Less
        });
        self.dropped += (before - self.map.len()) as u64;
    }

    /// The value of `key`, if held.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    /// Keys and values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.map.iter().map(|(k, v)| (&**k, v))
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The cap.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Keys dropped to stay under the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_counts_are_exact_then_estimated_in_bounded_memory() {
        let mut d = DistinctCount::default();
        for round in 0..3 {
            for i in 0..EXACT_DISTINCT {
                d.add(&format!("ip:10.0.{}.{}", i / 256, i % 256));
            }
            assert_eq!(d.count(), EXACT_DISTINCT as u64, "round {round}");
            assert!(d.is_exact());
        }
        let mem_exact = d.memory_bytes();
        for n in [2_000u64, 10_000, 100_000, 1_000_000] {
            let mut d = DistinctCount::default();
            for i in 0..n {
                d.add(&format!("ip:{i}"));
                d.add(&format!("ip:{}", i / 2));
            }
            let err = (d.count() as f64 - n as f64).abs() / n as f64;
            assert!(err < 0.05, "{n}: {} ({err})", d.count());
            assert!(!d.is_exact());
            assert!(d.memory_bytes() <= 4096 + 64, "{}", d.memory_bytes());
        }
        assert!(mem_exact < 100_000);
    }

    #[test]
    fn top_keys_keep_the_highest_ranked_under_the_cap() {
        let mut t: TopKeys<u64> = TopKeys::new(100);
        for i in 0..100_000u64 {
            // Every 2000th key matters (rank 1000+); the rest rotate with rank 0.
            let rank = if i % 2000 == 0 { 1000 + i } else { 0 };
            *t.entry(&format!("k{i}"), || 0, |v| *v) = rank;
            assert!(t.len() <= 100);
        }
        let mut kept: Vec<u64> = t.iter().map(|(_, v)| *v).filter(|v| *v > 0).collect();
        kept.sort_unstable();
        assert_eq!(kept.len(), 50, "all 50 that matter are kept (half the cap)");
        assert_eq!(t.dropped(), 100_000 - t.len() as u64);
    }
}
