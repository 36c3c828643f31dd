//! The decision state: active decisions by rule and key, their expiry in event time, past
//! offences for escalation, and the verdict of each request.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::expr::Bindings;
use crate::input::Input;
use crate::keys::KeyScope;
use crate::{Action, Mode, RateLimit, Rules};

/// One decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Its number, unique in the decider's life (and across restarts from its state).
    pub id: u64,
    /// The rule that made it.
    pub rule: String,
    /// What the enforcement point does.
    pub action: Action,
    /// What it applies to.
    pub scope: KeyScope,
    /// The key's value (`203.0.113.7`, `198.51.100.0/24`, `jwt:alice`).
    pub value: String,
    /// Enforced or shadow.
    pub mode: Mode,
    /// Its escalation step (0 for the rule's own action).
    pub level: u32,
    /// When it started (event time, ms).
    pub start_ms: i64,
    /// When it ends (event time, ms).
    pub until_ms: i64,
    /// The score of the request that started (or last escalated) it.
    pub score: Option<f64>,
    /// That request's strongest reasons (features).
    pub reasons: Vec<String>,
    /// Matching requests while it was active, the first one included.
    pub hits: u64,
    /// A rate limit's rate.
    pub rate: Option<RateLimit>,
}

/// What happened to a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// It started.
    New,
    /// It moved up its rule's ladder (a new action and end).
    Escalate,
    /// It ended: its time passed, its rule was removed, or it made room at capacity.
    Expire,
}

impl Change {
    /// Its name in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Escalate => "escalate",
            Self::Expire => "expire",
        }
    }
}

/// A change of a decision, at an event time.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionEvent {
    /// What happened.
    pub change: Change,
    /// When (event time, ms).
    pub ts_ms: i64,
    /// Why it ended, for an expiry: `ttl`, `capacity` or `rule removed`.
    pub why: Option<&'static str>,
    /// The decision after the change.
    pub decision: Decision,
}

/// The strongest active decision covering a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The decision's id.
    pub id: u64,
    /// Its rule.
    pub rule: Arc<str>,
    /// Its action.
    pub action: Action,
    /// Enforced or shadow.
    pub mode: Mode,
    /// Its scope.
    pub scope: KeyScope,
    /// Its key's value.
    pub value: String,
    /// When it ends (ms).
    pub until_ms: i64,
    /// Whether this request started or escalated it.
    pub fresh: bool,
}

/// Counts of one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStats {
    /// Requests whose condition held.
    pub matched: u64,
    /// Decisions started.
    pub decisions: u64,
    /// Escalations.
    pub escalations: u64,
    /// Conditions that failed to evaluate (counted as not holding).
    pub errors: u64,
    /// Matching requests without the rule's key field.
    pub no_key: u64,
}

/// The decider's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeciderStats {
    /// Requests seen.
    pub requests: u64,
    /// Requests the allow-list covered.
    pub allowed: u64,
    /// Per rule, in the rules' order.
    pub rules: Vec<RuleStats>,
    /// Decisions ended by their time.
    pub expired: u64,
    /// Decisions ended early to make room at capacity.
    pub evicted: u64,
    /// Past offences forgotten early to make room.
    pub history_dropped: u64,
    /// Allow-list conditions that failed to evaluate.
    pub allow_errors: u64,
}

/// A key's past offences against one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Strikes {
    count: u32,
    forget_at_ms: i64,
}

type Slot = (Arc<str>, KeyScope, Box<str>);

/// A borrowed `(scope, value)` key: looks up `by_key` without building its owned key.
#[derive(Hash)]
struct KeyRef<'a>(KeyScope, &'a str);

impl hashbrown::Equivalent<(KeyScope, Box<str>)> for KeyRef<'_> {
    fn equivalent(&self, key: &(KeyScope, Box<str>)) -> bool {
        self.0 == key.0 && self.1 == &*key.1
    }
}

/// The decider's state as saved: decisions, past offences and the next id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    /// Format version.
    pub version: u32,
    /// The next decision id.
    pub next_id: u64,
    /// Event time reached (ms).
    pub now_ms: i64,
    /// The active decisions.
    pub decisions: Vec<Decision>,
    /// Past offences: rule, scope, value, count, forget time.
    pub history: Vec<(String, KeyScope, String, u32, i64)>,
}

const STATE_VERSION: u32 = 1;

/// Decisions from scored events, in event time.
#[derive(Debug)]
pub struct Decider {
    rules: Arc<Rules>,
    active: HashMap<u64, Decision>,
    by_slot: HashMap<Slot, u64>,
    by_key: HashMap<(KeyScope, Box<str>), Vec<u64>>,
    /// (end, id): entries whose decision ended otherwise or changed end are skipped.
    ends: BinaryHeap<Reverse<(i64, u64)>>,
    history: HashMap<Slot, Strikes>,
    next_id: u64,
    now_ms: i64,
    stats: DeciderStats,
}

impl Decider {
    /// A decider with no decisions.
    pub fn new(rules: Arc<Rules>) -> Self {
        let n = rules.len();
        Self {
            rules,
            active: HashMap::new(),
            by_slot: HashMap::new(),
            by_key: HashMap::new(),
            ends: BinaryHeap::new(),
            history: HashMap::new(),
            next_id: 1,
            now_ms: i64::MIN,
            stats: DeciderStats {
                rules: vec![RuleStats::default(); n],
                ..DeciderStats::default()
            },
        }
    }

    /// The rules.
    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    /// The counts so far.
    pub fn stats(&self) -> &DeciderStats {
        &self.stats
    }

    /// The active decisions (in no particular order).
    pub fn active(&self) -> impl Iterator<Item = &Decision> {
        self.active.values()
    }

    /// Event time reached (ms).
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Replaces the rules (a reload): decisions of rules that are gone end now; the others
    /// keep their state and follow the new rule's settings from their next change.
    pub fn set_rules(&mut self, rules: Arc<Rules>, events: &mut Vec<DecisionEvent>) {
        let old = std::mem::replace(&mut self.rules, rules);
        let mut stats = vec![RuleStats::default(); self.rules.len()];
        for (i, r) in old.rules.iter().enumerate() {
            if let Some(j) = self.rules.index_of(&r.id) {
                stats[j] = self.stats.rules[i].clone();
            }
        }
        self.stats.rules = stats;
        let gone: Vec<u64> = self
            .active
            .values()
            .filter(|d| self.rules.index_of(&d.rule).is_none())
            .map(|d| d.id)
            .collect();
        for id in gone {
            self.end(id, self.now_ms.max(0), "rule removed", events);
        }
        self.history
            .retain(|slot, _| self.rules.index_of(&slot.0).is_some());
    }

    /// Moves event time to `now_ms`: decisions that end by then expire.
    pub fn advance(&mut self, now_ms: i64, events: &mut Vec<DecisionEvent>) {
        if now_ms <= self.now_ms {
            return;
        }
        self.now_ms = now_ms;
        while let Some(&Reverse((end, id))) = self.ends.peek() {
            if end > now_ms {
                break;
            }
            self.ends.pop();
            if self.active.get(&id).is_some_and(|d| d.until_ms == end) {
                self.stats.expired += 1;
                self.end(id, end, "ttl", events);
            }
        }
    }

    fn end(&mut self, id: u64, ts_ms: i64, why: &'static str, events: &mut Vec<DecisionEvent>) {
        let Some(d) = self.active.remove(&id) else {
            return;
        };
        let slot: Slot = (d.rule.as_str().into(), d.scope, d.value.as_str().into());
        self.by_slot.remove(&slot);
        let key = (d.scope, Box::<str>::from(d.value.as_str()));
        if let Some(ids) = self.by_key.get_mut(&key) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.by_key.remove(&key);
            }
        }
        if let Some(r) = self.rules.index_of(&d.rule).map(|i| &self.rules.rules[i]) {
            let forget_at_ms = ts_ms.saturating_add(r.forget_ms);
            self.history.insert(
                slot,
                Strikes {
                    count: d.level + 1,
                    forget_at_ms,
                },
            );
            self.trim_history();
        }
        events.push(DecisionEvent {
            change: Change::Expire,
            ts_ms,
            why: Some(why),
            decision: d,
        });
    }

    fn trim_history(&mut self) {
        let cap = self.rules.max_history;
        if self.history.len() <= cap {
            return;
        }
        let now = self.now_ms;
        self.history.retain(|_, s| s.forget_at_ms > now);
        if self.history.len() > cap {
            // Forget the offences that would be forgotten soonest.
            let mut ends: Vec<i64> = self.history.values().map(|s| s.forget_at_ms).collect();
            let cut = self.history.len() - cap;
            ends.select_nth_unstable(cut - 1);
            let limit = ends[cut - 1];
            let before = self.history.len();
            let mut left = cut;
            self.history.retain(|_, s| {
                if left > 0 && s.forget_at_ms <= limit {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
            self.stats.history_dropped += (before - self.history.len()) as u64;
        }
    }

    /// Takes one scored event (in event time): expires what ended before it, applies the
    /// allow-list and the rules, and answers the strongest decision covering it, if any.
    /// `reasons` gives the event's reasons when a decision needs them. Changes go to
    /// `events`.
    pub fn observe(
        &mut self,
        input: &Input<'_>,
        reasons: &dyn Fn() -> Vec<String>,
        events: &mut Vec<DecisionEvent>,
    ) -> Option<Verdict> {
        self.advance(input.request.ts_ms, events);
        let now = self.now_ms.max(input.request.ts_ms);
        self.stats.requests += 1;
        let rules = Arc::clone(&self.rules);
        let build = || Bindings::build(input, &rules.cel_fields, &rules.cel_keys, &rules.root);
        let mut scope: Option<Bindings<'_>> = None;
        if !rules.allow.is_empty() {
            let mut errors = 0;
            let allowed = rules.allows(input, &mut scope, &build, &mut errors);
            self.stats.allow_errors += errors;
            if allowed {
                self.stats.allowed += 1;
                return None;
            }
        }
        let mut fresh: Vec<u64> = Vec::new();
        for (i, rule) in rules.rules.iter().enumerate() {
            let mut errors = 0;
            let hit = rule.when.eval(input, &mut scope, &build, &mut errors);
            let st = &mut self.stats.rules[i];
            st.errors += errors;
            if !hit {
                continue;
            }
            st.matched += 1;
            let Some((scope_k, value)) = rule.key.key(&input.request) else {
                st.no_key += 1;
                continue;
            };
            let slot: Slot = (Arc::clone(&rule.id), scope_k, value.as_str().into());
            let score = input.score.map(|s| s.overall).filter(|v| v.is_finite());
            if let Some(&id) = self.by_slot.get(&slot) {
                let Some(d) = self.active.get_mut(&id) else {
                    continue;
                };
                d.hits += 1;
                let top = rule.ladder.len() as u32 - 1;
                if let Some(after) = rule.after_hits
                    && d.level < top
                    && d.hits > after
                {
                    d.level += 1;
                    d.action = rule.action_at(d.level);
                    d.until_ms = now.saturating_add(rule.ttl_at(d.level));
                    d.hits = 1;
                    d.score = score;
                    d.reasons = reasons();
                    d.rate = rule.rate;
                    self.ends.push(Reverse((d.until_ms, id)));
                    self.stats.rules[i].escalations += 1;
                    events.push(DecisionEvent {
                        change: Change::Escalate,
                        ts_ms: now,
                        why: None,
                        decision: d.clone(),
                    });
                    fresh.push(id);
                }
                continue;
            }
            let level = match self.history.get(&slot) {
                Some(s) if s.forget_at_ms > now => s.count,
                _ => 0,
            }
            .min(rule.ladder.len() as u32 - 1);
            if self.active.len() >= rules.max_decisions {
                self.evict_one(now, events);
            }
            let id = self.next_id;
            self.next_id += 1;
            let d = Decision {
                id,
                rule: rule.id.to_string(),
                action: rule.action_at(level),
                scope: scope_k,
                value,
                mode: rule.mode,
                level,
                start_ms: now,
                until_ms: now.saturating_add(rule.ttl_at(level)),
                score,
                reasons: reasons(),
                hits: 1,
                rate: rule.rate,
            };
            self.stats.rules[i].decisions += 1;
            if level > 0 {
                self.stats.rules[i].escalations += 1;
            }
            self.ends.push(Reverse((d.until_ms, id)));
            self.by_key
                .entry((scope_k, d.value.as_str().into()))
                .or_default()
                .push(id);
            self.by_slot.insert(slot, id);
            events.push(DecisionEvent {
                change: if level > 0 {
                    Change::Escalate
                } else {
                    Change::New
                },
                ts_ms: now,
                why: None,
                decision: d.clone(),
            });
            self.active.insert(id, d);
            fresh.push(id);
        }
        self.verdict(input, &fresh)
    }

    fn evict_one(&mut self, now: i64, events: &mut Vec<DecisionEvent>) {
        while let Some(Reverse((end, id))) = self.ends.pop() {
            if self.active.get(&id).is_some_and(|d| d.until_ms == end) {
                self.stats.evicted += 1;
                self.end(id, now, "capacity", events);
                return;
            }
        }
    }

    /// The strongest active decision covering `input`: enforced before shadow, then the
    /// harder action, then the later end.
    fn verdict(&self, input: &Input<'_>, fresh: &[u64]) -> Option<Verdict> {
        if self.active.is_empty() {
            return None;
        }
        let mut best: Option<&Decision> = None;
        let mut value = String::new();
        for spec in &self.rules.key_specs {
            let Some(scope) = spec.key_into(&input.request, &mut value) else {
                continue;
            };
            let Some(ids) = self.by_key.get(&KeyRef(scope, &value)) else {
                continue;
            };
            for d in ids.iter().filter_map(|id| self.active.get(id)) {
                let rank = |d: &Decision| (d.mode, d.action, d.until_ms, Reverse(d.id));
                if best.is_none_or(|b| rank(d) > rank(b)) {
                    best = Some(d);
                }
            }
        }
        best.map(|d| Verdict {
            id: d.id,
            rule: self.rules.index_of(&d.rule).map_or_else(
                || d.rule.as_str().into(),
                |i| Arc::clone(&self.rules.rules[i].id),
            ),
            action: d.action,
            mode: d.mode,
            scope: d.scope,
            value: d.value.clone(),
            until_ms: d.until_ms,
            fresh: fresh.contains(&d.id),
        })
    }

    /// The state to save (decisions, past offences, the next id).
    pub fn save(&self) -> SavedState {
        let mut decisions: Vec<Decision> = self.active.values().cloned().collect();
        decisions.sort_by_key(|d| d.id);
        let mut history: Vec<_> = self
            .history
            .iter()
            .map(|((r, s, v), st)| (r.to_string(), *s, v.to_string(), st.count, st.forget_at_ms))
            .collect();
        history.sort_by(|a, b| (&a.0, a.1, &a.2).cmp(&(&b.0, b.1, &b.2)));
        SavedState {
            version: STATE_VERSION,
            next_id: self.next_id,
            now_ms: self.now_ms,
            decisions,
            history,
        }
    }

    /// Restores a saved state into an empty decider. Decisions of rules the set does not
    /// have are dropped (counted in the answer).
    pub fn restore(&mut self, s: SavedState) -> Result<usize, String> {
        if s.version != STATE_VERSION {
            return Err(format!(
                "decision state version {} (this build reads {STATE_VERSION})",
                s.version
            ));
        }
        if !self.active.is_empty() {
            return Err("the decider already has decisions".into());
        }
        let mut dropped = 0;
        self.now_ms = s.now_ms;
        self.next_id = s.next_id.max(1);
        for d in s.decisions {
            let Some(i) = self.rules.index_of(&d.rule) else {
                dropped += 1;
                continue;
            };
            if d.id >= self.next_id {
                self.next_id = d.id + 1;
            }
            let slot: Slot = (
                Arc::clone(&self.rules.rules[i].id),
                d.scope,
                d.value.as_str().into(),
            );
            self.ends.push(Reverse((d.until_ms, d.id)));
            self.by_key
                .entry((d.scope, d.value.as_str().into()))
                .or_default()
                .push(d.id);
            self.by_slot.insert(slot, d.id);
            self.active.insert(d.id, d);
        }
        for (r, scope, value, count, forget_at_ms) in s.history {
            if let Some(i) = self.rules.index_of(&r) {
                self.history.insert(
                    (Arc::clone(&self.rules.rules[i].id), scope, value.into()),
                    Strikes {
                        count,
                        forget_at_ms,
                    },
                );
            }
        }
        Ok(dropped)
    }
}
