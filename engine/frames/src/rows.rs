//! DataFrames of events read row by row: the columns checked once, each row validated into
//! an event (or the reason it is not one, naming its row and field), in event-time order.

use gatewatch_event::{EventFields, ParseError, RequestEvent, parse_rfc3339_ms};
use polars::prelude::*;

use crate::{FrameError, Result};

pub(crate) fn column<'a>(df: &'a DataFrame, name: &str) -> Option<&'a Series> {
    df.column(name).ok().map(Column::as_materialized_series)
}

pub(crate) fn required<'a>(df: &'a DataFrame, name: &str) -> Result<&'a Series> {
    column(df, name).ok_or_else(|| FrameError::Missing {
        column: name.to_string(),
    })
}

pub(crate) fn strings<'a>(s: &'a Series, expected: &'static str) -> Result<Vec<Option<&'a str>>> {
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

pub(crate) fn ints(s: &Series, expected: &'static str) -> Result<Vec<Option<i64>>> {
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

pub(crate) fn floats(s: &Series) -> Result<Vec<Option<f64>>> {
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
pub(crate) fn times(s: &Series) -> Result<Vec<Option<std::result::Result<i64, String>>>> {
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

pub(crate) fn opt_strings<'a>(
    df: &'a DataFrame,
    name: &str,
) -> Result<Option<Vec<Option<&'a str>>>> {
    column(df, name).map(|s| strings(s, "text")).transpose()
}

/// Session ids and ASNs may be text or integers.
pub(crate) fn text_or_int(df: &DataFrame, name: &str) -> Result<Option<Vec<Option<String>>>> {
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
pub(crate) const NULL: &str = "null";

pub(crate) fn null(column: &str) -> ParseError {
    ParseError {
        field: Some(column.to_string()),
        reason: NULL.into(),
    }
}

pub(crate) fn need<T>(v: Option<T>, column: &str) -> std::result::Result<T, ParseError> {
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
pub(crate) fn header_fields(df: &DataFrame) -> Result<Vec<Series>> {
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
pub(crate) struct Rows<'a> {
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
pub(crate) fn json_texts(df: &DataFrame, name: &str) -> Result<Option<Vec<Option<String>>>> {
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

pub(crate) struct FrameColumns<'a> {
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
