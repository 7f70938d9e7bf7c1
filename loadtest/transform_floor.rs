//! The transform scenario's floor and stopwatch: a plain rdkafka consume + produce of the raw
//! topic, with the transform worker's delivery semantics but no transform, and the tools that
//! time both the same way. Used by `loadtest/bench.sh`.
//!
//! ```text
//! transform_floor scan --brokers B --topic RAW --create OUT1,OUT2 --json ends.json
//! transform_floor copy --brokers B --from RAW --to OUT --group G --node N
//! transform_floor wait --brokers B --ends ends.json --group G --rows-topic OUT \
//!     --started-at-ms T --label L --json result.json [--expect-rows N] [--timeout-secs S]
//! ```
//!
//! - `scan` reads RAW to its end (`read_committed`) once, before anything is timed, and notes
//!   how many messages and bytes it holds and, per partition, the offset after its last
//!   message; it also creates the output topics (as many partitions as RAW), so neither
//!   contender pays for topic creation.
//! - `copy` is the floor: a consumer-group member (`read_committed`, static membership, no
//!   auto-commit, from the earliest offset), batches of up to 10,000 messages, 8 MiB or 100 ms, each
//!   batch one transaction of a transactional, idempotent producer (`acks=all`, lz4,
//!   `linger.ms=20`, `transaction.timeout.ms` = `message.timeout.ms` = 60 s) holding the copies
//!   and the consumer offsets (`send_offsets_to_transaction` with the group's metadata): what
//!   `collector transform` does with its defaults, with each message copied unchanged (key,
//!   value, headers) instead of transformed. It runs until it is killed.
//! - `wait` is the stopwatch for either: it polls the group's committed offsets (stable ones:
//!   a pending transaction's offsets are not read) every 20 ms until every partition of RAW is
//!   committed to its end — which, offsets being committed in the transaction of the batch's
//!   outputs, means every output is committed too — then counts the output topic
//!   (`read_committed`) and writes messages/s from `--started-at-ms` (when the contender was
//!   started) to that moment.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The transform worker's defaults (`collector transform --help`).
const BATCH_MESSAGES: usize = 10_000;
const BATCH_BYTES: usize = 8 << 20;
const BATCH_WAIT: Duration = Duration::from_millis(100);
const LINGER_MS: &str = "20";
const TRANSACTION_MS: &str = "60000";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().ok_or("a command: scan, copy or wait")?;
    let mut flags: HashMap<String, String> = HashMap::new();
    while let Some(flag) = args.next() {
        let name = flag.strip_prefix("--").ok_or_else(|| format!("unexpected argument {flag}"))?;
        flags.insert(name.to_string(), args.next().ok_or_else(|| format!("{flag} needs a value"))?);
    }
    let flag = |name: &str| flags.get(name).cloned().ok_or_else(|| format!("--{name} is required"));
    let brokers = flags.get("brokers").cloned().unwrap_or_else(|| "127.0.0.1:9092".into());
    match command.as_str() {
        "scan" => scan(&brokers, &flag("topic")?, flags.get("create"), &flag("json")?),
        "copy" => copy(&brokers, &flag("from")?, &flag("to")?, &flag("group")?, &flag("node")?),
        "wait" => wait(&brokers, &flags, flag),
        other => Err(format!("unknown command {other}").into()),
    }
}

fn config(brokers: &str, pairs: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in pairs {
        config.set(*k, *v);
    }
    config
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What a topic holds, read to its end.
struct Contents {
    messages: u64,
    /// Payload bytes.
    bytes: u64,
    /// Per partition, the offset after its last message.
    ends: Vec<(i32, i64)>,
}

/// Reads `topic` to its end with a `read_committed` consumer that joins no group.
fn read_to_end(brokers: &str, topic: &str) -> Result<Contents> {
    let consumer: BaseConsumer = config(
        brokers,
        &[
            ("group.id", "transform-floor-scan"),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
        ],
    )
    .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), CALL_TIMEOUT)?;
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} has no partitions (does it exist?)").into());
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut ends: HashMap<i32, i64> = partitions.iter().map(|&p| (p, 0)).collect();
    let mut at_eof = 0;
    let (mut messages, mut bytes) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    while at_eof < partitions.len() {
        if Instant::now() > deadline {
            return Err(format!("reading {topic} to its end took more than 10 minutes").into());
        }
        match consumer.poll(Duration::from_secs(1)) {
            None => {}
            Some(Ok(m)) => {
                messages += 1;
                bytes += m.payload_len() as u64;
                ends.insert(m.partition(), m.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => at_eof += 1,
            Some(Err(e)) => return Err(e.into()),
        }
    }
    let mut ends: Vec<(i32, i64)> = ends.into_iter().collect();
    ends.sort_unstable();
    Ok(Contents { messages, bytes, ends })
}

fn scan(brokers: &str, topic: &str, create: Option<&String>, out: &str) -> Result<()> {
    let Contents { messages, bytes, ends } = read_to_end(brokers, topic)?;
    if let Some(create) = create {
        let admin: AdminClient<DefaultClientContext> = config(brokers, &[]).create()?;
        let topics: Vec<NewTopic<'_>> =
            create.split(',').map(|t| NewTopic::new(t, ends.len() as i32, TopicReplication::Fixed(1))).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
        for result in runtime.block_on(admin.create_topics(&topics, &options))? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(format!("creating {t}: {code}").into()),
            }
        }
    }
    eprintln!("transform_floor: {topic} holds {messages} messages ({bytes} bytes) in {} partitions", ends.len());
    let doc = json!({"topic": topic, "messages": messages, "bytes": bytes, "ends": ends});
    std::fs::write(out, serde_json::to_vec_pretty(&doc)?)?;
    Ok(())
}

fn copy(brokers: &str, from: &str, to: &str, group: &str, node: &str) -> Result<()> {
    let instance = format!("transform-floor-{node}");
    let consumer: BaseConsumer = config(
        brokers,
        &[
            ("group.id", group),
            ("group.instance.id", &instance),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "3000"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "false"),
        ],
    )
    .create()?;
    let producer: BaseProducer = config(
        brokers,
        &[
            ("transactional.id", &instance),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", LINGER_MS),
            ("transaction.timeout.ms", TRANSACTION_MS),
            ("message.timeout.ms", TRANSACTION_MS),
        ],
    )
    .create()?;
    // As the worker does: the producer first, then join the group.
    producer.init_transactions(CALL_TIMEOUT)?;
    consumer.subscribe(&[from])?;
    loop {
        let batch = poll_batch(&consumer)?;
        if batch.is_empty() {
            continue;
        }
        producer.begin_transaction()?;
        for m in &batch {
            let mut record = BaseRecord::<[u8], [u8]>::to(to);
            if let Some(key) = m.key() {
                record = record.key(key);
            }
            if let Some(payload) = m.payload() {
                record = record.payload(payload);
            }
            if let Some(headers) = m.headers() {
                record = record.headers(headers.clone());
            }
            send(&producer, record)?;
        }
        let group_metadata = consumer.group_metadata().ok_or("no consumer group metadata")?;
        producer.send_offsets_to_transaction(&next_offsets(&batch)?, &group_metadata, CALL_TIMEOUT)?;
        // Delivery reports served as they come, as the worker does: rust-rdkafka's commit
        // flushes in 100 ms polls that run to their end (see the collector's outbox).
        while producer.in_flight_count() > 0 {
            producer.poll(Duration::from_millis(1));
        }
        producer.commit_transaction(CALL_TIMEOUT)?;
    }
}

/// Up to [`BATCH_MESSAGES`] messages or [`BATCH_BYTES`] within [`BATCH_WAIT`], as the worker's
/// source polls.
fn poll_batch(consumer: &BaseConsumer) -> Result<Vec<OwnedMessage>> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let deadline = Instant::now() + BATCH_WAIT;
    while batch.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match consumer.poll(left) {
            None => break,
            Some(Ok(m)) => {
                bytes += m.payload_len() + m.key().map_or(0, <[u8]>::len);
                batch.push(BorrowedMessage::detach(&m));
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
    Ok(batch)
}

/// Enqueues one message, serving delivery reports while librdkafka's queue is full.
fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                producer.poll(Duration::from_millis(50));
                record = returned;
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Per partition, the offset after the batch's last message.
fn next_offsets(batch: &[OwnedMessage]) -> Result<TopicPartitionList> {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let entry = next.entry((m.topic(), m.partition())).or_insert(0);
        *entry = (*entry).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

fn wait(
    brokers: &str,
    flags: &HashMap<String, String>,
    flag: impl Fn(&str) -> std::result::Result<String, String>,
) -> Result<()> {
    let ends: serde_json::Value = serde_json::from_slice(&std::fs::read(flag("ends")?)?)?;
    let raw = ends["topic"].as_str().ok_or("ends: no topic")?.to_string();
    let messages = ends["messages"].as_u64().ok_or("ends: no messages")?;
    let bytes = ends["bytes"].as_u64().unwrap_or(0);
    let targets: Vec<(i32, i64)> = serde_json::from_value(ends["ends"].clone())?;
    let group = flag("group")?;
    let started_at_ms: u64 = flag("started-at-ms")?.parse()?;
    let timeout = Duration::from_secs(flags.get("timeout-secs").map_or(Ok(600), |s| s.parse())?);
    // Never subscribes: it only reads the group's committed offsets (stable ones, with
    // read_committed), so it does not join the group it watches.
    let watcher: BaseConsumer<DefaultConsumerContext> = config(
        brokers,
        &[("group.id", &group), ("enable.auto.commit", "false"), ("isolation.level", "read_committed")],
    )
    .create()?;
    let mut tpl = TopicPartitionList::new();
    for (p, _) in &targets {
        tpl.add_partition(&raw, *p);
    }
    let begun = Instant::now();
    let done_at_ms = loop {
        if begun.elapsed() > timeout {
            return Err(format!("group {group} did not commit {raw} to its end within {timeout:?}").into());
        }
        if let Ok(committed) = watcher.committed_offsets(tpl.clone(), CALL_TIMEOUT) {
            let reached = targets.iter().all(|(p, end)| match committed.find_partition(&raw, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o >= *end,
                _ => *end == 0,
            });
            if reached {
                break now_ms();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed_s = done_at_ms.saturating_sub(started_at_ms) as f64 / 1000.0;
    let rows_topic = flag("rows-topic")?;
    let rows = read_to_end(brokers, &rows_topic)?.messages;
    let label = flags.get("label").cloned().unwrap_or_else(|| group.clone());
    let doc = json!({
        "kind": "pipe",
        "label": label,
        "raw_topic": raw,
        "rows_topic": rows_topic,
        "messages": messages,
        "rows": rows,
        "elapsed_s": elapsed_s,
        "msgs_per_s": messages as f64 / elapsed_s.max(1e-9),
        "rows_per_s": rows as f64 / elapsed_s.max(1e-9),
        "mb_per_s": bytes as f64 / elapsed_s.max(1e-9) / 1e6,
    });
    eprintln!(
        "transform_floor: {label}: {messages} raw messages → {rows} in {rows_topic} in {elapsed_s:.2} s: {:.0} messages/s",
        messages as f64 / elapsed_s.max(1e-9)
    );
    std::fs::write(flag("json")?, serde_json::to_vec_pretty(&doc)?)?;
    if let Some(expected) = flags.get("expect-rows") {
        let expected: u64 = expected.parse()?;
        if rows != expected {
            return Err(format!("{rows_topic} holds {rows} messages, not the {expected} expected").into());
        }
    }
    Ok(())
}
