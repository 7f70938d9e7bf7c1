//! The flusher loop: read durable WAL records, put them into Kafka through the outbox,
//! acknowledge what Kafka has.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::position::{Committed, KafkaPositions, PositionStore};
use super::status::FlushStatus;
use crate::kafka::outbox::{self, Outcome};
use crate::kafka::ProducerOptions;
use crate::kafka::{self, headers, Guarantee, KafkaSettings, KafkaStageError, OutMessage, Outbox, OutboxError};
use crate::node::NodeId;
use crate::retry::{Backoff, Stop};
use crate::wal::{record, LogStore, ReadRecord, WalError};

/// Settings of the flusher.
#[derive(Debug, Clone)]
pub struct FlushOptions {
    /// Most records per Kafka batch (and per transaction).
    pub batch_records: usize,
    /// About this many payload bytes per batch at most.
    pub batch_bytes: usize,
    /// The raw topic's producer.
    pub producer: ProducerOptions,
    /// Upper bound of the retry backoff while Kafka is unreachable.
    pub max_backoff: Duration,
    /// A batch smaller than `batch_records` waits until this long after the previous batch
    /// began (more records join it meanwhile). Each transaction costs the collector and the
    /// broker a fixed price on the cores ingest shares: committing every few milliseconds
    /// under load took a quarter to a third of the pipeline's ingest rate (loadtest/PROFILE.md, "Fourth
    /// step"). Zero: send as soon as a record is durable (`--ack kafka`'s latency).
    pub interval: Duration,
}

/// Drains a WAL into Kafka on its own thread.
pub struct Flusher {
    pub log: Arc<dyn LogStore>,
    /// Highest durable sequence number; records above it are never sent.
    pub durable: watch::Receiver<u64>,
    pub kafka: KafkaSettings,
    pub options: FlushOptions,
    pub status: Arc<FlushStatus>,
    /// Names the producer, the position group and the `collector-node` header.
    pub node: NodeId,
    /// This WAL's identity, committed with the position: a position another WAL committed
    /// under the same node id stops the flusher instead of being acknowledged.
    pub wal_id: String,
}

impl Flusher {
    /// Starts the flusher thread. Once `stop` carries a deadline it returns when the WAL is
    /// fully delivered or the deadline passed, whichever comes first.
    ///
    /// # Errors
    /// Only permanent errors end the thread early: an invalid producer configuration, or being
    /// fenced by another process with the same node id.
    pub fn spawn(self, runtime: Handle, stop: Stop) -> JoinHandle<Result<(), KafkaStageError>> {
        std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || self.run(runtime, stop))
            .expect("spawning the flusher thread")
    }

    fn run(self, runtime: Handle, stop: Stop) -> Result<(), KafkaStageError> {
        let mut backoff = Backoff::new(self.options.max_backoff);
        let mut topics = vec![self.kafka.raw_topic.as_str()];
        let positions = match self.kafka.guarantee {
            Guarantee::ExactlyOnce => {
                topics.push(self.kafka.positions_topic.as_str());
                Some(KafkaPositions::new(&self.kafka, &self.node, &self.wal_id, self.options.producer.txn.operation)?)
            }
            Guarantee::AtLeastOnce => None,
        };
        // Topics first; without them every send fails.
        let created = kafka::ensure_topics_retrying(&self.kafka, &topics, &runtime, &stop, &mut backoff, |e| {
            if e.is_refusal() {
                self.status.refused(e.to_string());
            } else {
                report_failure(&self.status, e.to_string());
            }
            warn!(error = %e, "Cannot create the topics yet; the WAL keeps the data meanwhile.");
        })?;
        if !created {
            warn!("Drain deadline reached before Kafka was reachable; undelivered records stay in the WAL.");
            return Ok(());
        }
        let transactional_id = self.node.flush_transactional_id();
        let link = self.status.link.clone();
        let mut outbox =
            outbox::open(&self.kafka, self.kafka.guarantee, transactional_id, &self.options.producer, link);
        FlushLoop {
            flusher: &self,
            outbox: outbox.as_mut(),
            positions: positions.as_ref().map(|p| p as &dyn PositionStore),
            runtime: &runtime,
            stop: &stop,
            backoff,
            refusals: HashMap::new(),
        }
        .run()
    }
}

/// The loop proper, over any outbox and position store (unit tests use fakes).
pub(super) struct FlushLoop<'a> {
    pub flusher: &'a Flusher,
    pub outbox: &'a mut dyn Outbox,
    /// Exactly-once: where the committed position is read from and committed to.
    pub positions: Option<&'a dyn PositionStore>,
    pub runtime: &'a Handle,
    pub stop: &'a Stop,
    pub backoff: Backoff,
    /// How often Kafka refused each record for what it is (too large for the topic, say):
    /// after [`REFUSALS_BEFORE_SET_ASIDE`] the record is set aside, never retried forever.
    pub refusals: HashMap<u64, u32>,
}

/// Refusals of one record, for what it is, before it is set aside in the WAL's quarantine.
const REFUSALS_BEFORE_SET_ASIDE: u32 = 3;
/// Failed reads of a batch after which the flusher reads its first record alone, to tell one
/// unreadable record (set aside) from an unreadable WAL (retried, then stopped).
const READ_FAILURES_BEFORE_ISOLATING: u32 = 3;
/// Failed reads of a batch (and of its first record alone, since the third) after which that
/// record is set aside, if the records after it can be read.
const READ_FAILURES_BEFORE_SET_ASIDE: u32 = 6;
/// Failed WAL reads in a row after which the flusher stops (and the process exits, loudly)
/// instead of retrying a storage fault forever.
const READ_FAILURES_BEFORE_STOP: u32 = 10;

impl FlushLoop<'_> {
    pub fn run(mut self) -> Result<(), KafkaStageError> {
        let Some(mut next) = self.resume()? else {
            warn!("Drain deadline reached before Kafka was reachable; undelivered records stay in the WAL.");
            return Ok(());
        };
        let f = self.flusher;
        f.status.confirmed_through(next - 1);
        let mut durable = f.durable.clone();
        let mut read_failures = 0;
        // When the batch in hand began: the next small one waits for the interval from here.
        let mut began = Instant::now().checked_sub(f.options.interval).unwrap_or_else(Instant::now);
        info!(next_seq = next, guarantee = ?f.kafka.guarantee, "Flusher started.");
        loop {
            let upto = *durable.borrow_and_update();
            if next > upto {
                if self.stop.requested() {
                    info!(delivered_through = next - 1, "The WAL is fully delivered; flusher stopping.");
                    return Ok(());
                }
                self.wait_for_records(&mut durable);
                continue;
            }
            if self.stop.expired() {
                warn!(
                    pending = upto + 1 - next,
                    "Drain deadline reached; undelivered records stay in the WAL for the next start."
                );
                return Ok(());
            }
            let waited = began.elapsed();
            if waited < f.options.interval && upto + 1 - next < f.options.batch_records as u64 && !self.stop.requested()
            {
                self.wait_for_records_at_most(&mut durable, f.options.interval - waited);
                continue;
            }
            let Some(records) = self.read(next, upto, &mut read_failures)? else { continue };
            began = Instant::now();
            let Some(last) = records.last().map(|r| r.seq) else {
                // Nothing stored in [next, upto]: sequence numbers of a failed group commit.
                debug!(from = next, to = upto, "No WAL records in a durable range (a failed group commit, or numbers skipped after a loss); moving on.");
                next = upto + 1;
                continue;
            };
            match self.deliver(&records, next, last)? {
                Some(after) => next = after,
                None => {
                    warn!("Drain deadline reached while delivering; undelivered records stay in the WAL.");
                    return Ok(());
                }
            }
        }
    }

    /// Waits until more records are durable, the stop signal changes, or half a second passed;
    /// serves the idle producer's statistics first (its connection state for the status page).
    fn wait_for_records(&mut self, durable: &mut watch::Receiver<u64>) {
        self.wait_for_records_at_most(durable, Duration::from_millis(500));
    }

    /// [`Self::wait_for_records`], for at most `limit`.
    fn wait_for_records_at_most(&mut self, durable: &mut watch::Receiver<u64>, limit: Duration) {
        self.outbox.idle();
        let mut stop = self.stop.clone();
        self.runtime.block_on(async {
            tokio::select! {
                _ = durable.changed() => {}
                () = stop.changed() => {}
                () = tokio::time::sleep(limit) => {}
            }
        });
    }

    /// Reads the next batch, `next..=upto`. `None` after a failed read (retry). A read that
    /// keeps failing narrows to one record ([`Self::isolate`]). A fault that is not one
    /// record's stops the flusher after [`READ_FAILURES_BEFORE_STOP`] reads.
    fn read(&mut self, next: u64, upto: u64, failures: &mut u32) -> Result<Option<Vec<ReadRecord>>, KafkaStageError> {
        let log = &self.flusher.log;
        let options = &self.flusher.options;
        let error = match log.read(next, upto, options.batch_records, options.batch_bytes) {
            Ok(records) => {
                *failures = 0;
                return Ok(Some(records));
            }
            Err(WalError::Unavailable(_)) => {
                // The WAL failed on a write and waits to be reopened (`crate::heal`); not a
                // fault of these records, so nothing is counted.
                self.backoff.pause(self.runtime, self.stop);
                return Ok(None);
            }
            Err(e) => e,
        };
        *failures += 1;
        error!(error = %error, attempt = *failures, "Reading the WAL failed; retrying.");
        self.flusher.status.wal_failed(format!("reading WAL records from {next} failed: {error}"));
        if *failures >= READ_FAILURES_BEFORE_ISOLATING {
            if let Some(found) = self.isolate(next, upto, *failures)? {
                *failures = 0;
                return Ok(Some(found));
            }
        }
        if *failures >= READ_FAILURES_BEFORE_STOP {
            return Err(KafkaStageError::Wal(format!(
                "reading WAL records from {next} failed {failures} times in a row: {error}"
            )));
        }
        self.backoff.pause(self.runtime, self.stop);
        Ok(None)
    }

    /// After `failures` failed batch reads: the first record of `next..=upto`, read alone (the
    /// numbers before it hold none: a failed group commit's, say), if it can be read; or, if it
    /// still cannot be read after [`READ_FAILURES_BEFORE_SET_ASIDE`] rounds while the records
    /// after it can (a transient error is not enough), that record set aside and returned
    /// without its frame. `None`: nothing isolated (yet).
    fn isolate(&self, next: u64, upto: u64, failures: u32) -> Result<Option<Vec<ReadRecord>>, KafkaStageError> {
        let log = &self.flusher.log;
        let mut seq = next;
        let alone = loop {
            match log.read(seq, seq, 1, usize::MAX) {
                Ok(none) if none.is_empty() && seq < upto => seq += 1,
                other => break other,
            }
        };
        match alone {
            // Nothing up to `upto` contradicts the failed batch read: retry it.
            Ok(found) if found.is_empty() => Ok(None),
            Ok(found) => Ok(Some(found)),
            Err(e)
                if failures >= READ_FAILURES_BEFORE_SET_ASIDE
                    && seq < upto
                    && log.read(seq + 1, upto, 1, usize::MAX).is_ok() =>
            {
                log.set_aside(seq, &format!("the WAL cannot read it: {e}")).map_err(|aside| {
                    KafkaStageError::Wal(format!("record {seq} cannot be read ({e}) nor set aside ({aside})"))
                })?;
                self.flusher.status.set_aside(seq);
                Ok(Some(vec![ReadRecord { seq, frame: None }]))
            }
            Err(_) => Ok(None),
        }
    }

    /// Makes the outbox ready and finds where to start: after the WAL's watermark, or after
    /// Kafka's committed position if that is ahead (exactly-once: the local watermark may lag
    /// it by the batch committed just before a crash). `None` if the deadline passed first.
    fn resume(&mut self) -> Result<Option<u64>, KafkaStageError> {
        let next = self.flusher.log.stats().delivered_through + 1;
        // Before our producer exists, and so before it fences anyone: a position another WAL
        // committed under this node id means another collector uses it (or this directory
        // replaced its WAL). Refuse to run, leaving that collector alone. (If the position
        // cannot be read yet, the check after `connect` makes it.)
        if let Some(Ok(Some(committed))) = self.positions.map(|p| p.peek()) {
            self.check_owner(&committed)?;
        }
        let Some(committed) = self.connect()? else { return Ok(None) };
        self.adopt(next, committed, Limit::WalOpened(self.flusher.log.opened_next_seq())).map(Some)
    }

    /// Delivers one batch, `records` = `next..=last`. Returns where to go on, or `None` if
    /// the drain deadline passed first.
    fn deliver(&mut self, records: &[ReadRecord], next: u64, last: u64) -> Result<Option<u64>, KafkaStageError> {
        self.backoff.reset();
        let f = self.flusher;
        let (messages, seqs) = raw_messages(records, &f.kafka.raw_topic, &f.node);
        let offsets = self.positions.map(|p| p.offsets(last + 1));
        let (runtime, stop, backoff, refusals) = (self.runtime, self.stop, &mut self.backoff, &mut self.refusals);
        let mut set_aside = false;
        let started = Instant::now();
        let outcome = outbox::deliver(self.outbox, &messages, offsets.as_ref(), |e| {
            let message = format!("delivering records {next}..={last} failed: {e}");
            warn!(%message, "Kafka did not take a batch; retrying it.");
            report_failure(&f.status, message);
            crate::telemetry::flush_failed();
            if let Some((seq, reason)) = refused_too_often(e, &seqs, refusals) {
                match f.log.set_aside(seq, &reason) {
                    // Read the batch again, without it.
                    Ok(()) => {
                        f.status.set_aside(seq);
                        set_aside = true;
                        return false;
                    }
                    Err(err) => error!(seq, error = %err, "Could not set aside a WAL record Kafka refuses."),
                }
            }
            !backoff.pause(runtime, stop)
        })?;
        match outcome {
            Outcome::Delivered(_) => {
                self.ack(last);
                self.refusals.retain(|seq, _| *seq > last);
                f.status.ok(records.len());
                crate::telemetry::flush_delivered(records.len());
                crate::telemetry::flush_batch(records.len(), started.elapsed());
                Ok(Some(last + 1))
            }
            Outcome::GaveUp if set_aside => Ok(Some(next)),
            Outcome::GaveUp => Ok(None),
            // The batch may have committed after all: the new producer settled it, and the
            // committed position says. Only this batch can have been committed behind our back.
            Outcome::Uncertain => match self.connect()? {
                Some(committed) => self.adopt(next, committed, Limit::Batch(last)).map(Some),
                None => Ok(None),
            },
        }
    }

    /// Connects the outbox and reads the committed position, retrying until the deadline:
    /// `Some(position)` (itself `None` when nothing was ever committed, or at-least-once), or
    /// `None` if the deadline passed first.
    fn connect(&mut self) -> Result<Option<Option<Committed>>, KafkaStageError> {
        loop {
            if self.stop.expired() {
                return Ok(None);
            }
            let read = self.outbox.connect().and_then(|_| match self.positions {
                Some(p) => p.committed().map_err(OutboxError::Unavailable),
                None => Ok(None),
            });
            match read {
                Ok(position) => {
                    self.flusher.status.connected();
                    return Ok(Some(position));
                }
                Err(e) if e.is_permanent() => return Err(e.into()),
                Err(e) => {
                    report_failure(&self.flusher.status, e.to_string());
                    warn!(error = %e, "Cannot start a Kafka transaction yet; the WAL keeps the data meanwhile.");
                    if self.backoff.pause(self.runtime, self.stop) {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Where to go on from `next` given Kafka's committed position: skip (and acknowledge)
    /// what Kafka already has, but never trust a position this WAL cannot have produced.
    ///
    /// # Errors
    /// [`KafkaStageError::ForeignPosition`]: another WAL committed the position under this node
    /// id. Acknowledging up to it would drop records this WAL never sent; sending would mix two
    /// WALs' numbers in one position. An operator must give each WAL its own `--node-id`.
    fn adopt(&self, next: u64, committed: Option<Committed>, limit: Limit) -> Result<u64, KafkaStageError> {
        if let Some(c) = &committed {
            self.check_owner(c)?;
        }
        // Positions committed before WALs carried an identity: the old checks.
        Ok(match (committed.map(|c| c.next), limit) {
            (Some(position), Limit::WalOpened(opened_next)) if position > opened_next => {
                error!(
                    kafka = position,
                    wal_next = opened_next,
                    "Kafka's committed position for this node id is ahead of this WAL: the WAL directory was replaced or lost. Ignoring the position; give each WAL its own --node-id."
                );
                next
            }
            (Some(position), Limit::Batch(last)) if position > last + 1 => {
                // Only the batch in flight can have been committed behind our back.
                debug!(kafka = position, last, "Kafka's committed position is past the batch in flight; ignoring it.");
                next
            }
            (Some(position), _) if position > next => {
                info!(
                    local = next,
                    kafka = position,
                    "Kafka already has records the WAL had not marked delivered; skipping them."
                );
                self.ack(position - 1);
                position
            }
            _ => next,
        })
    }

    /// A position another WAL committed under this node id is an error (see [`Self::adopt`]).
    fn check_owner(&self, committed: &Committed) -> Result<(), KafkaStageError> {
        match &committed.wal_id {
            Some(owner) if *owner != self.flusher.wal_id => Err(KafkaStageError::ForeignPosition(format!(
                "Kafka's committed position for node id {} ({}) was committed by another WAL ({owner}; this one is {}): two WAL directories share this node id. Give each its own --node-id; nothing was acknowledged",
                self.flusher.node, committed.next, self.flusher.wal_id
            ))),
            _ => Ok(()),
        }
    }

    fn ack(&self, seq: u64) {
        // Kafka has them whether or not the WAL can record it.
        self.flusher.status.confirmed_through(seq);
        if let Err(e) = self.flusher.log.ack_through(seq) {
            // Not fatal: Kafka has the records. Exactly-once mode skips them again after a
            // restart (Kafka's position wins); at-least-once mode sends them again.
            error!(error = %e, seq, "Recording the delivered position in the WAL failed.");
        }
    }
}

/// Reports a failure as the status page shows it: with the TLS or SASL refusal of the last
/// minute, if any, which is most likely why (a rotated password shows as timeouts here), and
/// then as a refusal.
fn report_failure(status: &FlushStatus, failure: String) {
    match kafka::security::recent_refusal() {
        Some(refusal) => status.refused(format!("{failure} ({refusal})")),
        None => status.failed(failure),
    }
}

/// The highest position [`FlushLoop::adopt`] may take from Kafka.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// At start: the next sequence number when the WAL was opened. A position beyond every
    /// number this WAL had handed out belongs to another WAL under the same node id (a replaced
    /// directory).
    WalOpened(u64),
    /// After a lost producer: the last record of the batch in flight.
    Batch(u64),
}

/// If `e` says Kafka refuses a record for what it is, counts that refusal; returns the record
/// and why once it was refused [`REFUSALS_BEFORE_SET_ASIDE`] times.
fn refused_too_often(e: &OutboxError, seqs: &[u64], refusals: &mut HashMap<u64, u32>) -> Option<(u64, String)> {
    let (index, error) = match e {
        OutboxError::Refused { index, error } if outbox::is_poison(error) => (*index, error),
        OutboxError::Undelivered { failed } => {
            failed.iter().find(|(_, err)| outbox::is_poison(err)).map(|(i, err)| (*i, err))?
        }
        _ => return None,
    };
    let seq = seqs[index];
    let count = refusals.entry(seq).or_insert(0);
    *count += 1;
    (*count >= REFUSALS_BEFORE_SET_ASIDE).then(|| (seq, format!("Kafka refused it {count} times: {error}")))
}

/// One raw-topic message per readable record: the body as received, with its sequence number,
/// receive time, node and client in headers. Returns the messages and their sequence numbers.
/// Public only for the `flush` criterion bench.
#[doc(hidden)]
pub fn raw_messages<'r>(
    records: &'r [ReadRecord],
    topic: &'r str,
    node: &'r NodeId,
) -> (Vec<OutMessage<'r>>, Vec<u64>) {
    records
        .iter()
        .filter_map(|rec| {
            let frame = rec.frame.as_ref()?;
            let entry = record::decode(frame).expect("records are checked when read");
            let message = OutMessage {
                topic,
                key: None,
                payload: Some(entry.payload),
                headers: vec![
                    (headers::SEQ, Cow::Owned(rec.seq.to_string().into_bytes())),
                    (headers::RECEIVED_AT, Cow::Owned(entry.received_at_ms.to_string().into_bytes())),
                    (headers::NODE, Cow::Borrowed(node.as_str().as_bytes())),
                    (headers::CLIENT, Cow::Borrowed(entry.client.as_bytes())),
                ],
            };
            Some((message, rec.seq))
        })
        .unzip()
}
