//! TLS and SASL against a real broker: `scripts/kafka.sh` with its SASL_SSL listener (a
//! throwaway CA and broker certificate made with `openssl`, SCRAM users made with Kafka's own
//! storage tool, PLAIN users in the listener's JAAS line), on free ports. The tests of this file
//! share one broker, started by the first and reset when the last one drops it.
//!
//! Whether an unreachable Kafka still lets the collector start and accept is
//! `pipeline::with_kafka_unreachable_ingest_keeps_accepting_and_delivers_after_restart` (and
//! every HTTP test of `tests/http.rs`, which run against a port nothing listens on).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::ToSocketAddrs;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use common::*;

/// The SASL_SSL broker of this file, with what `scripts/kafka.sh` made for it.
struct SaslKafka {
    port: u16,
    controller_port: u16,
    sasl_port: u16,
    /// `KAFKA_SASL_*` from the script's `credentials` file: the CA, a CA that signed nothing,
    /// the user and its (throwaway) password.
    credentials: HashMap<String, String>,
}

impl SaslKafka {
    /// The broker the tests running now share; started if none runs.
    fn shared() -> Arc<SaslKafka> {
        static SHARED: Mutex<Weak<SaslKafka>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kafka) = shared.upgrade() {
            return kafka;
        }
        let kafka = Arc::new(SaslKafka::start());
        *shared = Arc::downgrade(&kafka);
        kafka
    }

    fn start() -> SaslKafka {
        let mut kafka = SaslKafka {
            port: free_port(),
            controller_port: free_port(),
            sasl_port: free_port(),
            credentials: HashMap::new(),
        };
        let started = Instant::now();
        kafka.script("start");
        eprintln!("tls: SASL_SSL broker up in {:.1} s", started.elapsed().as_secs_f64());
        let state = concat!(env!("CARGO_MANIFEST_DIR"), "/.kafka");
        let file = Path::new(state).join(format!("tls-{}", kafka.port)).join("credentials");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        kafka.credentials = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        kafka
    }

    fn script(&self, action: &str) {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
            .arg(action)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_SASL_SSL_PORT", self.sasl_port.to_string())
            .env("KAFKA_HEAP", "512m")
            .status()
            .unwrap();
        assert!(status.success(), "scripts/kafka.sh {action} failed");
    }

    fn get(&self, key: &str) -> String {
        self.credentials.get(key).unwrap_or_else(|| panic!("{key} missing from the credentials file")).clone()
    }

    /// The plaintext listener: for deleting the tests' topics.
    fn plaintext(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn sasl_ssl(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_port)
    }

    /// librdkafka properties for the SASL_SSL listener.
    fn properties(&self, mechanism: &str, password: &str, ca: &str) -> Vec<(String, String)> {
        [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", mechanism),
            ("sasl.username", &self.get("KAFKA_SASL_USER")),
            ("sasl.password", password),
            ("ssl.ca.location", ca),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
    }

    /// The same, as the collector's `-X` flags.
    fn flags(&self, mechanism: &str, password: &str, ca: &str) -> Vec<String> {
        self.properties(mechanism, password, ca)
            .into_iter()
            .flat_map(|(k, v)| ["-X".into(), format!("{k}={v}")])
            .collect()
    }
}

impl Drop for SaslKafka {
    fn drop(&mut self) {
        self.script("reset");
    }
}

/// `topics.args(mode)` pointed at the SASL_SSL listener.
fn args(kafka: &SaslKafka, topics: &Topics, mode: &str, security: Vec<String>) -> Vec<String> {
    let mut args = topics.args(mode);
    assert_eq!(args[0], "--brokers");
    args[1] = kafka.sasl_ssl();
    args.extend(security);
    args
}

/// Runs `collector <mode> <args>` (with a WAL and listeners of its own for `run` and `serve`)
/// until it exits, for at most `limit`: its exit status (`None` if it had to be killed), its
/// stderr, and how long it ran.
fn run_to_exit(mode: &str, args: &[String], limit: Duration) -> (Option<ExitStatus>, String, Duration) {
    let wal = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_collector"));
    command.arg(mode);
    if mode != "transform" {
        command.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--wal-dir"]).arg(wal.path());
    }
    let started = Instant::now();
    let mut child =
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    (status, reader.join().unwrap(), elapsed)
}

/// A configuration error must stop a start well within this.
const START_UP_LIMIT: Duration = Duration::from_secs(30);

/// Asserts that `collector <mode>` stopped at start-up, non-zero, with a message containing
/// every one of `expected`, and without `secret`.
fn assert_refused(mode: &str, args: &[String], expected: &[&str], secret: &str) -> Duration {
    let (status, stderr, elapsed) = run_to_exit(mode, args, START_UP_LIMIT);
    let status =
        status.unwrap_or_else(|| panic!("`collector {mode}` was still running after {START_UP_LIMIT:?}:\n{stderr}"));
    assert!(!status.success(), "`collector {mode}` exited successfully:\n{stderr}");
    for text in expected {
        assert!(stderr.contains(text), "`collector {mode}`: {text:?} missing from:\n{stderr}");
    }
    assert!(!stderr.contains(secret), "`collector {mode}` logged a secret:\n{stderr}");
    assert!(!stderr.contains("Collector listening."), "`collector {mode}` started listening first:\n{stderr}");
    eprintln!("tls: `collector {mode}` refused in {:.2} s: {}", elapsed.as_secs_f64(), stderr.trim());
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sasl_ssl_and_scram_sha_512_the_whole_pipeline_delivers_every_row_once() {
    let kafka = SaslKafka::shared();
    let topics = Topics::new(&kafka.plaintext());
    let (password, ca) = (kafka.get("KAFKA_SASL_PASSWORD"), kafka.get("KAFKA_SASL_CA"));
    let wal = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let flags = args(&kafka, &topics, "run", kafka.flags("SCRAM-SHA-512", &password, &ca));
    let c = Collector::start("run", wal.path(), 0, &flags);
    let http = reqwest::Client::new();
    let mut acked = HashSet::new();
    for i in 0..20 {
        let id = format!("tls-{i}");
        let r =
            http.post(c.url("/collect")).header("content-type", "application/json").body(event_body(&id, "u")).send();
        assert_eq!(r.await.unwrap().status(), 200);
        acked.insert(id);
    }
    // Read back independently: kcat (its own librdkafka) over TLS with SASL PLAIN. (Debian's
    // kcat is built on librdkafka 2.0, whose SCRAM Kafka 4 rejects: librdkafka#4895.)
    let reader = kafka.properties("PLAIN", &password, &ca);
    let (brokers, topic) = (kafka.sasl_ssl(), topics.transformed.clone());
    let counts = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let counts = kcat_ids_with(&brokers, &reader, &topic);
            if acked.iter().all(|id| counts.contains_key(id)) || Instant::now() > deadline {
                return (acked, counts);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let (acked, counts) = counts.await.unwrap();
    let missing: Vec<_> = acked.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(missing.is_empty(), "rows missing from {}: {missing:?}", topics.transformed);
    assert!(counts.values().all(|&n| n == 1), "duplicated rows: {counts:?}");
    assert_eq!(counts.len(), acked.len());
    assert_eq!(c.status().await["flush"]["kafka_ok"], true);
    eprintln!("tls: 20 events through the SASL_SSL pipeline in {:.1} s", started.elapsed().as_secs_f64());
    drop(c);
}

#[test]
fn with_scram_sha_256_serve_delivers_and_logs_no_secret_even_at_debug_level() {
    let kafka = SaslKafka::shared();
    let topics = Topics::new(&kafka.plaintext());
    let (password, ca) = (kafka.get("KAFKA_SASL_PASSWORD"), kafka.get("KAFKA_SASL_CA"));
    let mut flags = args(&kafka, &topics, "serve", kafka.flags("SCRAM-SHA-256", &password, &ca));
    // librdkafka's own debug lines too, its configuration dump included.
    flags.extend(["-X", "debug=security,broker,conf", "--log", "debug"].map(String::from));
    let wal = tempfile::tempdir().unwrap();
    let log = wal.path().join("collector.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "none", "--wal-dir"])
        .arg(wal.path().join("wal"))
        .args(&flags)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + START_UP_LIMIT;
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains("Collector listening.")) {
            break line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        }
        assert!(child.try_wait().unwrap().is_none(), "the collector exited:\n{text}");
        assert!(Instant::now() < deadline, "the collector did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        for i in 0..10 {
            let r = http.post(format!("http://{addr}/collect")).header("content-type", "application/json");
            assert_eq!(r.body(event_body(&format!("s{i}"), "u")).send().await.unwrap().status(), 200);
        }
    });
    // Read back with this build's librdkafka, over SASL PLAIN.
    let reader = kafka.properties("PLAIN", &password, &ca);
    let raw = read_topic_with(
        &kafka.sasl_ssl(),
        &reader,
        &topics.raw,
        10,
        Duration::from_secs(60),
        Duration::from_millis(500),
    );
    assert_eq!(raw.len(), 10, "every request once in {}", topics.raw);
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("sasl.password = [redacted]"), "librdkafka's configuration dump is in the log");
    assert!(!text.contains(&password), "the password is in the log");
}

#[test]
fn a_wrong_password_an_unknown_user_or_mechanism_stop_every_mode_at_start_up() {
    let kafka = SaslKafka::shared();
    let topics = Topics::new(&kafka.plaintext());
    let (password, ca) = (kafka.get("KAFKA_SASL_PASSWORD"), kafka.get("KAFKA_SASL_CA"));
    let wrong = "not-the-password-7f3a";
    let refused_in =
        [("run", "SCRAM-SHA-512"), ("serve", "SCRAM-SHA-256"), ("transform", "PLAIN")].map(|(mode, mechanism)| {
            let args = args(&kafka, &topics, mode, kafka.flags(mechanism, wrong, &ca));
            let naming =
                format!("Kafka refused the SASL credentials (sasl.username=collector, sasl.mechanism={mechanism})");
            assert_refused(mode, &args, &[&naming, "check sasl.username and sasl.password"], wrong)
        });
    let mut unknown = args(&kafka, &topics, "serve", kafka.flags("SCRAM-SHA-512", &password, &ca));
    unknown.extend(["-X".into(), "sasl.username=mallory".into()]);
    assert_refused("serve", &unknown, &["Kafka refused the SASL credentials (sasl.username=mallory"], &password);
    // The broker does not enable OAUTHBEARER (an unsecured token, built in for tests like this).
    let mut oauth = args(&kafka, &topics, "serve", kafka.flags("OAUTHBEARER", &password, &ca));
    oauth.extend(
        ["-X", "enable.sasl.oauthbearer.unsecure.jwt=true", "-X", "sasl.oauthbearer.config=principal=collector"]
            .map(String::from),
    );
    assert_refused(
        "serve",
        &oauth,
        &["Kafka does not accept the SASL mechanism OAUTHBEARER", "set sasl.mechanism to one the cluster enables"],
        &password,
    );
    assert!(refused_in.iter().all(|t| *t < Duration::from_secs(10)), "each refusal within 10 s: {refused_in:?}");
}

#[test]
fn a_certificate_from_an_untrusted_ca_or_for_another_host_stops_the_start() {
    let kafka = SaslKafka::shared();
    let topics = Topics::new(&kafka.plaintext());
    let (password, ca, untrusted) =
        (kafka.get("KAFKA_SASL_PASSWORD"), kafka.get("KAFKA_SASL_CA"), kafka.get("KAFKA_SASL_UNTRUSTED_CA"));
    let args_untrusted = args(&kafka, &topics, "run", kafka.flags("SCRAM-SHA-512", &password, &untrusted));
    let naming = format!("Kafka's TLS certificate is not signed by a CA in ssl.ca.location={untrusted}");
    let took = assert_refused("run", &args_untrusted, &[&naming, "certificate verify failed"], &password);
    assert!(took < Duration::from_secs(10), "{took:?}");
    let args_transform = args(&kafka, &topics, "transform", kafka.flags("SCRAM-SHA-512", &password, &untrusted));
    assert_refused("transform", &args_transform, &[&naming], &password);

    // The same certificate reached by a name it does not carry (the machine's host name, when
    // it resolves to 127.0.0.1 like here; the certificate names 127.0.0.1 and localhost).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let resolved: Vec<_> =
        (host.as_str(), kafka.sasl_port).to_socket_addrs().map(Iterator::collect).unwrap_or_default();
    let loopback = !resolved.is_empty() && resolved.iter().all(|a| a.ip().is_loopback()) && host != "localhost";
    if !loopback {
        eprintln!(
            "tls: skipping the other-host case: host name {host:?} does not resolve to the loopback address only"
        );
        return;
    }
    let mut other_host = args(&kafka, &topics, "serve", kafka.flags("SCRAM-SHA-512", &password, &ca));
    other_host[1] = format!("{host}:{}", kafka.sasl_port);
    assert_refused(
        "serve",
        &other_host,
        &[
            "Kafka's TLS certificate is signed by a trusted CA but names other hosts than the one connected to",
            "reach the brokers by a name their certificates carry",
        ],
        &password,
    );
}
