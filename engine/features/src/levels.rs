//! Key levels: population statistics of the addresses and networks requests come from, so
//! that an address's behaviour across client keys (tokens, API keys, sessions) and a
//! network's across addresses are features.
//!
//! A client key is one level; every request also counts at its address and at its network
//! (the address's /24 for IPv4 and /48 for IPv6 by default, or the event's autonomous
//! system when `features.network = "asn"` and the event has one). Addresses and networks
//! cross client parts (one address serves many tokens, each in the part of its key), so
//! their tables are population statistics: they advance in the same 30-second epochs, and a
//! request reads the tables as of the end of the previous epoch (see `docs/POPULATION.md`).
//!
//! Per address or network the table keeps its requests and authentication failures
//! (401/403) per epoch for the last [`LEVEL_EPOCHS`] epochs (10 minutes), and its
//! [`MAX_MEMBERS`] most recently seen members (client keys of an address, addresses of a
//! network) with the epoch each was last seen in. The features count the [`LEVEL_EPOCHS`]
//! epochs before the request's own: requests, failures, and distinct members up to
//! [`MAX_MEMBERS`] (a count that reaches it means "at least").
//!
//! Exactness across parts: a part's delta holds integer counts per key and, per key, the
//! [`MAX_MEMBERS`] smallest member hashes it saw in the epoch; the merge sums the counts,
//! keeps the [`MAX_MEMBERS`] smallest hashes of the union (the smallest of a union are
//! among the smallest of each part) and updates members in hash order. Keys new to a table
//! are admitted in ascending key order while the table has room (`max_addresses`, counted
//! at the start of the epoch); a part drops its largest new keys beyond that room, which
//! could never have been admitted. The result does not depend on how clients were split.

use std::collections::BinaryHeap;
use std::net::IpAddr;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::sketch::fnv1a;

/// Epochs a level feature looks back: 20 epochs of 30 s, 10 minutes.
pub const LEVEL_EPOCHS: i64 = 20;
/// Distinct members told apart per address or network.
pub const MAX_MEMBERS: usize = 32;

/// What an address or network did in the epochs before the current one.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct LevelView {
    pub requests: u32,
    pub failures: u32,
    pub members: u32,
}

/// One address's or network's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LevelStats {
    /// (epoch, requests, failures) of its last epochs with requests, oldest first.
    epochs: Vec<(i64, u32, u32)>,
    /// (member hash, last epoch seen): the most recently seen members, ties by hash.
    members: Vec<(u64, i64)>,
}

impl LevelStats {
    /// Totals over the [`LEVEL_EPOCHS`] epochs before `epoch`.
    fn view(&self, epoch: i64) -> LevelView {
        let inside = |e: i64| (1..=LEVEL_EPOCHS).contains(&(epoch.saturating_sub(e)));
        let mut v = LevelView::default();
        for (e, r, f) in &self.epochs {
            if inside(*e) {
                v.requests = v.requests.saturating_add(*r);
                v.failures = v.failures.saturating_add(*f);
            }
        }
        v.members = self.members.iter().filter(|(_, e)| inside(*e)).count() as u32;
        v
    }

    /// The newest epoch it was seen in.
    fn last_epoch(&self) -> i64 {
        self.epochs.last().map_or(i64::MIN, |e| e.0)
    }

    fn apply(&mut self, epoch: i64, d: &LevelDelta) {
        if d.requests > 0 || d.failures > 0 {
            self.epochs.push((epoch, d.requests, d.failures));
        }
        for h in &d.members {
            match self.members.iter_mut().find(|(m, _)| m == h) {
                Some(m) => m.1 = epoch,
                None => self.members.push((*h, epoch)),
            }
        }
        // The most recent first, then by hash; keep MAX_MEMBERS.
        self.members
            .sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        self.members.truncate(MAX_MEMBERS);
    }

    /// Drops what the next epoch cannot read (epochs before `epoch + 1 - LEVEL_EPOCHS`);
    /// false when nothing is left.
    fn trim(&mut self, epoch: i64) -> bool {
        let oldest = epoch.saturating_add(1).saturating_sub(LEVEL_EPOCHS);
        self.epochs.retain(|(e, _, _)| *e >= oldest);
        self.members.retain(|(_, e)| *e >= oldest);
        !self.epochs.is_empty()
    }

    fn validate(&self, epoch: i64) -> Result<(), String> {
        if self.epochs.is_empty() || self.epochs.len() > LEVEL_EPOCHS as usize {
            return Err(format!("{} epochs of counts", self.epochs.len()));
        }
        if self.epochs.windows(2).any(|w| w[0].0 >= w[1].0) || self.last_epoch() > epoch {
            return Err("epochs out of order or after the state's epoch".into());
        }
        if self.members.len() > MAX_MEMBERS || self.members.iter().any(|(_, e)| *e > epoch) {
            return Err(format!(
                "{} members or a member after the state's epoch",
                self.members.len()
            ));
        }
        Ok(())
    }
}

/// What one part's requests add to one address or network in an epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LevelDelta {
    requests: u32,
    failures: u32,
    /// The smallest member hashes seen, ascending, at most [`MAX_MEMBERS`].
    members: Vec<u64>,
}

impl LevelDelta {
    fn add_member(&mut self, h: u64) {
        if let Err(at) = self.members.binary_search(&h) {
            if at < MAX_MEMBERS {
                self.members.insert(at, h);
                self.members.truncate(MAX_MEMBERS);
            }
        }
    }

    fn add(&mut self, o: &LevelDelta) {
        self.requests = self.requests.saturating_add(o.requests);
        self.failures = self.failures.saturating_add(o.failures);
        for h in &o.members {
            self.add_member(*h);
        }
    }
}

/// The address or network table of the merged epochs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct LevelTable {
    table: HashMap<u128, LevelStats>,
    /// New keys not counted because the table was full, per epoch and part that saw them
    /// (a diagnostic that depends on the split, so not part of the state's equality).
    pub dropped: u64,
}

impl PartialEq for LevelTable {
    fn eq(&self, other: &Self) -> bool {
        self.table == other.table
    }
}

impl LevelTable {
    pub(crate) fn view(&self, key: u128, epoch: i64) -> LevelView {
        self.table
            .get(&key)
            .map_or_else(LevelView::default, |s| s.view(epoch))
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Merges the deltas of `epoch`: new keys admitted in ascending order while fewer than
    /// `room` were, counts added, then everything the next epoch cannot read dropped.
    fn merge(&mut self, epoch: i64, deltas: Vec<LevelDeltas>, room: usize) {
        let mut sum: HashMap<u128, LevelDelta> = HashMap::new();
        for d in deltas {
            self.dropped += d.dropped;
            for (k, v) in d.table {
                match sum.get_mut(&k) {
                    Some(s) => s.add(&v),
                    None => {
                        sum.insert(k, v);
                    }
                }
            }
        }
        let mut new: Vec<u128> = sum
            .keys()
            .filter(|k| !self.table.contains_key(*k))
            .copied()
            .collect();
        new.sort_unstable();
        if new.len() > room {
            self.dropped += (new.len() - room) as u64;
            for k in new.drain(room..) {
                sum.remove(&k);
            }
        }
        for (k, d) in &sum {
            self.table.entry(*k).or_default().apply(epoch, d);
        }
        self.table.retain(|_, s| s.trim(epoch));
    }

    fn validate(&self, epoch: i64, max: usize, what: &str) -> Result<(), String> {
        if self.table.len() > max {
            return Err(format!(
                "{} {what}, above the cap of {max}",
                self.table.len()
            ));
        }
        for (k, s) in &self.table {
            s.validate(epoch)
                .map_err(|e| format!("{what} {k:#x}: {e}"))?;
        }
        Ok(())
    }
}

/// One part's contributions to a level table in the open epoch, bounded like the table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct LevelDeltas {
    table: HashMap<u128, LevelDelta>,
    /// New keys dropped beyond the room.
    #[serde(default)]
    dropped: u64,
    #[serde(skip)]
    new_heap: BinaryHeap<u128>,
}

impl LevelDeltas {
    /// Counts a request of `member` at `key`; a key new to `merged` beyond its `room` is
    /// dropped, the largest first.
    fn count(&mut self, merged: &LevelTable, room: usize, key: u128, member: u64, failed: bool) {
        let count = |d: &mut LevelDelta| {
            d.requests = d.requests.saturating_add(1);
            d.failures = d.failures.saturating_add(u32::from(failed));
            d.add_member(member);
        };
        // Most requests come from a key already counted this epoch: one lookup.
        if let Some(d) = self.table.get_mut(&key) {
            count(d);
            return;
        }
        if !merged.table.contains_key(&key) {
            self.new_heap.push(key);
            if self.new_heap.len() > room {
                let drop = self.new_heap.pop().expect("non-empty");
                self.dropped += 1;
                if drop == key {
                    return;
                }
                self.table.remove(&drop);
            }
        }
        count(self.table.entry(key).or_default());
    }

    fn reindex(&mut self, merged: &LevelTable, room: usize) {
        self.new_heap = self
            .table
            .keys()
            .filter(|k| !merged.table.contains_key(*k))
            .copied()
            .collect();
        while self.new_heap.len() > room {
            let drop = self.new_heap.pop().expect("non-empty");
            self.table.remove(&drop);
            self.dropped += 1;
        }
    }

    fn absorb(&mut self, merged: &LevelTable, room: usize, other: LevelDeltas) {
        self.dropped += other.dropped;
        for (k, v) in other.table {
            if let Some(d) = self.table.get_mut(&k) {
                d.add(&v);
            } else {
                self.table.insert(k, v);
            }
        }
        self.reindex(merged, room);
    }

    fn validate(&self) -> Result<(), String> {
        for (k, d) in &self.table {
            if d.members.len() > MAX_MEMBERS || d.members.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!(
                    "delta of {k:#x}: members not ascending or too many"
                ));
            }
        }
        Ok(())
    }
}

/// How a request's network is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkRule {
    /// Prefix length of an IPv4 address's network.
    pub v4_prefix: u8,
    /// Prefix length of an IPv6 address's network.
    pub v6_prefix: u8,
    /// The event's autonomous system, when it has one, instead of the prefix.
    pub asn: bool,
}

/// An address as a table key (IPv4 as its IPv4-mapped IPv6 address).
pub(crate) fn address_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// A request's network as a table key: its address's prefix (the rest zero, the prefix
/// length in the low byte so /24 and /16 differ), or its autonomous system's FNV-1a hash
/// with the top bit set.
pub(crate) fn network_key(ip: IpAddr, asn: Option<&str>, rule: NetworkRule) -> u128 {
    if rule.asn {
        if let Some(a) = asn {
            return (1u128 << 127) | u128::from(fnv1a(a.as_bytes()));
        }
    }
    let (bits, prefix) = match ip {
        IpAddr::V4(_) => (address_key(ip), 96 + u32::from(rule.v4_prefix.min(32))),
        IpAddr::V6(a) => (u128::from(a), u32::from(rule.v6_prefix.min(128))),
    };
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    ((bits & mask) & !0xff) | u128::from(prefix as u8)
}

/// The address and network tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Levels {
    pub addresses: LevelTable,
    pub networks: LevelTable,
    /// The rooms of the open epoch: `max - len` at its start.
    rooms: (usize, usize),
}

/// One part's contributions to both tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct LevelsDelta {
    addresses: LevelDeltas,
    networks: LevelDeltas,
}

impl Levels {
    /// Sets the rooms for the epoch that opens, from the cap.
    pub(crate) fn open(&mut self, max: usize) {
        self.rooms = (
            max.saturating_sub(self.addresses.len()),
            max.saturating_sub(self.networks.len()),
        );
    }

    pub(crate) fn merge<'a>(
        &mut self,
        epoch: i64,
        deltas: impl IntoIterator<Item = &'a mut LevelsDelta>,
    ) {
        let (mut a, mut n) = (Vec::new(), Vec::new());
        for d in deltas {
            let d = std::mem::take(d);
            a.push(d.addresses);
            n.push(d.networks);
        }
        self.addresses.merge(epoch, a, self.rooms.0);
        self.networks.merge(epoch, n, self.rooms.1);
    }

    pub(crate) fn validate(&self, epoch: i64, max: usize) -> Result<(), String> {
        self.addresses.validate(epoch, max, "address")?;
        self.networks.validate(epoch, max, "network")
    }
}

impl LevelsDelta {
    /// Counts a request of client `client` (its key's hash) from `address` in `network`.
    pub(crate) fn count(
        &mut self,
        levels: &Levels,
        address: u128,
        network: u128,
        client: u64,
        failed: bool,
    ) {
        let addr_member = (address as u64) ^ ((address >> 64) as u64).rotate_left(29);
        self.addresses
            .count(&levels.addresses, levels.rooms.0, address, client, failed);
        self.networks.count(
            &levels.networks,
            levels.rooms.1,
            network,
            addr_member,
            failed,
        );
    }

    pub(crate) fn reindex(&mut self, levels: &Levels) {
        self.addresses.reindex(&levels.addresses, levels.rooms.0);
        self.networks.reindex(&levels.networks, levels.rooms.1);
    }

    pub(crate) fn absorb(&mut self, levels: &Levels, other: LevelsDelta) {
        self.addresses
            .absorb(&levels.addresses, levels.rooms.0, other.addresses);
        self.networks
            .absorb(&levels.networks, levels.rooms.1, other.networks);
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.addresses.validate()?;
        self.networks.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_prefixes_or_systems() {
        let r = NetworkRule {
            v4_prefix: 24,
            v6_prefix: 48,
            asn: false,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            network_key(ip("81.2.3.4"), None, r),
            network_key(ip("81.2.3.200"), Some("AS1"), r)
        );
        assert_ne!(
            network_key(ip("81.2.3.4"), None, r),
            network_key(ip("81.2.4.4"), None, r)
        );
        let v6 = network_key(ip("2001:db8:1:2::1"), None, r);
        assert_eq!(v6, network_key(ip("2001:db8:1:ffff::9"), None, r));
        assert_ne!(v6, network_key(ip("2001:db8:2::1"), None, r));
        let wide = NetworkRule { v4_prefix: 16, ..r };
        assert_ne!(
            network_key(ip("81.2.0.0"), None, r),
            network_key(ip("81.2.0.0"), None, wide),
            "a /16 and a /24 with the same bits are different networks"
        );
        let asn = NetworkRule { asn: true, ..r };
        assert_eq!(
            network_key(ip("81.2.3.4"), Some("AS3320"), asn),
            network_key(ip("9.9.9.9"), Some("AS3320"), asn)
        );
        assert_eq!(
            network_key(ip("81.2.3.4"), None, asn),
            network_key(ip("81.2.3.4"), None, r),
            "without an ASN, the prefix"
        );
    }

    #[test]
    fn counts_cover_the_twenty_epochs_before_and_members_saturate() {
        let mut l = Levels::default();
        l.open(100);
        let mut d = LevelsDelta::default();
        let addr = address_key("10.0.0.1".parse().unwrap());
        for c in 0..40u64 {
            d.count(&l, addr, 7, c, c % 4 == 0);
        }
        l.merge(100, [&mut d]);
        let v = l.addresses.view(addr, 101);
        assert_eq!((v.requests, v.failures, v.members), (40, 10, 32));
        assert_eq!(
            l.addresses.view(addr, 100),
            LevelView::default(),
            "not its own epoch"
        );
        assert_eq!(l.addresses.view(addr, 120).requests, 40);
        assert_eq!(l.addresses.view(addr, 121), LevelView::default());
        // Empty epochs drop what no later epoch reads.
        for e in 101..=120 {
            l.open(100);
            l.merge(e, std::iter::empty());
        }
        assert_eq!(l.addresses.len(), 0);
    }

    #[test]
    fn the_merge_does_not_depend_on_the_split_and_new_keys_stop_at_the_cap() {
        let events: Vec<(u128, u128, u64, bool)> = (0..500u64)
            .map(|i| {
                let a = u128::from(i * 7919 % 61);
                (a, a / 8, i % 45, i % 3 == 0)
            })
            .collect();
        let run = |parts: usize, max: usize| {
            let mut l = Levels::default();
            for epoch in 0..3i64 {
                l.open(max);
                let mut ds = vec![LevelsDelta::default(); parts];
                for (i, (a, n, c, f)) in events.iter().enumerate() {
                    if i % 3 == epoch as usize {
                        ds[(*c as usize) % parts].count(&l, *a, *n, *c, *f);
                    }
                }
                l.merge(epoch, ds.iter_mut());
            }
            l
        };
        for max in [1000, 20, 3] {
            let one = run(1, max);
            assert!(one.addresses.len() <= max);
            for parts in [2, 3, 7] {
                assert_eq!(run(parts, max), one, "{parts} parts, cap {max}");
            }
        }
        assert!(run(1, 3).addresses.dropped > 0);
    }
}
