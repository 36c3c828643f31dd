//! Tables (feature `tables`): Parquet / CSV logs read into the engine, and records written
//! as tables with the columns of `gatewatch_frames`'s feature and score frames, in batches.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gatewatch_event::FileFormat;
use gatewatch_event::RequestEvent;
use gatewatch_frames::{TableWriter, unquote};
use gatewatch_models::Reason;
use gatewatch_pipeline::{Position, RecordRef, Session};
use polars::prelude::*;

use crate::OutputArgs;
use crate::pipeline::Consumed;

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
    kind: FileFormat,
    maps: &[(String, String)],
) -> Result<TableSource> {
    let df = gatewatch_frames::scan_log(&path, kind, maps)?;
    Ok(TableSource { df, path })
}

/// Checks a table's rows one by one (a bad row is rejected, naming its row and field) and
/// puts the events into the session in event-time order (ties in row order), calling
/// `deliver` after each.
pub fn drive(
    t: TableSource,
    session: &mut Session,
    deliver: &mut impl FnMut(&mut Session) -> Result<()>,
) -> Result<Consumed> {
    let n = t.df.height() as u64;
    gatewatch_frames::for_each_event_in_time_order(&t.df, true, |row, e| -> Result<()> {
        match e {
            Ok(e) => session.push(Position::row(row as u64), e),
            Err(e) => session.reject(Position::row(e.row as u64), e.error),
        }
        deliver(session)
    })
    .with_context(|| format!("{}", t.path.display()))?;
    session.finish();
    Ok(Consumed {
        units: n,
        blank: 0,
        rows: true,
    })
}

/// Writes simulated events as a table when `path` names one (`.parquet`, `.csv`; CSV gets
/// `headers.NAME` columns); false when it does not.
pub fn write_events(events: &[RequestEvent], path: Option<&Path>) -> Result<bool> {
    let Some((path, kind)) = path.and_then(|p| FileFormat::table_from_extension(p).map(|k| (p, k)))
    else {
        return Ok(false);
    };
    let mut df = gatewatch_frames::events_to_frame(events)?;
    if kind == FileFormat::Csv {
        df = gatewatch_frames::flatten_headers(df)?;
    }
    gatewatch_frames::write_table(&mut df, path, kind)
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
    Table(PathBuf, FileFormat),
}

/// The output format: `--output-format`, else the output file's extension.
pub fn sink(a: &OutputArgs) -> Result<Sink> {
    match crate::pipeline::output_table(a)? {
        None => Ok(Sink::Lines),
        Some((p, kind)) => Ok(Sink::Table(p, kind)),
    }
}

/// How the `id` column is typed: decided on the first batch (integers when every id there
/// is one).
#[derive(Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Int,
    Text,
}

/// The columns a table has besides the fixed ones, decided on its first batch.
#[derive(Clone, Copy)]
struct Layout {
    id: Option<IdKind>,
    label: bool,
}

/// Records not yet written: key columns, values row-major (moved into columns when a batch
/// is written), flags and reasons.
pub struct TableOut {
    path: PathBuf,
    format: FileFormat,
    writer: Option<TableWriter>,
    layout: Option<Layout>,
    ids: Vec<Option<Box<str>>>,
    labels: Vec<Option<String>>,
    ts: Vec<i64>,
    clients: StringChunkedBuilder,
    endpoints: StringChunkedBuilder,
    value_names: Vec<String>,
    values: Vec<f64>,
    with_flags: bool,
    flagged: Vec<bool>,
    reasons: Vec<String>,
    /// Rows written before this batch.
    written: usize,
}

impl TableOut {
    /// A table of the key columns, then `value_names` (Float64), then (`with_flags`)
    /// `flagged` and `reasons`.
    pub fn new(
        path: PathBuf,
        format: FileFormat,
        value_names: Vec<String>,
        with_flags: bool,
    ) -> Self {
        Self {
            path,
            format,
            writer: None,
            layout: None,
            ids: Vec::new(),
            labels: Vec::new(),
            ts: Vec::new(),
            clients: StringChunkedBuilder::new("client".into(), BATCH_ROWS),
            endpoints: StringChunkedBuilder::new("endpoint".into(), BATCH_ROWS),
            values: Vec::with_capacity(BATCH_ROWS * value_names.len()),
            value_names,
            with_flags,
            flagged: Vec::new(),
            reasons: Vec::new(),
            written: 0,
        }
    }

    /// The identifying columns of a record (`id` and `label` from the event's JSON text).
    pub fn push_key(&mut self, r: &RecordRef<'_>) {
        self.ids.push(r.id.map(Box::from));
        self.labels.push(r.label.map(unquote));
        self.ts.push(r.ts_ms);
        self.clients.append_value(r.client);
        self.endpoints.append_value(r.endpoint);
    }

    /// Values of the current record, in `value_names` order (in one call or several).
    pub fn push_values(&mut self, values: &[f64]) {
        self.values.extend_from_slice(values);
    }

    /// The flag of one record and the reasons of the detector that decided it.
    pub fn push_flag(&mut self, flagged: bool, detector: &str, reasons: &[Reason]) {
        self.flagged.push(flagged);
        let mut text = String::new();
        gatewatch_pipeline::write_reasons_json(&mut text, detector, reasons);
        self.reasons.push(text);
    }

    /// Writes the pending rows when a batch is full.
    pub fn maybe_flush(&mut self) -> Result<()> {
        if self.ts.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn id_column(&self, kind: IdKind, ids: &[Option<Box<str>>]) -> Result<Column> {
        Ok(match kind {
            IdKind::Int => {
                let mut v: Vec<Option<i64>> = Vec::with_capacity(ids.len());
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
                Column::new("id".into(), v)
            }
            IdKind::Text => {
                let v: Vec<Option<String>> =
                    ids.iter().map(|x| x.as_deref().map(unquote)).collect();
                Column::new("id".into(), v)
            }
        })
    }

    fn frame(&mut self) -> Result<DataFrame> {
        let n = self.ts.len();
        let layout = *self.layout.get_or_insert_with(|| {
            let mut ids = self.ids.iter().flatten().peekable();
            let id = ids.peek().is_some().then(|| {
                if ids.all(|v| v.parse::<i64>().is_ok()) {
                    IdKind::Int
                } else {
                    IdKind::Text
                }
            });
            Layout {
                id,
                label: self.labels.iter().any(Option::is_some),
            }
        });
        let mut cols: Vec<Column> = Vec::with_capacity(8 + self.value_names.len());
        let ids = std::mem::take(&mut self.ids);
        if let Some(kind) = layout.id {
            cols.push(self.id_column(kind, &ids)?);
        }
        let labels = std::mem::take(&mut self.labels);
        if layout.label {
            cols.push(Column::new("label".into(), labels));
        }
        cols.push(gatewatch_frames::datetime_ms(
            "ts",
            std::mem::take(&mut self.ts),
        ));
        for (name, b) in [
            ("client", &mut self.clients),
            ("endpoint", &mut self.endpoints),
        ] {
            let b = std::mem::replace(b, StringChunkedBuilder::new(name.into(), BATCH_ROWS));
            cols.push(b.finish().into_series().into());
        }
        let width = self.value_names.len();
        let mut values: Vec<Vec<f64>> = (0..width).map(|_| Vec::with_capacity(n)).collect();
        for block in self.values.chunks(1024 * width.max(1)) {
            gatewatch_frames::append_columns(&mut values, block, width);
        }
        self.values.clear();
        for (name, v) in self.value_names.iter().zip(values) {
            cols.push(Column::new(name.as_str().into(), v));
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
        let writer = match &mut self.writer {
            Some(w) => w,
            None => self
                .writer
                .insert(TableWriter::create(&self.path, self.format, df.schema())?),
        };
        writer.write(&mut df)?;
        self.written += df.height();
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
