use thiserror::Error;

/// Errors of the WAL stage.
///
/// Policy: storage errors are reported to the caller, never swallowed; a request whose append
/// failed is answered with an error and must be retried by the client. Errors are `Clone`
/// because one group commit answers many waiting requests with the same outcome.
#[derive(Debug, Error, Clone)]
pub enum WalError {
    /// The storage engine failed (I/O error, or sled reporting corruption of its own files).
    /// Permanent for this process: the operator has to look at the disk.
    #[error("WAL storage error: {0}")]
    Storage(String),
    /// The WAL writer has shut down; the process is stopping. Retryable against another instance.
    #[error("the WAL is closed")]
    Closed,
    /// The log was opened for inspection (`RecoveryMode::ReportOnly`) and cannot
    /// append. Permanent: a caller bug, never seen by the service.
    #[error("the WAL was opened read-only, for inspection")]
    ReadOnly,
    /// The WAL directory or its settings are unusable.
    #[error("invalid WAL configuration: {0}")]
    Config(String),
}

impl WalError {
    /// True when retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::Closed)
    }
}

impl From<sled::Error> for WalError {
    fn from(e: sled::Error) -> Self {
        WalError::Storage(e.to_string())
    }
}
