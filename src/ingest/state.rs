//! What the handlers share: the WAL writer, settings, live status (the stages' own, and the
//! history and recent errors the status page shows), and whether this collector should take
//! traffic right now.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use super::ack::Ack;
use super::auth::{ApiKeys, HoldsApiKeys};
use super::body::BodyLimits;
use super::cors::Cors;
use super::history::{History, Totals};
use super::summary::ConfigSummary;
use super::validate::EventLimits;
use super::IngestError;
use crate::flush::FlushStatus;
use crate::heal::DiskWatch;
use crate::kafka::KafkaLink;
use crate::telemetry::RecentErrors;
use crate::transform::TransformStatus;
use crate::wal::{LogStore, WalFault, WalHealth, WalWriter};

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
    /// Most open connections; one more is answered `503 too_many_connections` and closed.
    pub max_connections: usize,
    /// Most `/collect` requests being read, validated or written at once; one more is answered
    /// `503 overloaded`. With the body limit it bounds the memory requests can hold.
    pub max_in_flight: usize,
    /// Keys `/collect` requires; empty: open.
    pub api_keys: ApiKeys,
    /// Origins whose pages may post from a browser; none: no CORS headers.
    pub cors: Cors,
    /// When `/collect` answers 2xx.
    pub ack: Ack,
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
    /// Permits for `/collect` requests in flight (`max_in_flight`).
    pub in_flight: Arc<Semaphore>,
    /// Bytes of bodies read but not yet in the WAL: counted against the quota, so requests
    /// arriving together cannot overshoot it.
    pub reserved_bytes: AtomicU64,
    /// Whether the WAL's storage failed or stalls.
    pub health: Arc<WalHealth>,
    /// Free space on the WAL's filesystem.
    pub disk: Arc<DiskWatch>,
    /// Requests and events accepted since start, for the status page's history.
    pub accepted: Accepted,
    /// The transform worker's status, when it runs in this process (`collector run`).
    pub transform: Option<Arc<TransformStatus>>,
    /// Every stage's last errors.
    pub errors: Arc<RecentErrors>,
    /// Throughput and backlog, a sample a second (see `history.rs`).
    pub history: History,
    /// The configuration, as the status page shows it.
    pub summary: ConfigSummary,
}

/// Requests and events accepted since start: readable copies of the Prometheus counters (which
/// cannot be read back), one relaxed add each per accepted request.
#[derive(Debug, Default)]
pub struct Accepted {
    requests: AtomicU64,
    events: AtomicU64,
}

impl Accepted {
    /// One more request with `events` events is in the WAL.
    pub fn add(&self, events: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
    }
}

impl HoldsApiKeys for IngestState {
    fn api_keys(&self) -> &ApiKeys {
        &self.options.api_keys
    }
}

impl IngestState {
    /// Reserves `bytes` of the WAL quota for a body about to be appended; the reservation ends
    /// when the guard is dropped (the record is then counted by the WAL itself).
    ///
    /// Refuses exactly when [`IngestState::unready`] says `WalFull` counting the reservations
    /// of requests ahead of this one, so `/collect` and `/readyz` agree: the quota is soft, and
    /// may be overshot by the bodies in flight (at most `max_in_flight` × the body limit).
    ///
    /// # Errors
    /// [`IngestError::WalFull`] if the WAL and the reservations ahead already fill the quota.
    pub fn reserve(&self, bytes: usize) -> Result<Reservation<'_>, IngestError> {
        let bytes = bytes as u64;
        let ahead = self.reserved_bytes.fetch_add(bytes, Ordering::AcqRel);
        if self.full(ahead) {
            self.reserved_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(IngestError::WalFull);
        }
        Ok(Reservation { state: self, bytes })
    }
}

/// A share of the WAL quota held by one request until its append is done.
pub struct Reservation<'a> {
    state: &'a IngestState,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.state.reserved_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Why the collector should not get traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unready {
    /// Shutdown started.
    Draining,
    /// The WAL holds its quota of undelivered data, or its disk is down to the free space kept.
    WalFull,
    /// The WAL's storage failed (until it is reopened) or a group commit is stalled.
    WalUnavailable,
    /// `--ack kafka` only: the flusher cannot reach Kafka, so no request could be confirmed.
    KafkaUnavailable,
}

impl Unready {
    /// The reason as `/readyz` reports it.
    pub fn reason(self) -> &'static str {
        match self {
            Unready::Draining => "draining",
            Unready::WalFull => "wal_full",
            Unready::WalUnavailable => "wal_unavailable",
            Unready::KafkaUnavailable => "kafka_unavailable",
        }
    }
}

impl From<Unready> for IngestError {
    fn from(u: Unready) -> Self {
        match u {
            Unready::Draining => IngestError::Draining,
            Unready::WalFull => IngestError::WalFull,
            Unready::WalUnavailable => IngestError::WalUnavailable,
            Unready::KafkaUnavailable => IngestError::KafkaUnavailable,
        }
    }
}

impl IngestState {
    /// The one readiness check: `/collect` refuses and `/readyz` turns unready for the same
    /// reasons.
    pub fn unready(&self) -> Option<Unready> {
        if self.draining.load(Ordering::Acquire) {
            Some(Unready::Draining)
        } else if self.health.fault().is_some() {
            Some(Unready::WalUnavailable)
        } else if self.full(self.reserved_bytes.load(Ordering::Acquire)) {
            Some(Unready::WalFull)
        } else if self.options.ack.waits_for_kafka() && self.flush.failing() {
            Some(Unready::KafkaUnavailable)
        } else {
            None
        }
    }

    /// Whether the WAL, with `reserved` bytes more, reaches its quota or its disk's headroom.
    fn full(&self, reserved: u64) -> bool {
        let live = self.log.live_bytes();
        live + reserved >= self.options.max_wal_bytes || self.disk.low(live, reserved)
    }

    /// The WAL's fault, for the status page.
    pub fn wal_fault(&self) -> Option<WalFault> {
        self.health.fault()
    }

    /// The counters of every stage in this process, now.
    pub fn totals(&self) -> Totals {
        Totals {
            requests_accepted: self.accepted.requests.load(Ordering::Relaxed),
            events_accepted: self.accepted.events.load(Ordering::Relaxed),
            records_delivered: self.flush.delivered_records(),
            rows_transformed: self.transform.as_ref().map_or(0, |t| t.rows()),
        }
    }

    /// The Kafka clients of the stages in this process: the flusher's producer, and the
    /// transform's consumer and producer.
    pub fn kafka_links(&self) -> Vec<&KafkaLink> {
        let mut links = vec![&*self.flush.link];
        if let Some(t) = &self.transform {
            links.extend([&*t.consumer, &*t.producer]);
        }
        links
    }
}
