//! Configuration, with the real binary: flags, environment variables and the `--config` file in
//! that order of precedence; `collector config check`; the annotated example
//! `deploy/collector.toml`; and a collector started from a file. No Kafka needed: broker
//! addresses point nowhere. Every run clears the environment, so no `COLLECTOR_*` variable of
//! the caller's leaks in.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/collector.toml");

/// A key file for configurations that name one (the example's /etc/collector/api-keys does not
/// exist here).
fn key_file(dir: &Path) -> String {
    let path = dir.join("api-keys");
    std::fs::write(&path, "# written by tests/config.rs\nconfig-test-key-0123456789\n").unwrap();
    path.display().to_string()
}

/// `collector --config <file> config check <mode> <flags…>` with `env`: exit status, the
/// printed settings, stdout and stderr.
fn check(
    file: &str,
    mode: &str,
    flags: &[&str],
    env: &[(&str, &str)],
) -> (i32, BTreeMap<String, Checked>, String, String) {
    let mut args = vec!["--config", file, "config", "check", mode];
    args.extend(flags);
    let out = collector_output(&args, env);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    (out.status.code().unwrap_or(-1), checked_settings(&stdout), stdout, stderr)
}

/// The example with every `#key = value` line (a setting at its default, or an example value)
/// made a setting. Prose comments start with `# `.
fn uncommented(example: &str) -> String {
    example
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '"') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_file_passes_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path());
    for mode in ["run", "serve", "transform"] {
        let (status, settings, stdout, stderr) = check(EXAMPLE, mode, &[], &[("COLLECTOR_API_KEY_FILE", &keys)]);
        assert_eq!(status, 0, "collector config check {mode} refused deploy/collector.toml:\n{stderr}\n{stdout}");
        assert!(stdout.contains(&format!("# Valid: `collector {mode}` would start")), "{stdout}");
        assert_eq!(settings["brokers"].source, "file", "{stdout}");
    }
}

#[test]
fn the_example_names_every_setting_of_run_and_transform_and_its_commented_lines_are_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path());
    let example = std::fs::read_to_string(EXAMPLE).unwrap();

    // Uncommented, every setting of `run` and `transform` comes from the file (but the key
    // file, overridden here), and the file is still valid: every alternative it shows works.
    let all = dir.path().join("uncommented.toml");
    std::fs::write(&all, uncommented(&example)).unwrap();
    let all = all.to_str().unwrap();
    for mode in ["run", "transform"] {
        let (status, settings, stdout, stderr) = check(all, mode, &[], &[("COLLECTOR_API_KEY_FILE", &keys)]);
        assert_eq!(status, 0, "the example with its commented settings set is invalid:\n{stderr}");
        let missing: Vec<&String> = settings
            .iter()
            .filter(|(key, s)| s.source != "file" && key.as_str() != "api_key_file")
            .map(|(key, _)| key)
            .collect();
        assert!(
            missing.is_empty(),
            "deploy/collector.toml has no key for these settings of `{mode}`: {missing:?}\n{stdout}"
        );
    }

    // As written, each commented setting shows the value the collector uses without it.
    let (status, settings, stdout, stderr) = check(EXAMPLE, "run", &[], &[("COLLECTOR_API_KEY_FILE", &keys)]);
    assert_eq!(status, 0, "{stderr}");
    let mut section = String::new();
    for line in example.lines() {
        if line.starts_with('[') {
            section = line.to_string();
        }
        let Some(setting) = line.strip_prefix('#').filter(|r| r.starts_with(|c: char| c.is_ascii_lowercase())) else {
            continue;
        };
        let (key, value) = setting.split_once(" = ").unwrap_or_else(|| panic!("not `#key = value`: {line}"));
        let Some(printed) = settings.get(key) else { continue }; // a setting of another subcommand
        assert_eq!(printed.source, "default", "{section} {key} is commented out, yet set: {stdout}");
        // A setting without a default (nothing, or an empty list) shows an example instead.
        if let Some(default) = printed.value.as_ref().filter(|v| *v != "[]") {
            assert_eq!(value, default, "{section} #{key} = {value} is not its default");
        }
    }
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collector.toml");
    std::fs::write(
        &file,
        r#"
        [ingest]
        max_events = 10
        max_field_bytes = 1000
        max_ctx_bytes = 2000
        [kafka.properties]
        "linger.ms" = 11
        "client.id" = "from-file"
        "#,
    )
    .unwrap();
    let env = [
        ("COLLECTOR_MAX_EVENTS", "20"),
        ("COLLECTOR_MAX_FIELD_BYTES", "2000"),
        ("COLLECTOR_KAFKA_PROPERTIES", "linger.ms=22"),
    ];
    let flags = ["--max-events", "30", "-X", "linger.ms=33"];
    let (status, settings, stdout, stderr) = check(file.to_str().unwrap(), "serve", &flags, &env);
    assert_eq!(status, 0, "{stderr}");
    let got = |key: &str| (settings[key].value.clone().unwrap(), settings[key].source.clone());
    assert_eq!(got("max_events"), ("30".into(), "flag --max-events".into()), "flag over env over file");
    assert_eq!(got("max_field_bytes"), ("2000".into(), "env COLLECTOR_MAX_FIELD_BYTES".into()), "env over file");
    assert_eq!(got("max_ctx_bytes"), ("2000".into(), "file".into()), "file over default");
    assert_eq!(got("max_row_bytes_per_request"), ("4194304".into(), "default".into()));
    // Properties merge by name: the flag's list replaces the variable's, the file's others stay.
    assert_eq!(got("kafka.properties.linger.ms"), ("\"33\"".into(), "flag -X".into()), "{stdout}");
    assert_eq!(got("kafka.properties.client.id"), ("\"from-file\"".into(), "file".into()), "{stdout}");

    // COLLECTOR_CONFIG names the file as --config does.
    let out = collector_output(&["config", "check", "serve"], &[("COLLECTOR_CONFIG", file.to_str().unwrap())]);
    let settings = checked_settings(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(settings["max_ctx_bytes"].source, "file");
}

#[test]
fn an_invalid_setting_stops_the_collector_with_exit_2_and_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let wal = wal.to_str().unwrap();
    let cases: &[(&str, &[&str], &[&str])] = &[
        // (file, extra flags, what stderr must say)
        (
            "[wal]\nwal_max_mb = 64\n",
            &[],
            &["collector.toml:2: [wal] wal_max_mb: unknown setting; did you mean wal_max_mib?"],
        ),
        ("[ingest]\nmax_events = \"ten\"\n", &[], &["collector.toml:2: [ingest] max_events: expected an integer"]),
        (
            "[ingest]\nlisten = \"127.0.0.1\"\n",
            &[],
            &["[ingest] listen = \"127.0.0.1\": invalid value '127.0.0.1' for '--listen"],
        ),
        (
            "[wal]\nwal_max_mib = 16\n",
            &[],
            &[
                "--wal-max-mib must be at least 4 × --wal-segment-mib",
                "--wal-max-mib = 16, from ",
                "collector.toml: [wal] wal_max_mib",
                "--wal-segment-mib = 8, the default",
            ],
        ),
        ("[kafka]\ntopic_partitions = 0\n", &["--raw-topic", "raw"], &["--topic-partitions = 0, from "]),
        (
            "[kafka]\ntopic_replication = 2\n",
            &["--topic-min-insync-replicas", "3"],
            &[
                "--topic-min-insync-replicas 3 exceeds --topic-replication 2",
                "--topic-min-insync-replicas = 3, from the command line",
                "--topic-replication = 2, from ",
                "collector.toml: [kafka] topic_replication",
            ],
        ),
    ];
    for (toml, flags, expected) in cases {
        let file = dir.path().join("collector.toml");
        std::fs::write(&file, toml).unwrap();
        let mut args = vec!["--config", file.to_str().unwrap(), "serve", "--wal-dir", wal];
        args.extend(*flags);
        let out = collector_output(&args, &[]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{toml:?}: {stderr}");
        assert!(stderr.starts_with("collector: invalid configuration: "), "{stderr}");
        for fragment in *expected {
            assert!(stderr.contains(fragment), "{toml:?}: {stderr:?} should say {fragment:?}");
        }
        // `config check` says the same, and fails the same way.
        let (status, _, _, check_stderr) = check(file.to_str().unwrap(), "serve", flags, &[]);
        assert_eq!((status, check_stderr.as_str()), (2, stderr.as_str()));
    }
    assert!(!Path::new(wal).exists(), "an invalid configuration opens no WAL");
}

#[test]
fn config_check_masks_secrets_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collector.toml");
    let toml = "[ingest]\napi_keys = [\"file-secret-0123456789\"]\n[kafka.properties]\n\"sasl.password\" = \"file-secret-password\"\n\"sasl.username\" = \"collector\"\n";
    std::fs::write(&file, toml).unwrap();
    let env = [("COLLECTOR_API_KEYS", "env-secret-0123456789,env-secret-9876543210")];
    let flags = ["-X", "ssl.key.password=flag-secret-password", "-X", "sasl.mechanism=PLAIN"];
    let (status, settings, stdout, stderr) = check(file.to_str().unwrap(), "serve", &flags, &env);
    assert!(!stdout.contains("secret-") && !stderr.contains("secret-"), "{stdout}\n{stderr}");
    assert_eq!(settings["api_keys"].value.as_deref(), Some(r#"["<masked>", "<masked>"]"#), "{stdout}");
    assert_eq!(settings["kafka.properties.sasl.password"].value.as_deref(), Some(r#""<masked>""#));
    assert_eq!(settings["kafka.properties.sasl.username"].value.as_deref(), Some(r#""collector""#));
    assert_eq!(settings["kafka.properties.ssl.key.password"].value.as_deref(), Some(r#""<masked>""#));
    assert_eq!(status, 0, "{stderr}");
}

#[tokio::test]
async fn serve_started_with_only_a_file_listens_and_keeps_its_wal_where_the_file_says() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let keys = key_file(dir.path());
    let (port, admin_port) = loop {
        let (a, b) = (free_port(), free_port());
        if a != b {
            break (a, b);
        }
    };
    let wal = dir.path().join("wal");
    let file = dir.path().join("collector.toml");
    std::fs::write(
        &file,
        format!(
            r#"
            log = "warn,collector::app=info"
            [ingest]
            listen = "127.0.0.1:{port}"
            admin_listen = "127.0.0.1:{admin_port}"
            api_key_file = {keys:?}
            [wal]
            wal_dir = {wal:?}
            [flush]
            drain_timeout_ms = 200
            [kafka]
            brokers = "127.0.0.1:{broker}"
            "#,
            wal = wal.display().to_string(),
            broker = free_port(),
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["--config", file, "serve"])
        .env_clear()
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the collector binary");
    let collector = Collector {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: Some(format!("127.0.0.1:{admin_port}").parse().unwrap()),
        log: Default::default(),
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = http.get(collector.url("/healthz")).send().await {
            assert_eq!(resp.status().as_u16(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "nothing answered on the file's listen address 127.0.0.1:{port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = http.get(collector.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "the admin listener is on the file's admin_listen");
    let post = |key: Option<&str>| {
        let mut req = http.post(collector.url("/collect")).header("content-type", "application/json");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.body(SEED_SAMPLE).send()
    };
    assert_eq!(post(None).await.unwrap().status().as_u16(), 401, "the file's key file is in force");
    assert_eq!(post(Some("config-test-key-0123456789")).await.unwrap().status().as_u16(), 200);
    assert!(collector.terminate().success());

    // `collector wal` reads the same file: its wal_dir, with the record the broker never took.
    let out = collector_output(&["--config", file, "wal", "stats"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["pending_records"], 1, "{stats}");
}
