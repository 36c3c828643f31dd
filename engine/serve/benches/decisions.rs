//! The decisions API's lookups in process: an `ip` query (what a live-mode bouncer sends per
//! request) and a stream poll, with 10,000 active address decisions and 100 range ones.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gatewatch_pipeline::rules::{Action, Change, Decision, DecisionEvent, KeyScope, Mode};
use gatewatch_serve::decisions::{Feed, Filter};

fn decision(id: u64, scope: KeyScope, value: String) -> DecisionEvent {
    DecisionEvent {
        change: Change::New,
        ts_ms: 0,
        why: None,
        decision: Decision {
            id,
            rule: "r".into(),
            action: Action::Block,
            scope,
            value,
            mode: Mode::Enforce,
            level: 0,
            start_ms: 0,
            until_ms: 600_000,
            score: Some(0.99),
            reasons: vec!["req_rate_1m".into()],
            hits: 1,
            rate: None,
        },
    }
}

fn bench(c: &mut Criterion) {
    let mut feed = Feed::default();
    let mut changes: Vec<DecisionEvent> = (0..10_000u64)
        .map(|i| {
            decision(
                i + 1,
                KeyScope::Ip,
                format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256),
            )
        })
        .collect();
    changes.extend(
        (0..100u64).map(|i| decision(20_000 + i, KeyScope::Range, format!("172.16.{i}.0/24"))),
    );
    feed.apply(&changes, 0);
    let hit = Filter::parse("ip=10.0.39.16").unwrap();
    let miss = Filter::parse("ip=192.0.2.1").unwrap();
    let mut g = c.benchmark_group("decisions");
    g.bench_function("lookup_ip_hit", |b| b.iter(|| black_box(feed.list(&hit))));
    g.bench_function("lookup_ip_miss", |b| b.iter(|| black_box(feed.list(&miss))));
    g.bench_function("stream_startup_10100", |b| {
        b.iter(|| black_box(feed.stream("k", true, None)))
    });
    g.bench_function("stream_poll_unchanged", |b| {
        b.iter(|| black_box(feed.stream("k", false, None)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
