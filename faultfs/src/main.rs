//! `faultfs mount <backing-dir> <mountpoint> [--control <socket>] [--store-dir <dir>]`:
//! serves the mount in the foreground until SIGTERM or SIGINT, then unmounts.
//! Prints `faultfs: mounted …` on stdout once the mount is usable.

use std::path::PathBuf;
use std::process::ExitCode;

use faultfs::control::ControlServer;
use faultfs::{FaultMount, MountConfig};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

const USAGE: &str = "usage: faultfs mount <backing-dir> <mountpoint> [--control <socket>] [--store-dir <dir>]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("faultfs: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some("mount".as_ref()) {
        return Err(USAGE.into());
    }
    let (Some(backing), Some(mountpoint)) = (args.next(), args.next()) else { return Err(USAGE.into()) };
    let (mut control, mut store) = (None, None);
    while let Some(flag) = args.next() {
        let value = args.next().map(PathBuf::from).ok_or(USAGE)?;
        match flag.to_str() {
            Some("--control") => control = Some(value),
            Some("--store-dir") => store = Some(value),
            _ => return Err(USAGE.into()),
        }
    }
    // Signals are blocked into the iterator before any thread starts, so none is lost.
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("installing signal handlers: {e}"))?;
    let config = MountConfig { backing: backing.into(), mountpoint: mountpoint.into(), store };
    let mount = FaultMount::mount(&config).map_err(|e| e.to_string())?;
    let _control = match &control {
        Some(path) => Some(ControlServer::start(path, mount.switch()).map_err(|e| e.to_string())?),
        None => None,
    };
    println!("faultfs: mounted {} at {}", config.backing.display(), config.mountpoint.display());
    if let Some(signal) = signals.forever().next() {
        eprintln!("faultfs: signal {signal}, unmounting");
    }
    mount.unmount().map_err(|e| e.to_string())
}
