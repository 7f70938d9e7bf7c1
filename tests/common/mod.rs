//! Shared helpers for the integration tests: a real Kafka (started by `scripts/test.sh` or
//! `scripts/kafka.sh start`), throwaway topics, the collector as a real process, and an
//! independent reader of topics.
#![allow(dead_code)] // each test file uses a different subset

pub mod balancer;
pub mod cluster;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const SEED_SAMPLE: &str = r#"{"events":[{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","product_id":"prod_demo"}],"ctx":{"browser":"Firefox","device":"Desktop","version":"126.0"}}"#;

/// Deterministic pseudo-random numbers (xorshift) for the crash and power-cut tests' pauses:
/// the seed comes from the environment variable `var` or the clock, and is printed so that a
/// failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(var: &str, label: &str) -> Self {
        let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        eprintln!("{label}: seed {var}={seed}");
        Rng(seed)
    }

    /// A number in `lo..hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

/// The broker the tests use: `COLLECTOR_TEST_BROKERS`, default the local script's broker.
pub fn brokers() -> String {
    let brokers = std::env::var("COLLECTOR_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = brokers.split(',').next().unwrap().to_string();
    let addr: SocketAddr = first.parse().expect("COLLECTOR_TEST_BROKERS must be host:port with an IP");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "no Kafka on {brokers}: run the tests with scripts/test.sh, or start one with scripts/kafka.sh start"
    );
    brokers
}

/// A unique name per test run, so tests never see each other's data.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The three topics of one test; deleted when dropped.
pub struct Topics {
    pub brokers: String,
    pub raw: String,
    pub transformed: String,
    pub dead_letter: String,
}

impl Topics {
    pub fn new(brokers: &str) -> Self {
        let id = unique("t");
        Topics {
            brokers: brokers.to_string(),
            raw: format!("{id}-raw"),
            transformed: format!("{id}-rows"),
            dead_letter: format!("{id}-dlq"),
        }
    }

    /// Command-line flags pointing a collector in `mode` at these topics.
    pub fn args(&self, mode: &str) -> Vec<String> {
        let mut args = vec![
            "--brokers".into(),
            self.brokers.clone(),
            "--raw-topic".into(),
            self.raw.clone(),
            "--transformed-topic".into(),
            self.transformed.clone(),
            "--dead-letter-topic".into(),
            self.dead_letter.clone(),
        ];
        if mode != "serve" {
            // A group per test: tests sharing a group would rebalance each other.
            args.extend(["--group-id".into(), format!("{}-group", self.raw)]);
        }
        if mode == "transform" {
            // Many workers run at once in the tests: each on a port of its own.
            args.extend(["--admin-listen".into(), "127.0.0.1:0".into()]);
        }
        args
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        let brokers = self.brokers.clone();
        let names = [self.raw.clone(), self.transformed.clone(), self.dead_letter.clone()];
        // Drop may run inside a Tokio runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let admin: AdminClient<DefaultClientContext> =
                ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let _ = rt.block_on(admin.delete_topics(&names, &AdminOptions::new()));
        })
        .join();
    }
}

/// One message as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub value: String,
    pub headers: HashMap<String, String>,
    pub partition: i32,
}

/// Reads `topic` from the beginning with an independent consumer (`read_committed`, no
/// group) until `expected` messages arrived or `timeout` passed, then keeps reading for
/// `settle` more to catch extra (duplicate) messages.
pub fn read_topic(brokers: &str, topic: &str, expected: usize, timeout: Duration, settle: Duration) -> Vec<Record> {
    read_topic_with(brokers, &[], topic, expected, timeout, settle)
}

/// [`read_topic`] with extra librdkafka `properties` (TLS and SASL, say).
pub fn read_topic_with(
    brokers: &str,
    properties: &[(String, String)],
    topic: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<Record> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false");
    for (k, v) in properties {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let deadline = Instant::now() + timeout;
    // The topic may not exist yet; wait for its metadata.
    let partitions = loop {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            if n > 0 && md.topics()[0].error().is_none() {
                break n as i32;
            }
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if out.len() >= expected && settle_until.is_none() {
            settle_until = Some(now + settle);
        }
        if settle_until.is_some_and(|s| now >= s) || (settle_until.is_none() && now >= deadline) {
            break;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                headers,
                partition: m.partition(),
            });
        }
    }
    out
}

/// A port that was free a moment ago, for an address nothing should answer on.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real `collector` binary, running.
pub struct Collector {
    pub child: Child,
    /// The public listener: `/collect`, `/healthz`, `/readyz`.
    pub addr: SocketAddr,
    /// The admin listener: the status page `/`, `/metrics`, `/healthz`, `/readyz`; `None` when
    /// started with `--admin-listen none`.
    pub admin: Option<SocketAddr>,
    /// Every line it logged so far (warnings, and the start-up lines), read with
    /// [`Collector::log`]; stays empty for a collector a test started itself.
    pub log: Arc<std::sync::Mutex<String>>,
}

impl Collector {
    /// Starts `collector <mode> --listen 127.0.0.1:<port> --wal-dir <wal> <extra…>` and waits
    /// until it reports the addresses it is listening on. Port 0 lets the OS choose, which avoids
    /// races between tests; a fixed port is for restarting a collector where clients expect it.
    /// The admin listener gets a port of its own choosing too, unless `extra` names
    /// `--admin-listen`.
    pub fn start(mode: &str, wal: &Path, port: u16, extra: &[String]) -> Collector {
        Collector::try_start(mode, wal, port, extra).unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Collector::start`], with an error instead of a panic when the collector does not come
    /// up within 30 s (it exited, or never started listening; it is killed), for tests that
    /// report what happened first.
    pub fn try_start(mode: &str, wal: &Path, port: u16, extra: &[String]) -> Result<Collector, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_collector"));
        command.arg(mode).arg("--listen").arg(format!("127.0.0.1:{port}")).arg("--wal-dir").arg(wal);
        if !extra.iter().any(|a| a == "--admin-listen") {
            command.args(["--admin-listen", "127.0.0.1:0"]);
        }
        let Spawned { mut child, log, listening } = spawn_logged(command.args(extra), "collector");
        let mut admin = None;
        let addr = loop {
            match listening.recv_timeout(Duration::from_secs(30)) {
                Ok((ListenerKind::Admin, addr)) => admin = Some(addr),
                Ok((ListenerKind::Public, addr)) => break addr,
                Err(_) => {
                    let status = child.try_wait().unwrap();
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "the collector did not start listening (exit status {status:?}); its log is above"
                    ));
                }
            }
        };
        Ok(Collector { child, addr, admin, log })
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The port this collector listens on (to restart another one in its place).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A URL on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener (status page, metrics).
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("this collector runs without an admin listener"))
    }

    /// The status page as JSON (from the admin listener).
    pub async fn status(&self) -> serde_json::Value {
        let page = reqwest::Client::new().get(self.admin_url("/")).header("accept", "application/json").send();
        page.await.unwrap().json().await.unwrap()
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which start-up line an address came from.
pub enum ListenerKind {
    Admin,
    Public,
}

/// A `collector` process with its stderr read on a thread of its own.
pub struct Spawned {
    pub child: Child,
    /// Every line it logged so far.
    pub log: Arc<std::sync::Mutex<String>>,
    /// Each listener's address, as its start-up line names it (the admin line comes first).
    pub listening: std::sync::mpsc::Receiver<(ListenerKind, SocketAddr)>,
}

/// Spawns `command` (the collector binary with its arguments) logging warnings and the
/// start-up lines that carry the bound addresses; keeps its log, echoes it to the test's
/// output as `[label] …`, and sends each listener's address as it is logged.
pub fn spawn_logged(command: &mut Command, label: &str) -> Spawned {
    let mut child = command
        .env("COLLECTOR_LOG", "warn,collector::app=info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the collector binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, listening) = std::sync::mpsc::channel();
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let (kept, label) = (log.clone(), label.to_string());
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut text = kept.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
            drop(text);
            let addr = || line.split("addr=").nth(1).and_then(|rest| rest.split_whitespace().next());
            for (kind, what) in
                [(ListenerKind::Admin, "Admin listening."), (ListenerKind::Public, "Collector listening.")]
            {
                if let Some(addr) = addr().filter(|_| line.contains(what)) {
                    let _ = tx.send((kind, addr.parse().expect("the collector logs a socket address")));
                }
            }
            eprintln!("[{label}] {line}");
        }
    });
    Spawned { child, log, listening }
}

/// A one-event request whose event is identifiable by `id` (carried as `event_type`).
pub fn event_body(id: &str, user: &str) -> String {
    format!(
        r#"{{"events":[{{"event_type":"{id}","event_time":1750867000000,"user_id":"{user}"}}],"ctx":{{"browser":"Firefox","device":"Desktop","version":"126.0"}}}}"#
    )
}

/// Reads `topic` completely with kcat (`isolation.level=read_committed`), the independent
/// reader of the crash tests, and counts event ids: the `event_type` of a row, or of the first
/// event of a raw request.
pub fn kcat_ids(brokers: &str, topic: &str) -> HashMap<String, usize> {
    kcat_ids_with(brokers, &[], topic)
}

/// [`kcat_ids`] with extra librdkafka `properties` for kcat (`-X`).
pub fn kcat_ids_with(brokers: &str, properties: &[(String, String)], topic: &str) -> HashMap<String, usize> {
    let out = Command::new("kcat")
        .args(["-b", brokers, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%s\n"])
        .args(["-X", "isolation.level=read_committed"])
        .args(properties.iter().flat_map(|(k, v)| ["-X".to_string(), format!("{k}={v}")]))
        .output()
        .expect("kcat is needed by the crash tests (apt-get install kcat; .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("Unknown topic or partition") {
        // Not created yet (the collector creates its topics when it first reaches Kafka).
        return HashMap::new();
    }
    assert!(out.status.success(), "kcat failed: {stderr}");
    let mut counts = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad message {line:?}: {e}"));
        let id = v["event_type"].as_str().or_else(|| v["events"][0]["event_type"].as_str()).unwrap();
        *counts.entry(id.to_string()).or_default() += 1;
    }
    counts
}

/// Waits (up to `patience`) until every id in `acked` is in `topic`, then asserts each is there
/// exactly once. Returns how many messages were read.
pub fn assert_exactly_once(
    brokers: &str,
    topic: &str,
    acked: &HashSet<String>,
    patience: Duration,
    what: &str,
) -> usize {
    let deadline = Instant::now() + patience;
    loop {
        let counts = kcat_ids(brokers, topic);
        let lost: Vec<&String> = acked.iter().filter(|id| !counts.contains_key(*id)).collect();
        if lost.is_empty() || Instant::now() > deadline {
            let duplicated: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
            let read: usize = counts.values().sum();
            eprintln!(
                "{what}: acknowledged {}, messages read {read}, lost {}, duplicated {}",
                acked.len(),
                lost.len(),
                duplicated.len()
            );
            assert!(lost.is_empty(), "{what}: acknowledged events missing: {:?}", &lost[..lost.len().min(20)]);
            assert!(duplicated.is_empty(), "{what}: duplicated: {:?}", &duplicated[..duplicated.len().min(20)]);
            return read;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Copies a directory tree (a WAL, say).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// How the tracker-like load behaves.
#[derive(Clone, Copy)]
pub struct LoadShape {
    pub clients: usize,
    /// Pause after each acknowledged request.
    pub pace: Duration,
    /// Filler bytes per request (in the event's unknown field `pad`, which rows do not carry),
    /// to grow the WAL faster.
    pub pad: usize,
}

/// Live counters of a running load, for tests that watch it.
#[derive(Default)]
pub struct LoadCounters {
    pub acked: AtomicUsize,
    /// 503 answers (WAL full, draining); each had to carry `Retry-After`.
    pub unavailable: AtomicUsize,
    /// Per client, how many of its requests (`c{client}-0` … `c{client}-{n-1}`) are acknowledged
    /// so far: each client sends one request at a time, in order, so a snapshot taken while no
    /// collector runs says exactly which ids were acknowledged before that moment.
    pub acked_per_client: std::sync::Mutex<HashMap<usize, usize>>,
}

/// What a load did, summed over its clients.
#[derive(Default)]
pub struct LoadOutcome {
    pub acked: HashSet<String>,
    pub attempted: usize,
    /// Requests sent again (same key) after an error, a 503 or a cut-off answer.
    pub retries: usize,
}

/// Clients that behave like real trackers: one-event requests with unique ids (carried as
/// `event_type`), each retried with its `Idempotency-Key` until it is acknowledged; they give
/// up on the request in hand only when `stop` is set. The balanced load
/// ([`balancer::start_balanced_load`]) with one collector behind it.
pub fn start_load(
    port: u16,
    shape: LoadShape,
    stop: Arc<AtomicBool>,
    counters: Arc<LoadCounters>,
) -> Vec<tokio::task::JoinHandle<LoadOutcome>> {
    balancer::start_balanced_load(&[port], shape, stop, counters)
        .into_iter()
        .map(|client| tokio::spawn(async move { client.await.unwrap().load }))
        .collect()
}

/// Waits for every client and sums what they did.
pub async fn finish_load(clients: Vec<tokio::task::JoinHandle<LoadOutcome>>) -> LoadOutcome {
    let mut total = LoadOutcome::default();
    for c in clients {
        let o = c.await.unwrap();
        total.attempted += o.attempted;
        total.retries += o.retries;
        total.acked.extend(o.acked);
    }
    total
}

/// Opens a WAL, waiting for sled to release its file lock: sled drops it from a background
/// thread shortly after the last handle goes, so an immediate in-process reopen can find it
/// still held.
pub fn open_wal(dir: &Path, options: collector::wal::LogOptions) -> collector::wal::SledLog {
    for _ in 0..200 {
        match collector::wal::SledLog::open(dir, options.clone()) {
            Ok(log) => return log,
            Err(e) if e.to_string().contains("could not acquire lock") => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("opening the WAL failed: {e}"),
        }
    }
    panic!("the WAL lock was never released");
}

/// Runs `collector <args…>` with exactly `env` as its environment (none of the caller's
/// `COLLECTOR_*` variables leak in) and no standard input.
pub fn collector_output(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running the collector binary")
}

/// One setting as `collector config check` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// As TOML writes it: `8192`, `"0.0.0.0:8000"`, `["a", "b"]`; `None` when not set.
    pub value: Option<String>,
    /// `default`, `file`, `env COLLECTOR_…` or `flag --…`.
    pub source: String,
}

/// The settings `collector config check` printed, by key (`wal_max_mib`; a librdkafka
/// property as `kafka.properties.<name>`).
pub fn checked_settings(stdout: &str) -> std::collections::BTreeMap<String, Checked> {
    let mut settings = std::collections::BTreeMap::new();
    let mut section = String::new();
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (setting, source) = match line.rsplit_once("  # ") {
            Some((setting, source)) => (setting.trim(), source.trim().to_string()),
            None => continue,
        };
        let (key, value) = if let Some(unset) = setting.strip_prefix("# ").and_then(|s| s.strip_suffix(": not set")) {
            (unset.to_string(), None)
        } else {
            let (key, value) = setting.split_once(" = ").unwrap_or_else(|| panic!("not `key = value`: {line}"));
            (key.to_string(), Some(value.to_string()))
        };
        let key = if section == "kafka.properties" {
            format!("kafka.properties.{}", serde_json::from_str::<String>(&key).unwrap())
        } else {
            key
        };
        settings.insert(key, Checked { value, source });
    }
    settings
}
