//! The command line, the environment and the configuration file, in process (no binary).
use super::*;

fn parse(args: &[&str]) -> Result<PipelineConfig, String> {
    let cli =
        Cli::try_parse_from(std::iter::once("collector").chain(args.iter().copied())).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Run(r) => r.serve.pipeline(Some(&r.transform)).map_err(|e| e.to_string()),
        Command::Serve(s) => s.pipeline(None).map_err(|e| e.to_string()),
        other => Err(format!("unexpected {other:?}")),
    }
}

#[test]
fn defaults_match_the_brief() {
    let cfg = parse(&["run"]).unwrap();
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(cfg.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(
        (cfg.kafka.raw_topic.as_str(), cfg.kafka.transformed_topic.as_str()),
        ("collect-topic1", "collect-topic2")
    );
    assert_eq!(cfg.kafka.topic_partitions, 4);
    assert_eq!(cfg.server.limits.max_events, 1000);
    assert!(cfg.transform.is_some());
    assert!(parse(&["serve"]).unwrap().transform.is_none());
    assert_eq!(cfg.admin_listen.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:8001"));
    assert!(cfg.server.api_keys.is_open() && !cfg.server.cors.is_enabled(), "open and without CORS by default");
}

#[test]
fn keys_from_a_file_and_the_environment_add_up_and_bad_ones_refuse_to_boot() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "# web\nkey-from-file-0123456789\n\n").unwrap();
    let file = file.to_str().unwrap();
    let cfg = parse(&["serve", "--api-key-file", file, "--api-keys", "key-from-env-0123456789,"]).unwrap();
    assert_eq!(cfg.server.api_keys.clients().len(), 2);
    assert!(!format!("{cfg:?}").contains("key-from"), "keys never show in the configuration's Debug");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nothing yet\n").unwrap();
    let err = parse(&["serve", "--api-key-file", empty.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("holds no key"), "{err}");
    let err = parse(&["serve", "--api-key-file", "/no/such/file"]).unwrap_err();
    assert!(err.contains("--api-key-file"), "{err}");
    let err = parse(&["serve", "--api-keys", "short"]).unwrap_err();
    assert!(err.contains("--api-keys") && !err.contains("short"), "{err}");
}

#[test]
fn cors_origins_and_the_admin_address_are_checked_at_start_up() {
    let cfg = parse(&["serve", "--cors-origin", "https://shop.example", "--cors-origin", "http://localhost:3000"]);
    assert!(cfg.unwrap().server.cors.is_enabled());
    assert!(parse(&["serve", "--cors-origin", "https://shop.example/"]).is_err());
    assert_eq!(parse(&["serve", "--admin-listen", "none"]).unwrap().admin_listen, None);
    assert!(parse(&["serve", "--admin-listen", "nowhere"]).is_err());
    let err = parse(&["serve", "--listen", "127.0.0.1:9000", "--admin-listen", "127.0.0.1:9000"]).unwrap_err();
    assert!(err.contains("--admin-listen"), "{err}");
    assert!(parse(&["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]).is_ok());
}

#[test]
fn bad_settings_refuse_to_boot() {
    assert!(parse(&["run", "--max-events", "0"]).is_err());
    assert!(parse(&["run", "--raw-topic", "bad topic"]).is_err());
    assert!(parse(&["run", "--raw-topic", "same", "--transformed-topic", "same"]).is_err());
    assert!(parse(&["run", "-X", "no-equals-sign"]).is_err());
    assert!(parse(&["run", "-X", "no.such.librdkafka.property=1"]).is_err());
    assert!(parse(&["run", "--listen", "not-an-address"]).is_err());
    assert!(parse(&["run", "--max-body-bytes", "100", "--max-decompressed-bytes", "10"]).is_err());
    assert!(parse(&["run", "--max-field-bytes", "0"]).is_err());
    assert!(parse(&["run", "--max-field-bytes", "100000"]).is_err(), "rows that long do not fit Kafka");
}

#[test]
fn min_insync_replicas_is_optional_and_between_one_and_the_replication() {
    assert_eq!(parse(&["run"]).unwrap().kafka.topic_min_insync_replicas, None, "absent: the broker's default");
    let set = parse(&["run", "--topic-replication", "3", "--topic-min-insync-replicas", "2"]).unwrap();
    assert_eq!(set.kafka.topic_min_insync_replicas, Some(2));
    let above = parse(&["run", "--topic-min-insync-replicas", "2"]).unwrap_err();
    assert!(above.contains("--topic-min-insync-replicas 2 exceeds --topic-replication 1"), "{above}");
    let zero = parse(&["run", "--topic-replication", "3", "--topic-min-insync-replicas", "0"]).unwrap_err();
    assert!(zero.contains("--topic-min-insync-replicas 0 must be at least 1"), "{zero}");
}

#[test]
fn a_kafka_call_timeout_must_be_below_the_transaction_timeout() {
    let cfg = parse(&["serve"]).unwrap();
    assert_eq!(cfg.flush.producer.txn.operation, Duration::from_secs(10), "the default call timeout");
    assert_eq!(cfg.flush.producer.txn.transaction_ms, 60_000);
    let set = parse(&["run", "--kafka-call-timeout-ms", "2000", "--transaction-timeout-ms", "5000"]).unwrap();
    assert_eq!(set.transform.unwrap().producer.txn.operation, Duration::from_secs(2));
    for bad in [["--kafka-call-timeout-ms", "60000"], ["--kafka-call-timeout-ms", "0"]] {
        let err = parse(&["serve", bad[0], bad[1]]).unwrap_err();
        assert!(err.contains("--kafka-call-timeout-ms"), "{err}");
    }
    assert!(parse(&["serve", "--transaction-timeout-ms", "5000"]).is_err(), "the default 10 s is too long then");
}

#[test]
fn an_accepted_body_must_fit_a_kafka_message() {
    assert!(parse(&["run", "--max-decompressed-bytes", "2000000"]).is_err());
    let raised = parse(&["run", "--max-decompressed-bytes", "2000000", "-X", "message.max.bytes=4000000"]).unwrap();
    assert_eq!(raised.kafka.max_message_bytes(), 4_000_000);
}

#[test]
fn kafka_properties_pass_through() {
    let cfg = parse(&["run", "-X", "linger.ms=7", "-X", "client.id=abc"]).unwrap();
    assert_eq!(cfg.kafka.properties, vec![("linger.ms".into(), "7".into()), ("client.id".into(), "abc".into())]);
}

#[test]
fn the_acknowledgement_policy_is_the_wal_unless_kafka_is_asked_for() {
    assert_eq!(parse(&["serve"]).unwrap().server.ack, Ack::Wal);
    let cfg = parse(&["serve", "--ack", "kafka", "--ack-timeout-ms", "2500"]).unwrap();
    assert_eq!(cfg.server.ack, Ack::Kafka { timeout: Duration::from_millis(2500) });
    let err = parse(&["serve", "--ack", "kafka", "--ack-timeout-ms", "0"]).unwrap_err();
    assert!(err.contains("--ack-timeout-ms"), "{err}");
    assert!(parse(&["serve", "--ack", "replicas"]).is_err());
}

#[test]
fn small_flush_batches_wait_250_ms_unless_requests_wait_for_kafka() {
    assert_eq!(parse(&["serve"]).unwrap().flush.interval, Duration::from_millis(250));
    assert_eq!(parse(&["serve", "--ack", "kafka"]).unwrap().flush.interval, Duration::ZERO);
    let set = parse(&["serve", "--ack", "kafka", "--flush-interval-ms", "20"]).unwrap();
    assert_eq!(set.flush.interval, Duration::from_millis(20));
}

// --- The configuration file -------------------------------------------------------------

/// Loads `collector --config <file with toml> <args…>`; errors as start-up prints them.
fn load_with(toml: &str, args: &[&str]) -> Result<Loaded, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.toml");
    std::fs::write(&path, toml).unwrap();
    let mut argv: Vec<std::ffi::OsString> = vec!["collector".into(), "--config".into(), path.into()];
    argv.extend(args.iter().map(Into::into));
    load(argv).map_err(|e| e.to_string())
}

/// The validated pipeline of a loaded `run` or `serve`; errors as start-up prints them.
fn pipeline_of(loaded: &Loaded) -> Result<PipelineConfig, String> {
    match loaded.cli.command.startup().expect("run or serve") {
        Ok(Startup::Pipeline(config)) => Ok(config),
        Ok(other) => panic!("not a pipeline: {other:?}"),
        Err(e) => Err(loaded.origins.explain(&e)),
    }
}

fn source_of(loaded: &Loaded, key: &str) -> Source {
    loaded.origins.settings.iter().find(|e| e.setting.key == key).unwrap_or_else(|| panic!("no {key}")).source
}

#[test]
fn every_flag_with_a_variable_has_exactly_one_key_in_one_section() {
    let mut keys: Vec<&str> = settings::SECTIONS.iter().flat_map(|(_, keys)| keys.iter().copied()).collect();
    let listed = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), listed, "a key is in two sections");
    let from_cli: std::collections::BTreeSet<String> = settings::arguments()
        .iter()
        .map(|a| settings::env_of(a).unwrap().trim_start_matches(settings::ENV_PREFIX).to_ascii_lowercase())
        .collect();
    let in_file: std::collections::BTreeSet<String> = keys.iter().map(|k| k.to_string()).collect();
    assert_eq!(from_cli, in_file, "settings::SECTIONS must name every COLLECTOR_ variable's key, and nothing else");
    assert_eq!(settings::all().len(), in_file.len());
    for arg in settings::arguments() {
        assert!(
            matches!(arg.get_action(), clap::ArgAction::Set | clap::ArgAction::Append),
            "{:?}: the file knows values and lists; teach config::file this flag's action",
            arg.get_id()
        );
    }
}

#[test]
fn the_file_fills_in_what_no_flag_gives_and_a_flag_wins() {
    let toml = r#"
        log_format = "json"
        [ingest]
        listen = "127.0.0.1:18301"
        max_events = 50
        cors_origins = ["https://shop.example", "https://www.shop.example"]
        [wal]
        wal_max_mib = 64
        [kafka]
        raw_topic = "raw-from-file"
    "#;
    let loaded = load_with(toml, &["serve", "--raw-topic", "raw-from-flag"]).unwrap();
    assert_eq!(loaded.cli.log_format, LogFormat::Json, "a top-level key");
    let config = pipeline_of(&loaded).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:18301");
    assert_eq!(config.server.limits.max_events, 50);
    assert!(config.server.cors.is_enabled());
    assert_eq!(config.server.max_wal_bytes, 64 * MIB);
    assert_eq!(config.kafka.raw_topic, "raw-from-flag", "a flag beats the file");
    assert_eq!(config.kafka.brokers, "127.0.0.1:9092", "what neither sets keeps its default");
    assert_eq!(source_of(&loaded, "raw_topic"), Source::Flag);
    assert_eq!(source_of(&loaded, "max_events"), Source::File);
    assert_eq!(source_of(&loaded, "log_format"), Source::File);
    assert_eq!(source_of(&loaded, "brokers"), Source::Default);
    assert_eq!(source_of(&loaded, "node_id"), Source::Unset);
    assert!(loaded.origins.settings.iter().all(|e| e.setting.section != "transform"), "serve has no transform");
}

#[test]
fn one_file_serves_every_subcommand() {
    let toml = r#"
        node_id = "collector-07"
        [ingest]
        max_events = 50
        [wal]
        wal_dir = "/var/lib/collector/wal"
        wal_copy_dir = "/srv/inspect"
        [kafka]
        brokers = "kafka-1:9092"
        [transform]
        transform_batch = 500
    "#;
    let serve = load_with(toml, &["serve"]).unwrap();
    assert_eq!(pipeline_of(&serve).unwrap().node_id.unwrap().to_string(), "collector-07");
    let transform = load_with(toml, &["transform"]).unwrap();
    let Command::Transform(worker) = &transform.cli.command else { panic!() };
    let (kafka, node, options) = worker.worker().unwrap();
    assert_eq!((kafka.brokers.as_str(), node.to_string().as_str()), ("kafka-1:9092", "collector-07"));
    assert_eq!(options.batch.messages, 500);
    let wal = load_with(toml, &["wal", "stats"]).unwrap();
    let Command::Wal(wal) = &wal.cli.command else { panic!() };
    assert_eq!(wal.wal_dir, std::path::Path::new("/var/lib/collector/wal"));
    assert_eq!(wal.copy_dir.as_deref(), Some(std::path::Path::new("/srv/inspect")));
}

#[test]
fn a_file_is_held_to_the_flags_rules_and_each_error_names_file_line_and_key() {
    // (file, fragments the error must hold)
    let cases: &[(&str, &[&str])] = &[
        (
            "[wal]\nwal_max_mb = 3\n",
            &["collector.toml:2: [wal] wal_max_mb: unknown setting; did you mean wal_max_mib?"],
        ),
        ("[wal]\n\nmax_events = 3\n", &[":3: [wal] max_events", "belongs in [ingest]"]),
        ("[wal]\nzzz_first = 1\naaa_second = 2\n", &[":2: [wal] zzz_first"]),
        ("[kafka]\nkafka_properties = []\n", &["[kafka.properties]"]),
        ("[wall]\nx = 1\n", &[":1: [wall]: unknown section; did you mean [wal]?"]),
        ("wal = 3\n", &["wal: is a section"]),
        ("listn = \"x\"\n", &["listn: unknown setting; did you mean listen (in [ingest])?"]),
        ("[ingest]\nlisten = 8000\n", &[":2: [ingest] listen: expected a string, found an integer"]),
        ("[wal]\nwal_max_mib = \"8192\"\n", &["[wal] wal_max_mib: expected an integer", "without quotes"]),
        ("[ingest]\ncors_origins = \"https://a.example\"\n", &["[ingest] cors_origins: expected an array of strings"]),
        ("[ingest]\ncors_origins = [1]\n", &["one element is an integer"]),
        ("[wal]\nwal_max_mib = -3\n", &["[wal] wal_max_mib = -3: invalid value '-3' for '--wal-max-mib"]),
        ("[ingest]\nlisten = \"nowhere\"\n", &["[ingest] listen = \"nowhere\": invalid value 'nowhere' for '--listen"]),
        ("[kafka]\ndelivery_guarantee = \"exactly_once\"\n", &["possible values: exactly-once, at-least-once"]),
        ("[kafka]\ntopic_partitions = 9999999999\n", &["[kafka] topic_partitions = 9999999999: invalid value"]),
        ("[kafka.properties]\n\"a=b\" = \"c\"\n", &["is not a librdkafka property name"]),
        ("[kafka.properties]\n\"linger.ms\" = [1]\n", &["expected a string, an integer or a boolean"]),
        ("[wal\n", &["collector.toml: TOML parse error at line 1"]),
        ("log = \"info\"\nlog = \"debug\"\n", &["line 2", "duplicate key"]),
    ];
    for (toml, fragments) in cases {
        let err = load_with(toml, &["run"]).err().unwrap_or_else(|| panic!("accepted:\n{toml}"));
        for fragment in *fragments {
            assert!(err.contains(fragment), "{toml:?}: the error {err:?} should hold {fragment:?}");
        }
    }
    let err = load(["collector", "--config", "/no/such/collector.toml", "run"]).unwrap_err().to_string();
    assert!(err.contains("/no/such/collector.toml: the configuration file cannot be read"), "{err}");
}

#[test]
fn a_bad_file_value_is_refused_even_where_a_flag_overrides_it() {
    let err = load_with("[wal]\nwal_max_mib = -3\n", &["run", "--wal-max-mib", "64"]).unwrap_err();
    assert!(err.contains("[wal] wal_max_mib = -3"), "{err}");
}

#[test]
fn settings_that_only_fail_together_name_each_flag_its_value_and_where_it_came_from() {
    let loaded = load_with("[wal]\nwal_max_mib = 3\n", &["serve", "--wal-segment-mib", "1"]).unwrap();
    let err = pipeline_of(&loaded).unwrap_err();
    assert!(err.starts_with("--wal-max-mib must be at least 4 × --wal-segment-mib"), "{err}");
    assert!(err.contains("\n  --wal-max-mib = 3, from ") && err.contains("collector.toml: [wal] wal_max_mib"), "{err}");
    assert!(err.contains("\n  --wal-segment-mib = 1, from the command line"), "{err}");

    let loaded = load_with("[ingest]\nmax_decompressed_bytes = 2000000\n", &["serve"]).unwrap();
    let err = pipeline_of(&loaded).unwrap_err();
    assert!(err.contains("  --max-decompressed-bytes = 2000000, from "), "{err}");
    assert!(err.contains("  -X: no librdkafka property is set"), "{err}");

    let loaded = load_with("[kafka.properties]\n\"no.such.property\" = 1\n", &["serve"]).unwrap();
    let err = pipeline_of(&loaded).unwrap_err();
    assert!(err.contains("-X (librdkafka properties)") && err.contains("  -X no.such.property=1, from "), "{err}");

    let loaded = load_with("[kafka]\nraw_topic = \"same\"\ntransformed_topic = \"same\"\n", &["run"]).unwrap();
    let err = pipeline_of(&loaded).unwrap_err();
    assert!(err.contains("[kafka] raw_topic") && err.contains("[kafka] transformed_topic"), "{err}");
}

#[test]
fn librdkafka_properties_merge_by_name_the_file_first() {
    let toml = "[kafka.properties]\n\"linger.ms\" = 50\n\"client.id\" = \"from-file\"\n\"enable.idempotence\" = true\n";
    let loaded = load_with(toml, &["serve", "-X", "linger.ms=7"]).unwrap();
    let config = pipeline_of(&loaded).unwrap();
    let get = |name: &str| config.kafka.properties.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(get("linger.ms"), Some("7"), "the flag's property wins");
    assert_eq!(get("client.id"), Some("from-file"), "the file's others stay");
    assert_eq!(get("enable.idempotence"), Some("true"));
}

#[test]
fn a_list_element_from_the_file_is_never_split_at_a_comma() {
    let loaded = load_with("[ingest]\napi_keys = [\"0123456789abcdef,0123456789\"]\n", &["serve"]).unwrap();
    assert_eq!(pipeline_of(&loaded).unwrap().server.api_keys.clients().len(), 1);
}

#[test]
fn secrets_are_masked_in_the_printed_configuration_and_in_errors() {
    let toml = r#"
        [ingest]
        api_keys = ["secret-key-0123456789"]
        [kafka.properties]
        "sasl.username" = "collector"
        "sasl.password" = "secret-password"
        "ssl.key.password" = "secret-keypass"
        "sasl.oauthbearer.client.secret" = "secret-client"
        "sasl.oauthbearer.config" = "principal=secret-principal"
        "ssl.key.pem" = "secret-pem"
    "#;
    let loaded = load_with(toml, &["config", "check", "serve"]).unwrap();
    let Command::Config(cmd) = &loaded.cli.command else { panic!() };
    let checked = check::run(cmd, &loaded.origins);
    assert!(!checked.effective.contains("secret-"), "{}", checked.effective);
    assert!(checked.effective.contains(r#""sasl.username" = "collector""#), "{}", checked.effective);
    assert_eq!(checked.effective.matches(check::MASK).count(), 6, "{}", checked.effective);
    // librdkafka refuses ssl.key.pem without OpenSSL: the error shows the properties, masked.
    let err = checked.verdict.unwrap_err();
    assert!(!err.contains("secret-") && err.contains(check::MASK), "{err}");

    let err = pipeline_of(&load_with("[ingest]\napi_keys = [\"secret\"]\n", &["serve"]).unwrap()).unwrap_err();
    assert!(err.contains("--api-keys = [\"<masked>\"]") && !err.contains("\"secret\""), "{err}");
    for name in ["sasl.password", "SSL.KEYSTORE.PASSWORD", "sasl.oauthbearer.assertion.private.key.pem", "ssl_key"] {
        assert!(settings::is_secret(name), "{name}");
    }
    for name in ["sasl.username", "ssl.ca.location", "sasl.oauthbearer.token.endpoint.url", "ssl.certificate.pem"] {
        assert!(!settings::is_secret(name), "{name}");
    }
}

#[test]
fn the_printed_configuration_is_a_file_that_loads_to_the_same_settings() {
    let toml = r#"
        log = "collector=debug"
        [ingest]
        listen = "0.0.0.0:8000"
        cors_origins = ["https://shop.example"]
        [wal]
        wal_dir = "/var/lib/collector/wal"
        [kafka.properties]
        "linger.ms" = 5
    "#;
    let unnamed = load_with(toml, &["config", "check"]).unwrap();
    assert_eq!(unnamed.origins.command, "config check run", "config check without a subcommand checks run");
    let first = load_with(toml, &["config", "check", "run", "--max-events", "20"]).unwrap();
    let printed = check::render(&first.origins);
    let again = load_with(&printed, &["config", "check", "run"]).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    // Each setting's values, and each property's name and value, as text.
    let values = |loaded: &Loaded| -> Vec<String> {
        let origins = &loaded.origins.settings;
        origins.iter().map(|e| format!("{} {:?} {:?}", e.setting.key, e.values, e.properties)).collect()
    };
    assert_eq!(values(&first), values(&again), "{printed}");
    assert!(printed.contains("max_events = 20                                 # flag --max-events"), "{printed}");
    assert!(printed.contains("listen = \"0.0.0.0:8000\""), "{printed}");
    assert!(printed.contains("# node_id: not set"), "{printed}");
}
