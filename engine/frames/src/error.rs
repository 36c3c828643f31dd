//! The errors of this crate.

use polars::prelude::PolarsError;

/// What was wrong with a DataFrame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A required column is absent.
    #[error(
        "column {column:?} is missing (the event schema needs ts, client_ip, method, path, status)"
    )]
    Missing {
        /// Its name.
        column: String,
    },
    /// A column has a type that cannot be read as the field.
    #[error("column {column:?} has type {found}, expected {expected}")]
    Type {
        /// Its name.
        column: String,
        /// What it should be.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// A required value is null.
    #[error("column {column:?} is null in row {row}")]
    Null {
        /// The column.
        column: String,
        /// The row (0-based).
        row: usize,
    },
    /// A value is invalid.
    #[error("row {row}: {reason}")]
    Invalid {
        /// The row (0-based).
        row: usize,
        /// Why (names the field).
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A column mapping does not fit the file.
    #[error("{}: {reason}", path.display())]
    Mapping {
        /// The file.
        path: std::path::PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// polars failed.
    #[error(transparent)]
    Polars(#[from] PolarsError),
    /// The engine's configuration is invalid.
    #[error(transparent)]
    Engine(#[from] gatewatch_features::Error),
    /// The model cannot do what was asked (its monitor baselines do not fit).
    #[error("model: {0}")]
    Model(String),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, FrameError>;
