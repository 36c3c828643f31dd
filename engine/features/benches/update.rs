//! Feature update per event: pre-parsed events, default features, 100,000 active clients.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gatewatch_event::RequestEvent;
use gatewatch_features::{Config, FeatureEngine};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: u32 = 100_000;
const EVENTS: usize = 1_000_000;

/// `EVENTS` events per 10 minutes from 100,000 clients (10 each per 10 minutes), on 12
/// endpoint templates with ids, ~8% errors: every client is active in the 10-minute and
/// 1-hour windows. The first 10 minutes warm the state up; the next 10 are measured.
fn events() -> Vec<RequestEvent> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let paths = [
        "/v1/products/{}",
        "/v1/products",
        "/v1/orders/{}",
        "/v1/cart",
        "/v1/search",
        "/v1/users/{}/profile",
    ];
    (0..2 * EVENTS)
        .map(|i| {
            let r = next();
            let client = (r % u64::from(CLIENTS)) as u32;
            let ip = IpAddr::V4(Ipv4Addr::from(0x5100_0000 + client));
            let p = paths[(r >> 20) as usize % paths.len()]
                .replace("{}", &((r >> 32) % 5000).to_string());
            let status = if (r >> 40) % 100 < 8 { 404 } else { 200 };
            let method = if (r >> 48) % 10 == 0 { "POST" } else { "GET" };
            let mut e = RequestEvent::new(
                1_767_603_600_000 + (i as i64 * 600_000 / EVENTS as i64),
                ip,
                method,
                &p,
                status,
            );
            e.host = Some("api.shop.example".into());
            e.resp_bytes = Some(1000 + (r >> 50) % 4000);
            e
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let evs = events();
    let cfg = Config::default();
    let mut g = c.benchmark_group("feature_update");
    g.sample_size(10);
    g.throughput(Throughput::Elements(EVENTS as u64));
    // Everything after parsing: client key, endpoint template, windows, population, features;
    // measured in steady state (100,000 clients already tracked, their windows filled).
    g.bench_function("push_1M_events_100k_clients", |b| {
        b.iter_batched(
            || {
                let mut eng = FeatureEngine::new(&cfg).unwrap();
                for (i, e) in evs[..EVENTS].iter().cloned().enumerate() {
                    eng.push(e, i as u64, &mut |_| {}, &mut |_| {});
                }
                (eng, evs[EVENTS..].to_vec())
            },
            |(mut eng, evs)| {
                let mut acc = 0.0;
                for (i, e) in evs.into_iter().enumerate() {
                    eng.push(e, i as u64, &mut |r| acc += r.features[0], &mut |_| {});
                }
                eng.finish(&mut |r| acc += r.features[0]);
                (black_box(acc), eng)
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
