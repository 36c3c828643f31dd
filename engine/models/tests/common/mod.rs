//! Helpers shared by the model tests (each test file uses some of them).
#![allow(dead_code)]

use gatewatch_features::{FeatureConfig, Registry};
use gatewatch_models::Training;

/// The default configuration's feature registry.
pub fn registry() -> Registry {
    Registry::new(&FeatureConfig::default())
}

/// A training description for models fitted on test rows.
pub fn training() -> Training {
    Training {
        events: 0,
        clients: 0,
        source: "test rows".into(),
        label_filter: None,
        description: None,
    }
}

/// Deterministic uniform numbers in [0, 1) (xorshift64 from `seed`).
pub fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}
