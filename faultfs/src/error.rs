//! The crate's one error type.
//!
//! Errors inside a FUSE operation never reach this type: they are `io::Error`s turned into the
//! errno the calling process sees. This type is for the edges a test or the binary drives:
//! mounting, a power cut, the control channel. None of them is retryable: each means the harness
//! is set up wrongly or the machine refuses FUSE, and the caller should stop.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call on the backing directory or the durable store failed.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// The kernel refused the mount (no /dev/fuse, no permission, no fusermount3).
    #[error("mounting {mountpoint} failed: {source}")]
    Mount { mountpoint: PathBuf, source: io::Error },
    /// The durable store's directory holds files this program did not write.
    #[error("{0} exists and is not a faultfs store; remove it or pick another --store-dir")]
    ForeignStore(PathBuf),
    /// A control request was malformed or answered with an error.
    #[error("control channel: {0}")]
    Control(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
