//! polars DataFrames in and out of the gatewatch engine.
//!
//! - [`events_to_frame`]: request events as a DataFrame (the event schema as columns).
//! - [`frame_to_events`]: a DataFrame of events (the same columns; `ts` as a datetime, epoch
//!   milliseconds or RFC 3339 text) into validated events, with errors naming the column
//!   and row.
//! - [`features_frame`]: every event's point-in-time features, computed by the same
//!   [`FeatureEngine`] as `gatewatch features`, as a DataFrame.
//! - [`scores_frame`]: every event scored by a model folder, as `gatewatch score` does.
//! - [`decide_frame`]: the same, decided by mitigation rules, as `gatewatch score --rules`
//!   and `gatewatch backtest` do.
//!
//! Event columns: `ts`, `client_ip`, `method`, `path` and `status` are required; `host`,
//! `req_bytes`, `resp_bytes`, `latency_ms`, `user_agent`, `headers` (a struct of string
//! fields, one per header name, as polars reads NDJSON objects), `session_id`, `asn`,
//! `country`, `ja4`, `id` and `label` are optional. Other columns are ignored.

mod error;
mod events;
#[cfg(feature = "io")]
mod io;
mod rows;
mod run;

pub use error::{FrameError, Result};
pub use events::{
    EVENT_COLUMNS, datetime_ms, events_to_frame, flatten_headers, is_event_column, reasons_json,
    unquote,
};
#[cfg(feature = "io")]
pub use gatewatch_event::FileFormat;
#[cfg(feature = "io")]
pub use io::{TableWriter, scan_log, write_table};
pub use rows::{RowError, for_each_event_in_time_order, frame_to_events};
pub use run::{
    Decided, alerts_ndjson, append_columns, collect_peaks, decide_frame, feature_rows,
    features_frame, scores_frame, service_scores,
};
