//! Inputs that did not become records.

use gatewatch_event::ParseError;
use gatewatch_features::RefusedKind;

use crate::position::Position;

/// Why an input did not become a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// It was not an event: the field and what was wrong with its value.
    Invalid(ParseError),
    /// The engine refused the event: too late, or too far ahead of event time.
    Refused(RefusedKind),
}

/// An input that did not become a record, with its position in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Where it was.
    pub position: Position,
    /// Why it was rejected.
    pub why: Why,
}

impl Rejection {
    /// A short category for summaries ("invalid field `status`", "late beyond allowed
    /// lateness", …).
    pub fn category(&self) -> String {
        match &self.why {
            Why::Invalid(e) => e.category(),
            Why::Refused(RefusedKind::Future { .. }) => "ahead of event time (future)".into(),
            Why::Refused(RefusedKind::Late { .. }) => "late beyond allowed lateness".into(),
            Why::Refused(RefusedKind::Foreign { .. }) => "partition not owned here".into(),
        }
    }

    /// What was wrong, without the position.
    pub fn reason(&self) -> String {
        match &self.why {
            Why::Invalid(e) => e.to_string(),
            Why::Refused(k) => k.to_string(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.position, self.reason())
    }
}

impl std::error::Error for Rejection {}
