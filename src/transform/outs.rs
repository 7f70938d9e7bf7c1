//! What one batch of raw messages becomes: rows, and dead letters for what cannot be read.

use std::borrow::Cow;

use rdkafka::message::{Message, OwnedMessage};

use super::row::{Row, Transformer};
use crate::kafka::{self, headers, KafkaSettings, OutMessage};

/// One output of the batch.
pub enum Out {
    Row(Row),
    /// The raw message at `index` of the batch could not be read, for `reason`.
    DeadLetter {
        index: usize,
        reason: String,
    },
}

/// Transforms every raw message of `batch`, in order.
pub fn transform_batch(transformer: &mut Transformer, batch: &[OwnedMessage]) -> Vec<Out> {
    let mut outs = Vec::new();
    let mut rows = Vec::new();
    for (index, msg) in batch.iter().enumerate() {
        rows.clear();
        match msg.payload() {
            None => outs.push(Out::DeadLetter { index, reason: "the message has no payload".into() }),
            Some(raw) => match transformer.transform(raw, &mut rows) {
                Ok(_) => outs.extend(rows.drain(..).map(Out::Row)),
                Err(e) => outs.push(Out::DeadLetter { index, reason: e.to_string() }),
            },
        }
    }
    outs
}

/// The messages to produce for `outs`: rows to the transformed topic, dead letters (the raw
/// message, its key, the reason and where it came from) to the dead-letter topic.
pub fn messages<'a>(kafka: &'a KafkaSettings, batch: &'a [OwnedMessage], outs: &'a [Out]) -> Vec<OutMessage<'a>> {
    outs.iter()
        .map(|out| match out {
            Out::Row(row) => OutMessage {
                topic: &kafka.transformed_topic,
                key: Some(&row.key[..]),
                payload: Some(&row.value[..]),
                headers: Vec::new(),
            },
            Out::DeadLetter { index, reason } => dead_letter(kafka, &batch[*index], reason),
        })
        .collect()
}

fn dead_letter<'a>(kafka: &'a KafkaSettings, raw: &'a OwnedMessage, reason: &str) -> OutMessage<'a> {
    let source = format!("{}/{}/{}", raw.topic(), raw.partition(), raw.offset());
    // A foreign message too large to forward with our headers would stall the partition
    // forever; forward the reason and where to find it instead.
    let limit = kafka.max_message_bytes().saturating_sub(kafka::MESSAGE_OVERHEAD_BYTES);
    let payload = raw.payload().filter(|p| p.len() <= limit);
    let reason = match raw.payload() {
        Some(p) if payload.is_none() => format!("{reason} (payload of {} bytes not copied: too large)", p.len()),
        _ => reason.to_string(),
    };
    OutMessage {
        topic: &kafka.dead_letter_topic,
        key: raw.key(),
        payload,
        headers: vec![
            (headers::ERROR, Cow::Owned(reason.into_bytes())),
            (headers::SOURCE, Cow::Owned(source.into_bytes())),
        ],
    }
}
