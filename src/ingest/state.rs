//! What the handlers share: the WAL writer, settings, live status, and whether this collector
//! should take traffic right now.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;

use super::body::BodyLimits;
use super::validate::EventLimits;
use super::IngestError;
use crate::flush::FlushStatus;
use crate::wal::{LogStore, WalWriter};

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub body: BodyLimits,
    /// Events per request, field, ctx and row sizes.
    pub limits: EventLimits,
    /// A connection that has not sent complete request headers within this time is closed
    /// (slowloris protection).
    pub header_timeout: Duration,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_grace: Duration,
    /// WAL quota: above this many bytes of undelivered segments, `/collect` answers 503.
    pub max_wal_bytes: u64,
}

/// Shared state of the handlers.
pub struct IngestState {
    pub writer: WalWriter,
    pub log: Arc<dyn LogStore>,
    pub options: ServerOptions,
    /// Set when shutdown starts: `/collect` answers 503 and `/readyz` turns unready, so load
    /// balancers move traffic away while in-flight requests finish.
    pub draining: AtomicBool,
    pub node_id: String,
    pub started: Instant,
    pub metrics: PrometheusHandle,
    pub flush: Arc<FlushStatus>,
}

/// Why the collector should not get traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unready {
    /// Shutdown started.
    Draining,
    /// The WAL holds its quota of undelivered data.
    WalFull,
}

impl Unready {
    /// The reason as `/readyz` reports it.
    pub fn reason(self) -> &'static str {
        match self {
            Unready::Draining => "draining",
            Unready::WalFull => "wal_full",
        }
    }
}

impl From<Unready> for IngestError {
    fn from(u: Unready) -> Self {
        match u {
            Unready::Draining => IngestError::Draining,
            Unready::WalFull => IngestError::WalFull,
        }
    }
}

impl IngestState {
    /// The one readiness check: `/collect` refuses and `/readyz` turns unready for the same
    /// reasons.
    pub fn unready(&self) -> Option<Unready> {
        if self.draining.load(Ordering::Acquire) {
            Some(Unready::Draining)
        } else if self.log.live_bytes() >= self.options.max_wal_bytes {
            Some(Unready::WalFull)
        } else {
            None
        }
    }
}
