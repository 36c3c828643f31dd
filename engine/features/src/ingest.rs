//! From bytes to records: line splitting across arbitrary chunks, parsing, error reporting.

use gatewatch_event::{CombinedConfig, ParseError, RequestEvent, parse_combined, parse_ndjson};

use crate::engine::{FeatureEngine, LateEvent, Record};

/// Input line format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One JSON event per line.
    Ndjson,
    /// nginx / Apache combined access-log lines.
    Combined(CombinedConfig),
}

impl Format {
    /// Parses one line.
    pub fn parse(&self, line: &[u8]) -> Result<RequestEvent, ParseError> {
        match self {
            Self::Ndjson => parse_ndjson(line),
            Self::Combined(cfg) => parse_combined(line, cfg),
        }
    }
}

/// A line that was not processed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// It could not be parsed.
    Parse {
        /// 1-based line number.
        line: u64,
        /// Why.
        error: ParseError,
    },
    /// A row of a table (Parquet, CSV) was not an event.
    Row {
        /// 0-based row number.
        row: u64,
        /// Why.
        error: ParseError,
    },
    /// It came later than the allowed lateness.
    Late(LateEvent),
    /// A table row came later than the allowed lateness (its `line` is the 0-based row).
    LateRow(LateEvent),
}

impl Rejection {
    /// Line number (row number for a table row).
    pub fn line(&self) -> u64 {
        match self {
            Self::Parse { line, .. } => *line,
            Self::Row { row, .. } => *row,
            Self::Late(l) | Self::LateRow(l) => l.line,
        }
    }

    /// Short category for summaries.
    pub fn category(&self) -> String {
        match self {
            Self::Parse { error, .. } | Self::Row { error, .. } => error.category(),
            Self::Late(l) | Self::LateRow(l) if l.is_future() => {
                "ahead of event time (future)".into()
            }
            Self::Late(_) | Self::LateRow(_) => "late beyond allowed lateness".into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Parse { line, error } => write!(f, "line {line}: {error}"),
            Self::Row { row, error } => write!(f, "row {row}: {error}"),
            Self::Late(l) => write!(f, "line {}: {l}", l.line),
            Self::LateRow(l) => write!(f, "row {}: {l}", l.line),
        }
    }
}

/// Feeds byte chunks (of any size, cut anywhere) into a [`FeatureEngine`] line by line.
pub struct Ingest {
    format: Format,
    partial: Vec<u8>,
    line: u64,
    /// Blank lines skipped.
    pub blank_lines: u64,
}

/// Longest line accepted (bytes); a longer one is rejected without being buffered whole.
pub const MAX_LINE_BYTES: usize = 1 << 20;

impl Ingest {
    /// A reader of `format`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            partial: Vec::new(),
            line: 0,
            blank_lines: 0,
        }
    }

    /// Lines seen so far.
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// Feeds a chunk; complete lines are parsed and pushed. Records go to `sink`, rejected
    /// lines to `reject`.
    pub fn feed(
        &mut self,
        engine: &mut FeatureEngine,
        chunk: &[u8],
        sink: &mut impl FnMut(&Record<'_>),
        reject: &mut impl FnMut(Rejection),
    ) {
        let format = self.format.clone();
        self.split(chunk, &mut |n, line| {
            push_line(&format, engine, n, line, sink, reject)
        });
    }

    /// Splits a chunk (cut anywhere) into its complete lines, numbered from 1 across chunks,
    /// without parsing them: what [`feed`](Self::feed) does first. Blank lines are counted
    /// here and not passed on.
    pub fn split(&mut self, chunk: &[u8], each: &mut impl FnMut(u64, Line<'_>)) {
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (head, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.classify(head, each);
            } else {
                append_capped(&mut self.partial, head);
                let line = std::mem::take(&mut self.partial);
                self.classify(&line, each);
                self.partial = line;
                self.partial.clear();
            }
        }
        append_capped(&mut self.partial, rest);
    }

    /// The last line, when the input does not end with a newline.
    pub fn split_end(&mut self, each: &mut impl FnMut(u64, Line<'_>)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.classify(&line, each);
        }
    }

    /// The input's format.
    pub fn format(&self) -> &Format {
        &self.format
    }

    /// Stops reading early (the output is gone): an incomplete line read so far is dropped,
    /// not reported as malformed. [`finish`](Self::finish) may follow.
    pub fn stop(&mut self) {
        self.partial.clear();
    }

    /// Ends the input: a last line without a newline is processed, buffered events are emitted.
    pub fn finish(
        &mut self,
        engine: &mut FeatureEngine,
        sink: &mut impl FnMut(&Record<'_>),
        reject: &mut impl FnMut(Rejection),
    ) {
        let format = self.format.clone();
        self.split_end(&mut |n, line| push_line(&format, engine, n, line, sink, reject));
        engine.finish(sink);
    }

    fn classify(&mut self, raw: &[u8], each: &mut impl FnMut(u64, Line<'_>)) {
        self.line += 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // A UTF-8 byte-order mark before the first line (editors on Windows write one).
        let raw = if self.line == 1 {
            raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
        } else {
            raw
        };
        if raw.iter().all(u8::is_ascii_whitespace) {
            self.blank_lines += 1;
            return;
        }
        if raw.len() > MAX_LINE_BYTES {
            each(self.line, Line::TooLong);
            return;
        }
        each(self.line, Line::Text(raw));
    }
}

/// A non-blank input line, before parsing.
#[derive(Debug, Clone, Copy)]
pub enum Line<'a> {
    /// Longer than [`MAX_LINE_BYTES`] (only its start was kept).
    TooLong,
    /// The line, without its line end (and without a byte-order mark on line 1).
    Text(&'a [u8]),
}

impl Line<'_> {
    /// The event, or why line `n` is not one.
    pub fn parse(self, format: &Format, n: u64) -> Result<RequestEvent, Rejection> {
        self.event(format)
            .map_err(|error| Rejection::Parse { line: n, error })
    }

    /// The event, or why the line is not one.
    pub fn event(self, format: &Format) -> Result<RequestEvent, ParseError> {
        match self {
            Self::TooLong => Err(ParseError {
                field: None,
                reason: format!("line longer than {MAX_LINE_BYTES} bytes"),
            }),
            Self::Text(raw) => format.parse(raw),
        }
    }
}

fn push_line(
    format: &Format,
    engine: &mut FeatureEngine,
    n: u64,
    line: Line<'_>,
    sink: &mut impl FnMut(&Record<'_>),
    reject: &mut impl FnMut(Rejection),
) {
    push_parsed(engine, n, line.parse(format, n), sink, reject);
}

/// Pushes line `n`, parsed, into the engine: an event goes in (refused ones, late or
/// ahead of event time, go to `reject`), a line that was not one goes to `reject`.
pub fn push_parsed(
    engine: &mut FeatureEngine,
    n: u64,
    parsed: Result<RequestEvent, Rejection>,
    sink: &mut impl FnMut(&Record<'_>),
    reject: &mut impl FnMut(Rejection),
) {
    match parsed {
        Ok(ev) => engine.push(ev, n, sink, &mut |late| {
            reject(Rejection::Late(late));
        }),
        Err(r) => reject(r),
    }
}

/// Appends up to one byte past the line limit, so that an over-long line is known as such
/// without being kept whole.
fn append_capped(buf: &mut Vec<u8>, data: &[u8]) {
    let room = (MAX_LINE_BYTES + 1).saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}
