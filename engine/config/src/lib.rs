//! The gatewatch configuration file (`--config gatewatch.toml`): one file for the whole
//! program.
//!
//! Each section's type lives in the crate that uses it (`[client_key]`, `[endpoints]` in
//! `gatewatch-event`; `[input]`, `[features]` in `gatewatch-features`; `[model]` here); this
//! crate puts them together, resolves `${VAR}` / `${VAR:-default}` references from the
//! environment ([`interpolate`]), refuses unknown sections and keys with their name and line,
//! and validates every section once: a [`Settings`] value is always valid. The sections of
//! the stream service still to come (`[service]`, `[sinks]`) are reserved: they are refused
//! with a message until those parts exist. `[rules]` names the mitigation rules file,
//! `[kafka]` the topics `gatewatch serve` reads and writes.

mod interpolate;

use std::path::{Path, PathBuf};

use gatewatch_event::{ClientKeyConfig, EndpointConfig};
use gatewatch_features::{Config as EngineConfig, FeatureConfig, InputConfig};
use serde::Deserialize;

pub use interpolate::{InterpolationError, interpolate};

/// A configuration that could not be used: the file (when there is one) and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// `[model]`: the model `gatewatch score` uses when `--model` is not given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A model folder (relative paths from the configuration file's folder); the built-in
    /// default model when absent.
    pub path: Option<PathBuf>,
}

/// `[rules]`: the mitigation rules `gatewatch score` and `gatewatch serve` apply when
/// `--rules` is not given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// A rules file (TOML; relative paths from the configuration file's folder; `default`
    /// for the built-in rules).
    pub path: Option<PathBuf>,
    /// Keys CrowdSec bouncers send (`X-Api-Key`) to read `gatewatch serve`'s decisions API;
    /// write them as `${VAR}` references to keep them out of the file.
    #[serde(default)]
    pub bouncer_keys: Vec<String>,
}

/// `[kafka]`: where `gatewatch serve` reads events from Kafka and writes its records (the
/// `--kafka-*` options override each key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: Option<String>,
    /// The consumer group (default `gatewatch`).
    pub group: Option<String>,
    /// The topic of events.
    pub input: Option<String>,
    /// The topic of score records.
    pub scores: Option<String>,
    /// The topic of decision changes.
    pub decisions: Option<String>,
    /// The topic poison messages are copied to.
    pub dead_letters: Option<String>,
    /// The topic on which instances share their population statistics.
    pub population: Option<String>,
    /// The input partitions this instance reads (assigned, not balanced by the group).
    pub partitions: Option<Vec<i32>>,
    /// librdkafka properties for both clients (`consumer.NAME` / `producer.NAME` for one):
    /// security, timeouts, tuning. Keep secrets in `${VAR}` references.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// Sections reserved for parts of the program that are not built yet.
const RESERVED: [(&str, &str); 2] = [
    ("service", "the stream service's own settings"),
    ("sinks", "the stream service's sinks"),
];

/// The whole file, as written. Every section is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    client_key: ClientKeyConfig,
    #[serde(default)]
    endpoints: EndpointConfig,
    #[serde(default)]
    input: InputConfig,
    #[serde(default)]
    features: FeatureConfig,
    #[serde(default)]
    model: ModelConfig,
    #[serde(default)]
    rules: RulesConfig,
    #[serde(default)]
    kafka: KafkaConfig,
}

/// A validated configuration of the whole program.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// What the feature engine reads: `[client_key]`, `[endpoints]`, `[input]`,
    /// `[features]`.
    pub engine: EngineConfig,
    /// `[model]`.
    pub model: ModelConfig,
    /// `[rules]`.
    pub rules: RulesConfig,
    /// `[kafka]`.
    pub kafka: KafkaConfig,
}

impl Settings {
    /// Reads a configuration file, resolving references from the process environment.
    /// Relative paths in it (the OpenAPI document, the model folder) are taken from the
    /// file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &|k| std::env::var(k).ok())
    }

    /// [`load`](Self::load) with another environment.
    pub fn load_with(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let named = |e: ConfigError| ConfigError(format!("{}: {}", path.display(), e.0));
        let mut s = Self::read(&text, env).map_err(named)?;
        if let Some(dir) = path.parent() {
            let rel = |p: &mut Option<PathBuf>| {
                if let Some(q) = p.as_mut().filter(|q| q.is_relative()) {
                    *q = dir.join(&*q);
                }
            };
            rel(&mut s.engine.endpoints.openapi);
            rel(&mut s.model.path);
            if s.rules.path.as_deref() != Some(Path::new("default")) {
                rel(&mut s.rules.path);
            }
        }
        s.validate().map_err(named)?;
        Ok(s)
    }

    /// Parses configuration text, resolving references from the process environment.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(text, &|k| std::env::var(k).ok())
    }

    /// Parses configuration text with the environment `env`, and validates it.
    pub fn parse_with(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let s = Self::read(text, env)?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.engine
            .validate()
            .map_err(|e| ConfigError(e.to_string()))
    }

    /// Resolves references and parses, without validating.
    fn read(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = interpolate(text, env).map_err(|e| ConfigError(e.to_string()))?;
        // The reserved sections first, so that they are named as such.
        if let Ok(table) = text.parse::<toml::Table>() {
            for (name, what) in RESERVED {
                if table.contains_key(name) {
                    return Err(ConfigError(format!(
                        "[{name}] is reserved for {what}, which this version does not have"
                    )));
                }
            }
        }
        let f: File =
            toml::from_str(&text).map_err(|e| ConfigError(e.to_string().trim_end().to_string()))?;
        let engine = EngineConfig {
            client_key: f.client_key,
            endpoints: f.endpoints,
            input: f.input,
            features: f.features,
        };
        Ok(Self {
            engine,
            model: f.model,
            rules: f.rules,
            kafka: f.kafka,
        })
    }
}
