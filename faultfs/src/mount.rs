//! Mounting, cutting the power, unmounting: what a test or the binary drives.
//!
//! `FaultMount::mount` takes the backing directory as it is as durable, mounts the passthrough
//! at the mountpoint (in a background thread) and returns a handle. `power_cut` may be called
//! any number of times while mounted; the mount stays up, so the program under test is restarted
//! on the same paths. Dropping the handle unmounts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, Config, MountOption};

use crate::durable::Durable;
use crate::error::{Error, Result};
use crate::fs::FaultFs;
use crate::state::State;

#[derive(Debug, Clone)]
pub struct MountConfig {
    /// The directory whose tree is served; after a cut it holds exactly the durable state.
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    /// Where durable file bytes are kept; default: `<backing>.faultfs-store` beside it.
    pub store: Option<PathBuf>,
}

/// What a power cut left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutReport {
    /// The cut's number since mount, from 1.
    pub cut: u64,
    /// Names (files, directories, symlinks) in the surviving tree, the root not counted.
    pub names: usize,
}

/// Cuts the power of a mounted faultfs; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct PowerSwitch {
    state: Arc<Mutex<State>>,
}

impl PowerSwitch {
    /// Discards every change not made durable: the backing directory is rewritten to the
    /// durable state, and every file or directory handle opened before answers `EIO` from now on.
    ///
    /// # Errors
    /// `Error::Io` if rewriting the backing directory failed; the tree is then undefined and the
    /// test should stop.
    pub fn power_cut(&self) -> Result<CutReport> {
        let mut state = self.state.lock().map_err(|_| Error::Control("the filesystem state is poisoned".into()))?;
        let names = state.power_cut().map_err(Error::io("rewriting the backing directory to the durable state"))?;
        Ok(CutReport { cut: state.cuts, names })
    }
}

pub struct FaultMount {
    session: Option<BackgroundSession>,
    switch: PowerSwitch,
    mountpoint: PathBuf,
}

impl FaultMount {
    /// # Errors
    /// `Error::Mount` when the kernel refuses (no /dev/fuse, no permission): callers that are
    /// tests skip on it. `Error::ForeignStore` or `Error::Io` when the store cannot be set up.
    pub fn mount(config: &MountConfig) -> Result<FaultMount> {
        let backing = config.backing.canonicalize().map_err(Error::io(format!("{}", config.backing.display())))?;
        let store = config.store.clone().unwrap_or_else(|| default_store(&backing));
        let durable = Durable::create(&store)
            .map_err(Error::io(format!("creating the store {}", store.display())))?
            .ok_or_else(|| Error::ForeignStore(store.clone()))?;
        let state = State::new(&backing, durable).map_err(Error::io(format!("reading {}", backing.display())))?;
        let state = Arc::new(Mutex::new(state));
        let mut options = Config::default();
        options.mount_options = vec![MountOption::FSName("faultfs".into()), MountOption::Subtype("faultfs".into())];
        let fs = FaultFs { state: Arc::clone(&state) };
        let session = fuser::spawn_mount(fs, &config.mountpoint, &options)
            .map_err(|source| Error::Mount { mountpoint: config.mountpoint.clone(), source })?;
        Ok(FaultMount { session: Some(session), switch: PowerSwitch { state }, mountpoint: config.mountpoint.clone() })
    }

    pub fn switch(&self) -> PowerSwitch {
        self.switch.clone()
    }

    /// See [`PowerSwitch::power_cut`].
    pub fn power_cut(&self) -> Result<CutReport> {
        self.switch.power_cut()
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and removes the store; the backing directory keeps the volatile state, as a disk
    /// does after a clean shutdown.
    ///
    /// # Errors
    /// `Error::Io` if the kernel refused the unmount (a file still open under the mountpoint);
    /// the mount is then detached lazily and goes away when the last file closes.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else { return Ok(()) };
        if let Err(e) = session.umount_and_join() {
            // Best effort: a detached mount at least frees the mountpoint's path.
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            return Err(Error::Io { context: format!("unmounting {}", self.mountpoint.display()), source: e });
        }
        let state = self.switch.state.lock().map_err(|_| Error::Control("the filesystem state is poisoned".into()))?;
        state.remove_store().map_err(Error::io("removing the store"))
    }
}

impl Drop for FaultMount {
    fn drop(&mut self) {
        let _ = self.unmount_inner();
    }
}

fn default_store(backing: &Path) -> PathBuf {
    let mut name = backing.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "faultfs".into());
    name.push(".faultfs-store");
    backing.with_file_name(name)
}
