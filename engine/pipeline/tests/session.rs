//! The session: its records equal the engine's, rejections carry their source positions,
//! the acknowledgeable point never passes an input whose output is not out, and the NDJSON
//! writers write exactly the record schema.

use std::collections::BTreeSet;

use gatewatch_event::{RequestEvent, write_ndjson};
use gatewatch_features::{Config, FeatureEngine, Format, Record};
use gatewatch_models::Scorer;
use gatewatch_pipeline::{
    Ack, FeatureRecord, FeatureWriter, LineReader, Output, Position, RejectionRecord, ScoreRecord,
    ScoreWriter, Session, SessionOptions, Why,
};
use proptest::prelude::*;

fn traffic() -> Vec<RequestEvent> {
    gatewatch_sim::simulate(&gatewatch_sim::SimConfig {
        duration_ms: 120_000,
        users: 30,
        ..Default::default()
    })
}

fn default_model(engine: &FeatureEngine) -> Scorer {
    Scorer::load_folder(&gatewatch_models::builtin_default(), engine.registry()).unwrap()
}

/// Every output batch of a session fed `events` one by one, taken whenever it is full.
fn run_session<S: std::borrow::BorrowMut<Scorer>>(
    session: &mut Session<S>,
    events: &[RequestEvent],
) -> Vec<Output> {
    let mut outs = Vec::new();
    for (i, e) in events.iter().enumerate() {
        session.push(Position::line(i as u64 + 1), e.clone());
        if i % 500 == 499 {
            // A threaded engine processes released events in batches: as a reader does
            // after each chunk, have them processed now.
            session.flush();
        }
        if session.is_full() {
            outs.push(session.take().unwrap());
        }
    }
    session.finish();
    outs.push(session.take().unwrap());
    outs
}

#[test]
fn records_are_the_engines_records_with_their_positions() {
    let events = traffic();
    let cfg = Config::default();
    let mut direct = FeatureEngine::new(&cfg).unwrap();
    let mut want: Vec<(u64, String, String, Vec<u64>)> = Vec::new();
    let mut sink = |r: &Record<'_>| {
        want.push((
            r.line,
            r.client.to_string(),
            r.endpoint.to_string(),
            r.features.iter().map(|v| v.to_bits()).collect(),
        ));
    };
    for (i, e) in events.iter().enumerate() {
        direct.push(e.clone(), i as u64 + 1, &mut sink, &mut |l| panic!("{l}"));
    }
    direct.finish(&mut sink);

    for threads in [1, 3] {
        let engine = FeatureEngine::with_threads(&cfg, threads).unwrap();
        let mut s = Session::features_only(
            engine,
            SessionOptions {
                batch: 100,
                reasons: 3,
            },
        );
        let outs = run_session(&mut s, &events);
        assert!(
            outs.len() > 10,
            "{} batches of {:?} for {} events",
            outs.len(),
            outs.iter().map(Output::len).collect::<Vec<_>>(),
            events.len()
        );
        let got: Vec<_> = outs
            .iter()
            .flat_map(|o| {
                assert!(o.scores().is_none());
                o.records()
                    .map(|r| {
                        (
                            r.position.number(),
                            r.client.to_string(),
                            r.endpoint.to_string(),
                            r.features.iter().map(|v| v.to_bits()).collect(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, want, "threads {threads}");
        assert_eq!(s.stats(), direct.stats());
        assert_eq!(
            outs.last().unwrap().ack(),
            Ack::Through(Position::line(events.len() as u64))
        );
        assert_eq!(s.in_flight(), 0);
    }
}

#[test]
fn rejections_name_their_position_and_reason() {
    let cfg = Config::parse("[features]\nallowed_lateness_ms = 1000\n").unwrap();
    let mut s =
        Session::features_only(FeatureEngine::new(&cfg).unwrap(), SessionOptions::default());
    let line = |ts: i64, status: u16| {
        format!(
            r#"{{"ts":{ts},"client_ip":"10.0.0.1","method":"GET","path":"/a","status":{status}}}"#
        )
    };
    let t0 = 1_767_603_600_000;
    let text = [
        line(t0, 200),
        line(t0 + 5_000, 200),
        String::new(),
        line(t0 + 1_000, 200),
        line(t0 + 6_000, 999),
        "{not json".to_string(),
        line(t0 + 7_000, 200),
    ]
    .join("\n");
    let mut reader = LineReader::new(Format::Ndjson);
    // Cut anywhere: the same lines.
    for chunk in text.as_bytes().chunks(7) {
        reader.feed(&mut s, chunk);
    }
    reader.finish(&mut s);
    assert_eq!((reader.lines(), reader.blank_lines()), (7, 1));
    let out = s.take().unwrap();
    let positions: Vec<u64> = out.records().map(|r| r.position.number()).collect();
    assert_eq!(positions, [1, 2, 7]);
    let rejected: Vec<String> = out.rejections().iter().map(ToString::to_string).collect();
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(
        rejected[0].starts_with("line 4: event 4000 ms behind the newest event"),
        "{rejected:?}"
    );
    assert!(
        rejected[1].starts_with("line 5: field `status`"),
        "{rejected:?}"
    );
    assert!(rejected[2].starts_with("line 6: "), "{rejected:?}");
    assert!(matches!(out.rejections()[0].why, Why::Refused(_)));
    assert_eq!(
        out.rejections()[0].category(),
        "late beyond allowed lateness"
    );
    assert_eq!(out.rejections()[1].category(), "invalid field `status`");
    // The rejection records of the schema, as the --rejects file has them.
    let rec = RejectionRecord::from(&out.rejections()[1]);
    let json = serde_json::to_value(&rec).unwrap();
    assert_eq!(json["line"], 5);
    assert_eq!(json["category"], "invalid field `status`");
    assert_eq!(
        serde_json::from_value::<RejectionRecord>(json).unwrap(),
        rec
    );
    let kafka = RejectionRecord {
        position: Position::offset(3, 42),
        ..rec
    };
    let json = serde_json::to_value(&kafka).unwrap();
    assert_eq!(
        (json["partition"].as_i64(), json["offset"].as_i64()),
        (Some(3), Some(42))
    );
    assert_eq!(
        serde_json::from_value::<RejectionRecord>(json).unwrap(),
        kafka
    );
}

#[test]
fn the_feature_writer_writes_the_feature_record_schema() {
    let events = traffic();
    let engine = FeatureEngine::new(&Config::default()).unwrap();
    let registry = engine.registry().clone();
    let mut s = Session::features_only(engine, SessionOptions::default());
    let outs = run_session(&mut s, &events);
    let mut w = FeatureWriter::new(registry.names());
    let mut n = 0;
    for o in &outs {
        let mut buf = Vec::new();
        w.write_batch(o, &mut buf);
        let lines: Vec<&[u8]> = buf
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), o.len());
        for (line, r) in lines.iter().zip(o.records()) {
            let got: FeatureRecord = serde_json::from_slice(line).unwrap();
            got.check(&registry).unwrap();
            assert_eq!(got, FeatureRecord::from_record(&r, &registry));
            assert!(got.id.is_some() && got.label.is_some());
            n += 1;
        }
    }
    assert_eq!(n, events.len());
    // A record with a field outside the schema, or without a feature, fails the check.
    let mut bad: FeatureRecord = FeatureRecord::from_record(&outs[0].record(0), &registry);
    bad.features.insert("extra".into(), Some(1.0));
    assert!(bad.check(&registry).unwrap_err().contains("extra"));
    bad.features.remove("extra");
    bad.features.remove("req_count_1m");
    assert!(bad.check(&registry).unwrap_err().contains("req_count_1m"));
}

#[test]
fn the_score_writer_writes_the_score_record_schema() {
    let events = traffic();
    let engine = FeatureEngine::new(&Config::default()).unwrap();
    let scorer = default_model(&engine);
    let writer = ScoreWriter::new(&scorer);
    let check = default_model(&engine);
    let mut s = Session::new(
        engine,
        Some(scorer),
        SessionOptions {
            batch: 256,
            reasons: 2,
        },
    );
    let outs = run_session(&mut s, &events);
    let (mut n, mut flagged, mut with_reasons) = (0, 0, 0);
    for o in &outs {
        let scores = o.scores().expect("scored");
        assert_eq!(scores.score.len(), o.len());
        let mut text = String::new();
        writer.write_batch(o, &mut text);
        assert_eq!(text.lines().count(), o.len());
        for (i, line) in text.lines().enumerate() {
            // deny_unknown_fields: the writer writes nothing outside the schema.
            let got: ScoreRecord = serde_json::from_str(line).unwrap();
            assert_eq!(got, ScoreRecord::from_output(o, i, &check).unwrap());
            assert!(got.reasons.len() <= 2);
            assert_eq!(got.model, s.model_id().unwrap());
            flagged += usize::from(got.flagged);
            with_reasons += usize::from(!got.reasons.is_empty());
            n += 1;
        }
    }
    assert_eq!(n, events.len());
    assert!(
        flagged > 100 && with_reasons > 100,
        "{flagged} {with_reasons}"
    );
}

#[test]
fn a_model_for_another_feature_set_is_refused_before_the_session() {
    let cfg = Config::parse("[features]\nhorizons_secs = [60]\n").unwrap();
    let engine = FeatureEngine::new(&cfg).unwrap();
    let err =
        Scorer::load_folder(&gatewatch_models::builtin_default(), engine.registry()).unwrap_err();
    assert!(err.to_string().contains("feature set"), "{err}");
}

/// Lines of events with timestamps jittered within (and beyond) the lateness, some lines
/// broken.
fn jittered(n: usize, seed: u64) -> Vec<String> {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let t0 = 1_767_603_600_000i64;
    (0..n)
        .map(|i| {
            let r = next();
            if r % 17 == 0 {
                return "{broken".to_string();
            }
            let jitter = (r % 4000) as i64 - 3000;
            let mut e = RequestEvent::new(
                t0 + i as i64 * 200 + jitter,
                format!("10.0.0.{}", r % 7).parse().unwrap(),
                "GET",
                &format!("/items/{}", r % 50),
                200,
            );
            e.id = Some(i.to_string().into());
            let mut s = String::new();
            write_ndjson(&e, &mut s);
            s.pop();
            s
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Kafka-style: inputs at offsets, batches taken at random moments. Whatever the timing,
    /// every offset before the acknowledgeable point has its output (record or rejection)
    /// in a batch already taken, each input's output comes exactly once, and at the end the
    /// point is past the last offset.
    #[test]
    fn the_acknowledgeable_point_never_passes_an_input_still_inside(
        seed in any::<u64>(),
        n in 1usize..300,
        take_every in 1usize..40,
        batch in 1usize..64,
    ) {
        let cfg = Config::parse("[features]\nallowed_lateness_ms = 2500\n").unwrap();
        let mut s = Session::features_only(
            FeatureEngine::new(&cfg).unwrap(),
            SessionOptions { batch, reasons: 0 },
        );
        let lines = jittered(n, seed);
        let mut out_seen: BTreeSet<i64> = BTreeSet::new();
        let check = |o: &Output, seen: &mut BTreeSet<i64>| {
            for r in o.records() {
                let Position::Offset { offset, .. } = r.position else { panic!() };
                prop_assert!(seen.insert(offset), "offset {offset} out twice");
            }
            for j in o.rejections() {
                let Position::Offset { offset, .. } = j.position else { panic!() };
                prop_assert!(seen.insert(offset), "offset {offset} out twice");
            }
            if let Some(next) = o.ack().next_offset() {
                for off in 0..next {
                    prop_assert!(seen.contains(&off), "ack {next} passes offset {off}");
                }
            }
            Ok(())
        };
        let format = Format::Ndjson;
        for (i, l) in lines.iter().enumerate() {
            let parsed = format.parse(l.as_bytes());
            s.push_parsed(Position::offset(0, i as i64), parsed);
            if i % take_every == 0 || s.is_full() {
                let o = s.take().unwrap();
                check(&o, &mut out_seen)?;
            }
        }
        s.finish();
        let o = s.take().unwrap();
        check(&o, &mut out_seen)?;
        prop_assert_eq!(out_seen.len(), n);
        prop_assert_eq!(o.ack(), Ack::Through(Position::offset(0, n as i64 - 1)));
        prop_assert_eq!(o.ack().next_offset(), Some(n as i64));
    }
}
