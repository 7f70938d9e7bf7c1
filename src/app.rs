//! Wiring: builds the stages from a validated configuration and runs them until shutdown.
//!
//! Shutdown order (graceful drain): stop taking requests (`/collect` and `/readyz` answer 503),
//! finish in-flight requests, let the flusher deliver what the WAL holds until the drain
//! deadline, then stop the transform worker. Nothing acknowledged is lost if the deadline hits:
//! it stays in the WAL for the next start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::flush::{FlushOptions, FlushStatus, Flusher};
use crate::ingest::{self, IngestState, ServerOptions};
use crate::kafka::{KafkaSettings, KafkaStageError};
use crate::transform::{self, TransformOptions};
use crate::wal::{LogOptions, LogStore, SledLog, WalError, WalWriter};

/// Everything `run` and `serve` need.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub listen: SocketAddr,
    /// `None`: use the id stored in the WAL (generated when the WAL was created).
    pub node_id: Option<String>,
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
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AppError>>,
}

impl Pipeline {
    /// Opens the WAL, binds the listener and starts every stage.
    ///
    /// # Errors
    /// [`AppError`] if the WAL cannot be opened or the address cannot be bound. An unreachable
    /// Kafka is not an error: ingest works and the flusher retries.
    pub async fn start(mut config: PipelineConfig) -> Result<Pipeline, AppError> {
        let sled_log = SledLog::open(
            &config.wal.dir,
            LogOptions {
                segment_bytes: config.wal.segment_bytes,
                cache_bytes: config.wal.cache_bytes,
                idempotency_window_ms: config.wal.idempotency_window_ms,
            },
        )?;
        let node_id = match config.node_id.clone() {
            Some(id) => id,
            None => sled_log.node_id(&crate::config::host_name())?,
        };
        config.flush.node_id = node_id.clone();
        if let Some(t) = config.transform.as_mut() {
            t.node_id = node_id.clone();
        }
        let log: Arc<dyn LogStore> = Arc::new(sled_log);
        let listener =
            TcpListener::bind(config.listen).await.map_err(|source| AppError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| AppError::Bind { addr: config.listen, source })?;
        let writer = WalWriter::start(log.clone(), config.wal.group_commit_max);
        let flush_status = Arc::new(FlushStatus::default());
        let runtime = tokio::runtime::Handle::current();

        let (drain_tx, drain_rx) = watch::channel(None);
        let flusher = Flusher {
            log: log.clone(),
            durable: writer.durable(),
            kafka: config.kafka.clone(),
            options: config.flush.clone(),
            status: flush_status.clone(),
        }
        .spawn(runtime.clone(), drain_rx);

        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = config
            .transform
            .clone()
            .map(|options| transform::spawn(config.kafka.clone(), options, runtime.clone(), stop_rx));

        let state = Arc::new(IngestState {
            writer,
            log,
            options: config.server.clone(),
            draining: AtomicBool::new(false),
            node_id: node_id.clone(),
            started: Instant::now(),
            metrics: crate::telemetry::install(),
            flush: flush_status,
        });
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let app = ingest::router(state.clone());
        info!(%addr, %node_id, guarantee = ?config.kafka.guarantee, transform = worker.is_some(), "Collector listening.");

        let task = tokio::spawn(async move {
            let signal_state = state.clone();
            let signal = async move {
                let _ = shutdown_rx.wait_for(|s| *s).await;
                signal_state.draining.store(true, Ordering::Release);
                info!("Shutting down: no new requests; finishing in-flight ones.");
            };
            ingest::serve(listener, app, config.server.header_timeout, config.server.shutdown_grace, signal).await;
            drop(state);
            let deadline = Instant::now() + config.drain_timeout;
            info!(timeout_ms = config.drain_timeout.as_millis() as u64, "Delivering the WAL to Kafka before exit.");
            let _ = drain_tx.send(Some(deadline));
            // The flusher checks the deadline between Kafka calls, but one call (a transaction
            // commit while Kafka is away) can block longer. Exiting anyway is safe: what was not
            // acknowledged stays in the WAL, and the next start fences this producer and resumes
            // from Kafka's committed position.
            let flushed = bounded(join_thread(flusher), config.drain_timeout + STAGE_EXIT_GRACE, "flusher").await;
            let _ = stop_tx.send(true);
            let transformed = match worker {
                Some(w) => bounded(join_thread(w), STAGE_EXIT_GRACE, "transform worker").await,
                None => Ok(()),
            };
            flushed.and(transformed)
        });
        Ok(Pipeline { addr, shutdown, task })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the graceful drain and waits for it to finish.
    ///
    /// # Errors
    /// A permanent stage error (e.g. invalid Kafka configuration) that ended a stage.
    pub async fn stop(self) -> Result<(), AppError> {
        let _ = self.shutdown.send(true);
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

/// Runs only the transform worker until `shutdown` resolves.
///
/// # Errors
/// A permanent Kafka error, such as an invalid configuration.
pub async fn run_transform(
    kafka: KafkaSettings,
    options: TransformOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = transform::spawn(kafka, options, tokio::runtime::Handle::current(), stop_rx);
    shutdown.await;
    info!("Shutting down the transform worker.");
    let _ = stop_tx.send(true);
    bounded(join_thread(worker), STAGE_EXIT_GRACE + Duration::from_secs(5), "transform worker").await
}

/// How long a stage may take to stop after its deadline (or its stop signal).
const STAGE_EXIT_GRACE: Duration = Duration::from_secs(5);

/// Waits for a stage to stop, but not past `limit`.
async fn bounded(
    stage: impl std::future::Future<Output = Result<(), AppError>>,
    limit: Duration,
    name: &str,
) -> Result<(), AppError> {
    match tokio::time::timeout(limit, stage).await {
        Ok(result) => result,
        Err(_) => {
            warn!(stage = name, limit_ms = limit.as_millis() as u64, "A stage did not stop in time (a Kafka call is blocking); exiting anyway. Nothing is lost: the WAL and Kafka transactions resume on the next start.");
            Ok(())
        }
    }
}

async fn join_thread(handle: std::thread::JoinHandle<Result<(), KafkaStageError>>) -> Result<(), AppError> {
    let joined =
        tokio::task::spawn_blocking(move || handle.join()).await.map_err(|e| AppError::Panicked(e.to_string()))?;
    match joined {
        Ok(result) => result.map_err(|e| {
            error!(error = %e, "A stage stopped with an error.");
            AppError::Kafka(e)
        }),
        Err(panic) => Err(AppError::Panicked(format!("{panic:?}"))),
    }
}
