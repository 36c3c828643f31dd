//! The decisions API, compatible with CrowdSec bouncers: the enforced decisions the rules
//! made, as CrowdSec's Local API serves them (`GET /v1/decisions`,
//! `GET /v1/decisions/stream`), to clients holding a bouncer key.
//!
//! Only enforced `block`, `challenge` and `rate_limit` decisions are served (as CrowdSec
//! types `ban`, `captcha` and `throttle`); shadow and log decisions never are. The stream
//! keeps a cursor per bouncer key: `startup=true` answers every active decision and moves
//! the cursor to now; later polls answer what started (`new`) and ended (`deleted`) since
//! that bouncer's previous poll — no periodic full resend. An escalation is a `new` entry
//! with the same id (bouncers replace a value's decision). A bouncer whose cursor is older
//! than the change log kept ([`KEEP_CHANGES`]) gets the full list again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

use gatewatch_event::{write_json_str, write_rfc3339_ms};
use gatewatch_pipeline::rules::{
    Action, Change, Decision, DecisionEvent, KeyScope, Mode, in_cidr, parse_cidr,
};

/// Decision changes kept for the stream's cursors.
pub const KEEP_CHANGES: usize = 100_000;

/// Bouncer keys with a stream cursor at most (beyond, every cursor starts over: those
/// bouncers get the full list once).
pub const MAX_BOUNCERS: usize = 10_000;

/// Decisions answered by one `GET /v1/decisions` at most (`limit` may ask for fewer).
pub const MAX_PAGE: usize = 10_000;

/// The CrowdSec type of a served action; `None` for one that is not served.
fn crowdsec_type(a: Action) -> Option<&'static str> {
    match a {
        Action::Block => Some("ban"),
        Action::Challenge => Some("captcha"),
        Action::RateLimit => Some("throttle"),
        Action::Log => None,
    }
}

fn served(d: &Decision) -> bool {
    d.mode == Mode::Enforce && crowdsec_type(d.action).is_some()
}

/// A duration as Go writes one (`1h2m3.5s`, `-4m0s`), as CrowdSec's `duration` field.
pub fn go_duration(ms: i64) -> String {
    let neg = ms < 0;
    let ms = ms.unsigned_abs();
    let (h, m, s, frac) = (
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000,
    );
    let mut out = String::from(if neg { "-" } else { "" });
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let f = format!("{frac:03}");
        out.push_str(&format!("{s}.{}s", f.trim_end_matches('0')));
    }
    out
}

/// A decision as CrowdSec's API writes one, appended to `out`; `duration_ms` is what its
/// `duration` says (from the event time now to its end; negative for a deleted one).
pub fn write_crowdsec(d: &Decision, duration_ms: i64, out: &mut String) {
    out.push_str("{\"id\":");
    out.push_str(itoa::Buffer::new().format(d.id));
    out.push_str(",\"origin\":\"gatewatch\",\"type\":\"");
    out.push_str(crowdsec_type(d.action).unwrap_or("log"));
    out.push_str("\",\"scope\":");
    write_json_str(out, d.scope.as_str());
    out.push_str(",\"value\":");
    write_json_str(out, &d.value);
    out.push_str(",\"duration\":\"");
    out.push_str(&go_duration(duration_ms));
    out.push_str("\",\"until\":\"");
    write_rfc3339_ms(d.until_ms, out);
    out.push_str("\",\"scenario\":");
    write_json_str(out, &d.rule);
    out.push_str(",\"simulated\":");
    out.push_str(if d.mode == Mode::Shadow {
        "true}"
    } else {
        "false}"
    });
}

/// A JSON array of decisions, or `null` when there are none (as CrowdSec answers, and
/// bouncers expect).
fn write_list<'a>(items: impl Iterator<Item = (&'a Decision, i64)>, out: &mut String) {
    let start = out.len();
    for (d, duration) in items {
        out.push(if out.len() == start { '[' } else { ',' });
        write_crowdsec(d, duration, out);
    }
    if out.len() == start {
        out.push_str("null");
    } else {
        out.push(']');
    }
}

/// One served change.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    deleted: bool,
    decision: Decision,
}

/// The served decisions, their change log and the bouncers' cursors.
#[derive(Debug, Default)]
pub struct Feed {
    active: BTreeMap<u64, Decision>,
    /// Active `Ip` decisions by address, and the ids of the active `Range` ones: an `ip`
    /// lookup (what a live-mode bouncer sends per request) reads these, not every decision.
    by_ip: HashMap<IpAddr, Vec<u64>>,
    ranges: BTreeMap<u64, (IpAddr, u8)>,
    log: VecDeque<Entry>,
    seq: u64,
    cursors: HashMap<String, u64>,
    now_ms: i64,
}

/// `GET /v1/decisions` filters.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// `scope` (case-insensitive).
    pub scope: Option<String>,
    /// `value` (exact).
    pub value: Option<String>,
    /// `type` (`ban`, `captcha`, `throttle`).
    pub kind: Option<String>,
    /// `ip`: decisions on this address or a range holding it.
    pub ip: Option<IpAddr>,
    /// `range` (`198.51.100.0/24`): decisions on an address in it, or on a range holding it.
    pub range: Option<(IpAddr, u8)>,
    /// `scenarios` (comma-separated rule ids).
    pub scenarios: Option<Vec<String>>,
    /// `limit` (at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
    /// `offset` into the matching decisions, ordered by id.
    pub offset: usize,
}

impl Filter {
    /// The filter of a query string; the first bad parameter is an error naming it.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut f = Self::default();
        for (k, v) in form_pairs(query) {
            match k.as_str() {
                "scope" => f.scope = Some(v),
                "value" => f.value = Some(v),
                "type" => f.kind = Some(v),
                "ip" => {
                    f.ip = Some(
                        v.parse()
                            .map_err(|_| format!("ip: {v:?} is not an address"))?,
                    );
                }
                "range" => {
                    f.range =
                        Some(parse_cidr(&v).ok_or_else(|| format!("range: {v:?} is not a range"))?);
                }
                "scenarios" | "scenarios_containing" => {
                    f.scenarios = Some(v.split(',').map(|s| s.trim().to_string()).collect());
                }
                "limit" => {
                    f.limit = Some(
                        v.parse()
                            .map_err(|_| format!("limit: {v:?} is not a number"))?,
                    );
                }
                "offset" => {
                    f.offset = v
                        .parse()
                        .map_err(|_| format!("offset: {v:?} is not a number"))?;
                }
                // Other CrowdSec parameters (origins, contains, …) do not narrow gatewatch's
                // decisions.
                _ => {}
            }
        }
        Ok(f)
    }

    fn accepts(&self, d: &Decision) -> bool {
        if let Some(s) = &self.scope
            && !d.scope.as_str().eq_ignore_ascii_case(s)
        {
            return false;
        }
        if self.value.as_ref().is_some_and(|v| *v != d.value) {
            return false;
        }
        if let Some(t) = &self.kind
            && crowdsec_type(d.action) != Some(t.as_str())
        {
            return false;
        }
        if let Some(sc) = &self.scenarios
            && !sc.contains(&d.rule)
        {
            return false;
        }
        if let Some(ip) = self.ip {
            let hit = match d.scope {
                KeyScope::Ip => d.value.parse::<IpAddr>().is_ok_and(|a| a == ip),
                KeyScope::Range => parse_cidr(&d.value).is_some_and(|r| in_cidr(ip, r)),
                _ => false,
            };
            if !hit {
                return false;
            }
        }
        if let Some((net, len)) = self.range {
            let hit = match d.scope {
                KeyScope::Ip => d
                    .value
                    .parse::<IpAddr>()
                    .is_ok_and(|a| in_cidr(a, (net, len))),
                KeyScope::Range => parse_cidr(&d.value).is_some_and(|(n, l)| {
                    (l >= len && in_cidr(n, (net, len))) || (l <= len && in_cidr(net, (n, l)))
                }),
                _ => false,
            };
            if !hit {
                return false;
            }
        }
        true
    }
}

/// `k=v` pairs of a query string, percent-decoded (`+` is a space).
fn form_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(b[i + 1]), hex(b[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

impl Feed {
    /// Takes a batch's decision changes (in order) at event time `now_ms`.
    pub fn apply(&mut self, changes: &[DecisionEvent], now_ms: i64) {
        for e in changes {
            let d = &e.decision;
            if !served(d) {
                // An escalation can turn a served decision into one that is not (never
                // with the built-in actions' order, but a ladder may say so).
                if self.remove(d.id).is_some() {
                    self.push(true, d.clone());
                }
                continue;
            }
            match e.change {
                Change::New | Change::Escalate => {
                    self.insert(d.clone());
                    self.push(false, d.clone());
                }
                Change::Expire => {
                    if self.remove(d.id).is_some() {
                        self.push(true, d.clone());
                    }
                }
            }
        }
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Starts from saved decisions (a restart): the active served ones.
    pub fn restore<'a>(&mut self, decisions: impl IntoIterator<Item = &'a Decision>, now_ms: i64) {
        for d in decisions.into_iter().filter(|d| served(d)) {
            self.insert(d.clone());
        }
        self.now_ms = now_ms;
    }

    fn insert(&mut self, d: Decision) {
        match d.scope {
            KeyScope::Ip => {
                if let Ok(a) = d.value.parse::<IpAddr>() {
                    let ids = self.by_ip.entry(a).or_default();
                    if !ids.contains(&d.id) {
                        ids.push(d.id);
                    }
                }
            }
            KeyScope::Range => {
                if let Some(r) = parse_cidr(&d.value) {
                    self.ranges.insert(d.id, r);
                }
            }
            _ => {}
        }
        self.active.insert(d.id, d);
    }

    fn remove(&mut self, id: u64) -> Option<Decision> {
        let d = self.active.remove(&id)?;
        if let Ok(a) = d.value.parse::<IpAddr>()
            && let Some(ids) = self.by_ip.get_mut(&a)
        {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.by_ip.remove(&a);
            }
        }
        self.ranges.remove(&id);
        Some(d)
    }

    fn push(&mut self, deleted: bool, decision: Decision) {
        self.seq += 1;
        self.log.push_back(Entry {
            seq: self.seq,
            deleted,
            decision,
        });
        while self.log.len() > KEEP_CHANGES {
            self.log.pop_front();
        }
    }

    /// Active served decisions.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// True when nothing is served.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// `GET /v1/decisions`: the matching active decisions as JSON, `null` when there are
    /// none (as CrowdSec answers, and bouncers expect).
    pub fn list(&self, f: &Filter) -> String {
        let limit = f.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let candidates: Box<dyn Iterator<Item = &Decision>> = match f.ip {
            // An address: its own decisions and the ranges', in id order.
            Some(ip) => {
                let mut ids: Vec<u64> = self.by_ip.get(&ip).cloned().unwrap_or_default();
                ids.extend(
                    self.ranges
                        .iter()
                        .filter(|(_, r)| in_cidr(ip, **r))
                        .map(|(id, _)| *id),
                );
                ids.sort_unstable();
                Box::new(ids.into_iter().filter_map(|id| self.active.get(&id)))
            }
            None => Box::new(self.active.values()),
        };
        let mut out = String::new();
        write_list(
            candidates
                .filter(|d| f.accepts(d))
                .skip(f.offset)
                .take(limit)
                .map(|d| (d, d.until_ms - self.now_ms)),
            &mut out,
        );
        out
    }

    /// `GET /v1/decisions/stream` for bouncer `key`, as JSON: everything at startup (or
    /// when its cursor fell off the log), else the changes since its last poll. `scopes`
    /// narrows to those scopes (case-insensitive) when given.
    pub fn stream(&mut self, key: &str, startup: bool, scopes: Option<&[String]>) -> String {
        let in_scope = |d: &Decision| {
            scopes.is_none_or(|s| s.iter().any(|x| d.scope.as_str().eq_ignore_ascii_case(x)))
        };
        let cursor = self.cursors.get(key).copied();
        let oldest = self.log.front().map_or(self.seq + 1, |e| e.seq);
        let full = startup || cursor.is_none_or(|c| c + 1 < oldest);
        if !self.cursors.contains_key(key) && self.cursors.len() >= MAX_BOUNCERS {
            self.cursors.clear();
        }
        self.cursors.insert(key.to_string(), self.seq);
        let now = self.now_ms;
        let mut out = String::from("{\"new\":");
        if full {
            write_list(
                self.active
                    .values()
                    .filter(|d| in_scope(d))
                    .map(|d| (d, d.until_ms - now)),
                &mut out,
            );
            out.push_str(",\"deleted\":null}");
            return out;
        }
        let since = cursor.unwrap_or(0);
        // The log is in sequence order: start at the first change after the cursor. The
        // last change of each decision since then decides where it goes.
        let first = self.log.partition_point(|e| e.seq <= since);
        let mut last: BTreeMap<u64, &Entry> = BTreeMap::new();
        for e in self.log.range(first..) {
            last.insert(e.decision.id, e);
        }
        let scoped = || last.values().filter(|e| in_scope(&e.decision));
        write_list(
            scoped()
                .filter(|e| !e.deleted)
                .map(|e| (&e.decision, e.decision.until_ms - now)),
            &mut out,
        );
        out.push_str(",\"deleted\":");
        write_list(
            scoped()
                .filter(|e| e.deleted)
                .map(|e| (&e.decision, (e.decision.until_ms - now).min(0) - 1)),
            &mut out,
        );
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewatch_pipeline::rules::RateLimit;
    use serde_json::{Value, json};

    fn parse(s: String) -> Value {
        serde_json::from_str(&s).unwrap()
    }

    fn decision(id: u64, value: &str, action: Action, mode: Mode) -> Decision {
        Decision {
            id,
            rule: "r".into(),
            action,
            scope: if value.contains('/') {
                KeyScope::Range
            } else {
                KeyScope::Ip
            },
            value: value.into(),
            mode,
            level: 0,
            start_ms: 0,
            until_ms: 600_000,
            score: None,
            reasons: vec![],
            hits: 1,
            rate: (action == Action::RateLimit).then_some(RateLimit {
                requests: 1,
                per_ms: 1000,
            }),
        }
    }

    fn ev(change: Change, d: Decision) -> DecisionEvent {
        DecisionEvent {
            change,
            ts_ms: 0,
            why: None,
            decision: d,
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500), "1.5s");
        assert_eq!(go_duration(2_335_600), "38m55.6s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
        assert_eq!(go_duration(-240_000), "-4m0s");
    }

    #[test]
    fn only_enforced_served_actions_are_listed_and_filters_narrow() {
        let mut f = Feed::default();
        f.apply(
            &[
                ev(
                    Change::New,
                    decision(1, "203.0.113.7", Action::Block, Mode::Enforce),
                ),
                ev(
                    Change::New,
                    decision(2, "203.0.113.8", Action::Block, Mode::Shadow),
                ),
                ev(
                    Change::New,
                    decision(3, "203.0.113.9", Action::Log, Mode::Enforce),
                ),
                ev(
                    Change::New,
                    decision(4, "198.51.100.0/24", Action::Challenge, Mode::Enforce),
                ),
            ],
            0,
        );
        assert_eq!(f.len(), 2);
        let all = parse(f.list(&Filter::default()));
        assert_eq!(all.as_array().unwrap().len(), 2);
        assert_eq!(all[0]["type"], "ban");
        assert_eq!(all[0]["duration"], "10m0s");
        assert_eq!(all[1]["type"], "captcha");
        let q = |s: &str| parse(f.list(&Filter::parse(s).unwrap()));
        assert_eq!(q("ip=198.51.100.20")[0]["id"], 4);
        assert_eq!(q("ip=203.0.113.7")[0]["id"], 1);
        assert_eq!(q("ip=203.0.113.8"), Value::Null);
        assert_eq!(q("range=198.51.0.0/16")[0]["id"], 4);
        assert_eq!(q("range=203.0.113.0/24")[0]["id"], 1);
        assert_eq!(q("type=ban&scope=ip")[0]["id"], 1);
        assert_eq!(q("scope=Range&value=198.51.100.0%2F24")[0]["id"], 4);
        assert_eq!(q("limit=1&offset=1")[0]["id"], 4);
        assert_eq!(q("offset=2"), Value::Null);
        assert!(Filter::parse("ip=nope").unwrap_err().contains("ip"));
    }

    #[test]
    fn the_stream_sends_everything_once_then_changes_per_bouncer() {
        let mut f = Feed::default();
        let d1 = decision(1, "203.0.113.7", Action::Challenge, Mode::Enforce);
        f.apply(&[ev(Change::New, d1.clone())], 0);
        let s = parse(f.stream("a", true, None));
        assert_eq!(s["new"][0]["id"], 1);
        assert_eq!(s["deleted"], Value::Null);
        // Nothing changed: nothing sent.
        assert_eq!(
            parse(f.stream("a", false, None)),
            json!({"new": null, "deleted": null})
        );
        // An escalation is a new entry with the same id; a second bouncer starts fresh.
        let mut d1b = d1.clone();
        d1b.action = Action::Block;
        let d2 = decision(2, "203.0.113.9", Action::Block, Mode::Enforce);
        f.apply(
            &[ev(Change::Escalate, d1b), ev(Change::New, d2.clone())],
            1_000,
        );
        let s = parse(f.stream("a", false, None));
        assert_eq!(s["new"].as_array().unwrap().len(), 2);
        assert_eq!(s["new"][0]["type"], "ban");
        let b = parse(f.stream("b", false, None));
        assert_eq!(b["new"].as_array().unwrap().len(), 2);
        // An expiry is a deletion with a negative duration; started-and-ended in between
        // is sent as deleted only.
        let d3 = decision(3, "203.0.113.10", Action::Block, Mode::Enforce);
        f.apply(
            &[
                ev(Change::Expire, d2),
                ev(Change::New, d3.clone()),
                ev(Change::Expire, d3),
            ],
            700_000,
        );
        let s = parse(f.stream("a", false, None));
        assert_eq!(s["new"], Value::Null);
        let del = s["deleted"].as_array().unwrap();
        assert_eq!(del.len(), 2);
        assert!(del[0]["duration"].as_str().unwrap().starts_with('-'));
        // Scopes narrow.
        assert_eq!(
            parse(f.stream("c", true, Some(&["range".to_string()]))),
            json!({"new": null, "deleted": null})
        );
    }
}
