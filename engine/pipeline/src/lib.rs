//! The gatewatch session: the one place where events become features, scores and output
//! records.
//!
//! Every path — the CLI verbs, the DataFrame functions and the Python module, and the stream
//! service — drives a [`Session`]:
//!
//! ```text
//! push(position, event) ─► FeatureEngine ─► records ─► Output batch ─► Scorer (on take)
//! reject(position, error) ──────────────────────────► Output batch (rejections)
//! ```
//!
//! The session owns the feature engine and the scorer, takes events in with the position
//! they had in their source ([`Position`]: a line, a table row, a Kafka partition and
//! offset), and hands out owned [`Output`] batches — records with features, their scores
//! and reasons, and the rejected inputs with their positions — when the caller asks
//! ([`Session::take`]). It never calls back into the caller, so a caller that cannot keep up
//! simply takes less often, and a failure (a model that cannot score) is an error the caller
//! sees. Each batch says up to which input position everything is out ([`Ack`]): what a
//! Kafka consumer may commit.
//!
//! Records have one schema ([`schema`]): the serde types [`FeatureRecord`], [`ScoreRecord`]
//! and [`RejectionRecord`]. The fast NDJSON writers ([`FeatureWriter`], [`ScoreWriter`]) write
//! exactly those, and the table writers and frames use the same column names
//! ([`schema::feature_columns`], [`schema::score_columns`]).

pub mod backtest;
mod lines;
mod ndjson;
mod output;
mod position;
mod rejection;
pub mod schema;
mod session;

pub use lines::{LineReader, push_line};
pub use ndjson::{
    FeatureWriter, ScoreWriter, write_float, write_head, write_number, write_reasons_json,
};
pub use output::{Output, RecordRef, unquote};
pub use position::{Ack, Position};
pub use rejection::{Rejection, Why};
pub use schema::{FeatureRecord, ReasonRecord, RejectionRecord, ScoreRecord, VerdictRecord};
pub use session::{Session, SessionError, SessionOptions, rules_schema};

pub use gatewatch_rules as rules;

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, SessionError>;
