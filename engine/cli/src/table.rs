//! Tables (feature `tables`): Parquet / CSV logs read into the engine, and records written
//! as tables with the columns of `gatewatch_frames`'s feature and score frames, in batches.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gatewatch_event::RequestEvent;
use gatewatch_features::{FeatureEngine, Record, Rejection};
use gatewatch_frames::{TableFormat, TableWriter};
use polars::prelude::*;

use crate::OutputArgs;
use crate::pipeline::{Consumed, Rejects, TableKind, table_extension};

fn format_of(kind: TableKind) -> TableFormat {
    match kind {
        TableKind::Parquet => TableFormat::Parquet,
        TableKind::Csv => TableFormat::Csv,
    }
}

/// A table file's event columns, read.
pub struct TableSource {
    df: DataFrame,
    path: PathBuf,
}

impl TableSource {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads the event columns of a table file (a lazy scan), the file's columns renamed by
/// `maps` (`(file column, event field)`).
pub fn read_source(
    path: PathBuf,
    kind: TableKind,
    maps: &[(String, String)],
) -> Result<TableSource> {
    for (m, to) in maps {
        if !gatewatch_frames::EVENT_COLUMNS.contains(&to.as_str()) && !to.starts_with("headers.") {
            bail!(
                "--map {m}={to}: {to:?} is not an event field (fields: {}, or headers.NAME)",
                gatewatch_frames::EVENT_COLUMNS.join(", ")
            );
        }
    }
    let df = gatewatch_frames::scan_log(&path, format_of(kind), maps)?;
    Ok(TableSource { df, path })
}

/// Checks a table's rows one by one (a bad row is rejected, naming its row and field) and
/// puts the events into the engine in event-time order (ties in row order).
pub fn drive(
    t: TableSource,
    engine: &mut FeatureEngine,
    sink: &mut impl FnMut(&Record<'_>),
    rejects: &mut Rejects,
) -> Result<Consumed> {
    let n = t.df.height() as u64;
    gatewatch_frames::for_each_event_in_time_order(&t.df, true, |row, e| {
        match e {
            Ok(e) => {
                if let Err(late) = engine.push(e, row as u64, sink) {
                    rejects.report(&Rejection::LateRow(late));
                }
            }
            Err(e) => rejects.report(&Rejection::Row {
                row: e.row as u64,
                error: e.error,
            }),
        }
        Ok(())
    })
    .with_context(|| format!("{}", t.path.display()))?;
    engine.finish(sink);
    Ok(Consumed {
        units: n,
        blank: 0,
        rows: true,
    })
}

/// Writes simulated events as a table when `path` names one (`.parquet`, `.csv`; CSV gets
/// `headers.NAME` columns); false when it does not.
pub fn write_events(events: &[RequestEvent], path: Option<&Path>) -> Result<bool> {
    let Some((path, kind)) = path.and_then(|p| table_extension(p).map(|k| (p, k))) else {
        return Ok(false);
    };
    let mut df = gatewatch_frames::events_to_frame(events)?;
    if kind == TableKind::Csv {
        df = gatewatch_frames::flatten_headers(df)?;
    }
    gatewatch_frames::write_table(&mut df, path, format_of(kind))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// Rows per written batch (a Parquet row group).
pub const BATCH_ROWS: usize = 65_536;

/// Where records go: NDJSON lines (a file or standard output) or a table file.
pub enum Sink {
    /// NDJSON records.
    Lines,
    /// A table file.
    Table(PathBuf, TableFormat),
}

/// The output format: `--output-format`, else the output file's extension.
pub fn sink(a: &OutputArgs) -> Result<Sink> {
    match crate::pipeline::output_table(a)? {
        None => Ok(Sink::Lines),
        Some((p, kind)) => Ok(Sink::Table(p, format_of(kind))),
    }
}

/// How the `id` column is typed: decided on the first batch (integers when every id there
/// is one).
#[derive(Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Int,
    Text,
}

/// Columns of records not yet written.
pub struct TableOut {
    path: PathBuf,
    format: TableFormat,
    writer: Option<TableWriter>,
    /// Decided on the first batch: whether to have `id` (and its type) and `label`.
    id: Option<Option<IdKind>>,
    has_label: bool,
    ids: Vec<Option<Box<str>>>,
    labels: Vec<Option<String>>,
    ts: Vec<i64>,
    clients: Vec<String>,
    endpoints: Vec<String>,
    float_names: Vec<String>,
    /// One vector per float column.
    pub floats: Vec<Vec<f64>>,
    with_flags: bool,
    flagged: Vec<bool>,
    reasons: Vec<String>,
    /// Rows written before this batch.
    written: usize,
}

impl TableOut {
    /// A table of the key columns, then `float_names`, then (`with_flags`) `flagged` and
    /// `reasons`.
    pub fn new(
        path: PathBuf,
        format: TableFormat,
        float_names: Vec<String>,
        with_flags: bool,
    ) -> Self {
        let floats = vec![Vec::new(); float_names.len()];
        Self {
            path,
            format,
            writer: None,
            id: None,
            has_label: false,
            ids: Vec::new(),
            labels: Vec::new(),
            ts: Vec::new(),
            clients: Vec::new(),
            endpoints: Vec::new(),
            float_names,
            floats,
            with_flags,
            flagged: Vec::new(),
            reasons: Vec::new(),
            written: 0,
        }
    }

    /// The identifying columns of one record (`id` and `label` as the event's JSON text).
    pub fn push_key(
        &mut self,
        id: Option<&str>,
        label: Option<&str>,
        ts_ms: i64,
        client: &str,
        endpoint: &str,
    ) {
        self.ids.push(id.map(Box::from));
        self.labels.push(label.map(unquote));
        self.ts.push(ts_ms);
        self.clients.push(client.to_string());
        self.endpoints.push(endpoint.to_string());
    }

    /// The flag and reasons (JSON text) of one record.
    pub fn push_flag(&mut self, flagged: bool, reasons: String) {
        self.flagged.push(flagged);
        self.reasons.push(reasons);
    }

    /// Writes the pending rows when a batch is full.
    pub fn maybe_flush(&mut self) -> Result<()> {
        if self.ts.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn frame(&mut self) -> Result<DataFrame> {
        let n = self.ts.len();
        let id = *self.id.get_or_insert_with(|| {
            let mut any = false;
            let mut ints = true;
            for v in self.ids.iter().flatten() {
                any = true;
                ints &= v.parse::<i64>().is_ok();
            }
            any.then_some(if ints { IdKind::Int } else { IdKind::Text })
        });
        if self.written == 0 && self.writer.is_none() {
            self.has_label = self.labels.iter().any(Option::is_some);
        }
        let mut cols: Vec<Column> = Vec::with_capacity(8 + self.floats.len());
        let ids = std::mem::take(&mut self.ids);
        match id {
            None => {}
            Some(IdKind::Int) => {
                let mut v: Vec<Option<i64>> = Vec::with_capacity(n);
                for (i, x) in ids.iter().enumerate() {
                    v.push(match x {
                        None => None,
                        Some(t) => Some(t.parse::<i64>().with_context(|| {
                            format!(
                                "{}: record {}: id {t} is not an integer, as the ids of the first batch were (the id column is Int64)",
                                self.path.display(),
                                self.written + i
                            )
                        })?),
                    });
                }
                cols.push(Column::new("id".into(), v));
            }
            Some(IdKind::Text) => {
                let v: Vec<Option<String>> =
                    ids.iter().map(|x| x.as_deref().map(unquote)).collect();
                cols.push(Column::new("id".into(), v));
            }
        }
        let labels = std::mem::take(&mut self.labels);
        if self.has_label {
            cols.push(Column::new("label".into(), labels));
        }
        cols.push(
            Int64Chunked::from_vec("ts".into(), std::mem::take(&mut self.ts))
                .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
                .into_series()
                .into(),
        );
        cols.push(Column::new(
            "client".into(),
            std::mem::take(&mut self.clients),
        ));
        cols.push(Column::new(
            "endpoint".into(),
            std::mem::take(&mut self.endpoints),
        ));
        for (name, v) in self.float_names.iter().zip(self.floats.iter_mut()) {
            cols.push(Column::new(name.as_str().into(), std::mem::take(v)));
        }
        if self.with_flags {
            cols.push(Column::new(
                "flagged".into(),
                std::mem::take(&mut self.flagged),
            ));
            cols.push(Column::new(
                "reasons".into(),
                std::mem::take(&mut self.reasons),
            ));
        }
        Ok(DataFrame::new(n, cols)?)
    }

    fn flush(&mut self) -> Result<()> {
        let mut df = self.frame()?;
        if self.writer.is_none() {
            self.writer = Some(TableWriter::create(&self.path, self.format, df.schema())?);
        }
        let n = df.height();
        self.writer
            .as_mut()
            .expect("created above")
            .write(&mut df)?;
        self.written += n;
        Ok(())
    }

    /// Writes the last rows and ends the file; returns the rows written.
    pub fn finish(mut self) -> Result<u64> {
        if !self.ts.is_empty() || self.writer.is_none() {
            self.flush()?;
        }
        Ok(self.writer.take().expect("flushed above").finish()?)
    }
}

/// The text of a JSON string literal (`"normal"` → `normal`); other JSON as it is.
fn unquote(raw: &str) -> String {
    match serde_json::from_str::<String>(raw) {
        Ok(s) => s,
        Err(_) => raw.to_string(),
    }
}
