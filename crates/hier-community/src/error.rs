//! The crate's error type: every failure names the file and line, or the parameter, that
//! caused it.

use std::path::PathBuf;

/// Errors of loaders, generators and algorithms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed line in an input file.
    #[error("{}:{line}: {message}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An I/O failure on a file.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Invalid input or parameters (empty graph, K larger than the number of nodes, ...).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }

    pub(crate) fn parse(file: &std::path::Path, line: usize, message: impl Into<String>) -> Self {
        Error::Parse {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn io(file: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            file: file.to_path_buf(),
            source,
        }
    }
}
