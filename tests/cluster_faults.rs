//! Broker faults on a three-broker Kafka cluster, for real: `scripts/kafka-cluster.sh` on free
//! ports (through `common::cluster`), one cluster for the whole file (a start costs ~15 s, and
//! three brokers are all a 2-core machine takes), and three faults one after another, each with
//! its own topics and its own `collector run` (own WAL, own node id), so each fault's figures
//! stand alone:
//!
//! 1. the leader of the raw topic's busiest partition killed with `kill -9`, then started again;
//! 2. a rolling restart: each broker in turn stopped cleanly, started again, and every replica
//!    back in sync before the next one, as an operator does it;
//! 3. the broker coordinating the flusher's transactions killed with `kill -9`, then started again.
//!
//! Each runs under continuous load (tracker-like clients) with an independent `read_committed`
//! reader, a kcat that reads the rows topic through the whole phase. Each proves: ingest answered
//! every request `200` at its first attempt, also while the broker was away; every acknowledged
//! event is in the rows topic exactly once, for a fresh reader and for the one that read through
//! the fault; the cluster is back to full ISR before the next phase. Each reports, never asserts
//! (the machine is shared, times are noise), how long after the fault rows flowed again end to
//! end and the longest time from an acknowledgement to its row.

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster::{transaction_state_partition, Cluster};
use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Moderate load: the machine's two cores also run three brokers and the collector.
const LOAD: LoadShape = LoadShape { clients: 4, pace: Duration::from_millis(5), pad: 0 };
/// Load with rows flowing before the first fault of a phase.
const WARM_UP: Duration = Duration::from_secs(5);
/// How long a killed broker stays down: well past `broker.session.timeout.ms` (9 s), after
/// which the controller fences it and moves its leaderships.
const KILLED_FOR: Duration = Duration::from_secs(20);
/// How long each broker of the rolling restart stays down.
const STOPPED_FOR: Duration = Duration::from_secs(5);
/// How long a restarted broker's replicas may take to catch up.
const SYNC_PATIENCE: Duration = Duration::from_secs(180);
/// How long delivery may take once the load stops.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(180);
/// The collector's positions topic (its default name): one for the cluster, created by the first
/// phase's flusher.
const POSITIONS_TOPIC: &str = "collect-wal-positions";
/// Kafka's own topics, replicated three times: an operator waits for them too.
const INTERNAL_TOPICS: [&str; 2] = ["__consumer_offsets", "__transaction_state"];

#[test]
fn transactional_ids_map_to_the_partitions_kafka_assigns_them() {
    // Checked against a live coordinator and Java: "collector-flush-a".hashCode() is -995401064,
    // "collector-flush-vm-408398a5".hashCode() is -795644393; four partitions.
    assert_eq!(transaction_state_partition("collector-flush-a"), 0);
    assert_eq!(transaction_state_partition("collector-flush-vm-408398a5"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_arrives_once_through_a_killed_leader_a_rolling_restart_and_a_killed_coordinator() {
    let began = Instant::now();
    let cluster = blocking(Cluster::start);
    leader_of_the_busiest_partition_killed(&cluster).await;
    rolling_restart(&cluster).await;
    transaction_coordinator_killed(&cluster).await;
    eprintln!("cluster faults: three phases (and the cluster's start) in {:.0} s", began.elapsed().as_secs_f64());
}

async fn leader_of_the_busiest_partition_killed(cluster: &Cluster) {
    let phase = Phase::start(cluster, "leader").await;
    let busiest = blocking(|| cluster.busiest_partition(&phase.topics.raw));
    let what = format!("leader of busiest partition killed (broker {})", busiest.leader);
    eprintln!("cluster fault \"{what}\": raw partition {} is the busiest", busiest.id);
    let fault = phase.fault(cluster, busiest.leader, Blow::Kill, KILLED_FOR).await;
    phase.finish(cluster, &what, &[fault]).await;
}

async fn rolling_restart(cluster: &Cluster) {
    let phase = Phase::start(cluster, "rolling").await;
    let mut faults = Vec::new();
    for broker in 1..=3 {
        faults.push(phase.fault(cluster, broker, Blow::Stop, STOPPED_FOR).await);
    }
    phase.finish(cluster, "rolling restart (brokers 1, 2, 3 stopped cleanly in turn)", &faults).await;
}

async fn transaction_coordinator_killed(cluster: &Cluster) {
    let phase = Phase::start(cluster, "coordinator").await;
    let flush_id = format!("collector-flush-{}", phase.node);
    let transform_id = format!("collector-transform-{}", phase.node);
    let (coordinator, transform_coordinator) =
        blocking(|| (cluster.transaction_coordinator(&flush_id), cluster.transaction_coordinator(&transform_id)));
    let what = format!("flusher's transaction coordinator killed (broker {coordinator})");
    eprintln!(
        "cluster fault \"{what}\": it coordinates {flush_id} (transaction state partition {}); the transform's \
         {transform_id} is coordinated by broker {transform_coordinator}",
        transaction_state_partition(&flush_id)
    );
    let fault = phase.fault(cluster, coordinator, Blow::Kill, KILLED_FOR).await;
    phase.finish(cluster, &what, &[fault]).await;
}

/// Runs blocking work (scripts, metadata requests, kcat) without starving the load's tasks of
/// this runtime's two worker threads.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// How a broker is taken away.
#[derive(Clone, Copy)]
enum Blow {
    /// SIGKILL: a crash; the controller notices after the session timeout.
    Kill,
    /// SIGTERM: a clean shutdown; the broker hands its leaderships over first.
    Stop,
}

/// A broker taken away and brought back during a phase.
struct Fault {
    broker: i32,
    blow: Blow,
    /// When it was taken away.
    at: Instant,
    /// When its start began.
    back_at: Instant,
    /// Requests acknowledged while it was away.
    acked_while_away: usize,
}

/// One fault's world: its own topics, its own `collector run`, its own load and reader. Fields
/// drop in order, so a failing phase stops its reader and collector before deleting its topics.
struct Phase {
    /// The collector's `--node-id`, so the test knows its transactional ids.
    node: String,
    clock: AckClock,
    reader: RowReader,
    stop: Arc<AtomicBool>,
    counters: Arc<LoadCounters>,
    load: Vec<tokio::task::JoinHandle<LoadOutcome>>,
    collector: Collector,
    topics: Topics,
    _wal: tempfile::TempDir,
}

impl Phase {
    /// Starts a collector on fresh topics replicated three times (min ISR 2), the reader on its rows topic,
    /// then the load; returns once rows flow and the load has run [`WARM_UP`].
    async fn start(cluster: &Cluster, name: &str) -> Phase {
        let topics = Topics::new(&cluster.brokers());
        let node = unique(name);
        let wal = tempfile::tempdir().unwrap();
        let mut args = topics.args("run");
        // As in production: a write is confirmed once two of the three replicas have it, so any
        // one broker may be away.
        let replication = ["--topic-replication", "3", "--topic-min-insync-replicas", "2"];
        args.extend(["--node-id", &node].into_iter().chain(replication).map(String::from));
        let collector = blocking(|| Collector::start("run", wal.path(), 0, &args));
        // The reader starts before the load, so every row's arrival is seen when it happens.
        let mut reader = blocking(|| RowReader::start(&topics.brokers, &topics.transformed));
        let (stop, counters) = (Arc::new(AtomicBool::new(false)), Arc::new(LoadCounters::default()));
        let load = start_load(collector.port(), LOAD, stop.clone(), counters.clone());
        let clock = AckClock::start(counters.clone());
        // A fresh transactional id's coordinator takes seconds to load: the fault should meet a
        // pipeline that is already delivering.
        let deadline = Instant::now() + Duration::from_secs(120);
        while reader.arrivals.lock().unwrap().is_empty() {
            assert!(reader.running(), "{name}: the reader (kcat) exited; its complaints are above");
            assert!(Instant::now() < deadline, "{name}: no row arrived within 120 s of the load's start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(WARM_UP).await;
        Phase { node, clock, reader, stop, counters, load, collector, topics, _wal: wal }
    }

    /// The topics a restarted broker must be back in sync for: the phase's and Kafka's own.
    fn replicated_topics(&self) -> Vec<&str> {
        let mut topics = vec![&*self.topics.raw, &*self.topics.transformed, &*self.topics.dead_letter, POSITIONS_TOPIC];
        topics.extend(INTERNAL_TOPICS);
        topics
    }

    /// What `broker` leads now, e.g. `raw [0, 3], rows [1], transaction state [2], 17 of 50
    /// consumer offsets partitions`.
    fn led_by(&self, cluster: &Cluster, broker: i32) -> String {
        let led = |topic: &str| -> Vec<i32> {
            cluster.partitions(topic).into_iter().filter(|p| p.leader == broker).map(|p| p.id).collect()
        };
        let offsets = cluster.partitions(INTERNAL_TOPICS[0]);
        let offsets_led = offsets.iter().filter(|p| p.leader == broker).count();
        format!(
            "raw {:?}, rows {:?}, transaction state {:?}, {offsets_led} of {} consumer offsets partitions",
            led(&self.topics.raw),
            led(&self.topics.transformed),
            led(INTERNAL_TOPICS[1]),
            offsets.len()
        )
    }

    /// Takes `broker` away for `away` under load, brings it back, and waits until every replica
    /// is in sync again. Ingest must keep acknowledging meanwhile.
    async fn fault(&self, cluster: &Cluster, broker: i32, blow: Blow, away: Duration) -> Fault {
        eprintln!("cluster fault: broker {broker} leads {}", blocking(|| self.led_by(cluster, broker)));
        let acked_before = self.counters.acked.load(Ordering::Relaxed);
        let at = Instant::now();
        blocking(|| match blow {
            Blow::Kill => cluster.kill(broker),
            Blow::Stop => cluster.stop(broker),
        });
        tokio::time::sleep(away).await;
        let acked_while_away = self.counters.acked.load(Ordering::Relaxed) - acked_before;
        assert!(acked_while_away > 0, "ingest stopped acknowledging while broker {broker} was away");
        let back_at = Instant::now();
        blocking(|| {
            cluster.restart(broker);
            cluster.wait_in_sync(&self.replicated_topics(), SYNC_PATIENCE);
        });
        Fault { broker, blow, at, back_at, acked_while_away }
    }

    /// Stops the load; asserts every request was answered 200 at its first attempt and every
    /// acknowledged event arrived exactly once, for a fresh reader and for the one that read
    /// through the faults; prints the phase's summary line; checks the cluster is back to full
    /// ISR.
    async fn finish(mut self, cluster: &Cluster, what: &str, faults: &[Fault]) {
        self.stop.store(true, Ordering::Relaxed);
        let outcome = finish_load(std::mem::take(&mut self.load)).await;
        let refused = self.counters.unavailable.load(Ordering::Relaxed);
        assert_eq!(refused, 0, "{what}: ingest answered 503 {refused} times");
        assert_eq!(outcome.retries, 0, "{what}: {} requests had to be sent again", outcome.retries);
        let acked = outcome.acked;
        let brokers = cluster.brokers();
        blocking(|| assert_exactly_once(&brokers, &self.topics.transformed, &acked, DELIVERY_PATIENCE, what));

        // The reader that lived through the faults must have every row once as well.
        let deadline = Instant::now() + DELIVERY_PATIENCE;
        let arrivals = loop {
            let arrivals = self.reader.arrivals.lock().unwrap().clone();
            if acked.iter().all(|id| arrivals.contains_key(id)) || Instant::now() > deadline {
                break arrivals;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(self.reader.running(), "{what}: the long-running reader exited during the phase");
        assert!(self.collector.child.try_wait().unwrap().is_none(), "{what}: the collector exited");
        let lost = acked.iter().filter(|id| !arrivals.contains_key(*id)).count();
        let duplicated = arrivals.values().filter(|a| a.count > 1).count();
        assert_eq!((lost, duplicated), (0, 0), "{what}: the reader that read through the faults saw them");

        let acked_at = self.clock.snapshot();
        let latency = |id: &String| arrivals[id].first.saturating_duration_since(acked_at[id]);
        let longest = acked.iter().filter(|id| acked_at.contains_key(*id)).map(latency).max().unwrap_or_default();
        let resumed: Vec<String> = faults
            .iter()
            .map(|f| {
                // The first row of a request acknowledged after the fault (a tick later, so surely
                // after it): rows flow again.
                let first = acked
                    .iter()
                    .filter(|id| acked_at.get(*id).is_some_and(|t| *t > f.at + AckClock::TICK))
                    .map(|id| arrivals[id].first)
                    .min()
                    .expect("requests were acknowledged after the fault");
                let blow = match f.blow {
                    Blow::Kill => "kill",
                    Blow::Stop => "stop",
                };
                let when = if first < f.back_at { "still away" } else { "back" };
                format!(
                    "{:.1} s after the {blow} of broker {} (then {when}; {} acknowledged while it was away)",
                    first.saturating_duration_since(f.at).as_secs_f64(),
                    f.broker,
                    f.acked_while_away
                )
            })
            .collect();
        eprintln!(
            "cluster fault \"{what}\": acknowledged {}, lost {lost}, duplicated {duplicated}; rows resumed {}; \
             longest ack-to-row {:.1} s",
            acked.len(),
            resumed.join(", "),
            longest.as_secs_f64()
        );

        drop(self);
        blocking(|| cluster.wait_in_sync(&[POSITIONS_TOPIC, INTERNAL_TOPICS[0], INTERNAL_TOPICS[1]], SYNC_PATIENCE));
    }
}

/// When each request of a load was acknowledged, to within [`AckClock::TICK`]: a thread watching
/// the load's per-client counts. Each client's ids are `c{client}-{i}`, acknowledged in order,
/// so a count says which ids it covers. The instant recorded is the tick that saw the count grow:
/// at most one tick after the acknowledgement, never before it.
struct AckClock {
    acked_at: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AckClock {
    const TICK: Duration = Duration::from_millis(10);

    fn start(counters: Arc<LoadCounters>) -> AckClock {
        let (acked_at, stop) = (Arc::new(Mutex::new(HashMap::new())), Arc::new(AtomicBool::new(false)));
        let thread = std::thread::spawn({
            let (acked_at, stop) = (acked_at.clone(), stop.clone());
            move || {
                let mut seen: HashMap<usize, usize> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let counts = counters.acked_per_client.lock().unwrap().clone();
                    let now = Instant::now();
                    let mut acked_at = acked_at.lock().unwrap();
                    for (client, count) in counts {
                        let from = seen.insert(client, count).unwrap_or(0);
                        for i in from..count {
                            acked_at.insert(format!("c{client}-{i}"), now);
                        }
                    }
                    drop(acked_at);
                    std::thread::sleep(Self::TICK);
                }
            }
        });
        AckClock { acked_at, stop, thread: Some(thread) }
    }

    fn snapshot(&self) -> HashMap<String, Instant> {
        self.acked_at.lock().unwrap().clone()
    }
}

impl Drop for AckClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A row's event as the long-running reader saw it.
#[derive(Clone, Copy)]
struct Arrival {
    first: Instant,
    count: usize,
}

/// An independent `read_committed` reader that lives through the faults: kcat consuming the rows
/// topic from the beginning without end (`-u`: each row is written out as it arrives), and a
/// thread noting when each event id (a row's `event_type`) first arrived and how often.
struct RowReader {
    child: Child,
    arrivals: Arc<Mutex<HashMap<String, Arrival>>>,
    threads: Vec<JoinHandle<()>>,
}

impl RowReader {
    /// Waits until `topic` exists with a leader for every partition that answers for it (the
    /// collector creates it), then starts kcat on it.
    fn start(brokers: &str, topic: &str) -> RowReader {
        wait_for_topic(brokers, topic, Duration::from_secs(60));
        let mut child = Command::new("kcat")
            .args(["-b", brokers, "-C", "-t", topic, "-o", "beginning", "-u", "-q", "-f", "%s\n"])
            .args(["-X", "isolation.level=read_committed"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kcat is needed by the cluster fault tests (apt-get install kcat)");
        let arrivals = Arc::new(Mutex::new(HashMap::<String, Arrival>::new()));
        let rows = std::io::BufReader::new(child.stdout.take().unwrap());
        let noted = arrivals.clone();
        let rows = std::thread::spawn(move || {
            for line in rows.lines().map_while(Result::ok).filter(|l| !l.is_empty()) {
                let now = Instant::now();
                let row: serde_json::Value = match serde_json::from_str(&line) {
                    Ok(row) => row,
                    Err(e) => {
                        eprintln!("[reader] not a row ({e}): {line}");
                        continue;
                    }
                };
                let Some(id) = row["event_type"].as_str() else {
                    eprintln!("[reader] a row without event_type: {line}");
                    continue;
                };
                noted.lock().unwrap().entry(id.to_string()).or_insert(Arrival { first: now, count: 0 }).count += 1;
            }
        });
        // kcat's complaints while a broker is away, for the test log.
        let complaints = std::io::BufReader::new(child.stderr.take().unwrap());
        let complaints = std::thread::spawn(move || {
            for line in complaints.lines().map_while(Result::ok) {
                eprintln!("[reader] {line}");
            }
        });
        RowReader { child, arrivals, threads: vec![rows, complaints] }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for RowReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Waits (up to `patience`) until `topic` exists and each of its partitions has a leader.
fn wait_for_topic(brokers: &str, topic: &str, patience: Duration) {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = metadata.topics().first().filter(|t| t.error().is_none()) {
                // Led, and each leader already knows it leads: a broker applies the metadata
                // log on its own, and kcat gives up at once when a leader answers its offset
                // query with "Unknown topic or partition" (seen on a fresh cluster in CI).
                let led = !t.partitions().is_empty() && t.partitions().iter().all(|p| p.leader() >= 0);
                if led
                    && t.partitions()
                        .iter()
                        .all(|p| consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(5)).is_ok())
                {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "topic {topic} did not appear within {patience:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
