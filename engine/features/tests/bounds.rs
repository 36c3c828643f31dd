//! State stays bounded whatever the traffic; late events are refused and counted.

use std::net::{IpAddr, Ipv4Addr};

use gatewatch_event::RequestEvent;
use gatewatch_features::{
    Config, FeatureEngine, Format, Ingest, OVERFLOW_TEMPLATE, RefusedKind, Rejection,
};

fn engine(extra: &str) -> FeatureEngine {
    FeatureEngine::new(&Config::parse(&format!("[features]\n{extra}")).unwrap()).unwrap()
}

#[test]
fn a_million_rotating_addresses_stay_under_the_cap() {
    let cap = 10_000;
    let mut eng = engine(&format!("max_clients = {cap}\nallowed_lateness_ms = 0"));
    let mut emitted = 0u64;
    let mut max_len = 0;
    let mut max_mem = 0;
    let t0 = 1_700_000_000_000i64;
    for i in 0..1_000_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
        let ev = RequestEvent::new(t0 + i64::from(i / 50), ip, "POST", "/login", 401);
        eng.push(ev, u64::from(i), &mut |_| emitted += 1, &mut |l| {
            panic!("refused: {l}")
        });
        if i % 10_000 == 0 {
            max_len = max_len.max(eng.store().len());
            max_mem = max_mem.max(eng.store().memory_bytes());
        }
    }
    eng.finish(&mut |_| emitted += 1);
    assert_eq!(emitted, 1_000_000);
    assert!(max_len <= cap, "{max_len} clients tracked");
    assert_eq!(eng.store().len(), cap);
    assert_eq!(eng.store().created, 1_000_000);
    assert_eq!(
        eng.store().evictions.capacity + eng.store().evictions.idle,
        1_000_000 - cap as u64
    );
    // Memory is that of `cap` clients, not of a million: well under 1 KiB each here.
    assert!(max_mem < cap * 1024, "{max_mem} bytes for {cap} clients");
}

#[test]
fn idle_clients_expire_by_event_time() {
    let mut eng = engine("client_idle_ttl_secs = 60\nallowed_lateness_ms = 0");
    let ip = |i: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
    let mut sink = |_: &gatewatch_features::Record<'_>| {};
    for i in 0..10u8 {
        eng.push(
            RequestEvent::new(i64::from(i) * 1000, ip(i), "GET", "/", 200),
            0,
            &mut sink,
            &mut |l| panic!("refused: {l}"),
        );
    }
    assert_eq!(eng.store().len(), 10);
    // 65 s later: clients last seen before 5 s are idle more than 60 s.
    eng.push(
        RequestEvent::new(65_500, ip(99), "GET", "/", 200),
        0,
        &mut sink,
        &mut |l| panic!("refused: {l}"),
    );
    assert_eq!(eng.store().evictions.idle, 6);
    assert_eq!(eng.store().len(), 5);
}

#[test]
fn late_events_are_refused_with_their_line_and_lag() {
    let mut eng = engine("allowed_lateness_ms = 1000");
    let mut ing = Ingest::new(Format::Ndjson);
    let lines = [
        r#"{"ts":10000,"client_ip":"1.1.1.1","method":"GET","path":"/a","status":200}"#,
        r#"{"ts":9500,"client_ip":"1.1.1.1","method":"GET","path":"/b","status":200}"#,
        r#"{"ts":8000,"client_ip":"1.1.1.1","method":"GET","path":"/c","status":200}"#,
        r#"{"ts":9000,"client_ip":"1.1.1.1","method":"GET","path":"/d","status":200}"#,
    ]
    .join("\n");
    let mut order = Vec::new();
    let mut rejected = Vec::new();
    ing.feed(
        &mut eng,
        lines.as_bytes(),
        &mut |r| order.push(r.endpoint.to_string()),
        &mut |e| rejected.push(e),
    );
    ing.finish(
        &mut eng,
        &mut |r| order.push(r.endpoint.to_string()),
        &mut |e| rejected.push(e),
    );
    assert_eq!(
        order,
        ["GET /d", "GET /b", "GET /a"],
        "placed in event-time order"
    );
    assert_eq!(rejected.len(), 1);
    match &rejected[0] {
        Rejection::Late(l) => {
            assert_eq!(
                (l.line, l.ts_ms, l.kind),
                (3, 8000, RefusedKind::Late { behind_ms: 2000 })
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rejected[0].to_string(),
        "line 3: event 2000 ms behind the newest event, beyond the allowed lateness"
    );
    assert_eq!(eng.stats().late, 1);
}

#[test]
fn endpoint_table_is_capped() {
    let mut eng = engine("max_endpoints = 5\nallowed_lateness_ms = 0");
    let mut endpoints = Vec::new();
    // Twenty new templates in one epoch; the next epoch's first request merges them.
    for i in 0..21 {
        let ev = RequestEvent::new(
            if i < 20 {
                i
            } else {
                gatewatch_features::EPOCH_MS
            },
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "GET",
            &format!("/random-{}", (b'a' + (i % 20) as u8) as char),
            404,
        );
        eng.push(
            ev,
            0,
            &mut |r| endpoints.push(r.endpoint.to_string()),
            &mut |l| panic!("refused: {l}"),
        );
    }
    assert_eq!(
        eng.population().endpoints(),
        6,
        "5 templates and the overflow"
    );
    assert_eq!(eng.population().overflowed, 15);
    assert_eq!(
        endpoints[19], "GET /random-t",
        "the output keeps the real template"
    );
    assert_eq!(eng.population().template(0), OVERFLOW_TEMPLATE);
}

/// A state of `n` clients, a few requests each on a few endpoints.
fn state_of(n: u8) -> (Vec<u8>, FeatureEngine) {
    let mut a = engine("");
    for i in 0..u32::from(n) * 3 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, (i % u32::from(n)) as u8));
        let ev = RequestEvent::new(
            i64::from(i) * 2000,
            ip,
            "GET",
            &format!("/e{}/{i}", i % 4),
            200,
        );
        a.push(ev, 0, &mut |_| {}, &mut |l| panic!("refused: {l}"));
    }
    a.finish(&mut |_| {});
    let mut bytes = Vec::new();
    a.save_state(&mut bytes).unwrap();
    (bytes, a)
}

#[test]
fn corrupt_or_foreign_snapshots_are_refused() {
    let (bytes, _) = state_of(1);
    let msg = |r: gatewatch_features::Result<()>| r.unwrap_err().to_string();
    assert!(msg(engine("").restore_state(&mut &b"nope"[..])).contains("bad magic"));
    let mut v2 = bytes.clone();
    v2[8] = 9;
    assert!(msg(engine("").restore_state(&mut v2.as_slice())).contains("format version 9"));
    let cut = &bytes[..bytes.len() / 2];
    let m = msg(engine("").restore_state(&mut &cut[..]));
    assert!(m.contains("truncated: the body has"), "{m}");
    let other = msg(engine("buckets_per_horizon = 10").restore_state(&mut bytes.as_slice()));
    assert!(other.contains("feature set"), "{other}");
    let other = msg(engine("endpoint_slots = 4").restore_state(&mut bytes.as_slice()));
    assert!(other.contains("endpoint_slots = 8"), "{other}");
    let mut longer = bytes.clone();
    longer.push(0);
    let m = msg(engine("").restore_state(&mut longer.as_slice()));
    assert!(m.contains("trailing bytes"), "{m}");
    let mut b = engine("");
    b.restore_state(&mut bytes.as_slice()).unwrap();
    assert_eq!(b.store().len(), 1);
}

#[test]
fn every_flipped_byte_and_every_truncation_is_refused() {
    let (bytes, _) = state_of(20);
    let mut checksum = 0;
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            let mut e = engine("");
            let err = e.restore_state(&mut b.as_slice()).unwrap_err().to_string();
            assert!(err.starts_with("state snapshot: "), "byte {i}: {err}");
            checksum += usize::from(err.contains("checksum mismatch"));
            assert_eq!(e.store().len(), 0, "byte {i}: nothing loaded");
        }
    }
    assert!(
        checksum > 3 * (bytes.len() - 30),
        "the body is covered by the checksum"
    );
    for n in 0..bytes.len() {
        let err = engine("").restore_state(&mut &bytes[..n]).unwrap_err();
        assert!(err.to_string().contains("snapshot"), "{n}: {err}");
    }
}

#[test]
fn restoring_applies_the_configured_caps() {
    let (bytes, saved) = state_of(58);
    assert_eq!(saved.store().len(), 58);
    let mut small = engine("max_clients = 10");
    small.restore_state(&mut bytes.as_slice()).unwrap();
    assert_eq!(small.store().len(), 10);
    assert_eq!(small.store().evictions.capacity, 48);
    // The ten most recently seen are kept.
    let newest: Vec<String> = saved
        .store()
        .iter_lru()
        .skip(48)
        .map(|(k, _)| k.to_string())
        .collect();
    let kept: Vec<String> = small
        .store()
        .iter_lru()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(kept, newest);
    // Four endpoint templates do not fit a table of three.
    let err = engine("max_endpoints = 3")
        .restore_state(&mut bytes.as_slice())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("4 endpoint templates, above this configuration's max_endpoints = 3"),
        "{err}"
    );
}

#[test]
fn repartitioned_parts_continue_exactly() {
    let ev = |i: i64| {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, (i % 7) as u8, (i % 13) as u8));
        RequestEvent::new(
            i * 250,
            ip,
            "GET",
            &format!("/items/{}", i % 5),
            if i % 9 == 0 { 404 } else { 200 },
        )
    };
    let record = |out: &mut Vec<(u64, String, Vec<u64>)>, r: &gatewatch_features::Record<'_>| {
        out.push((
            r.line,
            r.client.to_string(),
            r.features.iter().map(|f| f.to_bits()).collect(),
        ))
    };
    let mut whole = engine("allowed_lateness_ms = 0");
    let mut want = Vec::new();
    for i in 0..2000 {
        whole.push(ev(i), i as u64, &mut |r| record(&mut want, r), &mut |l| {
            panic!("refused: {l}")
        });
    }
    let mut first = engine("allowed_lateness_ms = 0");
    let mut got = Vec::new();
    for i in 0..1000 {
        first.push(ev(i), i as u64, &mut |r| record(&mut got, r), &mut |l| {
            panic!("refused: {l}")
        });
    }
    // Split in three mid-epoch, then saved and restored into two parts.
    let mut parts = first.repartition(3);
    assert_eq!(parts.parts(), 3);
    for i in 1000..1500 {
        parts.push(ev(i), i as u64, &mut |r| record(&mut got, r), &mut |l| {
            panic!("refused: {l}")
        });
    }
    let mut bytes = Vec::new();
    parts.save_state(&mut bytes).unwrap();
    let cfg = Config::parse("[features]\nallowed_lateness_ms = 0").unwrap();
    let mut two = FeatureEngine::with_parts(&cfg, 2).unwrap();
    two.restore_state(&mut bytes.as_slice()).unwrap();
    assert_eq!(two.clients(), parts.clients());
    for i in 1500..2000 {
        two.push(ev(i), i as u64, &mut |r| record(&mut got, r), &mut |l| {
            panic!("refused: {l}")
        });
    }
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "event {}", w.0);
    }
}

#[test]
fn over_long_lines_are_rejected_without_being_kept() {
    use gatewatch_features::MAX_LINE_BYTES;
    let mut eng = engine("");
    let mut ing = Ingest::new(Format::Ndjson);
    let ok = br#"{"ts":1000,"client_ip":"1.1.1.1","method":"GET","path":"/a","status":200}"#;
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"ts\":1,\"path\":\"");
    input.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE_BYTES));
    input.extend_from_slice(b"\"}\n");
    input.extend_from_slice(ok);
    input.push(b'\n');
    let (mut n, mut rejected) = (0, Vec::new());
    // Fed in 64 KiB chunks, as the CLI reads.
    for chunk in input.chunks(1 << 16) {
        ing.feed(&mut eng, chunk, &mut |_| n += 1, &mut |e| {
            rejected.push(e.to_string())
        });
    }
    ing.finish(&mut eng, &mut |_| n += 1, &mut |e| {
        rejected.push(e.to_string())
    });
    assert_eq!(n, 1);
    assert_eq!(
        rejected,
        [format!("line 1: line longer than {MAX_LINE_BYTES} bytes")]
    );
}

/// Ten minutes of traffic from 20 clients (one request each per second, in order), with
/// `wild` inserted after event `at`; returns the processed event ids and the rejections.
fn run_with(extra: &str, events: &[(i64, u32)]) -> (Vec<u64>, Vec<Rejection>, FeatureEngine) {
    let mut eng = engine(extra);
    let mut ing = Ingest::new(Format::Ndjson);
    let mut text = String::new();
    for (ts, client) in events {
        text.push_str(&format!(
            "{{\"ts\":{ts},\"client_ip\":\"10.0.0.{client}\",\"method\":\"GET\",\"path\":\"/a\",\"status\":200}}\n"
        ));
    }
    let (mut done, mut rejected) = (Vec::new(), Vec::new());
    ing.feed(
        &mut eng,
        text.as_bytes(),
        &mut |r| done.push(r.line),
        &mut |e| rejected.push(e),
    );
    ing.finish(&mut eng, &mut |r| done.push(r.line), &mut |e| {
        rejected.push(e)
    });
    (done, rejected, eng)
}

fn normal_log() -> Vec<(i64, u32)> {
    let t0 = 1_767_225_600_000; // 2026-01-01
    (0..1200).map(|i| (t0 + i * 500, (i % 20) as u32)).collect()
}

#[test]
fn one_event_a_year_ahead_does_not_move_event_time() {
    let mut log = normal_log();
    let year = 365 * 86_400_000;
    log.insert(100, (log[99].0 + year, 3));
    let (done, rejected, eng) = run_with("", &log);
    assert_eq!(done.len(), 1200, "every normal event processed");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].line(), 101);
    assert_eq!(rejected[0].category(), "ahead of event time (future)");
    assert!(
        rejected[0]
            .to_string()
            .starts_with(&format!("line 101: event {year} ms ahead of event time")),
        "{}",
        rejected[0]
    );
    assert_eq!((eng.stats().future, eng.stats().late), (1, 0));
    assert_eq!(
        eng.store().evictions.idle,
        0,
        "nobody evicted by the wild time"
    );
}

#[test]
fn a_handful_of_wild_events_from_one_client_among_others_are_refused() {
    let mut log = normal_log();
    let t = log[500].0;
    // Three wild events from one client, each followed by others' normal traffic.
    for (k, at) in [500usize, 520, 540].iter().enumerate() {
        log.insert(*at + k, (t + 86_400_000 + k as i64, 7));
    }
    let (done, rejected, eng) = run_with("", &log);
    assert_eq!(done.len(), 1200);
    assert_eq!(eng.stats().future, 3);
    assert!(
        rejected
            .iter()
            .all(|r| r.category() == "ahead of event time (future)")
    );
}

#[test]
fn a_log_that_resumes_a_day_later_is_followed_and_loses_nothing() {
    let mut log = normal_log();
    let day = 86_400_000;
    let later: Vec<(i64, u32)> = normal_log().iter().map(|(t, c)| (t + day, *c)).collect();
    log.extend(later);
    let (done, rejected, eng) = run_with("", &log);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(done, (1..=2400).collect::<Vec<u64>>(), "all, in order");
    assert_eq!(eng.stats().future, 0);
    // A sparse log of one client, an hour between requests, is followed too.
    let sparse: Vec<(i64, u32)> = (0..10).map(|i| (i * 3_600_000, 1)).collect();
    let (done, rejected, _) = run_with("", &sparse);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(done, (1..=10).collect::<Vec<u64>>());
}

#[test]
fn a_wild_first_event_does_not_anchor_event_time() {
    let mut log = normal_log();
    log.insert(0, (log[0].0 + 86_400_000, 5));
    let (done, rejected, _) = run_with("", &log);
    assert_eq!(done.len(), 1200);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].line(), 1);
}

#[test]
fn future_confirm_1_follows_every_event() {
    let mut log = normal_log();
    log.insert(100, (log[99].0 + 86_400_000, 3));
    let (done, rejected, _) = run_with("future_confirm = 1", &log);
    // The old behaviour: the wild event moves event time and the rest come late.
    assert_eq!(done.len(), 101);
    assert_eq!(rejected.len(), 1100);
    assert!(
        rejected
            .iter()
            .all(|r| r.category() == "late beyond allowed lateness")
    );
}

#[test]
fn extreme_timestamps_are_refused_by_the_parser_and_never_overflow() {
    let mut log = normal_log();
    log.insert(10, (i64::MAX, 1));
    log.insert(20, (i64::MIN + 1, 1));
    let (done, rejected, _) = run_with("", &log);
    assert_eq!(done.len(), 1200);
    assert_eq!(rejected.len(), 2);
    for r in &rejected {
        assert_eq!(r.category(), "invalid field `ts`", "{r}");
        assert!(r.to_string().contains("out of range"), "{r}");
    }
    // Within the range, the extremes of event time work too.
    let edge = [
        (gatewatch_event::MIN_TS_MS, 1),
        (gatewatch_event::MAX_TS_MS, 1),
    ];
    let (done, rejected, _) = run_with("future_confirm = 1", &edge);
    assert_eq!(done.len(), 2);
    assert!(rejected.is_empty(), "{rejected:?}");
}
