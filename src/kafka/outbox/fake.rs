//! A scripted [`Outbox`] for unit tests of the stages: each `deliver` takes the next step of
//! the script (commit, or fail with a given error) and records what it was asked to send.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::{Delivered, OutBatch, Outbox, OutboxError};

/// What the fake does on one `deliver`.
#[derive(Debug)]
pub enum Step {
    /// Takes the batch (and the offsets).
    Commit,
    /// Fails with this error; the batch is not taken.
    Fail(OutboxError),
}

/// One message as the fake saw it: topic, key, payload, headers.
pub type SeenMessage = (String, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// One committed batch as the fake saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub messages: Vec<SeenMessage>,
    /// (topic, partition, offset) of each committed offset.
    pub offsets: Vec<(String, i32, i64)>,
}

#[derive(Debug, Default)]
pub struct FakeOutbox {
    script: VecDeque<Step>,
    /// The indices each `deliver` was asked to send.
    pub attempts: Vec<Vec<usize>>,
    pub committed: Vec<Committed>,
    /// How many producers were made ready (the first included).
    pub producers: usize,
    /// How often the caller itself asked for a producer (`connect`), not counting `deliver`'s
    /// own connecting.
    pub connects: usize,
    /// `deliver: ok` / `deliver: failed` in order; shared with other fakes (a source) so a test
    /// can check the order of everything that happened.
    pub journal: Arc<Mutex<Vec<String>>>,
    connected: bool,
    /// Behaves like the at-least-once outbox: offsets are left to the caller.
    at_least_once: bool,
}

impl FakeOutbox {
    /// A fake that follows `script`, then commits everything.
    pub fn new(script: Vec<Step>) -> Self {
        FakeOutbox { script: script.into(), ..Default::default() }
    }

    /// Like [`FakeOutbox::new`], but commits no offsets, as the at-least-once outbox.
    pub fn at_least_once(script: Vec<Step>) -> Self {
        FakeOutbox { at_least_once: true, ..Self::new(script) }
    }
}

impl FakeOutbox {
    fn ensure_producer(&mut self) -> bool {
        if self.connected {
            return false;
        }
        self.connected = true;
        self.producers += 1;
        true
    }

    fn note(&self, what: &str) {
        self.journal.lock().unwrap().push(what.to_string());
    }
}

impl Outbox for FakeOutbox {
    fn connect(&mut self) -> Result<bool, OutboxError> {
        self.connects += 1;
        Ok(self.ensure_producer())
    }

    fn deliver(&mut self, batch: OutBatch<'_>) -> Result<Delivered, OutboxError> {
        self.ensure_producer();
        let offsets = batch.offsets.filter(|_| !self.at_least_once);
        self.attempts.push(batch.indices.to_vec());
        match self.script.pop_front().unwrap_or(Step::Commit) {
            Step::Fail(e) => {
                if matches!(e, OutboxError::ProducerLost(_) | OutboxError::Fenced(_)) {
                    self.connected = false;
                }
                self.note("deliver: failed");
                Err(e)
            }
            Step::Commit => {
                self.note("deliver: ok");
                self.committed.push(Committed {
                    messages: batch
                        .indices
                        .iter()
                        .map(|&i| {
                            let m = &batch.messages[i];
                            (
                                m.topic.to_string(),
                                m.key.map(<[u8]>::to_vec),
                                m.payload.map(<[u8]>::to_vec),
                                m.headers.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect(),
                            )
                        })
                        .collect(),
                    offsets: offsets
                        .map(|o| {
                            o.list
                                .elements()
                                .iter()
                                .map(|e| (e.topic().to_string(), e.partition(), e.offset().to_raw().unwrap_or(-1)))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
                Ok(if offsets.is_some() { Delivered::WithOffsets } else { Delivered::MessagesOnly })
            }
        }
    }
}
