//! Crash tests: `kill -9` the real processes again and again under continuous load, then count
//! with an independent reader (kcat, `isolation.level=read_committed`) that every acknowledged
//! event is in `collect-topic2` exactly once.
//!
//! The load client behaves like a real tracker: a request whose answer was cut off by a kill is
//! retried with the same `Idempotency-Key` until it is acknowledged, so the key must survive the
//! crash together with its record.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Waits for every acknowledged id, then checks the exactly-once property.
fn verify_exactly_once(brokers: &str, topic: &str, load: &LoadOutcome, what: &str) {
    eprintln!("{what}: events attempted {}, retries {}", load.attempted, load.retries);
    assert!(load.acked.len() > 100, "too little load got through to prove anything");
    assert_exactly_once(brokers, topic, &load.acked, Duration::from_secs(90), what);
}

/// Four clients sending as fast as the collector answers.
const SHAPE: LoadShape = LoadShape { clients: 4, pace: Duration::ZERO, pad: 0 };

fn transform_args(topics: &Topics, node: &str) -> Vec<String> {
    let mut args = topics.args("transform");
    args.extend(["--node-id".into(), node.into()]);
    args
}

/// `collector transform` has no HTTP port; start it and give it a moment.
fn start_transform(topics: &Topics, node: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_collector"))
        .arg("transform")
        .args(transform_args(topics, node))
        .env("COLLECTOR_LOG", "warn")
        .spawn()
        .expect("starting collector transform")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_killed_ten_times_under_load_loses_and_duplicates_nothing() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let mut rng = Rng::from_env("CRASH_SEED", "crash test");
    let node = unique("t");
    let mut transform = start_transform(&topics, &node);
    let serve = Collector::start("serve", wal.path(), 0, &topics.args("serve"));
    let port = serve.port();
    let mut serve = Some(serve);

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(port, SHAPE, stop.clone(), Arc::default());
    for kill in 1..=10 {
        tokio::time::sleep(Duration::from_millis(rng.between(200, 1200))).await;
        serve.take().unwrap().kill9();
        eprintln!("kill {kill}: collector killed");
        tokio::time::sleep(Duration::from_millis(rng.between(0, 300))).await;
        serve = Some(Collector::start("serve", wal.path(), port, &topics.args("serve")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let load = finish_load(load).await;

    let (b, raw, rows) = (brokers.clone(), topics.raw.clone(), topics.transformed.clone());
    tokio::task::spawn_blocking(move || {
        verify_exactly_once(&b, &raw, &load, "collector kill -9 x10, collect-topic1");
        verify_exactly_once(&b, &rows, &load, "collector kill -9 x10, collect-topic2");
    })
    .await
    .unwrap();
    let _ = transform.kill();
    let _ = transform.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transform_worker_killed_ten_times_under_load_loses_and_duplicates_nothing() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let mut rng = Rng::from_env("CRASH_SEED", "crash test");
    let serve = Collector::start("serve", wal.path(), 0, &topics.args("serve"));
    // The same node id across restarts: each new worker fences its killed predecessor.
    let node = unique("t");
    let mut transform = start_transform(&topics, &node);

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(serve.port(), SHAPE, stop.clone(), Arc::default());
    for kill in 1..=10 {
        tokio::time::sleep(Duration::from_millis(rng.between(500, 2000))).await;
        transform.kill().unwrap();
        transform.wait().unwrap();
        eprintln!("kill {kill}: transform worker killed");
        tokio::time::sleep(Duration::from_millis(rng.between(0, 300))).await;
        transform = start_transform(&topics, &node);
    }
    stop.store(true, Ordering::Relaxed);
    let load = finish_load(load).await;

    let (b, t) = (brokers.clone(), topics.transformed.clone());
    tokio::task::spawn_blocking(move || verify_exactly_once(&b, &t, &load, "transform kill -9 x10")).await.unwrap();
    let _ = transform.kill();
    let _ = transform.wait();
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_workers_joining_and_leaving_under_load_lose_and_duplicate_nothing() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let serve = Collector::start("serve", wal.path(), 0, &topics.args("serve"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(serve.port(), SHAPE, stop.clone(), Arc::default());

    let mut a = start_transform(&topics, &unique("a"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("rebalance: worker b joins");
    let mut b = start_transform(&topics, &unique("b"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    eprintln!("rebalance: worker a leaves (SIGTERM)");
    let status = Command::new("kill").args(["-TERM", &a.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(a.wait().unwrap().success(), "a worker leaves cleanly on SIGTERM");
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("rebalance: worker c joins");
    let mut c = start_transform(&topics, &unique("c"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    eprintln!("rebalance: worker b is killed (SIGKILL)");
    b.kill().unwrap();
    b.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let load = finish_load(load).await;

    let (br, t) = (brokers.clone(), topics.transformed.clone());
    tokio::task::spawn_blocking(move || verify_exactly_once(&br, &t, &load, "workers joining and leaving"))
        .await
        .unwrap();
    let _ = c.kill();
    let _ = c.wait();
    drop(serve);
}

/// Posts a one-event request whose row is identifiable by `id`; panics unless it is accepted.
async fn post_marker(port: u16, id: &str) {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/collect"))
        .header("content-type", "application/json")
        .body(event_body(id, "marker"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the marker request {id} is accepted");
}

/// Tails `topic` (`read_committed`) until a row of event `id` arrives; when it did, or `None`
/// after `patience`.
fn wait_for_row(brokers: &str, topic: &str, id: &str, patience: Duration) -> Option<Instant> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("tail"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let needle = format!(r#""event_type":"{id}""#);
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if m.payload().is_some_and(|p| String::from_utf8_lossy(p).contains(&needle)) {
                return Some(Instant::now());
            }
        }
    }
    None
}

/// Static group membership: a worker restarted under its node id rejoins the consumer group as
/// the same member and gets its partitions back at once, instead of waiting for the killed
/// member's session to expire. Prints the seconds from the restart until a request sent right
/// after it has its row (issue 7 aims at under 5 s); asserts only that rows flow again and
/// that every acknowledged event arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_worker_restarted_after_kill_9_gets_its_partitions_back_and_rows_flow_again() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let serve = Collector::start("serve", wal.path(), 0, &topics.args("serve"));
    let node = unique("t");
    let mut transform = start_transform(&topics, &node);
    let stop = Arc::new(AtomicBool::new(false));
    let shape = LoadShape { clients: 4, pace: Duration::from_millis(5), pad: 0 };
    let load = start_load(serve.port(), shape, stop.clone(), Arc::default());

    // The worker owns its partitions and rows flow before it is killed.
    post_marker(serve.port(), "before-kill").await;
    let (b, t) = (brokers.clone(), topics.transformed.clone());
    let flowing = tokio::task::spawn_blocking(move || wait_for_row(&b, &t, "before-kill", Duration::from_secs(60)));
    assert!(flowing.await.unwrap().is_some(), "rows flow before the kill");
    tokio::time::sleep(Duration::from_secs(1)).await;

    transform.kill().unwrap();
    transform.wait().unwrap();
    let restarted = Instant::now();
    transform = start_transform(&topics, &node);
    post_marker(serve.port(), "after-restart").await;
    let (b, t) = (brokers.clone(), topics.transformed.clone());
    let arrived = tokio::task::spawn_blocking(move || wait_for_row(&b, &t, "after-restart", Duration::from_secs(120)));
    let arrived = arrived.await.unwrap().expect("rows flow again after the restart");
    // A figure to record, not a threshold: wall-clock time on a shared machine drifts.
    eprintln!(
        "static membership: rows flow again {:.1} s after the worker was restarted",
        (arrived - restarted).as_secs_f64()
    );

    stop.store(true, Ordering::Relaxed);
    let mut load = finish_load(load).await;
    load.acked.extend(["before-kill".to_string(), "after-restart".to_string()]);
    let (b, t) = (brokers.clone(), topics.transformed.clone());
    tokio::task::spawn_blocking(move || verify_exactly_once(&b, &t, &load, "transform kill -9 and restart"))
        .await
        .unwrap();
    let _ = transform.kill();
    let _ = transform.wait();
    drop(serve);
}
