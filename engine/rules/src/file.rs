//! The rules file (TOML), as written: `[settings]`, `[[allow]]` entries and `[[rule]]`s.

use serde::Deserialize;

/// The rules file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Limits of the decision state.
    #[serde(default)]
    pub settings: SettingsSpec,
    /// What never gets a decision.
    #[serde(default)]
    pub allow: Vec<AllowSpec>,
    /// The rules.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
}

/// `[settings]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsSpec {
    /// Active decisions kept at most; when full, the one ending soonest makes room (counted).
    #[serde(default = "default_max_decisions")]
    pub max_decisions: usize,
    /// Past offences (per rule and key, for escalation) remembered at most.
    #[serde(default = "default_max_decisions")]
    pub max_history: usize,
}

fn default_max_decisions() -> usize {
    100_000
}

impl Default for SettingsSpec {
    fn default() -> Self {
        Self {
            max_decisions: default_max_decisions(),
            max_history: default_max_decisions(),
        }
    }
}

/// One `[[allow]]` entry: requests it covers never get a decision.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowSpec {
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Client keys (`jwt:monitor`, `ip:10.0.0.5`).
    #[serde(default)]
    pub clients: Vec<String>,
    /// Address ranges (`10.0.0.0/8`, `2001:db8::/32`, or one address).
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// A condition (CEL, like a rule's).
    #[serde(default)]
    pub when: Option<String>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Its name, unique in the file (the decisions' `scenario`).
    pub id: String,
    /// What it catches.
    #[serde(default)]
    pub description: String,
    /// The condition: a CEL expression over `request.*`, `features.*` and `score.*`.
    pub when: String,
    /// `log`, `challenge`, `rate_limit` or `block`.
    pub action: String,
    /// What the decision applies to: `client`, `ip`, `ip/N` (IPv4 prefix; IPv6 /48 unless
    /// `ipv6_prefix` says otherwise), `endpoint`, `endpoint+client`, or `request.asn`,
    /// `request.country`, `request.user_agent`, `request.ja4`, `request.host`.
    #[serde(default = "default_key")]
    pub key: String,
    /// The IPv6 prefix of an `ip/N` key.
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
    /// How long a decision lasts (`10m`, `1h`).
    #[serde(default = "default_ttl")]
    pub ttl: String,
    /// `enforce` (served to enforcement points) or `shadow` (emitted and counted only).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Higher first; ties in file order.
    #[serde(default)]
    pub priority: i32,
    /// A `rate_limit` decision's allowed requests per `per`.
    #[serde(default)]
    pub rate: Option<u32>,
    /// A `rate_limit` decision's window (`1m`).
    #[serde(default)]
    pub per: Option<String>,
    /// Harder decisions for repeat offenders.
    #[serde(default)]
    pub escalation: Option<EscalationSpec>,
}

/// A rule's escalation: a repeat offender's next decision is the next step of the ladder,
/// its time to live multiplied by `ttl_factor` per step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationSpec {
    /// The actions of the steps after the rule's own (`["challenge", "block"]`).
    pub ladder: Vec<String>,
    /// Each step's time to live is the previous one's times this.
    #[serde(default = "default_factor")]
    pub ttl_factor: f64,
    /// A key's offences are forgotten this long after its last decision ended.
    #[serde(default = "default_forget")]
    pub forget: String,
    /// Escalate an active decision after this many more matching requests while it lasts
    /// (none: only a new offence after it ends escalates).
    #[serde(default)]
    pub after_hits: Option<u64>,
}

fn default_key() -> String {
    "client".into()
}
fn default_ttl() -> String {
    "10m".into()
}
fn default_mode() -> String {
    "enforce".into()
}
fn default_factor() -> f64 {
    2.0
}
fn default_forget() -> String {
    "24h".into()
}
