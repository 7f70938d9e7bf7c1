//! The transform worker's batch step (`transform::outs`), given a raw-topic message payload: the
//! body as ingest stored it, or whatever another producer wrote. The input is the payload of
//! two messages of one batch, around the brief's sample and a message without payload, all
//! through one reused `Transformer`. Asserts:
//! - every raw message yields either its rows (at least one, exactly what the contract says,
//!   see [`collector_fuzz::check_rows`]) or exactly one dead letter whose reason is the schema's
//!   refusal; nothing is dropped, and outputs come in message order;
//! - a bad message harms neither the next one (the sample still becomes its row) nor itself
//!   read again (both copies of the input give the same outputs);
//! - the messages produced go where they belong: rows to the transformed topic keyed by
//!   `user_id`; dead letters to the dead-letter topic with the raw payload and key, the reason
//!   and the source position in their headers.

#![no_main]

use collector::kafka::headers;
use collector::schema;
use collector::transform::outs::{message_sources, messages, transform_batch, Out, Poisoned};
use collector::transform::{Row, Transformer};
use collector_fuzz::{check_rows, defaults, SAMPLE, SAMPLE_ROW};
use libfuzzer_sys::fuzz_target;
use rdkafka::message::{OwnedMessage, Timestamp};

const TOPIC: &str = "collect-topic1";

fn message(offset: i64, payload: Option<&[u8]>) -> OwnedMessage {
    let key = payload.map(|_| b"raw-key".to_vec());
    OwnedMessage::new(payload.map(<[u8]>::to_vec), key, TOPIC.into(), Timestamp::NotAvailable, 0, offset, None)
}

fuzz_target!(|data: &[u8]| {
    let batch = [message(0, Some(data)), message(1, Some(SAMPLE)), message(2, None), message(3, Some(data))];
    let mut transformer = Transformer::default();
    let outs = transform_batch(&mut transformer, &batch, &Poisoned::default());

    let sources: Vec<usize> = outs.iter().map(Out::source).collect();
    assert!(sources.windows(2).all(|w| w[0] <= w[1]), "outputs in message order: {sources:?}");
    let of = |index: usize| outs.iter().filter(move |o| o.source() == index).collect::<Vec<_>>();
    let (first, sample, empty, again) = (of(0), of(1), of(2), of(3));

    check_outputs(data, &first);
    assert_eq!(rows(&first), rows(&again), "the same payload read again gives the same rows");
    assert_eq!(reasons(&first), reasons(&again), "and the same dead letter");
    assert_eq!(rows(&sample).len(), 1, "the sample after the fuzzed message still becomes its row");
    assert_eq!((&rows(&sample)[0].key[..], &rows(&sample)[0].value[..]), (&b"user_test"[..], SAMPLE_ROW));
    assert_eq!(reasons(&empty), ["the message has no payload"]);

    let kafka = &defaults().kafka;
    let produced = messages(kafka, &batch, &outs);
    let from = message_sources(&outs);
    assert_eq!((produced.len(), from.len()), (outs.len(), outs.len()), "nothing dropped");
    for ((msg, out), source) in produced.iter().zip(&outs).zip(from) {
        assert_eq!(source, out.source());
        match out {
            Out::Row { row, .. } => {
                assert_eq!(msg.topic, kafka.transformed_topic);
                assert_eq!((msg.key, msg.payload), (Some(&row.key[..]), Some(&row.value[..])));
            }
            Out::DeadLetter { reason, .. } => {
                let raw = &batch[source];
                assert_eq!(msg.topic, kafka.dead_letter_topic);
                let limit = kafka.max_message_bytes() - collector::kafka::MESSAGE_OVERHEAD_BYTES;
                let payload = rdkafka::Message::payload(raw).filter(|p| p.len() <= limit);
                assert_eq!((msg.key, msg.payload), (rdkafka::Message::key(raw), payload));
                let header = |name: &str| msg.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_vec());
                assert_eq!(header(headers::ERROR), Some(reason.as_bytes().to_vec()));
                assert_eq!(header(headers::SOURCE), Some(format!("{TOPIC}/0/{source}").into_bytes()));
            }
            Out::Dropped { .. } => unreachable!("nothing dropped"),
        }
    }
});

/// One raw message's outputs: its rows (checked against serde_json's reading when the body is
/// strict), or one dead letter with the schema's reason.
fn check_outputs(raw: &[u8], outs: &[&Out]) {
    let mut scratch = raw.to_vec();
    match schema::parse_request(&mut scratch) {
        Ok(request) => {
            assert_eq!(
                (outs.len(), rows(outs).len()),
                (request.events.len(), request.events.len()),
                "one row per event"
            );
            // Only a strict body has one reading for every parser (ingest stores no other); a
            // foreign message with duplicate keys is read the schema's way, which serde_json's
            // may not match.
            if schema::strict::check(raw).is_ok() {
                check_rows(raw, &rows(outs));
            }
        }
        Err(invalid) => {
            assert_eq!(outs.len(), 1, "one output for an unreadable message");
            assert_eq!(reasons(outs), [invalid.to_string()], "one dead letter, the schema's reason");
        }
    }
}

fn rows(outs: &[&Out]) -> Vec<Row> {
    outs.iter()
        .filter_map(|o| match o {
            Out::Row { row, .. } => Some(row.clone()),
            _ => None,
        })
        .collect()
}

fn reasons(outs: &[&Out]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            Out::DeadLetter { reason, bare: false, .. } => Some(reason.clone()),
            Out::DeadLetter { bare: true, .. } => panic!("a bare dead letter without refusals"),
            _ => None,
        })
        .collect()
}
