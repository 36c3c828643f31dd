//! The feature registry: the one table of every feature's name, horizon, aggregation and
//! definition. Its hash versions the feature set.

use std::fmt::Write;

use serde::Serialize;

use crate::config::FeatureConfig;

/// Version of the feature definitions' code; part of the registry hash, raised whenever a
/// definition changes meaning.
pub const DEFINITIONS_VERSION: u32 = 5;

/// Width of the per-endpoint windows of one client and of the population (milliseconds).
pub const ENDPOINT_BUCKET_MS: i64 = 30_000;

/// Per-client window features: one of each per horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WindowFeature {
    /// Requests in the window.
    ReqCount,
    /// Requests per second over the horizon.
    ReqRate,
    /// Share of responses with status ≥ 400.
    ErrorRatio,
    /// Share of 401 and 403 responses.
    AuthFailRatio,
    /// Share of 404 responses.
    NotFoundRatio,
    /// Share of 429 responses.
    ThrottledRatio,
    /// Share of 5xx responses.
    ServerErrorRatio,
    /// Mean bytes (request + response) per request.
    BytesMean,
    /// Mean inter-arrival gap.
    IatMean,
    /// Smallest inter-arrival gap.
    IatMin,
    /// Coefficient of variation of inter-arrival gaps.
    IatCv,
    /// Distinct endpoint templates (sketch).
    DistinctEndpoints,
    /// Distinct (endpoint, object id) pairs (sketch).
    DistinctIds,
    /// Share of requests that step an endpoint's numeric id by 1 or 2.
    SeqIdRatio,
    /// Mean transition surprise.
    SurpriseMean,
    /// Share of requests for static assets (images, style sheets, scripts, fonts, media).
    AssetRatio,
    /// Share of requests with a referer.
    ReferrerRatio,
    /// Share of HEAD requests.
    HeadRatio,
    /// Requests for /robots.txt.
    RobotsCount,
    /// Share of requests at night, local time.
    NightRatio,
}

impl WindowFeature {
    /// All, in vector order.
    pub const ALL: [Self; 20] = [
        Self::ReqCount,
        Self::ReqRate,
        Self::ErrorRatio,
        Self::AuthFailRatio,
        Self::NotFoundRatio,
        Self::ThrottledRatio,
        Self::ServerErrorRatio,
        Self::BytesMean,
        Self::IatMean,
        Self::IatMin,
        Self::IatCv,
        Self::DistinctEndpoints,
        Self::DistinctIds,
        Self::SeqIdRatio,
        Self::SurpriseMean,
        Self::AssetRatio,
        Self::ReferrerRatio,
        Self::HeadRatio,
        Self::RobotsCount,
        Self::NightRatio,
    ];
    /// How many there are.
    pub const COUNT: usize = Self::ALL.len();

    fn spec(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::ReqCount => (
                "req_count",
                "count",
                "Requests of this client in the window, this one included.",
            ),
            Self::ReqRate => (
                "req_rate",
                "count / horizon",
                "`req_count` divided by the horizon in seconds.",
            ),
            Self::ErrorRatio => (
                "error_ratio",
                "ratio",
                "Share of the window's requests answered with status ≥ 400.",
            ),
            Self::AuthFailRatio => ("auth_fail_ratio", "ratio", "Share answered 401 or 403."),
            Self::NotFoundRatio => ("not_found_ratio", "ratio", "Share answered 404."),
            Self::ThrottledRatio => ("throttled_ratio", "ratio", "Share answered 429."),
            Self::ServerErrorRatio => ("server_error_ratio", "ratio", "Share answered 5xx."),
            Self::BytesMean => (
                "bytes_mean",
                "mean",
                "Mean of `req_bytes + resp_bytes` (missing sizes count 0).",
            ),
            Self::IatMean => (
                "iat_mean",
                "mean",
                "Mean inter-arrival gap in seconds over the window's requests that have a previous request of the same client (gap to that request, capped at the horizon); the horizon when there is none.",
            ),
            Self::IatMin => (
                "iat_min",
                "min",
                "Smallest of those gaps in seconds; the horizon when there is none.",
            ),
            Self::IatCv => (
                "iat_cv",
                "std / mean",
                "Coefficient of variation (population standard deviation / mean) of those gaps: 1 (the value of random, Poisson arrivals) with fewer than two gaps, 0 when all gaps are 0. Low values mean machine-regular timing.",
            ),
            Self::DistinctEndpoints => (
                "distinct_endpoints",
                "distinct (sketch)",
                "Distinct endpoint templates, estimated by linear counting over a 64-bit bitmap per bucket: −64·ln(1 − set bits/64) (1 item gives 1.008; relative standard error ≤ 11% up to 64 items; saturates at 266).",
            ),
            Self::DistinctIds => (
                "distinct_ids",
                "distinct (sketch)",
                "Distinct (endpoint template, last object id) pairs among requests whose path carries an id, estimated like `distinct_endpoints`. High values mean enumeration.",
            ),
            Self::SeqIdRatio => (
                "seq_id_ratio",
                "ratio",
                "Share of the window's requests whose last numeric path id differs by 1 or 2 from the previous numeric id this client used on the same endpoint (sequential walks).",
            ),
            Self::SurpriseMean => (
                "surprise_mean",
                "mean",
                "Mean of `transition_surprise` over the window's requests.",
            ),
            Self::AssetRatio => (
                "asset_ratio",
                "ratio",
                "Share of the window's requests for static assets: a path whose last segment ends in an image, style-sheet, script, font or media extension (`css js mjs map png jpg jpeg gif svg ico webp avif bmp woff woff2 ttf otf eot mp4 webm mp3`, any case). Browsers fetch a page's assets with it; crawlers and scripts mostly do not (Tan and Kumar 2002; Doran and Gokhale 2011).",
            ),
            Self::ReferrerRatio => (
                "referrer_ratio",
                "ratio",
                "Share of the window's requests that carry a `referer` header (the combined log's referer field when not `-`). Browsers send one for a page's assets and followed links; most robots send none (Tan and Kumar 2002).",
            ),
            Self::HeadRatio => (
                "head_ratio",
                "ratio",
                "Share of the window's HEAD requests (link checkers, monitors, crawlers checking for changes; Tan and Kumar 2002).",
            ),
            Self::RobotsCount => (
                "robots_count",
                "count",
                "Requests for `/robots.txt` in the window: a crawler announcing itself by reading the site's crawling rules (Doran and Gokhale 2011).",
            ),
            Self::NightRatio => (
                "night_ratio",
                "ratio",
                "Share of the window's requests made between 00:00 and 06:00 in the site's time zone (`features.local_utc_offset_minutes`, a fixed offset; the client's own time zone is unknown): people sleep, crawlers and scripts do not (a web-robot detection feature, Stevanovic, An and Vlajic 2012).",
            ),
        }
    }

    /// Base name (without horizon suffix).
    pub fn base_name(self) -> &'static str {
        self.spec().0
    }
}

/// Per-event features that are not per horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PointFeature {
    /// Seconds since this client's previous request.
    SecsSincePrev,
    /// Seconds since the client was first seen.
    ClientAgeSecs,
    /// −log2 P(this endpoint | previous endpoint of the client) under the population model.
    TransitionSurprise,
    /// This client's requests to this endpoint in the endpoint window.
    EndpointCount,
    /// That count relative to the population's typical count for this endpoint.
    EndpointRateRatio,
    /// Entropy of the client's endpoint distribution in the endpoint window.
    EndpointEntropy,
    /// Population requests per second to this endpoint.
    EndpointPopRate,
    /// Distinct client keys seen from this address.
    AddrClients,
    /// Requests from this address.
    AddrRequests,
    /// Authentication failures of this address.
    AddrAuthFailures,
    /// Distinct addresses seen in this network.
    NetAddrs,
    /// Requests from this network.
    NetRequests,
    /// Authentication failures of this network.
    NetAuthFailures,
}

impl PointFeature {
    /// All, in vector order.
    pub const ALL: [Self; 13] = [
        Self::SecsSincePrev,
        Self::ClientAgeSecs,
        Self::TransitionSurprise,
        Self::EndpointCount,
        Self::EndpointRateRatio,
        Self::EndpointEntropy,
        Self::EndpointPopRate,
        Self::AddrClients,
        Self::AddrRequests,
        Self::AddrAuthFailures,
        Self::NetAddrs,
        Self::NetRequests,
        Self::NetAuthFailures,
    ];
    /// How many there are.
    pub const COUNT: usize = Self::ALL.len();

    fn spec(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::SecsSincePrev => (
                "secs_since_prev",
                "last",
                "Seconds since this client's previous request, capped at the longest horizon (which is also the value for a client's first request).",
            ),
            Self::ClientAgeSecs => (
                "client_age_secs",
                "last",
                "Seconds since this client's first request still in state.",
            ),
            Self::TransitionSurprise => (
                "transition_surprise",
                "population model",
                "−log2 P(endpoint | client's previous endpoint, or the start of its session) with add-one smoothing over the endpoint table, from the transition counts of all clients' requests in earlier 30-second population epochs (the current epoch excluded). A template enters the table at the end of the epoch of its first request; until then, and when the table is full, the shared overflow endpoint stands for it.",
            ),
            Self::EndpointCount => (
                "endpoint_count_1m",
                "count",
                "This client's requests to this endpoint in the current and previous 30-second bucket (a 30–60 s window), this one included.",
            ),
            Self::EndpointRateRatio => (
                "endpoint_rate_ratio",
                "population-relative",
                "(1 + `endpoint_count_1m`) / (1 + typical count). The typical count is the weighted median of one vote per client and earlier 30-second epoch — the client's highest `endpoint_count_1m` on this endpoint in that epoch, binned exactly up to 7 and in quarter-octaves above — each epoch's votes weighted 2^(−age/1 h). One client is one vote, however many requests it sends. 1 while the endpoint has no votes.",
            ),
            Self::EndpointEntropy => (
                "endpoint_entropy_1m",
                "entropy",
                "Shannon entropy (bits) of this client's request counts per endpoint in the same 30–60 s window.",
            ),
            Self::EndpointPopRate => (
                "endpoint_pop_rate_1m",
                "count / 60 s",
                "Requests of all clients to this endpoint in the two 30-second population epochs before the current one, per second (count / 60).",
            ),
            Self::AddrClients => (
                "addr_clients_10m",
                "distinct (population)",
                "Distinct client keys (tokens, API keys, sessions, the address itself) that sent requests from this request's address in the 20 population epochs (10 minutes) before the current one, counted up to 32. Many keys from one address: a NAT or proxy, or one caller cycling through accounts.",
            ),
            Self::AddrRequests => (
                "addr_req_10m",
                "count (population)",
                "Requests from this request's address, by any client key, in the 20 population epochs (10 minutes) before the current one.",
            ),
            Self::AddrAuthFailures => (
                "addr_auth_fail_10m",
                "count (population)",
                "401/403 answers to this request's address, by any client key, in the 20 population epochs (10 minutes) before the current one: a token's requests see the failed logins from its address before it.",
            ),
            Self::NetAddrs => (
                "net_addrs_10m",
                "distinct (population)",
                "Distinct addresses that sent requests from this request's network (its /24 or /48, or its autonomous system with `features.network = \"asn\"`) in the 20 population epochs (10 minutes) before the current one, counted up to 32.",
            ),
            Self::NetRequests => (
                "net_req_10m",
                "count (population)",
                "Requests from this request's network in the 20 population epochs (10 minutes) before the current one.",
            ),
            Self::NetAuthFailures => (
                "net_auth_fail_10m",
                "count (population)",
                "401/403 answers to this request's network in the 20 population epochs (10 minutes) before the current one.",
            ),
        }
    }
}

/// One feature's entry in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeatureDef {
    /// Column name.
    pub name: String,
    /// Horizon in seconds, for window features.
    pub horizon_secs: Option<u32>,
    /// How it aggregates.
    pub aggregation: &'static str,
    /// Value type.
    pub dtype: &'static str,
    /// Exact definition.
    pub doc: &'static str,
}

/// The registry of one configuration's features, in vector order: the features it outputs
/// (all of them, or the `select`ed ones in the same order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registry {
    /// Features in vector order.
    pub features: Vec<FeatureDef>,
    /// Horizons in seconds.
    pub horizons_secs: Vec<u32>,
    /// Buckets per horizon.
    pub buckets_per_horizon: u32,
    /// Hash of every feature's definition (all of them, selected or not), the horizons, the
    /// buckets and [`DEFINITIONS_VERSION`] (16 hex digits).
    pub hash: String,
    /// With a selection: the position of each output feature in the full vector the engine
    /// computes.
    #[serde(skip)]
    selected: Option<Vec<usize>>,
    /// Features the engine computes per event (the full vector).
    #[serde(skip)]
    full_len: usize,
}

/// `10s`, `1m`, `10m`, `1h`, `90s`, `1d`.
pub fn horizon_suffix(secs: u32) -> String {
    if secs % 86_400 == 0 {
        format!("{}d", secs / 86_400)
    } else if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

impl Registry {
    /// The registry of a (validated) configuration: its selection of features, or all.
    pub fn new(cfg: &FeatureConfig) -> Self {
        let mut r = Self::all(cfg);
        if let Some(names) = &cfg.select {
            let mut idx: Vec<usize> = names.iter().filter_map(|n| r.index_of(n)).collect();
            idx.sort_unstable();
            idx.dedup();
            r.features = idx.iter().map(|&i| r.features[i].clone()).collect();
            r.selected = Some(idx);
        }
        r
    }

    /// Every feature of a configuration's definitions, whatever it selects.
    pub fn all(cfg: &FeatureConfig) -> Self {
        let mut features = Vec::new();
        for &h in &cfg.horizons_secs {
            for wf in WindowFeature::ALL {
                let (base, aggregation, doc) = wf.spec();
                features.push(FeatureDef {
                    name: format!("{base}_{}", horizon_suffix(h)),
                    horizon_secs: Some(h),
                    aggregation,
                    dtype: "f64",
                    doc,
                });
            }
        }
        for pf in PointFeature::ALL {
            let (name, aggregation, doc) = pf.spec();
            features.push(FeatureDef {
                name: name.to_string(),
                horizon_secs: None,
                aggregation,
                dtype: "f64",
                doc,
            });
        }
        let mut canon = format!(
            "v{DEFINITIONS_VERSION};b{};n{}/{}/{};o{};",
            cfg.buckets_per_horizon,
            cfg.network_v4_prefix,
            cfg.network_v6_prefix,
            cfg.network,
            cfg.local_utc_offset_minutes
        );
        for f in &features {
            let _ = write!(canon, "{}|{}|{};", f.name, f.aggregation, f.doc);
        }
        let hash = format!("{:016x}", crate::sketch::fnv1a(canon.as_bytes()));
        Self {
            full_len: features.len(),
            features,
            horizons_secs: cfg.horizons_secs.clone(),
            buckets_per_horizon: cfg.buckets_per_horizon,
            hash,
            selected: None,
        }
    }

    /// Features the engine computes per event, selected or not (the width of its working
    /// vector, which [`window_index`](Self::window_index) and
    /// [`point_index`](Self::point_index) index).
    pub fn full_len(&self) -> usize {
        self.full_len
    }

    /// With a selection, the position in the full vector of each output feature.
    pub fn selection(&self) -> Option<&[usize]> {
        self.selected.as_deref()
    }

    /// The output features of a full vector (all of it without a selection).
    pub fn select_into(&self, full: &[f64], out: &mut [f64]) {
        match &self.selected {
            None => out.copy_from_slice(full),
            Some(idx) => {
                for (o, &i) in out.iter_mut().zip(idx) {
                    *o = full[i];
                }
            }
        }
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether the registry is empty (never, for a valid configuration).
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Feature names in vector order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|f| f.name.as_str())
    }

    /// Position of a window feature for horizon index `h` in the full vector.
    pub fn window_index(h: usize, f: WindowFeature) -> usize {
        h * WindowFeature::COUNT + f as usize
    }

    /// Position of a point feature in the full vector.
    pub fn point_index(&self, f: PointFeature) -> usize {
        self.horizons_secs.len() * WindowFeature::COUNT + f as usize
    }

    /// Position of an output feature by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }

    /// The feature reference as Markdown (the README's feature table is generated from this).
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let hs: Vec<String> = self
            .horizons_secs
            .iter()
            .map(|h| horizon_suffix(*h))
            .collect();
        let _ = writeln!(
            s,
            "Feature set `{}`: {} features. Window features exist once per horizon ({}), named \
             `<name>_<horizon>`; each horizon is split into {} buckets and a window holds the \
             event's bucket and the {} before it. Every feature of an event uses only events \
             with a timestamp at or before its own that were processed before it (ties in \
             arrival order), the event itself included.\n",
            self.hash,
            self.len(),
            hs.join(", "),
            self.buckets_per_horizon,
            self.buckets_per_horizon - 1
        );
        let _ = writeln!(s, "| feature | aggregation | definition |\n|---|---|---|");
        for wf in WindowFeature::ALL {
            let (base, agg, doc) = wf.spec();
            let _ = writeln!(s, "| `{base}_<h>` | {agg} | {doc} |");
        }
        for pf in PointFeature::ALL {
            let (name, agg, doc) = pf.spec();
            let _ = writeln!(s, "| `{name}` | {agg} | {doc} |");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_positions_and_hash() {
        let r = Registry::new(&FeatureConfig::default());
        assert_eq!(r.len(), 4 * WindowFeature::COUNT + PointFeature::COUNT);
        assert_eq!(
            r.features[Registry::window_index(1, WindowFeature::ErrorRatio)].name,
            "error_ratio_1m"
        );
        assert_eq!(
            r.features[Registry::window_index(3, WindowFeature::IatCv)].name,
            "iat_cv_1h"
        );
        assert_eq!(
            r.features[r.point_index(PointFeature::EndpointEntropy)].name,
            "endpoint_entropy_1m"
        );
        assert_eq!(r.index_of("req_count_10s"), Some(0));
        let mut names: Vec<_> = r.names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), r.len(), "names are unique");
        let other = Registry::new(&FeatureConfig {
            buckets_per_horizon: 10,
            ..Default::default()
        });
        assert_ne!(r.hash, other.hash);
        assert_eq!(r.hash, Registry::new(&FeatureConfig::default()).hash);
        assert_eq!(horizon_suffix(90), "90s");
    }
}
