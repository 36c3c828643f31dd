//! Request logs read from Parquet, CSV and NDJSON files with lazy scans, and tables written
//! to Parquet and CSV files in batches (feature `io`).

use std::fs::File;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use polars::io::csv::write::{BatchedWriter as CsvBatched, CsvWriter};
use polars::io::parquet::write::{BatchedWriter as ParquetBatched, ParquetWriter};
use polars::prelude::*;

use gatewatch_event::FileFormat;

use crate::{FrameError, Result, is_event_column};

/// Rows read to infer a CSV or NDJSON file's column types.
const INFER_ROWS: usize = 10_000;

fn file_error(path: &Path, e: impl std::fmt::Display) -> FrameError {
    FrameError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A request log file as an events frame: a lazy scan of `path` in `format`, the file's
/// columns renamed by `renames` (`(file column, event field)` pairs), only the event
/// schema's columns read ([`crate::EVENT_COLUMNS`] and `headers.NAME`), in file order. A
/// rename to a name that is not an event field is refused. Rows are not validated here:
/// [`crate::for_each_event_in_time_order`] does that row by row, in event-time order.
pub fn scan_log(
    path: &Path,
    format: FileFormat,
    renames: &[(String, String)],
) -> Result<DataFrame> {
    if !path.is_file() {
        return Err(file_error(path, "no such file"));
    }
    let text = path
        .to_str()
        .ok_or_else(|| file_error(path, "the path is not valid UTF-8"))?;
    let src = PlRefPath::new(text);
    let mut lf = match format {
        FileFormat::Parquet => LazyFrame::scan_parquet(src, ScanArgsParquet::default()),
        FileFormat::Csv => LazyCsvReader::new(src)
            .with_has_header(true)
            .with_infer_schema_length(Some(INFER_ROWS))
            .finish(),
        FileFormat::Ndjson => LazyJsonLineReader::new(src)
            .with_infer_schema_length(NonZeroUsize::new(INFER_ROWS))
            .finish(),
        FileFormat::Combined => {
            return Err(file_error(
                path,
                "access-log lines are read line by line (the CLI's --format combined), not as a table",
            ));
        }
    }
    .map_err(|e| file_error(path, e))?;
    let schema = lf.collect_schema().map_err(|e| file_error(path, e))?;
    let mut names: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
    let mut from = Vec::new();
    let mut to = Vec::new();
    for (f, t) in renames {
        if !is_event_column(t) {
            return Err(FrameError::Mapping {
                path: path.to_path_buf(),
                reason: format!(
                    "{f}={t}: {t:?} is not an event field (fields: {}, or headers.NAME)",
                    crate::EVENT_COLUMNS.join(", ")
                ),
            });
        }
        let Some(i) = names.iter().position(|n| n == f) else {
            return Err(FrameError::Mapping {
                path: path.to_path_buf(),
                reason: format!(
                    "column {f:?} (to be read as {t:?}) is not in the file; its columns: {}",
                    names.join(", ")
                ),
            });
        };
        names[i].clone_from(t);
        from.push(f.clone());
        to.push(t.clone());
    }
    if !from.is_empty() {
        lf = lf.rename(from, to, true);
    }
    let mut seen = std::collections::HashSet::new();
    let keep: Vec<Expr> = names
        .iter()
        .filter(|n| is_event_column(n))
        .map(|n| {
            if seen.insert(n.clone()) {
                Ok(col(n.as_str()))
            } else {
                Err(FrameError::Mapping {
                    path: path.to_path_buf(),
                    reason: format!("two columns would be read as {n:?}"),
                })
            }
        })
        .collect::<Result<_>>()?;
    lf.select(keep).collect().map_err(|e| file_error(path, e))
}

enum Inner {
    Parquet(Box<ParquetBatched<File>>),
    Csv(CsvBatched<File>),
}

/// Writes a table to a Parquet or CSV file in batches (one row group per batch for
/// Parquet), so that a run's output need not be held in memory whole.
pub struct TableWriter {
    inner: Inner,
    path: PathBuf,
    rows: u64,
}

impl TableWriter {
    /// A writer of tables with `schema` to a new file at `path`.
    pub fn create(path: &Path, format: FileFormat, schema: &Schema) -> Result<Self> {
        // Both writers serialise whole pages / blocks of rows per write: no buffer needed.
        let w = File::create(path).map_err(|e| file_error(path, format!("cannot create: {e}")))?;
        let inner = match format {
            FileFormat::Parquet => Inner::Parquet(Box::new(
                ParquetWriter::new(w)
                    .batched(schema)
                    .map_err(|e| file_error(path, e))?,
            )),
            FileFormat::Csv => Inner::Csv(
                CsvWriter::new(w)
                    .include_header(true)
                    // RFC 3339 (`+00:00`), which every gatewatch reader takes.
                    .with_datetime_format(Some("%Y-%m-%dT%H:%M:%S%.3f%:z".into()))
                    .batched(schema)
                    .map_err(|e| file_error(path, e))?,
            ),
            FileFormat::Ndjson | FileFormat::Combined => {
                return Err(file_error(
                    path,
                    format!("{format} records are written line by line, not by the table writer"),
                ));
            }
        };
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            rows: 0,
        })
    }

    /// Appends a batch of rows (the schema given at creation).
    pub fn write(&mut self, df: &mut DataFrame) -> Result<()> {
        if df.height() == 0 {
            return Ok(());
        }
        df.align_chunks();
        let r = match &mut self.inner {
            Inner::Parquet(w) => w.write_batch(df),
            Inner::Csv(w) => w.write_batch(df),
        };
        r.map_err(|e| file_error(&self.path, e))?;
        self.rows += df.height() as u64;
        Ok(())
    }

    /// Ends the file (Parquet footer; a CSV header when nothing was written).
    pub fn finish(self) -> Result<u64> {
        let path = self.path;
        match self.inner {
            Inner::Parquet(w) => {
                w.finish().map_err(|e| file_error(&path, e))?;
            }
            Inner::Csv(mut w) => w.finish().map_err(|e| file_error(&path, e))?,
        }
        Ok(self.rows)
    }
}

/// Writes a whole frame as a Parquet or CSV file.
pub fn write_table(df: &mut DataFrame, path: &Path, format: FileFormat) -> Result<u64> {
    let mut w = TableWriter::create(path, format, df.schema())?;
    w.write(df)?;
    w.finish()
}
