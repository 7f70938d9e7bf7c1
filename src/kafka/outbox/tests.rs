//! The real outboxes against librdkafka's in-process mock cluster: fault injection for the
//! error paths a real broker rarely shows on demand. (The end-to-end guarantees are proven
//! against a real Kafka in `tests/`.)

use std::borrow::Cow;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;

use super::*;
use crate::kafka::KafkaSettings;

const TOPIC: &str = "out";

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 1, 1).unwrap();
    mock
}

fn settings(mock: &MockCluster<'static, DefaultProducerContext>, properties: &[(&str, &str)]) -> KafkaSettings {
    KafkaSettings {
        properties: properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        raw_topic: TOPIC.into(),
        ..KafkaSettings::for_tests(&mock.bootstrap_servers())
    }
}

fn options() -> ProducerOptions {
    ProducerOptions {
        linger_ms: 0,
        message_timeout_ms: 10_000,
        txn: TxnTimeouts { transaction_ms: 60_000, operation: Duration::from_secs(10) },
    }
}

fn message(payload: &[u8]) -> OutMessage<'_> {
    OutMessage { topic: TOPIC, key: Some(b"k"), payload: Some(payload), headers: vec![("h", Cow::Borrowed(b"v"))] }
}

fn batch<'a>(messages: &'a [OutMessage<'a>], indices: &'a [usize]) -> OutBatch<'a> {
    OutBatch { messages, indices, offsets: None }
}

/// Every committed message of the topic, as a `read_committed` consumer sees it.
fn committed_payloads(mock: &MockCluster<'static, DefaultProducerContext>, expect: usize) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "reader")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let mut out = Vec::new();
    // Until `expect` arrived, then a while longer: a message that should not be there shows.
    let mut deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut settled = false;
    while std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.payload().unwrap_or_default().to_vec());
        }
        if out.len() >= expect && !settled {
            settled = true;
            deadline = std::time::Instant::now() + Duration::from_millis(1000);
        }
    }
    out
}

#[test]
fn the_transactional_outbox_commits_a_batch() {
    let mock = cluster();
    let mut outbox = TransactionalOutbox::new(settings(&mock, &[]), "txn-commit".into(), &options());
    assert!(outbox.connect().unwrap(), "a new producer is made ready");
    let messages = [message(b"a"), message(b"b")];
    assert_eq!(outbox.deliver(batch(&messages, &[0, 1])).unwrap(), Delivered::WithOffsets);
    assert!(!outbox.connect().unwrap(), "the producer is kept");
    assert_eq!(committed_payloads(&mock, 2), vec![b"a".to_vec(), b"b".to_vec()]);
}

#[test]
fn a_message_kafka_cannot_take_is_reported_by_index_and_the_outbox_goes_on() {
    let mock = cluster();
    let mut outbox =
        TransactionalOutbox::new(settings(&mock, &[("message.max.bytes", "2000")]), "txn-refused".into(), &options());
    let big = vec![b'x'; 5000];
    let messages = [message(b"with-the-refused"), message(&big), message(b"next")];
    match outbox.deliver(batch(&messages, &[0, 1])) {
        Err(OutboxError::Refused { index, .. }) => assert_eq!(index, 1),
        other => panic!("expected a refusal of message 1, got {other:?}"),
    }
    // Nothing of the refused batch is visible; the next batch commits on the same producer.
    assert_eq!(outbox.deliver(batch(&messages, &[2])).unwrap(), Delivered::WithOffsets);
    assert_eq!(committed_payloads(&mock, 1), vec![b"next".to_vec()]);
}

/// A connected transactional outbox whose next `AddPartitionsToTxn` the coordinator answers
/// with `error`, and what delivering one message through it gave.
fn deliver_against(
    error: RDKafkaRespErr,
) -> (MockCluster<'static, DefaultProducerContext>, TransactionalOutbox, Result<Delivered, OutboxError>) {
    let mock = cluster();
    let mut outbox = TransactionalOutbox::new(settings(&mock, &[]), format!("txn-{error:?}"), &options());
    outbox.connect().unwrap();
    mock.request_errors(RDKafkaApiKey::AddPartitionsToTxn, &[error]);
    let result = outbox.deliver(batch(&[message(b"a")], &[0]));
    (mock, outbox, result)
}

#[test]
fn a_producer_fenced_by_a_live_rival_is_reported_as_fenced() {
    // The coordinator says another producer took this transactional.id over.
    let (_mock, _, result) = deliver_against(RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED);
    assert!(matches!(result, Err(OutboxError::Fenced(_))), "{result:?}");
    assert!(result.unwrap_err().is_permanent());
}

#[test]
fn an_abortable_error_aborts_and_the_same_producer_commits_the_retry() {
    let (mock, mut outbox, result) = deliver_against(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
    assert!(matches!(result, Err(OutboxError::Aborted(_))), "{result:?}");
    assert!(!outbox.connect().unwrap(), "an aborted transaction keeps its producer");
    assert_eq!(outbox.deliver(batch(&[message(b"b")], &[0])).unwrap(), Delivered::WithOffsets);
    assert_eq!(committed_payloads(&mock, 1), vec![b"b".to_vec()], "the aborted message is not visible");
}

#[test]
fn a_fatal_error_that_is_not_fencing_replaces_the_producer() {
    let (mock, mut outbox, result) =
        deliver_against(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    assert!(matches!(result, Err(OutboxError::ProducerLost(_))), "{result:?}");
    assert!(outbox.connect().unwrap(), "a new producer is made ready");
    assert_eq!(outbox.deliver(batch(&[message(b"b")], &[0])).unwrap(), Delivered::WithOffsets);
    assert_eq!(committed_payloads(&mock, 1), vec![b"b".to_vec()]);
}

#[test]
fn the_idempotent_outbox_delivers_and_leaves_offsets_to_the_caller() {
    let mock = cluster();
    let mut outbox = IdempotentOutbox::new(settings(&mock, &[]), &options());
    assert_eq!(outbox.deliver(batch(&[message(b"a")], &[0])).unwrap(), Delivered::MessagesOnly);
    assert_eq!(committed_payloads(&mock, 1), vec![b"a".to_vec()]);
}

#[test]
fn at_least_once_names_the_messages_kafka_did_not_take() {
    let mock = cluster();
    let mut outbox = IdempotentOutbox::new(settings(&mock, &[("message.max.bytes", "2000")]), &options());
    let big = vec![b'x'; 5000];
    match outbox.deliver(batch(&[message(b"a"), message(&big)], &[0, 1])) {
        Err(OutboxError::Undelivered { failed }) => assert_eq!(failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]),
        other => panic!("expected message 1 undelivered, got {other:?}"),
    }
}

/// librdkafka #5456: with the group coordinator gone, `send_offsets_to_transaction` blocks far
/// past its timeout (a bare producer here: over a minute with a 2 s timeout). The outbox must
/// come back anyway, report the batch's fate as open, and deliver with a new producer.
#[test]
fn a_send_offsets_call_librdkafka_never_returns_from_replaces_the_producer() {
    use rdkafka::mocking::MockCoordinator;
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic(TOPIC, 1, 1).unwrap();
    mock.create_topic("source", 1, 1).unwrap();
    mock.partition_leader(TOPIC, 0, Some(1)).unwrap();
    mock.coordinator(MockCoordinator::Transaction("txn-stuck".into()), 1).unwrap();
    mock.coordinator(MockCoordinator::Group("g".into()), 2).unwrap();
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).set("group.id", "g").create().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset("source", 0, rdkafka::Offset::Offset(5)).unwrap();
    let offsets = Offsets { list, group: consumer.group_metadata().map(std::sync::Arc::new) };
    let options =
        ProducerOptions { txn: TxnTimeouts { transaction_ms: 60_000, operation: Duration::from_secs(1) }, ..options() };
    let mut outbox = TransactionalOutbox::new(settings(&mock, &[]), "txn-stuck".into(), &options);
    outbox.connect().unwrap();
    mock.broker_down(2).unwrap();

    // On a thread, so that a hang fails the test instead of blocking it forever.
    let (done, result) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let messages = [message(b"a")];
        let first = outbox.deliver(OutBatch { messages: &messages, indices: &[0], offsets: Some(&offsets) });
        done.send(first.map_err(|e| e.to_string())).unwrap();
        (outbox, offsets)
    });
    let first = result.recv_timeout(Duration::from_secs(60)).expect("deliver came back despite the stuck call");
    let (mut outbox, offsets) = worker.join().unwrap();
    assert!(first.as_ref().is_err_and(|e| e.starts_with("the producer failed and will be replaced")), "{first:?}");

    mock.broker_up(2).unwrap();
    assert!(outbox.connect().unwrap(), "a new producer replaces the abandoned one");
    let messages = [message(b"b")];
    let again = outbox.deliver(OutBatch { messages: &messages, indices: &[0], offsets: Some(&offsets) });
    assert_eq!(again.unwrap(), Delivered::WithOffsets);
    // Only "b" is checked: librdkafka's mock coordinator writes no abort markers for a fenced
    // producer's open transaction, as a real one does (tests/outage.rs counts duplicates there).
    assert!(committed_payloads(&mock, 2).contains(&b"b".to_vec()), "the batch is delivered after the stuck call");
}
