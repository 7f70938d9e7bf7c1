//! The deployment files are real: `deploy/collector.toml`, the configuration file the unit
//! starts the collector with, boots as written; `deploy/collector.env.example` names only
//! settings the binary has and configures the same collector as variables; and
//! `deploy/collector.service` gives the collector the time and the file descriptors that
//! configuration asks for. No Kafka needed: the broker address points nowhere, which the
//! collector rides out in its WAL.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collector::app::{ADMIN_EXIT_GRACE, RUNTIME_EXIT_GRACE, STAGE_EXIT_GRACE};
use common::*;

const ENV_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/collector.env.example");
const CONFIG_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/collector.toml");
const UNIT_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/collector.service");

/// The `KEY=VALUE` assignments of an environment file in systemd's format: blank lines and
/// lines starting with `#` are skipped, one pair of surrounding quotes is removed.
fn env_assignments(path: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{path}:{}: not KEY=VALUE: {line}", n + 1));
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        assert!(key.starts_with("COLLECTOR_"), "{path}:{}: {key} is not a collector setting", n + 1);
        // systemd has no trailing comments: the `#` and what follows would be in the value.
        assert!(!value.contains(" #"), "{path}:{}: a comment after a value becomes part of it: {line}", n + 1);
        assert!(vars.insert(key.to_string(), value.to_string()).is_none(), "{path}:{}: {key} is set twice", n + 1);
    }
    vars
}

/// Every `COLLECTOR_…` name a file mentions, in assignments and comments alike, so that a
/// commented-out alternative cannot name a setting that does not exist either.
fn mentioned_names(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.match_indices("COLLECTOR_")
        .map(|(at, prefix)| {
            let rest = &text[at + prefix.len()..];
            let end =
                rest.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')).unwrap_or(rest.len());
            format!("{prefix}{}", &rest[..end])
        })
        .filter(|name| name.len() > "COLLECTOR_".len())
        .collect()
}

/// The environment variables `collector run --help` documents (clap's `[env: NAME=]`), each with
/// its `[default: …]` if it has one.
fn documented_settings() -> BTreeMap<String, Option<String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["run", "--help"])
        .env_clear() // so the help shows no value from the caller's environment
        .output()
        .unwrap();
    assert!(out.status.success(), "collector run --help failed: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = help.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut settings = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("[env: ") {
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
            let default = lines
                .get(i + 1)
                .and_then(|next| next.strip_prefix("[default: "))
                .and_then(|d| d.strip_suffix(']'))
                .map(str::to_string);
            settings.insert(name, default);
        }
    }
    assert!(settings.len() > 30, "collector run --help documents only {settings:?}; has its format changed?");
    settings
}

/// The API key file the examples name (/etc/collector/api-keys), which `config check` reads.
const KEY_FILE: &str = "/etc/collector/api-keys";

/// What `collector config check run` prints for a configuration given by `args` (`--config
/// FILE`, or nothing) and exactly the variables `env`. The API key file is replaced by one that
/// exists here (the examples name [`KEY_FILE`]), and printed as the examples name it.
fn effective(args: &[&str], env: &BTreeMap<String, String>) -> BTreeMap<String, Checked> {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("api-keys");
    std::fs::write(&keys, "deploy-test-key-0123456789abcdef\n").unwrap();
    let keys = keys.display().to_string();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.retain(|(k, _)| *k != "COLLECTOR_API_KEY_FILE");
    env.push(("COLLECTOR_API_KEY_FILE", &keys));
    let args: Vec<&str> = args.iter().copied().chain(["config", "check", "run"]).collect();
    let out = collector_output(&args, &env);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "collector {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let mut settings = checked_settings(&stdout);
    let key_file = settings.get_mut("api_key_file").unwrap();
    assert_eq!(key_file.value.as_deref(), Some(format!("{keys:?}").as_str()));
    key_file.value = Some(format!("{KEY_FILE:?}"));
    settings
}

/// A number the check printed.
fn number(settings: &BTreeMap<String, Checked>, key: &str) -> u64 {
    let value = settings[key].value.as_deref().unwrap_or_else(|| panic!("{key} is not set"));
    value.parse().unwrap_or_else(|_| panic!("{key} = {value} is not a number"))
}

/// `Key=Value` lines of a unit file's `[section]`; the last assignment wins, as in systemd.
fn unit_section(path: &str, section: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut current = String::new();
    let mut keys = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.to_string();
        } else if current == format!("[{section}]") && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                keys.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    keys
}

/// A systemd time span of whole seconds or minutes: `45`, `45s`, `2min`.
fn time_span(value: &str) -> Duration {
    let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let n: u64 = number.parse().unwrap_or_else(|_| panic!("time span {value:?}"));
    match unit.trim() {
        "" | "s" | "sec" => Duration::from_secs(n),
        "min" | "m" => Duration::from_secs(60 * n),
        other => panic!("time span unit {other:?} in {value:?}: write seconds or minutes"),
    }
}

#[test]
fn every_setting_the_example_names_is_one_the_binary_documents() {
    let documented = documented_settings();
    let unknown: Vec<String> =
        mentioned_names(ENV_FILE).into_iter().filter(|name| !documented.contains_key(name)).collect();
    assert!(
        unknown.is_empty(),
        "deploy/collector.env.example names settings `collector run --help` does not document: {unknown:?}"
    );
}

#[test]
fn the_unit_gives_the_collector_the_time_and_descriptors_its_configuration_needs() {
    let service = unit_section(UNIT_FILE, "Service");
    assert_eq!(service["ExecStart"], "/usr/local/bin/collector --config /etc/collector/collector.toml run");
    assert_eq!(service["EnvironmentFile"], "-/etc/collector/collector.env", "optional: per-host overrides");
    assert_eq!(service["Restart"], "on-failure");
    let config = effective(&["--config", CONFIG_FILE], &BTreeMap::new());

    // The longest graceful shutdown of `collector run` with an admin listener (src/app.rs,
    // `PipelineConfig::longest_shutdown`): in-flight grace, drain deadline, the flusher's and
    // the transform worker's exit grace, the admin listener's, the runtime's.
    let grace = Duration::from_millis(number(&config, "shutdown_grace_ms"));
    let drain = Duration::from_millis(number(&config, "drain_timeout_ms"));
    let longest = grace + drain + STAGE_EXIT_GRACE * 2 + ADMIN_EXIT_GRACE + RUNTIME_EXIT_GRACE;
    let stop = time_span(&service["TimeoutStopSec"]);
    assert!(
        stop > longest,
        "TimeoutStopSec={stop:?} would SIGKILL a graceful shutdown that may take {longest:?} \
         (shutdown_grace_ms {grace:?} + drain_timeout_ms {drain:?} + stage exits)"
    );

    // One descriptor per connection, plus sled's files, Kafka sockets and the admin listener.
    let connections = number(&config, "max_connections");
    let files: u64 = service["LimitNOFILE"].parse().expect("LimitNOFILE is one number");
    assert!(
        files >= connections + 1024,
        "LimitNOFILE={files} leaves too little room above max_connections={connections}: \
         accept() would fail before the collector answers 503 too_many_connections"
    );

    // The WAL must be where systemd keeps it writable and persistent.
    let state = format!("/var/lib/{}/", service["StateDirectory"]);
    let wal = config["wal_dir"].value.clone().unwrap();
    assert!(wal.starts_with(&format!("\"{state}")), "wal_dir = {wal} is outside the unit's StateDirectory {state}");
}

#[test]
fn the_environment_example_configures_the_same_collector_as_the_configuration_file() {
    let from_file = effective(&["--config", CONFIG_FILE], &BTreeMap::new());
    let variables = env_assignments(ENV_FILE);
    let from_env = effective(&[], &variables);
    // The key file `effective` replaced: both name the same one.
    let in_file = std::fs::read_to_string(CONFIG_FILE).unwrap();
    assert!(in_file.lines().any(|l| l == format!("api_key_file = {KEY_FILE:?}")), "deploy/collector.toml");
    assert_eq!(variables["COLLECTOR_API_KEY_FILE"], KEY_FILE, "deploy/collector.env.example");
    let differences: Vec<String> = from_file
        .iter()
        .filter(|(key, file)| from_env.get(*key).map(|env| &env.value) != Some(&file.value))
        .map(|(key, file)| format!("{key}: {:?} in the file, {:?} as variables", file.value, from_env.get(key)))
        .chain(
            from_env.keys().filter(|key| !from_file.contains_key(*key)).map(|key| format!("{key}: only as variables")),
        )
        .collect();
    assert!(
        differences.is_empty(),
        "deploy/collector.toml and deploy/collector.env.example differ:\n{}",
        differences.join("\n")
    );
}

#[tokio::test]
async fn the_example_configuration_boots_takes_a_keyed_request_and_stops_within_the_units_timeout() {
    let config = effective(&["--config", CONFIG_FILE], &BTreeMap::new());
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let key = "deploy-test-key-0123456789abcdef";
    let key_file = dir.path().join("api-keys");
    std::fs::write(&key_file, format!("# written by tests/deploy.rs\n{key}\n")).unwrap();
    let (port, admin_port) = loop {
        let (a, b) = (free_port(), free_port());
        if a != b {
            break (a, b);
        }
    };

    // The example file as the unit runs it, with only what must be local to this test replaced,
    // as /etc/collector/collector.env would on a host: paths, listening addresses, and a broker
    // address where nothing answers.
    let overrides = [
        ("COLLECTOR_WAL_DIR", dir.path().join("wal").display().to_string()),
        ("COLLECTOR_API_KEY_FILE", key_file.display().to_string()),
        ("COLLECTOR_LISTEN", format!("127.0.0.1:{port}")),
        ("COLLECTOR_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
        ("COLLECTOR_BROKERS", format!("127.0.0.1:{}", free_port())),
    ];
    let mut vars = BTreeMap::new();
    for (name, value) in overrides {
        let key = name.trim_start_matches("COLLECTOR_").to_ascii_lowercase();
        let set = config[&key].source == "file"
            || key == "api_key_file" && config[&key].value == Some(format!("{KEY_FILE:?}"));
        assert!(set, "a production configuration sets {key}");
        vars.insert(name.to_string(), value);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["--config", CONFIG_FILE, "serve"])
        .env_clear()
        .envs(&vars)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the collector binary");
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[collector] {line}");
            lines.lock().unwrap().push(line);
        }
    });
    let mut collector = Collector {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: Some(format!("127.0.0.1:{admin_port}").parse().unwrap()),
        log: Default::default(),
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();

    // Ready on the admin listener, as a load balancer or an operator would ask.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Ok(resp) = http.get(collector.admin_url("/readyz")).send().await {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            if status == 200 || Instant::now() > deadline {
                break (status, body);
            }
        }
        if let Some(status) = collector.child.try_wait().unwrap() {
            panic!("the collector exited ({status}) with the example's configuration; its log is above");
        }
        assert!(Instant::now() < deadline, "the admin listener never answered /readyz; the collector's log is above");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        ready.0, 200,
        "/readyz: {} (wal_full here means the test's disk has less free space than the example's \
         wal_min_free_mib)",
        ready.1
    );

    // The key file is in force: without a key 401, with one from the file 200.
    let without = http.post(collector.url("/collect")).header("content-type", "application/json").body(SEED_SAMPLE);
    assert_eq!(without.send().await.unwrap().status().as_u16(), 401);
    let resp = http
        .post(collector.url("/collect"))
        .header("content-type", "application/json")
        .header("x-api-key", key)
        .body(SEED_SAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let receipt: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(receipt["status"], "ok", "{receipt}");

    // The log format the example chose is the one written.
    if config["log_format"].value.as_deref() == Some("\"json\"") {
        let lines = log.lock().unwrap().clone();
        assert!(!lines.is_empty(), "no log line at log = {:?}", config["log"].value);
        for line in &lines {
            let parsed: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(parsed["level"].is_string() && parsed["message"].is_string(), "{line}");
        }
    }

    // SIGTERM with the broker unreachable and a record in the WAL: the drain runs to its
    // deadline, the worst case, and must end before the unit's SIGKILL.
    let stop = time_span(&unit_section(UNIT_FILE, "Service")["TimeoutStopSec"]);
    let asked = Instant::now();
    let status = collector.terminate();
    let took = asked.elapsed();
    assert!(status.success(), "the graceful shutdown exits 0: {status:?}");
    assert!(took < stop, "the shutdown took {took:?}, past the unit's TimeoutStopSec={stop:?}");
    eprintln!("graceful shutdown with the broker unreachable: {took:?} (TimeoutStopSec {stop:?})");
    assert!(Path::new(&vars["COLLECTOR_WAL_DIR"]).join("sequence").exists(), "the WAL was written where configured");
}
