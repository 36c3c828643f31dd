use std::fmt;

/// Errors of this crate that are not about one input line (configuration, documents).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An OpenAPI document could not be read or understood.
    #[error("OpenAPI document {path}: {reason}")]
    OpenApi {
        /// The document's path.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Why one input line could not be turned into an event.
///
/// The line number is attached by the reader, which knows it; the parser fills in the
/// field (when one field is to blame) and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The field that was wrong, when one was.
    pub field: Option<String>,
    /// What was wrong, including the offending value where it helps.
    pub reason: String,
}

impl ParseError {
    pub(crate) fn field(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_string()),
            reason: reason.into(),
        }
    }

    pub(crate) fn line(reason: impl Into<String>) -> Self {
        Self {
            field: None,
            reason: reason.into(),
        }
    }

    /// A short category for summaries ("missing field", "invalid ts", …).
    pub fn category(&self) -> String {
        match &self.field {
            Some(f) => format!("invalid field `{f}`"),
            None => {
                if self.reason.starts_with("missing field") {
                    self.reason
                        .split(" at ")
                        .next()
                        .unwrap_or("missing field")
                        .to_string()
                } else if self.reason.starts_with("not JSON") || self.reason.starts_with("JSON") {
                    "malformed JSON".to_string()
                } else {
                    "malformed line".to_string()
                }
            }
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field `{field}`: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for ParseError {}

/// Shortens a value for an error message, on a character boundary.
pub(crate) fn snippet(s: &str) -> String {
    const MAX: usize = 60;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}
