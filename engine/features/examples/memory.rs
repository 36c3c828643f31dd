//! Memory per tracked client: feeds N clients (default 1,000,000) through the engine with the
//! default features and prints the process's resident memory growth per client.
//!
//! `cargo run --release -p gatewatch-features --example memory -- [clients] [events_per_client]`

use std::net::{IpAddr, Ipv4Addr};

use gatewatch_event::RequestEvent;
use gatewatch_features::{Config, FeatureEngine};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let clients: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let per: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let cfg = Config::parse(&format!(
        "[features]\nmax_clients = {}\nallowed_lateness_ms = 0\n",
        clients as usize + 1
    ))
    .expect("valid config");
    let mut eng = FeatureEngine::new(&cfg).expect("engine");
    let before = rss_bytes();
    let t0 = 1_767_603_600_000i64;
    // `per` rounds over all clients within 30 minutes: every client is live in every horizon
    // it has requests in; paths vary over 4 templates with ids.
    let paths = ["/v1/products/{}", "/v1/orders/{}", "/v1/cart", "/v1/search"];
    let total = u64::from(clients) * u64::from(per);
    let mut n = 0u64;
    for round in 0..per {
        for c in 0..clients {
            let ts = t0 + (n as i64 * 1_800_000 / total as i64);
            let ip = IpAddr::V4(Ipv4Addr::from(0x5100_0000 + c));
            let path =
                paths[((c + round) % 4) as usize].replace("{}", &(c % 5000 + round).to_string());
            let mut e =
                RequestEvent::new(ts, ip, "GET", &path, if c % 17 == 0 { 404 } else { 200 });
            e.host = Some("api.shop.example".into());
            eng.push(e, n, &mut |_| {}, &mut |_| {});
            n += 1;
        }
    }
    eng.finish(&mut |_| {});
    let after = rss_bytes();
    let tracked = eng.store().len() as u64;
    println!(
        "clients tracked: {tracked}, events: {n}, RSS growth: {:.1} MiB, per client: {:.0} bytes (engine's own estimate: {:.0} bytes)",
        (after - before) as f64 / 1048576.0,
        (after - before) as f64 / tracked as f64,
        eng.store().memory_bytes() as f64 / tracked as f64
    );
}
