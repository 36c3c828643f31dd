//! Where the time of one `FeatureEngine::push` goes: client key, endpoint template, client
//! store lookup, and the whole push at several allowed latenesses, each in ns per event over
//! 1,000,000 events of 100,000 clients after 1,000,000 events of warm-up.
//!
//! `cargo run --release -p gatewatch-features --example breakdown`
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use gatewatch_event::{
    ClientKeyConfig, ClientKeyExtractor, Endpoint, EndpointConfig, EndpointNormalizer, RequestEvent,
};
use gatewatch_features::{ClientStore, Config, FeatureEngine};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let n = 1_000_000usize;
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
    let evs: Vec<RequestEvent> = (0..2 * n)
        .map(|i| {
            let r = next();
            let ip = IpAddr::V4(Ipv4Addr::from(0x5100_0000 + (r % 100_000) as u32));
            let p = paths[(r >> 20) as usize % 6].replace("{}", &((r >> 32) % 5000).to_string());
            let mut e = RequestEvent::new(
                1_767_603_600_000 + (i as i64 * 600_000 / n as i64),
                ip,
                "GET",
                &p,
                200,
            );
            e.host = Some("api.shop.example".into());
            e
        })
        .collect();
    let mut keys = ClientKeyExtractor::new(&ClientKeyConfig::default()).unwrap();
    let norm = EndpointNormalizer::new(&EndpointConfig::default()).unwrap();
    let mut buf = String::new();
    let t = Instant::now();
    let mut acc = 0usize;
    for e in &evs[n..] {
        keys.key_into(e, &mut buf);
        acc += buf.len();
    }
    println!(
        "key_into: {:.0} ns/event",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let mut ep = Endpoint::default();
    let t = Instant::now();
    for e in &evs[n..] {
        norm.normalize_into(e, &mut ep);
        acc += ep.template.len();
    }
    println!(
        "normalize_into: {:.0} ns/event",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let mut store = ClientStore::new(1_000_000, i64::MAX / 2);
    let ks: Vec<String> = evs.iter().map(|e| format!("ip:{}", e.client_ip)).collect();
    for (k, e) in ks[..n].iter().zip(&evs) {
        store.get_or_insert(k, e.ts_ms);
    }
    let t = Instant::now();
    for (k, e) in ks[n..].iter().zip(&evs[n..]) {
        acc += store.get_or_insert(k, e.ts_ms).last_ts() as usize;
    }
    println!(
        "store.get_or_insert (100k clients): {:.0} ns/event",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    for lateness in [0, 1000, 5000] {
        let mut eng = FeatureEngine::new(
            &Config::parse(&format!("[features]\nallowed_lateness_ms = {lateness}")).unwrap(),
        )
        .unwrap();
        for (i, e) in evs[..n].iter().cloned().enumerate() {
            eng.push(e, i as u64, &mut |_| {}, &mut |_| {});
        }
        let rest: Vec<RequestEvent> = evs[n..].to_vec();
        let t = Instant::now();
        for (i, e) in rest.into_iter().enumerate() {
            eng.push(e, i as u64, &mut |r| acc += r.features.len(), &mut |_| {});
        }
        println!(
            "engine.push (lateness {lateness} ms): {:.0} ns/event",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
    std::hint::black_box(acc);
}
