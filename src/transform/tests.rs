//! The transform worker loop against a scripted source and outbox: what it produces, which
//! offsets go with it, and where it rewinds after each kind of Kafka failure.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage, Timestamp};
use rdkafka::types::RDKafkaErrorCode;

use super::source::{next_offsets, BatchLimit, Source};
use super::worker::Worker;
use super::*;
use crate::kafka::outbox::fake::{FakeOutbox, Step};
use crate::kafka::{KafkaSettings, KafkaStageError, Offsets, OutboxError, ProducerOptions, TxnTimeouts};
use crate::retry::{Stop, StopHandle};

const BODY: &str = r#"{"events":[{"event_type":"view","event_time":1,"user_id":"u1"},{"event_type":"buy","event_time":2,"user_id":7}],"ctx":{"browser":"B","device":"D","version":"1"}}"#;

fn raw(offset: i64, payload: &str) -> OwnedMessage {
    OwnedMessage::new(Some(payload.as_bytes().to_vec()), None, "raw".into(), Timestamp::NotAvailable, 0, offset, None)
}

/// Hands out scripted batches, then stops the worker. Records every seek and commit.
struct FakeSource {
    batches: VecDeque<Vec<OwnedMessage>>,
    stop: StopHandle,
    /// First offset of each batch rewound to its start.
    rewound: Vec<i64>,
    rewound_to_committed: usize,
    /// Offsets committed by the consumer itself (at-least-once).
    commits: Vec<i64>,
    /// The outbox's journal: commits are noted in it too, to check their order.
    journal: Arc<Mutex<Vec<String>>>,
}

impl Source for FakeSource {
    fn poll_batch(&mut self, _limit: BatchLimit, _wait: Duration) -> Result<Vec<OwnedMessage>, KafkaStageError> {
        Ok(self.batches.pop_front().unwrap_or_else(|| {
            self.stop.stop_now();
            Vec::new()
        }))
    }

    fn offsets(&self, batch: &[OwnedMessage]) -> Offsets {
        Offsets { list: next_offsets(batch), group: None }
    }

    fn rewind(&mut self, batch: &[OwnedMessage]) {
        self.rewound.push(batch[0].offset());
    }

    fn rewind_to_committed(&mut self, _batch: &[OwnedMessage]) {
        self.rewound_to_committed += 1;
    }

    fn commit(&mut self, batch: &[OwnedMessage]) {
        self.journal.lock().unwrap().push("source: commit".into());
        self.commits.push(next_offsets(batch).elements()[0].offset().to_raw().unwrap());
    }
}

/// Runs the worker over `batches` until they are used up; returns the source's records.
fn run(batches: Vec<Vec<OwnedMessage>>, outbox: &mut FakeOutbox) -> (Result<(), KafkaStageError>, FakeSource) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (handle, stop) = Stop::new();
    let mut source = FakeSource {
        batches: batches.into(),
        stop: handle,
        rewound: vec![],
        rewound_to_committed: 0,
        commits: vec![],
        journal: outbox.journal.clone(),
    };
    let kafka = KafkaSettings::for_tests("127.0.0.1:1");
    let options = TransformOptions {
        group_id: "g".into(),
        session_timeout: Duration::from_secs(10),
        batch: BatchLimit { messages: 100, bytes: 1 << 20 },
        batch_wait: Duration::from_millis(10),
        producer: ProducerOptions {
            linger_ms: 0,
            message_timeout_ms: 1000,
            txn: TxnTimeouts { transaction_ms: 1000, operation: Duration::from_secs(1) },
        },
    };
    let result = Worker {
        kafka: &kafka,
        options: &options,
        runtime: runtime.handle(),
        stop: &stop,
        outbox,
        source: &mut source,
        status: &TransformStatus::default(),
    }
    .run();
    (result, source)
}

fn kafka_error() -> KafkaError {
    KafkaError::MessageProduction(RDKafkaErrorCode::BrokerNotAvailable)
}

#[test]
fn a_committed_batch_yields_one_row_per_event_with_the_offsets_after_it() {
    let mut outbox = FakeOutbox::new(vec![]);
    let (result, source) = run(vec![vec![raw(4, BODY), raw(5, BODY)]], &mut outbox);
    result.unwrap();
    assert_eq!(outbox.committed.len(), 1);
    let batch = &outbox.committed[0];
    let rows: Vec<(String, String)> = batch
        .messages
        .iter()
        .map(|m| {
            assert_eq!(m.0, "rows");
            (String::from_utf8(m.1.clone().unwrap()).unwrap(), String::from_utf8(m.2.clone().unwrap()).unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[1],
        ("7".to_string(), r#"{"event_type":"buy","event_time":2,"user_id":7,"browser":"B","device":"D"}"#.to_string())
    );
    assert_eq!(batch.offsets, vec![("raw".to_string(), 0, 6)], "the offsets after the batch commit with it");
    assert!(source.rewound.is_empty() && source.commits.is_empty());
}

#[test]
fn an_unreadable_message_goes_to_the_dead_letter_topic_with_its_reason() {
    let mut outbox = FakeOutbox::new(vec![]);
    let (result, _) = run(vec![vec![raw(9, "not json"), raw(10, BODY)]], &mut outbox);
    result.unwrap();
    let messages = &outbox.committed[0].messages;
    assert_eq!(messages.len(), 3, "one dead letter and two rows");
    let (topic, _, payload, headers) = &messages[0];
    assert_eq!((topic.as_str(), payload.as_deref()), ("dlq", Some(b"not json".as_slice())));
    let header =
        |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8(v.clone()).unwrap());
    assert!(header("collector-error").unwrap().contains("invalid_json"));
    assert_eq!(header("collector-source").as_deref(), Some("raw/0/9"));
}

#[test]
fn an_aborted_transaction_rewinds_to_the_batch_start_and_the_batch_is_read_again() {
    let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::Aborted(kafka_error()))]);
    let batch = vec![raw(4, BODY)];
    let (result, source) = run(vec![batch.clone(), batch], &mut outbox);
    result.unwrap();
    assert_eq!(source.rewound, vec![4]);
    assert_eq!(outbox.attempts.len(), 2, "not retried in place: read again");
    assert_eq!(outbox.committed.len(), 1);
}

#[test]
fn a_lost_producer_rewinds_to_the_committed_offsets() {
    let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::ProducerLost(kafka_error()))]);
    let (result, source) = run(vec![vec![raw(4, BODY)]], &mut outbox);
    result.unwrap();
    assert_eq!(source.rewound_to_committed, 1);
    assert!(source.rewound.is_empty());
    assert!(outbox.committed.is_empty());
}

#[test]
fn a_fenced_worker_stops_with_an_error() {
    let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::Fenced(kafka_error()))]);
    let (result, _) = run(vec![vec![raw(4, BODY)], vec![raw(5, BODY)]], &mut outbox);
    assert!(matches!(result, Err(KafkaStageError::Fenced(_))), "{result:?}");
    assert_eq!(outbox.attempts.len(), 1, "nothing more is attempted");
}

#[test]
fn a_refused_row_aborts_the_batch_which_is_read_again() {
    let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::Refused { index: 1, error: kafka_error() })]);
    let (result, source) = run(vec![vec![raw(4, BODY)]], &mut outbox);
    result.unwrap();
    assert_eq!(source.rewound, vec![4]);
    assert!(outbox.committed.is_empty());
}

#[test]
fn at_least_once_commits_the_offsets_only_after_every_row_is_confirmed() {
    let undelivered = OutboxError::Undelivered { failed: vec![(0, kafka_error())] };
    let mut outbox = FakeOutbox::at_least_once(vec![Step::Fail(undelivered)]);
    let (result, source) = run(vec![vec![raw(4, BODY)]], &mut outbox);
    result.unwrap();
    assert_eq!(outbox.attempts, vec![vec![0, 1], vec![0]], "only the undelivered row is resent");
    assert_eq!(source.commits, vec![5]);
    assert_eq!(*outbox.journal.lock().unwrap(), ["deliver: failed", "deliver: ok", "source: commit"]);
    assert!(source.rewound.is_empty());
}

fn too_large() -> KafkaError {
    KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
}

fn refusals(n: usize, index: usize) -> Vec<Step> {
    (0..n).map(|_| Step::Fail(OutboxError::Refused { index, error: too_large() })).collect()
}

#[test]
fn a_row_kafka_keeps_refusing_sends_its_raw_message_to_the_dead_letter_topic_and_the_partition_moves_on() {
    let mut outbox = FakeOutbox::new(refusals(3, 1));
    let batch = vec![raw(4, BODY), raw(5, BODY)];
    let (result, source) = run(vec![batch.clone(); 4], &mut outbox);
    result.unwrap();
    assert_eq!(source.rewound, vec![4, 4, 4], "read again after each refusal");
    assert_eq!(outbox.committed.len(), 1, "then the batch goes through");
    let messages = &outbox.committed[0].messages;
    let topics: Vec<&str> = messages.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        topics,
        ["dlq", "rows", "rows"],
        "the raw message whose row was refused is dead-lettered, the other's rows go on"
    );
    let reason =
        messages[0].3.iter().find(|(k, _)| k == "collector-error").map(|(_, v)| String::from_utf8(v.clone()).unwrap());
    assert!(reason.unwrap().contains("refuses"), "the dead letter says why");
    assert_eq!(messages[0].2.as_deref(), Some(BODY.as_bytes()), "the raw message travels with it");
    assert_eq!(outbox.committed[0].offsets, vec![("raw".to_string(), 0, 6)], "the partition moves on");
}

#[test]
fn a_dead_letter_kafka_refuses_goes_bare_and_a_refused_bare_one_is_dropped() {
    // Three refusals of the row, three of the dead letter: then a bare dead letter.
    let mut outbox = FakeOutbox::new(refusals(6, 0));
    let (result, _) = run(vec![vec![raw(4, BODY)]; 7], &mut outbox);
    result.unwrap();
    let (topic, key, payload, _) = &outbox.committed[0].messages[0];
    assert_eq!((topic.as_str(), key, payload), ("dlq", &None, &None), "no key, no payload");

    // Three more, of the bare one: the message is dropped and the offsets still move on.
    let mut outbox = FakeOutbox::new(refusals(9, 0));
    let (result, _) = run(vec![vec![raw(4, BODY)]; 10], &mut outbox);
    result.unwrap();
    assert!(outbox.committed[0].messages.is_empty());
    assert_eq!(outbox.committed[0].offsets, vec![("raw".to_string(), 0, 5)]);
}
