//! Population statistics: endpoint templates, per-endpoint request counts, typical
//! per-client rates and the endpoint-transition model shared by all clients.
//!
//! They advance in event-time epochs of [`EPOCH_MS`]. During an epoch they are read-only:
//! every request reads the statistics of all earlier epochs, and what it contributes goes
//! into its part's [`Delta`]. At the end of an epoch the deltas of every part are merged in,
//! with integer sums and a fixed order of floating-point operations, so the statistics, and
//! the features read from them, do not depend on how clients were split into parts (see
//! `docs/POPULATION.md`).

use std::collections::{BTreeMap, BinaryHeap};

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::levels::{Levels, LevelsDelta, NetworkRule};
use crate::registry::ENDPOINT_BUCKET_MS;
use crate::sketch::fnv1a;

/// Length of a population epoch (ms): the endpoint bucket, 30 s.
pub const EPOCH_MS: i64 = ENDPOINT_BUCKET_MS;
/// Weight of one epoch's votes after another epoch: a half-life of 120 epochs (one hour).
pub const VOTE_DECAY: f64 = 0.994_240_423_817_547_3;
/// At most this many distinct (from, to) transitions are counted; later new pairs count as 0.
pub const MAX_TRANSITIONS: usize = 1 << 20;
/// Bins of the per-client count histogram: exact for 1–7, then four per octave up to 4095.
pub(crate) const VOTE_BINS: usize = 40;

/// No endpoint: the start of a client's requests.
pub(crate) const START: u32 = u32::MAX;

/// The epoch of a timestamp.
pub fn epoch_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(EPOCH_MS)
}

/// The histogram bin of a per-client count (≥ 1).
pub(crate) fn vote_bin(c: u32) -> usize {
    if c < 8 {
        return c.max(1) as usize - 1;
    }
    let l = 31 - c.leading_zeros() as usize;
    (7 + (l - 3) * 4 + ((c >> (l - 2)) & 3) as usize).min(VOTE_BINS - 1)
}

/// The smallest count of a bin.
pub(crate) fn bin_floor(b: usize) -> u32 {
    if b < 7 {
        return b as u32 + 1;
    }
    let (l, m) = (3 + (b - 7) / 4, (b - 7) % 4);
    (4 + m as u32) << (l - 2)
}

/// `VOTE_DECAY` to the power `epochs`, by squaring (the same operations everywhere).
pub(crate) fn decay_over(epochs: u64) -> f64 {
    let (mut r, mut b, mut e) = (1.0f64, VOTE_DECAY, epochs);
    while e > 0 {
        if e & 1 == 1 {
            r *= b;
        }
        b *= b;
        e >>= 1;
    }
    r
}

/// 1 + the count of the weighted median bin of `votes`; NaN when there are no votes.
pub(crate) fn typical_of(votes: &[f64; VOTE_BINS]) -> f64 {
    let total: f64 = votes.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return f64::NAN;
    }
    let half = total * 0.5;
    let mut cum = 0.0;
    for (b, v) in votes.iter().enumerate() {
        cum += v;
        if cum >= half {
            return 1.0 + f64::from(bin_floor(b));
        }
    }
    1.0 + f64::from(bin_floor(VOTE_BINS - 1))
}

/// Serde for the fixed-size bin arrays (serde derives arrays up to 32 only).
mod bins {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::VOTE_BINS;

    pub fn serialize<T: Serialize, S: Serializer>(
        v: &[T; VOTE_BINS],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<[T; VOTE_BINS], D::Error> {
        let v = Vec::<T>::deserialize(d)?;
        let n = v.len();
        v.try_into()
            .map_err(|_| D::Error::custom(format!("{n} vote bins, expected {VOTE_BINS}")))
    }
}

/// One endpoint's population statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EndpointStats {
    /// FNV-1a of the template.
    pub hash: u64,
    /// Requests of the two newest epochs with requests: (epoch, count), newest first.
    pub recent: [(i64, u32); 2],
    /// Per-client peak counts (`endpoint_count_1m`), one vote per client and epoch, decayed.
    #[serde(with = "bins")]
    pub votes: [f64; VOTE_BINS],
    /// The epoch `votes` was last updated in.
    pub votes_epoch: i64,
    /// 1 + the weighted median count of `votes` (NaN without votes).
    pub typical: f64,
    /// Transitions out of this endpoint.
    pub out_total: u64,
}

impl EndpointStats {
    fn new(hash: u64) -> Self {
        Self {
            hash,
            recent: [(i64::MIN, 0); 2],
            votes: [0.0; VOTE_BINS],
            votes_epoch: i64::MIN,
            typical: f64::NAN,
            out_total: 0,
        }
    }

    fn apply(&mut self, epoch: i64, d: &EpDelta) {
        if d.requests > 0 {
            self.recent = [(epoch, d.requests), self.recent[0]];
        }
        self.out_total = self.out_total.saturating_add(u64::from(d.out));
        if d.votes.iter().any(|v| *v != 0) {
            let f = if self.votes_epoch == i64::MIN {
                1.0
            } else {
                decay_over(epoch.saturating_sub(self.votes_epoch).unsigned_abs())
            };
            for (v, n) in self.votes.iter_mut().zip(&d.votes) {
                *v = (*v * f + f64::from(*n)).max(0.0);
            }
            self.votes_epoch = epoch;
            self.typical = typical_of(&self.votes);
        }
    }
}

/// What one part's requests add to one endpoint in an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct EpDelta {
    requests: u32,
    out: u32,
    #[serde(with = "bins")]
    votes: [i32; VOTE_BINS],
}

impl Default for EpDelta {
    fn default() -> Self {
        Self {
            requests: 0,
            out: 0,
            votes: [0; VOTE_BINS],
        }
    }
}

impl EpDelta {
    fn add(&mut self, o: &EpDelta) {
        self.requests = self.requests.saturating_add(o.requests);
        self.out = self.out.saturating_add(o.out);
        for (a, b) in self.votes.iter_mut().zip(&o.votes) {
            *a = a.saturating_add(*b);
        }
    }
}

/// One part's contributions to the population statistics in the current epoch.
///
/// Bounded: new templates beyond the room left in the endpoint table, and new transition
/// pairs beyond the room left under [`MAX_TRANSITIONS`], are dropped largest first (a new
/// template's counts go to the overflow endpoint). The merge admits the smallest of all parts'
/// new keys, so what a part drops could never have been admitted: the bound changes nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Delta {
    known: HashMap<u32, EpDelta>,
    new: HashMap<u64, (Box<str>, EpDelta)>,
    transitions: HashMap<(u32, u32), u32>,
    start: u64,
    /// Contributions to the address and network tables.
    pub(crate) levels: LevelsDelta,
    #[serde(skip)]
    new_heap: BinaryHeap<u64>,
    #[serde(skip)]
    pair_heap: BinaryHeap<(u32, u32)>,
}

impl Delta {
    /// Whether no request was counted into it (every request counts a transition).
    pub(crate) fn is_empty(&self) -> bool {
        self.start == 0 && self.known.is_empty() && self.new.is_empty()
    }

    /// The entry of endpoint `idx` (known) or of the new template `hash`.
    fn entry(&mut self, pop: &Population, ep: Ep<'_>) -> &mut EpDelta {
        match ep {
            Ep::Known(i) => self.known.entry(i).or_default(),
            Ep::New(hash, template) => {
                if !self.new.contains_key(&hash)
                    && self.add_new(pop, hash, template.into(), EpDelta::default()) == Some(hash)
                {
                    return self.known.entry(0).or_default();
                }
                &mut self.new.get_mut(&hash).expect("inserted").1
            }
        }
    }

    /// Adds a new template's entry; beyond the table's room the largest new template goes to
    /// the overflow endpoint (returned).
    fn add_new(&mut self, pop: &Population, hash: u64, t: Box<str>, d: EpDelta) -> Option<u64> {
        self.new.insert(hash, (t, d));
        self.new_heap.push(hash);
        if self.new_heap.len() <= pop.template_room() {
            return None;
        }
        let drop = self.new_heap.pop().expect("non-empty");
        let (_, d) = self.new.remove(&drop).expect("in the map");
        self.known.entry(0).or_default().add(&d);
        Some(drop)
    }

    /// Adds `n` to a transition pair; a pair the population does not count yet is dropped,
    /// largest first, beyond the room left under [`MAX_TRANSITIONS`].
    fn add_pair(&mut self, pop: &Population, pair: (u32, u32), n: u32) {
        if let Some(c) = self.transitions.get_mut(&pair) {
            *c = c.saturating_add(n);
            return;
        }
        self.transitions.insert(pair, n);
        if !pop.transitions.contains_key(&pair) {
            self.pair_heap.push(pair);
            if self.pair_heap.len() > MAX_TRANSITIONS - pop.transitions.len() {
                let drop = self.pair_heap.pop().expect("non-empty");
                self.transitions.remove(&drop);
            }
        }
    }

    /// Counts one request: the transition `from` → `to` (indices at this epoch), the request
    /// on its endpoint, and the client's vote: its count `c` on the endpoint, replacing its
    /// vote `c - 1` of this epoch when `repeat`.
    pub(crate) fn count(
        &mut self,
        pop: &Population,
        from: u32,
        to: u32,
        ep: Ep<'_>,
        c: u32,
        repeat: bool,
    ) {
        if from == START {
            self.start += 1;
        } else {
            let o = &mut self.known.entry(from).or_default().out;
            *o = o.saturating_add(1);
        }
        self.add_pair(pop, (from, to), 1);
        let e = self.entry(pop, ep);
        e.requests = e.requests.saturating_add(1);
        let b = vote_bin(c);
        if repeat && c > 1 {
            let p = vote_bin(c - 1);
            if p != b {
                e.votes[p] -= 1;
                e.votes[b] += 1;
            }
        } else {
            e.votes[b] += 1;
        }
    }

    /// Rebuilds the bounds' heaps after deserialisation, and applies them (a configuration
    /// with a smaller endpoint table sends the largest new templates to the overflow endpoint).
    pub(crate) fn reindex(&mut self, pop: &Population) {
        self.new_heap = self.new.keys().copied().collect();
        while self.new_heap.len() > pop.template_room() {
            let drop = self.new_heap.pop().expect("non-empty");
            if let Some((_, d)) = self.new.remove(&drop) {
                self.known.entry(0).or_default().add(&d);
            }
        }
        self.pair_heap = self
            .transitions
            .keys()
            .filter(|p| !pop.transitions.contains_key(*p))
            .copied()
            .collect();
        self.levels.reindex(&pop.levels);
    }

    /// Adds another part's delta of the same epoch (when parts are joined), with the bounds.
    pub(crate) fn absorb(&mut self, pop: &Population, other: Delta) {
        self.start += other.start;
        for (i, d) in other.known {
            self.known.entry(i).or_default().add(&d);
        }
        for (h, (t, d)) in other.new {
            match self.new.get_mut(&h) {
                Some(e) => e.1.add(&d),
                None => {
                    self.add_new(pop, h, t, d);
                }
            }
        }
        for (p, n) in other.transitions {
            self.add_pair(pop, p, n);
        }
        self.levels.absorb(&pop.levels, other.levels);
    }

    /// Checks a restored delta against its population.
    pub(crate) fn validate(&self, pop: &Population) -> Result<(), String> {
        let n = pop.templates.len() as u32;
        if let Some(i) = self.known.keys().find(|i| **i >= n) {
            return Err(format!("contribution to unknown endpoint {i}"));
        }
        if self.new.len() > pop.template_room() {
            return Err(format!(
                "{} new templates, more than the {} the endpoint table has room for",
                self.new.len(),
                pop.template_room()
            ));
        }
        for (h, (t, _)) in &self.new {
            if *h != fnv1a(t.as_bytes()) || pop.index.contains_key(h) {
                return Err(format!(
                    "new template {t:?} is known or does not match its hash"
                ));
            }
        }
        check_transitions(&self.transitions, n)?;
        self.levels.validate()
    }
}

/// At most [`MAX_TRANSITIONS`] pairs, between the `n` endpoints of the table (or the start).
fn check_transitions(t: &HashMap<(u32, u32), u32>, n: u32) -> Result<(), String> {
    if t.len() > MAX_TRANSITIONS {
        return Err(format!(
            "{} transitions, above the cap of {MAX_TRANSITIONS}",
            t.len()
        ));
    }
    if let Some((f, to)) = t
        .keys()
        .find(|(f, to)| (*f != START && *f >= n) || *to >= n)
    {
        return Err(format!("transition {f} → {to} between unknown endpoints"));
    }
    Ok(())
}

/// An endpoint as a request sees it: in the table, or new this epoch.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ep<'a> {
    Known(u32),
    New(u64, &'a str),
}

/// Endpoint templates and the statistics of the whole population, as of the end of the last
/// merged epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Population {
    max_endpoints: u32,
    pub(crate) templates: Vec<Box<str>>,
    #[serde(skip)]
    index: HashMap<u64, u32>,
    pub(crate) endpoints: Vec<EndpointStats>,
    transitions: HashMap<(u32, u32), u32>,
    start_total: u64,
    /// The last epoch merged in (`i64::MIN` before the first).
    pub(crate) epoch: i64,
    /// Requests on templates not admitted because the table was full (they share the
    /// overflow endpoint's statistics).
    pub overflowed: u64,
    /// The address and network tables.
    pub(crate) levels: Levels,
    /// Their cap (each).
    max_addresses: usize,
    /// How a request's network is found.
    pub(crate) network: NetworkRule,
}

/// Template of the shared overflow endpoint.
pub const OVERFLOW_TEMPLATE: &str = "{other}";

impl Population {
    /// Whether two populations hold the same statistics, bit for bit (a typical count that is
    /// NaN, for an endpoint without votes, equals NaN here).
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        let same_stats = |a: &EndpointStats, b: &EndpointStats| {
            a.hash == b.hash
                && a.recent == b.recent
                && a.votes
                    .iter()
                    .zip(&b.votes)
                    .all(|(x, y)| x.to_bits() == y.to_bits())
                && a.votes_epoch == b.votes_epoch
                && a.typical.to_bits() == b.typical.to_bits()
                && a.out_total == b.out_total
        };
        self.max_endpoints == other.max_endpoints
            && self.templates == other.templates
            && self.endpoints.len() == other.endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(&other.endpoints)
                .all(|(a, b)| same_stats(a, b))
            && self.transitions == other.transitions
            && self.start_total == other.start_total
            && self.epoch == other.epoch
            && self.overflowed == other.overflowed
            && self.levels == other.levels
            && self.max_addresses == other.max_addresses
            && self.network == other.network
    }

    pub(crate) fn new(max_endpoints: u32, max_addresses: usize, network: NetworkRule) -> Self {
        let mut p = Self {
            max_endpoints,
            templates: Vec::new(),
            index: HashMap::new(),
            endpoints: Vec::new(),
            transitions: HashMap::new(),
            start_total: 0,
            epoch: i64::MIN,
            overflowed: 0,
            levels: Levels::default(),
            max_addresses,
            network,
        };
        p.levels.open(max_addresses);
        p.push(OVERFLOW_TEMPLATE, fnv1a(OVERFLOW_TEMPLATE.as_bytes()));
        p
    }

    fn push(&mut self, t: &str, hash: u64) -> u32 {
        let id = self.templates.len() as u32;
        self.templates.push(t.into());
        self.index.insert(hash, id);
        self.endpoints.push(EndpointStats::new(hash));
        id
    }

    /// Templates the table can still admit.
    fn template_room(&self) -> usize {
        (self.max_endpoints as usize + 1).saturating_sub(self.templates.len())
    }

    /// Rebuilds the lookup index after deserialisation.
    pub(crate) fn reindex(&mut self) {
        self.index = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.hash, i as u32))
            .collect();
    }

    /// The endpoint a template is in this epoch: its index, or new (the overflow endpoint's
    /// statistics stand for it until it is admitted).
    pub(crate) fn lookup<'a>(&self, hash: u64, template: &'a str) -> Ep<'a> {
        match self.index.get(&hash) {
            Some(&i) => Ep::Known(i),
            None => Ep::New(hash, template),
        }
    }

    /// The index statistics are read from for a template hash (0, the overflow endpoint, when
    /// it is not in the table).
    pub(crate) fn index_of(&self, hash: u64) -> u32 {
        self.index.get(&hash).copied().unwrap_or(0)
    }

    /// Checks a restored population: the overflow endpoint first, one statistics entry per
    /// template, no template twice, the configured cap, transitions between known endpoints.
    pub(crate) fn validate(&self, max_endpoints: u32) -> Result<(), String> {
        if self.templates.first().map(|t| &**t) != Some(OVERFLOW_TEMPLATE) {
            return Err("endpoint table without its overflow entry".into());
        }
        if self.templates.len() != self.endpoints.len() {
            return Err(format!(
                "{} endpoint templates but {} endpoint statistics",
                self.templates.len(),
                self.endpoints.len()
            ));
        }
        if self.templates.len() as u64 > u64::from(max_endpoints) + 1 {
            return Err(format!(
                "{} endpoint templates, above this configuration's max_endpoints = {max_endpoints}",
                self.templates.len() - 1
            ));
        }
        if self.index.len() != self.templates.len() {
            return Err("an endpoint template appears twice".into());
        }
        for (t, e) in self.templates.iter().zip(&self.endpoints) {
            if e.hash != fnv1a(t.as_bytes()) {
                return Err(format!("endpoint {t:?} does not match its hash"));
            }
            let typical_ok = e.typical.is_nan() || (e.typical.is_finite() && e.typical >= 1.0);
            if !typical_ok || e.votes.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(format!("endpoint {t:?} has invalid votes"));
            }
            if e.votes_epoch != i64::MIN && e.votes_epoch > self.epoch
                || e.recent
                    .iter()
                    .any(|(ep, _)| *ep != i64::MIN && *ep > self.epoch)
            {
                return Err(format!("endpoint {t:?} has counts after the state's epoch"));
            }
        }
        check_transitions(&self.transitions, self.templates.len() as u32)?;
        self.levels.validate(self.epoch, self.max_addresses)
    }

    /// The cap on addresses and on networks.
    pub(crate) fn max_addresses(&self) -> usize {
        self.max_addresses
    }

    /// Applies a configured cap on addresses and networks (after a restore): the open
    /// epoch's room is counted again.
    pub(crate) fn set_max_addresses(&mut self, m: usize) {
        if m != self.max_addresses {
            self.max_addresses = m;
            self.levels.open(m);
        }
    }

    /// The cap on templates.
    pub(crate) fn max_endpoints(&self) -> u32 {
        self.max_endpoints
    }

    /// Applies a configured cap (after a restore).
    pub(crate) fn set_max_endpoints(&mut self, m: u32) {
        self.max_endpoints = m;
    }

    /// Number of templates in the table (overflow included).
    pub fn endpoints(&self) -> usize {
        self.templates.len()
    }

    /// Surprise of moving `from` → `to` (−log2 of the add-one smoothed probability) under the
    /// transitions of the merged epochs.
    pub(crate) fn surprise(&self, from: u32, to: u32) -> f64 {
        let total = if from == START {
            self.start_total
        } else {
            self.endpoints[from as usize].out_total
        };
        let c = self.transitions.get(&(from, to)).copied().unwrap_or(0);
        let v = self.templates.len() as f64;
        -((f64::from(c) + 1.0) / (total as f64 + v)).log2()
    }

    /// Requests on endpoint `i` in the two epochs before `epoch`.
    pub(crate) fn recent_requests(&self, i: u32, epoch: i64) -> u32 {
        self.endpoints[i as usize]
            .recent
            .iter()
            .filter(|(e, _)| *e != i64::MIN && (1..=2).contains(&(epoch - e)))
            .map(|(_, n)| n)
            .sum()
    }

    /// (1 + a client count) / the endpoint's typical (1 + count); 1 without votes.
    pub(crate) fn rate_ratio(&self, i: u32, client_count: u32) -> f64 {
        let t = self.endpoints[i as usize].typical;
        if t.is_nan() {
            1.0
        } else {
            (1.0 + f64::from(client_count)) / t
        }
    }

    /// Merges every part's delta of `epoch` (then empties them): new templates admitted in
    /// the order of their hashes while there is room, counts summed, votes decayed and added,
    /// new transition pairs admitted in index order while there is room.
    pub(crate) fn merge<'a>(
        &mut self,
        epoch: i64,
        deltas: impl IntoIterator<Item = &'a mut Delta>,
    ) {
        let mut known: BTreeMap<u32, EpDelta> = BTreeMap::new();
        let mut new: BTreeMap<u64, (Box<str>, EpDelta)> = BTreeMap::new();
        let mut pairs: BTreeMap<(u32, u32), u32> = BTreeMap::new();
        let mut start = 0u64;
        let mut levels = Vec::new();
        for d in deltas {
            let mut d = std::mem::take(d);
            levels.push(std::mem::take(&mut d.levels));
            start += d.start;
            for (i, e) in d.known {
                known.entry(i).or_default().add(&e);
            }
            for (h, (t, e)) in d.new {
                let slot = new
                    .entry(h)
                    .or_insert_with(|| (t.clone(), EpDelta::default()));
                if t < slot.0 {
                    slot.0 = t;
                }
                slot.1.add(&e);
            }
            for (p, n) in d.transitions {
                let c = pairs.entry(p).or_default();
                *c = c.saturating_add(n);
            }
        }
        for (h, (t, e)) in new {
            if self.template_room() > 0 {
                let i = self.push(&t, h) as usize;
                self.endpoints[i].apply(epoch, &e);
            } else {
                known.entry(0).or_default().add(&e);
            }
        }
        if let Some(o) = known.get(&0) {
            self.overflowed += u64::from(o.requests);
        }
        for (i, e) in &known {
            self.endpoints[*i as usize].apply(epoch, e);
        }
        for (p, n) in pairs {
            let len = self.transitions.len();
            match self.transitions.get_mut(&p) {
                Some(c) => *c = c.saturating_add(n),
                None if len < MAX_TRANSITIONS => {
                    self.transitions.insert(p, n);
                }
                None => {}
            }
        }
        self.start_total = self.start_total.saturating_add(start);
        self.levels.merge(epoch, levels.iter_mut());
        self.levels.open(self.max_addresses);
        self.epoch = epoch;
    }

    /// The template of an index.
    pub fn template(&self, id: u32) -> &str {
        &self.templates[id as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_bins_are_exact_then_four_per_octave() {
        for c in 1..8 {
            assert_eq!(bin_floor(vote_bin(c)), c);
        }
        let mut last = 0;
        for c in 1..5000u32 {
            let b = vote_bin(c);
            assert!(b >= last && b < VOTE_BINS, "{c}");
            assert!(bin_floor(b) <= c, "{c}");
            if b + 1 < VOTE_BINS {
                assert!(bin_floor(b + 1) > c, "{c}");
            }
            last = b;
        }
        assert_eq!(vote_bin(u32::MAX), VOTE_BINS - 1);
        assert!((decay_over(120) - 0.5).abs() < 1e-12);
        assert_eq!(decay_over(0), 1.0);
        assert_eq!(decay_over(3), VOTE_DECAY * VOTE_DECAY * VOTE_DECAY);
    }

    #[test]
    fn the_typical_count_is_the_weighted_median() {
        let mut v = [0.0; VOTE_BINS];
        assert!(typical_of(&v).is_nan());
        v[0] = 3.0; // three clients with 1 request
        v[vote_bin(500)] = 1.0; // one client with 500
        assert_eq!(typical_of(&v), 2.0);
        v[vote_bin(500)] = 4.0;
        assert_eq!(typical_of(&v), 1.0 + f64::from(bin_floor(vote_bin(500))));
    }

    #[test]
    fn transitions_stop_being_counted_at_the_cap() {
        let mut p = Population::new(
            2000,
            1000,
            NetworkRule {
                v4_prefix: 24,
                v6_prefix: 48,
                asn: false,
            },
        );
        let mut d = Delta::default();
        for i in 0..1100u32 {
            let t = format!("GET /e{i}");
            d.count(&p, START, 0, p.lookup(fnv1a(t.as_bytes()), &t), 1, false);
        }
        p.merge(1, [&mut d]);
        assert_eq!(p.endpoints(), 1101);
        for from in 1..=1100u32 {
            for to in 1..=1000u32 {
                d.count(&p, from, to, Ep::Known(to), 1, false);
            }
        }
        assert_eq!(d.transitions.len(), MAX_TRANSITIONS - p.transitions.len());
        p.merge(2, [&mut d]);
        assert_eq!(p.transitions.len(), MAX_TRANSITIONS);
        // Counted pairs keep counting; pairs over the cap count as unseen.
        d.count(&p, 1, 1, Ep::Known(1), 1, false);
        p.merge(3, [&mut d]);
        assert_eq!(p.transitions[&(1, 1)], 2);
        assert!(!p.transitions.contains_key(&(1100, 1000)));
        p.validate(2000).unwrap();
    }
}
