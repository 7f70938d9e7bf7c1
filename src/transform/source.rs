//! The consumer side of the transform: batches of raw messages from the consumer group, and
//! the positions that go with them.
//!
//! A batch during which the group rebalanced is dropped before anything is produced: its
//! partitions restart from their committed offsets, wherever they are now assigned.
//!
//! # Static membership
//! Each worker joins with `group.instance.id` = `collector-transform-<node id>`, unique per
//! worker and kept across restarts. A worker restarted after a crash rejoins as the member it
//! was and gets its partitions back at once; without it the group waits for the dead member's
//! session to expire (librdkafka's default: 45 s) before anyone reads them. The price is paid
//! by a member that never comes back, or is stopped on purpose (static members do not leave
//! the group on close): its partitions wait for `session.timeout.ms`
//! (`--transform-session-timeout-ms`), so that is kept short. A stuck worker thread is not
//! what the session detects (librdkafka heartbeats from its own thread); `max.poll.interval.ms`
//! does.
//!
//! A second live worker with the same instance id takes the membership over and the broker
//! fences the older one (`FENCED_INSTANCE_ID`, fatal for a librdkafka consumer). The same error
//! also comes spuriously after a broker restart (seen in `tests/outage.rs`; confluent-kafka-go
//! #494; on a three-broker cluster, after the group coordinator's broker is killed: see
//! `tests/cluster_faults.rs`), so a fence rebuilds the consumer and rejoins. A live rival
//! fences us again within a few heartbeats of each rejoin, the two in a loop: [`RIVAL_FENCES`]
//! fences in a row, each within [`RIVAL_QUICK`] of the one before, mean one, and the worker
//! stops with [`KafkaStageError::Fenced`], as it does when its producer is fenced. Broker
//! failures, even a rolling restart moving the group coordinator at every step, fence it
//! further apart (a broker's stop and start take longer), which never stops it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::status::TransformStatus;
use super::TransformOptions;
use crate::kafka::{KafkaSettings, KafkaStageError, Offsets};
use crate::node::NodeId;

/// Where the worker's raw messages come from: a seam so the worker loop can be tested without
/// Kafka.
pub trait Source {
    /// Up to `limit` (messages, or bytes of them), waiting at most `wait`; empty if the group
    /// rebalanced meanwhile.
    ///
    /// # Errors
    /// The source can never deliver again (the consumer failed fatally, e.g. fenced by another
    /// worker with the same instance id): the stage must stop.
    fn poll_batch(&mut self, limit: BatchLimit, wait: Duration) -> Result<Vec<OwnedMessage>, KafkaStageError>;
    /// The offsets after `batch`, with the group's metadata: what a transaction commits.
    fn offsets(&self, batch: &[OwnedMessage]) -> Offsets;
    /// Seeks back to the start of `batch`, so the next poll reads it again.
    fn rewind(&mut self, batch: &[OwnedMessage]);
    /// Seeks `batch`'s partitions to their committed offsets: after an uncertain commit.
    fn rewind_to_committed(&mut self, batch: &[OwnedMessage]);
    /// Commits the offsets after `batch` (at-least-once, after Kafka confirmed its rows).
    fn commit(&mut self, batch: &[OwnedMessage]);
}

/// How much one batch may hold: it ends at whichever limit is reached first (or when the
/// wait is over). The byte limit keeps a batch of large requests (many events each) from
/// growing one transaction, and the rows it produces, without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimit {
    /// Most raw messages.
    pub messages: usize,
    /// About this many bytes of raw payloads and keys at most (the message that crosses it
    /// is the batch's last).
    pub bytes: usize,
}

/// Notices rebalances, so a batch that straddles one is dropped; hands the consumer's
/// statistics (every [`super::status::CONSUMER_STATISTICS_INTERVAL`]) to the worker's status.
pub struct RebalanceWatch {
    happened: AtomicBool,
    status: Arc<TransformStatus>,
}

crate::kafka::logs_to_tracing!(RebalanceWatch, stats: report);

/// Takes a statistics report of the consumer: its connection state, and the lag of every
/// partition of the raw topic (a gauge each, and the status page's figures): the messages
/// between what this worker has read and the partition's last stable offset
/// (`consumer_lag_stored`; the committed offset librdkafka tracks does not see offsets
/// committed through a producer's transaction). 0 for partitions this worker does not own, so
/// that a sum over workers is each partition's lag.
fn report(watch: &RebalanceWatch, statistics: rdkafka::Statistics) {
    watch.status.consumer.reported(&statistics);
    let mut lags = BTreeMap::new();
    for topic in statistics.topics.values() {
        for (partition, stats) in &topic.partitions {
            // -1 is librdkafka's internal "unassigned" partition.
            if *partition >= 0 {
                let lag = stats.consumer_lag_stored.max(0);
                crate::telemetry::transform_lag(*partition, lag);
                lags.insert(*partition, lag);
            }
        }
    }
    watch.status.lag(lags);
}

impl ConsumerContext for RebalanceWatch {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.happened.store(true, Ordering::Release);
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = tpl.count(), "Transform partitions assigned."),
            Rebalance::Revoke(tpl) => info!(partitions = tpl.count(), "Transform partitions revoked."),
            Rebalance::Error(e) => warn!(error = %e, "Consumer group rebalance failed."),
        }
    }
}

/// The raw topic read as a member of the transform's consumer group, `read_committed`.
pub struct KafkaSource {
    consumer: BaseConsumer<RebalanceWatch>,
    /// To build the consumer again after a fence.
    config: ClientConfig,
    topic: String,
    /// `group.instance.id`, named when the broker fences it.
    instance_id: String,
    /// When the broker fenced this member lately: many fences soon after each other mean a rival.
    fences: Fences,
    /// Where the consumer reports (statistics, failures).
    status: Arc<TransformStatus>,
}

/// Fenced this many times in a row, each within [`RIVAL_QUICK`] of the one before: another
/// live worker uses our instance id.
pub const RIVAL_FENCES: usize = 3;
/// How soon a rival fences us again after we rejoin: its next heartbeat (at most 3 s apart)
/// after its own rejoin, which our rejoin provoked; a few seconds, with room for a slow machine.
pub const RIVAL_QUICK: Duration = Duration::from_secs(10);

/// The fences of this member that came quickly one after another.
#[derive(Debug, Default)]
struct Fences {
    last: Option<Instant>,
    quick_in_a_row: usize,
}

impl Fences {
    /// Notes a fence at `now` (the member rejoins at once); true if it makes [`RIVAL_FENCES`]
    /// in a row, each within [`RIVAL_QUICK`] of the one before.
    fn rival_after(&mut self, now: Instant) -> bool {
        let quick = self.last.is_some_and(|last| now.saturating_duration_since(last) < RIVAL_QUICK);
        self.quick_in_a_row = if quick { self.quick_in_a_row + 1 } else { 1 };
        self.last = Some(now);
        self.quick_in_a_row >= RIVAL_FENCES
    }
}

impl KafkaSource {
    /// Joins the group of `options` as the static member `collector-transform-<node>` and
    /// subscribes to the raw topic (from the earliest offset if the group is new); the consumer
    /// reports to `status`.
    ///
    /// # Errors
    /// [`KafkaStageError`] for an invalid configuration or a refused subscription.
    pub fn subscribe(
        kafka: &KafkaSettings,
        options: &TransformOptions,
        node: &NodeId,
        status: Arc<TransformStatus>,
    ) -> Result<Self, KafkaStageError> {
        // The worker's transactional.id is already unique per worker and kept across restarts.
        let instance_id = node.transform_transactional_id();
        let session_ms = options.session_timeout.as_millis() as u64;
        let session_timeout = session_ms.to_string();
        // Kafka's rule of thumb: at least three heartbeats per session, so one lost heartbeat
        // does not evict a live worker (librdkafka's default interval is 3 s).
        let heartbeat = (session_ms / 3).clamp(100, 3000).to_string();
        let statistics_ms = status.consumer.interval().as_millis().to_string();
        let config = kafka.client_config(&[
            ("group.id", &options.group_id),
            ("group.instance.id", &instance_id),
            ("session.timeout.ms", &session_timeout),
            ("heartbeat.interval.ms", &heartbeat),
            ("enable.auto.commit", "false"),
            ("statistics.interval.ms", &statistics_ms),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "false"),
        ]);
        let consumer = join(&config, &kafka.raw_topic, &status)?;
        Ok(KafkaSource {
            consumer,
            config,
            topic: kafka.raw_topic.clone(),
            instance_id,
            fences: Fences::default(),
            status,
        })
    }

    /// After a fatal consumer error: a fence rebuilds the consumer and rejoins, unless it is a
    /// rival's; anything else ends the stage.
    fn recover(&mut self, error: KafkaError) -> Result<(), KafkaStageError> {
        match self.consumer.client().fatal_error() {
            Some((RDKafkaErrorCode::FencedInstanceId, _)) => {
                if self.fences.rival_after(Instant::now()) {
                    return Err(KafkaStageError::Fenced(format!(
                        "fenced: another transform worker joined the consumer group as {} (the same node id); give each worker its own --node-id",
                        self.instance_id
                    )));
                }
                warn!(instance_id = %self.instance_id, "The group fenced this worker's membership (a broker restart, or another worker with this node id); rejoining. Fenced {RIVAL_FENCES} times in a row, each within {RIVAL_QUICK:?} of the one before, it stops.");
                self.consumer = join(&self.config, &self.topic, &self.status)?;
                Ok(())
            }
            Some((code, reason)) => {
                error!(%reason, "The transform's consumer failed fatally.");
                Err(KafkaStageError::Client(KafkaError::MessageConsumptionFatal(code)))
            }
            None => Err(KafkaStageError::Client(error)),
        }
    }
}

/// A consumer of `config` subscribed to `topic`, reporting to `status`.
fn join(
    config: &ClientConfig,
    topic: &str,
    status: &Arc<TransformStatus>,
) -> Result<BaseConsumer<RebalanceWatch>, KafkaStageError> {
    let watch = RebalanceWatch { happened: AtomicBool::new(false), status: status.clone() };
    let consumer: BaseConsumer<RebalanceWatch> =
        config.create_with_context(watch).map_err(|e| KafkaStageError::Config(e.to_string()))?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

impl Source for KafkaSource {
    fn poll_batch(&mut self, limit: BatchLimit, wait: Duration) -> Result<Vec<OwnedMessage>, KafkaStageError> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        let watch = self.consumer.context();
        watch.happened.store(false, Ordering::Release);
        let deadline = Instant::now() + wait;
        while batch.len() < limit.messages && bytes < limit.bytes {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left) {
                None => break,
                Some(Ok(m)) => {
                    bytes += m.payload_len() + m.key().map_or(0, <[u8]>::len);
                    batch.push(BorrowedMessage::detach(&m));
                }
                // This consumer is unusable for good; what it read is read again from the
                // committed offsets by the next one.
                Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                    self.recover(e)?;
                    return Ok(Vec::new());
                }
                Some(Err(e)) => {
                    warn!(error = %e, "Consuming from the raw topic failed.");
                    self.status.failed(&[&self.status.consumer], format!("consuming from the raw topic failed: {e}"));
                    break;
                }
            }
        }
        if watch.happened.load(Ordering::Acquire) && !batch.is_empty() {
            info!(messages = batch.len(), "The group rebalanced during a batch; dropping it to read it again.");
            // Partitions we kept (cooperative assignment) must be rewound too; revoked ones
            // restart from their committed offsets wherever they went.
            self.rewind(&batch);
            batch.clear();
        }
        Ok(batch)
    }

    fn offsets(&self, batch: &[OwnedMessage]) -> Offsets {
        Offsets { list: next_offsets(batch), group: self.consumer.group_metadata().map(std::sync::Arc::new) }
    }

    /// A partition no longer assigned is skipped: its new owner starts from the committed
    /// offset anyway.
    fn rewind(&mut self, batch: &[OwnedMessage]) {
        let firsts = offsets(batch, |entry, offset| *entry = (*entry).min(offset), i64::MAX);
        for elem in firsts.elements() {
            self.seek(elem.topic(), elem.partition(), elem.offset());
        }
    }

    /// `read_committed`, so an open transaction of ours is waited out; falls back to the batch
    /// start if the committed offsets cannot be read.
    fn rewind_to_committed(&mut self, batch: &[OwnedMessage]) {
        let mut tpl = TopicPartitionList::new();
        for elem in next_offsets(batch).elements() {
            tpl.add_partition(elem.topic(), elem.partition());
        }
        match self.consumer.committed_offsets(tpl, Duration::from_secs(30)) {
            Ok(committed) => {
                for elem in committed.elements() {
                    let to = match elem.offset() {
                        Offset::Offset(_) => elem.offset(),
                        _ => Offset::Beginning,
                    };
                    self.seek(elem.topic(), elem.partition(), to);
                }
            }
            Err(e) => {
                warn!(error = %e, "Could not read the committed offsets; rewinding to the batch start.");
                self.rewind(batch);
            }
        }
    }

    fn commit(&mut self, batch: &[OwnedMessage]) {
        // A failure here (the partition was revoked meanwhile) only means the batch is
        // transformed again by the partition's next owner.
        if let Err(e) = self.consumer.commit(&next_offsets(batch), CommitMode::Sync) {
            warn!(error = %e, "Committing consumer offsets failed; the batch may be transformed again.");
        }
    }
}

impl KafkaSource {
    fn seek(&self, topic: &str, partition: i32, to: Offset) {
        if let Err(e) = self.consumer.seek(topic, partition, to, Duration::from_secs(5)) {
            info!(topic, partition, error = %e, "Could not rewind a partition; it was probably reassigned.");
        }
    }
}

/// Per partition, the offset after the batch's last message: what to commit.
pub fn next_offsets(batch: &[OwnedMessage]) -> TopicPartitionList {
    offsets(batch, |entry, offset| *entry = (*entry).max(offset + 1), i64::MIN)
}

fn offsets(batch: &[OwnedMessage], fold: impl Fn(&mut i64, i64), init: i64) -> TopicPartitionList {
    let mut per: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        fold(per.entry((m.topic(), m.partition())).or_insert(init), m.offset());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in per {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).expect("a valid offset");
    }
    tpl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rival_fences_again_and_again_a_broker_failure_once() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        // A rolling restart moving the group coordinator at each of three steps, 20 s apart, and
        // more failures after it: the worker rejoins every time.
        let mut broker_failures = Fences::default();
        for secs in [0, 20, 40, 60, 75] {
            assert!(!broker_failures.rival_after(at(secs)), "fence at {secs} s");
        }
        // A rival rejoining every few seconds: the third quick fence in a row stops us.
        let mut rival = Fences::default();
        assert!(!rival.rival_after(at(100)));
        assert!(!rival.rival_after(at(104)));
        assert!(rival.rival_after(at(108)));
        // A slow fence in between starts the count again.
        let mut mixed = Fences::default();
        for secs in [0, 4, 30, 34] {
            assert!(!mixed.rival_after(at(secs)), "fence at {secs} s");
        }
        assert!(mixed.rival_after(at(38)));
    }
}
