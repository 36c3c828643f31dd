//! Population statistics: endpoint templates, per-endpoint rates and baselines, and the
//! endpoint-transition model shared by all clients.

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::registry::ENDPOINT_BUCKET_MS;
use crate::sketch::fnv1a;
use crate::state::{NONE, TwoBuckets, bucket_of};

/// Weight of a new observation in an endpoint's baseline.
const BASELINE_ALPHA: f64 = 1.0 / 64.0;
/// At most this many distinct (from, to) transitions are counted; later new pairs count as 0.
const MAX_TRANSITIONS: usize = 1 << 20;

/// One endpoint's population statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EndpointStats {
    /// FNV-1a of the template (stable across runs, unlike the id).
    pub hash: u64,
    /// Requests of all clients in the endpoint window.
    pub win: TwoBuckets,
    /// EWMA of ln(1 + per-client endpoint count); NaN until the first observation.
    pub baseline_ln: f64,
    /// Transitions out of this endpoint.
    pub out_total: u64,
}

/// Endpoint templates and the statistics of the whole population.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Population {
    max_endpoints: u32,
    pub(crate) templates: Vec<Box<str>>,
    #[serde(skip)]
    index: HashMap<Box<str>, u32>,
    pub(crate) endpoints: Vec<EndpointStats>,
    transitions: HashMap<(u32, u32), u32>,
    start_total: u64,
    /// Templates mapped to the overflow endpoint because the table was full.
    pub overflowed: u64,
}

/// Template of the shared overflow endpoint.
pub const OVERFLOW_TEMPLATE: &str = "{other}";

impl Population {
    pub(crate) fn new(max_endpoints: u32) -> Self {
        let mut p = Self {
            max_endpoints,
            templates: Vec::new(),
            index: HashMap::new(),
            endpoints: Vec::new(),
            transitions: HashMap::new(),
            start_total: 0,
            overflowed: 0,
        };
        p.push(OVERFLOW_TEMPLATE);
        p
    }

    fn push(&mut self, t: &str) -> u32 {
        let id = self.templates.len() as u32;
        self.templates.push(t.into());
        self.index.insert(t.into(), id);
        self.endpoints.push(EndpointStats {
            hash: fnv1a(t.as_bytes()),
            win: TwoBuckets::default(),
            baseline_ln: f64::NAN,
            out_total: 0,
        });
        id
    }

    /// Rebuilds the lookup index after deserialisation.
    pub(crate) fn reindex(&mut self) {
        self.index = self
            .templates
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
    }

    /// The id of a template, interning it when there is room (id 0 is the overflow endpoint).
    pub(crate) fn intern(&mut self, template: &str) -> u32 {
        if let Some(&id) = self.index.get(template) {
            return id;
        }
        if self.templates.len() as u64 > u64::from(self.max_endpoints) {
            self.overflowed += 1;
            return 0;
        }
        self.push(template)
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
            if !(e.baseline_ln.is_nan() || (e.baseline_ln.is_finite() && e.baseline_ln >= 0.0)) {
                return Err(format!(
                    "endpoint {t:?} has a baseline of {}",
                    e.baseline_ln
                ));
            }
        }
        let n = self.templates.len() as u32;
        if self.transitions.len() > MAX_TRANSITIONS {
            return Err(format!(
                "{} transitions, above the cap of {MAX_TRANSITIONS}",
                self.transitions.len()
            ));
        }
        if let Some((f, t)) = self
            .transitions
            .keys()
            .find(|(f, t)| (*f != NONE && *f >= n) || *t >= n)
        {
            return Err(format!("transition {f} → {t} between unknown endpoints"));
        }
        Ok(())
    }

    /// The cap on templates.
    pub(crate) fn max_endpoints(&self) -> u32 {
        self.max_endpoints
    }

    /// Applies a configured cap (after a restore).
    pub(crate) fn set_max_endpoints(&mut self, m: u32) {
        self.max_endpoints = m;
    }

    /// Number of interned templates (overflow included).
    pub fn endpoints(&self) -> usize {
        self.templates.len()
    }

    /// Surprise of moving `from` → `to` (−log2 of the add-one smoothed probability) under the
    /// transitions counted so far.
    pub(crate) fn surprise(&self, from: u32, to: u32) -> f64 {
        let total = if from == NONE {
            self.start_total
        } else {
            self.endpoints[from as usize].out_total
        };
        let c = self.transitions.get(&(from, to)).copied().unwrap_or(0);
        let v = self.templates.len() as f64;
        -((f64::from(c) + 1.0) / (total as f64 + v)).log2()
    }

    pub(crate) fn count_transition(&mut self, from: u32, to: u32) {
        if from == NONE {
            self.start_total += 1;
        } else {
            self.endpoints[from as usize].out_total += 1;
        }
        let len = self.transitions.len();
        match self.transitions.get_mut(&(from, to)) {
            Some(c) => *c = c.saturating_add(1),
            None if len < MAX_TRANSITIONS => {
                self.transitions.insert((from, to), 1);
            }
            None => {}
        }
    }

    /// Counts a request on `ep` and returns the population's requests on it in the endpoint
    /// window (this one included).
    pub(crate) fn count_request(&mut self, ep: u32, ts: i64) -> u32 {
        self.endpoints[ep as usize]
            .win
            .add(bucket_of(ts, ENDPOINT_BUCKET_MS))
    }

    /// The rate ratio of a client count against the endpoint's baseline, then folds the count
    /// into the baseline.
    pub(crate) fn rate_ratio(&mut self, ep: u32, client_count: u32) -> f64 {
        let e = &mut self.endpoints[ep as usize];
        let x = f64::from(client_count).ln_1p();
        if e.baseline_ln.is_nan() {
            e.baseline_ln = x;
            return 1.0;
        }
        let ratio = (x - e.baseline_ln).exp();
        e.baseline_ln += BASELINE_ALPHA * (x - e.baseline_ln);
        ratio
    }

    /// The template of an id.
    pub fn template(&self, id: u32) -> &str {
        &self.templates[id as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_stop_being_counted_at_the_cap() {
        let mut p = Population::new(2000);
        let ids: Vec<u32> = (0..1100).map(|i| p.intern(&format!("GET /e{i}"))).collect();
        for &from in &ids {
            for &to in &ids[..1000] {
                p.count_transition(from, to);
            }
        }
        assert_eq!(p.transitions.len(), MAX_TRANSITIONS);
        // Counted pairs keep counting; pairs over the cap count as unseen.
        p.count_transition(ids[0], ids[0]);
        assert_eq!(p.transitions[&(ids[0], ids[0])], 2);
        assert!(!p.transitions.contains_key(&(ids[1099], ids[999])));
        p.validate(2000).unwrap();
    }
}
