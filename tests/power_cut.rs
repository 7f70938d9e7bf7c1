//! Power-cut tests (issue 9): the collector's WAL on faultfs, a filesystem that forgets at a
//! simulated power cut every change not made durable (`fsync`/`fdatasync` of a file, `fsync` of
//! a directory for its entries). Under continuous load the collector is killed (`kill -9`), the
//! power is cut, and the collector restarts on what the "disk" kept, again and again; then an
//! independent reader (kcat, `isolation.level=read_committed`) must find every acknowledged
//! event in the transformed topic exactly once.
//!
//! `kill -9` alone (tests/crash.rs) keeps the page cache, so everything written reaches the disk
//! anyway; here only what was synced survives, as after pulling the plug.
//!
//! Two variants: the broker up during the cuts (`collector run`), and the broker unreachable
//! during all of them (`collector serve` pointed at a dead port, so everything acknowledged lives
//! only in the WAL), drained by a final `collector run` with the broker.
//!
//! - `POWER_CUTS` (default 5): cuts per variant; `loadtest/power_cut.sh` runs 20 or more.
//! - `POWER_CUT_SEED`: replays the pauses of a run (each test prints its seed).
//! - `FAULTFS_BIN`: a prebuilt `faultfs` binary; without it the test builds one once
//!   (`cargo build --release --manifest-path faultfs/Cargo.toml`, into `faultfs/` beside this
//!   test's own target profile directories).
//! - Where FUSE is unavailable (no `/dev/fuse`, the mount refused) each test prints
//!   `SKIPPED <name>: <why>` and passes; `FAULTFS_REQUIRE_FUSE=1` makes that a failure.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;

/// Cuts per variant: `POWER_CUTS`, default 5 (the short variant run by `scripts/test.sh`).
fn power_cuts() -> usize {
    std::env::var("POWER_CUTS").ok().map_or(5, |s| s.parse().expect("POWER_CUTS must be a number"))
}

fn fuse_required() -> bool {
    std::env::var_os("FAULTFS_REQUIRE_FUSE").is_some_and(|v| v == "1")
}

/// `None` after printing why the test is skipped; a panic instead with `FAULTFS_REQUIRE_FUSE=1`.
fn skip<T>(test: &str, why: &str) -> Option<T> {
    assert!(!fuse_required(), "{test}: FUSE is required (FAULTFS_REQUIRE_FUSE=1) but {why}");
    eprintln!("SKIPPED {test}: {why} (on Debian: apt-get install fuse3, and run as root or with /dev/fuse access)");
    None
}

/// The `faultfs` binary: `FAULTFS_BIN`, or built once per test process (release) into
/// `<target>/faultfs`, a target directory of its own since faultfs is a workspace of its own.
fn faultfs_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("FAULTFS_BIN") {
            return PathBuf::from(bin);
        }
        // CARGO_BIN_EXE_collector is <target>/<profile>/collector.
        let target = Path::new(env!("CARGO_BIN_EXE_collector")).parent().unwrap().parent().unwrap().join("faultfs");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("faultfs/Cargo.toml");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("running cargo to build faultfs");
        assert!(out.status.success(), "building faultfs failed: {}", String::from_utf8_lossy(&out.stderr));
        target.join("release/faultfs")
    })
}

/// A running `faultfs mount <backing> <mnt> --control <socket>`, unmounted (SIGTERM) on drop.
struct FaultFs {
    child: Child,
    mnt: PathBuf,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl FaultFs {
    /// Mounts a fresh faultfs, or `None` (after printing why) where FUSE is unavailable.
    fn mount(test: &str) -> Option<FaultFs> {
        if !Path::new("/dev/fuse").exists() {
            return skip(test, "/dev/fuse does not exist");
        }
        let dir = tempfile::tempdir().unwrap();
        let (backing, mnt, socket) = (dir.path().join("backing"), dir.path().join("mnt"), dir.path().join("control"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let mut child = Command::new(faultfs_bin())
            .arg("mount")
            .args([&backing, &mnt])
            .arg("--control")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting faultfs");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        let mut stderr = child.stderr.take().unwrap();
        if !ready.starts_with("faultfs: mounted") {
            let mut err = String::new();
            stderr.read_to_string(&mut err).unwrap();
            let status = child.wait().unwrap();
            if err.contains("mounting") {
                return skip(test, &format!("the kernel refused the FUSE mount: {}", err.trim()));
            }
            panic!("faultfs did not mount ({status}): {err}");
        }
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[faultfs] {line}");
            }
        });
        Some(FaultFs { child, mnt, socket, _dir: dir })
    }

    /// Cuts the power; returns faultfs's answer (`ok cut <n> names <m>`) once the mount shows
    /// what the disk kept.
    fn cut(&self) -> String {
        let mut stream = UnixStream::connect(&self.socket).expect("connecting to faultfs's control socket");
        stream.write_all(b"cut\n").unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        let answer = answer.trim_end().to_string();
        assert!(answer.starts_with("ok cut"), "faultfs refused the cut: {answer}");
        answer
    }

    /// Every file under `dir` with its size, as processes see it now, for the test log.
    fn listing(&self, dir: &Path) -> String {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            let mut entries: Vec<_> = entries.map_while(Result::ok).collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let path = e.path();
                let name = path.strip_prefix(root).unwrap().display().to_string();
                match e.metadata() {
                    Ok(m) if m.is_dir() => {
                        out.push(format!("{name}/"));
                        walk(root, &path, out);
                    }
                    Ok(m) => out.push(format!("{name} {}", m.len())),
                    Err(err) => out.push(format!("{name} ({err})")),
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.join(", ")
    }

    fn mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        mounts.lines().any(|l| l.split(' ').nth(1) == self.mnt.to_str())
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.mounted() {
            // A faultfs that could not unmount by itself (something still held the mount).
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Four clients sending as fast as the collector answers, retrying with `Idempotency-Key`.
const SHAPE: LoadShape = LoadShape { clients: 4, pace: Duration::ZERO, pad: 0 };

#[derive(Clone, Copy, PartialEq)]
enum Broker {
    /// `collector run` against the broker during the cuts.
    Up,
    /// `collector serve` against a dead port during the cuts; a final `collector run` drains.
    Unreachable,
}

/// Which cut came first after `id` (`c<client>-<n>`) was acknowledged, from the per-client
/// acknowledged counts snapshotted before each cut; `None`: acknowledged after the last cut.
fn acked_before_cut(id: &str, snapshots: &[HashMap<usize, usize>]) -> Option<usize> {
    let (client, n) = id.trim_start_matches('c').split_once('-')?;
    let (client, n): (usize, usize) = (client.parse().ok()?, n.parse().ok()?);
    snapshots.iter().position(|s| s.get(&client).is_some_and(|&count| n < count)).map(|i| i + 1)
}

/// Waits until every acknowledged id is in `topic` (or `patience` passes), prints the lost ones
/// by the cut they preceded, then asserts exactly once with the shared report line.
fn verify(brokers: &str, topic: &str, load: &LoadOutcome, snapshots: &[HashMap<usize, usize>], what: &str) {
    eprintln!("{what}: events attempted {}, retries {}", load.attempted, load.retries);
    assert!(load.acked.len() > 100, "{what}: too little load got through to prove anything");
    let deadline = Instant::now() + Duration::from_secs(120);
    let counts = loop {
        let counts = kcat_ids(brokers, topic);
        if load.acked.iter().all(|id| counts.contains_key(id)) || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let mut lost_by_cut: BTreeMap<Option<usize>, Vec<&String>> = BTreeMap::new();
    for id in load.acked.iter().filter(|id| !counts.contains_key(*id)) {
        lost_by_cut.entry(acked_before_cut(id, snapshots)).or_default().push(id);
    }
    for (cut, ids) in &mut lost_by_cut {
        ids.sort();
        let when = cut.map_or("after the last cut".to_string(), |c| format!("before cut {c}"));
        eprintln!("{what}: LOST {} events acknowledged {when}, e.g. {:?}", ids.len(), &ids[..ids.len().min(8)]);
    }
    assert_exactly_once(brokers, topic, &load.acked, Duration::ZERO, what);
}

async fn power_cuts_under_load(test: &str, broker: Broker) {
    let Some(fs) = FaultFs::mount(test) else { return };
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let cuts = power_cuts();
    let mut rng = Rng::from_env("POWER_CUT_SEED", test);
    // The WAL directory exists durably before the collector first starts, as an operator's would.
    let wal = fs.mnt.join("wal");
    std::fs::create_dir(&wal).unwrap();
    std::fs::File::open(&fs.mnt).unwrap().sync_all().unwrap();

    let (mode, args) = match broker {
        Broker::Up => ("run", topics.args("run")),
        Broker::Unreachable => {
            let mut args = topics.args("serve");
            args[1] = format!("127.0.0.1:{}", free_port());
            ("serve", args)
        }
    };
    let first = Collector::start(mode, &wal, 0, &args);
    let port = first.port();
    let mut collector = Some(first);
    let (stop, counters) = (Arc::new(AtomicBool::new(false)), Arc::new(LoadCounters::default()));
    let load = start_load(port, SHAPE, stop.clone(), counters.clone());

    // Per cut, how many requests of each client were acknowledged before it.
    let mut snapshots = Vec::new();
    for cut in 1..=cuts {
        tokio::time::sleep(Duration::from_millis(rng.between(300, 1500))).await;
        collector.take().unwrap().kill9();
        snapshots.push(counters.acked_per_client.lock().unwrap().clone());
        let before = fs.listing(&wal);
        let answer = fs.cut();
        let after = fs.listing(&wal);
        eprintln!(
            "{test}: cut {cut}/{cuts} ({answer}) after {} acknowledged\n  WAL before the cut: {before}\n  WAL after the cut:  {after}",
            counters.acked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(rng.between(0, 300))).await;
        match Collector::try_start(mode, &wal, port, &args) {
            Ok(c) => collector = Some(c),
            Err(why) => {
                stop.store(true, Ordering::Relaxed);
                panic!("{test}: the collector did not restart after cut {cut}: {why}");
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let load = finish_load(load).await;
    if broker == Broker::Unreachable {
        // Everything acknowledged is only in the WAL; a collector with the broker drains it.
        collector.take().unwrap().kill9();
        collector = Some(Collector::start("run", &wal, 0, &topics.args("run")));
    }

    let what = format!("{test} ({cuts} power cuts)");
    let rows = topics.transformed.clone();
    tokio::task::spawn_blocking(move || verify(&brokers, &rows, &load, &snapshots, &what)).await.unwrap();
    // Also on a panic: the collector stops first, then the topics go, then the mount.
    drop(collector);
    drop(topics);
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_power_cuts_under_load_exactly_once() {
    power_cuts_under_load("every_acknowledged_event_survives_power_cuts_under_load_exactly_once", Broker::Up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_power_cuts_with_the_broker_unreachable_exactly_once() {
    power_cuts_under_load(
        "every_acknowledged_event_survives_power_cuts_with_the_broker_unreachable_exactly_once",
        Broker::Unreachable,
    )
    .await;
}
