//! `collector wal …`: offline inspection of a WAL directory. It reads a copy of the WAL (see
//! [`Inspection`]) and never changes the WAL itself; a WAL a collector is running on is refused.

use std::process::ExitCode;

use anyhow::{Context, Result};
use collector::config::{WalAction, WalCmd};
use collector::wal::{record, Inspection};

pub fn run(cmd: &WalCmd) -> Result<ExitCode> {
    let wal = Inspection::open(&cmd.wal_dir, cmd.copy_dir.as_deref()).with_context(|| {
        format!("inspecting the WAL at {} (is a collector still running on it?)", cmd.wal_dir.display())
    })?;
    match &cmd.action {
        WalAction::Stats => {
            println!("{}", serde_json::to_string_pretty(&wal.stats())?);
            Ok(ExitCode::SUCCESS)
        }
        WalAction::Verify => {
            let report = wal.verify()?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.corrupt.is_empty() && report.lost.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        WalAction::Quarantine { export } => {
            if let Some(dir) = export {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            for q in wal.quarantined()? {
                let (seq, bytes) = (q.seq, q.bytes);
                let why = match (q.set_aside, record::decode(&bytes)) {
                    (Some(reason), _) => reason,
                    (None, Ok(_)) => "intact now".to_string(),
                    (None, Err(e)) => e.to_string(),
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
