//! The settings, named once: every flag with a `COLLECTOR_…` environment variable is a setting,
//! and has exactly one key in the configuration file. The key is the variable's name without
//! `COLLECTOR_`, in lower case (`COLLECTOR_WAL_MAX_MIB` → `wal_max_mib`), in the section
//! [`SECTIONS`] puts it (`[wal]`). One exception, because it is a table: librdkafka's
//! properties (`-X`, `COLLECTOR_KAFKA_PROPERTIES`) are `[kafka.properties]`.
//!
//! Everything else about a setting (its flag, its variable, its type, which subcommands have it)
//! is read from the clap definitions in [`super`], so the file cannot drift from the command
//! line; a unit test checks that [`SECTIONS`] names every setting exactly once.

use std::any::TypeId;
use std::sync::OnceLock;

use clap::{Arg, ArgAction, CommandFactory};

use super::Cli;
pub use crate::kafka::secrets::is_secret;

/// The prefix of every setting's environment variable.
pub const ENV_PREFIX: &str = "COLLECTOR_";

/// `--config`'s variable: it names the file, it is not a setting in it.
pub const CONFIG_ENV: &str = "COLLECTOR_CONFIG";

/// The file's sections and the keys each holds, in the order `collector config check` prints
/// them. `""` is the top level: settings every subcommand shares.
pub const SECTIONS: &[(&str, &[&str])] = &[
    ("", &["log", "log_format", "node_id"]),
    (
        "ingest",
        &[
            "listen",
            "admin_listen",
            "api_key_file",
            "api_keys",
            "cors_origins",
            "max_body_bytes",
            "max_decompressed_bytes",
            "max_events",
            "max_field_bytes",
            "max_ctx_bytes",
            "max_row_bytes_per_request",
            "max_connections",
            "max_in_flight",
            "body_timeout_ms",
            "header_timeout_ms",
            "shutdown_grace_ms",
            "ack",
            "ack_timeout_ms",
        ],
    ),
    (
        "wal",
        &[
            "wal_dir",
            "wal_segment_mib",
            "wal_max_mib",
            "wal_min_free_mib",
            "wal_cache_mib",
            "wal_group_commit_max",
            "wal_append_timeout_ms",
            "idempotency_window_secs",
            "wal_copy_dir",
        ],
    ),
    (
        "flush",
        &[
            "flush_batch_records",
            "flush_batch_mib",
            "flush_linger_ms",
            "flush_message_timeout_ms",
            "flush_max_backoff_ms",
            "flush_interval_ms",
            "drain_timeout_ms",
        ],
    ),
    (
        "kafka",
        &[
            "brokers",
            "raw_topic",
            "transformed_topic",
            "dead_letter_topic",
            "positions_topic",
            "delivery_guarantee",
            "transaction_timeout_ms",
            "kafka_call_timeout_ms",
            "topic_partitions",
            "topic_replication",
            "topic_min_insync_replicas",
            PROPERTIES_KEY,
        ],
    ),
    (
        "transform",
        &[
            "group_id",
            "transform_session_timeout_ms",
            "transform_batch",
            "transform_batch_mib",
            "transform_wait_ms",
            "transform_linger_ms",
            "transform_message_timeout_ms",
            "transform_admin_listen",
        ],
    ),
];

/// The setting of `-X` (its variable is `COLLECTOR_KAFKA_PROPERTIES`); in the file, the table
/// `[kafka.properties]`.
pub const PROPERTIES_KEY: &str = "kafka_properties";

/// What a secret is shown as.
pub const MASK: &str = "<masked>";

/// Settings whose values are secrets: masked wherever the collector shows a value.
const SECRET_KEYS: &[&str] = &["api_keys"];

/// What a setting's value looks like in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TOML integer (`wal_max_mib = 8192`).
    Integer,
    /// A TOML string: text, paths, addresses, enumerations (`listen = "0.0.0.0:8000"`).
    String,
    /// An array of strings, for a repeatable flag (`cors_origins = ["https://shop.example"]`).
    List,
    /// A table of librdkafka properties (`[kafka.properties]`).
    Properties,
}

/// One setting: its file key and section, and its flag and variable as clap defines them.
#[derive(Debug, Clone)]
pub struct Setting {
    pub section: &'static str,
    pub key: &'static str,
    /// clap's id of the argument (the field's name), to look it up in parsed matches.
    pub id: String,
    /// How the command line spells it: `--wal-max-mib`, or `-X` for the properties.
    pub flag: String,
    /// `COLLECTOR_WAL_MAX_MIB`.
    pub env: String,
    pub kind: Kind,
}

impl Setting {
    /// Where the setting lives in the file: `[wal] wal_max_mib`, `log` (top level), or
    /// `[kafka.properties]`.
    pub fn file_key(&self) -> String {
        match (self.kind, self.section) {
            (Kind::Properties, _) => "[kafka.properties]".to_string(),
            (_, "") => self.key.to_string(),
            (_, section) => format!("[{section}] {}", self.key),
        }
    }

    /// True when the value must never be shown.
    pub fn is_secret(&self) -> bool {
        SECRET_KEYS.contains(&self.key)
    }
}

/// Every setting, in [`SECTIONS`] order.
pub fn all() -> &'static [Setting] {
    static ALL: OnceLock<Vec<Setting>> = OnceLock::new();
    ALL.get_or_init(|| {
        let args = arguments();
        SECTIONS
            .iter()
            .flat_map(|(section, keys)| keys.iter().map(move |key| (*section, *key)))
            .filter_map(|(section, key)| {
                let env = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
                // A key without a flag is caught by the unit test; skip it rather than panic here.
                let arg = args.iter().find(|a| env_of(a).as_deref() == Some(env.as_str()))?;
                Some(Setting {
                    section,
                    key,
                    id: arg.get_id().to_string(),
                    flag: match (arg.get_long(), arg.get_short()) {
                        (_, Some(short)) => format!("-{short}"),
                        (Some(long), None) => format!("--{long}"),
                        (None, None) => arg.get_id().to_string(),
                    },
                    env,
                    kind: kind_of(arg),
                })
            })
            .collect()
    })
}

/// The setting whose environment variable is `env`.
pub fn by_env(env: &str) -> Option<&'static Setting> {
    all().iter().find(|s| s.env == env)
}

/// The setting `key` in `section`.
pub fn find(section: &str, key: &str) -> Option<&'static Setting> {
    all().iter().find(|s| s.section == section && s.key == key)
}

/// The environment variable of a clap argument, if it has one.
pub fn env_of(arg: &Arg) -> Option<String> {
    arg.get_env().map(|e| e.to_string_lossy().into_owned())
}

/// Every argument of every subcommand that is a setting (has a `COLLECTOR_…` variable other
/// than [`CONFIG_ENV`]), each variable once.
pub fn arguments() -> Vec<Arg> {
    fn walk(cmd: &clap::Command, out: &mut Vec<Arg>) {
        for arg in cmd.get_arguments() {
            let Some(env) = env_of(arg) else { continue };
            if env.starts_with(ENV_PREFIX) && env != CONFIG_ENV && out.iter().all(|a| env_of(a) != Some(env.clone())) {
                out.push(arg.clone());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), &mut out);
    out
}

fn kind_of(arg: &Arg) -> Kind {
    if env_of(arg).is_some_and(|env| env == format!("{ENV_PREFIX}{}", PROPERTIES_KEY.to_ascii_uppercase())) {
        return Kind::Properties;
    }
    if matches!(arg.get_action(), ArgAction::Append) {
        return Kind::List;
    }
    let parsed = arg.get_value_parser().type_id();
    let integers = [
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<u32>(),
        TypeId::of::<u16>(),
        TypeId::of::<i64>(),
        TypeId::of::<i32>(),
    ];
    if integers.iter().any(|t| parsed == *t) {
        Kind::Integer
    } else {
        Kind::String
    }
}
