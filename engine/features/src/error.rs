/// Errors of the feature engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// From the event crate (client keys, endpoint templates).
    #[error(transparent)]
    Event(#[from] gatewatch_event::Error),
    /// A state snapshot could not be read.
    #[error("state snapshot: {0}")]
    Snapshot(String),
    /// A population share could not be read or does not fit this engine.
    #[error("population share: {0}")]
    Share(String),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
