//! # faultfs: a filesystem that forgets what was not made durable
//!
//! A FUSE passthrough for tests. Processes see every change at once (the volatile state); only
//! `fsync`/`fdatasync` of a file and `fsync` of a directory make changes durable. A power cut
//! throws away everything else, leaving what a disk that honours exactly those calls would
//! hold. README.md states the model; this page maps the code.
//!
//! # Layout
//! - [`mount`]: mount, cut the power, unmount: the API a test uses.
//! - [`control`]: the same cut over a Unix socket, for a harness running the `faultfs` binary.
//! - `fs`: the FUSE adapter (kernel request -> one `state` call -> reply), and why `direct_io`
//!   and zero cache timeouts.
//! - `state`: the volatile tree in the backing directory, the bytes written since each file's
//!   last sync, the handles a cut invalidates.
//! - `durable`: the durable tree and its file bytes (the store), updated at each sync and
//!   written back into the backing directory at a cut.
//! - `ranges`: the byte-range set a sync copies.
//! - [`error`]: the one error type.

pub mod control;
mod durable;
pub mod error;
mod fs;
pub mod mount;
mod ranges;
mod state;

pub use error::{Error, Result};
pub use mount::{CutReport, FaultMount, MountConfig, PowerSwitch};
