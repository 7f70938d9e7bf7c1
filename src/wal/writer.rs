//! Group commit: many concurrent appends, one fsync.
//!
//! Requests hand their framed record to a single writer thread over a channel. The thread takes
//! everything that is waiting (up to `max_batch`), appends it in one sled batch, fsyncs once and
//! then answers every waiter. While one fsync runs, the next group queues up, so the number of
//! fsyncs per second stays bounded by the disk, not by the request rate.
//!
//! Idempotency keys are resolved here, on the single writer thread, so two concurrent requests
//! with the same key cannot both be stored: the first is stored, the second answered with the
//! first one's sequence number once it is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::error;

use super::guard::WalHealth;
use super::idempotency::Fingerprint;
use super::log::LogStore;
use super::{IdempotencyKey, WalError};

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored now under this sequence number; durable.
    Stored(u64),
    /// The idempotency key was already stored with the same body, under this sequence number
    /// (durable); nothing new was stored.
    Duplicate(u64),
    /// The idempotency key was already used for a different body; nothing was stored.
    KeyReused,
}

struct AppendRequest {
    frame: Vec<u8>,
    key: Option<IdempotencyKey>,
    reply: Reply,
}

/// Where a request's outcome goes.
type Reply = oneshot::Sender<Result<Appended, WalError>>;

/// Cloneable handle to the group-commit writer.
#[derive(Clone)]
pub struct WalWriter {
    tx: mpsc::Sender<AppendRequest>,
    durable: watch::Receiver<u64>,
    /// How long [`WalWriter::append`] waits for the outcome.
    deadline: Duration,
}

impl WalWriter {
    /// Starts the writer thread. It stops once every `WalWriter` clone is dropped. `health`
    /// learns when each group commit starts and ends, and gives the append deadline.
    pub fn start(log: Arc<dyn LogStore>, max_batch: usize, health: Arc<WalHealth>) -> Self {
        let initial = log.stats().next_seq - 1;
        let (durable_tx, durable) = watch::channel(initial);
        // The queue bound is the backpressure point: beyond it, requests wait to be queued.
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let deadline = health.append_deadline();
        thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || commit_loop(log, rx, durable_tx, max_batch, &health))
            .expect("spawning the WAL writer thread");
        WalWriter { tx, durable, deadline }
    }

    /// Appends one framed record (with an optional idempotency key) and answers once the
    /// outcome is durable, or once the deadline passed: a stalled disk never holds a request.
    ///
    /// # Errors
    /// [`WalError::Closed`] if the writer is gone, [`WalError::TimedOut`] past the deadline
    /// (the record may still be stored later; the client was told it was not, and retries),
    /// or the storage error of the group commit.
    pub async fn append(&self, frame: Vec<u8>, key: Option<IdempotencyKey>) -> Result<Appended, WalError> {
        let (reply, rx) = oneshot::channel();
        let appended = async {
            self.tx.send(AppendRequest { frame, key, reply }).await.map_err(|_| WalError::Closed)?;
            rx.await.map_err(|_| WalError::Closed)?
        };
        tokio::time::timeout(self.deadline, appended)
            .await
            .map_err(|_| WalError::TimedOut(self.deadline.as_millis() as u64))?
    }

    /// Follows the highest sequence number known to be durable.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }
}

/// How one request of a group is answered once the group is durable.
enum Pending {
    /// Its frame is at this index of the group.
    Stored(usize),
    /// Same key and body as the frame at this index of the group.
    DuplicateInGroup(usize),
    /// Already answered by the log's key index.
    Known(Result<Appended, WalError>),
}

/// One group of requests, resolved: what to store and how to answer each request.
struct Group {
    /// The frames to append, in order.
    frames: Vec<Vec<u8>>,
    /// Idempotency keys to store with the frame at that index of `frames`.
    keys: Vec<(usize, IdempotencyKey)>,
    /// Every request's answer-to-be and where to send it, in arrival order.
    answers: Vec<(Pending, Reply)>,
    /// Keys stored by this group so far, by (scope, key) → (frame index, body fingerprint), so
    /// that a second request with the same key in the same group is not stored again.
    in_group: HashMap<(Vec<u8>, Vec<u8>), (usize, Fingerprint)>,
}

/// The writer thread: gather a group, resolve its idempotency keys, commit it with one fsync,
/// answer every request; until every [`WalWriter`] is gone.
fn commit_loop(
    log: Arc<dyn LogStore>,
    mut rx: mpsc::Receiver<AppendRequest>,
    durable_tx: watch::Sender<u64>,
    max_batch: usize,
    health: &WalHealth,
) {
    let mut requests = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        gather(&mut rx, first, &mut requests, max_batch);
        health.commit_started();
        let group = Group::resolve(log.as_ref(), requests.drain(..));
        let outcome = commit(log.as_ref(), &group, &durable_tx);
        health.commit_ended();
        answer(group.answers, &outcome);
    }
}

/// Takes `first` and whatever else is already waiting, up to `max_batch` requests.
fn gather(
    rx: &mut mpsc::Receiver<AppendRequest>,
    first: AppendRequest,
    into: &mut Vec<AppendRequest>,
    max_batch: usize,
) {
    into.push(first);
    while into.len() < max_batch {
        match rx.try_recv() {
            Ok(req) => into.push(req),
            Err(_) => break,
        }
    }
}

impl Group {
    /// Decides for each request whether its frame is stored or its key already answers it.
    fn resolve(log: &dyn LogStore, requests: impl Iterator<Item = AppendRequest>) -> Self {
        let n = requests.size_hint().0;
        let mut group = Group {
            frames: Vec::with_capacity(n),
            keys: Vec::new(),
            answers: Vec::with_capacity(n),
            in_group: HashMap::new(),
        };
        for req in requests {
            let known = req.key.as_ref().and_then(|k| group.resolve_key(log, k));
            let pending = known.unwrap_or_else(|| {
                group.frames.push(req.frame);
                Pending::Stored(group.frames.len() - 1)
            });
            group.answers.push((pending, req.reply));
        }
        group
    }

    /// How a request with key `k` is answered without storing it: a duplicate of this group or
    /// of the log, or a key reused for another body. `None` if it is to be stored, with its key.
    fn resolve_key(&mut self, log: &dyn LogStore, k: &IdempotencyKey) -> Option<Pending> {
        let scoped = (k.scope.clone(), k.key.clone());
        match self.in_group.get(&scoped) {
            Some(&(index, fp)) if fp == k.fingerprint => Some(Pending::DuplicateInGroup(index)),
            Some(_) => Some(Pending::Known(Ok(Appended::KeyReused))),
            None => match log.lookup_key(&k.scope, &k.key) {
                Ok(Some(rec)) if rec.fingerprint == k.fingerprint => {
                    Some(Pending::Known(Ok(Appended::Duplicate(rec.seq))))
                }
                Ok(Some(_)) => Some(Pending::Known(Ok(Appended::KeyReused))),
                Ok(None) => {
                    self.in_group.insert(scoped, (self.frames.len(), k.fingerprint));
                    self.keys.push((self.frames.len(), k.clone()));
                    None
                }
                Err(e) => Some(Pending::Known(Err(e))),
            },
        }
    }
}

/// Appends the group's frames as one batch, fsyncs once and publishes the new durable
/// position. Returns the first frame's sequence number.
fn commit(log: &dyn LogStore, group: &Group, durable_tx: &watch::Sender<u64>) -> Result<u64, WalError> {
    let frames = &group.frames;
    let started = std::time::Instant::now();
    let outcome = log.append(frames, &group.keys).and_then(|first_seq| log.sync().map(|()| first_seq));
    crate::telemetry::wal_group_committed(frames.len(), started.elapsed());
    if let Ok(first_seq) = &outcome {
        if !frames.is_empty() {
            durable_tx.send_replace(first_seq + frames.len() as u64 - 1);
        }
    } else if let Err(e) = &outcome {
        error!(error = %e, records = frames.len(), "A WAL group commit failed; its requests get an error.");
    }
    outcome
}

/// Answers every request of a group once its commit has an outcome.
fn answer(answers: Vec<(Pending, Reply)>, outcome: &Result<u64, WalError>) {
    for (pending, reply) in answers {
        let answer = match (pending, outcome) {
            // A duplicate of a record stored by an earlier group is only answered 200 once
            // an fsync succeeded after it: this group's. (If that earlier group's fsync had
            // failed, its record is not known to be on disk.)
            (Pending::Known(Ok(Appended::Duplicate(_))), Err(e)) => Err(e.clone()),
            (Pending::Known(answer), _) => answer,
            (Pending::Stored(i), Ok(first)) => Ok(Appended::Stored(first + i as u64)),
            (Pending::DuplicateInGroup(i), Ok(first)) => Ok(Appended::Duplicate(first + i as u64)),
            (_, Err(e)) => Err(e.clone()),
        };
        // A waiter that went away (client disconnected) is fine: a stored record is durable
        // and will be delivered; the client retries, with its key if it sent one.
        let _ = reply.send(answer);
    }
}
