//! Rule evaluation per event: 20 rules (simple thresholds natively, some with CEL parts),
//! over events where few match, as in a stream of mostly normal traffic.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use gatewatch_rules::{Decider, Input, RequestView, Rules, Schema, ScoreView};

fn schema() -> Schema {
    Schema {
        features: (0..93).map(|i| format!("f{i}")).collect(),
        detectors: vec!["robust".into(), "volumetric".into()],
    }
}

/// 20 rules: 14 of thresholds on features and scores, 6 that also read the path and the
/// method, with `startsWith`, a regular expression (both run natively), or `size(…)`, a
/// part the CEL interpreter runs whenever the native parts before it hold.
fn rules_text(path: &str) -> String {
    let mut t = String::new();
    for i in 0..14 {
        t.push_str(&format!(
            "[[rule]]\nid = \"n{i}\"\nwhen = \"features.f{i} > 50.0 && score.robust >= 0.99 && request.status >= 400\"\naction = \"block\"\nkey = \"ip\"\n"
        ));
    }
    for i in 0..6 {
        t.push_str(&format!(
            "[[rule]]\nid = \"c{i}\"\nwhen = \"features.f{} > 50.0 && {path} && request.method in ['POST', 'PUT']\"\naction = \"challenge\"\nkey = \"client\"\n",
            20 + i
        ));
    }
    t
}

fn bench(c: &mut Criterion) {
    for (name, path) in [
        ("observe_20_rules", "request.path.startsWith('/v1/admin')"),
        (
            "observe_20_rules_6_regex",
            "request.path.matches('^/v1/admin')",
        ),
        ("observe_20_rules_6_interpreted", "size(request.path) > 40"),
    ] {
        run(c, name, path);
    }
}

fn run(c: &mut Criterion, name: &str, path: &str) {
    let rules = Arc::new(Rules::parse(&rules_text(path), &schema()).unwrap());
    let n = 4096;
    let features: Vec<Vec<f64>> = (0..n)
        .map(|k| (0..93).map(|i| ((k * 7 + i * 13) % 60) as f64).collect())
        .collect();
    let clients: Vec<String> = (0..n)
        .map(|k| format!("ip:10.0.{}.{}", k / 256, k % 256))
        .collect();
    let members = [0.5, 0.1];
    let mut g = c.benchmark_group("rules");
    g.throughput(criterion::Throughput::Elements(n as u64));
    g.bench_function(name, |b| {
        let mut d = Decider::new(Arc::clone(&rules));
        let mut events = Vec::new();
        let mut ts = 0i64;
        b.iter(|| {
            for k in 0..n {
                ts += 10;
                let input = Input {
                    request: RequestView {
                        ts_ms: ts,
                        ip: IpAddr::V4(Ipv4Addr::new(10, 0, (k / 256) as u8, (k % 256) as u8)),
                        method: if k % 2 == 0 { "POST" } else { "GET" },
                        host: "api.example.com",
                        path: "/v1/items/1",
                        query: "",
                        endpoint: "GET api.example.com/v1/items/{id}",
                        status: if k % 10 == 0 { 404 } else { 200 },
                        client: &clients[k],
                        client_kind: "ip",
                        user_agent: "Mozilla/5.0",
                        headers: &[],
                        asn: "",
                        country: "",
                        ja4: "",
                    },
                    features: &features[k],
                    score: Some(ScoreView {
                        overall: 0.5,
                        surprisal: 1.0,
                        flagged: false,
                        members: &members,
                        endpoint_auth: 0.0,
                    }),
                };
                black_box(d.observe(&input, &Vec::new, &mut events));
                events.clear();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
