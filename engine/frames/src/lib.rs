//! polars DataFrames in and out of the gatewatch engine.
//!
//! - [`events_to_frame`]: request events as a DataFrame (the event schema as columns).
//! - [`frame_to_events`]: a DataFrame of events (the same columns; `ts` as a datetime, epoch
//!   milliseconds or RFC 3339 text) into validated events, with errors naming the column
//!   and row.
//! - [`features_frame`]: every event's point-in-time features, computed by the same
//!   [`FeatureEngine`] as `gatewatch features`, as a DataFrame.
//! - [`scores_frame`]: every event scored by a model folder, as `gatewatch score` does.
//!
//! Event columns: `ts`, `client_ip`, `method`, `path` and `status` are required; `host`,
//! `req_bytes`, `resp_bytes`, `latency_ms`, `user_agent`, `headers` (a struct of string
//! fields, one per header name, as polars reads NDJSON objects), `session_id`, `asn`,
//! `country`, `ja4`, `id` and `label` are optional. Other columns are ignored.

#[cfg(feature = "io")]
mod io;
#[cfg(feature = "io")]
pub use gatewatch_event::FileFormat;
#[cfg(feature = "io")]
pub use io::{TableWriter, scan_log, write_table};

use gatewatch_event::{EventFields, ParseError, RequestEvent, parse_rfc3339_ms};
use gatewatch_features::{Config, FeatureEngine, Stats};
use gatewatch_models::Scorer;
use gatewatch_pipeline::{Output, Position, Session, SessionOptions};
use polars::prelude::*;
use std::borrow::BorrowMut;

/// What was wrong with a DataFrame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A required column is absent.
    #[error(
        "column {column:?} is missing (the event schema needs ts, client_ip, method, path, status)"
    )]
    Missing {
        /// Its name.
        column: String,
    },
    /// A column has a type that cannot be read as the field.
    #[error("column {column:?} has type {found}, expected {expected}")]
    Type {
        /// Its name.
        column: String,
        /// What it should be.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// A required value is null.
    #[error("column {column:?} is null in row {row}")]
    Null {
        /// The column.
        column: String,
        /// The row (0-based).
        row: usize,
    },
    /// A value is invalid.
    #[error("row {row}: {reason}")]
    Invalid {
        /// The row (0-based).
        row: usize,
        /// Why (names the field).
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A column mapping does not fit the file.
    #[error("{}: {reason}", path.display())]
    Mapping {
        /// The file.
        path: std::path::PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// polars failed.
    #[error(transparent)]
    Polars(#[from] PolarsError),
    /// The engine's configuration is invalid.
    #[error(transparent)]
    Engine(#[from] gatewatch_features::Error),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, FrameError>;

fn str_col(name: &str, v: Vec<Option<&str>>) -> Column {
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

fn column<'a>(df: &'a DataFrame, name: &str) -> Option<&'a Series> {
    df.column(name).ok().map(Column::as_materialized_series)
}

fn required<'a>(df: &'a DataFrame, name: &str) -> Result<&'a Series> {
    column(df, name).ok_or_else(|| FrameError::Missing {
        column: name.to_string(),
    })
}

fn strings<'a>(s: &'a Series, expected: &'static str) -> Result<Vec<Option<&'a str>>> {
    if s.dtype() == &DataType::Null {
        return Ok(vec![None; s.len()]);
    }
    let ca = s.str().map_err(|_| FrameError::Type {
        column: s.name().to_string(),
        expected,
        found: s.dtype().to_string(),
    })?;
    Ok(ca.iter().collect())
}

fn ints(s: &Series, expected: &'static str) -> Result<Vec<Option<i64>>> {
    if s.dtype() == &DataType::Null {
        return Ok(vec![None; s.len()]);
    }
    if !s.dtype().is_integer() {
        return Err(FrameError::Type {
            column: s.name().to_string(),
            expected,
            found: s.dtype().to_string(),
        });
    }
    let c = s.cast(&DataType::Int64)?;
    Ok(c.i64()?.iter().collect())
}

fn floats(s: &Series) -> Result<Vec<Option<f64>>> {
    if s.dtype() == &DataType::Null {
        return Ok(vec![None; s.len()]);
    }
    if !s.dtype().is_primitive_numeric() {
        return Err(FrameError::Type {
            column: s.name().to_string(),
            expected: "a number",
            found: s.dtype().to_string(),
        });
    }
    let c = s.cast(&DataType::Float64)?;
    Ok(c.f64()?.iter().collect())
}

/// Event times in epoch milliseconds from a datetime, integer (epoch ms) or RFC 3339 column;
/// a text value that is not RFC 3339 is that row's error.
fn times(s: &Series) -> Result<Vec<Option<std::result::Result<i64, String>>>> {
    let ok = |v: Vec<Option<i64>>| v.into_iter().map(|v| v.map(Ok)).collect();
    match s.dtype() {
        DataType::Datetime(unit, _) => {
            let div = match unit {
                TimeUnit::Milliseconds => 1,
                TimeUnit::Microseconds => 1_000,
                TimeUnit::Nanoseconds => 1_000_000,
            };
            Ok(s.datetime()?
                .physical()
                .iter()
                .map(|v| v.map(|v| Ok(v.div_euclid(div))))
                .collect())
        }
        DataType::String => Ok(s
            .str()?
            .iter()
            .map(|v| v.map(|t| parse_rfc3339_ms(t).map_err(|e| e.to_string())))
            .collect()),
        d if d.is_integer() || d == &DataType::Null => Ok(ok(ints(s, "epoch milliseconds")?)),
        d => Err(FrameError::Type {
            column: s.name().to_string(),
            expected: "a datetime, epoch milliseconds or RFC 3339 text",
            found: d.to_string(),
        }),
    }
}

fn opt_strings<'a>(df: &'a DataFrame, name: &str) -> Result<Option<Vec<Option<&'a str>>>> {
    column(df, name).map(|s| strings(s, "text")).transpose()
}

/// Session ids and ASNs may be text or integers.
fn text_or_int(df: &DataFrame, name: &str) -> Result<Option<Vec<Option<String>>>> {
    let Some(s) = column(df, name) else {
        return Ok(None);
    };
    if s.dtype().is_integer() || s.dtype() == &DataType::Null {
        return Ok(Some(
            ints(s, "text or an integer")?
                .into_iter()
                .map(|v| v.map(|v| v.to_string()))
                .collect(),
        ));
    }
    Ok(Some(
        strings(s, "text or an integer")?
            .into_iter()
            .map(|v| v.map(String::from))
            .collect(),
    ))
}

/// Why one row of an events frame is not an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// The row (0-based).
    pub row: usize,
    /// The field and what was wrong with its value.
    pub error: ParseError,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {}: {}", self.row, self.error)
    }
}

impl From<RowError> for FrameError {
    fn from(e: RowError) -> Self {
        match (&e.error.field, e.error.reason.as_str()) {
            (Some(f), NULL) => FrameError::Null {
                column: f.clone(),
                row: e.row,
            },
            _ => FrameError::Invalid {
                row: e.row,
                reason: e.error.to_string(),
            },
        }
    }
}

/// The reason of a row error for a required value that is null.
const NULL: &str = "null";

fn null(column: &str) -> ParseError {
    ParseError {
        field: Some(column.to_string()),
        reason: NULL.into(),
    }
}

fn need<T>(v: Option<T>, column: &str) -> std::result::Result<T, ParseError> {
    v.ok_or_else(|| null(column))
}

/// Validated events from a DataFrame, in row order; the first row that is not an event is
/// the error (`id` and `label` are not read: callers take them from the frame).
///
/// Header values come from a `headers` struct column (one text field per header name, as
/// polars reads NDJSON objects) and from flat text columns named `headers.NAME` (as a CSV
/// file has them).
pub fn frame_to_events(df: &DataFrame) -> Result<Vec<RequestEvent>> {
    let fields = header_fields(df)?;
    let rows = Rows::open(df, &fields, false)?;
    (0..rows.len())
        .map(|r| rows.event(r).map_err(FrameError::from))
        .collect()
}

/// Every row of an events frame, as an event or the reason it is not one, handed to `each`
/// with its row number in event-time order (ties in row order), one at a time: rows without
/// a valid time first (they cannot be ordered), then the others. `each` stops the walk by
/// returning an error. Column-level problems (a required column missing, a column of the
/// wrong type) are the error before any row is read. With `tags`, `id` and `label` are
/// carried in the events as JSON text (as an NDJSON event has them), so that records written
/// from them name their event. Headers are read as [`frame_to_events`] reads them.
pub fn for_each_event_in_time_order<E: From<FrameError>>(
    df: &DataFrame,
    tags: bool,
    mut each: impl FnMut(
        usize,
        std::result::Result<RequestEvent, RowError>,
    ) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let fields = header_fields(df)?;
    let rows = Rows::open(df, &fields, tags)?;
    let mut order: Vec<(i64, usize)> = Vec::with_capacity(rows.len());
    for r in 0..rows.len() {
        match rows.ts(r) {
            Some(t) => order.push((t, r)),
            None => each(r, rows.event(r))?,
        }
    }
    if !order.is_sorted_by_key(|o| o.0) {
        // Stable: rows of the same time keep their order.
        order.sort_by_key(|o| o.0);
    }
    for (_, r) in order {
        each(r, rows.event(r))?;
    }
    Ok(())
}

/// The fields of a `headers` struct column.
fn header_fields(df: &DataFrame) -> Result<Vec<Series>> {
    Ok(match column(df, "headers") {
        None => Vec::new(),
        Some(s) if s.dtype() == &DataType::Null => Vec::new(),
        Some(s) => s
            .struct_()
            .map_err(|_| FrameError::Type {
                column: "headers".into(),
                expected: "a struct of text fields (one per header name)",
                found: s.dtype().to_string(),
            })?
            .fields_as_series(),
    })
}

/// An events frame's columns, checked, read row by row into events.
struct Rows<'a> {
    headers: Vec<(&'a str, Vec<Option<&'a str>>)>,
    c: FrameColumns<'a>,
    n: usize,
}

impl<'a> Rows<'a> {
    /// The columns of `df` (`fields`: its `headers` struct's fields).
    fn open(df: &'a DataFrame, fields: &'a [Series], tags: bool) -> Result<Self> {
        let ts = times(required(df, "ts")?)?;
        let ip = strings(required(df, "client_ip")?, "text")?;
        let method = strings(required(df, "method")?, "text")?;
        let path = strings(required(df, "path")?, "text")?;
        let status = ints(required(df, "status")?, "an integer")?;
        let size = |name: &str| -> Result<Option<Vec<Option<i64>>>> {
            column(df, name).map(|s| ints(s, "an integer")).transpose()
        };
        let mut headers: Vec<(&str, Vec<Option<&str>>)> = Vec::with_capacity(fields.len());
        for f in fields {
            let ca = f.str().map_err(|_| FrameError::Type {
                column: format!("headers.{}", f.name()),
                expected: "text",
                found: f.dtype().to_string(),
            })?;
            headers.push((f.name().as_str(), ca.iter().collect()));
        }
        for c in df.columns() {
            if let Some(name) = c.name().strip_prefix("headers.") {
                headers.push((name, strings(c.as_materialized_series(), "text")?));
            }
        }
        let (ids, labels) = if tags {
            (json_texts(df, "id")?, json_texts(df, "label")?)
        } else {
            (None, None)
        };
        let c = FrameColumns {
            ts,
            ip,
            method,
            path,
            status,
            host: opt_strings(df, "host")?,
            ua: opt_strings(df, "user_agent")?,
            country: opt_strings(df, "country")?,
            ja4: opt_strings(df, "ja4")?,
            session: text_or_int(df, "session_id")?,
            asn: text_or_int(df, "asn")?,
            req_bytes: size("req_bytes")?,
            resp_bytes: size("resp_bytes")?,
            latency: column(df, "latency_ms").map(floats).transpose()?,
            ids,
            labels,
        };
        Ok(Self {
            headers,
            c,
            n: df.height(),
        })
    }

    fn len(&self) -> usize {
        self.n
    }

    /// The row's event time, when it has a valid one.
    fn ts(&self, row: usize) -> Option<i64> {
        self.c.ts[row]
            .as_ref()
            .and_then(|t| t.as_ref().ok().copied())
    }

    /// The row as an event.
    fn event(&self, row: usize) -> std::result::Result<RequestEvent, RowError> {
        self.build(row).map_err(|error| RowError { row, error })
    }

    fn build(&self, row: usize) -> std::result::Result<RequestEvent, ParseError> {
        fn get<'a>(v: &Option<Vec<Option<&'a str>>>, row: usize) -> Option<&'a str> {
            v.as_ref().and_then(|v| v[row])
        }
        fn tag(v: &Option<Vec<Option<String>>>, row: usize) -> Option<Box<str>> {
            v.as_ref().and_then(|v| v[row].as_deref()).map(Box::from)
        }
        let size = |v: &Option<Vec<Option<i64>>>,
                    name: &str|
         -> std::result::Result<Option<u64>, ParseError> {
            match v.as_ref().and_then(|v| v[row]) {
                None => Ok(None),
                Some(x) => u64::try_from(x).map(Some).map_err(|_| ParseError {
                    field: Some(name.to_string()),
                    reason: format!("negative size {x}"),
                }),
            }
        };
        let c = &self.c;
        let mut hrow: Vec<(&str, &str)> = Vec::new();
        for (name, vals) in &self.headers {
            if let Some(v) = vals[row] {
                hrow.push((name, v));
            }
        }
        let ts_ms = match &c.ts[row] {
            None => return Err(null("ts")),
            Some(Err(reason)) => {
                return Err(ParseError {
                    field: Some("ts".into()),
                    reason: reason.clone(),
                });
            }
            Some(Ok(v)) => *v,
        };
        let fields = EventFields {
            ts_ms,
            client_ip: need(c.ip[row], "client_ip")?,
            method: need(c.method[row], "method")?,
            host: get(&c.host, row),
            path: need(c.path[row], "path")?,
            status: need(c.status[row], "status")?,
            req_bytes: size(&c.req_bytes, "req_bytes")?,
            resp_bytes: size(&c.resp_bytes, "resp_bytes")?,
            latency_ms: c.latency.as_ref().and_then(|v| v[row]),
            user_agent: get(&c.ua, row),
            headers: &hrow,
            session_id: c.session.as_ref().and_then(|v| v[row].as_deref()),
            asn: c.asn.as_ref().and_then(|v| v[row].as_deref()),
            country: get(&c.country, row),
            ja4: get(&c.ja4, row),
        };
        let mut e = fields.build()?;
        e.id = tag(&c.ids, row);
        e.label = tag(&c.labels, row);
        Ok(e)
    }
}

/// A column's values as JSON text: integers as they are, text quoted.
fn json_texts(df: &DataFrame, name: &str) -> Result<Option<Vec<Option<String>>>> {
    let text = column(df, name).is_some_and(|s| s.dtype() == &DataType::String);
    Ok(text_or_int(df, name)?.map(|v| {
        if !text {
            return v;
        }
        v.into_iter()
            .map(|t| t.map(|t| serde_json::Value::from(t).to_string()))
            .collect()
    }))
}

struct FrameColumns<'a> {
    ts: Vec<Option<std::result::Result<i64, String>>>,
    ip: Vec<Option<&'a str>>,
    method: Vec<Option<&'a str>>,
    path: Vec<Option<&'a str>>,
    status: Vec<Option<i64>>,
    host: Option<Vec<Option<&'a str>>>,
    ua: Option<Vec<Option<&'a str>>>,
    country: Option<Vec<Option<&'a str>>>,
    ja4: Option<Vec<Option<&'a str>>>,
    session: Option<Vec<Option<String>>>,
    asn: Option<Vec<Option<String>>>,
    req_bytes: Option<Vec<Option<i64>>>,
    resp_bytes: Option<Vec<Option<i64>>>,
    latency: Option<Vec<Option<f64>>>,
    ids: Option<Vec<Option<String>>>,
    labels: Option<Vec<Option<String>>>,
}

/// Every event's point-in-time features, computed by the engine of `cfg` over the events
/// in event-time order (rows sorted by `ts`, ties in row order, so no event is late): one
/// row per event with `id` and `label` (when the frame has them, as they are), `ts`
/// (Datetime[ms, UTC]), `client`, `endpoint` and every feature (Float64) by registry name —
/// the columns of [`gatewatch_pipeline::schema::feature_columns`]. Returns the engine's run
/// counters too.
pub fn features_frame(cfg: &Config, df: &DataFrame) -> Result<(DataFrame, Stats)> {
    let mut session = session_for::<Scorer>(cfg, None, SessionOptions::default())?;
    let width = session.registry().len();
    let mut cols: Vec<Vec<f64>> = (0..width)
        .map(|_| Vec::with_capacity(df.height()))
        .collect();
    let mut keys = Keys::with_capacity(df.height());
    run(&mut session, df, |out| {
        keys.add(out);
        // Rows are moved into the columns a batch at a time, while they are still in cache:
        // far fewer cache and TLB misses than one push per column per record.
        append_columns(&mut cols, out.rows(), width);
        Ok(())
    })?;
    let n = keys.rows.len();
    let mut out = keys.columns(df)?;
    for (name, v) in session.registry().names().zip(cols) {
        out.push(Column::new(name.into(), v));
    }
    Ok((DataFrame::new(n, out)?, session.stats()))
}

/// Appends the rows of a row-major block with `width` columns to the columns (a block small
/// enough to stay in cache moves far faster than one push per column per row).
pub fn append_columns(cols: &mut [Vec<f64>], block: &[f64], width: usize) {
    for (k, col) in cols.iter_mut().enumerate() {
        col.extend(block.chunks_exact(width.max(1)).map(|r| r[k]));
    }
}

/// The identifying columns of the records, in emission order.
struct Keys {
    rows: Vec<IdxSize>,
    ts: Vec<i64>,
    clients: StringChunkedBuilder,
    endpoints: StringChunkedBuilder,
}

impl Keys {
    fn with_capacity(n: usize) -> Self {
        Self {
            rows: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            clients: StringChunkedBuilder::new("client".into(), n),
            endpoints: StringChunkedBuilder::new("endpoint".into(), n),
        }
    }

    /// The records of a batch.
    fn add(&mut self, out: &Output) {
        for r in out.records() {
            self.rows.push(r.position.number() as IdxSize);
            self.ts.push(r.ts_ms);
            self.clients.append_value(r.client);
            self.endpoints.append_value(r.endpoint);
        }
    }

    /// `id` and `label` (taken from the frame's rows, as they are), `ts`, `client`,
    /// `endpoint`.
    fn columns(&mut self, df: &DataFrame) -> Result<Vec<Column>> {
        let mut cols: Vec<Column> = Vec::new();
        for name in ["id", "label"] {
            if let Some(s) = column(df, name) {
                cols.push(s.take_slice(&self.rows)?.into());
            }
        }
        cols.push(datetime_ms("ts", std::mem::take(&mut self.ts)));
        let n = self.rows.len();
        for (name, b) in [
            ("client", &mut self.clients),
            ("endpoint", &mut self.endpoints),
        ] {
            let b = std::mem::replace(b, StringChunkedBuilder::new(name.into(), 0));
            cols.push(b.finish().into_series().into());
        }
        debug_assert!(cols.iter().all(|c| c.len() == n));
        Ok(cols)
    }
}

/// A session whose engine runs on all the machine's cores (the records do not depend on
/// their number).
fn session_for<S: BorrowMut<Scorer>>(
    cfg: &Config,
    scorer: Option<S>,
    opts: SessionOptions,
) -> Result<Session<S>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    Ok(Session::new(
        FeatureEngine::with_threads(cfg, threads)?,
        scorer,
        opts,
    ))
}

/// Runs the session over the frame's events in event-time order (rows sorted by `ts`, ties
/// in row order, so no event is late) and hands each output batch to `each`; the first error
/// `each` returns stops the run.
///
/// Rows become events one at a time, as the session takes them: a row that is not an event
/// is the error (rows without a valid time first, then the first bad row in time order).
fn run<S: BorrowMut<Scorer>>(
    session: &mut Session<S>,
    df: &DataFrame,
    mut each: impl FnMut(&Output) -> Result<()>,
) -> Result<()> {
    let mut batch = Output::default();
    let mut deliver = |session: &mut Session<S>, all: bool| -> Result<()> {
        if session.is_full() || all && session.has_output() {
            session
                .take_into(&mut batch)
                .map_err(|e| FrameError::Invalid {
                    row: 0,
                    reason: e.to_string(),
                })?;
            // Events in time order are never late: nothing else is rejected.
            debug_assert!(batch.rejections().is_empty());
            each(&batch)?;
        }
        Ok(())
    };
    for_each_event_in_time_order(df, false, |row, e| {
        session.push(Position::row(row as u64), e?);
        deliver(session, false)
    })?;
    session.finish();
    deliver(session, true)
}

/// Every event scored by `scorer` (its features computed as in [`features_frame`], scored
/// in batches of `batch` as they come out of the engine): one row per event in time order
/// with the columns of [`gatewatch_pipeline::schema::score_columns`]: `id`/`label` (when
/// present), `ts`, `client`, `endpoint`, `score`, one `score_<member>` column per detector,
/// `flagged`, and the deciding member's reasons as `reasons` (a JSON array of `{detector,
/// feature, value, baseline, contribution}`, the same objects `gatewatch score` writes).
pub fn scores_frame(
    cfg: &Config,
    scorer: &mut Scorer,
    df: &DataFrame,
    reasons: usize,
    batch: usize,
) -> Result<DataFrame> {
    let members: Vec<String> = scorer.members.iter().map(|m| m.name.clone()).collect();
    let value_names = gatewatch_pipeline::schema::score_value_columns(scorer);
    let mut session = session_for(cfg, Some(scorer), SessionOptions { batch, reasons })?;
    let k = members.len();
    let mut score = Vec::new();
    let mut member: Vec<Vec<f64>> = vec![Vec::new(); k];
    let mut flagged = Vec::new();
    let mut why = Vec::new();
    let mut keys = Keys::with_capacity(df.height());
    run(&mut session, df, |out| {
        keys.add(out);
        let s = out.scores().expect("a session with a model scores");
        score.extend_from_slice(&s.score);
        flagged.extend_from_slice(&s.flagged);
        append_columns(&mut member, &s.member, k);
        for (i, rs) in s.reasons.iter().enumerate() {
            let mut text = String::new();
            gatewatch_pipeline::write_reasons_json(&mut text, &members[s.decided_by[i]], rs);
            why.push(text);
        }
        Ok(())
    })?;
    let n = keys.rows.len();
    let mut keep = keys.columns(df)?;
    let values = std::iter::once(score).chain(member);
    for (name, v) in value_names.iter().zip(values) {
        keep.push(Column::new(name.as_str().into(), v));
    }
    keep.push(Column::new("flagged".into(), flagged));
    keep.push(Column::new("reasons".into(), why));
    Ok(DataFrame::new(n, keep)?)
}

/// Scores of the frame's events through the service's own path: the events written as
/// NDJSON lines and read back by the line reader of `gatewatch score`, scored in batches of
/// `batch`. One score per event, in the order the service emits them (event time, ties in
/// row order); lines the service rejects are counted in the second value.
pub fn service_scores(
    cfg: &Config,
    scorer: &mut Scorer,
    df: &DataFrame,
    batch: usize,
) -> Result<(Vec<f64>, u64)> {
    let events = frame_to_events(df)?;
    let mut text = String::new();
    for e in &events {
        gatewatch_event::write_ndjson(e, &mut text);
    }
    let mut session = session_for(cfg, Some(scorer), SessionOptions { batch, reasons: 0 })?;
    let mut reader = gatewatch_pipeline::LineReader::new(gatewatch_features::Format::Ndjson);
    let mut scores = Vec::with_capacity(events.len());
    let mut rejected = 0u64;
    let mut batch = Output::default();
    let mut take = |session: &mut Session<&mut Scorer>, scores: &mut Vec<f64>| -> Result<()> {
        session
            .take_into(&mut batch)
            .map_err(|e| FrameError::Invalid {
                row: 0,
                reason: e.to_string(),
            })?;
        rejected += batch.rejections().len() as u64;
        scores.extend_from_slice(&batch.scores().expect("scored").score);
        Ok(())
    };
    for line in text.as_bytes().split_inclusive(|b| *b == b'\n') {
        reader.feed(&mut session, line);
        if session.is_full() {
            take(&mut session, &mut scores)?;
        }
    }
    reader.finish(&mut session);
    take(&mut session, &mut scores)?;
    Ok((scores, rejected))
}

/// The per-client peaks the volumetric detector is fitted on, from a features frame such
/// as [`features_frame`] returns (its `endpoint`, `client` and `endpoint_count_1m` columns,
/// rows in event-time order), as `gatewatch train` collects them from its records.
pub fn collect_peaks(
    registry: &gatewatch_features::Registry,
    df: &DataFrame,
    peaks: &mut gatewatch_models::PeakCollector,
) -> Result<()> {
    let feature = gatewatch_models::volumetric::FEATURE;
    if registry.index_of(feature).is_none() {
        return Err(FrameError::Missing {
            column: feature.to_string(),
        });
    }
    let endpoints = strings(required(df, "endpoint")?, "text")?;
    let clients = strings(required(df, "client")?, "text")?;
    let counts = floats(required(df, feature)?)?;
    for (row, ((e, c), n)) in endpoints.iter().zip(&clients).zip(&counts).enumerate() {
        let (Some(e), Some(c), Some(n)) = (e, c, n) else {
            let column = if e.is_none() {
                "endpoint"
            } else if c.is_none() {
                "client"
            } else {
                feature
            };
            return Err(FrameError::Null {
                column: column.to_string(),
                row,
            });
        };
        peaks.add(e, c, *n);
    }
    Ok(())
}

/// Feature rows (registry order) from a features frame, such as [`features_frame`] returns.
pub fn feature_rows(registry: &gatewatch_features::Registry, df: &DataFrame) -> Result<Vec<f64>> {
    let names: Vec<&str> = registry.names().collect();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| df.column(n).is_err())
        .collect();
    if !missing.is_empty() {
        return Err(FrameError::Missing {
            column: missing.join(", "),
        });
    }
    let cols: Vec<Vec<Option<f64>>> = names
        .iter()
        .map(|n| floats(df.column(n).expect("checked").as_materialized_series()))
        .collect::<Result<_>>()?;
    let mut rows = Vec::with_capacity(df.height() * names.len());
    for r in 0..df.height() {
        for (k, c) in cols.iter().enumerate() {
            rows.push(c[r].ok_or_else(|| FrameError::Null {
                column: names[k].to_string(),
                row: r,
            })?);
        }
    }
    Ok(rows)
}
