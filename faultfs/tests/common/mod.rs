//! A mounted faultfs in a temporary directory, or a skip where FUSE is unavailable.
//!
//! Skipping prints a line saying why and passes; with `FAULTFS_REQUIRE_FUSE=1` it fails instead,
//! for a CI that knows FUSE is there.

use std::path::{Path, PathBuf};

use faultfs::{Error, FaultMount, MountConfig};

pub struct Fixture {
    pub mount: Option<FaultMount>,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// `None` (after printing why) where FUSE cannot be mounted.
    pub fn mount(test: &str) -> Option<Fixture> {
        if !Path::new("/dev/fuse").exists() {
            return skip(test, "/dev/fuse does not exist");
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let config = MountConfig { backing: backing.clone(), mountpoint: mnt.clone(), store: None };
        match FaultMount::mount(&config) {
            Ok(mount) => Some(Fixture { mount: Some(mount), backing, mnt, _dir: dir }),
            Err(Error::Mount { source, .. }) => skip(test, &format!("the kernel refused the FUSE mount: {source}")),
            Err(e) => panic!("{test}: {e}"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    pub fn cut(&self) {
        self.mount.as_ref().unwrap().power_cut().expect("the power cut");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.take() {
            let result = mount.unmount();
            if !std::thread::panicking() {
                result.expect("a clean unmount");
            }
        }
    }
}

fn skip<T>(test: &str, why: &str) -> Option<T> {
    if std::env::var_os("FAULTFS_REQUIRE_FUSE").is_some_and(|v| v == "1") {
        panic!("{test}: FUSE is required (FAULTFS_REQUIRE_FUSE=1) but {why}");
    }
    eprintln!("SKIPPED {test}: {why} (on Debian: apt-get install fuse3, and run as root or with /dev/fuse access)");
    None
}
