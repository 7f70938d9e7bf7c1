use thiserror::Error;

/// Errors of the WAL stage.
///
/// Policy: storage errors are reported to the caller, never swallowed; a request whose append
/// failed is answered with an error and must be retried by the client. The first storage error
/// of a write fails the whole log for this process (see `guard.rs`): later calls answer
/// [`WalError::Unavailable`] without touching the disk. Errors are `Clone` because one group
/// commit answers many waiting requests with the same outcome.
#[derive(Debug, Error, Clone)]
pub enum WalError {
    /// The storage engine failed (I/O error such as ENOSPC or EIO, a failed fsync, or sled
    /// reporting corruption of its own files). Permanent for this WAL handle: it is never
    /// written again; the process reopens the WAL once the disk is usable (`crate::heal`).
    #[error("WAL storage error: {0}")]
    Storage(String),
    /// An earlier storage error failed the log (its reason): nothing is written until the WAL
    /// is reopened.
    #[error("the WAL failed earlier and is not written until it is reopened: {0}")]
    Unavailable(String),
    /// The append did not become durable within its deadline (a stalled disk); it may still
    /// be stored later, but the client is told it was not.
    #[error("the WAL append did not finish within {0} ms")]
    TimedOut(u64),
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
    /// True when retrying later (here, after the WAL was reopened, or on another instance)
    /// may succeed: every fault of the disk or of this process's state. Only a caller's mistake
    /// ([`WalError::ReadOnly`], [`WalError::Config`]) is not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::Closed | WalError::Storage(_) | WalError::Unavailable(_) | WalError::TimedOut(_))
    }
}

impl From<sled::Error> for WalError {
    fn from(e: sled::Error) -> Self {
        WalError::Storage(e.to_string())
    }
}
