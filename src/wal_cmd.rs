//! `collector wal …`: offline inspection of a WAL directory.

use std::process::ExitCode;

use anyhow::{Context, Result};
use collector::config::{WalAction, WalCmd};
use collector::wal::{LogOptions, LogStore, SledLog};

pub fn run(cmd: &WalCmd) -> Result<ExitCode> {
    if !cmd.wal_dir.exists() {
        anyhow::bail!("no WAL at {}", cmd.wal_dir.display());
    }
    let log = SledLog::open(
        &cmd.wal_dir,
        LogOptions { segment_bytes: u64::MAX, cache_bytes: 16 * 1024 * 1024, idempotency_window_ms: 86_400_000 },
    )
    .with_context(|| format!("opening the WAL at {} (is a collector still running on it?)", cmd.wal_dir.display()))?;
    match cmd.action {
        WalAction::Stats => {
            println!("{}", serde_json::to_string_pretty(&log.stats())?);
            Ok(ExitCode::SUCCESS)
        }
        WalAction::Verify => {
            let report = log.verify()?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.corrupt.is_empty() && report.lost.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        WalAction::Quarantine => {
            for (seq, bytes) in log.quarantined()? {
                println!("{}", serde_json::json!({"seq": seq, "bytes": bytes.len()}));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
