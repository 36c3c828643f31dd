//! The read → engine loop shared by the verbs, and the reporting of rejected lines.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gatewatch_config::Settings;
use gatewatch_event::{FileFormat, ParseError, RequestEvent};
use gatewatch_features::{Format, Line};
use gatewatch_pipeline::{LineReader, Output, Position, Rejection, RejectionRecord, Session};

use crate::InputArgs;
use crate::table::TableSource;

/// Where events come from: lines (NDJSON, access log) read as a stream, or a table file
/// (Parquet, CSV) read whole with a lazy scan of the event columns.
pub enum Source {
    /// A byte stream of lines, with its size when known.
    Lines {
        input: Box<dyn Read + Send>,
        size: Option<u64>,
        format: Format,
    },
    /// A table file's event columns.
    Table(TableSource),
}

impl Source {
    /// Bytes to read, when known (for a progress bar).
    pub fn size(&self) -> Option<u64> {
        match self {
            Source::Lines { size, .. } => *size,
            Source::Table(_) => None,
        }
    }

    /// The line format (parse-only benchmarks).
    pub fn into_lines(self) -> Result<(Box<dyn Read + Send>, Format)> {
        match self {
            Source::Lines { input, format, .. } => Ok((input, format)),
            Source::Table(t) => {
                bail!(
                    "{}: --parse-only reads line formats only",
                    t.path().display()
                )
            }
        }
    }
}

/// The input format: `--format`, else the input file's extension (`.parquet`, `.pq`,
/// `.csv`; anything else is NDJSON).
fn input_format(a: &InputArgs) -> FileFormat {
    if let Some(f) = a.format {
        return f;
    }
    a.input
        .as_deref()
        .and_then(FileFormat::table_from_extension)
        .unwrap_or(FileFormat::Ndjson)
}

/// The table file records go to: `--output-format`, else the output file's extension; none
/// for NDJSON.
pub fn output_table(a: &crate::OutputArgs) -> Result<Option<(PathBuf, FileFormat)>> {
    let path = a.output.as_deref().filter(|p| *p != Path::new("-"));
    let kind = match a.output_format {
        Some(FileFormat::Ndjson) => None,
        Some(FileFormat::Combined) => {
            bail!(
                "--output-format combined: access-log lines are an input format; records are written as ndjson, parquet or csv"
            )
        }
        Some(table) => Some(table),
        None => path.and_then(FileFormat::table_from_extension),
    };
    match (kind, path) {
        (None, _) => Ok(None),
        (Some(k), Some(p)) => Ok(Some((p.to_path_buf(), k))),
        (Some(k), None) => bail!(
            "--output-format {k}: a table is written to a file (--output FILE), not standard output"
        ),
    }
}

/// `--map COLUMN=FIELD` pairs.
fn renames(maps: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for m in maps.iter().flat_map(|m| m.split(',')) {
        let Some((from, to)) = m.split_once('=') else {
            bail!("--map {m:?}: expected COLUMN=FIELD (a file column read as an event field)");
        };
        let (from, to) = (from.trim(), to.trim());
        out.push((from.to_string(), to.to_string()));
    }
    Ok(out)
}

/// The configuration file named by `--config`, or the defaults.
pub fn settings(config: Option<&Path>) -> Result<Settings> {
    Ok(match config {
        Some(p) => Settings::load(p)?,
        None => Settings::default(),
    })
}

/// The configuration (`--config`, or the defaults) and the input it says how to read.
pub fn setup(a: &InputArgs) -> Result<(Settings, Source)> {
    let settings = settings(a.config.as_deref())?;
    let cfg = &settings.engine;
    let format = input_format(a);
    let maps = renames(&a.map)?;
    let source = if format.is_lines() {
        if !maps.is_empty() {
            bail!("--map applies to Parquet and CSV inputs, not to line formats");
        }
        let (input, size) = crate::io::open_input(&a.input)?;
        let format = match format {
            FileFormat::Combined => Format::Combined(cfg.input.combined.clone()),
            _ => Format::Ndjson,
        };
        Source::Lines {
            input,
            size,
            format,
        }
    } else {
        let Some(path) = a.input.clone().filter(|p| p != Path::new("-")) else {
            bail!(
                "--format {format}: a table is read from a file (--input FILE), not standard input"
            );
        };
        Source::Table(crate::table::read_source(path, format, &maps)?)
    };
    Ok((settings, source))
}

/// What was read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Consumed {
    /// Lines (or rows) read.
    pub units: u64,
    /// Blank lines skipped.
    pub blank: u64,
    /// Whether the units are table rows.
    pub rows: bool,
}

impl Consumed {
    /// "lines" or "rows".
    pub fn unit(&self) -> &'static str {
        if self.rows { "rows" } else { "lines" }
    }
}

/// Distinct labels a summary keeps apart; events of further labels share [`OTHER_LABELS`].
pub const MAX_LABELS: usize = 256;
/// The summary row of labels beyond [`MAX_LABELS`].
pub const OTHER_LABELS: &str = "(other labels)";

/// The summary entry of `label`, created by `new`; beyond [`MAX_LABELS`] labels, new ones
/// share the [`OTHER_LABELS`] entry, so a summary's memory does not grow with the input.
pub fn label_entry<'a, V>(
    map: &'a mut BTreeMap<String, V>,
    label: &str,
    new: impl FnOnce() -> V,
) -> &'a mut V {
    let key = if map.len() < MAX_LABELS || map.contains_key(label) {
        label
    } else {
        OTHER_LABELS
    };
    if !map.contains_key(key) {
        map.insert(key.to_string(), new());
    }
    map.get_mut(key).expect("inserted above")
}

/// A distinct count for a summary column: `≈N` once it is an estimate.
pub fn distinct(d: &gatewatch_features::DistinctCount) -> String {
    if d.is_exact() {
        d.count().to_string()
    } else {
        format!("≈{}", d.count())
    }
}

/// Rejected inputs printed in full on standard error (all go to `--rejects`).
const SHOWN_REJECTS: usize = 10;

/// Counts rejected inputs by category, prints the first ones and writes all to a file (the
/// schema's rejection records).
pub struct Rejects {
    /// Count per category.
    pub counts: BTreeMap<String, u64>,
    shown: usize,
    file: Option<crate::io::Named<BufWriter<File>>>,
    /// The first failed write to the file.
    failed: Option<std::io::Error>,
}

impl Rejects {
    /// Reports to standard error, and to `path` as NDJSON when given.
    pub fn new(path: Option<&Path>) -> Result<Self> {
        let file = match path {
            Some(p) => Some(crate::io::Named::new(
                BufWriter::new(
                    File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
                ),
                p.display().to_string(),
            )),
            None => None,
        };
        Ok(Self {
            counts: BTreeMap::new(),
            shown: 0,
            file,
            failed: None,
        })
    }

    /// One rejected input.
    pub fn report(&mut self, e: &Rejection) {
        *self.counts.entry(e.category()).or_insert(0) += 1;
        if self.shown < SHOWN_REJECTS {
            say!("gatewatch: rejected {e}");
            self.shown += 1;
            if self.shown == SHOWN_REJECTS {
                let more = if self.file.is_some() {
                    " and written to --rejects"
                } else {
                    "; --rejects FILE lists them all"
                };
                say!("gatewatch: (further rejected inputs are counted in the summary{more})");
            }
        }
        if let Some(w) = self.file.as_mut() {
            if self.failed.is_none() {
                let rec = RejectionRecord::from(e);
                let line = serde_json::to_string(&rec).unwrap_or_default();
                if let Err(err) = writeln!(w, "{line}") {
                    self.failed = Some(err);
                }
            }
        }
    }

    /// Rejected inputs in all.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Flushes the file.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e.into());
        }
        if let Some(w) = self.file.as_mut() {
            w.flush()?;
        }
        Ok(())
    }
}

/// Where a session's output batches go: their rejections to the report, the batch to the
/// verb's consumer (which may keep it, leaving an empty one in its place).
pub struct Delivery<'a, C> {
    /// The report of rejected inputs.
    pub rejects: &'a mut Rejects,
    /// The verb's consumer of each batch.
    pub consume: C,
    batch: Output,
}

impl<'a, C: FnMut(&mut Output) -> Result<()>> Delivery<'a, C> {
    /// Batches to `consume`, rejections to `rejects`.
    pub fn new(rejects: &'a mut Rejects, consume: C) -> Self {
        Self {
            rejects,
            consume,
            batch: Output::default(),
        }
    }

    /// Takes the session's output when it holds a batch's worth (`all`: whatever it holds)
    /// and delivers it.
    fn deliver(&mut self, session: &mut Session, all: bool) -> Result<()> {
        if !(session.is_full() || all && session.has_output()) {
            return Ok(());
        }
        session.take_into(&mut self.batch)?;
        for r in self.batch.rejections() {
            self.rejects.report(r);
        }
        (self.consume)(&mut self.batch)
    }
}

/// Reads the source to its end into the session and delivers its output batches; says what
/// was read. With `parsers` > 0, lines are read on one thread and parsed on `parsers`
/// others, in blocks, while this thread pushes the blocks into the session in input order
/// (the same output as with none). For lines, `progress` is told how many bytes each chunk
/// had. A table's rows are checked one by one (a bad row is rejected, naming its row and
/// field) and go into the session in event-time order (ties in row order). The first error
/// of a delivery (a failed write) stops the reading and is returned.
pub fn drive<C: FnMut(&mut Output) -> Result<()>>(
    source: Source,
    parsers: usize,
    session: &mut Session,
    delivery: &mut Delivery<'_, C>,
    progress: impl FnMut(usize),
) -> Result<Consumed> {
    let read = match source {
        Source::Lines {
            mut input, format, ..
        } => {
            let reader = if parsers == 0 {
                drive_lines(&mut *input, session, format, delivery, progress)?
            } else {
                drive_lines_parallel(&mut *input, session, format, parsers, delivery, progress)?
            };
            Consumed {
                units: reader.lines(),
                blank: reader.blank_lines(),
                rows: false,
            }
        }
        Source::Table(t) => crate::table::drive(t, session, &mut |s| delivery.deliver(s, false))?,
    };
    delivery.deliver(session, true)?;
    Ok(read)
}

/// Bytes read at a time: about 600 NDJSON events, so that the session's output is taken
/// (and its batches stay) near its batch size.
const READ_BYTES: usize = 1 << 16;

/// One read (retried when interrupted); 0 at the end of the input.
fn read_some(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => return r.context("reading input"),
        }
    }
}

fn drive_lines<C: FnMut(&mut Output) -> Result<()>>(
    input: &mut dyn Read,
    session: &mut Session,
    format: Format,
    delivery: &mut Delivery<'_, C>,
    mut progress: impl FnMut(usize),
) -> Result<LineReader> {
    let mut reader = LineReader::new(format);
    let mut chunk = vec![0u8; READ_BYTES];
    loop {
        let n = read_some(&mut *input, &mut chunk)?;
        if n == 0 {
            break;
        }
        reader.feed(session, &chunk[..n]);
        // A threaded engine works in batches: what was read so far goes out now, so a slow
        // stream (a pipe from a live log) is not held back.
        session.flush();
        delivery.deliver(session, false)?;
        progress(n);
    }
    reader.finish(session);
    Ok(reader)
}

/// Complete lines read, for a parser thread: where each starts and ends in `buf`.
struct Block {
    seq: u64,
    bytes: usize,
    buf: Vec<u8>,
    lines: Vec<(u64, Option<(u32, u32)>)>,
}

impl Block {
    fn new(seq: u64) -> Self {
        Self {
            seq,
            bytes: 0,
            buf: Vec::with_capacity(READ_BYTES),
            lines: Vec::new(),
        }
    }

    /// The block emptied, for reuse as block `seq`.
    fn reset(mut self, seq: u64) -> Self {
        self.seq = seq;
        self.bytes = 0;
        self.buf.clear();
        self.lines.clear();
        self
    }

    fn push(&mut self, n: u64, line: Line<'_>) {
        match line {
            Line::TooLong => self.lines.push((n, None)),
            Line::Text(raw) => {
                let start = self.buf.len() as u32;
                self.buf.extend_from_slice(raw);
                self.lines.push((n, Some((start, self.buf.len() as u32))));
            }
        }
    }
}

/// A block's lines parsed: events, or why not.
struct Parsed {
    seq: u64,
    bytes: usize,
    items: Vec<(u64, std::result::Result<RequestEvent, ParseError>)>,
}

fn drive_lines_parallel<C: FnMut(&mut Output) -> Result<()>>(
    input: &mut (dyn Read + Send),
    session: &mut Session,
    format: Format,
    parsers: usize,
    delivery: &mut Delivery<'_, C>,
    mut progress: impl FnMut(usize),
) -> Result<LineReader> {
    use std::sync::mpsc::sync_channel;
    use std::sync::{Arc, Mutex};
    std::thread::scope(|s| {
        let (work_tx, work_rx) = sync_channel::<Block>(parsers * 2);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (done_tx, done_rx) = sync_channel::<Parsed>(parsers * 2);
        // Parsed blocks' buffers go back to the reader (memory stays flat).
        let (block_back, spare_blocks) = std::sync::mpsc::channel::<Block>();
        let reader_format = format.clone();
        let reader = s.spawn(move || -> Result<LineReader> {
            let mut lines = LineReader::new(reader_format);
            let mut chunk = vec![0u8; READ_BYTES];
            let fresh = |seq: u64| match spare_blocks.try_recv() {
                Ok(b) => b.reset(seq),
                Err(_) => Block::new(seq),
            };
            let mut block = Block::new(0);
            loop {
                let n = read_some(&mut *input, &mut chunk)?;
                if n == 0 {
                    break;
                }
                block.bytes += n;
                lines.split(&chunk[..n], &mut |n, l| block.push(n, l));
                // One block per read, as the one-thread path delivers once per read.
                if !block.lines.is_empty() {
                    let next = fresh(block.seq + 1);
                    if work_tx.send(std::mem::replace(&mut block, next)).is_err() {
                        // The session side stopped (its output failed).
                        lines.stop();
                        return Ok(lines);
                    }
                }
            }
            lines.split_end(&mut |n, l| block.push(n, l));
            let _ = work_tx.send(block);
            Ok(lines)
        });
        for _ in 0..parsers {
            let (rx, tx, format) = (Arc::clone(&work_rx), done_tx.clone(), format.clone());
            let back = block_back.clone();
            s.spawn(move || {
                while let Some(b) = crate::ordered::next_job(&rx) {
                    let items = b
                        .lines
                        .iter()
                        .map(|&(n, span)| {
                            let line = match span {
                                None => Line::TooLong,
                                Some((a, z)) => Line::Text(&b.buf[a as usize..z as usize]),
                            };
                            (n, line.event(&format))
                        })
                        .collect();
                    let parsed = Parsed {
                        seq: b.seq,
                        bytes: b.bytes,
                        items,
                    };
                    let _ = back.send(b);
                    if tx.send(parsed).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        drop(work_rx);
        drop(block_back);
        // Blocks come back in any order; they go into the session in input order.
        let mut in_order = crate::ordered::InOrder::default();
        let mut failed = None;
        'blocks: for parsed in done_rx.iter() {
            in_order.put(parsed.seq, parsed);
            while let Some(p) = in_order.take() {
                for (n, item) in p.items {
                    session.push_parsed(Position::line(n), item);
                }
                session.flush();
                if let Err(e) = delivery.deliver(session, false) {
                    failed = Some(e);
                    break 'blocks;
                }
                progress(p.bytes);
            }
        }
        drop(done_rx);
        let lines = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the input reader failed"))??;
        if let Some(e) = failed {
            return Err(e);
        }
        session.finish();
        Ok(lines)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_beyond_the_cap_share_one_entry() {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..10_000 {
            *label_entry(&mut m, &format!("label-{}", i % 1000), || 0) += 1;
        }
        assert_eq!(m.len(), MAX_LABELS + 1);
        assert_eq!(m["label-0"], 10);
        assert_eq!(m[OTHER_LABELS], 10 * (1000 - MAX_LABELS as u64));
        assert_eq!(m.values().sum::<u64>(), 10_000);
    }
}
