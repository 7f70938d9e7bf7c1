//! The command line, the environment and the configuration file. Every flag is also an
//! environment variable (`COLLECTOR_…`) and a key of the `--config` file ([`settings`] names
//! them); a flag beats its variable, which beats the file, which beats the default
//! ([`load`]). Values are validated before anything starts, so a bad setting stops the boot
//! instead of the first request; `collector config check` runs the same validation
//! ([`check`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use thiserror::Error;

use crate::app::{PipelineConfig, WalConfig};
use crate::flush::FlushOptions;
use crate::ingest::auth::{self, ApiKeys};
use crate::ingest::{Ack, BodyLimits, Cors, EventLimits, ServerOptions};
use crate::kafka::{Guarantee, KafkaSettings, KafkaStageError, ProducerOptions, TxnTimeouts};
use crate::node::NodeId;
use crate::transform::{BatchLimit, TransformOptions};

pub mod check;
pub mod file;
pub mod load;
pub mod settings;

pub use load::{load, LoadError, Loaded, Origins, Source};

const MIB: u64 = 1024 * 1024;

/// `--flush-interval-ms` under `--ack wal`: with it the pipeline's ingest rate was back where
/// it was when every transaction cost 100 ms; 100 ms gave back only part (loadtest/PROFILE.md,
/// "Fourth step").
const DEFAULT_FLUSH_INTERVAL_MS: u64 = 250;

#[derive(Debug, Parser)]
#[command(name = "collector", version, about = "A durable, high-throughput event collector for Kafka.", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `collector=debug,librdkafka=warn`.
    #[arg(long, env = "COLLECTOR_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log lines as human text, or as one JSON object per line (for a log shipper).
    #[arg(long, env = "COLLECTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// TOML file of settings (deploy/collector.toml is an annotated example). Each key is a
    /// flag's environment variable without COLLECTOR_, in lower case, in its section; a flag or
    /// variable overrides it.
    #[arg(long, env = "COLLECTOR_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-28T22:00:00.000000Z  INFO request{request_id=…}: message key=value`.
    Text,
    /// `{"timestamp":…,"level":"INFO","message":…,"key":…,"span":{"name":"request","request_id":…}}`.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process: HTTP ingest, WAL flusher and transform worker.
    Run(RunArgs),
    /// HTTP ingest and the WAL flusher (no transform).
    Serve(ServeArgs),
    /// Only the transform worker: collect-topic1 → collect-topic2.
    Transform(TransformCmd),
    /// Inspect a WAL directory (stop the collector using it first).
    Wal(WalCmd),
    /// Check a configuration: validate it as start-up would and print the effective settings.
    Config(ConfigCmd),
}

#[derive(Debug, Args)]
pub struct ConfigCmd {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration as start-up would; print every setting and its source.
    ///
    /// Flags, environment and --config file are validated exactly as the subcommand's start-up
    /// would (the WAL is not opened, Kafka not contacted); then every setting of the subcommand
    /// is printed with its value and source (flag, env, file, default) as TOML, secrets
    /// masked. Exit 2 on an invalid setting. `collector --config FILE config check serve
    /// --listen …` checks that command line.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The subcommand to check, with its flags (default: run).
    #[command(subcommand)]
    pub mode: Option<CheckMode>,
}

/// The subcommands that start something, as `collector config check` names them.
#[derive(Debug, Subcommand)]
pub enum CheckMode {
    /// Check the configuration of `collector run` (the default).
    Run(RunArgs),
    /// Check the configuration of `collector serve`.
    Serve(ServeArgs),
    /// Check the configuration of `collector transform`.
    Transform(TransformCmd),
}

/// What `run`, `serve` or `transform` starts with, validated.
// Built once at start-up and moved once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Startup {
    /// `run` (with a transform worker) or `serve`.
    Pipeline(PipelineConfig),
    /// `transform`: Kafka, the worker's node id, its options, its admin listener.
    Transform { kafka: KafkaSettings, node: NodeId, options: TransformOptions, admin: Option<SocketAddr> },
}

impl Command {
    /// The validated configuration of a subcommand that starts something; `None` for `wal` and
    /// `config`.
    pub fn startup(&self) -> Option<Result<Startup, ConfigError>> {
        match self {
            Command::Run(run) => Some(run.startup()),
            Command::Serve(serve) => Some(serve.pipeline(None).map(Startup::Pipeline)),
            Command::Transform(transform) => Some(transform.startup()),
            Command::Wal(_) | Command::Config(_) => None,
        }
    }
}

impl CheckMode {
    /// The same validation as [`Command::startup`].
    pub fn startup(&self) -> Result<Startup, ConfigError> {
        match self {
            CheckMode::Run(run) => run.startup(),
            CheckMode::Serve(serve) => serve.pipeline(None).map(Startup::Pipeline),
            CheckMode::Transform(transform) => transform.startup(),
        }
    }

    fn kafka_mut(&mut self) -> &mut KafkaArgs {
        match self {
            CheckMode::Run(run) => &mut run.serve.kafka,
            CheckMode::Serve(serve) => &mut serve.kafka,
            CheckMode::Transform(transform) => &mut transform.kafka,
        }
    }
}

impl RunArgs {
    fn startup(&self) -> Result<Startup, ConfigError> {
        self.serve.pipeline(Some(&self.transform)).map(Startup::Pipeline)
    }
}

impl TransformCmd {
    fn startup(&self) -> Result<Startup, ConfigError> {
        let (kafka, node, options) = self.worker()?;
        Ok(Startup::Transform { kafka, node, options, admin: self.admin_listen.0 })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub transform: TransformArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub ingest: IngestArgs,
    #[command(flatten)]
    pub wal: WalArgs,
    #[command(flatten)]
    pub flush: FlushArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Args)]
pub struct TransformCmd {
    /// Name of this worker; its transactional.id is `collector-transform-<node id>`. Must be
    /// unique among running workers (two with one id fence each other); keep it across
    /// restarts so a restarted worker aborts what its crashed predecessor left open.
    #[arg(long, env = "COLLECTOR_NODE_ID")]
    pub node_id: Option<String>,
    /// Address of the worker's admin listener: `/metrics`, `/healthz`, `/readyz`. Loopback by
    /// default, and a port and variable of its own, so a worker runs beside `collector serve`
    /// (8001) on one host and one environment; `none` turns it off.
    #[arg(long, env = "COLLECTOR_TRANSFORM_ADMIN_LISTEN", default_value = "127.0.0.1:8002")]
    pub admin_listen: AdminListen,
    #[command(flatten)]
    pub transform: TransformArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Address the HTTP server listens on: `/collect`, `/healthz`, `/readyz`.
    #[arg(long, env = "COLLECTOR_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Address of the admin listener: the status page `/`, `/metrics`, `/healthz`, `/readyz`.
    /// Loopback by default, so status and metrics are not exposed where events are taken;
    /// `none` turns it off.
    #[arg(long, env = "COLLECTOR_ADMIN_LISTEN", default_value = "127.0.0.1:8001")]
    pub admin_listen: AdminListen,
    /// File of API keys for /collect: one per line; `#` comments and blank lines are ignored.
    /// With keys (from here or COLLECTOR_API_KEYS), /collect answers 401 without a valid one in
    /// `X-Api-Key`, `Authorization: Bearer` or `?api_key=`. Read at start-up.
    #[arg(long, env = "COLLECTOR_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// API keys for /collect, comma-separated. Prefer the environment variable or
    /// --api-key-file: a value on the command line shows in `ps`.
    #[arg(long, env = "COLLECTOR_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<SecretKey>,
    /// Origin whose web pages may post to /collect (CORS), e.g. `https://shop.example`;
    /// repeatable (in the environment comma-separated); `*` for any. None: no CORS headers,
    /// and browsers keep other sites' pages from using the collector.
    #[arg(long = "cors-origin", env = "COLLECTOR_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Largest request body accepted on the wire, in bytes (compressed size for gzip).
    #[arg(long, env = "COLLECTOR_MAX_BODY_BYTES", default_value_t = 900_000)]
    pub max_body_bytes: usize,
    /// Largest body after gzip decoding, in bytes (gzip-bomb guard). Each accepted body
    /// becomes one Kafka message, so it must fit librdkafka's message.max.bytes (default
    /// 1,000,000; raise it with `-X message.max.bytes=…`) less 16 KiB for headers.
    #[arg(long, env = "COLLECTOR_MAX_DECOMPRESSED_BYTES", default_value_t = 900_000)]
    pub max_decompressed_bytes: usize,
    /// Most events in one request.
    #[arg(long, env = "COLLECTOR_MAX_EVENTS", default_value_t = 1000)]
    pub max_events: usize,
    /// Most bytes in each string field that rows carry (event_type, user_id, product_id,
    /// ctx.browser, ctx.device, ctx.version).
    #[arg(long, env = "COLLECTOR_MAX_FIELD_BYTES", default_value_t = 4096)]
    pub max_field_bytes: usize,
    /// Most bytes of a request's `ctx` as JSON, unknown fields included.
    #[arg(long, env = "COLLECTOR_MAX_CTX_BYTES", default_value_t = 16_384)]
    pub max_ctx_bytes: usize,
    /// Most bytes of rows one request may turn into on the transformed topic (ctx is copied
    /// into every row: this bounds the amplification).
    #[arg(long, env = "COLLECTOR_MAX_ROW_BYTES_PER_REQUEST", default_value_t = 4 << 20)]
    pub max_row_bytes_per_request: usize,
    /// Most open HTTP connections; one more is answered `503 too_many_connections` and closed.
    #[arg(long, env = "COLLECTOR_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Most `/collect` requests in flight (being read, validated or written); one more is
    /// answered `503 overloaded`. With --max-body-bytes it bounds the memory bodies can hold
    /// (default: 256 × 900,000 bytes ≈ 230 MB).
    #[arg(long, env = "COLLECTOR_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// A client must send its whole body within this time.
    #[arg(long, env = "COLLECTOR_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// A connection must send complete request headers within this time.
    #[arg(long, env = "COLLECTOR_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// On shutdown, how long in-flight requests may take before connections are closed.
    #[arg(long, env = "COLLECTOR_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,
    /// When `/collect` answers 2xx: `wal`, once the batch is durable in the local WAL (fsync);
    /// or `kafka`, once Kafka also confirmed it (the flusher's transaction committed), so an
    /// acknowledged batch is replicated as the raw topic is. `kafka` costs latency (a flusher
    /// batch and a commit on top of the fsync) and answers 503 while Kafka is away.
    #[arg(long, env = "COLLECTOR_ACK", value_enum, default_value_t = AckPolicy::Wal)]
    pub ack: AckPolicy,
    /// With `--ack kafka`: how long a request waits for Kafka's confirmation before it is
    /// answered 503 `kafka_unconfirmed` (the batch stays stored and is delivered; a retry with
    /// the same Idempotency-Key gets its receipt).
    #[arg(long, env = "COLLECTOR_ACK_TIMEOUT_MS", default_value_t = 10_000)]
    pub ack_timeout_ms: u64,
    /// Name of this collector instance: raw message headers, and the transactional ids
    /// `collector-flush-<id>` / `collector-transform-<id>`. Defaults to an id generated once and
    /// stored in the WAL, so each WAL keeps its identity across restarts.
    #[arg(long, env = "COLLECTOR_NODE_ID")]
    pub node_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct WalArgs {
    /// Directory of the write-ahead log (created if missing).
    #[arg(long, env = "COLLECTOR_WAL_DIR", default_value = "collector-wal")]
    pub wal_dir: PathBuf,
    /// Roll to a new WAL segment after this many MiB of records. A delivered segment is
    /// dropped whole, and sled's `drop_tree` holds up group commits while it frees the tree:
    /// 88-93 ms for a 64 MiB segment (ingest stalls of 100+ ms with the pipeline running),
    /// 4-14 ms for 8 MiB (loadtest/PROFILE.md). Smaller segments also return space sooner.
    #[arg(long, env = "COLLECTOR_WAL_SEGMENT_MIB", default_value_t = 8)]
    pub wal_segment_mib: u64,
    /// WAL quota in MiB: with this much undelivered data (whole segments) `/collect` answers
    /// 503 with Retry-After and /readyz turns unready, until the flusher catches up. At least
    /// 4 × --wal-segment-mib.
    #[arg(long, env = "COLLECTOR_WAL_MAX_MIB", default_value_t = 8192)]
    pub wal_max_mib: u64,
    /// sled page cache, in MiB.
    #[arg(long, env = "COLLECTOR_WAL_CACHE_MIB", default_value_t = 64)]
    pub wal_cache_mib: u64,
    /// How long an Idempotency-Key is remembered: a retry with the same key and body within
    /// this time is answered 200 again but stored once.
    #[arg(long, env = "COLLECTOR_IDEMPOTENCY_WINDOW_SECS", default_value_t = 86_400)]
    pub idempotency_window_secs: u64,
    /// Most requests made durable by one fsync.
    #[arg(long, env = "COLLECTOR_WAL_GROUP_COMMIT_MAX", default_value_t = 1024)]
    pub wal_group_commit_max: usize,
    /// Deadline of one WAL append: a request whose record is not durable by then is answered
    /// 503 wal_unavailable (a stalled disk never holds requests), and /readyz is unready while
    /// that group commit still runs.
    #[arg(long, env = "COLLECTOR_WAL_APPEND_TIMEOUT_MS", default_value_t = 5_000)]
    pub wal_append_timeout_ms: u64,
    /// Free space (MiB) kept on the WAL's filesystem: below it `/collect` answers 503 wal_full
    /// and /readyz is unready, so the disk never fills up under the WAL (sled's own overhead
    /// and anything else on that filesystem included).
    #[arg(long, env = "COLLECTOR_WAL_MIN_FREE_MIB", default_value_t = 256)]
    pub wal_min_free_mib: u64,
}

#[derive(Debug, Args)]
pub struct FlushArgs {
    /// Most WAL records per Kafka batch.
    #[arg(long, env = "COLLECTOR_FLUSH_BATCH_RECORDS", default_value_t = 5000)]
    pub flush_batch_records: usize,
    /// About this many MiB per Kafka batch at most.
    #[arg(long, env = "COLLECTOR_FLUSH_BATCH_MIB", default_value_t = 8)]
    pub flush_batch_mib: u64,
    /// Producer linger.ms for the raw topic. Longer lingers make fuller produce requests: a
    /// WAL backlog drained 1.3-1.5× as fast with 20 ms as with 5 ms (loadtest/PROFILE.md,
    /// "Fourth step"); but each batch waits for it, which `--ack kafka` requests pay as latency.
    #[arg(long, env = "COLLECTOR_FLUSH_LINGER_MS", default_value_t = 20)]
    pub flush_linger_ms: u64,
    /// Producer message.timeout.ms; a message not confirmed in this time is resent.
    #[arg(long, env = "COLLECTOR_FLUSH_MESSAGE_TIMEOUT_MS", default_value_t = 30_000)]
    pub flush_message_timeout_ms: u64,
    /// Longest pause between retries while Kafka is unreachable.
    #[arg(long, env = "COLLECTOR_FLUSH_MAX_BACKOFF_MS", default_value_t = 5_000)]
    pub flush_max_backoff_ms: u64,
    /// A Kafka batch smaller than --flush-batch-records waits until this long after the
    /// previous one began, so transactions do not follow each other every few milliseconds
    /// under load (each costs CPU the ingest shares). Default: 250, or 0 with `--ack kafka`
    /// (whose requests wait for their batch).
    #[arg(long, env = "COLLECTOR_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// On shutdown, how long to keep delivering the WAL to Kafka before exiting anyway
    /// (what is left is delivered after the next start).
    #[arg(long, env = "COLLECTOR_DRAIN_TIMEOUT_MS", default_value_t = 15_000)]
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct TransformArgs {
    /// Consumer group of the transform workers.
    #[arg(long, env = "COLLECTOR_GROUP_ID", default_value = "collector-transform")]
    pub group_id: String,
    /// Consumer session.timeout.ms. Workers are static group members (group.instance.id =
    /// collector-transform-<node id>): one restarted under its node id gets its partitions back
    /// at once, but one that dies for good, or is stopped and not restarted, holds them this
    /// long. The broker accepts 6000 to 1800000 by default.
    #[arg(long, env = "COLLECTOR_TRANSFORM_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub transform_session_timeout_ms: u64,
    /// Most raw messages per transform batch (one transaction). Each batch pays a fixed
    /// price (the transaction's commit round trips), so small batches cap the transform's
    /// rate: at 2,000 it fell behind 1-event requests arriving at about 25,000 per second
    /// (loadtest/PROFILE.md).
    #[arg(long, env = "COLLECTOR_TRANSFORM_BATCH", default_value_t = 10_000)]
    pub transform_batch: usize,
    /// About this many MiB of raw messages per transform batch at most, whichever of this and
    /// --transform-batch comes first: bounds a transaction of large requests.
    #[arg(long, env = "COLLECTOR_TRANSFORM_BATCH_MIB", default_value_t = 8)]
    pub transform_batch_mib: u64,
    /// How long a transform batch waits to fill.
    #[arg(long, env = "COLLECTOR_TRANSFORM_WAIT_MS", default_value_t = 100)]
    pub transform_wait_ms: u64,
    /// Producer linger.ms for the transformed topic.
    #[arg(long, env = "COLLECTOR_TRANSFORM_LINGER_MS", default_value_t = 20)]
    pub transform_linger_ms: u64,
    /// Producer message.timeout.ms for the transformed topic.
    #[arg(long, env = "COLLECTOR_TRANSFORM_MESSAGE_TIMEOUT_MS", default_value_t = 30_000)]
    pub transform_message_timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "COLLECTOR_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic for raw requests (one message per accepted request).
    #[arg(long, env = "COLLECTOR_RAW_TOPIC", default_value = "collect-topic1")]
    pub raw_topic: String,
    /// Topic for transformed rows (one message per event).
    #[arg(long, env = "COLLECTOR_TRANSFORMED_TOPIC", default_value = "collect-topic2")]
    pub transformed_topic: String,
    /// Topic for raw messages the transform cannot read.
    #[arg(long, env = "COLLECTOR_DEAD_LETTER_TOPIC", default_value = "collect-dlq")]
    pub dead_letter_topic: String,
    /// Exactly-once mode: topic whose partition 0 holds each collector's committed WAL position
    /// (as consumer-group offsets; no messages are written to it).
    #[arg(long, env = "COLLECTOR_POSITIONS_TOPIC", default_value = "collect-wal-positions")]
    pub positions_topic: String,
    /// `exactly-once` (Kafka transactions, the default) or `at-least-once` (idempotent
    /// producers, no transactions: cheaper, but a crash can repeat a batch).
    #[arg(long, env = "COLLECTOR_DELIVERY_GUARANTEE", value_enum, default_value = "exactly-once")]
    pub delivery_guarantee: Guarantee,
    /// Exactly-once mode: librdkafka transaction.timeout.ms. Bounds how long a crashed
    /// producer's open transaction can hold back read_committed readers.
    #[arg(long, env = "COLLECTOR_TRANSACTION_TIMEOUT_MS", default_value_t = 60_000)]
    pub transaction_timeout_ms: u64,
    /// Exactly-once mode: how long one transactional call (init, send offsets, commit, abort)
    /// may block; below --transaction-timeout-ms. A commit or abort retried after retriable
    /// failures gives up after three of these, so a stage is never stuck in Kafka for minutes.
    #[arg(long, env = "COLLECTOR_KAFKA_CALL_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_call_timeout_ms: u64,
    /// Partitions of topics the collector creates.
    #[arg(long, env = "COLLECTOR_TOPIC_PARTITIONS", default_value_t = 4)]
    pub topic_partitions: i32,
    /// Replication factor of topics the collector creates. A warning at start-up says when it
    /// exceeds the brokers the cluster reports (Kafka refuses to create the topics until enough
    /// are up; the collector retries), or when an existing topic has fewer replicas.
    #[arg(long, env = "COLLECTOR_TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,
    /// `min.insync.replicas` of topics the collector creates: how many replicas must have a
    /// write before Kafka confirms it (our producers use acks=all). At most
    /// --topic-replication; 2 with replication 3 survives one broker down without losing a
    /// confirmed write. Not set: the broker's default applies. Existing topics are not altered.
    #[arg(long, env = "COLLECTOR_TOPIC_MIN_INSYNC_REPLICAS")]
    pub topic_min_insync_replicas: Option<i32>,
    /// Extra librdkafka property for every client, `key=value` (repeatable; in the environment
    /// comma-separated), e.g. `security.protocol=SASL_SSL`. Overrides the collector's defaults,
    /// and the configuration file's [kafka.properties] entry of the same name. `--help` does not
    /// show the environment's value: it may hold `sasl.password`.
    #[arg(
        short = 'X',
        long = "kafka-property",
        env = "COLLECTOR_KAFKA_PROPERTIES",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub kafka_properties: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WalCmd {
    #[command(subcommand)]
    pub action: WalAction,
    /// Directory of the write-ahead log.
    #[arg(long, env = "COLLECTOR_WAL_DIR", default_value = "collector-wal", global = true)]
    pub wal_dir: PathBuf,
    /// Where the inspection copy of the WAL is made (default: the system's temporary directory,
    /// `TMPDIR`). It needs as much free space as the WAL: for a large WAL pick a disk, not a
    /// tmpfs.
    #[arg(long, env = "COLLECTOR_WAL_COPY_DIR", global = true)]
    pub copy_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum WalAction {
    /// Print positions, pending records, segments and size as JSON.
    Stats,
    /// Read every pending record and check its checksum, list ranges sled lost; exit 1 if any
    /// record is corrupt or lost.
    Verify,
    /// List quarantined records (sequence number, size, why) as JSON lines; with --export DIR
    /// also write each one's stored bytes to DIR/<seq>.bin.
    Quarantine {
        /// Directory to write the quarantined records' raw bytes to (created if missing).
        #[arg(long)]
        export: Option<PathBuf>,
    },
}

/// `--ack`: when `/collect` answers 2xx (see [`Ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AckPolicy {
    /// Once the batch is durable in the local WAL.
    Wal,
    /// Once Kafka also confirmed the batch.
    Kafka,
}

/// `--admin-listen`: an address, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

impl FromStr for AdminListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(AdminListen(None));
        }
        s.parse()
            .map(|addr| AdminListen(Some(addr)))
            .map_err(|e| format!("{e}: write an address such as 127.0.0.1:8001, or none"))
    }
}

/// An API key given on the command line or in the environment; `Debug` does not show it.
#[derive(Clone)]
pub struct SecretKey(String);

impl FromStr for SecretKey {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretKey(s.trim().to_string()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A setting that cannot work. Each message names the setting by its flag (the file's
/// errors by file, line and key); [`Origins::explain`] adds where a flag's value came from.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("{}: the configuration file cannot be read: {source}", path.display())]
    FileUnreadable { path: PathBuf, source: std::io::Error },
    /// Not TOML; the message has the line and column.
    #[error("{}: {message}", path.display())]
    FileSyntax { path: PathBuf, message: String },
    /// An unknown section or key, a value of the wrong type, or a value its flag refuses.
    #[error("{}:{line}: {setting}: {problem}", path.display())]
    FileSetting { path: PathBuf, line: usize, setting: String, problem: String },
    #[error(transparent)]
    Kafka(#[from] KafkaStageError),
}

fn positive(name: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid(format!("{name} must be above zero")));
    }
    Ok(value)
}

impl KafkaArgs {
    pub fn settings(&self) -> Result<KafkaSettings, ConfigError> {
        let settings = KafkaSettings {
            brokers: self.brokers.clone(),
            properties: KafkaSettings::parse_properties(&self.kafka_properties)?,
            raw_topic: self.raw_topic.clone(),
            transformed_topic: self.transformed_topic.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            positions_topic: self.positions_topic.clone(),
            guarantee: self.delivery_guarantee,
            topic_partitions: self.topic_partitions,
            topic_replication: self.topic_replication,
            topic_min_insync_replicas: self.topic_min_insync_replicas,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Transaction timing.
    ///
    /// # Errors
    /// A zero timeout, or a call timeout not below the transaction timeout: one call could then
    /// outlive the transaction it works on.
    pub fn txn(&self) -> Result<TxnTimeouts, ConfigError> {
        let ms = positive("--transaction-timeout-ms", self.transaction_timeout_ms)?;
        let call_ms = positive("--kafka-call-timeout-ms", self.kafka_call_timeout_ms)?;
        if call_ms >= ms {
            return Err(ConfigError::Invalid(format!(
                "--kafka-call-timeout-ms {call_ms} must be below --transaction-timeout-ms {ms}"
            )));
        }
        Ok(TxnTimeouts { transaction_ms: ms, operation: Duration::from_millis(call_ms) })
    }
}

impl TransformCmd {
    /// Everything `collector transform` needs: Kafka settings, the node id (`--node-id`, else
    /// the host name) and the worker's options.
    pub fn worker(&self) -> Result<(KafkaSettings, NodeId, TransformOptions), ConfigError> {
        let node = node_id(self.node_id.as_deref())?.unwrap_or_else(NodeId::host);
        Ok((self.kafka.settings()?, node, self.transform.options(&self.kafka)?))
    }
}

impl TransformArgs {
    /// The worker's options.
    pub fn options(&self, kafka: &KafkaArgs) -> Result<TransformOptions, ConfigError> {
        if self.group_id.is_empty() {
            return Err(ConfigError::Invalid("--group-id must not be empty".into()));
        }
        Ok(TransformOptions {
            group_id: self.group_id.clone(),
            session_timeout: Duration::from_millis(positive(
                "--transform-session-timeout-ms",
                self.transform_session_timeout_ms,
            )?),
            batch: BatchLimit {
                messages: positive("--transform-batch", self.transform_batch as u64)? as usize,
                bytes: (positive("--transform-batch-mib", self.transform_batch_mib)? * MIB) as usize,
            },
            batch_wait: Duration::from_millis(positive("--transform-wait-ms", self.transform_wait_ms)?),
            producer: ProducerOptions {
                linger_ms: self.transform_linger_ms,
                message_timeout_ms: positive("--transform-message-timeout-ms", self.transform_message_timeout_ms)?,
                txn: kafka.txn()?,
            },
        })
    }
}

impl IngestArgs {
    /// The HTTP server's settings. Body and field limits are checked against what one Kafka
    /// message holds: an accepted body or row that Kafka refuses would have to be set aside.
    fn server(&self, kafka: &KafkaSettings, max_wal_bytes: u64) -> Result<ServerOptions, ConfigError> {
        if self.max_decompressed_bytes + crate::kafka::MESSAGE_OVERHEAD_BYTES > kafka.max_message_bytes() {
            return Err(ConfigError::Invalid(format!(
                "--max-decompressed-bytes {} does not fit a Kafka message (message.max.bytes {} less 16 KiB for headers); lower it or raise -X message.max.bytes",
                self.max_decompressed_bytes,
                kafka.max_message_bytes()
            )));
        }
        if self.max_decompressed_bytes < self.max_body_bytes {
            return Err(ConfigError::Invalid("--max-decompressed-bytes must be at least --max-body-bytes".into()));
        }
        let limits = EventLimits {
            max_events: positive("--max-events", self.max_events as u64)? as usize,
            max_field_bytes: positive("--max-field-bytes", self.max_field_bytes as u64)? as usize,
            max_ctx_bytes: positive("--max-ctx-bytes", self.max_ctx_bytes as u64)? as usize,
            max_row_bytes: positive("--max-row-bytes-per-request", self.max_row_bytes_per_request as u64)? as usize,
        };
        if limits.max_single_row_bytes() + crate::kafka::MESSAGE_OVERHEAD_BYTES > kafka.max_message_bytes() {
            return Err(ConfigError::Invalid(format!(
                "--max-field-bytes {} allows rows of up to {} bytes, more than a Kafka message holds (message.max.bytes {} less 16 KiB)",
                limits.max_field_bytes,
                limits.max_single_row_bytes(),
                kafka.max_message_bytes()
            )));
        }
        Ok(ServerOptions {
            body: BodyLimits {
                max_body_bytes: positive("--max-body-bytes", self.max_body_bytes as u64)? as usize,
                max_decompressed_bytes: self.max_decompressed_bytes,
                body_timeout: Duration::from_millis(positive("--body-timeout-ms", self.body_timeout_ms)?),
            },
            limits,
            header_timeout: Duration::from_millis(positive("--header-timeout-ms", self.header_timeout_ms)?),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            max_wal_bytes,
            max_connections: positive("--max-connections", self.max_connections as u64)? as usize,
            max_in_flight: positive("--max-in-flight", self.max_in_flight as u64)? as usize,
            api_keys: self.api_keys()?,
            cors: Cors::new(&self.cors_origins).map_err(ConfigError::Invalid)?,
            ack: match self.ack {
                AckPolicy::Wal => Ack::Wal,
                AckPolicy::Kafka => {
                    Ack::Kafka { timeout: Duration::from_millis(positive("--ack-timeout-ms", self.ack_timeout_ms)?) }
                }
            },
        })
    }

    /// The keys of `--api-keys` (`COLLECTOR_API_KEYS`) and `--api-key-file` together.
    ///
    /// # Errors
    /// An unreadable key file, a key file without keys (the collector would be open while
    /// meant to be closed), or a key [`ApiKeys::new`] refuses, named by its place, never shown.
    fn api_keys(&self) -> Result<ApiKeys, ConfigError> {
        let mut keys: Vec<String> = self.api_keys.iter().map(|k| k.0.clone()).filter(|k| !k.is_empty()).collect();
        ApiKeys::new(&keys).map_err(|e| ConfigError::Invalid(format!("--api-keys: {e}")))?;
        if let Some(path) = &self.api_key_file {
            keys.extend(read_key_file(path)?);
        }
        ApiKeys::new(&keys).map_err(ConfigError::Invalid)
    }

    /// The admin address, if any; it must differ from `--listen`.
    fn admin_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.admin_listen.0 {
            Some(admin) if admin == self.listen && admin.port() != 0 => {
                Err(ConfigError::Invalid(format!("--admin-listen {admin} must differ from --listen")))
            }
            admin => Ok(admin),
        }
    }
}

/// The keys of an `--api-key-file`.
fn read_key_file(path: &Path) -> Result<Vec<String>, ConfigError> {
    let name = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("--api-key-file {name} cannot be read: {e}")))?;
    let keys = auth::parse_key_file(&text);
    if keys.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "--api-key-file {name} holds no key; /collect would be open (drop the flag to mean that)"
        )));
    }
    ApiKeys::new(&keys).map_err(|e| ConfigError::Invalid(format!("--api-key-file {name}: {e}")))?;
    Ok(keys)
}

impl ServeArgs {
    /// Builds and validates the pipeline configuration; `transform` adds the worker (`run`).
    pub fn pipeline(&self, transform: Option<&TransformArgs>) -> Result<PipelineConfig, ConfigError> {
        let i = &self.ingest;
        let node_id = node_id(i.node_id.as_deref())?;
        if self.wal.wal_max_mib < 4 * self.wal.wal_segment_mib {
            // Segments are reclaimed whole; a smaller quota could be filled by the active segment
            // plus one being drained, and ingest would never resume.
            return Err(ConfigError::Invalid("--wal-max-mib must be at least 4 × --wal-segment-mib".into()));
        }
        let kafka = self.kafka.settings()?;
        Ok(PipelineConfig {
            listen: i.listen,
            admin_listen: i.admin_listen()?,
            node_id,
            server: i.server(&kafka, self.wal.wal_max_mib * MIB)?,
            wal: WalConfig {
                dir: self.wal.wal_dir.clone(),
                segment_bytes: positive("--wal-segment-mib", self.wal.wal_segment_mib)? * MIB,
                cache_bytes: positive("--wal-cache-mib", self.wal.wal_cache_mib)? * MIB,
                group_commit_max: positive("--wal-group-commit-max", self.wal.wal_group_commit_max as u64)? as usize,
                idempotency_window_ms: positive("--idempotency-window-secs", self.wal.idempotency_window_secs)? * 1000,
                append_deadline: Duration::from_millis(positive(
                    "--wal-append-timeout-ms",
                    self.wal.wal_append_timeout_ms,
                )?),
                min_free_bytes: self.wal.wal_min_free_mib * MIB,
            },
            flush: FlushOptions {
                batch_records: positive("--flush-batch-records", self.flush.flush_batch_records as u64)? as usize,
                batch_bytes: (positive("--flush-batch-mib", self.flush.flush_batch_mib)? * MIB) as usize,
                producer: ProducerOptions {
                    linger_ms: self.flush.flush_linger_ms,
                    message_timeout_ms: positive("--flush-message-timeout-ms", self.flush.flush_message_timeout_ms)?,
                    txn: self.kafka.txn()?,
                },
                max_backoff: Duration::from_millis(positive(
                    "--flush-max-backoff-ms",
                    self.flush.flush_max_backoff_ms,
                )?),
                interval: Duration::from_millis(self.flush.flush_interval_ms.unwrap_or(match self.ingest.ack {
                    AckPolicy::Wal => DEFAULT_FLUSH_INTERVAL_MS,
                    AckPolicy::Kafka => 0,
                })),
            },
            drain_timeout: Duration::from_millis(self.flush.drain_timeout_ms),
            kafka,
            transform: transform.map(|t| t.options(&self.kafka)).transpose()?,
        })
    }
}

/// Validates an explicit `--node-id`: it becomes part of Kafka ids and group names.
fn node_id(given: Option<&str>) -> Result<Option<NodeId>, ConfigError> {
    given.map(NodeId::parse).transpose().map_err(|e| ConfigError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests;
