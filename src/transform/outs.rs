//! What one batch of raw messages becomes: rows, and dead letters for what cannot be read —
//! or for what Kafka refuses ([`Poisoned`]).

use std::borrow::Cow;
use std::collections::HashMap;

use rdkafka::message::{Message, OwnedMessage};

use super::row::{Row, Transformer};
use crate::kafka::{self, headers, KafkaSettings, OutMessage};

/// One output of the batch.
pub enum Out {
    /// A row of the raw message at `source` in the batch.
    Row { row: Row, source: usize },
    /// The raw message at `index` of the batch goes to the dead-letter topic, for `reason`;
    /// `bare`: without its key and payload (even a dead letter with them was refused).
    DeadLetter { index: usize, reason: String, bare: bool },
    /// Kafka refused even the bare dead letter of the raw message at `index`: it is dropped
    /// (logged and counted), so that its partition moves on.
    Dropped { index: usize },
}

impl Out {
    /// The raw message this output comes from.
    pub fn source(&self) -> usize {
        match self {
            Out::Row { source, .. } => *source,
            Out::DeadLetter { index, .. } | Out::Dropped { index } => *index,
        }
    }
}

/// Where a raw message is: topic, partition, offset.
type Position = (String, i32, i64);

fn position(msg: &OwnedMessage) -> Position {
    (msg.topic().to_string(), msg.partition(), msg.offset())
}

/// Raw messages whose outputs Kafka refused for what they are (a row too large, say), with
/// how often and why, so that a batch holding one is not retried forever: after
/// [`Poisoned::ATTEMPTS`] refusals its rows are replaced by a dead letter, after as many more a
/// refused dead letter by a bare one (no key, no payload), and a refused bare one by nothing.
#[derive(Debug, Default)]
pub struct Poisoned {
    refusals: HashMap<Position, (u32, String)>,
}

impl Poisoned {
    /// Refusals of one raw message's outputs before they are replaced.
    pub const ATTEMPTS: u32 = 3;

    /// Notes that Kafka refused an output of `raw` for `reason`.
    pub fn refused(&mut self, raw: &OwnedMessage, reason: String) {
        let entry = self.refusals.entry(position(raw)).or_insert((0, String::new()));
        entry.0 += 1;
        entry.1 = reason;
    }

    /// Forgets the messages of a batch that went through.
    pub fn delivered(&mut self, batch: &[OwnedMessage]) {
        if !self.refusals.is_empty() {
            for m in batch {
                self.refusals.remove(&position(m));
            }
        }
    }

    /// How far `raw`'s outputs are replaced (0 not at all, 1 dead letter, 2 bare dead letter,
    /// 3 dropped), with the last refusal's reason.
    fn stage(&self, raw: &OwnedMessage) -> (u32, &str) {
        // Asked for every raw message: no position built while nothing was ever refused.
        if self.refusals.is_empty() {
            return (0, "");
        }
        match self.refusals.get(&position(raw)) {
            Some((n, reason)) => (n / Self::ATTEMPTS, reason.as_str()),
            None => (0, ""),
        }
    }
}

/// Transforms every raw message of `batch`, in order; a message Kafka refused too often gets
/// its replacement instead (see [`Poisoned`]).
pub fn transform_batch(transformer: &mut Transformer, batch: &[OwnedMessage], poisoned: &Poisoned) -> Vec<Out> {
    let mut outs = Vec::new();
    let mut rows = Vec::new();
    for (index, msg) in batch.iter().enumerate() {
        rows.clear();
        match poisoned.stage(msg) {
            (0, _) => {}
            (1, why) => {
                let reason = format!("Kafka refuses this message's rows: {why}");
                outs.push(Out::DeadLetter { index, reason, bare: false });
                continue;
            }
            (2, why) => {
                let reason = format!("Kafka refuses this message and its dead letter: {why}");
                outs.push(Out::DeadLetter { index, reason, bare: true });
                continue;
            }
            _ => {
                outs.push(Out::Dropped { index });
                continue;
            }
        }
        match msg.payload() {
            None => outs.push(Out::DeadLetter { index, reason: "the message has no payload".into(), bare: false }),
            Some(raw) => match transformer.transform(raw, &mut rows) {
                Ok(_) => outs.extend(rows.drain(..).map(|row| Out::Row { row, source: index })),
                Err(e) => outs.push(Out::DeadLetter { index, reason: e.to_string(), bare: false }),
            },
        }
    }
    outs
}

/// The messages to produce for `outs`, index for index (a dropped output becomes nothing, so
/// the caller maps indices back through [`message_sources`]): rows to the transformed topic,
/// dead letters (the raw message, its key, the reason and where it came from) to the
/// dead-letter topic.
pub fn messages<'a>(kafka: &'a KafkaSettings, batch: &'a [OwnedMessage], outs: &'a [Out]) -> Vec<OutMessage<'a>> {
    outs.iter()
        .filter_map(|out| match out {
            Out::Row { row, .. } => Some(OutMessage {
                topic: &kafka.transformed_topic,
                key: Some(&row.key[..]),
                payload: Some(&row.value[..]),
                headers: Vec::new(),
            }),
            Out::DeadLetter { index, reason, bare } => Some(dead_letter(kafka, &batch[*index], reason, *bare)),
            Out::Dropped { .. } => None,
        })
        .collect()
}

/// For each message [`messages`] makes, the index of its raw message in the batch.
pub fn message_sources(outs: &[Out]) -> Vec<usize> {
    outs.iter().filter(|o| !matches!(o, Out::Dropped { .. })).map(Out::source).collect()
}

fn dead_letter<'a>(kafka: &'a KafkaSettings, raw: &'a OwnedMessage, reason: &str, bare: bool) -> OutMessage<'a> {
    let source = format!("{}/{}/{}", raw.topic(), raw.partition(), raw.offset());
    // A foreign message too large to forward with our headers would stall the partition
    // forever; forward the reason and where to find it instead.
    let limit = kafka.max_message_bytes().saturating_sub(kafka::MESSAGE_OVERHEAD_BYTES);
    let payload = raw.payload().filter(|p| p.len() <= limit && !bare);
    let reason = match raw.payload() {
        Some(p) if payload.is_none() && !bare => {
            format!("{reason} (payload of {} bytes not copied: too large)", p.len())
        }
        _ => reason.to_string(),
    };
    OutMessage {
        topic: &kafka.dead_letter_topic,
        key: raw.key().filter(|_| !bare),
        payload,
        headers: vec![
            (headers::ERROR, Cow::Owned(reason.into_bytes())),
            (headers::SOURCE, Cow::Owned(source.into_bytes())),
        ],
    }
}
