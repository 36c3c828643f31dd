//! Mitigation rules: conditions over requests, features and scores that become expiring,
//! escalating decisions (log, challenge, rate-limit, block) for a key (a client, an
//! address, a range, an endpoint, an AS…), in event time.
//!
//! A rules file ([`file::RulesFile`], TOML) is compiled once into [`Rules`]: every
//! condition is a CEL expression checked against the feature and detector names
//! ([`Schema`]) — an unknown field, a syntax error or a condition that cannot give a bool is
//! refused with the rule's id and the position in the expression. A [`Decider`] holds the
//! decision state and takes the scored events one by one, in event time
//! ([`Decider::observe`]): allow-listed requests never get a decision; each rule that
//! matches starts a decision for its key unless one of that rule is active for it (one per
//! rule and key); a repeat offender climbs the rule's escalation ladder; decisions expire
//! when event time passes their end. Every start, escalation and expiry is a
//! [`DecisionEvent`]; each request gets the [`Verdict`] of the strongest decision covering
//! it. Shadow rules decide and count like the others, and are marked so that nothing
//! enforces them.
//!
//! ```
//! use gatewatch_rules::{Decider, Rules, Schema};
//!
//! let schema = Schema { features: vec!["req_rate_1m".into()], detectors: vec![] };
//! let rules = Rules::parse(
//!     r#"
//!     [[rule]]
//!     id = "fast"
//!     when = "features.req_rate_1m > 10.0 && request.method == 'POST'"
//!     action = "block"
//!     key = "ip"
//!     ttl = "10m"
//!     "#,
//!     &schema,
//! )
//! .unwrap();
//! assert_eq!(rules.len(), 1);
//! let d = Decider::new(std::sync::Arc::new(rules));
//! assert_eq!(d.active().count(), 0);
//! ```

mod decide;
mod expr;
pub mod file;
mod input;
mod keys;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use cel::Context;

pub use decide::{
    Change, Decider, DeciderStats, Decision, DecisionEvent, RuleStats, SavedState, Verdict,
};
pub use expr::{ExprError, MAX_DEPTH, MAX_EXPR_LEN, Schema};
pub use input::{Input, RequestView, ScoreView};
pub use keys::{KeyScope, KeySpec};

use expr::Condition;
use file::{RuleSpec, RulesFile};

/// The built-in rules, shipped with the built-in model (`models/default/rules.toml`).
pub const DEFAULT_RULES: &str = include_str!("../../../models/default/rules.toml");

/// Most rules a file may hold.
pub const MAX_RULES: usize = 1000;

/// Why a rules file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The file is not valid TOML or does not have the rules file's shape.
    #[error("rules file: {0}")]
    Syntax(String),
    /// A field of a rule (or allow entry) is wrong.
    #[error("rule {id:?}: {field}: {reason}")]
    Field {
        /// The rule's id (`allow[N]` for an allow entry).
        id: String,
        /// The field.
        field: String,
        /// What was wrong (with the value).
        reason: String,
    },
    /// A condition is wrong.
    #[error("rule {id:?}: when, {error}")]
    Condition {
        /// The rule's id (`allow[N]` for an allow entry).
        id: String,
        /// Where and what.
        error: ExprError,
    },
}

/// A decision's action, weakest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Recorded only.
    Log,
    /// The enforcement point limits the key's requests to a rate.
    RateLimit,
    /// The enforcement point answers with a challenge.
    Challenge,
    /// The enforcement point refuses the key's requests.
    Block,
}

impl Action {
    /// Its name in rules and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::RateLimit => "rate_limit",
            Self::Challenge => "challenge",
            Self::Block => "block",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "log" => Self::Log,
            "rate_limit" => Self::RateLimit,
            "challenge" => Self::Challenge,
            "block" => Self::Block,
            _ => return None,
        })
    }
}

/// Whether a rule's decisions are enforced.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Emitted and counted, never served as enforceable.
    Shadow,
    /// Served to enforcement points.
    Enforce,
}

impl Mode {
    /// Its name in rules and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shadow => "shadow",
            Self::Enforce => "enforce",
        }
    }
}

/// A rate limit: `requests` per `per_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// The window (ms).
    pub per_ms: i64,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Its id.
    pub id: Arc<str>,
    /// What it catches.
    pub description: String,
    /// The condition's text.
    pub when_text: String,
    when: Condition,
    /// The actions of its steps: its own, then its escalation ladder.
    pub ladder: Vec<Action>,
    /// What its decisions apply to.
    pub key: KeySpec,
    /// The first decision's time to live (ms).
    pub ttl_ms: i64,
    /// Each step's time to live is the previous one's times this.
    pub ttl_factor: f64,
    /// Offences are forgotten this long after the last decision ended (ms).
    pub forget_ms: i64,
    /// Escalate an active decision after this many more matches.
    pub after_hits: Option<u64>,
    /// Enforce or shadow.
    pub mode: Mode,
    /// Higher first.
    pub priority: i32,
    /// A rate-limit's rate.
    pub rate: Option<RateLimit>,
}

/// Longest time to live of any decision: 30 days.
const MAX_TTL_MS: i64 = 30 * 24 * 3600 * 1000;

impl Rule {
    /// The time to live of step `level`.
    pub fn ttl_at(&self, level: u32) -> i64 {
        let t = self.ttl_ms as f64 * self.ttl_factor.powi(level.min(64) as i32);
        if t.is_finite() {
            (t as i64).clamp(1, MAX_TTL_MS)
        } else {
            MAX_TTL_MS
        }
    }

    /// The action of step `level`.
    pub fn action_at(&self, level: u32) -> Action {
        self.ladder[(level as usize).min(self.ladder.len() - 1)]
    }
}

/// An allow-list entry.
#[derive(Debug)]
struct Allow {
    clients: HashSet<String>,
    cidrs: Vec<(IpAddr, u8)>,
    when: Option<Condition>,
}

/// A compiled rules file.
pub struct Rules {
    /// The rules, highest priority first (ties in file order).
    pub rules: Vec<Rule>,
    allow: Vec<Allow>,
    /// The names conditions were checked against.
    pub schema: Schema,
    /// The distinct keys of the rules (what a request is looked up by).
    pub key_specs: Vec<KeySpec>,
    /// Active decisions kept at most.
    pub max_decisions: usize,
    /// Past offences remembered at most.
    pub max_history: usize,
    cel_fields: Vec<expr::Field>,
    cel_keys: Vec<cel::objects::Key>,
    root: Context<'static, 'static>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("rules", &self.rules)
            .field("allow", &self.allow)
            .field("key_specs", &self.key_specs)
            .finish_non_exhaustive()
    }
}

fn duration_ms(id: &str, field: &str, text: &str) -> Result<i64, RulesError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| RulesError::Field {
        id: id.into(),
        field: field.into(),
        reason: format!("{text:?} is not a duration ({e}; e.g. \"30s\", \"10m\", \"1h\")"),
    })?;
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if ms <= 0 || ms > MAX_TTL_MS {
        return Err(RulesError::Field {
            id: id.into(),
            field: field.into(),
            reason: format!("{text:?} is out of range (1 ms to 30 days)"),
        });
    }
    Ok(ms)
}

/// An address range written `10.0.0.0/8` (or one address, a range of one): its network and
/// prefix length; `None` when it is not one.
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (
            a.trim().parse::<IpAddr>().ok()?,
            Some(l.trim().parse::<u8>().ok()?),
        ),
        None => (text.trim().parse::<IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((addr, len))
}

/// Whether `ip` lies in the range `(net, len)` (an IPv4 address never lies in an IPv6
/// range, nor the other way).
pub fn in_cidr(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Rules {
    /// Reads and compiles the rules file at `path`.
    pub fn load(path: &std::path::Path, schema: &Schema) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RulesError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, schema)
    }

    /// The rules `name` names: `default` for the built-in rules, else a file.
    pub fn load_named(name: &std::path::Path, schema: &Schema) -> Result<Self, RulesError> {
        if name.as_os_str() == "default" {
            Self::parse(DEFAULT_RULES, schema)
        } else {
            Self::load(name, schema)
        }
    }

    /// Compiles a rules file's text.
    pub fn parse(text: &str, schema: &Schema) -> Result<Self, RulesError> {
        let file: RulesFile =
            toml::from_str(text).map_err(|e| RulesError::Syntax(e.to_string().trim().into()))?;
        Self::compile(&file, schema)
    }

    /// Compiles a parsed rules file.
    pub fn compile(file: &RulesFile, schema: &Schema) -> Result<Self, RulesError> {
        if file.rules.len() > MAX_RULES {
            return Err(RulesError::Syntax(format!(
                "{} rules, more than {MAX_RULES}",
                file.rules.len()
            )));
        }
        let root = Context::default();
        let mut ids = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for spec in &file.rules {
            if !ids.insert(spec.id.as_str()) {
                return Err(RulesError::Field {
                    id: spec.id.clone(),
                    field: "id".into(),
                    reason: "another rule has this id".into(),
                });
            }
            rules.push(compile_rule(spec, schema, &root)?);
        }
        // Highest priority first; the sort is stable, so ties keep file order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let mut allow = Vec::new();
        for (n, a) in file.allow.iter().enumerate() {
            let id = format!("allow[{n}]");
            let cidrs = a
                .cidrs
                .iter()
                .map(|c| {
                    parse_cidr(c).ok_or_else(|| RulesError::Field {
                        id: id.clone(),
                        field: "cidrs".into(),
                        reason: format!("{c:?} is not an address or a range (10.0.0.0/8)"),
                    })
                })
                .collect::<Result<_, _>>()?;
            let when = a
                .when
                .as_deref()
                .map(|w| {
                    Condition::compile(w, schema, &root).map_err(|error| RulesError::Condition {
                        id: id.clone(),
                        error,
                    })
                })
                .transpose()?;
            allow.push(Allow {
                clients: a.clients.iter().cloned().collect(),
                cidrs,
                when,
            });
        }
        let mut key_specs = Vec::new();
        let mut cel_fields = Vec::new();
        for c in rules
            .iter()
            .map(|r| &r.when)
            .chain(allow.iter().filter_map(|a| a.when.as_ref()))
        {
            for f in &c.cel_fields {
                if !cel_fields.contains(f) {
                    cel_fields.push(*f);
                }
            }
        }
        for r in &rules {
            if !key_specs.contains(&r.key) {
                key_specs.push(r.key);
            }
        }
        if file.settings.max_decisions == 0 {
            return Err(RulesError::Field {
                id: "settings".into(),
                field: "max_decisions".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            rules,
            allow,
            schema: schema.clone(),
            key_specs,
            max_decisions: file.settings.max_decisions,
            max_history: file.settings.max_history,
            cel_keys: expr::field_keys(&cel_fields, schema),
            cel_fields,
            root,
        })
    }

    /// Whether a condition reads `request.headers` (only then does a caller need to hand
    /// the headers over).
    pub fn reads_headers(&self) -> bool {
        self.cel_fields
            .contains(&expr::Field::Request(expr::ReqField::Headers))
    }

    /// Rules in the set.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when the set has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule with `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.rules.iter().position(|r| &*r.id == id)
    }

    /// Whether the allow-list covers `input`.
    fn allows<'s>(
        &self,
        input: &Input<'_>,
        scope: &mut Option<expr::Bindings<'s>>,
        build: &dyn Fn() -> expr::Bindings<'s>,
        errors: &mut u64,
    ) -> bool {
        self.allow.iter().any(|a| {
            a.clients.contains(input.request.client)
                || a.cidrs.iter().any(|c| in_cidr(input.request.ip, *c))
                || a.when
                    .as_ref()
                    .is_some_and(|w| w.eval(input, scope, build, errors))
        })
    }
}

fn compile_rule(
    spec: &RuleSpec,
    schema: &Schema,
    root: &Context<'static, 'static>,
) -> Result<Rule, RulesError> {
    let id = spec.id.as_str();
    let field = |field: &str, reason: String| RulesError::Field {
        id: id.into(),
        field: field.into(),
        reason,
    };
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(field(
            "id",
            format!("{id:?} must be 1 to 128 characters without control characters"),
        ));
    }
    let action_of = |f: &str, s: &str| {
        Action::parse(s).ok_or_else(|| {
            field(
                f,
                format!("{s:?} is not an action (log, challenge, rate_limit, block)"),
            )
        })
    };
    let action = action_of("action", &spec.action)?;
    let mut ladder = vec![action];
    let (mut ttl_factor, mut forget_ms, mut after_hits) = (1.0, 24 * 3600 * 1000, None);
    if let Some(e) = &spec.escalation {
        for s in &e.ladder {
            ladder.push(action_of("escalation.ladder", s)?);
        }
        if !(e.ttl_factor.is_finite() && (1.0..=100.0).contains(&e.ttl_factor)) {
            return Err(field(
                "escalation.ttl_factor",
                format!("{} must be between 1 and 100", e.ttl_factor),
            ));
        }
        ttl_factor = e.ttl_factor;
        forget_ms = duration_ms(id, "escalation.forget", &e.forget)?;
        if e.after_hits == Some(0) {
            return Err(field("escalation.after_hits", "must be at least 1".into()));
        }
        after_hits = e.after_hits;
    }
    let mode = match spec.mode.as_str() {
        "enforce" => Mode::Enforce,
        "shadow" => Mode::Shadow,
        m => return Err(field("mode", format!("{m:?} is not enforce or shadow"))),
    };
    let key = KeySpec::parse(&spec.key, spec.ipv6_prefix).map_err(|r| field("key", r))?;
    let rate = match (ladder.contains(&Action::RateLimit), spec.rate, &spec.per) {
        (true, Some(requests), Some(per)) if requests > 0 => Some(RateLimit {
            requests,
            per_ms: duration_ms(id, "per", per)?,
        }),
        (true, _, _) => {
            return Err(field(
                "rate",
                "a rate_limit rule needs rate (requests, at least 1) and per (a window)".into(),
            ));
        }
        (false, None, None) => None,
        (false, _, _) => {
            return Err(field(
                "rate",
                "rate and per belong to rate_limit rules".into(),
            ));
        }
    };
    let when =
        Condition::compile(&spec.when, schema, root).map_err(|error| RulesError::Condition {
            id: id.into(),
            error,
        })?;
    Ok(Rule {
        id: id.into(),
        description: spec.description.clone(),
        when_text: spec.when.clone(),
        when,
        ladder,
        key,
        ttl_ms: duration_ms(id, "ttl", &spec.ttl)?,
        ttl_factor,
        forget_ms,
        after_hits,
        mode,
        priority: spec.priority,
        rate,
    })
}

#[cfg(test)]
mod tests;
