/// Errors of model loading, fitting and scoring.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model folder or one of its files could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file of the model folder is not what it should be.
    #[error("{path}: corrupt or not a gatewatch model file: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The model was built for another feature set.
    #[error(
        "model {model} was built for feature set {model_hash}, but this engine computes feature set {engine_hash}; retrain it with this engine's configuration"
    )]
    FeatureSet {
        /// Model name.
        model: String,
        /// Hash in the manifest.
        model_hash: String,
        /// Hash of the engine's registry.
        engine_hash: String,
    },
    /// The manifest names features the engine does not have.
    #[error(
        "model {model} reads features this configuration does not compute or select: {names:?} (add them to [features] select, or train the model on this configuration)"
    )]
    UnknownFeatures {
        /// Model name.
        model: String,
        /// The unknown names.
        names: Vec<String>,
    },
    /// The ONNX Runtime library is missing or failed.
    #[error("{0}")]
    Runtime(String),
    /// Fitting was impossible.
    #[error("cannot fit: {0}")]
    Fit(String),
    /// A parameter is out of range.
    #[error(transparent)]
    Detector(#[from] crate::univariate::DetectorError),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
