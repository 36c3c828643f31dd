//! Without the `tables` feature: the same interface, refusing Parquet and CSV with a message
//! saying how to get them. The table types are uninhabited, so no table code runs.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use gatewatch_event::RequestEvent;
use gatewatch_pipeline::{RecordRef, Session};

use crate::OutputArgs;
use gatewatch_event::FileFormat;

use crate::pipeline::Consumed;

const NO_TABLES: &str = "this gatewatch was built without Parquet / CSV support (the \
    `tables` feature, on by default: cargo build --release -p gatewatch)";

/// No value of this type exists.
pub enum Never {}

/// A table file's event columns (never read in this build).
pub struct TableSource(Never);

impl TableSource {
    pub fn path(&self) -> &Path {
        match self.0 {}
    }
}

pub fn read_source(path: PathBuf, kind: FileFormat, _: &[(String, String)]) -> Result<TableSource> {
    bail!("{} ({kind}): {NO_TABLES}", path.display())
}

pub fn drive(
    t: TableSource,
    _: &mut Session,
    _: &mut impl FnMut(&mut Session) -> Result<()>,
) -> Result<Consumed> {
    match t.0 {}
}

pub fn write_events(_: &[RequestEvent], path: Option<&Path>) -> Result<bool> {
    match path.filter(|p| FileFormat::table_from_extension(p).is_some()) {
        Some(p) => bail!("{}: {NO_TABLES}", p.display()),
        None => Ok(false),
    }
}

pub enum Sink {
    Lines,
    // The callers' match arm for tables; never built here.
    #[allow(dead_code)]
    Table(PathBuf, Never),
}

pub fn sink(a: &OutputArgs) -> Result<Sink> {
    match crate::pipeline::output_table(a)? {
        None => Ok(Sink::Lines),
        Some((p, _)) => bail!("{}: {NO_TABLES}", p.display()),
    }
}

pub struct TableOut(Never);

impl TableOut {
    pub fn new(_: PathBuf, format: Never, _: Vec<String>, _: bool) -> Self {
        match format {}
    }

    pub fn push_key(&mut self, _: &RecordRef<'_>) {
        match self.0 {}
    }

    pub fn push_values(&mut self, _: &[f64]) {
        match self.0 {}
    }

    pub fn push_flag(&mut self, _: bool, _: &str, _: &[gatewatch_models::Reason]) {
        match self.0 {}
    }

    pub fn maybe_flush(&mut self) -> Result<()> {
        match self.0 {}
    }

    pub fn finish(self) -> Result<u64> {
        match self.0 {}
    }
}
