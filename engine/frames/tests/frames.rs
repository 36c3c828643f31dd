//! DataFrames in and out of the engine: round trips, the golden fixture through both input
//! paths, and errors that name the column and row.

use std::path::Path;

use gatewatch_event::{RequestEvent, parse_ndjson};
use gatewatch_features::{Config, FeatureEngine, Format, Ingest, Record};
use gatewatch_frames::{FrameError, events_to_frame, features_frame, frame_to_events};
use polars::prelude::*;

fn golden(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/golden")
            .join(name),
    )
    .unwrap()
}

fn golden_events() -> Vec<RequestEvent> {
    golden("events.ndjson")
        .lines()
        .map(|l| parse_ndjson(l.as_bytes()).unwrap())
        .collect()
}

#[test]
fn events_survive_a_round_trip_through_a_frame() {
    let events = golden_events();
    let df = events_to_frame(&events).unwrap();
    assert_eq!(df.height(), events.len());
    assert!(matches!(
        df.column("ts").unwrap().dtype(),
        DataType::Datetime(TimeUnit::Milliseconds, Some(_))
    ));
    assert_eq!(df.column("id").unwrap().dtype(), &DataType::Int64);
    assert_eq!(df.column("label").unwrap().dtype(), &DataType::String);
    let back = frame_to_events(&df).unwrap();
    for (a, b) in events.iter().zip(&back) {
        let mut a = a.clone();
        (a.id, a.label) = (None, None);
        assert_eq!(&a, b);
    }
}

/// The golden table, as `gatewatch features` wrote it: per row, the JSON object.
fn expected() -> Vec<serde_json::Value> {
    golden("features.ndjson")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_golden_features_come_out_of_both_input_paths() {
    let want = expected();
    // NDJSON through the ingest path, as the CLI reads it.
    let cfg = Config::default();
    let mut engine = FeatureEngine::new(&cfg).unwrap();
    let names: Vec<String> = engine.registry().names().map(String::from).collect();
    let mut got: Vec<Vec<f64>> = Vec::new();
    let mut ingest = Ingest::new(Format::Ndjson);
    {
        let mut sink = |r: &Record<'_>| got.push(r.features.to_vec());
        let mut reject = |e: gatewatch_features::Rejection| panic!("{e}");
        ingest.feed(
            &mut engine,
            golden("events.ndjson").as_bytes(),
            &mut sink,
            &mut reject,
        );
        ingest.finish(&mut engine, &mut sink, &mut reject);
    }
    assert_eq!(got.len(), want.len());
    for (row, (g, w)) in got.iter().zip(&want).enumerate() {
        for (k, n) in names.iter().enumerate() {
            assert_eq!(g[k], w[n].as_f64().unwrap(), "ndjson path, row {row}, {n}");
        }
    }
    // The same events as a DataFrame.
    let df = events_to_frame(&golden_events()).unwrap();
    let (out, stats) = features_frame(&cfg, &df).unwrap();
    assert_eq!(stats.events_out as usize, want.len());
    assert_eq!(out.height(), want.len());
    let client = out.column("client").unwrap().str().unwrap().clone();
    let id = out.column("id").unwrap().i64().unwrap().clone();
    for (row, w) in want.iter().enumerate() {
        assert_eq!(client.get(row).unwrap(), w["client"].as_str().unwrap());
        assert_eq!(id.get(row).unwrap(), w["id"].as_i64().unwrap());
    }
    for n in &names {
        let col = out.column(n).unwrap().f64().unwrap().clone();
        for (row, w) in want.iter().enumerate() {
            assert_eq!(
                col.get(row).unwrap(),
                w[n].as_f64().unwrap(),
                "frame path, row {row}, {n}"
            );
        }
    }
}

#[test]
fn row_order_does_not_matter_and_text_times_are_parsed() {
    let events = golden_events();
    let df = events_to_frame(&events).unwrap();
    let (sorted, _) = features_frame(&Config::default(), &df).unwrap();
    // Newest first, events of the same millisecond still in their original order.
    let mut idx: Vec<usize> = (0..events.len()).collect();
    idx.sort_by_key(|&i| (std::cmp::Reverse(events[i].ts_ms), i));
    let idx: Vec<IdxSize> = idx.into_iter().map(|i| i as IdxSize).collect();
    let reversed = df.take(&IdxCa::from_vec("idx".into(), idx)).unwrap();
    assert_ne!(
        reversed.column("id").unwrap().get(0).unwrap(),
        df.column("id").unwrap().get(0).unwrap()
    );
    let (out, _) = features_frame(&Config::default(), &reversed).unwrap();
    assert!(out.equals_missing(&sorted));
    // ts as RFC 3339 text and as epoch milliseconds.
    let text: Vec<String> = events
        .iter()
        .map(|e| gatewatch_event::format_rfc3339_ms(e.ts_ms))
        .collect();
    let mut t = df.clone();
    t.with_column(Column::new("ts".into(), text)).unwrap();
    assert!(
        features_frame(&Config::default(), &t)
            .unwrap()
            .0
            .equals_missing(&sorted)
    );
    let mut m = df.clone();
    m.with_column(Column::new(
        "ts".into(),
        events.iter().map(|e| e.ts_ms).collect::<Vec<_>>(),
    ))
    .unwrap();
    assert!(
        features_frame(&Config::default(), &m)
            .unwrap()
            .0
            .equals_missing(&sorted)
    );
}

fn small() -> DataFrame {
    events_to_frame(&golden_events()[..20]).unwrap()
}

fn err(df: &DataFrame) -> String {
    let e = features_frame(&Config::default(), df).unwrap_err();
    e.to_string()
}

#[test]
fn bad_frames_fail_naming_the_column_and_row() {
    let df = small().drop("status").unwrap();
    assert!(
        err(&df).contains("column \"status\" is missing"),
        "{}",
        err(&df)
    );

    let mut df = small();
    df.with_column(Column::new("status".into(), vec!["OK"; 20]))
        .unwrap();
    let e = err(&df);
    assert!(e.contains("\"status\"") && e.contains("str"), "{e}");

    let mut df = small();
    let mut ips: Vec<Option<&str>> = vec![Some("10.0.0.1"); 20];
    ips[7] = None;
    df.with_column(Column::new("client_ip".into(), ips))
        .unwrap();
    assert_eq!(err(&df), "column \"client_ip\" is null in row 7");

    let mut df = small();
    let mut ips = vec!["10.0.0.1"; 20];
    ips[3] = "not-an-ip";
    df.with_column(Column::new("client_ip".into(), ips))
        .unwrap();
    let e = err(&df);
    assert!(e.starts_with("row 3:") && e.contains("client_ip"), "{e}");

    let mut df = small();
    let mut st = vec![200i64; 20];
    st[5] = 42;
    df.with_column(Column::new("status".into(), st)).unwrap();
    let e = err(&df);
    assert!(e.starts_with("row 5:") && e.contains("status"), "{e}");

    let mut df = small();
    df.with_column(Column::new("ts".into(), vec![1.5f64; 20]))
        .unwrap();
    assert!(err(&df).contains("\"ts\" has type f64"), "{}", err(&df));

    let mut df = small();
    let mut ts: Vec<String> = vec!["2026-01-05T09:00:00Z".into(); 20];
    ts[2] = "yesterday".into();
    df.with_column(Column::new("ts".into(), ts)).unwrap();
    let e = err(&df);
    assert!(e.starts_with("row 2: field `ts`"), "{e}");

    let mut df = small();
    let mut sizes: Vec<Option<i64>> = vec![Some(10); 20];
    sizes[9] = Some(-1);
    df.with_column(Column::new("req_bytes".into(), sizes))
        .unwrap();
    assert!(
        err(&df).contains("row 9: field `req_bytes`"),
        "{}",
        err(&df)
    );

    // An empty frame gives an empty table with every column.
    let empty = small().head(Some(0));
    let (out, _) = features_frame(&Config::default(), &empty).unwrap();
    assert_eq!(out.height(), 0);
    assert!(out.column("req_count_10s").is_ok());
    assert!(matches!(
        features_frame(&Config::default(), &DataFrame::empty()),
        Err(FrameError::Missing { .. })
    ));
}
