//! The read → engine loop shared by the verbs, and the reporting of rejected lines.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gatewatch_features::{Config, FeatureEngine, Format, Ingest, Record, Rejection};

use crate::InputFormat;

/// The configuration (`--config`, or the defaults), and the line format it implies.
pub fn setup(config: &Option<PathBuf>, format: InputFormat) -> Result<(Config, Format)> {
    let cfg = match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let format = match format {
        InputFormat::Ndjson => Format::Ndjson,
        InputFormat::Combined => Format::Combined(cfg.input.combined.clone()),
    };
    Ok((cfg, format))
}

/// Adds `key` to `set` unless it is there (without allocating when it is).
pub fn remember(set: &mut HashSet<String>, key: &str) {
    if !set.contains(key) {
        set.insert(key.to_string());
    }
}

/// Rejected lines printed in full on standard error (all go to `--rejects`).
const SHOWN_REJECTS: usize = 10;

/// Counts rejected lines by category, prints the first ones and writes all to a file.
pub struct Rejects {
    /// Count per category.
    pub counts: BTreeMap<String, u64>,
    shown: usize,
    file: Option<BufWriter<File>>,
}

impl Rejects {
    /// Reports to standard error, and to `path` as NDJSON when given.
    pub fn new(path: Option<&Path>) -> Result<Self> {
        let file = match path {
            Some(p) => Some(BufWriter::new(
                File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => None,
        };
        Ok(Self {
            counts: BTreeMap::new(),
            shown: 0,
            file,
        })
    }

    /// One rejected line.
    pub fn report(&mut self, e: &Rejection) {
        *self.counts.entry(e.category()).or_insert(0) += 1;
        if self.shown < SHOWN_REJECTS {
            eprintln!("gatewatch: rejected {e}");
            self.shown += 1;
            if self.shown == SHOWN_REJECTS {
                let more = if self.file.is_some() {
                    " and written to --rejects"
                } else {
                    "; --rejects FILE lists them all"
                };
                eprintln!("gatewatch: (further rejected lines are counted in the summary{more})");
            }
        }
        if let Some(w) = self.file.as_mut() {
            let line = serde_json::json!({"line": e.line(), "category": e.category(), "reason": e.to_string()});
            let _ = writeln!(w, "{line}");
        }
    }

    /// Rejected lines in all.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Flushes the file.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(w) = self.file.as_mut() {
            w.flush()?;
        }
        Ok(())
    }
}

/// Reads `input` to its end as `format` lines into `engine` and returns the reader (its line
/// counts). `progress` is told how many bytes each chunk had and returns false to stop early.
pub fn drive(
    input: &mut dyn Read,
    engine: &mut FeatureEngine,
    format: Format,
    sink: &mut impl FnMut(&Record<'_>),
    rejects: &mut Rejects,
    mut progress: impl FnMut(usize) -> bool,
) -> Result<Ingest> {
    let mut ingest = Ingest::new(format);
    let mut chunk = vec![0u8; 1 << 18];
    let mut reject = |e: Rejection| rejects.report(&e);
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading input"),
        };
        ingest.feed(engine, &chunk[..n], sink, &mut reject);
        if !progress(n) {
            break;
        }
    }
    ingest.finish(engine, sink, &mut reject);
    Ok(ingest)
}
