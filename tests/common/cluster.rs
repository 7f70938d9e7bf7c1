//! A three-broker Kafka cluster of a test's own (`scripts/kafka-cluster.sh` on free ports), and
//! what fault tests need to know about it: which broker leads a partition, which coordinates a
//! transactional id, whether every replica is back in sync.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Kafka's internal topic holding transaction state, and its partition count in
/// `scripts/kafka.sh`'s broker configuration (`transaction.state.log.num.partitions`).
const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
const TRANSACTION_STATE_PARTITIONS: i32 = 4;

/// One partition as the cluster's metadata describes it.
#[derive(Debug, Clone)]
pub struct PartitionState {
    pub id: i32,
    /// Node id of the leader (-1 while there is none).
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// Three brokers, node ids 1 to 3. Stopped and their data deleted on drop.
pub struct Cluster {
    base_port: u16,
}

impl Cluster {
    /// Starts a cluster on six consecutive free ports.
    pub fn start() -> Cluster {
        let cluster = Cluster { base_port: free_port_run(6) };
        cluster.script(&["start"]);
        cluster
    }

    fn script(&self, args: &[&str]) {
        assert!(self.try_script(args), "scripts/kafka-cluster.sh {args:?} failed");
    }

    fn try_script(&self, args: &[&str]) -> bool {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka-cluster.sh"))
            .args(args)
            .env("KAFKA_CLUSTER_PORT", self.base_port.to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The bootstrap list: all three brokers.
    pub fn brokers(&self) -> String {
        (1..=3).map(|n| format!("127.0.0.1:{}", self.port(n))).collect::<Vec<_>>().join(",")
    }

    /// Broker `node`'s client port.
    pub fn port(&self, node: i32) -> u16 {
        self.base_port + 2 * (node as u16 - 1)
    }

    /// SIGKILL broker `node` (1-3).
    pub fn kill(&self, node: i32) {
        self.script(&["kill-broker", &node.to_string()]);
    }

    /// Stops broker `node` cleanly (SIGTERM; Kafka moves its leaderships away first).
    pub fn stop(&self, node: i32) {
        self.script(&["stop-broker", &node.to_string()]);
    }

    /// Starts broker `node` again and waits until it answers.
    pub fn restart(&self, node: i32) {
        self.script(&["start-broker", &node.to_string()]);
    }

    fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", "cluster-metadata-reader")
            .create()
            .unwrap()
    }

    /// `topic`'s partitions, by id.
    pub fn partitions(&self, topic: &str) -> Vec<PartitionState> {
        let consumer = self.consumer();
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let t = &metadata.topics()[0];
        assert!(t.error().is_none(), "no metadata for {topic}: {:?}", t.error());
        let mut partitions: Vec<PartitionState> = t
            .partitions()
            .iter()
            .map(|p| PartitionState {
                id: p.id(),
                leader: p.leader(),
                replicas: p.replicas().to_vec(),
                isr: p.isr().to_vec(),
            })
            .collect();
        partitions.sort_by_key(|p| p.id);
        partitions
    }

    /// The partition of `topic` holding the most records (highest end offset), and its leader.
    pub fn busiest_partition(&self, topic: &str) -> PartitionState {
        let consumer = self.consumer();
        self.partitions(topic)
            .into_iter()
            .max_by_key(|p| consumer.fetch_watermarks(topic, p.id, Duration::from_secs(10)).unwrap().1)
            .unwrap()
    }

    /// The broker coordinating `transactional_id`'s transactions: the leader of its partition of
    /// the transaction state topic (Kafka's `TransactionStateManager.partitionFor`:
    /// `abs(transactionalId.hashCode) % partitions`, with Java's `String.hashCode`).
    pub fn transaction_coordinator(&self, transactional_id: &str) -> i32 {
        let partition = transaction_state_partition(transactional_id);
        self.partitions(TRANSACTION_STATE_TOPIC)[partition as usize].leader
    }

    /// Waits (up to `patience`) until every partition of every one of `topics` has a leader and
    /// all its replicas in sync: what a rolling restart waits for before the next broker.
    pub fn wait_in_sync(&self, topics: &[&str], patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            let lagging: Vec<(String, PartitionState)> = topics
                .iter()
                .flat_map(|t| self.partitions(t).into_iter().map(|p| (t.to_string(), p)))
                .filter(|(_, p)| p.leader < 0 || p.isr.len() < p.replicas.len())
                .collect();
            if lagging.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "replicas still out of sync after {patience:?}: {lagging:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    /// Never panics: a panic while a failing test unwinds would abort before the brokers go.
    fn drop(&mut self) {
        if !self.try_script(&["reset"]) {
            eprintln!("scripts/kafka-cluster.sh reset failed for the cluster on port {}", self.base_port);
        }
    }
}

/// The transaction state partition Kafka assigns `transactional_id` to.
pub fn transaction_state_partition(transactional_id: &str) -> i32 {
    let hash = transactional_id.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    // Kafka's Utils.abs: Integer.MIN_VALUE maps to 0.
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % TRANSACTION_STATE_PARTITIONS
}

/// The first of `n` consecutive ports that are all free now, below the range the kernel hands
/// out to outgoing connections: a client reconnecting to a stopped broker must not take the
/// port that broker listens on again when it restarts.
fn free_port_run(n: u16) -> u16 {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_from.saturating_sub(n));
    assert!(hi > lo, "no ports below the ephemeral range ({ephemeral_from})");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    for attempt in 0..200u32 {
        let spread = u32::from(hi - lo);
        let base = lo + ((seed.wrapping_add(attempt.wrapping_mul(7919))).wrapping_mul(2_654_435_761) % spread) as u16;
        let held: Vec<TcpListener> = (0..n).filter_map(|i| TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no run of {n} free ports found");
}
