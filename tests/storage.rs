//! Storage faults on a real, small filesystem: a tmpfs each test mounts (as root; where that is
//! impossible the test says so and skips). The WAL says "full" before the disk is; a disk that
//! fills up anyway answers `503 wal_unavailable` at once, stays unready, and heals by itself
//! when space returns; and every acknowledged event still reaches Kafka exactly once.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_exactly_once, Collector, Topics};

/// A tmpfs of a given size, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason printed) where mounting is not allowed.
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            Ok(out) => {
                eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {}", String::from_utf8_lossy(&out.stderr));
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes still available, as `df` reports them.
    fn available(&self) -> u64 {
        let out = Command::new("df").args(["-B1", "--output=avail"]).arg(self.path()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Writes a file until the filesystem refuses more: the disk is then full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A request of `events` events, the first one identified by `id`.
fn body(id: &str, events: usize) -> String {
    let event = |n: usize| {
        let kind = if n == 0 { id.to_string() } else { format!("{id}-{n}") };
        format!(r#"{{"event_type":"{kind}","event_time":1750867000000,"user_id":"user-{n}","product_id":"p-{n}"}}"#)
    };
    let events: Vec<String> = (0..events).map(event).collect();
    format!(r#"{{"events":[{}],"ctx":{{"browser":"Firefox","device":"Desktop","version":"126.0"}}}}"#, events.join(","))
}

/// POSTs a request: the status and the error code, if any. No answer within 10 s fails the
/// test: a stalled WAL must never hold a request.
async fn post(http: &reqwest::Client, c: &Collector, body: String) -> (u16, String) {
    let started = Instant::now();
    let answer = http.post(c.url("/collect")).header("content-type", "application/json").body(body).send().await;
    let r = answer.unwrap_or_else(|e| panic!("no answer after {:?}: {e}", started.elapsed()));
    let status = r.status().as_u16();
    if status == 503 {
        assert!(r.headers().contains_key("retry-after"), "a 503 carries Retry-After");
    }
    let json: serde_json::Value = r.json().await.unwrap();
    (status, json["error"]["code"].as_str().unwrap_or_default().to_string())
}

async fn ready(http: &reqwest::Client, c: &Collector) -> Option<(u16, String)> {
    let r = http.get(c.url("/readyz")).send().await.ok()?;
    let status = r.status().as_u16();
    let json: serde_json::Value = r.json().await.ok()?;
    Some((status, json["reason"].as_str().unwrap_or_default().to_string()))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_says_full_before_a_small_disk_is_and_nothing_is_lost() {
    let Some(disk) = Tmpfs::mount(48) else { return };
    let wal = disk.path().join("wal");
    // Kafka unreachable (nothing listens on the discard port): the WAL can only grow.
    let unreachable =
        ["--brokers", "127.0.0.1:9", "--wal-min-free-mib", "8", "--drain-timeout-ms", "500"].map(String::from);
    let c = Collector::start("serve", &wal, 0, &unreachable);
    let http = client();
    let mut acked = HashSet::new();
    let mut first_refusal = None;
    for i in 0..5000 {
        let id = format!("full-{i}");
        match post(&http, &c, body(&id, 500)).await {
            (200, _) => {
                acked.insert(id);
            }
            (503, code) if code == "wal_full" => {
                first_refusal = Some(i);
                break;
            }
            other => panic!("request {i}: expected 200 or 503 wal_full, got {other:?}"),
        }
    }
    let refused_at = first_refusal.expect("the WAL never said full");
    let left = disk.available();
    eprintln!("wal_full after {refused_at} requests of 500 events; {left} bytes still free on the 48 MiB disk");
    assert_eq!(ready(&http, &c).await, Some((503, "wal_full".into())));
    assert!(left >= 4 << 20, "the WAL stopped before the disk filled ({left} bytes left)");
    drop(c);

    // Everything acknowledged is delivered once Kafka is there.
    let topics = Topics::new(&common::brokers());
    let c = Collector::start("serve", &wal, 0, &topics.args("serve"));
    let (brokers, raw) = (topics.brokers.clone(), topics.raw.clone());
    tokio::task::spawn_blocking(move || {
        assert_exactly_once(&brokers, &raw, &acked, Duration::from_secs(120), "WAL full on a small disk")
    })
    .await
    .unwrap();
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_answers_503_stays_unready_and_heals_when_space_returns() {
    let Some(disk) = Tmpfs::mount(32) else { return };
    let wal = disk.path().join("wal");
    let topics = Topics::new(&common::brokers());
    let mut args = topics.args("serve");
    // No headroom: let the disk really fill up.
    args.extend(["--wal-min-free-mib", "0"].map(String::from));
    let mut c = Collector::start("serve", &wal, 0, &args);
    let http = client();
    let mut acked = HashSet::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        assert_eq!(post(&http, &c, body(&id, 50)).await.0, 200);
        acked.insert(id);
    }

    let filler = disk.fill();
    let mut refused = None;
    for i in 0..2000 {
        let id = format!("full-{i}");
        let started = Instant::now();
        match post(&http, &c, body(&id, 50)).await {
            (200, _) => {
                acked.insert(id);
            }
            (503, code) => {
                refused = Some((i, code, started.elapsed()));
                break;
            }
            other => panic!("request {i} on a full disk: {other:?}"),
        }
    }
    let (at, code, took) = refused.expect("a full disk never refused a request");
    eprintln!("full disk: request {at} answered 503 {code} after {took:?}");
    assert_eq!(code, "wal_unavailable");
    assert_eq!(ready(&http, &c).await, Some((503, "wal_unavailable".into())), "unready at once");
    let started = Instant::now();
    assert_eq!(post(&http, &c, body("while-failed", 1)).await, (503, "wal_unavailable".into()));
    eprintln!("full disk: the next request answered 503 after {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ready(&http, &c).await, Some((503, "wal_unavailable".into())), "never claims to be ready");

    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();
    let deadline = freed + Duration::from_secs(60);
    // The collector restarts in place, on the same port; refused connections meanwhile are fine.
    while ready(&http, &c).await != Some((200, String::new())) {
        assert!(Instant::now() < deadline, "the collector did not heal within 60 s of space returning");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("healed {:?} after space returned", freed.elapsed());
    assert!(c.child.try_wait().unwrap().is_none(), "the same process healed; it did not exit");
    for i in 0..20 {
        let id = format!("after-{i}");
        assert_eq!(post(&http, &c, body(&id, 50)).await.0, 200);
        acked.insert(id);
    }
    let (brokers, raw) = (topics.brokers.clone(), topics.raw.clone());
    tokio::task::spawn_blocking(move || {
        assert_exactly_once(&brokers, &raw, &acked, Duration::from_secs(120), "disk full, then freed")
    })
    .await
    .unwrap();
    drop(c);
}
