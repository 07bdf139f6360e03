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
    /// A setting with a bad value: its key, why, and the line of the file
    /// it is on when that is known.
    #[error("{}{key}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        key: String,
        message: String,
        line: Option<usize>,
    },
    /// A key the file should not have (a misspelt option).
    #[error("line {line}: {message}")]
    Unknown { line: usize, message: String },
    /// Every mistake found in one reading, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
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
        line: None,
    }
}
