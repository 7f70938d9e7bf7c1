//! Keeping the WAL's disk usable: free-space headroom, and healing after a storage fault.
//!
//! # Contract
//! - **Headroom.** [`DiskWatch`] samples the free space of the WAL's filesystem every
//!   [`SAMPLE_EVERY`]. Ingest refuses (`503 wal_full`, `/readyz` unready) when that sample,
//!   less what the WAL appended since and the bodies reserved for appends, is under
//!   `--wal-min-free-mib`. The quota (`--wal-max-mib`) bounds the records and keys the WAL
//!   holds; the headroom bounds everything else that grows on the disk — sled's own files,
//!   which it compacts lazily, and whatever else shares the filesystem — so the WAL says
//!   "full" before the disk is.
//! - **Healing.** After a storage fault the WAL refuses every write (`wal/guard.rs`). The
//!   healer then probes the disk every [`PROBE_EVERY`]: enough free space, and a probe file
//!   written and fsynced. Once the probe passes, the process restarts itself in place: the
//!   same binary with the same arguments (`execve`, same pid), told to listen on the addresses
//!   it had (a port chosen by the system included). Clients see `503`s, then refused
//!   connections for the second the restart takes, then `200`s. The fresh process
//!   opens the WAL as after `kill -9`, which the crash tests prove loses nothing acknowledged:
//!   every record answered 200 was fsynced first, and Kafka transactions resume from their
//!   committed positions. A group commit stalled for [`STALL_LIMIT`] is healed the same way.
//!   If the restart itself fails, the process exits non-zero, saying why.
//!
//! Why restart rather than reopen the WAL inside the process: a sled instance that hit a fault
//! may have threads blocked forever (the flusher's read, sled's own flusher), and they hold its
//! directory lock; only a new process image is sure to start clean.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::wal::{LogStore, WalHealth};

/// How often the free space is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How often a failed WAL's disk is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A group commit running this long counts as a failed disk, to be healed by a restart.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Bytes the probe writes and fsyncs: enough to need real free blocks.
const PROBE_BYTES: usize = 1 << 20;
/// Environment variable that tells the restarted process where to listen: `name=addr,…`.
/// (Handing the sockets themselves over would need `unsafe`, which this crate forbids.)
const REBIND: &str = "COLLECTOR_REBIND";

/// Free space of the WAL's filesystem, as last sampled.
#[derive(Debug)]
pub struct DiskWatch {
    dir: PathBuf,
    min_free: u64,
    /// Bytes available to us at the last sample (`u64::MAX` before the first).
    free: AtomicU64,
    /// The WAL's live bytes at that sample: what it appended since is subtracted.
    live_at_sample: AtomicU64,
    /// Whether the last sample was under the headroom, to log each crossing once.
    below: AtomicBool,
}

impl DiskWatch {
    /// Watches the filesystem of `dir`; `min_free` 0 turns the headroom off.
    pub fn new(dir: &Path, min_free: u64) -> Self {
        DiskWatch {
            dir: dir.to_path_buf(),
            min_free,
            free: AtomicU64::new(u64::MAX),
            live_at_sample: AtomicU64::new(0),
            below: AtomicBool::new(false),
        }
    }

    /// Samples the free space now. A failed sample keeps the last one (and is logged).
    pub fn sample(&self, live_bytes: u64) {
        match fs2::available_space(&self.dir) {
            Ok(free) => {
                self.live_at_sample.store(live_bytes, Ordering::Release);
                self.free.store(free, Ordering::Release);
                crate::telemetry::wal_disk_free(free);
                self.log_crossing(free);
            }
            Err(e) => warn!(dir = %self.dir.display(), error = %e, "Could not measure the WAL disk's free space."),
        }
    }

    /// Says so when the free space falls under the headroom (an empty WAL on a small disk is
    /// then "full" too, which would puzzle without it) and when it is back.
    fn log_crossing(&self, free: u64) {
        let below = free < self.min_free;
        if self.below.swap(below, Ordering::AcqRel) == below {
            return;
        }
        let (free_mib, min_mib) = (free >> 20, self.min_free >> 20);
        if below {
            warn!(dir = %self.dir.display(), free_mib, min_free_mib = min_mib, "The WAL's filesystem is down to its kept free space: /collect answers 503 wal_full until space is freed (or --wal-min-free-mib is lowered).");
        } else {
            info!(dir = %self.dir.display(), free_mib, min_free_mib = min_mib, "The WAL's filesystem has free space again above what is kept free.");
        }
    }

    /// Whether taking `reserved` more bytes would leave less than the headroom free.
    pub fn low(&self, live_bytes: u64, reserved: u64) -> bool {
        if self.min_free == 0 {
            return false;
        }
        let grown = live_bytes.saturating_sub(self.live_at_sample.load(Ordering::Acquire));
        let free = self.free.load(Ordering::Acquire).saturating_sub(grown).saturating_sub(reserved);
        free < self.min_free
    }

    /// Whether the disk can take writes again: above the headroom, and a probe file of
    /// [`PROBE_BYTES`] is written and fsynced (which a full or failing disk refuses).
    fn probe(&self) -> Result<(), String> {
        let free = fs2::available_space(&self.dir).map_err(|e| format!("cannot measure free space: {e}"))?;
        if free < self.min_free.max(PROBE_BYTES as u64) {
            return Err(format!("{free} bytes free, below the {} kept free", self.min_free));
        }
        let path = self.dir.join(".disk-probe");
        let written = std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&vec![0u8; PROBE_BYTES]).and_then(|()| f.sync_all()));
        let _ = std::fs::remove_file(&path);
        written.map_err(|e| format!("the probe write failed: {e}"))
    }
}

/// Samples the disk and, once the WAL failed (or stalled past [`STALL_LIMIT`]) and the disk
/// passes the probe, restarts the process in place, to listen again on `listeners` (name,
/// address). Runs until the process ends.
pub async fn watch(
    disk: Arc<DiskWatch>,
    health: Arc<WalHealth>,
    log: Arc<dyn LogStore>,
    listeners: Vec<(&'static str, SocketAddr)>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_probe = Instant::now() - PROBE_EVERY;
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(SAMPLE_EVERY).await;
        disk.sample(log.live_bytes());
        if *shutdown.borrow() {
            // The process is on its way out: nothing is restarted.
            continue;
        }
        let Some(fault) = needs_healing(&health) else { continue };
        if last_probe.elapsed() < PROBE_EVERY {
            continue;
        }
        last_probe = Instant::now();
        let probe = {
            let disk = disk.clone();
            tokio::task::spawn_blocking(move || disk.probe()).await.unwrap_or_else(|e| Err(e.to_string()))
        };
        match probe {
            // The probe can take a while on a sick disk: a shutdown asked for meanwhile wins.
            Ok(()) if *shutdown.borrow() => {}
            Ok(()) => restart_in_place(&fault, &listeners),
            Err(why) if last_report.elapsed() >= Duration::from_secs(60) => {
                last_report = Instant::now();
                warn!(%fault, disk = %why, "The WAL's disk is still unusable; the collector stays unready.");
            }
            Err(_) => {}
        }
    }
}

/// Why the WAL must be reopened, if it must.
fn needs_healing(health: &WalHealth) -> Option<String> {
    if let Some(reason) = health.failure() {
        return Some(reason.to_string());
    }
    health.stalled().filter(|s| *s >= STALL_LIMIT).map(|s| format!("a WAL group commit has run for {s:?}"))
}

/// Replaces this process with a fresh run of the same command, told to listen where this one
/// does. Returns only by exiting, if the restart is impossible.
fn restart_in_place(fault: &str, listeners: &[(&'static str, SocketAddr)]) -> ! {
    let restarts = Restarts::from_env().next(crate::now_ms());
    if restarts.count > MAX_RESTARTS {
        error!(%fault, restarts = MAX_RESTARTS, window_secs = RESTART_WINDOW.as_secs(), "The WAL failed again after every restart in place; exiting so an operator looks at the disk.");
        std::process::exit(3);
    }
    warn!(%fault, "The WAL's disk is usable again; restarting the process in place to reopen the WAL (same pid, same addresses).");
    let rebind: Vec<String> = listeners.iter().map(|(name, addr)| format!("{name}={addr}")).collect();
    let error = match std::env::current_exe() {
        Ok(exe) => {
            use std::os::unix::process::CommandExt;
            // Listening sockets are close-on-exec, so the addresses are free for the new image
            // (bound with SO_REUSEADDR, as tokio does).
            std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env(REBIND, rebind.join(","))
                .env(RESTARTS, restarts.to_string())
                .exec()
                .to_string()
        }
        Err(e) => e.to_string(),
    };
    error!(%fault, %error, "Could not restart the process to reopen the WAL; exiting so a supervisor restarts it.");
    std::process::exit(3);
}

/// Restarts in place within [`RESTART_WINDOW`] after which the process exits instead: a disk
/// that passes the probe yet fails every reopened WAL needs an operator.
const MAX_RESTARTS: u32 = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// Environment variable carrying the restarts so far to the restarted process: `count,first_ms`.
const RESTARTS: &str = "COLLECTOR_HEAL_RESTARTS";

/// Restarts in place in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Restarts {
    count: u32,
    /// When the window's first restart happened (ms since the epoch).
    first_ms: u64,
}

impl Restarts {
    fn from_env() -> Self {
        std::env::var(RESTARTS).ok().and_then(|v| Self::parse(&v)).unwrap_or(Restarts { count: 0, first_ms: 0 })
    }

    fn parse(value: &str) -> Option<Self> {
        let (count, first_ms) = value.split_once(',')?;
        Some(Restarts { count: count.parse().ok()?, first_ms: first_ms.parse().ok()? })
    }

    /// With one more restart at `now_ms`: counted in the window, or the first of a new one.
    fn next(self, now_ms: u64) -> Self {
        if self.count == 0 || now_ms.saturating_sub(self.first_ms) > RESTART_WINDOW.as_millis() as u64 {
            Restarts { count: 1, first_ms: now_ms }
        } else {
            Restarts { count: self.count + 1, ..self }
        }
    }
}

impl std::fmt::Display for Restarts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.count, self.first_ms)
    }
}

/// Where listener `name` listened before a restart in place, if this process is one.
pub fn rebind_address(name: &str) -> Option<SocketAddr> {
    std::env::var(REBIND)
        .ok()?
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| *n == name)
        .and_then(|(_, addr)| addr.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_in_place_are_counted_within_a_window_and_start_over_after_it() {
        let first = Restarts::from_env().next(1_000);
        assert_eq!(first, Restarts { count: 1, first_ms: 1_000 });
        let carried = Restarts::parse(&first.to_string()).unwrap();
        let fifth = (0..4).fold(carried, |r, i| r.next(2_000 + i));
        assert_eq!(fifth.count, 5);
        assert!(fifth.next(3_000).count > MAX_RESTARTS, "a sixth within the window ends the process");
        let later = fifth.next(1_000 + RESTART_WINDOW.as_millis() as u64 + 1);
        assert_eq!(later, Restarts { count: 1, first_ms: 1_000 + RESTART_WINDOW.as_millis() as u64 + 1 });
    }

    #[test]
    fn the_free_space_headroom_counts_what_was_appended_since_the_sample_and_the_reservations() {
        let disk = DiskWatch::new(Path::new("/"), 100);
        disk.free.store(1_000, Ordering::Release);
        disk.live_at_sample.store(50, Ordering::Release);
        assert!(!disk.low(50, 0));
        assert!(!disk.low(950, 0), "900 appended since: 100 left, the headroom exactly");
        assert!(disk.low(951, 0));
        assert!(disk.low(50, 901), "reserved bodies count too");
        assert!(!DiskWatch::new(Path::new("/"), 0).low(u64::MAX, u64::MAX), "0 turns the headroom off");
    }

    #[test]
    fn a_sample_under_the_headroom_is_noticed_and_so_is_the_way_back() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskWatch::new(dir.path(), u64::MAX);
        disk.sample(0);
        assert!(disk.below.load(Ordering::Acquire), "no disk has u64::MAX bytes free");
        assert!(disk.low(0, 0));
        let roomy = DiskWatch::new(dir.path(), 1);
        roomy.sample(0);
        assert!(!roomy.below.load(Ordering::Acquire) && !roomy.low(0, 0));
    }
}
