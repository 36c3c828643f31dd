//! Partitioned runs equal the single-part run bit for bit, whatever the number of parts, with
//! and without a full endpoint table; the population baseline of an endpoint resists one
//! client's flood.

use std::net::{IpAddr, Ipv4Addr};

use gatewatch_event::RequestEvent;
use gatewatch_features::{Config, FeatureEngine, PointFeature, Record, Registry};
use proptest::prelude::*;

mod common;
use common::{Out, bits, config, log};

fn run(events: &[RequestEvent], cfg: &Config, parts: u32, cut: usize) -> (Out, usize) {
    let mut eng = FeatureEngine::with_parts(cfg, 1).unwrap();
    let mut out = Vec::new();
    let mut sink = |r: &Record<'_>| out.push(bits(r));
    let mut late = 0;
    for (i, e) in events.iter().enumerate() {
        if i == cut {
            eng = eng.repartition(parts);
        }
        eng.push(e.clone(), i as u64, &mut sink, &mut |_| late += 1);
    }
    eng.finish(&mut sink);
    assert_eq!(
        eng.parts(),
        if cut < events.len() {
            parts as usize
        } else {
            1
        }
    );
    (out, late)
}

/// The same through an engine with `threads` threads, flushed every `every` events.
fn run_threaded(events: &[RequestEvent], cfg: &Config, threads: usize, every: usize) -> Out {
    let mut eng = FeatureEngine::with_threads(cfg, threads).unwrap();
    assert_eq!(eng.parts(), threads);
    let mut out = Vec::new();
    let mut sink = |r: &Record<'_>| out.push(bits(r));
    for (i, e) in events.iter().enumerate() {
        eng.push(e.clone(), i as u64, &mut sink, &mut |_| {});
        if i % every == every - 1 {
            eng.flush(&mut sink);
        }
    }
    eng.finish(&mut sink);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// N ∈ {1, 2, 3, 8} parts from the start, or from a point mid-stream, give the same
    /// records bit for bit; also with endpoint, address and network tables too small for the
    /// log.
    #[test]
    fn n_parts_equal_one_part(events in log(), cut in 0usize..400, small in any::<bool>()) {
        let cfg = config(if small { "max_endpoints = 4\nmax_addresses = 3" } else { "" });
        let (one, late) = run(&events, &cfg, 1, usize::MAX);
        prop_assert_eq!(one.len() + late, events.len());
        for parts in [2, 3, 8] {
            for at in [0, cut.min(events.len())] {
                let (got, _) = run(&events, &cfg, parts, at);
                prop_assert_eq!(&got, &one, "{} parts from event {}", parts, at);
            }
        }
        for threads in [2, 3] {
            let got = run_threaded(&events, &cfg, threads, cut.max(1));
            prop_assert_eq!(&got, &one, "{} threads", threads);
        }
    }
}

/// 60 clients use an endpoint a few times a minute for an hour; then one client sends 600
/// requests a minute to it for an hour. Each client has one vote per epoch in the endpoint's
/// typical count, so the flood does not move the baseline: the flooder's rate ratio stays
/// two orders of magnitude above a normal client's.
#[test]
fn one_client_flooding_an_endpoint_does_not_become_its_baseline() {
    let cfg = Config::default();
    let reg = Registry::new(&cfg.features);
    let ratio = reg.point_index(PointFeature::EndpointRateRatio);
    let pop = reg.point_index(PointFeature::EndpointPopRate);
    let mut eng = FeatureEngine::new(&cfg).unwrap();
    let t0 = 1_700_000_000_000i64;
    let normal = |c: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, c));
    let flooder = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let mut events = Vec::new();
    for minute in 0..120i64 {
        for c in 0..60u8 {
            // Two requests a minute each, spread over the minute.
            for k in 0..2i64 {
                let ts = t0 + minute * 60_000 + i64::from(c) * 900 + k * 29_000;
                events.push(RequestEvent::new(ts, normal(c), "POST", "/login", 200));
            }
        }
        if minute >= 60 {
            for k in 0..600i64 {
                let ts = t0 + minute * 60_000 + k * 100;
                events.push(RequestEvent::new(ts, flooder, "POST", "/login", 401));
            }
        }
    }
    events.sort_by_key(|e| e.ts_ms);
    let last_minute = t0 + 119 * 60_000;
    let (mut normal_ratio, mut flood_ratio, mut pop_rate) = (Vec::new(), Vec::new(), 0.0);
    for (i, e) in events.into_iter().enumerate() {
        eng.push(
            e,
            i as u64,
            &mut |r| {
                if r.event.ts_ms >= last_minute {
                    if r.event.client_ip == flooder {
                        flood_ratio.push(r.features[ratio]);
                        pop_rate = r.features[pop];
                    } else {
                        normal_ratio.push(r.features[ratio]);
                    }
                }
            },
            &mut |l| panic!("refused: {l}"),
        );
    }
    let max_normal = normal_ratio.iter().copied().fold(0.0, f64::max);
    let min_flood = flood_ratio.iter().copied().fold(f64::INFINITY, f64::min);
    // The typical client sends 1–3 requests in the 30–60 s window: 1 + 2 or 1 + 3.
    assert!(
        max_normal <= 4.0 / 3.0 + 1e-9,
        "normal clients' ratio {max_normal}"
    );
    // The flooder sends 300–600 in the same window.
    assert!(min_flood > 50.0, "the flooder's ratio {min_flood}");
    let median_flood = {
        let mut v = flood_ratio.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    assert!(
        median_flood > 100.0,
        "the flooder's median ratio {median_flood}"
    );
    // The population rate still counts every request (600 + 120 a minute).
    assert!(
        (pop_rate - 720.0 / 60.0).abs() < 1.0,
        "population rate {pop_rate}"
    );
}

/// The records of `events[range]` pushed into `eng`, flushed at the end (not finished).
fn push_all(eng: &mut FeatureEngine, events: &[RequestEvent], from: usize, out: &mut Out) {
    let mut sink = |r: &Record<'_>| out.push(bits(r));
    for (i, e) in events.iter().enumerate() {
        eng.push(e.clone(), (from + i) as u64, &mut sink, &mut |_| {});
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A run on N parts whose parts are saved one file each at any moment (after its
    /// buffered events are out) and restored, each into its part of a fresh engine,
    /// continues exactly as the run that never stopped.
    #[test]
    fn parts_saved_and_restored_one_file_each_continue_exactly(
        events in log(),
        cut in 0usize..400,
        parts in 2u32..5,
    ) {
        let cfg = config("");
        let cut = cut.min(events.len());
        let mut whole = FeatureEngine::with_parts(&cfg, parts).unwrap();
        let mut want = Vec::new();
        push_all(&mut whole, &events[..cut], 0, &mut want);
        whole.finish(&mut |r| want.push(bits(r)));
        push_all(&mut whole, &events[cut..], cut, &mut want);
        whole.finish(&mut |r| want.push(bits(r)));

        let mut first = FeatureEngine::with_parts(&cfg, parts).unwrap();
        let mut got = Vec::new();
        push_all(&mut first, &events[..cut], 0, &mut got);
        first.finish(&mut |r| got.push(bits(r)));
        let files: Vec<Vec<u8>> = (0..parts as usize)
            .map(|i| {
                let mut b = Vec::new();
                first.save_part(i, &mut b).unwrap();
                b
            })
            .collect();
        let mut second = FeatureEngine::with_parts(&cfg, parts).unwrap();
        let mut readers: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let mut dyns: Vec<&mut dyn std::io::Read> =
            readers.iter_mut().map(|r| r as &mut dyn std::io::Read).collect();
        second.restore_parts(&mut dyns).unwrap();
        prop_assert_eq!(second.clients(), first.clients());
        prop_assert_eq!(second.stats(), first.stats());
        push_all(&mut second, &events[cut..], cut, &mut got);
        second.finish(&mut |r| got.push(bits(r)));
        prop_assert_eq!(got, want);
    }
}

#[test]
fn part_files_out_of_place_or_from_another_moment_are_refused() {
    let cfg = config("");
    let events: Vec<RequestEvent> = (0..300)
        .map(|i| {
            RequestEvent::new(
                1_700_000_000_000 + i * 700,
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, (i % 40) as u8)),
                "GET",
                &format!("/api/p{}/{}", i % 5, i),
                200,
            )
        })
        .collect();
    let mut e = FeatureEngine::with_parts(&cfg, 2).unwrap();
    let mut sink = |_: &Record<'_>| {};
    for (i, ev) in events.iter().take(200).enumerate() {
        e.push(ev.clone(), i as u64, &mut sink, &mut |_| {});
    }
    e.finish(&mut sink);
    let save = |e: &FeatureEngine, i: usize| {
        let mut b = Vec::new();
        e.save_part(i, &mut b).unwrap();
        b
    };
    let (p0, p1) = (save(&e, 0), save(&e, 1));
    let restore = |files: &[&[u8]]| -> String {
        let mut fresh = FeatureEngine::with_parts(&cfg, 2).unwrap();
        let mut readers: Vec<&[u8]> = files.to_vec();
        let mut dyns: Vec<&mut dyn std::io::Read> = readers
            .iter_mut()
            .map(|r| r as &mut dyn std::io::Read)
            .collect();
        let err = fresh.restore_parts(&mut dyns).unwrap_err().to_string();
        assert_eq!(fresh.clients(), 0, "a refused restore changes nothing");
        err
    };
    let m = restore(&[&p1, &p0]);
    assert!(
        m.contains("part 0: client 0") && m.contains("belongs to part 1"),
        "{m}"
    );
    let m = restore(&[&p0]);
    assert!(m.contains("1 part states for an engine of 2 parts"), "{m}");
    for (i, ev) in events.iter().enumerate().skip(200) {
        e.push(ev.clone(), i as u64, &mut sink, &mut |_| {});
    }
    e.finish(&mut sink);
    let later = save(&e, 1);
    let m = restore(&[&p0, &later]);
    assert!(m.contains("part 1 was saved at another moment"), "{m}");
    let mut cut = p1.clone();
    cut.truncate(cut.len() - 3);
    let m = restore(&[&p0, &cut]);
    assert!(
        m.starts_with("state snapshot") || m.contains("part 1: "),
        "{m}"
    );
    assert!(m.contains("truncated"), "{m}");
    assert!(
        e.save_part(2, &mut Vec::new())
            .unwrap_err()
            .to_string()
            .contains("no part 2")
    );
}
