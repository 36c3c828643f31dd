//! Request events as DataFrames: the event schema's columns, and the text of JSON values.

use gatewatch_event::RequestEvent;
use polars::prelude::*;

use crate::Result;
use crate::rows::header_fields;

pub(crate) fn str_col(name: &str, v: Vec<Option<&str>>) -> Column {
    Column::new(name.into(), v)
}

/// A Datetime[ms, UTC] column of epoch milliseconds.
pub fn datetime_ms(name: &str, ms: Vec<i64>) -> Column {
    Int64Chunked::from_vec(name.into(), ms)
        .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
        .into_series()
        .into()
}

/// An event's reasons as the JSON array `gatewatch score` writes: objects of `detector`,
/// `feature`, `value`, `baseline` and `contribution` (the schema's reason records).
pub fn reasons_json(detector: &str, reasons: &[gatewatch_models::Reason]) -> String {
    let mut s = String::new();
    gatewatch_pipeline::write_reasons_json(&mut s, detector, reasons);
    s
}

/// The event schema's columns (with `headers.NAME` columns, what a log file is read for).
pub const EVENT_COLUMNS: [&str; 17] = [
    "id",
    "label",
    "ts",
    "client_ip",
    "method",
    "host",
    "path",
    "status",
    "req_bytes",
    "resp_bytes",
    "latency_ms",
    "user_agent",
    "headers",
    "session_id",
    "asn",
    "country",
    "ja4",
];

/// Whether a column name is an event field (`headers.NAME` included).
pub fn is_event_column(name: &str) -> bool {
    EVENT_COLUMNS.contains(&name) || name.starts_with("headers.")
}

/// Request events as a DataFrame: `id` (Int64 when every id is an integer, else the raw
/// JSON text), `label` (String), `ts` (Datetime[ms, UTC]), and the event fields.
pub fn events_to_frame(events: &[RequestEvent]) -> Result<DataFrame> {
    let n = events.len();
    let mut cols: Vec<Column> = Vec::new();
    if events.iter().any(|e| e.id.is_some()) {
        let ints: Option<Vec<Option<i64>>> = events
            .iter()
            .map(|e| match &e.id {
                None => Some(None),
                Some(raw) => raw.parse::<i64>().ok().map(Some),
            })
            .collect();
        cols.push(match ints {
            Some(v) => Column::new("id".into(), v),
            None => str_col("id", events.iter().map(|e| e.id.as_deref()).collect()),
        });
    }
    if events.iter().any(|e| e.label.is_some()) {
        let labels: Vec<Option<String>> = events
            .iter()
            .map(|e| e.label.as_deref().map(unquote))
            .collect();
        cols.push(Column::new("label".into(), labels));
    }
    cols.push(datetime_ms("ts", events.iter().map(|e| e.ts_ms).collect()));
    let ips: Vec<String> = events.iter().map(|e| e.client_ip.to_string()).collect();
    cols.push(Column::new("client_ip".into(), ips));
    cols.push(str_col(
        "method",
        events.iter().map(|e| Some(&*e.method)).collect(),
    ));
    cols.push(str_col(
        "host",
        events.iter().map(|e| e.host.as_deref()).collect(),
    ));
    let paths: Vec<String> = events
        .iter()
        .map(|e| match &e.query {
            Some(q) => format!("{}?{q}", e.path),
            None => e.path.to_string(),
        })
        .collect();
    cols.push(Column::new("path".into(), paths));
    cols.push(Column::new(
        "status".into(),
        events
            .iter()
            .map(|e| i64::from(e.status))
            .collect::<Vec<_>>(),
    ));
    let opt_u = |f: fn(&RequestEvent) -> Option<u64>| -> Vec<Option<i64>> {
        events
            .iter()
            .map(|e| f(e).map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
            .collect()
    };
    cols.push(Column::new("req_bytes".into(), opt_u(|e| e.req_bytes)));
    cols.push(Column::new("resp_bytes".into(), opt_u(|e| e.resp_bytes)));
    cols.push(Column::new(
        "latency_ms".into(),
        events.iter().map(|e| e.latency_ms).collect::<Vec<_>>(),
    ));
    cols.push(str_col(
        "user_agent",
        events.iter().map(|e| e.user_agent.as_deref()).collect(),
    ));
    let mut names: Vec<&str> = events
        .iter()
        .flat_map(|e| e.headers.iter().map(|(k, _)| &**k))
        .collect();
    names.sort_unstable();
    names.dedup();
    if !names.is_empty() {
        let fields: Vec<Series> = names
            .iter()
            .map(|h| {
                Series::new(
                    (*h).into(),
                    events.iter().map(|e| e.header(h)).collect::<Vec<_>>(),
                )
            })
            .collect();
        let s = StructChunked::from_series("headers".into(), n, fields.iter())?;
        cols.push(s.into_series().into());
    }
    for (name, f) in [
        (
            "session_id",
            (|e| e.session_id.as_deref()) as fn(&RequestEvent) -> Option<&str>,
        ),
        ("asn", |e| e.asn.as_deref()),
        ("country", |e| e.country.as_deref()),
        ("ja4", |e| e.ja4.as_deref()),
    ] {
        cols.push(str_col(name, events.iter().map(f).collect()));
    }
    Ok(DataFrame::new(n, cols)?)
}

/// The frame with its `headers` struct column replaced by one text column per header,
/// named `headers.NAME` (for formats without nested columns, such as CSV).
pub fn flatten_headers(mut df: DataFrame) -> Result<DataFrame> {
    let fields = header_fields(&df)?;
    if df.column("headers").is_err() {
        return Ok(df);
    }
    df = df.drop("headers")?;
    for f in fields {
        let name = format!("headers.{}", f.name());
        df.with_column(f.with_name(name.as_str().into()).into())?;
    }
    Ok(df)
}

/// The text of a JSON string literal (`"normal"` → `normal`); other JSON as it is.
pub fn unquote(raw: &str) -> String {
    gatewatch_pipeline::unquote(raw).into_owned()
}
