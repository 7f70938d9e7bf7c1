//! Wiring: builds the stages from a validated configuration and runs them until shutdown.
//!
//! Shutdown order (graceful drain): stop taking requests (`/collect` and `/readyz` answer 503),
//! finish in-flight requests, let the flusher deliver what the WAL holds until the drain
//! deadline, then stop the transform worker. Nothing acknowledged is lost if the deadline hits:
//! it stays in the WAL for the next start.
//!
//! Before anything starts, [`crate::kafka::preflight`] asks Kafka for its metadata: if Kafka
//! refuses the TLS or SASL configuration, the start fails with a sentence naming the settings to
//! fix; if Kafka is merely unreachable, the start goes on.
//!
//! A stage that stops by itself with an error (invalid Kafka configuration, or fenced by another
//! process with the same node id) starts that same drain: a collector whose flusher is gone
//! must not keep acknowledging requests it will never deliver. The error is returned by
//! [`Pipeline::stop`], so the process exits non-zero.
//!
//! The admin listener (status page, `/metrics`, `/healthz`, `/readyz`) keeps serving through the
//! drain, so its progress can be watched, and stops once the stages have; it is given
//! [`ADMIN_EXIT_GRACE`] for requests in flight.
//!
//! How long shutdown takes at most ([`PipelineConfig::longest_shutdown`]): the in-flight
//! requests' grace, the drain deadline, [`STAGE_EXIT_GRACE`] for the flusher and again for the
//! transform worker, [`ADMIN_EXIT_GRACE`] and [`RUNTIME_EXIT_GRACE`]: with the defaults
//! 5 + 15 + 3 + 3 + 0.25 + 0.5 = 26.75 s, inside the 30 s an orchestrator usually grants between
//! SIGTERM and SIGKILL (Kubernetes' `terminationGracePeriodSeconds`). A second signal ends it at
//! once (the binary).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::flush::{FlushOptions, FlushStatus, Flusher};
use crate::heal::{self, DiskWatch};
use crate::ingest::{self, ConfigSummary, IngestState, ServerOptions};
use crate::kafka::{KafkaSettings, KafkaStageError};
use crate::node::NodeId;
use crate::retry::Stop;
use crate::telemetry::RecentErrors;
use crate::transform::{self, TransformOptions, TransformStatus};
use crate::wal::{GuardedLog, LogOptions, LogStore, SledLog, WalError, WalHealth, WalWriter};

/// Everything `run` and `serve` need.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub listen: SocketAddr,
    /// Where the status page and `/metrics` are served; `None`: nowhere.
    pub admin_listen: Option<SocketAddr>,
    /// `None`: use the id stored in the WAL (generated when the WAL was created).
    pub node_id: Option<NodeId>,
    pub server: ServerOptions,
    pub wal: WalConfig,
    pub flush: FlushOptions,
    pub drain_timeout: Duration,
    pub kafka: KafkaSettings,
    /// `Some` runs the transform worker in this process too (`run`).
    pub transform: Option<TransformOptions>,
}

#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub cache_bytes: u64,
    pub group_commit_max: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window_ms: u64,
    /// How long one append may take (`--wal-append-timeout-ms`).
    pub append_deadline: Duration,
    /// Free space kept on the WAL's filesystem (`--wal-min-free-mib`).
    pub min_free_bytes: u64,
}

/// Why the pipeline could not start or ended badly.
#[derive(Debug, Error)]
pub enum AppError {
    #[error("cannot open the WAL: {0}")]
    Wal(#[from] WalError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Kafka(#[from] KafkaStageError),
    #[error("a stage thread panicked: {0}")]
    Panicked(String),
}

/// A started pipeline.
pub struct Pipeline {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    /// For a last look at what stays undelivered when the process has to go at once.
    log: Arc<dyn LogStore>,
    /// True once shutdown started: asked for by [`Pipeline::stop`], or by a failed stage.
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AppError>>,
}

/// A stage thread, joined from the async side; it starts the shutdown if it ends with an error.
type StageTask = JoinHandle<Result<(), AppError>>;

impl Pipeline {
    /// Opens the WAL, binds the listeners and starts every stage.
    ///
    /// # Errors
    /// [`AppError`] if Kafka refuses the TLS or SASL configuration (see
    /// [`crate::kafka::preflight`]), the WAL cannot be opened or an address cannot be bound. An
    /// unreachable Kafka is not an error: ingest works and the flusher retries.
    pub async fn start(config: PipelineConfig) -> Result<Pipeline, AppError> {
        // Before anything is accepted: a collector Kafka refuses could never deliver it.
        crate::kafka::preflight(&config.kafka).await?;
        let (sled_log, node, wal_id) = open_wal(&config)?;
        let health = Arc::new(WalHealth::new(config.wal.append_deadline));
        let log: Arc<dyn LogStore> = Arc::new(GuardedLog::new(sled_log, health.clone()));
        let (listener, addr) = bind(config.listen, "listen").await?;
        let admin = match config.admin_listen {
            Some(admin) => Some(bind(admin, "admin").await?),
            None => None,
        };
        let (shutdown, _) = watch::channel(false);
        let writer = WalWriter::start(log.clone(), config.wal.group_commit_max, health.clone());
        let disk = Arc::new(DiskWatch::new(&config.wal.dir, config.wal.min_free_bytes));
        disk.sample(log.live_bytes());
        let mut addresses = vec![("listen", addr)];
        addresses.extend(admin.as_ref().map(|(_, bound)| ("admin", *bound)));
        tokio::spawn(heal::watch(disk.clone(), health.clone(), log.clone(), addresses, shutdown.subscribe()));
        let runtime = tokio::runtime::Handle::current();
        let errors = Arc::new(RecentErrors::default());
        let flush_status = Arc::new(FlushStatus::new(errors.clone()));
        let transform_status = config.transform.as_ref().map(|_| Arc::new(TransformStatus::new(errors.clone())));

        let (drain, drain_stop) = Stop::new();
        let flusher = Flusher {
            log: log.clone(),
            durable: writer.durable(),
            kafka: config.kafka.clone(),
            options: config.flush.clone(),
            status: flush_status.clone(),
            node: node.clone(),
            wal_id,
        }
        .spawn(runtime.clone(), drain_stop);
        let flusher = watch_stage(flusher, "flusher", shutdown.clone());
        let (transform_stop, worker_stop) = Stop::new();
        let worker = config.transform.clone().zip(transform_status.clone()).map(|(options, status)| {
            let kafka = config.kafka.clone();
            let worker = transform::spawn(kafka, options, node.clone(), runtime.clone(), worker_stop, status);
            watch_stage(worker, "transform worker", shutdown.clone())
        });
        let admin_addr = admin.as_ref().map(|(_, addr)| *addr);
        let summary = summary(&config, addr, admin_addr, &node);

        let state = Arc::new(IngestState {
            writer,
            log,
            options: config.server.clone(),
            draining: Default::default(),
            node_id: node.to_string(),
            started: Instant::now(),
            metrics: crate::telemetry::install(),
            flush: flush_status,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.server.max_in_flight)),
            reserved_bytes: Default::default(),
            health,
            disk,
            accepted: Default::default(),
            transform: transform_status,
            errors,
            history: Default::default(),
            summary,
        });
        log_listening(&config, addr, admin_addr, &node, worker.is_some());
        let stages = Stages { flusher, worker, drain, transform_stop };
        let log = state.log.clone();
        let listeners = Listeners { public: listener, admin: admin.map(|(listener, _)| listener) };
        let task = tokio::spawn(serve_then_drain(config, listeners, state, shutdown.subscribe(), stages));
        Ok(Pipeline { addr, admin_addr, log, shutdown, task })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address actually bound, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The WAL, to read its statistics.
    pub fn wal(&self) -> Arc<dyn LogStore> {
        self.log.clone()
    }

    /// Resolves once shutdown has started, whoever started it (a stage that failed does).
    pub async fn shutting_down(&self) {
        let _ = self.shutdown.subscribe().wait_for(|s| *s).await;
    }

    /// Starts the graceful drain (if it has not started) and waits for it to finish.
    ///
    /// # Errors
    /// A permanent stage error (e.g. invalid Kafka configuration, or fenced) that ended a stage.
    pub async fn stop(self) -> Result<(), AppError> {
        self.shutdown.send_replace(true);
        self.wait().await
    }

    /// Waits until the pipeline ends by itself (it only does on a permanent error) or is stopped.
    ///
    /// # Errors
    /// As [`Pipeline::stop`].
    pub async fn wait(self) -> Result<(), AppError> {
        self.task.await.map_err(|e| AppError::Panicked(e.to_string()))?
    }
}

/// Opens the WAL and settles the node id (`--node-id`, or the one the WAL stores) and the
/// WAL's own identity.
fn open_wal(config: &PipelineConfig) -> Result<(Arc<dyn LogStore>, NodeId, String), AppError> {
    let sled_log = SledLog::open(
        &config.wal.dir,
        LogOptions {
            segment_bytes: config.wal.segment_bytes,
            cache_bytes: config.wal.cache_bytes,
            idempotency_window_ms: config.wal.idempotency_window_ms,
        },
    )?;
    let node = match config.node_id.clone() {
        Some(id) => id,
        None => {
            let stored = sled_log.node_id(NodeId::host().as_str())?;
            NodeId::parse(&stored).map_err(|e| WalError::Storage(format!("the node id stored in the WAL: {e}")))?
        }
    };
    let wal_id = sled_log.wal_id()?;
    Ok((Arc::new(sled_log), node, wal_id))
}

/// The start-up lines: the admin address first, then the public one, which says the collector
/// is up (tests and scripts wait for it); API key clients by id, never a key.
fn log_listening(config: &PipelineConfig, addr: SocketAddr, admin: Option<SocketAddr>, node: &NodeId, transform: bool) {
    if let Some(addr) = admin {
        info!(%addr, "Admin listening. Status page, /metrics, /healthz, /readyz.");
    }
    let keys = &config.server.api_keys;
    if !keys.is_open() {
        let clients: Vec<String> = keys.clients().iter().map(ToString::to_string).collect();
        info!(clients = %clients.join(","), "API keys required on /collect; clients named by id.");
    }
    info!(
        %addr,
        %node,
        guarantee = ?config.kafka.guarantee,
        ack = ?config.server.ack,
        transform,
        api_keys = !keys.is_open(),
        cors = config.server.cors.is_enabled(),
        "Collector listening."
    );
}

/// What the status page shows of `config`, with the addresses bound and the node id settled.
fn summary(config: &PipelineConfig, listen: SocketAddr, admin: Option<SocketAddr>, node: &NodeId) -> ConfigSummary {
    let (server, kafka) = (&config.server, &config.kafka);
    ConfigSummary {
        mode: if config.transform.is_some() { "run" } else { "serve" },
        listen: listen.to_string(),
        admin_listen: admin.map(|a| a.to_string()),
        node_id: node.to_string(),
        wal_dir: config.wal.dir.display().to_string(),
        wal_max_bytes: server.max_wal_bytes,
        wal_segment_bytes: config.wal.segment_bytes,
        wal_min_free_bytes: config.wal.min_free_bytes,
        brokers: kafka.brokers.clone(),
        raw_topic: kafka.raw_topic.clone(),
        transformed_topic: kafka.transformed_topic.clone(),
        dead_letter_topic: kafka.dead_letter_topic.clone(),
        guarantee: match kafka.guarantee {
            crate::kafka::Guarantee::ExactlyOnce => "exactly_once",
            crate::kafka::Guarantee::AtLeastOnce => "at_least_once",
        },
        ack: match server.ack {
            crate::ingest::Ack::Wal => "wal",
            crate::ingest::Ack::Kafka { .. } => "kafka",
        },
        transform_group: config.transform.as_ref().map(|t| t.group_id.clone()),
        max_body_bytes: server.body.max_body_bytes,
        max_decompressed_bytes: server.body.max_decompressed_bytes,
        max_events: server.limits.max_events,
        max_in_flight: server.max_in_flight,
        max_connections: server.max_connections,
        api_keys: !server.api_keys.is_open(),
        api_key_clients: server.api_keys.clients().len(),
        cors: server.cors.is_enabled(),
        drain_timeout_ms: config.drain_timeout.as_millis() as u64,
    }
}

/// Binds `addr`; the address actually bound is returned too (port 0 picks one).
async fn bind(addr: SocketAddr, name: &str) -> Result<(TcpListener, SocketAddr), AppError> {
    // After a restart in place (see `heal.rs`): the address listener `name` had, so the same
    // port also when `addr` asked for any.
    let addr = heal::rebind_address(name).unwrap_or(addr);
    let listener = TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| AppError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// The bound sockets: the public one, and the admin one if configured.
struct Listeners {
    public: TcpListener,
    admin: Option<TcpListener>,
}

/// The stages behind ingest, and how to stop them.
struct Stages {
    flusher: StageTask,
    worker: Option<StageTask>,
    /// Gives the flusher its drain deadline.
    drain: crate::retry::StopHandle,
    transform_stop: crate::retry::StopHandle,
}

/// Serves HTTP until shutdown starts, then drains: in-flight requests, the WAL into Kafka (until
/// the deadline), the transform worker, and finally the admin listener.
async fn serve_then_drain(
    config: PipelineConfig,
    listeners: Listeners,
    state: Arc<IngestState>,
    mut shutdown: watch::Receiver<bool>,
    stages: Stages,
) -> Result<(), AppError> {
    let admin = listeners.admin.map(|listener| serve_admin(listener, state.clone(), &config.server));
    // The status page's history, sampled through the drain too, until the admin listener stops.
    let (sampler_stop, sampler_stopped) = oneshot::channel();
    let sampler = tokio::spawn(ingest::sample(state.clone(), sampler_stopped));
    let app = ingest::router(state.clone());
    let signal_state = state.clone();
    let signal = async move {
        let _ = shutdown.wait_for(|s| *s).await;
        signal_state.draining.store(true, Ordering::Release);
        info!("Shutting down: no new requests; finishing in-flight ones.");
    };
    ingest::serve(listeners.public, app, &config.server, signal).await;
    drop(state);
    info!(
        timeout_ms = config.drain_timeout.as_millis() as u64,
        exit_within_ms = config.longest_shutdown().saturating_sub(config.server.shutdown_grace).as_millis() as u64,
        "Delivering the WAL to Kafka before exit."
    );
    stages.drain.stop_by(Instant::now() + config.drain_timeout);
    // The flusher checks the deadline between Kafka calls, but one call (a transaction commit
    // while Kafka is away) can block longer. Exiting anyway is safe: what was not acknowledged
    // stays in the WAL, and the next start fences this producer and resumes from Kafka's
    // committed position.
    let flushed = bounded(stages.flusher, config.drain_timeout + STAGE_EXIT_GRACE, "flusher").await;
    stages.transform_stop.stop_now();
    let transformed = match stages.worker {
        Some(w) => bounded(w, STAGE_EXIT_GRACE, "transform worker").await,
        None => Ok(()),
    };
    if let Some((stop, server)) = admin {
        let _ = stop.send(());
        // `serve` bounds its own wait by ADMIN_EXIT_GRACE.
        let _ = server.await;
    }
    let _ = sampler_stop.send(());
    let _ = sampler.await;
    flushed.and(transformed)
}

/// Most connections the admin listener holds open: it serves people and scrapers, not traffic.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Starts the admin listener; it serves until the returned sender is used (or dropped).
fn serve_admin(
    listener: TcpListener,
    state: Arc<IngestState>,
    server: &ServerOptions,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let options =
        ServerOptions { shutdown_grace: ADMIN_EXIT_GRACE, max_connections: ADMIN_MAX_CONNECTIONS, ..server.clone() };
    let (stop, stopped) = oneshot::channel::<()>();
    let app = ingest::admin_router(state);
    let task = tokio::spawn(async move {
        ingest::serve(listener, app, &options, async {
            let _ = stopped.await;
        })
        .await;
    });
    (stop, task)
}

/// Runs only the transform worker until `shutdown` resolves or the worker fails, with its
/// admin listener (`/metrics`, `/healthz`, `/readyz`) on `admin` if given.
///
/// # Errors
/// Kafka refusing the TLS or SASL configuration at start-up; an admin address that cannot be
/// bound; a permanent Kafka error, such as an invalid configuration or being fenced.
pub async fn run_transform(
    kafka: KafkaSettings,
    options: TransformOptions,
    node: NodeId,
    admin: Option<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    crate::kafka::preflight(&kafka).await?;
    let (stopping, stopping_rx) = watch::channel(false);
    let admin = match admin {
        Some(addr) => {
            let (listener, bound) = bind(addr, "admin").await?;
            info!(addr = %bound, "Admin listening. /metrics, /healthz, /readyz.");
            let app = transform::admin::router(crate::telemetry::install(), stopping_rx.clone());
            let mut stopped = stopping_rx.clone();
            // A loopback listener for scrapes: axum's own server, without ingest's guards.
            Some(tokio::spawn(async move {
                let stopped = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                    warn!(error = %e, "The admin listener failed.");
                }
            }))
        }
        None => None,
    };
    let (stop, worker_stop) = Stop::new();
    let (failed, mut failed_rx) = watch::channel(false);
    // The worker's admin listener serves its metrics; its status (the status page's part of it)
    // is kept for nobody in this mode.
    let status = Arc::new(TransformStatus::default());
    let worker = transform::spawn(kafka, options, node.clone(), tokio::runtime::Handle::current(), worker_stop, status);
    let worker = watch_stage(worker, "transform worker", failed);
    info!(%node, "Transform worker started.");
    tokio::select! {
        () = shutdown => {}
        _ = failed_rx.wait_for(|f| *f) => {}
    }
    info!("Shutting down the transform worker.");
    let _ = stopping.send(true);
    stop.stop_now();
    let stopped = bounded(worker, STAGE_EXIT_GRACE + Duration::from_secs(5), "transform worker").await;
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(ADMIN_EXIT_GRACE, admin).await;
    }
    stopped
}

/// How long a stage may take to stop after its deadline (or its stop signal). Giving up on a
/// stage blocked in a Kafka call is safe (see [`bounded`]), so this is kept short: it counts
/// twice against the orchestrator's grace period.
pub const STAGE_EXIT_GRACE: Duration = Duration::from_secs(3);

/// How long the admin listener's requests in flight may take once the stages have stopped
/// (status pages and scrapes take milliseconds).
pub const ADMIN_EXIT_GRACE: Duration = Duration::from_millis(250);

/// How long the runtime waits for its tasks when the process exits.
pub const RUNTIME_EXIT_GRACE: Duration = Duration::from_millis(500);

impl PipelineConfig {
    /// The longest a graceful shutdown can take, from the signal to the process exit.
    pub fn longest_shutdown(&self) -> Duration {
        let stages = if self.transform.is_some() { 2 } else { 1 };
        let admin = if self.admin_listen.is_some() { ADMIN_EXIT_GRACE } else { Duration::ZERO };
        self.server.shutdown_grace + self.drain_timeout + STAGE_EXIT_GRACE * stages + admin + RUNTIME_EXIT_GRACE
    }
}

/// Waits for a stage to stop, but not past `limit`.
async fn bounded(stage: StageTask, limit: Duration, name: &str) -> Result<(), AppError> {
    match tokio::time::timeout(limit, stage).await {
        Ok(joined) => joined.map_err(|e| AppError::Panicked(e.to_string()))?,
        Err(_) => {
            warn!(stage = name, limit_ms = limit.as_millis() as u64, "A stage did not stop in time (a Kafka call is blocking); exiting anyway. Nothing is lost: the WAL and Kafka transactions resume on the next start.");
            Ok(())
        }
    }
}

/// Joins a stage thread from the async side. If it ends with an error or a panic, `shutdown`
/// is set, so the rest of the pipeline drains and the process exits with that error.
fn watch_stage(
    handle: std::thread::JoinHandle<Result<(), KafkaStageError>>,
    name: &'static str,
    shutdown: watch::Sender<bool>,
) -> StageTask {
    tokio::spawn(async move {
        let joined =
            tokio::task::spawn_blocking(move || handle.join()).await.map_err(|e| AppError::Panicked(e.to_string()))?;
        let result = match joined {
            Ok(result) => result.map_err(AppError::Kafka),
            Err(panic) => Err(AppError::Panicked(format!("{panic:?}"))),
        };
        if let Err(e) = &result {
            error!(stage = name, error = %e, "A stage stopped with an error; shutting down.");
            // `send_replace` stores the value even while nobody subscribes yet (a stage can fail
            // before the server task subscribed); `send` would drop it.
            shutdown.send_replace(true);
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::{Cli, Command};

    #[test]
    fn the_default_shutdown_fits_an_orchestrators_30_second_grace() {
        let cli = Cli::try_parse_from(["collector", "run"]).unwrap();
        let Command::Run(run) = cli.command else { unreachable!() };
        let config = run.serve.pipeline(Some(&run.transform)).unwrap();
        let longest = config.longest_shutdown();
        assert!(longest <= std::time::Duration::from_secs(27), "{longest:?}: no room left before SIGKILL at 30 s");
    }
}
