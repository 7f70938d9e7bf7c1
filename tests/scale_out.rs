//! Scaling out (issue 11, item 4): two collectors, each with its own WAL and node id, behind a
//! load balancer that routes by `Idempotency-Key`, and three transform workers in one consumer
//! group, against a three-broker cluster with topics replicated three times (two in sync for a
//! write). One collector and one worker are killed with SIGKILL under load and restarted under
//! their node ids; an independent reader (kcat, `read_committed`) then finds every acknowledged
//! event exactly once, both as a row and as a raw request.
//!
//! The test's own cluster (`tests/common/cluster.rs`) needs Java and the Kafka jars
//! (`scripts/kafka.sh fetch`), not the shared test broker.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::balancer::{backend_for, finish_balanced_load, start_balanced_load};
use common::cluster::Cluster;
use common::*;

/// The collectors' node ids, in the balancer's backend order.
const COLLECTORS: [&str; 2] = ["collector-a", "collector-b"];
const WORKERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];

/// Six clients sending as fast as they are answered; each waits for its collector while that
/// one is down, as a tracker retrying would.
const SHAPE: LoadShape = LoadShape { clients: 6, pace: Duration::ZERO, pad: 0 };

/// A `collector transform` worker; its admin listener's address is read from its log. Killed
/// on drop, so a failed assertion leaves no worker behind.
struct Worker {
    node: &'static str,
    child: Child,
    admin: SocketAddr,
}

impl Worker {
    fn start(node: &'static str, args: &[String]) -> Worker {
        let mut command = Command::new(env!("CARGO_BIN_EXE_collector"));
        command.arg("transform").args(args).args(["--node-id", node]);
        let Spawned { mut child, listening, .. } = spawn_logged(&mut command, node);
        let admin = match listening.recv_timeout(Duration::from_secs(30)) {
            Ok((_, addr)) => addr,
            Err(_) => {
                let status = child.try_wait().unwrap();
                let _ = child.kill();
                let _ = child.wait();
                panic!("worker {node} did not start its admin listener (exit status {status:?}); its log is above");
            }
        };
        Worker { node, child, admin }
    }

    /// The rows this worker's process has committed (`collector_transform_rows_total`; 0 until
    /// its first batch). A counter of the process: it starts again at 0 after a restart.
    async fn rows(&self) -> u64 {
        let url = format!("http://{}/metrics", self.admin);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let page = match http.get(&url).send().await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(e) => panic!("{}'s metrics at {url}: {e}", self.node),
        };
        page.lines()
            .find_map(|l| l.strip_prefix("collector_transform_rows_total "))
            .map_or(0, |n| n.trim().parse::<f64>().expect("a number") as u64)
    }

    /// `kill -9`.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flags` plus `--node-id node`.
fn with_node(flags: &[String], node: &str) -> Vec<String> {
    let mut args = flags.to_vec();
    args.extend(["--node-id".into(), node.into()]);
    args
}

/// Waits up to `patience` until every worker has committed rows (the group has settled with
/// each owning partitions that carry data); says how long it took, or that it gave up.
async fn wait_for_rows_from_every_worker(workers: &[Worker], patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let mut waiting = Vec::new();
        for w in workers {
            if w.rows().await == 0 {
                waiting.push(w.node);
            }
        }
        if waiting.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("scale out: after {patience:?} still no rows from {waiting:?}; going on (asserted at the end)");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn the_balancer_spreads_keys_and_a_new_backend_takes_only_its_share() {
    let keys: Vec<String> = (0..10_000).map(|i| format!("c{}-{i}", i % 7)).collect();
    let mut counts = [0usize; 2];
    for k in &keys {
        counts[backend_for(k, 2)] += 1;
    }
    assert!(counts.iter().all(|&n| n > 4_500), "{counts:?}");
    let moved = keys.iter().filter(|k| backend_for(k, 2) != backend_for(k, 3)).count();
    let to_new = keys.iter().filter(|k| backend_for(k, 3) == 2).count();
    assert_eq!(moved, to_new, "only the keys the new backend takes move");
    assert!((2_800..3_900).contains(&moved), "about a third of the keys move: {moved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_and_three_workers_lose_and_duplicate_nothing_when_one_of_each_is_killed_under_load() {
    let began = Instant::now();
    // Declared first, dropped last: the processes and topics go before the cluster.
    let cluster = Cluster::start();
    let brokers = cluster.brokers();
    let topics = Topics::new(&brokers);
    let replicated: Vec<String> =
        ["--topic-replication", "3", "--topic-min-insync-replicas", "2"].map(String::from).to_vec();
    let serve: Vec<String> = topics.args("serve").into_iter().chain(replicated.clone()).collect();
    let transform: Vec<String> = topics.args("transform").into_iter().chain(replicated).collect();
    eprintln!("scale out: cluster up after {:.1} s", began.elapsed().as_secs_f64());

    let wals = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut collectors: Vec<Option<Collector>> = COLLECTORS
        .iter()
        .zip(&wals)
        .map(|(node, wal)| Some(Collector::start("serve", wal.path(), 0, &with_node(&serve, node))))
        .collect();
    let ports: Vec<u16> = collectors.iter().map(|c| c.as_ref().unwrap().port()).collect();
    let mut workers: Vec<Worker> = WORKERS.iter().map(|node| Worker::start(node, &transform)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(LoadCounters::default());
    let load = start_balanced_load(&ports, SHAPE, stop.clone(), counters.clone());
    wait_for_rows_from_every_worker(&workers, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // collector-a: killed, down for a while (its clients' requests fail and are retried against
    // it), restarted on its WAL, port and node id.
    let before = counters.acked.load(Ordering::Relaxed);
    collectors[0].take().unwrap().kill9();
    eprintln!("scale out: collector-a killed with SIGKILL ({before} acknowledged so far)");
    tokio::time::sleep(Duration::from_secs(3)).await;
    collectors[0] = Some(Collector::start("serve", wals[0].path(), ports[0], &with_node(&serve, COLLECTORS[0])));
    eprintln!("scale out: collector-a restarted");
    tokio::time::sleep(Duration::from_secs(6)).await;

    // worker-2: killed with its rows so far noted (its counter dies with it), restarted under
    // its node id (static membership: it gets its partitions back).
    let mut rows_by_worker: HashMap<&str, u64> = HashMap::new();
    let killed = workers.remove(1);
    rows_by_worker.insert(killed.node, killed.rows().await);
    killed.kill9();
    eprintln!("scale out: worker-2 killed with SIGKILL ({} rows committed by it)", rows_by_worker["worker-2"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    workers.insert(1, Worker::start(WORKERS[1], &transform));
    eprintln!("scale out: worker-2 restarted");
    tokio::time::sleep(Duration::from_secs(8)).await;

    stop.store(true, Ordering::Relaxed);
    let outcome = finish_balanced_load(load).await;
    let acked = outcome.load.acked.clone();
    eprintln!(
        "scale out: load stopped: attempted {}, acknowledged {}, retries {}, answered as duplicates {}, 503s {}",
        outcome.load.attempted,
        acked.len(),
        outcome.load.retries,
        outcome.deduplicated,
        counters.unavailable.load(Ordering::Relaxed)
    );
    assert!(acked.len() > 500, "too little load got through to prove anything: {}", acked.len());

    // Every acknowledged event once as a row, and its request once in the raw topic.
    let (b, rows_topic, raw_topic) = (brokers.clone(), topics.transformed.clone(), topics.raw.clone());
    let acked_ = acked.clone();
    let (rows_read, raw) = tokio::task::spawn_blocking(move || {
        let rows = assert_exactly_once(&b, &rows_topic, &acked_, Duration::from_secs(120), "scale out, rows");
        assert_exactly_once(&b, &raw_topic, &acked_, Duration::from_secs(30), "scale out, raw requests");
        // The raw requests again, with their headers: which collector stored each.
        let raw = read_topic(&b, &raw_topic, acked_.len(), Duration::from_secs(60), Duration::from_secs(2));
        (rows, raw)
    })
    .await
    .unwrap();

    // Each collector took its share, and stored exactly the keys the balancer sent it.
    for (i, node) in COLLECTORS.iter().enumerate() {
        assert!(
            outcome.acked_per_backend[i] > acked.len() / 5,
            "{node} acknowledged too little: {:?}",
            outcome.acked_per_backend
        );
    }
    let mut raw_by_node: HashMap<String, usize> = HashMap::new();
    for record in &raw {
        let node = record.headers.get("collector-node").cloned().unwrap_or_default();
        let request: serde_json::Value = serde_json::from_str(&record.value).unwrap();
        let id = request["events"][0]["event_type"].as_str().unwrap();
        assert_eq!(
            node,
            COLLECTORS[backend_for(id, COLLECTORS.len())],
            "request {id} was stored by the wrong collector"
        );
        *raw_by_node.entry(node).or_default() += 1;
    }

    // Each worker wrote rows: the killed one before or after its restart.
    for w in &workers {
        *rows_by_worker.entry(w.node).or_default() += w.rows().await;
    }
    for node in WORKERS {
        assert!(rows_by_worker[node] > 0, "{node} committed no rows: {rows_by_worker:?}");
    }

    eprintln!(
        "scale out summary: acknowledged {} (collector-a {}, collector-b {}), retries {}, answered as duplicates {}; \
         rows read {rows_read}, lost 0, duplicated 0; raw requests {} (collector-a {}, collector-b {}), duplicated 0; \
         rows committed by worker-1 {}, worker-2 {} (both incarnations), worker-3 {}; {:.0} s",
        acked.len(),
        outcome.acked_per_backend[0],
        outcome.acked_per_backend[1],
        outcome.load.retries,
        outcome.deduplicated,
        raw.len(),
        raw_by_node.get(COLLECTORS[0]).copied().unwrap_or(0),
        raw_by_node.get(COLLECTORS[1]).copied().unwrap_or(0),
        rows_by_worker["worker-1"],
        rows_by_worker["worker-2"],
        rows_by_worker["worker-3"],
        began.elapsed().as_secs_f64()
    );
    drop(workers);
    drop(collectors);
}
