//! Broker outages, for real: each test starts its own single-node Kafka (the project's
//! `scripts/kafka.sh` on free ports), stops it under load, and starts it again.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// A Kafka of this test's own. Stopped and its data deleted on drop.
struct OwnKafka {
    port: u16,
    controller_port: u16,
}

impl OwnKafka {
    fn script(&self, action: &str) {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
            .arg(action)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_HEAP", "512m")
            .status()
            .unwrap();
        assert!(status.success(), "scripts/kafka.sh {action} failed");
    }

    fn start() -> Self {
        let kafka = OwnKafka { port: free_port(), controller_port: free_port() };
        kafka.script("start");
        kafka
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        self.script("reset");
    }
}

async fn ready(c: &Collector) -> (u16, serde_json::Value) {
    let r = reqwest::get(c.url("/readyz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_down_for_thirty_seconds_under_load_loses_and_duplicates_nothing() {
    let kafka = OwnKafka::start();
    let topics = Topics::new(&kafka.brokers());
    let wal = tempfile::tempdir().unwrap();
    let c = Collector::start("run", wal.path(), 0, &topics.args("run"));
    let (stop, counters) = (Arc::new(AtomicBool::new(false)), Arc::new(LoadCounters::default()));
    // Paced (about 2,000 requests/s in all): enough to prove the point, little enough that the
    // backlog drains quickly on a 2-core CI machine.
    let load = start_load(
        c.port(),
        LoadShape { clients: 4, pace: Duration::from_millis(2), pad: 0 },
        stop.clone(),
        counters.clone(),
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.script("stop");
    let acked_at_outage = counters.acked.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let acked_during = counters.acked.load(Ordering::Relaxed) - acked_at_outage;
    assert!(acked_during > 100, "ingest kept answering 200 during the outage ({acked_during} acknowledged)");
    assert_eq!(ready(&c).await.0, 200, "an outage alone does not make the collector unready");
    kafka.script("start");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = finish_load(load).await.acked;
    eprintln!("outage: {acked_during} requests acknowledged while the broker was down");
    let (b, t) = (kafka.brokers(), topics.transformed.clone());
    tokio::task::spawn_blocking(move || {
        assert_exactly_once(&b, &t, &acked, Duration::from_secs(180), "broker down 30 s")
    })
    .await
    .unwrap();
    drop(c);
    drop(topics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_wal_answers_503_then_recovers_by_itself_when_the_broker_returns() {
    let kafka = OwnKafka::start();
    let topics = Topics::new(&kafka.brokers());
    let wal = tempfile::tempdir().unwrap();
    let mut args = topics.args("serve");
    args.extend(["--wal-segment-mib", "1", "--wal-max-mib", "4"].map(String::from));
    let c = Collector::start("serve", wal.path(), 0, &args);
    // Let the flusher create its topics and transactional producer first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.script("stop");

    let (stop, counters) = (Arc::new(AtomicBool::new(false)), Arc::new(LoadCounters::default()));
    let load = start_load(
        c.port(),
        LoadShape { clients: 4, pace: Duration::ZERO, pad: 16 * 1024 },
        stop.clone(),
        counters.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while counters.unavailable.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the WAL never filled up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = ready(&c).await;
    assert_eq!((status, body["reason"].as_str()), (503, Some("wal_full")));
    let acked_when_full = counters.acked.load(Ordering::Relaxed);
    eprintln!("quota: WAL full after {acked_when_full} acknowledged requests");

    kafka.script("start");
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready(&c).await.0 != 200 {
        assert!(Instant::now() < deadline, "the collector never became ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refusals = counters.unavailable.load(Ordering::Relaxed);
    // Accepting again: more requests get through after the broker came back.
    let resumed_from = counters.acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while counters.acked.load(Ordering::Relaxed) < resumed_from + 50 {
        assert!(Instant::now() < deadline, "requests were not accepted again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let acked = finish_load(load).await.acked;
    eprintln!("quota: {refusals} requests answered 503 while full; {} acknowledged in all", acked.len());
    let (b, t) = (kafka.brokers(), topics.raw.clone());
    tokio::task::spawn_blocking(move || assert_exactly_once(&b, &t, &acked, Duration::from_secs(180), "WAL quota"))
        .await
        .unwrap();
    drop(c);
    drop(topics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_down_exits_by_the_drain_deadline_and_loses_nothing() {
    let kafka = OwnKafka::start();
    let topics = Topics::new(&kafka.brokers());
    let wal = tempfile::tempdir().unwrap();
    let mut args = topics.args("serve");
    // A transaction may block for up to two minutes; the drain deadline is one second.
    args.extend(["--transaction-timeout-ms", "120000", "--drain-timeout-ms", "1000"].map(String::from));
    let c = Collector::start("serve", wal.path(), 0, &args);
    let (stop, counters) = (Arc::new(AtomicBool::new(false)), Arc::new(LoadCounters::default()));
    let load = start_load(
        c.port(),
        LoadShape { clients: 2, pace: Duration::from_millis(1), pad: 0 },
        stop.clone(),
        counters.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka.script("stop");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = finish_load(load).await.acked;

    let t0 = Instant::now();
    let status = tokio::task::spawn_blocking(move || c.terminate()).await.unwrap();
    let took = t0.elapsed();
    eprintln!("drain with the broker down: exited {status:?} after {took:?}");
    assert!(status.success());
    assert!(took < Duration::from_secs(60), "shutdown waited for Kafka instead of honouring the drain deadline");

    kafka.script("start");
    let c = Collector::start("serve", wal.path(), 0, &topics.args("serve"));
    let (b, t) = (kafka.brokers(), topics.raw.clone());
    tokio::task::spawn_blocking(move || {
        assert_exactly_once(&b, &t, &acked, Duration::from_secs(120), "drain deadline, broker down")
    })
    .await
    .unwrap();
    drop(c);
    drop(topics);
}

/// One POST of `event_body(id)` with `Idempotency-Key: id`: the status, and the body as JSON.
async fn post_keyed(http: &reqwest::Client, c: &Collector, id: &str) -> (u16, serde_json::Value) {
    let r = http
        .post(c.url("/collect"))
        .header("content-type", "application/json")
        .header("idempotency-key", id)
        .body(event_body(id, "ack"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ack_kafka_a_200_means_kafka_has_the_batch_and_an_outage_answers_503_without_losing_a_retried_batch() {
    let kafka = OwnKafka::start();
    let topics = Topics::new(&kafka.brokers());
    let wal = tempfile::tempdir().unwrap();
    let mut args = topics.args("serve");
    args.extend(["--ack", "kafka", "--ack-timeout-ms", "3000"].map(String::from));
    let c = Collector::start("serve", wal.path(), 0, &args);
    let http = reqwest::Client::new();
    let (brokers, raw) = (kafka.brokers(), topics.raw.clone());
    let in_kafka = |brokers: String, raw: String| async move {
        tokio::task::spawn_blocking(move || kcat_ids(&brokers, &raw)).await.unwrap()
    };

    // A fresh broker's transaction coordinator takes a few seconds to load: wait until the
    // flusher is connected, so the first requests are not answered `kafka_unconfirmed`.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.status().await["flush"]["kafka_ok"] != true {
        assert!(Instant::now() < deadline, "the flusher never connected to Kafka");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 1. Broker up: every 200 comes after Kafka has the batch. An independent read_committed
    //    reader, started only after the answer, finds it at once.
    let mut acked = HashSet::new();
    for i in 0..5 {
        let id = format!("ack-up-{i}");
        let (status, body) = post_keyed(&http, &c, &id).await;
        assert_eq!(status, 200, "{body}");
        let counts = in_kafka(brokers.clone(), raw.clone()).await;
        assert_eq!(counts.get(&id), Some(&1), "{id} was answered 200 before Kafka had it");
        acked.insert(id);
    }

    // 2. Broker down: no 200 any more. The first request is stored and waits for Kafka until
    //    the timeout (`kafka_unconfirmed`); once the flusher knows Kafka is away, requests are
    //    refused before anything is stored (`kafka_unavailable`) and /readyz says why.
    kafka.script("stop");
    let (mut unconfirmed, mut unavailable) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0.. {
        assert!(Instant::now() < deadline, "the collector never refused for kafka_unavailable");
        let id = format!("ack-down-{i}");
        let (status, body) = post_keyed(&http, &c, &id).await;
        assert_eq!(status, 503, "{id} was answered {status} with the broker down: {body}");
        match body["error"]["code"].as_str().unwrap() {
            "kafka_unconfirmed" => unconfirmed.push(id),
            "kafka_unavailable" => unavailable += 1,
            other => panic!("unexpected error {other}: {body}"),
        }
        if unavailable >= 3 {
            break;
        }
    }
    let (status, body) = ready(&c).await;
    assert_eq!((status, body["reason"].as_str()), (503, Some("kafka_unavailable")));
    assert!(!unconfirmed.is_empty(), "the first request after the broker left is stored and waits");
    let pending = c.status().await["wal"]["pending_records"].as_u64().unwrap();
    assert_eq!(pending, unconfirmed.len() as u64, "only the unconfirmed requests were stored");

    // 3. Broker back: the stored batches are delivered by themselves, and a client retrying with
    //    its Idempotency-Key gets the first attempt's receipt, stored once.
    kafka.script("start");
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &unconfirmed {
        loop {
            let (status, body) = post_keyed(&http, &c, id).await;
            if status == 200 {
                assert_eq!(body["duplicate"], true, "{body}");
                break;
            }
            assert!(Instant::now() < deadline, "{id} was never confirmed after the broker returned: {body}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        acked.insert(id.clone());
    }
    let counts = in_kafka(brokers.clone(), raw.clone()).await;
    assert!(counts.keys().all(|id| acked.contains(id)), "a refused request reached Kafka: {counts:?}");
    eprintln!(
        "ack kafka: {} acknowledged, {} unconfirmed then retried, {unavailable} refused while Kafka was away",
        acked.len(),
        unconfirmed.len()
    );
    tokio::task::spawn_blocking(move || {
        assert_exactly_once(&brokers, &raw, &acked, Duration::from_secs(60), "--ack kafka outage")
    })
    .await
    .unwrap();
    drop(c);
    drop(topics);
}
