//! The flusher loop against a scripted outbox and position store: what it sends, what it
//! acknowledges in the WAL, and how it reacts to each kind of Kafka failure.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use super::flusher::FlushLoop;
use super::position::{Committed, PositionStore};
use super::*;
use crate::kafka::outbox::fake::{FakeOutbox, Step};
use crate::kafka::{KafkaSettings, KafkaStageError, Offsets, OutboxError, ProducerOptions, TxnTimeouts};
use crate::node::NodeId;
use crate::retry::{Backoff, Stop};
use crate::wal::record::{self, Entry};
use crate::wal::{LogOptions, LogStore, SledLog};

/// A position store that answers `committed` from a script (the last answer repeats).
struct FakePositions(Mutex<VecDeque<Option<Committed>>>);

/// The identity of the harness's WAL.
const WAL_ID: &str = "wal-1";

impl FakePositions {
    /// Positions committed by this WAL.
    fn new(answers: &[Option<u64>]) -> Self {
        Self::committed_by(Some(WAL_ID), answers)
    }

    /// Positions committed by the WAL `owner` (`None`: before WALs had an identity).
    fn committed_by(owner: Option<&str>, answers: &[Option<u64>]) -> Self {
        let commit = |next: u64| Committed { next, wal_id: owner.map(str::to_string) };
        FakePositions(Mutex::new(answers.iter().map(|a| a.map(commit)).collect()))
    }
}

impl PositionStore for FakePositions {
    fn peek(&self) -> Result<Option<Committed>, KafkaError> {
        Ok(self.0.lock().unwrap().front().expect("a scripted answer").clone())
    }

    fn committed(&self) -> Result<Option<Committed>, KafkaError> {
        let mut answers = self.0.lock().unwrap();
        let answer = answers.front().expect("a scripted answer").clone();
        if answers.len() > 1 {
            answers.pop_front();
        }
        Ok(answer)
    }

    fn offsets(&self, next: u64) -> Offsets {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("positions", 0, Offset::Offset(next as i64)).unwrap();
        Offsets { list, group: None }
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    log: Arc<dyn LogStore>,
    _durable_tx: watch::Sender<u64>,
    flusher: Flusher,
    runtime: tokio::runtime::Runtime,
}

fn open(dir: &std::path::Path) -> SledLog {
    let options = LogOptions { segment_bytes: 1 << 20, cache_bytes: 1 << 20, idempotency_window_ms: 60_000 };
    // sled releases its file lock from a background thread shortly after the last handle is
    // dropped, so an immediate reopen can find it still held.
    for _ in 0..200 {
        match SledLog::open(dir, options.clone()) {
            Ok(log) => return log,
            Err(e) if e.to_string().contains("lock") => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the WAL lock was never released");
}

/// A WAL holding `records` durable records with payloads `{"n":1}`, `{"n":2}`…
fn harness(records: u64) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let frames: Vec<Vec<u8>> = (1..=records)
        .map(|n| {
            record::encode(&Entry {
                received_at_ms: 1000 + n,
                client: "1.2.3.4:5",
                payload: format!(r#"{{"n":{n}}}"#).as_bytes(),
            })
        })
        .collect();
    if records > 0 {
        log.append(&frames, &[]).unwrap();
        log.sync().unwrap();
    }
    // Reopened, as after a restart: the records were there when the WAL was opened.
    drop(log);
    let log: Arc<dyn LogStore> = Arc::new(open(dir.path()));
    let (durable_tx, durable) = watch::channel(records);
    let flusher = Flusher {
        log: log.clone(),
        durable,
        kafka: KafkaSettings::for_tests("127.0.0.1:1"),
        options: FlushOptions {
            batch_records: 100,
            batch_bytes: 1 << 20,
            producer: ProducerOptions {
                linger_ms: 0,
                message_timeout_ms: 1000,
                txn: TxnTimeouts { transaction_ms: 1000, operation: Duration::from_secs(1) },
            },
            max_backoff: Duration::from_millis(100),
            interval: Duration::ZERO,
        },
        status: Arc::new(FlushStatus::default()),
        node: NodeId::parse("node-1").unwrap(),
        wal_id: WAL_ID.into(),
    };
    Harness { _dir: dir, log, _durable_tx: durable_tx, flusher, runtime: tokio::runtime::Runtime::new().unwrap() }
}

impl Harness {
    /// Runs the loop as during a drain: it delivers what the WAL holds, then returns; or gives
    /// up when `deadline` has passed.
    fn drain(
        &self,
        outbox: &mut FakeOutbox,
        positions: Option<&FakePositions>,
        deadline: Duration,
    ) -> Result<(), KafkaStageError> {
        let (handle, stop) = Stop::new();
        handle.stop_by(Instant::now() + deadline);
        FlushLoop {
            flusher: &self.flusher,
            outbox,
            positions: positions.map(|p| p as &dyn PositionStore),
            runtime: self.runtime.handle(),
            stop: &stop,
            backoff: Backoff::new(Duration::from_millis(20)),
            refusals: Default::default(),
        }
        .run()
    }

    fn delivered_through(&self) -> u64 {
        self.log.stats().delivered_through
    }
}

fn kafka_error() -> KafkaError {
    KafkaError::MessageProduction(RDKafkaErrorCode::BrokerNotAvailable)
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn a_committed_batch_is_acknowledged_in_the_wal_with_its_position() {
    let h = harness(3);
    let mut outbox = FakeOutbox::new(vec![]);
    h.drain(&mut outbox, Some(&FakePositions::new(&[None])), LONG).unwrap();
    assert_eq!(outbox.committed.len(), 1);
    let batch = &outbox.committed[0];
    assert_eq!(batch.offsets, vec![("positions".to_string(), 0, 4)], "the position after the batch commits with it");
    let payloads: Vec<_> = batch.messages.iter().map(|m| String::from_utf8(m.2.clone().unwrap()).unwrap()).collect();
    assert_eq!(payloads, [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]);
    let headers: Vec<(String, String)> =
        batch.messages[1].3.iter().map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap())).collect();
    assert_eq!(
        headers,
        [
            ("collector-seq".into(), "2".into()),
            ("collector-received-at".into(), "1002".into()),
            ("collector-node".into(), "node-1".into()),
            ("collector-client".into(), "1.2.3.4:5".into())
        ]
    );
    assert!(batch.messages.iter().all(|m| m.0 == "raw"));
    assert_eq!(h.delivered_through(), 3);
    assert!(h.flusher.status.snapshot().kafka_ok);
}

#[test]
fn an_aborted_transaction_is_retried_with_the_same_batch() {
    let h = harness(3);
    let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::Aborted(kafka_error()))]);
    h.drain(&mut outbox, Some(&FakePositions::new(&[None])), LONG).unwrap();
    assert_eq!(outbox.attempts, vec![vec![0, 1, 2], vec![0, 1, 2]]);
    assert_eq!(outbox.committed.len(), 1);
    assert_eq!(h.delivered_through(), 3);
}

/// Three records; the first delivery loses its producer; Kafka's committed position then reads
/// `after_loss`. Returns the outbox and the WAL's watermark afterwards.
fn lose_the_producer(after_loss: Option<u64>) -> (FakeOutbox, u64) {
    let h = harness(3);
    let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::ProducerLost(kafka_error()))]);
    h.drain(&mut outbox, Some(&FakePositions::new(&[None, after_loss])), LONG).unwrap();
    assert_eq!(outbox.connects, 2, "a new producer was asked for after the loss, before going on");
    (outbox, h.delivered_through())
}

#[test]
fn a_lost_producer_is_replaced_and_a_batch_that_committed_after_all_is_not_sent_again() {
    let (outbox, delivered) = lose_the_producer(Some(4));
    assert!(outbox.committed.is_empty(), "the batch Kafka has was not sent again");
    assert_eq!(delivered, 3);
}

#[test]
fn a_lost_producer_is_replaced_and_a_batch_that_did_not_commit_is_sent_again() {
    let (outbox, delivered) = lose_the_producer(None);
    assert_eq!(outbox.committed.len(), 1);
    assert_eq!(outbox.committed[0].messages.len(), 3);
    assert_eq!(delivered, 3);
}

#[test]
fn after_a_lost_producer_a_position_past_the_batch_in_flight_is_not_trusted() {
    // Only the batch in flight (1..=3, position 4) can have been committed behind our back.
    let (outbox, delivered) = lose_the_producer(Some(9));
    assert_eq!(outbox.committed.len(), 1, "the batch is sent again");
    assert_eq!(outbox.committed[0].messages.len(), 3);
    assert_eq!(delivered, 3);
}

#[test]
fn a_fenced_flusher_stops_with_an_error_and_acknowledges_nothing() {
    let h = harness(3);
    let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::Fenced(kafka_error()))]);
    let result = h.drain(&mut outbox, Some(&FakePositions::new(&[None])), LONG);
    assert!(matches!(result, Err(KafkaStageError::Fenced(_))), "{result:?}");
    assert_eq!(outbox.attempts.len(), 1, "a fenced flusher does not retry");
    assert_eq!(h.delivered_through(), 0, "the records stay in the WAL");
}

#[test]
fn a_refused_record_is_reported_and_stays_in_the_wal() {
    let h = harness(3);
    let refused = || Step::Fail(OutboxError::Refused { index: 1, error: kafka_error() });
    let mut outbox = FakeOutbox::new((0..1000).map(|_| refused()).collect());
    // Kafka keeps refusing; the drain deadline ends the attempts.
    h.drain(&mut outbox, Some(&FakePositions::new(&[None])), Duration::from_millis(300)).unwrap();
    assert!(outbox.attempts.len() > 1, "the batch was retried");
    let status = h.flusher.status.snapshot();
    assert!(!status.kafka_ok);
    let error = status.last_error.unwrap();
    assert!(error.contains("refused message 1") && error.contains("1..=3"), "{error}");
    assert_eq!(h.delivered_through(), 0);
}

#[test]
fn kafkas_position_skips_what_kafka_has_but_never_what_this_wal_did_not_send() {
    // Kafka has records 1 and 2 (committed just before a crash left the watermark behind).
    let h = harness(3);
    let mut outbox = FakeOutbox::new(vec![]);
    h.drain(&mut outbox, Some(&FakePositions::new(&[Some(3)])), LONG).unwrap();
    assert_eq!(outbox.committed.len(), 1);
    assert_eq!(outbox.committed[0].messages.len(), 1, "only record 3 is sent");
    assert_eq!(h.delivered_through(), 3);

    // A position without a WAL identity (committed before WALs had one) beyond every number
    // this WAL handed out belongs to another WAL: ignored.
    let h = harness(3);
    let mut outbox = FakeOutbox::new(vec![]);
    h.drain(&mut outbox, Some(&FakePositions::committed_by(None, &[Some(100)])), LONG).unwrap();
    assert_eq!(outbox.committed[0].messages.len(), 3, "all of this WAL's records are sent");
}

#[test]
fn a_position_another_wal_committed_under_this_node_id_stops_the_flusher_without_acknowledging() {
    let h = harness(3);
    let mut outbox = FakeOutbox::new(vec![]);
    // Even a position that looks plausible (2: "records 1 is in Kafka") is not trusted.
    let result = h.drain(&mut outbox, Some(&FakePositions::committed_by(Some("another-wal"), &[Some(2)])), LONG);
    assert!(matches!(&result, Err(KafkaStageError::ForeignPosition(m)) if m.contains("another-wal")), "{result:?}");
    assert!(outbox.attempts.is_empty(), "nothing was sent");
    assert_eq!(h.delivered_through(), 0, "nothing was acknowledged");
}

#[test]
fn at_least_once_resends_only_the_records_kafka_did_not_take() {
    let h = harness(3);
    let undelivered = OutboxError::Undelivered { failed: vec![(1, kafka_error())] };
    let mut outbox = FakeOutbox::at_least_once(vec![Step::Fail(undelivered)]);
    h.drain(&mut outbox, None, LONG).unwrap();
    assert_eq!(outbox.attempts, vec![vec![0, 1, 2], vec![1]]);
    assert_eq!(h.delivered_through(), 3);
}

#[test]
fn a_record_kafka_keeps_refusing_is_set_aside_and_the_rest_is_delivered() {
    let h = harness(3);
    let too_large = || KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
    let mut outbox =
        FakeOutbox::new((0..3).map(|_| Step::Fail(OutboxError::Refused { index: 1, error: too_large() })).collect());
    h.drain(&mut outbox, Some(&FakePositions::new(&[None])), LONG).unwrap();
    assert_eq!(outbox.attempts.len(), 4, "three refusals, then the batch without the record");
    let sent: Vec<String> =
        outbox.committed[0].messages.iter().map(|m| String::from_utf8(m.2.clone().unwrap()).unwrap()).collect();
    assert_eq!(sent, [r#"{"n":1}"#, r#"{"n":3}"#]);
    assert_eq!(outbox.committed[0].offsets, vec![("positions".to_string(), 0, 4)], "the position moves past it");
    assert_eq!(h.delivered_through(), 3);
    assert_eq!(h.log.stats().quarantined, 1, "the record is kept in the WAL's quarantine");
}

/// A WAL whose reads fail: all of them (a storage fault), or those that include record `.1`;
/// record `.2`, if any, is absent (the number of a failed group commit).
struct UnreadableWal(Arc<dyn LogStore>, Option<u64>, Option<u64>);

impl LogStore for UnreadableWal {
    fn append(
        &self,
        frames: &[Vec<u8>],
        keys: &[(usize, crate::wal::IdempotencyKey)],
    ) -> Result<u64, crate::wal::WalError> {
        self.0.append(frames, keys)
    }
    fn lookup_key(&self, scope: &[u8], key: &[u8]) -> Result<Option<crate::wal::KeyRecord>, crate::wal::WalError> {
        self.0.lookup_key(scope, key)
    }
    fn sync(&self) -> Result<(), crate::wal::WalError> {
        self.0.sync()
    }
    fn read(
        &self,
        from: u64,
        upto: u64,
        n: usize,
        bytes: usize,
    ) -> Result<Vec<crate::wal::ReadRecord>, crate::wal::WalError> {
        match self.1 {
            Some(bad) if !(from..=upto).contains(&bad) => {
                let mut records = self.0.read(from, upto, n, bytes)?;
                records.retain(|r| Some(r.seq) != self.2);
                Ok(records)
            }
            _ => Err(crate::wal::WalError::Storage("I/O error (injected)".into())),
        }
    }
    fn set_aside(&self, seq: u64, reason: &str) -> Result<(), crate::wal::WalError> {
        self.0.set_aside(seq, reason)
    }
    fn ack_through(&self, seq: u64) -> Result<(), crate::wal::WalError> {
        self.0.ack_through(seq)
    }
    fn stats(&self) -> crate::wal::WalStats {
        self.0.stats()
    }
    fn live_bytes(&self) -> u64 {
        self.0.live_bytes()
    }
    fn opened_next_seq(&self) -> u64 {
        self.0.opened_next_seq()
    }
}

#[test]
fn a_wal_that_cannot_be_read_stops_the_flusher_instead_of_retrying_forever() {
    let mut h = harness(3);
    h.flusher.log = Arc::new(UnreadableWal(h.log.clone(), None, None));
    let result = h.drain(&mut FakeOutbox::new(vec![]), Some(&FakePositions::new(&[None])), LONG);
    assert!(matches!(result, Err(KafkaStageError::Wal(_))), "{result:?}");
    assert_eq!(h.delivered_through(), 0);
}

#[test]
fn one_record_sled_cannot_read_is_set_aside_and_the_rest_is_delivered() {
    let mut h = harness(5);
    h.flusher.log = Arc::new(UnreadableWal(h.log.clone(), Some(3), None));
    let mut outbox = FakeOutbox::new(vec![]);
    h.drain(&mut outbox, Some(&FakePositions::new(&[None])), LONG).unwrap();
    assert_eq!(h.delivered_through(), 5, "the flusher moved past the unreadable record");
    let payloads: Vec<String> = outbox
        .committed
        .iter()
        .flat_map(|batch| batch.messages.iter().map(|m| String::from_utf8(m.2.clone().unwrap()).unwrap()))
        .collect();
    assert_eq!(payloads, [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":4}"#, r#"{"n":5}"#], "every readable record, once");
    assert_eq!(h.log.stats().quarantined, 1, "the unreadable record is in the quarantine");
}

#[test]
fn behind_a_gap_an_unreadable_record_is_found_and_the_records_around_it_are_delivered() {
    // Record 1 is absent (its group commit failed): isolating must look past it, not skip to
    // the end of the range and acknowledge records never delivered.
    let mut h = harness(5);
    h.flusher.log = Arc::new(UnreadableWal(h.log.clone(), Some(3), Some(1)));
    let mut outbox = FakeOutbox::new(vec![]);
    h.drain(&mut outbox, Some(&FakePositions::new(&[None])), LONG).unwrap();
    let payloads: Vec<String> = outbox
        .committed
        .iter()
        .flat_map(|batch| batch.messages.iter().map(|m| String::from_utf8(m.2.clone().unwrap()).unwrap()))
        .collect();
    assert_eq!(payloads, [r#"{"n":2}"#, r#"{"n":4}"#, r#"{"n":5}"#]);
    assert_eq!(h.delivered_through(), 5);
}
