//! What the partitioned-run tests share: the configuration, a random log, records as
//! compared.

use std::net::{IpAddr, Ipv4Addr};

use gatewatch_event::RequestEvent;
use gatewatch_features::{Config, Record};
use proptest::prelude::*;

/// Records as compared: line, client and the features' bits.
pub type Out = Vec<(u64, String, Vec<u64>)>;

/// Short windows and 2 s of allowed lateness, with `extra` lines of `[features]`.
pub fn config(extra: &str) -> Config {
    Config::parse(&format!(
        "[features]\nhorizons_secs = [5, 60]\nbuckets_per_horizon = 5\nallowed_lateness_ms = 2000\n{extra}"
    ))
    .unwrap()
}

/// A record as compared: line, client and the features' bits.
pub fn bits(r: &Record<'_>) -> (u64, String, Vec<u64>) {
    (
        r.line,
        r.client.to_string(),
        r.features.iter().map(|f| f.to_bits()).collect(),
    )
}

/// Up to 400 requests of 24 addresses, some with API keys used from several addresses,
/// a few seconds apart with up to 1.5 s of disorder.
pub fn log() -> impl Strategy<Value = Vec<RequestEvent>> {
    prop::collection::vec(
        (
            0i64..4000,
            0i64..1500,
            0u8..24,
            0u8..12,
            0u16..50,
            0usize..4,
        ),
        1..400,
    )
    .prop_map(|v| {
        let mut t = 1_700_000_000_000i64;
        v.into_iter()
            .map(|(dt, jitter, client, path, id, st)| {
                t += dt;
                let path = match path {
                    0..=5 => format!("/api/p{path}/{id}"),
                    6..=8 => format!("/static/s{path}.js"),
                    _ => format!("/x{id}"),
                };
                let mut e = RequestEvent::new(
                    t - jitter,
                    IpAddr::V4(Ipv4Addr::new(10, 1, client % 5, client)),
                    "GET",
                    &path,
                    [200, 200, 404, 401][st],
                );
                // A third of the requests carry an API key used from several addresses, so
                // an address's keys, and a network's addresses, live in different parts.
                if id % 3 == 0 {
                    e.headers
                        .push(("x-api-key".into(), format!("k{}", client % 7).into()));
                }
                e
            })
            .collect()
    })
}
