//! Point-in-time sliding-window features per client, for gatewatch.
//!
//! [`FeatureEngine`] takes [`RequestEvent`](gatewatch_event::RequestEvent)s in arrival order,
//! places them in event-time order within the allowed lateness, and computes for each one the
//! features of the [`Registry`] from the events at or before it. State is bounded
//! ([`ClientStore`]), can be split by client key and saved and restored.

mod config;
mod engine;
mod error;
mod ingest;
mod levels;
mod population;
mod registry;
mod share;
mod sketch;
mod state;
mod store;
mod summary;

pub use config::{Config, FeatureConfig, InputConfig};
pub use engine::{FeatureEngine, LateEvent, Record, RefusedKind, SNAPSHOT_VERSION, Stats};
pub use error::{Error, Result};
pub use ingest::{Format, Ingest, Line, MAX_LINE_BYTES, Rejection, push_parsed};
pub use levels::{LEVEL_EPOCHS, MAX_MEMBERS, NetworkRule};
pub use population::{
    EPOCH_MS, MAX_TRANSITIONS, OVERFLOW_TEMPLATE, Population, VOTE_DECAY, epoch_of,
};
pub use registry::{
    DEFINITIONS_VERSION, ENDPOINT_BUCKET_MS, FeatureDef, PointFeature, Registry, WindowFeature,
    horizon_suffix,
};
pub use share::Share;
pub use sketch::{bit, fnv1a, linear_count, murmur2, part_of};
pub use state::ClientState;
pub use store::{ClientStore, Evictions};
pub use summary::{DistinctCount, EXACT_DISTINCT, TopKeys};
