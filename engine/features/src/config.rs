//! The engine's sections of the configuration file (`[client_key]`, `[endpoints]`, `[input]`,
//! `[features]`); the program reads the whole file with `gatewatch-config`.

use gatewatch_event::{ClientKeyConfig, CombinedConfig, EndpointConfig};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole configuration file. Every section is optional; a missing section takes its
/// defaults. Unknown keys are refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How client keys are chosen.
    #[serde(default)]
    pub client_key: ClientKeyConfig,
    /// How endpoint templates are made.
    #[serde(default)]
    pub endpoints: EndpointConfig,
    /// Input formats.
    #[serde(default)]
    pub input: InputConfig,
    /// Windows, state bounds, lateness.
    #[serde(default)]
    pub features: FeatureConfig,
}

/// `[input]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Extra fields of combined access-log lines.
    #[serde(default)]
    pub combined: CombinedConfig,
}

/// `[features]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureConfig {
    /// Window horizons in seconds, ascending; each gives one set of per-client window
    /// features (at most 8).
    #[serde(default = "default_horizons")]
    pub horizons_secs: Vec<u32>,
    /// Buckets per horizon: a window covers the current bucket and the `buckets - 1` before it,
    /// so it spans between `(buckets-1)/buckets` and all of the horizon. The horizon in
    /// milliseconds must be divisible by this number.
    #[serde(default = "default_buckets")]
    pub buckets_per_horizon: u32,
    /// Events may arrive this much (milliseconds of event time) behind the newest event seen
    /// and are still placed in order; events later than that are counted and reported.
    #[serde(default = "default_lateness")]
    pub allowed_lateness_ms: u64,
    /// One event may move event time at most this far (milliseconds) ahead of the newest
    /// event time on its own. An event further ahead is held until `future_confirm`
    /// consecutive events agree with it (event time then jumps and nothing is lost); when an
    /// event that fits the old event time comes first, the held events are refused as
    /// "future" and counted.
    #[serde(default = "default_max_future")]
    pub max_future_ms: u64,
    /// Consecutive events (the wild one included) that confirm a jump of event time beyond
    /// `max_future_ms`; 1 follows every event.
    #[serde(default = "default_future_confirm")]
    pub future_confirm: usize,
    /// At most this many clients are tracked; the least recently seen is evicted first.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// A client not seen for this long (event time) is evicted. Defaults to the longest horizon.
    #[serde(default)]
    pub client_idle_ttl_secs: Option<u64>,
    /// At most this many distinct endpoint templates get their own state; later ones share
    /// one overflow slot (the template is still written in the output).
    #[serde(default = "default_max_endpoints")]
    pub max_endpoints: u32,
    /// Per-client endpoint slots (for per-endpoint counts, id walks and entropy); when a client
    /// uses more endpoints within a minute, the least recently used slot is reused.
    #[serde(default = "default_endpoint_slots")]
    pub endpoint_slots: usize,
    /// The features to compute and output, by name (`req_count_1m`, `transition_surprise`,
    /// …); all of them when absent. Records, tables and frames carry only these, in registry
    /// order, and clients keep window buckets only for the horizons of selected window
    /// features. The feature-set hash does not change (a model checks that every feature it
    /// reads is selected, and names the ones that are not); a saved state restores only into
    /// a configuration that keeps the same horizons.
    #[serde(default)]
    pub select: Option<Vec<String>>,
    /// At most this many addresses, and as many networks, have population statistics of
    /// their own (the address and network features); new ones beyond are not counted.
    #[serde(default = "default_max_addresses")]
    pub max_addresses: usize,
    /// Prefix length of an IPv4 address's network (8–32).
    #[serde(default = "default_v4_prefix")]
    pub network_v4_prefix: u8,
    /// Prefix length of an IPv6 address's network (16–128).
    #[serde(default = "default_v6_prefix")]
    pub network_v6_prefix: u8,
    /// What a request's network is: `"prefix"` (the address's prefix) or `"asn"` (the
    /// event's autonomous system when it has one, else the prefix).
    #[serde(default = "default_network")]
    pub network: String,
    /// The site's time zone as an offset from UTC in minutes (−840..=840), for
    /// `night_ratio` (requests between 00:00 and 06:00 local time). Fixed: daylight saving
    /// time is not followed.
    #[serde(default)]
    pub local_utc_offset_minutes: i32,
}

fn default_horizons() -> Vec<u32> {
    vec![10, 60, 600, 3600]
}
fn default_buckets() -> u32 {
    5
}
fn default_lateness() -> u64 {
    5_000
}
fn default_max_future() -> u64 {
    300_000
}
fn default_future_confirm() -> usize {
    4
}
fn default_max_clients() -> usize {
    1_000_000
}
fn default_max_endpoints() -> u32 {
    10_000
}
fn default_endpoint_slots() -> usize {
    8
}
fn default_max_addresses() -> usize {
    1_000_000
}
fn default_v4_prefix() -> u8 {
    24
}
fn default_v6_prefix() -> u8 {
    48
}
fn default_network() -> String {
    "prefix".into()
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            horizons_secs: default_horizons(),
            buckets_per_horizon: default_buckets(),
            allowed_lateness_ms: default_lateness(),
            max_future_ms: default_max_future(),
            future_confirm: default_future_confirm(),
            max_clients: default_max_clients(),
            client_idle_ttl_secs: None,
            max_endpoints: default_max_endpoints(),
            endpoint_slots: default_endpoint_slots(),
            select: None,
            max_addresses: default_max_addresses(),
            network_v4_prefix: default_v4_prefix(),
            network_v6_prefix: default_v6_prefix(),
            network: default_network(),
            local_utc_offset_minutes: 0,
        }
    }
}

impl FeatureConfig {
    /// Checks the values; the engine only accepts a validated configuration.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("features.{m}")));
        if self.horizons_secs.is_empty() || self.horizons_secs.len() > 8 {
            return bad("horizons_secs: give between 1 and 8 horizons".into());
        }
        if self.horizons_secs.windows(2).any(|w| w[0] >= w[1]) {
            return bad(format!(
                "horizons_secs: must be strictly ascending, got {:?}",
                self.horizons_secs
            ));
        }
        if self.horizons_secs[0] == 0 || *self.horizons_secs.last().unwrap_or(&0) > 7 * 86_400 {
            return bad("horizons_secs: each horizon must be between 1 s and 7 days".into());
        }
        if !(1..=60).contains(&self.buckets_per_horizon) {
            return bad(format!(
                "buckets_per_horizon: must be 1..=60, got {}",
                self.buckets_per_horizon
            ));
        }
        for h in &self.horizons_secs {
            if (u64::from(*h) * 1000) % u64::from(self.buckets_per_horizon) != 0 {
                return bad(format!(
                    "buckets_per_horizon: {} ms is not divisible by {}",
                    u64::from(*h) * 1000,
                    self.buckets_per_horizon
                ));
            }
        }
        if self.max_clients == 0 || self.max_clients >= u32::MAX as usize {
            return bad(format!(
                "max_clients: must be 1..{}, got {}",
                u32::MAX,
                self.max_clients
            ));
        }
        if !(1..=1_000_000).contains(&self.max_endpoints) {
            return bad(format!(
                "max_endpoints: must be 1..=1000000, got {}",
                self.max_endpoints
            ));
        }
        if !(1..=64).contains(&self.endpoint_slots) {
            return bad(format!(
                "endpoint_slots: must be 1..=64, got {}",
                self.endpoint_slots
            ));
        }
        if self.client_idle_ttl_secs == Some(0) {
            return bad("client_idle_ttl_secs: must be positive".into());
        }
        if self.client_idle_ttl_secs.is_some_and(|s| s > 366 * 86_400) {
            return bad("client_idle_ttl_secs: at most 366 days".into());
        }
        if self.allowed_lateness_ms > 86_400_000 {
            return bad(format!(
                "allowed_lateness_ms: at most 86400000 (one day), got {}",
                self.allowed_lateness_ms
            ));
        }
        if self.max_future_ms > 366 * 86_400_000 {
            return bad(format!(
                "max_future_ms: at most 366 days, got {}",
                self.max_future_ms
            ));
        }
        if !(1..=64).contains(&self.future_confirm) {
            return bad(format!(
                "future_confirm: must be 1..=64, got {}",
                self.future_confirm
            ));
        }
        if !(1..=10_000_000).contains(&self.max_addresses) {
            return bad(format!(
                "max_addresses: must be 1..=10000000, got {}",
                self.max_addresses
            ));
        }
        if !(8..=32).contains(&self.network_v4_prefix) {
            return bad(format!(
                "network_v4_prefix: must be 8..=32, got {}",
                self.network_v4_prefix
            ));
        }
        if !(16..=128).contains(&self.network_v6_prefix) {
            return bad(format!(
                "network_v6_prefix: must be 16..=128, got {}",
                self.network_v6_prefix
            ));
        }
        if !(-840..=840).contains(&self.local_utc_offset_minutes) {
            return bad(format!(
                "local_utc_offset_minutes: must be -840..=840, got {}",
                self.local_utc_offset_minutes
            ));
        }
        if !["prefix", "asn"].contains(&self.network.as_str()) {
            return bad(format!(
                "network: \"prefix\" or \"asn\", got {:?}",
                self.network
            ));
        }
        if let Some(names) = &self.select {
            if names.is_empty() {
                return bad(
                    "select: name at least one feature (or leave the key out for all)".into(),
                );
            }
            let all = crate::registry::Registry::all(self);
            for (i, n) in names.iter().enumerate() {
                if all.index_of(n).is_none() {
                    let near: Vec<&str> = all
                        .names()
                        .filter(|k| {
                            let base = n.rsplit_once('_').map_or(n.as_str(), |b| b.0);
                            k.starts_with(base)
                        })
                        .take(6)
                        .collect();
                    let hint = if near.is_empty() {
                        "`gatewatch features --list` lists them".to_string()
                    } else {
                        format!("did you mean one of {near:?}?")
                    };
                    return bad(format!("select: unknown feature {n:?}; {hint}"));
                }
                if names[..i].contains(n) {
                    return bad(format!("select: {n:?} is named twice"));
                }
            }
        }
        Ok(())
    }

    /// How a request's network is found.
    pub fn network_rule(&self) -> crate::levels::NetworkRule {
        crate::levels::NetworkRule {
            v4_prefix: self.network_v4_prefix,
            v6_prefix: self.network_v6_prefix,
            asn: self.network == "asn",
        }
    }

    /// The idle TTL in milliseconds.
    pub fn idle_ttl_ms(&self) -> i64 {
        let secs = self
            .client_idle_ttl_secs
            .unwrap_or_else(|| u64::from(*self.horizons_secs.last().unwrap_or(&3600)));
        i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

impl Config {
    /// Parses and validates the engine's sections (the program's whole file is read by
    /// `gatewatch-config`, which refuses what this does not know).
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| Error::Config(e.to_string().trim_end().to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every section's values, naming the key.
    pub fn validate(&self) -> Result<()> {
        self.features.validate()?;
        self.input
            .combined
            .validate()
            .map_err(|e| Error::Config(format!("input.combined.{e}")))?;
        gatewatch_event::ClientKeyExtractor::new(&self.client_key)?;
        gatewatch_event::EndpointNormalizer::new(&self.endpoints)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_defaults() {
        // The example file (every section of the program) is tested by gatewatch-config.
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(
            Config::parse("[features]").unwrap().client_key,
            ClientKeyConfig::default()
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        // Limits the engine checks when it is built from a parsed file.
        for (text, needle) in [
            (
                "[client_key]\nmax_value_bytes = 100000",
                "client_key.max_value_bytes must be 8..=1024",
            ),
            (
                "[endpoints]\nmax_segment_bytes = 100000",
                "endpoints.max_segment_bytes 8..=1024",
            ),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        for (text, needle) in [
            ("[features]\nhorizon = [1]", "unknown field `horizon`"),
            ("[features]\nhorizons_secs = [60, 10]", "strictly ascending"),
            (
                "[features]\nhorizons_secs = [7]\nbuckets_per_horizon = 3",
                "not divisible",
            ),
            ("[features]\nmax_clients = 0", "max_clients"),
            ("[client_key]\nsources = 5", "sources"),
            ("[nope]", "unknown field `nope`"),
            (
                "[input.combined]\nsession_field = 0",
                "input.combined.session_field",
            ),
            (
                "[input.combined]\nhost_field = 100000",
                "input.combined.host_field",
            ),
            ("[features]\nfuture_confirm = 0", "features.future_confirm"),
            (
                "[features]\nallowed_lateness_ms = 99999999999",
                "allowed_lateness_ms",
            ),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
