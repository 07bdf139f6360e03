//! What is wrong with a configuration, named by the key it concerns.

/// A configuration error, with enough context to fix the file. Each says
/// its cause in its own message (none is also a `source`), so a chain of
/// causes prints it once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// TOML's own message, with the line and a pointer to the spot.
    #[error("{0}")]
    Toml(toml::de::Error),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// Every mistake found in one reading, one per line, each with the
    /// line of the file it is on when known.
    #[error("{}", .0.join("\n"))]
    Several(Vec<String>),
}

impl From<toml::de::Error> for ConfigError {
    fn from(e: toml::de::Error) -> Self {
        ConfigError::Toml(e)
    }
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}
