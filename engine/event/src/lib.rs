//! Request events for gatewatch.
//!
//! This crate turns the lines of an API gateway's request log into [`RequestEvent`]s and
//! normalises them: which client made the request ([`ClientKeyExtractor`]) and which endpoint
//! it addressed ([`EndpointNormalizer`]). Everything here is synchronous, deterministic and
//! never panics on input: a line that cannot be read becomes a [`ParseError`] naming the
//! field and the value that were wrong.

mod client_key;
mod combined;
mod endpoint;
mod error;
mod event;
mod format;
mod ndjson;
mod time;
mod write;

pub use client_key::{ClientKey, ClientKeyConfig, ClientKeyExtractor, KeyKind, KeySource};
pub use combined::{CombinedConfig, parse_combined};
pub use endpoint::{Endpoint, EndpointConfig, EndpointNormalizer, IdKind, PathId};
pub use error::{Error, ParseError, Result};
pub use event::{Header, RequestEvent};
pub use format::FileFormat;
pub use ndjson::{EventFields, MAX_JSON_DEPTH, parse_ndjson};
pub use time::{MAX_TS_MS, MIN_TS_MS, format_rfc3339_ms, parse_rfc3339_ms, write_rfc3339_ms};
pub use write::{write_json_str, write_ndjson};
