//! Group commit: many concurrent appends, one fsync.
//!
//! Requests hand their framed record to a single writer thread over a channel. The thread takes
//! everything that is waiting (up to `max_batch`), appends it in one sled batch, fsyncs once and
//! then answers every waiter. While one fsync runs, the next group queues up, so the number of
//! fsyncs per second stays bounded by the disk, not by the request rate.

use std::sync::Arc;
use std::thread;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::error;

use super::log::LogStore;
use super::WalError;

struct AppendRequest {
    frame: Vec<u8>,
    reply: oneshot::Sender<Result<u64, WalError>>,
}

/// Cloneable handle to the group-commit writer.
#[derive(Clone)]
pub struct WalWriter {
    tx: mpsc::Sender<AppendRequest>,
    durable: watch::Receiver<u64>,
}

impl WalWriter {
    /// Starts the writer thread. It stops once every `WalWriter` clone is dropped.
    pub fn start(log: Arc<dyn LogStore>, max_batch: usize) -> Self {
        let initial = log.stats().next_seq - 1;
        let (durable_tx, durable) = watch::channel(initial);
        // The queue bound is the backpressure point: beyond it, requests wait to be queued.
        let (tx, rx) = mpsc::channel(max_batch * 4);
        thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || commit_loop(log, rx, durable_tx, max_batch))
            .expect("spawning the WAL writer thread");
        WalWriter { tx, durable }
    }

    /// Appends one framed record and returns its sequence number once it is on disk.
    ///
    /// # Errors
    /// [`WalError::Closed`] if the writer is gone, or the storage error of the group commit.
    pub async fn append(&self, frame: Vec<u8>) -> Result<u64, WalError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(AppendRequest { frame, reply }).await.map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Follows the highest sequence number known to be durable.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }
}

fn commit_loop(
    log: Arc<dyn LogStore>,
    mut rx: mpsc::Receiver<AppendRequest>,
    durable_tx: watch::Sender<u64>,
    max_batch: usize,
) {
    let mut group = Vec::with_capacity(max_batch);
    let mut frames = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        group.push(first.reply);
        frames.push(first.frame);
        while group.len() < max_batch {
            match rx.try_recv() {
                Ok(req) => {
                    group.push(req.reply);
                    frames.push(req.frame);
                }
                Err(_) => break,
            }
        }
        let outcome = log.append(&frames).and_then(|first_seq| log.sync().map(|()| first_seq));
        crate::telemetry::wal_group_committed(frames.len());
        match outcome {
            Ok(first_seq) => {
                durable_tx.send_replace(first_seq + frames.len() as u64 - 1);
                for (i, reply) in group.drain(..).enumerate() {
                    // A waiter that went away (client disconnected) is fine: the record is durable
                    // and will be delivered; the client will retry and may duplicate.
                    let _ = reply.send(Ok(first_seq + i as u64));
                }
            }
            Err(e) => {
                error!(error = %e, records = frames.len(), "A WAL group commit failed; its requests get an error.");
                for reply in group.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        frames.clear();
    }
}
