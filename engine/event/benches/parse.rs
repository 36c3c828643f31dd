//! NDJSON parsing: serde_json (the parser `parse_ndjson` uses) against sonic-rs (SIMD) on the
//! same borrowed event struct, and the full `parse_ndjson` (validation and owned event).
#![allow(missing_docs)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;

#[derive(Deserialize)]
#[allow(dead_code)]
struct Wire<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    client_ip: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    path: Cow<'a, str>,
    status: u16,
    #[serde(default, borrow)]
    host: Option<Cow<'a, str>>,
    #[serde(default)]
    req_bytes: Option<u64>,
    #[serde(default)]
    resp_bytes: Option<u64>,
    #[serde(default)]
    latency_ms: Option<f64>,
    #[serde(default, borrow)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    headers: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    label: Option<Cow<'a, str>>,
}

fn lines() -> Vec<String> {
    (0..10_000u64)
        .map(|i| {
            format!(
                r#"{{"id":{i},"ts":"2026-01-05T09:{:02}:{:02}.{:03}Z","client_ip":"81.2.{}.{}","method":"GET","host":"api.shop.example","path":"/v1/products/{}","status":200,"req_bytes":312,"resp_bytes":{},"latency_ms":36.8,"user_agent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36","headers":{{"authorization":"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MTAwMDcifQ.c2ln"}},"label":"normal"}}"#,
                (i / 60) % 60,
                i % 60,
                i % 1000,
                i % 200,
                i % 250,
                i * 7 % 5000,
                2000 + i % 3000
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let lines = lines();
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let mut g = c.benchmark_group("ndjson_parse");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("serde_json_struct", |b| {
        b.iter(|| {
            for l in &lines {
                let w: Wire<'_> = serde_json::from_slice(l.as_bytes()).unwrap();
                black_box(w);
            }
        });
    });
    g.bench_function("sonic_rs_struct", |b| {
        b.iter(|| {
            for l in &lines {
                let w: Wire<'_> = sonic_rs::from_slice(l.as_bytes()).unwrap();
                black_box(w);
            }
        });
    });
    g.bench_function("parse_ndjson_full", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(gatewatch_event::parse_ndjson(l.as_bytes()).unwrap());
            }
        });
    });
    g.finish();
    eprintln!("(input: {} lines, {} bytes)", lines.len(), bytes);
}

criterion_group!(benches, bench);
criterion_main!(benches);
