//! `collector wal …`: offline inspection of a WAL directory.

use std::process::ExitCode;

use anyhow::{Context, Result};
use collector::config::{WalAction, WalCmd};
use collector::wal::{record, LogOptions, LogStore, SledLog};

pub fn run(cmd: &WalCmd) -> Result<ExitCode> {
    if !cmd.wal_dir.exists() {
        anyhow::bail!("no WAL at {}", cmd.wal_dir.display());
    }
    let log = SledLog::open(
        &cmd.wal_dir,
        LogOptions { segment_bytes: u64::MAX, cache_bytes: 16 * 1024 * 1024, idempotency_window_ms: 86_400_000 },
    )
    .with_context(|| format!("opening the WAL at {} (is a collector still running on it?)", cmd.wal_dir.display()))?;
    match &cmd.action {
        WalAction::Stats => {
            println!("{}", serde_json::to_string_pretty(&log.stats())?);
            Ok(ExitCode::SUCCESS)
        }
        WalAction::Verify => {
            let report = log.verify()?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.corrupt.is_empty() && report.lost.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        WalAction::Quarantine { export } => {
            if let Some(dir) = export {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            for (seq, bytes) in log.quarantined()? {
                let why = match record::decode(&bytes) {
                    Ok(_) => "intact now".to_string(),
                    Err(e) => e.to_string(),
                };
                let mut line = serde_json::json!({"seq": seq, "bytes": bytes.len(), "error": why});
                if let Some(dir) = export {
                    let path = dir.join(format!("{seq}.bin"));
                    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                    line["file"] = serde_json::json!(path);
                }
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
