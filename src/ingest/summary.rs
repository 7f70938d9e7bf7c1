//! What the status page says of the configuration: enough to see what this collector does and
//! where, never a secret (no API key, no librdkafka property: `-X` carries SASL passwords).

use serde::Serialize;

/// Filled in by the binary's wiring (`app`) from the validated configuration, with the
/// addresses actually bound.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigSummary {
    /// `run` (ingest, flusher and transform) or `serve` (ingest and flusher).
    pub mode: &'static str,
    pub listen: String,
    /// The status page's own listener (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    pub node_id: String,
    pub wal_dir: String,
    /// The WAL quota, its segment size and the free space kept on its disk.
    pub wal_max_bytes: u64,
    pub wal_segment_bytes: u64,
    pub wal_min_free_bytes: u64,
    pub brokers: String,
    pub raw_topic: String,
    pub transformed_topic: String,
    pub dead_letter_topic: String,
    /// `exactly_once` or `at_least_once`.
    pub guarantee: &'static str,
    /// When `/collect` answers 2xx: `wal` or `kafka` (`--ack`).
    pub ack: &'static str,
    /// The transform's consumer group (absent without a transform in this process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform_group: Option<String>,
    pub max_body_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub max_events: usize,
    pub max_in_flight: usize,
    pub max_connections: usize,
    /// Whether `/collect` wants an API key, and for how many clients (never a key).
    pub api_keys: bool,
    pub api_key_clients: usize,
    /// Whether CORS origins are configured.
    pub cors: bool,
    pub drain_timeout_ms: u64,
}
