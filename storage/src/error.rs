//! The store's error type: every failure names the file, and corruption names the offset.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub enum Error {
    /// An operating-system error while touching `path`.
    Io { path: PathBuf, source: io::Error },
    /// Bytes on disk that fail a checksum or cannot be decoded. Never a panic, never a guess.
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A caller asked for something the store's state does not allow (e.g. rolling back past
    /// the undo horizon). The message says what and why.
    Invalid(String),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn corrupt(path: impl AsRef<Path>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            Error::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "corrupt store file {} at offset {}: {}",
                path.display(),
                offset,
                reason
            ),
            Error::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
