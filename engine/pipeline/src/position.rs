//! Where an input came from in its source, and how far a session's output has come.

use serde::{Deserialize, Serialize};

/// The position of one input in its source: what a rejection names and what a consumer
/// acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Position {
    /// A line of a line-oriented input (NDJSON, access log), counted from 1.
    Line {
        /// The line number.
        line: u64,
    },
    /// A row of a table (Parquet, CSV, DataFrame), counted from 0.
    Row {
        /// The row number.
        row: u64,
    },
    /// A Kafka message.
    Offset {
        /// The partition.
        partition: i32,
        /// The message's offset in it.
        offset: i64,
    },
}

impl Position {
    /// Line `n` (1-based).
    pub fn line(n: u64) -> Self {
        Self::Line { line: n }
    }

    /// Row `n` (0-based).
    pub fn row(n: u64) -> Self {
        Self::Row { row: n }
    }

    /// Offset `offset` of partition `partition`.
    pub fn offset(partition: i32, offset: i64) -> Self {
        Self::Offset { partition, offset }
    }

    /// The line, row or offset as a number.
    pub fn number(&self) -> u64 {
        match *self {
            Self::Line { line } => line,
            Self::Row { row } => row,
            Self::Offset { offset, .. } => u64::try_from(offset).unwrap_or(0),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Line { line } => write!(f, "line {line}"),
            Self::Row { row } => write!(f, "row {row}"),
            Self::Offset { partition, offset } => {
                write!(f, "partition {partition} offset {offset}")
            }
        }
    }
}

/// How far a session's output has come, in input order: what a source may acknowledge once
/// the batch that carries it (and every batch before it) has been delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ack {
    /// Nothing has been pushed yet.
    #[default]
    Nothing,
    /// Every input pushed so far, up to and including this position, has its outputs in
    /// this batch or an earlier one (a Kafka consumer commits `offset + 1`).
    Through(Position),
    /// Every input pushed before the first input at this position has its outputs out; an
    /// input at this position is still inside the session (held by the engine's reorder
    /// buffer). A Kafka consumer commits `offset`: after a restart the message is read
    /// again.
    Before(Position),
}

impl Ack {
    /// The Kafka offset to commit for this point (the next offset to read), if any.
    pub fn next_offset(&self) -> Option<i64> {
        match *self {
            Self::Through(Position::Offset { offset, .. }) => Some(offset.saturating_add(1)),
            Self::Before(Position::Offset { offset, .. }) => Some(offset),
            _ => None,
        }
    }
}
