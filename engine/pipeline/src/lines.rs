//! Line inputs (NDJSON, access logs) read in chunks cut anywhere, into a session.

use std::borrow::BorrowMut;

use gatewatch_features::{Format, Ingest, Line};
use gatewatch_models::Scorer;

use crate::position::Position;
use crate::session::Session;

/// Feeds byte chunks (of any size, cut anywhere) into a [`Session`] line by line: each line
/// is parsed and pushed at its [`Position::Line`] (lines counted from 1, blank lines skipped
/// and counted, lines longer than [`gatewatch_features::MAX_LINE_BYTES`] rejected without
/// being buffered whole).
pub struct LineReader {
    ingest: Ingest,
}

impl LineReader {
    /// A reader of `format`.
    pub fn new(format: Format) -> Self {
        Self {
            ingest: Ingest::new(format),
        }
    }

    /// The input's format.
    pub fn format(&self) -> &Format {
        self.ingest.format()
    }

    /// Lines seen so far (blank ones included).
    pub fn lines(&self) -> u64 {
        self.ingest.lines()
    }

    /// Blank lines skipped.
    pub fn blank_lines(&self) -> u64 {
        self.ingest.blank_lines
    }

    /// Feeds a chunk: its complete lines go into the session.
    pub fn feed<S: BorrowMut<Scorer>>(&mut self, session: &mut Session<S>, chunk: &[u8]) {
        let format = self.ingest.format().clone();
        self.ingest
            .split(chunk, &mut |n, line| push_line(session, &format, n, line));
    }

    /// Splits a chunk into its complete lines without parsing them (for readers that parse
    /// on other threads and push with [`push_line`]).
    pub fn split(&mut self, chunk: &[u8], each: &mut impl FnMut(u64, Line<'_>)) {
        self.ingest.split(chunk, each);
    }

    /// The last line, when the input does not end with a newline (unparsed, as
    /// [`split`](Self::split)).
    pub fn split_end(&mut self, each: &mut impl FnMut(u64, Line<'_>)) {
        self.ingest.split_end(each);
    }

    /// Stops reading early (the output is gone): an incomplete line read so far is dropped,
    /// not reported as malformed.
    pub fn stop(&mut self) {
        self.ingest.stop();
    }

    /// The end of the input: a last line without a newline goes in, and the session
    /// finishes (every buffered event is processed).
    pub fn finish<S: BorrowMut<Scorer>>(&mut self, session: &mut Session<S>) {
        let format = self.ingest.format().clone();
        self.ingest
            .split_end(&mut |n, line| push_line(session, &format, n, line));
        session.finish();
    }
}

/// Line `n`, parsed, into the session.
pub fn push_line<S: BorrowMut<Scorer>>(
    session: &mut Session<S>,
    format: &Format,
    n: u64,
    line: Line<'_>,
) {
    session.push_parsed(Position::line(n), line.event(format));
}
