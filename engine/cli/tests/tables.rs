//! Parquet and CSV logs in, Parquet and CSV tables out: the same records as NDJSON.

use std::path::Path;
use std::process::{Command, Output};

use gatewatch_frames::{FileFormat, scan_log, write_table};
use polars::prelude::*;

fn gw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatewatch"))
}

fn run(args: &[&str]) -> Output {
    gw().args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed: {err}");
    err
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap())
        .finish()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Simulated events as NDJSON, and the same events as a frame.
fn simulated(dir: &Path) -> (std::path::PathBuf, DataFrame) {
    let ev = dir.join("events.ndjson");
    let out = run(&[
        "simulate",
        "--seed",
        "11",
        "--duration",
        "2m",
        "--users",
        "40",
        "--output",
        s(&ev),
    ]);
    ok(&out);
    let df = scan_log(&ev, FileFormat::Ndjson, &[]).unwrap();
    (ev, df)
}

/// Every column of a features or scores table against the NDJSON records, row by row.
fn assert_same_records(table: &DataFrame, records: &[serde_json::Value], columns: &[&str]) {
    assert_eq!(table.height(), records.len());
    for name in columns {
        let col = table.column(name).unwrap().as_materialized_series();
        for (row, rec) in records.iter().enumerate() {
            let want = &rec[*name];
            let got = col.get(row).unwrap();
            match (got, want) {
                (AnyValue::Float64(g), w) => {
                    assert_eq!(Some(g), w.as_f64(), "{name}, row {row}");
                }
                (AnyValue::Int64(g), w) => assert_eq!(Some(g), w.as_i64(), "{name}, row {row}"),
                (AnyValue::Boolean(g), w) => {
                    assert_eq!(Some(g), w.as_bool(), "{name}, row {row}");
                }
                (AnyValue::String(g), w) => assert_eq!(Some(g), w.as_str(), "{name}, row {row}"),
                (g, w) => panic!("{name}, row {row}: {g:?} against {w}"),
            }
        }
    }
}

#[test]
fn parquet_in_and_out_gives_the_ndjson_records() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, mut df) = simulated(dir.path());
    let pq = dir.path().join("events.parquet");
    write_table(&mut df, &pq, FileFormat::Parquet).unwrap();

    let nd = dir.path().join("features.ndjson");
    ok(&run(&["features", "-i", s(&ev), "-o", s(&nd)]));
    let fq = dir.path().join("features.parquet");
    let err = ok(&run(&["features", "-i", s(&pq), "-o", s(&fq)]));
    assert!(err.contains("rows read:"), "{err}");
    let records = lines(&nd);
    let table = read_parquet(&fq);
    let feats: Vec<String> = table
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .filter(|c| !["id", "label", "ts", "client", "endpoint"].contains(&c.as_str()))
        .collect();
    assert_eq!(feats.len(), 93);
    let mut cols: Vec<&str> = vec!["id", "label", "client", "endpoint"];
    cols.extend(feats.iter().map(String::as_str));
    assert_same_records(&table, &records, &cols);
    assert!(matches!(
        table.column("ts").unwrap().dtype(),
        DataType::Datetime(TimeUnit::Milliseconds, Some(_))
    ));

    // Scores: Parquet input, Parquet output (format from the extension) against NDJSON.
    let snd = dir.path().join("scores.ndjson");
    ok(&run(&["score", "-i", s(&ev), "-o", s(&snd)]));
    let sq = dir.path().join("scores.parquet");
    ok(&run(&["score", "-i", s(&pq), "-o", s(&sq)]));
    let records: Vec<serde_json::Value> = lines(&snd)
        .into_iter()
        .map(|mut r| {
            let scores = r["scores"].as_object().unwrap().clone();
            for (k, v) in scores {
                r[format!("score_{k}")] = v;
            }
            r
        })
        .collect();
    let table = read_parquet(&sq);
    assert_same_records(
        &table,
        &records,
        &[
            "id",
            "client",
            "score",
            "score_robust",
            "score_volumetric",
            "flagged",
        ],
    );
    let reasons = table.column("reasons").unwrap().str().unwrap();
    for (row, rec) in records.iter().enumerate() {
        let got: serde_json::Value = serde_json::from_str(reasons.get(row).unwrap()).unwrap();
        assert_eq!(got, rec["reasons"], "reasons, row {row}");
    }
    assert!(
        table
            .column("flagged")
            .unwrap()
            .bool()
            .unwrap()
            .sum()
            .unwrap()
            > 0
    );
}

#[test]
fn csv_with_mapped_columns_unsorted_rows_and_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, df) = simulated(dir.path());
    // Headers as flat columns, other column names, rows in reverse order, one bad address.
    let headers = df.column("headers").unwrap().struct_().unwrap().clone();
    let mut flat = df.drop("headers").unwrap();
    for f in headers.fields_as_series() {
        let name = format!("headers.{}", f.name());
        flat.with_column(f.with_name(name.as_str().into()).into())
            .unwrap();
    }
    // Latest first; events of the same time keep their order (ties are processed in row
    // order, as they are in the NDJSON stream).
    let flat = flat
        .with_row_index("_row".into(), None)
        .unwrap()
        .sort(
            ["ts", "_row"],
            SortMultipleOptions::default().with_order_descending_multi([true, false]),
        )
        .unwrap()
        .drop("_row")
        .unwrap();
    let mut flat = flat;
    flat.rename("ts", "time".into()).unwrap();
    flat.rename("client_ip", "remote_addr".into()).unwrap();
    let n = flat.height();
    let bad_row = 5usize;
    let ips: Vec<Option<String>> = flat
        .column("remote_addr")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if i == bad_row {
                Some("not-an-address".to_string())
            } else {
                v.map(String::from)
            }
        })
        .collect();
    let bad_id = flat
        .column("id")
        .unwrap()
        .i64()
        .unwrap()
        .get(bad_row)
        .unwrap();
    flat.with_column(Column::new("remote_addr".into(), ips))
        .unwrap();
    let csv = dir.path().join("events.csv");
    CsvWriter::new(std::fs::File::create(&csv).unwrap())
        .finish(&mut flat)
        .unwrap();

    // Without the mapping the file lacks the event schema's columns.
    let out = run(&[
        "features",
        "-i",
        s(&csv),
        "-o",
        s(&dir.path().join("x.csv")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("column \"ts\" is missing"), "{err}");

    let fc = dir.path().join("features.csv");
    let err = ok(&run(&[
        "features",
        "-i",
        s(&csv),
        "--map",
        "time=ts,remote_addr=client_ip",
        "-o",
        s(&fc),
    ]));
    assert!(
        err.contains(&format!(
            "rejected row {bad_row}: field `client_ip`: not an IP address: \"not-an-address\""
        )),
        "{err}"
    );
    let rows = format!("rows read: {},{:03}; rejected: 1", n / 1000, n % 1000);
    assert!(n >= 1000 && err.contains(&rows), "{err}");

    // The NDJSON path on the same events without the bad one gives the same records.
    let text = std::fs::read_to_string(&ev).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_i64() != Some(bad_id)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let ev2 = dir.path().join("kept.ndjson");
    std::fs::write(&ev2, kept).unwrap();
    let nd = dir.path().join("features.ndjson");
    ok(&run(&["features", "-i", s(&ev2), "-o", s(&nd)]));
    let records = lines(&nd);
    let table = CsvReadOptions::default()
        .with_infer_schema_length(None)
        .try_into_reader_with_file_path(Some(fc.clone()))
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(table.height(), n - 1);
    // Compare sorted by id (the records leave in event-time order either way).
    let table = table.sort(["id"], SortMultipleOptions::default()).unwrap();
    let mut records = records;
    records.sort_by_key(|r| r["id"].as_i64());
    assert_same_records(
        &table,
        &records,
        &[
            "id",
            "label",
            "client",
            "endpoint",
            "req_count_1m",
            "distinct_endpoints_10m",
            "error_ratio_10m",
        ],
    );
}

#[test]
fn table_options_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut df) = simulated(dir.path());
    let pq = dir.path().join("events.parquet");
    write_table(&mut df, &pq, FileFormat::Parquet).unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["features", "-i", s(&pq), "--map", "nope=ts", "--no-output"],
            "column \"nope\" (to be read as \"ts\") is not in the file",
        ),
        (
            &["features", "-i", s(&pq), "--map", "ts=when", "--no-output"],
            "\"when\" is not an event field",
        ),
        (
            &["features", "--format", "parquet", "--no-output"],
            "a table is read from a file",
        ),
        (
            &["features", "-i", s(&pq), "--output-format", "parquet"],
            "a table is written to a file",
        ),
        (
            &["score", "-i", "/nonexistent/x.parquet", "--no-output"],
            "/nonexistent/x.parquet: no such file",
        ),
    ];
    for (args, want) in cases {
        let out = run(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A column of the wrong type names the column.
    let mut bad = df
        .with_column(Column::new("status".into(), vec!["ok"; df.height()]))
        .unwrap()
        .clone();
    let pq2 = dir.path().join("bad.parquet");
    write_table(&mut bad, &pq2, FileFormat::Parquet).unwrap();
    let out = run(&["train", "-i", s(&pq2), "-o", s(&dir.path().join("m"))]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("column \"status\" has type str, expected an integer"),
        "{err}"
    );
}

#[test]
fn simulate_writes_parquet_and_csv_logs_that_give_the_same_features() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = |out: &Path| {
        ok(&run(&[
            "simulate",
            "--seed",
            "5",
            "--duration",
            "90s",
            "--users",
            "20",
            "-o",
            s(out),
        ]))
    };
    let (nd, pq, csv) = (d.join("e.ndjson"), d.join("e.parquet"), d.join("e.csv"));
    for p in [&nd, &pq, &csv] {
        sim(p);
    }
    let header = std::fs::read_to_string(&csv).unwrap();
    let header = header.lines().next().unwrap();
    assert!(header.contains("headers.authorization"), "{header}");
    let want = d.join("f.ndjson");
    ok(&run(&["features", "-i", s(&nd), "-o", s(&want)]));
    let records = lines(&want);
    assert!(records.len() > 1000);
    for input in [&pq, &csv] {
        let out = d.join("f.parquet");
        ok(&run(&["features", "-i", s(input), "-o", s(&out)]));
        assert_same_records(
            &read_parquet(&out),
            &records,
            &[
                "id",
                "label",
                "client",
                "endpoint",
                "req_rate_1m",
                "distinct_ids_10m",
            ],
        );
    }
}

#[test]
fn parquet_columns_of_other_integer_widths_and_types_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, df) = simulated(dir.path());
    let mut odd = df
        .lazy()
        .with_columns([
            col("status").cast(DataType::UInt16),
            col("req_bytes").cast(DataType::Int32),
            col("id").cast(DataType::String),
        ])
        .collect()
        .unwrap();
    let pq = dir.path().join("odd.parquet");
    write_table(&mut odd, &pq, FileFormat::Parquet).unwrap();
    let nd = dir.path().join("f.ndjson");
    ok(&run(&["features", "-i", s(&ev), "-o", s(&nd)]));
    let fq = dir.path().join("f.parquet");
    ok(&run(&["features", "-i", s(&pq), "-o", s(&fq)]));
    let table = read_parquet(&fq);
    // Text ids stay text; the times were RFC 3339 text in this file.
    assert_eq!(table.column("id").unwrap().dtype(), &DataType::String);
    let records: Vec<serde_json::Value> = lines(&nd)
        .into_iter()
        .map(|mut r| {
            r["id"] = serde_json::Value::String(r["id"].to_string());
            r
        })
        .collect();
    assert_same_records(
        &table,
        &records,
        &["id", "client", "error_ratio_1m", "bytes_mean_10m"],
    );
}

/// The column names of a table file.
fn columns_of(path: &Path, csv: bool) -> Vec<String> {
    if csv {
        let text = std::fs::read_to_string(path).unwrap();
        return text
            .lines()
            .next()
            .unwrap()
            .split(',')
            .map(|c| c.trim_matches('"').to_string())
            .collect();
    }
    let df = read_parquet(path);
    df.get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect()
}

#[test]
fn every_output_format_follows_the_one_record_schema() {
    use gatewatch_pipeline::schema::{feature_columns, score_columns};
    use gatewatch_pipeline::{FeatureRecord, RejectionRecord, ScoreRecord};

    let dir = tempfile::tempdir().unwrap();
    let (ev, df) = simulated(dir.path());
    // One broken line and one late event, for the rejection records.
    let mut text = std::fs::read_to_string(&ev).unwrap();
    text.push_str("{\"ts\": 1, \"broken\n");
    let first = text.lines().next().unwrap().to_owned();
    text.push_str(&first);
    text.push('\n');
    std::fs::write(&ev, text).unwrap();
    let cfg = gatewatch_features::Config::default();
    let registry = gatewatch_features::Registry::new(&cfg.features);
    let scorer =
        gatewatch_models::Scorer::load_folder(&gatewatch_models::builtin_default(), &registry)
            .unwrap();

    // NDJSON: every line is a record of the schema (scores: nothing outside it).
    let nd = dir.path().join("f.ndjson");
    let rej = dir.path().join("rejects.ndjson");
    ok(&run(&[
        "features",
        "-i",
        s(&ev),
        "-o",
        s(&nd),
        "--rejects",
        s(&rej),
    ]));
    let text = std::fs::read_to_string(&nd).unwrap();
    let features: Vec<FeatureRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(features.len(), df.height());
    for r in &features {
        r.check(&registry).unwrap();
    }
    let rejected: Vec<RejectionRecord> = std::fs::read_to_string(&rej)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines_at: Vec<u64> = rejected.iter().map(|r| r.position.number()).collect();
    let n = df.height() as u64;
    assert_eq!(lines_at, [n + 1, n + 2], "{rejected:?}");
    assert_eq!(rejected[1].category, "late beyond allowed lateness");

    let snd = dir.path().join("s.ndjson");
    ok(&run(&["score", "-i", s(&ev), "-o", s(&snd)]));
    let text = std::fs::read_to_string(&snd).unwrap();
    let scores: Vec<ScoreRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(scores.len(), df.height());
    assert!(scores.iter().all(|r| r.model == scorer.id()));
    assert!(scores.iter().any(|r| !r.reasons.is_empty()));

    // Tables: the schema's columns, in its order; `ts` the same instant as the record's.
    for ext in ["parquet", "csv"] {
        let f = dir.path().join(format!("f.{ext}"));
        ok(&run(&["features", "-i", s(&ev), "-o", s(&f)]));
        assert_eq!(
            columns_of(&f, ext == "csv"),
            feature_columns(&registry),
            "{ext}"
        );
        let sc = dir.path().join(format!("s.{ext}"));
        ok(&run(&["score", "-i", s(&ev), "-o", s(&sc)]));
        assert_eq!(
            columns_of(&sc, ext == "csv"),
            score_columns(&scorer),
            "{ext}"
        );
    }
    let table = read_parquet(&dir.path().join("f.parquet"));
    let ts = table
        .column("ts")
        .unwrap()
        .datetime()
        .unwrap()
        .physical()
        .clone();
    for (row, r) in features.iter().enumerate() {
        let mut want = String::new();
        gatewatch_event::write_rfc3339_ms(ts.get(row).unwrap(), &mut want);
        assert_eq!(r.ts, want, "row {row}");
    }

    // Frames (and so Python): the same columns.
    let (frame, _) = gatewatch_frames::features_frame(&cfg, &df).unwrap();
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(names, feature_columns(&registry));
    let mut scorer = scorer;
    let frame = gatewatch_frames::scores_frame(&cfg, &mut scorer, &df, 3, 256).unwrap();
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(names, score_columns(&scorer));
    // The frame's reasons are the NDJSON records' reasons, text for text.
    let reasons = frame.column("reasons").unwrap().str().unwrap();
    for (row, r) in scores.iter().enumerate() {
        let got: Vec<gatewatch_pipeline::ReasonRecord> =
            serde_json::from_str(reasons.get(row).unwrap()).unwrap();
        assert_eq!(got, r.reasons, "row {row}");
    }
}
