//! End-to-end tests against a real Kafka: the `collector` binary as a process, topics read
//! back by an independent consumer.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn post(client: &reqwest::Client, c: &Collector, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client.post(c.url("/collect")).header("content-type", "application/json").body(body).send().await.unwrap()
}

async fn read(brokers: &str, topic: &str, expected: usize, settle_ms: u64) -> Vec<Record> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        read_topic(&brokers, &topic, expected, Duration::from_secs(90), Duration::from_millis(settle_ms))
    })
    .await
    .unwrap()
}

/// `collector run` on fresh topics and a fresh WAL: the broker address, the topics, the WAL
/// directory (kept alive by the caller) and the running collector.
fn run_pipeline() -> (String, Topics, tempfile::TempDir, Collector) {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let c = Collector::start("run", wal.path(), 0, &topics.args("run"));
    (brokers, topics, wal, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_sample_arrives_as_the_documented_row() {
    let (brokers, topics, _wal, c) = run_pipeline();

    let resp = post(&client(), &c, SEED_SAMPLE).await;
    assert_eq!(resp.status(), 200);
    let receipt: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(receipt, serde_json::json!({"status": "ok", "seq": 1, "events": 1}));

    let rows = read(&brokers, &topics.transformed, 1, 2000).await;
    assert_eq!(rows.len(), 1, "exactly one row: {rows:?}");
    assert_eq!(rows[0].key.as_deref(), Some("user_test"));
    assert_eq!(
        rows[0].value,
        r#"{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","browser":"Firefox","device":"Desktop"}"#
    );

    let raw = read(&brokers, &topics.raw, 1, 500).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].value, SEED_SAMPLE, "the raw topic carries the body as received");
    assert_eq!(raw[0].headers.get("collector-seq").map(String::as_str), Some("1"));
    let received: u64 = raw[0].headers["collector-received-at"].parse().unwrap();
    assert!(received > 1_700_000_000_000);
    assert!(raw[0].headers["collector-client"].starts_with("127.0.0.1:"));
    assert!(!raw[0].headers["collector-node"].is_empty());

    // Both stages' committed batches are on /metrics, and nothing is left pending.
    let metrics = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |series: &str| -> f64 {
        let line =
            metrics.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("collector_flush_batch_records_sum "), 1.0, "one batch of one record");
    assert!(value("collector_flush_batch_duration_seconds_count ") >= 1.0);
    assert!(value("collector_transform_batch_duration_seconds_count ") >= 1.0);
    assert_eq!(value("collector_wal_oldest_pending_age_seconds "), 0.0);

    // The transform's lag per partition of the raw topic, from librdkafka's statistics (every
    // 5 s): one gauge per partition, all at 0 once the one message is read.
    let lags = |metrics: &str| -> Vec<f64> {
        metrics
            .lines()
            .filter(|l| l.starts_with("collector_transform_consumer_lag_messages{partition="))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let mut seen = Vec::new();
    for _ in 0..40 {
        seen = lags(&client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap());
        if !seen.is_empty() && seen.iter().all(|lag| *lag == 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!seen.is_empty() && seen.iter().all(|lag| *lag == 0.0), "lag per partition: {seen:?}");

    // Every stage's Kafka client is connected, by librdkafka's statistics.
    let metrics = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for stage in ["flusher", "transform_consumer", "transform_producer"] {
        let series = format!(r#"collector_kafka_connected{{stage="{stage}"}} 1"#);
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_user_ids_gzip_bodies_and_text_plain_beacons_arrive() {
    let (brokers, topics, _wal, c) = run_pipeline();
    let client = client();

    let int_user = SEED_SAMPLE.replace(r#""user_test""#, "4242").replace("1750867000000", r#""1750867000123""#);
    assert_eq!(post(&client, &c, int_user).await.status(), 200);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(event_body("beacon", "u-gz").as_bytes()).unwrap();
    let resp = client
        .post(c.url("/collect"))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let mut rows = read(&brokers, &topics.transformed, 2, 1000).await;
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].key.as_deref(), Some("4242"));
    assert_eq!(
        rows[0].value,
        r#"{"event_type":"product_view","event_time":1750867000123,"user_id":4242,"browser":"Firefox","device":"Desktop"}"#
    );
    assert_eq!(rows[1].key.as_deref(), Some("u-gz"));
    assert!(rows[1].value.contains(r#""event_type":"beacon""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_never_reach_kafka() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let c = Collector::start("serve", wal.path(), 0, &topics.args("serve"));
    let client = client();
    for bad in ["{", "[]", r#"{"events":[],"ctx":{}}"#, &SEED_SAMPLE.replace("1750867000000", "1.5")] {
        let status = post(&client, &c, bad.to_string()).await.status();
        assert!(status == 400 || status == 422, "{bad} got {status}");
    }
    assert_eq!(post(&client, &c, SEED_SAMPLE).await.status(), 200);
    let raw = read(&brokers, &topics.raw, 1, 3000).await;
    assert_eq!(raw.len(), 1, "only the valid request reaches the raw topic");
    assert_eq!(raw[0].value, SEED_SAMPLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_raw_message_goes_to_the_dead_letter_topic_and_the_worker_goes_on() {
    let (brokers, topics, _wal, c) = run_pipeline();
    let client = client();
    assert_eq!(post(&client, &c, event_body("first", "u1")).await.status(), 200);
    assert_eq!(read(&brokers, &topics.transformed, 1, 0).await.len(), 1);

    // Some other producer writes garbage into the raw topic.
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    producer.send(BaseRecord::<str, str>::to(&topics.raw).key("k").payload("this is not a collector request")).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    assert_eq!(post(&client, &c, event_body("second", "u2")).await.status(), 200);
    let rows = read(&brokers, &topics.transformed, 2, 1000).await;
    let kinds: HashSet<_> = rows.iter().map(|r| r.value.clone()).filter(|v| v.contains("second")).collect();
    assert_eq!(rows.len(), 2, "the worker kept going after the bad message: {rows:?}");
    assert_eq!(kinds.len(), 1);

    let dead = read(&brokers, &topics.dead_letter, 1, 1000).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value, "this is not a collector request");
    assert_eq!(dead[0].key.as_deref(), Some("k"));
    assert!(dead[0].headers["collector-error"].contains("invalid_json"), "{:?}", dead[0].headers);
    assert!(dead[0].headers["collector-source"].starts_with(&topics.raw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_wal_into_kafka_and_exits_cleanly() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let c = Collector::start("serve", wal.path(), 0, &topics.args("serve"));
    let client = client();
    for i in 0..200 {
        assert_eq!(post(&client, &c, event_body(&format!("e{i}"), "u")).await.status(), 200);
    }
    let status = c.terminate();
    assert!(status.success(), "exit status {status:?}");
    let raw = read(&brokers, &topics.raw, 200, 2000).await;
    let seqs: HashSet<u64> = raw.iter().map(|r| r.headers["collector-seq"].parse().unwrap()).collect();
    assert_eq!(raw.len(), 200, "each request exactly once after a clean shutdown");
    assert_eq!(seqs, (1..=200).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kafka_unreachable_ingest_keeps_accepting_and_delivers_after_restart() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    // Nothing listens on this port: Kafka is "down" for this collector.
    let dead_broker = format!("127.0.0.1:{}", free_port());
    let mut down_args = topics.args("serve");
    down_args[1] = dead_broker;
    down_args.extend(["--drain-timeout-ms".into(), "500".into()]);
    let c = Collector::start("serve", wal.path(), 0, &down_args);
    let client = client();
    for i in 0..50 {
        assert_eq!(post(&client, &c, event_body(&format!("e{i}"), "u")).await.status(), 200);
    }
    let status = c.status().await;
    assert_eq!(status["wal"]["pending_records"], 50);
    assert_eq!(status["flush"]["kafka_ok"], false);
    assert!(c.terminate().success(), "a drain that cannot reach Kafka still exits cleanly");

    let c = Collector::start("serve", wal.path(), 0, &topics.args("serve"));
    let raw = read(&brokers, &topics.raw, 50, 2000).await;
    assert_eq!(raw.len(), 50, "every request accepted while Kafka was away is delivered once it is back");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_arrives_after_kill_9_and_restart() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    // `run`: ingest, flusher and transform in the one process that is killed.
    let first = Collector::start("run", wal.path(), 0, &topics.args("run"));
    let port = first.port();
    let (stop, counters) = (Arc::new(AtomicBool::new(false)), Arc::new(LoadCounters::default()));
    let load = start_load(port, LoadShape { clients: 8, pace: Duration::ZERO, pad: 0 }, stop.clone(), counters.clone());

    // Kill the collector mid-stream, then bring it back on the same WAL.
    while counters.acked.load(Ordering::Relaxed) < 600 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill9();
    let acked_before_kill = counters.acked.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = Collector::start("run", wal.path(), port, &topics.args("run"));
    while counters.acked.load(Ordering::Relaxed) < acked_before_kill + 600 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let load = finish_load(load).await;
    assert!(load.acked.len() > acked_before_kill, "requests were accepted after the restart too");

    let (b, t) = (brokers.clone(), topics.transformed.clone());
    tokio::task::spawn_blocking(move || {
        assert_exactly_once(&b, &t, &load.acked, Duration::from_secs(90), "run mode, kill -9 and restart")
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkas_committed_position_wins_over_a_stale_local_watermark() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let node = ["--node-id".to_string(), unique("node").replace('-', "_")];

    // Ten requests accepted while Kafka is unreachable: pending in the WAL.
    let mut down = topics.args("serve");
    down[1] = format!("127.0.0.1:{}", free_port());
    down.extend(["--drain-timeout-ms".into(), "200".into()]);
    down.extend(node.clone());
    let c = Collector::start("serve", wal.path(), 0, &down);
    for i in 0..10 {
        assert_eq!(post(&client(), &c, event_body(&format!("e{i}"), "u")).await.status(), 200);
    }
    assert!(c.terminate().success());

    // A copy of that WAL: same records, same node, nothing marked delivered.
    let stale = tempfile::tempdir().unwrap();
    copy_dir(wal.path(), stale.path());

    let mut up = topics.args("serve");
    up.extend(node.clone());
    let c = Collector::start("serve", wal.path(), 0, &up);
    assert_eq!(read(&brokers, &topics.raw, 10, 0).await.len(), 10);
    assert!(c.terminate().success());

    // The stale copy believes nothing was delivered; Kafka's transactional position says all was.
    let c = Collector::start("serve", stale.path(), 0, &up);
    let status = loop {
        let s = c.status().await;
        if s["wal"]["pending_records"] == 0 {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["wal"]["delivered_through"], 10);
    assert!(c.terminate().success());
    let raw = read(&brokers, &topics.raw, 10, 3000).await;
    assert_eq!(raw.len(), 10, "the stale WAL must not send its records again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_mode_delivers_too() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let mut args = topics.args("run");
    args.extend(["--delivery-guarantee".into(), "at-least-once".into()]);
    let c = Collector::start("run", wal.path(), 0, &args);
    assert_eq!(post(&client(), &c, SEED_SAMPLE).await.status(), 200);
    let rows = read(&brokers, &topics.transformed, 1, 1000).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key.as_deref(), Some("user_test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_at_the_size_limit_gets_through_kafka() {
    let (brokers, topics, _wal, c) = run_pipeline();
    // Just under the default 900,000-byte limit: accepted, so it must fit a Kafka message.
    let pad = "x".repeat(890_000);
    // In an unknown event field: `ctx` has a limit of its own, since it is copied into rows.
    let body =
        SEED_SAMPLE.replace(r#""product_id":"prod_demo""#, &format!(r#""product_id":"prod_demo","pad":"{pad}""#));
    assert!(body.len() < 900_000);
    assert_eq!(post(&client(), &c, body.clone()).await.status(), 200);
    let raw = read(&brokers, &topics.raw, 1, 0).await;
    assert_eq!(raw[0].value.len(), body.len());
    let rows = read(&brokers, &topics.transformed, 1, 0).await;
    assert_eq!(rows[0].key.as_deref(), Some("user_test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_wal_under_a_reused_node_id_refuses_to_run_instead_of_acknowledging() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let node = ["--node-id".to_string(), unique("node").replace('-', "_")];
    let mut args = topics.args("serve");
    args.extend(node);

    // A first WAL delivers 10 records: Kafka's position for this node id is now 11, committed
    // with that WAL's identity.
    let first = tempfile::tempdir().unwrap();
    let c = Collector::start("serve", first.path(), 0, &args);
    for i in 0..10 {
        assert_eq!(post(&client(), &c, event_body(&format!("old{i}"), "u")).await.status(), 200);
    }
    assert_eq!(read(&brokers, &topics.raw, 10, 0).await.len(), 10);
    assert!(c.terminate().success());

    // The directory is replaced by an empty one, same node id: the position is not this WAL's.
    // Acknowledging up to it would drop records; the collector stops, saying why.
    let replaced = tempfile::tempdir().unwrap();
    let mut c = Collector::start("serve", replaced.path(), 0, &args);
    let status = exit_within(&mut c.child, Duration::from_secs(60)).await;
    let status = status.expect("the collector kept running on another WAL's position");
    assert!(!status.success(), "it exits with an error, not 0");
    let raw = read(&brokers, &topics.raw, 10, 2000).await;
    assert_eq!(raw.len(), 10, "nothing of the replaced WAL was mixed into the position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_collector_with_an_active_node_id_refuses_to_run_and_the_first_keeps_delivering() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let mut args = topics.args("serve");
    args.extend(["--node-id".to_string(), unique("node").replace('-', "_")]);
    let (wal_a, wal_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let a = Collector::start("serve", wal_a.path(), 0, &args);
    assert_eq!(post(&client(), &a, event_body("a0", "u")).await.status(), 200);
    assert_eq!(read(&brokers, &topics.raw, 1, 0).await.len(), 1);

    // A second collector, its own WAL, the same node id: Kafka's position is A's WAL's. B
    // refuses to run before its producer exists, so it fences nobody.
    let mut b = Collector::start("serve", wal_b.path(), 0, &args);
    let status = exit_within(&mut b.child, Duration::from_secs(60)).await;
    let status = status.expect("the second collector kept running under an active node id");
    assert!(!status.success(), "it exits with an error, not 0");

    // A was not disturbed: it still delivers.
    assert_eq!(post(&client(), &a, event_body("a1", "u")).await.status(), 200);
    let raw = read(&brokers, &topics.raw, 2, 2000).await;
    let values: Vec<&str> = raw.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(raw.len(), 2, "{values:?}");
    assert!(values.iter().any(|v| v.contains("\"a1\"")), "{values:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_message_whose_row_kafka_refuses_is_dead_lettered_and_rows_keep_flowing() {
    let (brokers, topics, _wal, c) = run_pipeline();
    let client = client();
    assert_eq!(post(&client, &c, event_body("first", "u1")).await.status(), 200);
    assert_eq!(read(&brokers, &topics.transformed, 1, 0).await.len(), 1);

    // The issue's first scenario, past ingest (an older collector, another producer): a valid
    // request whose one event has a 600,000-character user_id. Its row is larger than any Kafka
    // message; before, it stopped every row after it.
    let poison = event_body("poison", &"u".repeat(600_000));
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    producer.send(BaseRecord::<str, str>::to(&topics.raw).payload(&poison)).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let started = std::time::Instant::now();
    for i in 0..5 {
        assert_eq!(post(&client, &c, event_body(&format!("after{i}"), "u2")).await.status(), 200);
    }
    let rows = read(&brokers, &topics.transformed, 6, 1000).await;
    eprintln!("rows after the poison message arrived {:.1} s after it", started.elapsed().as_secs_f64());
    let after = rows.iter().filter(|r| r.value.contains("\"after")).count();
    assert_eq!((rows.len(), after), (6, 5), "every row after the poison message arrived, once");

    let dead = read(&brokers, &topics.dead_letter, 1, 1000).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value, poison, "the raw message travels to the dead-letter topic whole");
    assert!(dead[0].headers["collector-error"].contains("refuses"), "{:?}", dead[0].headers["collector-error"]);
}

/// `collector transform --node-id <node>` with `extra` flags; its log is kept, to tell why it
/// stopped.
fn spawn_transform(topics: &Topics, node: &str, extra: &[&str]) -> (std::process::Child, Arc<Mutex<String>>) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_collector"))
        .arg("transform")
        .args(topics.args("transform"))
        .args(["--node-id", node])
        .args(extra)
        .env("COLLECTOR_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting collector transform");
    let log = Arc::new(Mutex::new(String::new()));
    let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[transform] {line}");
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (child, log)
}

/// Waits up to `patience` for `child` to exit, without blocking the test's runtime.
async fn exit_within(child: &mut std::process::Child, patience: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + patience;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Two live workers under one node id share a `group.instance.id`: the broker fences the
/// older member. It must stop with an error naming the cause, not poll a dead consumer
/// forever. At-least-once, so no transactional producer fences it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_transform_worker_with_the_same_node_id_fences_the_first_which_stops_with_an_error() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let mut args = topics.args("serve");
    args.extend(["--delivery-guarantee".into(), "at-least-once".into()]);
    let c = Collector::start("serve", wal.path(), 0, &args);
    let node = unique("w");
    let at_least_once = ["--delivery-guarantee", "at-least-once"];

    let (mut a, a_log) = spawn_transform(&topics, &node, &at_least_once);
    assert_eq!(post(&client(), &c, event_body("a0", "u")).await.status(), 200);
    assert_eq!(read(&brokers, &topics.transformed, 1, 0).await.len(), 1, "worker A delivers");

    let (mut b, _b_log) = spawn_transform(&topics, &node, &at_least_once);
    let status = exit_within(&mut a, Duration::from_secs(60)).await;
    let _ = a.kill();
    let status = status.expect("the fenced worker kept running");
    assert!(!status.success(), "a fenced worker exits with an error, not 0");
    let log = a_log.lock().unwrap().clone();
    assert!(log.contains("fenced") && log.contains("--node-id"), "the error names the cause: {log}");

    // B owns the partitions now.
    assert_eq!(post(&client(), &c, event_body("b1", "u")).await.status(), 200);
    let rows = read(&brokers, &topics.transformed, 2, 1000).await;
    assert!(rows.iter().any(|r| r.value.contains("\"b1\"")), "worker B delivers: {rows:?}");
    let _ = b.kill();
    let _ = b.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_run_alone_serves_its_metrics_and_readiness_on_its_admin_listener() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let c = Collector::start("serve", wal.path(), 0, &topics.args("serve"));
    let (mut worker, log) = spawn_transform(&topics, &unique("w"), &["--log", "warn,collector::app=info"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let admin = loop {
        let found = log.lock().unwrap().lines().find(|l| l.contains("Admin listening")).map(|l| {
            let addr = l.split("addr=").nth(1).expect("the line names the address");
            addr.split_whitespace().next().unwrap().to_string()
        });
        if let Some(addr) = found {
            break addr;
        }
        assert!(std::time::Instant::now() < deadline, "the worker never said where its admin listener is");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for i in 0..3 {
        assert_eq!(post(&client(), &c, event_body(&format!("w{i}"), "u")).await.status(), 200);
    }
    assert_eq!(read(&brokers, &topics.transformed, 3, 0).await.len(), 3);

    // The worker's own figures: the rows it produced, its batches, and its lag per partition
    // (from librdkafka's statistics, every 5 s) down to 0.
    let get = |path: &str| client().get(format!("http://{admin}{path}")).send();
    let mut metrics = String::new();
    for _ in 0..40 {
        metrics = get("/metrics").await.unwrap().text().await.unwrap();
        let lags: Vec<&str> =
            metrics.lines().filter(|l| l.starts_with("collector_transform_consumer_lag_messages{")).collect();
        if !lags.is_empty() && lags.iter().all(|l| l.ends_with(" 0")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(metrics.lines().any(|l| l == "collector_transform_rows_total 3"), "{metrics}");
    assert!(metrics.contains("collector_transform_batch_duration_seconds_count"), "{metrics}");
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("collector_transform_consumer_lag_messages{"))
            .all(|l| l.ends_with(" 0")),
        "{metrics}"
    );
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/collect").await.unwrap().status(), 404, "a worker takes no events");

    let pid = worker.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = exit_within(&mut worker, Duration::from_secs(30)).await.expect("the worker did not stop");
    assert!(status.success(), "{status:?}");
}

/// `kill -TERM <pid>`, without waiting.
fn sigterm(c: &Collector) {
    let pid = c.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

/// The drain after SIGTERM can take a while when Kafka is away; a second SIGTERM ends it at
/// once, non-zero, and the undelivered records stay in the WAL for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_while_draining_exits_at_once_and_keeps_the_records_in_the_wal() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let mut down = topics.args("serve");
    down[1] = format!("127.0.0.1:{}", free_port());
    down.extend(["--drain-timeout-ms".into(), "120000".into()]);
    let mut c = Collector::start("serve", wal.path(), 0, &down);
    for i in 0..20 {
        assert_eq!(post(&client(), &c, event_body(&format!("e{i}"), "u")).await.status(), 200);
    }

    sigterm(&c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.child.try_wait().unwrap().is_none(), "the first SIGTERM drains (Kafka is away: for two minutes)");
    let t0 = std::time::Instant::now();
    sigterm(&c);
    let status = exit_within(&mut c.child, Duration::from_secs(20)).await;
    let status = status.expect("the second SIGTERM did not end the drain");
    eprintln!("second SIGTERM: exited {status:?} after {:?}", t0.elapsed());
    assert!(!status.success(), "an interrupted drain is not a clean exit");
    drop(c);

    let stats = std::process::Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["wal", "stats", "--wal-dir"])
        .arg(wal.path())
        .output()
        .unwrap();
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["pending_records"], 20, "{stats}");

    let c = Collector::start("serve", wal.path(), 0, &topics.args("serve"));
    assert_eq!(read(&brokers, &topics.raw, 20, 2000).await.len(), 20, "the next start delivers them, once");
    drop(c);
}
