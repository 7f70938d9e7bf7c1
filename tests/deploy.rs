//! The deployment files are real: `deploy/collector.toml`, the configuration file the unit
//! starts the collector with, boots as written; `deploy/collector.env.example` names only
//! settings the binary has and configures the same collector as variables;
//! `deploy/collector.service` gives the collector the time and the file descriptors that
//! configuration asks for, and `deploy/collector@.service` is that unit with a WAL, a node id
//! and addresses per instance; `deploy/kubernetes/collector.yaml` sets only settings the binary
//! knows and probes the listeners it configures. No Kafka needed: the broker address points
//! nowhere, which the collector rides out in its WAL.

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
const TEMPLATE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/collector@.service");
const KUBERNETES_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/collector.yaml");

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
    documented_settings_of("run")
}

/// [`documented_settings`] of `collector <subcommand> --help`.
fn documented_settings_of(subcommand: &str) -> BTreeMap<String, Option<String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args([subcommand, "--help"])
        .env_clear() // so the help shows no value from the caller's environment
        .output()
        .unwrap();
    assert!(out.status.success(), "collector {subcommand} --help failed: {out:?}");
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
    // `run` has every setting; `transform` (the fewest) about twenty.
    let least = if subcommand == "run" { 30 } else { 15 };
    assert!(
        settings.len() > least,
        "collector {subcommand} --help documents only {settings:?}; has its format changed?"
    );
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

/// `Key=Value` lines of a unit file's `[section]`, every one in order (`Environment=` and
/// `EnvironmentFile=` may repeat).
fn unit_assignments(path: &str, section: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut current = String::new();
    let mut lines = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.to_string();
        } else if current == format!("[{section}]") && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                lines.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    lines
}

#[test]
fn the_template_unit_is_the_unit_with_a_wal_a_node_id_and_addresses_per_instance() {
    let unit = unit_section(UNIT_FILE, "Service");
    let template = unit_section(TEMPLATE_FILE, "Service");
    let per_instance = ["Environment", "EnvironmentFile", "StateDirectory"];
    for (key, value) in &unit {
        if !per_instance.contains(&key.as_str()) {
            assert_eq!(template.get(key), Some(value), "deploy/collector@.service differs from the unit in {key}");
        }
    }
    let extra: Vec<&String> =
        template.keys().filter(|k| !unit.contains_key(*k) && !per_instance.contains(&k.as_str())).collect();
    assert!(extra.is_empty(), "deploy/collector@.service has settings the unit lacks: {extra:?}");
    assert!(unit_section(TEMPLATE_FILE, "Unit")["Description"].contains("%i"));
    assert_eq!(unit_section(TEMPLATE_FILE, "Install"), unit_section(UNIT_FILE, "Install"));

    // The host's optional file first, then the instance's own, which must exist (its ports).
    let assignments = unit_assignments(TEMPLATE_FILE, "Service");
    let files: Vec<&str> =
        assignments.iter().filter(|(k, _)| k == "EnvironmentFile").map(|(_, v)| v.as_str()).collect();
    assert_eq!(files, ["-/etc/collector/collector.env", "/etc/collector/collector-%i.env"]);
    let state = &template["StateDirectory"];
    assert!(state.contains("%i"), "StateDirectory={state} is shared by every instance");

    // What two instances on one host get: their own node id and WAL, in their StateDirectory.
    let instance_env = |instance: &str| -> BTreeMap<String, String> {
        let expand = |v: &str| v.replace("%i", instance).replace("%H", "host-1.example");
        assignments
            .iter()
            .filter(|(k, _)| k == "Environment")
            .map(|(_, v)| {
                let (name, value) = v.split_once('=').unwrap_or_else(|| panic!("Environment={v} is not NAME=VALUE"));
                (name.to_string(), expand(value))
            })
            .collect()
    };
    let mut seen = BTreeSet::new();
    for instance in ["a", "b"] {
        let env = instance_env(instance);
        let config = effective(&["--config", CONFIG_FILE], &env);
        for key in ["node_id", "wal_dir"] {
            let name = format!("COLLECTOR_{}", key.to_ascii_uppercase());
            assert_eq!(config[key].source, format!("env {name}"), "the instance sets {key}, over collector.toml");
            assert!(seen.insert(config[key].value.clone()), "two instances share {key} = {:?}", config[key].value);
        }
        let wal = config["wal_dir"].value.clone().unwrap();
        let state = format!("/var/lib/{}/", state.replace("%i", instance));
        assert!(wal.starts_with(&format!("\"{state}")), "instance {instance}: wal_dir = {wal} is outside {state}");
    }
}

/// A YAML value: the subset `deploy/kubernetes/*.yaml` is written in (block mappings and
/// sequences, plain or quoted scalars, one-line flow sequences, `#` comments, `---` between
/// documents). No anchors, no multi-line scalars.
#[derive(Debug, Clone)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    List(Vec<Yaml>),
    Scalar(String),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at `path` (keys of nested mappings); panics naming the path if there is none.
    fn at(&self, path: &[&str]) -> &Yaml {
        path.iter().fold(self, |node, key| node.get(key).unwrap_or_else(|| panic!("no {} in {self:?}", path.join("."))))
    }

    fn str(&self) -> &str {
        match self {
            Yaml::Scalar(s) => s,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    fn items(&self) -> &[Yaml] {
        match self {
            Yaml::List(items) => items,
            other => panic!("not a sequence: {other:?}"),
        }
    }
}

struct YamlLine {
    indent: usize,
    text: String,
}

/// The documents of a YAML file.
fn yaml_documents(text: &str) -> Vec<Yaml> {
    let mut documents = Vec::new();
    let mut lines = Vec::new();
    for raw in text.lines().chain(["---"]) {
        if raw.trim_end() == "---" {
            if !lines.is_empty() {
                documents.push(yaml_block(&mut lines, &mut 0));
                lines.clear();
            }
            continue;
        }
        let line = yaml_without_comment(raw).trim_end();
        if !line.trim().is_empty() {
            let text = line.trim_start();
            lines.push(YamlLine { indent: line.len() - text.len(), text: text.to_string() });
        }
    }
    documents
}

fn yaml_without_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted && (i == 0 || line[..i].ends_with(' ')) => return &line[..i],
            _ => {}
        }
    }
    line
}

fn yaml_is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

fn yaml_block(lines: &mut [YamlLine], at: &mut usize) -> Yaml {
    let indent = lines[*at].indent;
    if yaml_is_item(&lines[*at].text) {
        yaml_list(lines, at, indent)
    } else {
        yaml_map(lines, at, indent)
    }
}

fn yaml_map(lines: &mut [YamlLine], at: &mut usize, indent: usize) -> Yaml {
    let mut entries = Vec::new();
    while *at < lines.len() && lines[*at].indent == indent && !yaml_is_item(&lines[*at].text) {
        let text = lines[*at].text.clone();
        let (key, rest) = text.split_once(':').unwrap_or_else(|| panic!("not `key: value`: {text}"));
        *at += 1;
        let nested = *at < lines.len()
            && (lines[*at].indent > indent || lines[*at].indent == indent && yaml_is_item(&lines[*at].text));
        let value = match rest.trim() {
            "" if nested => yaml_block(lines, at),
            rest => yaml_scalar(rest),
        };
        entries.push((yaml_unquote(key.trim()), value));
    }
    Yaml::Map(entries)
}

fn yaml_list(lines: &mut [YamlLine], at: &mut usize, indent: usize) -> Yaml {
    let mut items = Vec::new();
    while *at < lines.len() && lines[*at].indent == indent && yaml_is_item(&lines[*at].text) {
        let rest = lines[*at].text[1..].trim_start().to_string();
        if rest.is_empty() {
            *at += 1;
            items.push(yaml_block(lines, at));
        } else if !rest.starts_with(['"', '[']) && (rest.contains(": ") || rest.ends_with(':')) {
            // `- key: value` opens a mapping whose next keys are indented to `key`.
            let indent = indent + lines[*at].text.len() - rest.len();
            lines[*at] = YamlLine { indent, text: rest };
            items.push(yaml_map(lines, at, indent));
        } else {
            items.push(yaml_scalar(&rest));
            *at += 1;
        }
    }
    Yaml::List(items)
}

fn yaml_scalar(text: &str) -> Yaml {
    match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(flow) => Yaml::List(flow.split(',').map(|item| Yaml::Scalar(yaml_unquote(item.trim()))).collect()),
        None => Yaml::Scalar(yaml_unquote(text)),
    }
}

fn yaml_unquote(text: &str) -> String {
    let unquoted = ['"', '\''].iter().find_map(|q| text.strip_prefix(*q).and_then(|t| t.strip_suffix(*q)));
    unquoted.unwrap_or(text).to_string()
}

#[test]
fn the_yaml_reader_reads_what_the_kubernetes_example_is_written_in() {
    let text = "a: 1 # note\nb:\n  - name: x\n    value: \"0.0.0.0:8000\"\n  - plain\nc: [\"serve\", 'x']\nd:\n- e: f\n---\ng: \"#h\"\n";
    let docs = yaml_documents(text);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].at(&["a"]).str(), "1");
    let b = docs[0].at(&["b"]).items();
    assert_eq!((b[0].at(&["name"]).str(), b[0].at(&["value"]).str(), b[1].str()), ("x", "0.0.0.0:8000", "plain"));
    let c: Vec<&str> = docs[0].at(&["c"]).items().iter().map(Yaml::str).collect();
    assert_eq!(c, ["serve", "x"]);
    assert_eq!(docs[0].at(&["d"]).items()[0].at(&["e"]).str(), "f");
    assert_eq!(docs[1].at(&["g"]).str(), "#h");
}

/// The Kubernetes example's objects.
fn kubernetes_objects() -> Vec<Yaml> {
    yaml_documents(&std::fs::read_to_string(KUBERNETES_FILE).unwrap())
}

/// The object of `kind` named `name`.
fn kubernetes_object<'a>(objects: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    objects
        .iter()
        .find(|o| o.at(&["kind"]).str() == kind && o.at(&["metadata", "name"]).str() == name)
        .unwrap_or_else(|| panic!("deploy/kubernetes/collector.yaml has no {kind} {name}"))
}

/// A container's port number by its name (as probes and Services name it) or as a number.
fn container_port(container: &Yaml, port: &str) -> u16 {
    if let Ok(number) = port.parse() {
        return number;
    }
    let ports = container.at(&["ports"]).items();
    let named = ports.iter().find(|p| p.at(&["name"]).str() == port);
    named.unwrap_or_else(|| panic!("no container port named {port}")).at(&["containerPort"]).str().parse().unwrap()
}

#[test]
fn every_setting_the_kubernetes_example_names_is_one_the_binary_documents() {
    let mut documented = documented_settings_of("serve");
    documented.extend(documented_settings_of("transform"));
    let unknown: Vec<String> =
        mentioned_names(KUBERNETES_FILE).into_iter().filter(|name| !documented.contains_key(name)).collect();
    assert!(
        unknown.is_empty(),
        "deploy/kubernetes/collector.yaml names settings the binary does not have: {unknown:?}"
    );
}

/// Each StatefulSet's container, configured as its pod would be: `collector config check`
/// accepts its subcommand with the pod's environment, and uses every variable the container
/// sets; the probes reach the admin listener that configuration binds; the Services reach its
/// ports; the collectors' WAL is on their volume and their grace period covers the drain.
#[test]
fn each_kubernetes_container_is_configured_as_its_probes_and_services_expect() {
    let objects = kubernetes_objects();
    let shared = kubernetes_object(&objects, "ConfigMap", "collector-common").at(&["data"]);
    let Yaml::Map(shared) = shared else { panic!("the ConfigMap's data is not a mapping") };
    let mut shared_used = BTreeSet::new();
    let mut checked = 0;
    for set in objects.iter().filter(|o| o.at(&["kind"]).str() == "StatefulSet") {
        let name = set.at(&["metadata", "name"]).str();
        let pod = set.at(&["spec", "template"]);
        let containers = pod.at(&["spec", "containers"]).items();
        assert_eq!(containers.len(), 1, "{name}: one container");
        let container = &containers[0];
        let args = container.at(&["args"]).items();
        let subcommand = args[0].str();
        assert!(["serve", "transform", "run"].contains(&subcommand), "{name}: args {args:?}");

        // The pod's environment: the shared ConfigMap, then its own variables.
        for from in container.at(&["envFrom"]).items() {
            assert_eq!(from.at(&["configMapRef", "name"]).str(), "collector-common", "{name}: envFrom");
        }
        let mut env: BTreeMap<String, String> = shared.iter().map(|(k, v)| (k.clone(), v.str().to_string())).collect();
        let mut own = BTreeSet::new();
        let pod_name = format!("{name}-0");
        for var in container.at(&["env"]).items() {
            let var_name = var.at(&["name"]).str().to_string();
            let value = match var.get("value") {
                Some(value) => value.str().to_string(),
                None => {
                    assert_eq!(
                        var.at(&["valueFrom", "fieldRef", "fieldPath"]).str(),
                        "metadata.name",
                        "{name}: {var_name}"
                    );
                    pod_name.clone()
                }
            };
            env.insert(var_name.clone(), value);
            own.insert(var_name);
        }
        let node_id = container.at(&["env"]).items().iter().find(|v| v.at(&["name"]).str() == "COLLECTOR_NODE_ID");
        let node_id = node_id.unwrap_or_else(|| panic!("{name}: no COLLECTOR_NODE_ID"));
        assert_eq!(
            node_id.at(&["valueFrom", "fieldRef", "fieldPath"]).str(),
            "metadata.name",
            "{name}: the node id is the pod's name, stable and unique"
        );

        // The API key file comes from a mounted Secret; here, a file of our own.
        let mounts = container.get("volumeMounts").map_or(&[][..], Yaml::items);
        let dir = tempfile::tempdir().unwrap();
        if let Some(key_file) = env.get("COLLECTOR_API_KEY_FILE").cloned() {
            let secret_volumes: Vec<&str> = pod
                .at(&["spec", "volumes"])
                .items()
                .iter()
                .filter(|v| v.get("secret").is_some())
                .map(|v| v.at(&["name"]).str())
                .collect();
            let mounted = mounts.iter().any(|m| {
                secret_volumes.contains(&m.at(&["name"]).str())
                    && Path::new(&key_file).parent() == Some(Path::new(m.at(&["mountPath"]).str()))
            });
            assert!(mounted, "{name}: COLLECTOR_API_KEY_FILE={key_file} is not in a mounted Secret");
            let keys = dir.path().join("api-keys");
            std::fs::write(&keys, "deploy-test-key-0123456789abcdef\n").unwrap();
            env.insert("COLLECTOR_API_KEY_FILE".into(), keys.display().to_string());
        }
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = collector_output(&["config", "check", subcommand], &vars);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{name}: collector config check {subcommand} refused the pod's environment: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = checked_settings(&stdout);
        let used: BTreeSet<String> =
            config.values().filter_map(|c| c.source.strip_prefix("env ")).map(str::to_string).collect();
        let unused: Vec<&String> = own.iter().filter(|v| !used.contains(*v)).collect();
        assert!(unused.is_empty(), "{name}: collector {subcommand} ignores {unused:?}");
        shared_used.extend(used);
        let address = |key: &str| -> std::net::SocketAddr {
            let value = config[key].value.clone().unwrap_or_else(|| panic!("{name}: {key} is not set"));
            serde_json::from_str::<String>(&value).unwrap().parse().unwrap()
        };

        // Probes and scrapes reach the admin listener, from outside the pod.
        let admin = address(if subcommand == "transform" { "transform_admin_listen" } else { "admin_listen" });
        assert!(!admin.ip().is_loopback(), "{name}: the admin listener {admin} is out of the kubelet's reach");
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = container.at(&[probe, "httpGet"]);
            assert_eq!(get.at(&["path"]).str(), path, "{name}: {probe}");
            let port = container_port(container, get.at(&["port"]).str());
            assert_eq!(port, admin.port(), "{name}: {probe} asks port {port}, the admin listener is {admin}");
        }
        let scrape = pod.at(&["metadata", "annotations", "prometheus.io/port"]).str();
        assert_eq!(scrape.parse::<u16>().unwrap(), admin.port(), "{name}: Prometheus scrapes the admin port");

        // The governing Service (pod DNS names) and every Service selecting these pods reach
        // ports the container has.
        let label = pod.at(&["metadata", "labels", "app"]).str();
        let governing = kubernetes_object(&objects, "Service", set.at(&["spec", "serviceName"]).str());
        assert_eq!(governing.at(&["spec", "clusterIP"]).str(), "None", "{name}: its governing Service is headless");
        for service in objects.iter().filter(|o| o.at(&["kind"]).str() == "Service") {
            if service.at(&["spec", "selector", "app"]).str() == label {
                for port in service.at(&["spec", "ports"]).items() {
                    container_port(container, port.at(&["targetPort"]).str());
                }
            }
        }

        if subcommand != "transform" {
            // Ingest: the public port the Services and Ingress send to.
            let listen = address("listen");
            assert!(!listen.ip().is_loopback(), "{name}: listen = {listen} is out of the Services' reach");
            assert_eq!(container_port(container, "http"), listen.port(), "{name}: the http port is the listener's");

            // The WAL is on the pod's own volume.
            let wal = serde_json::from_str::<String>(config["wal_dir"].value.as_deref().unwrap()).unwrap();
            let claims: Vec<&str> = set
                .at(&["spec", "volumeClaimTemplates"])
                .items()
                .iter()
                .map(|c| c.at(&["metadata", "name"]).str())
                .collect();
            let on_volume = mounts.iter().any(|m| {
                claims.contains(&m.at(&["name"]).str()) && Path::new(&wal).starts_with(m.at(&["mountPath"]).str())
            });
            assert!(on_volume, "{name}: wal_dir = {wal} is not on a volume of the pod's own ({claims:?})");

            // SIGKILL comes after terminationGracePeriodSeconds: it must cover the drain
            // (src/app.rs, longest_shutdown: one stage for serve, two for run).
            let stages = if subcommand == "run" { 2 } else { 1 };
            let longest = Duration::from_millis(number(&config, "shutdown_grace_ms"))
                + Duration::from_millis(number(&config, "drain_timeout_ms"))
                + STAGE_EXIT_GRACE * stages
                + ADMIN_EXIT_GRACE
                + RUNTIME_EXIT_GRACE;
            let grace: u64 = pod.at(&["spec", "terminationGracePeriodSeconds"]).str().parse().unwrap();
            assert!(
                Duration::from_secs(grace) > longest,
                "{name}: terminationGracePeriodSeconds {grace} would SIGKILL a graceful shutdown that may take {longest:?}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 2, "the example has a StatefulSet of collectors and one of workers");
    let unused: Vec<&String> = shared.iter().map(|(k, _)| k).filter(|k| !shared_used.contains(*k)).collect();
    assert!(unused.is_empty(), "the ConfigMap sets variables no container uses: {unused:?}");

    // The Ingress sends /collect to a Service port that exists.
    let ingress = kubernetes_object(&objects, "Ingress", "collector");
    for rule in ingress.at(&["spec", "rules"]).items() {
        for path in rule.at(&["http", "paths"]).items() {
            let backend = path.at(&["backend", "service"]);
            let service = kubernetes_object(&objects, "Service", backend.at(&["name"]).str());
            let port = backend.at(&["port", "name"]).str();
            assert!(
                service.at(&["spec", "ports"]).items().iter().any(|p| p.at(&["name"]).str() == port),
                "the Ingress sends to port {port}, which Service {} lacks",
                backend.at(&["name"]).str()
            );
        }
    }
}
