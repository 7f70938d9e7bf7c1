//! `verify`: every acknowledged event is in the transformed topic, exactly once.
//!
//! Reads the ids `run --acked` wrote, then streams the topic through `kcat` as a
//! `read_committed` consumer (an independent reader: this tool links no Kafka client) from a
//! little before the run started, and counts each row whose `event_type` is one of this run's
//! ids. Done when every acknowledged id has been seen and the topic has been quiet for a moment
//! (so a late duplicate still counts); lost when the deadline passes first. Rows of this run that
//! were never acknowledged (a request that failed after the WAL had it) are reported, not failed.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The acknowledged ids, as written by `loadgen run --acked`.
    #[arg(long)]
    acked: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The transformed topic (one row per event).
    #[arg(long, default_value = "collect-topic2")]
    topic: String,
    /// Every acknowledged event must be in the topic this many seconds after the load stopped.
    #[arg(long, default_value_t = 10.0)]
    deadline_secs: f64,
    /// Keep looking this many seconds after the load stopped (or after verify started, if later),
    /// to tell late events from lost ones.
    #[arg(long, default_value_t = 30.0)]
    timeout_secs: f64,
    /// After the last id arrived, keep reading until the topic is quiet this long (duplicates).
    #[arg(long, default_value_t = 1.0)]
    quiet_secs: f64,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The kcat binary.
    #[arg(long, default_value = "kcat")]
    kcat: String,
}

#[derive(Serialize)]
pub struct Verdict {
    pub acknowledged: u64,
    pub found: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Rows of this run whose request was not acknowledged.
    pub unacknowledged_rows: u64,
    /// Found, but after the deadline.
    pub late: u64,
    /// When the last acknowledged event was seen, in seconds after the load stopped.
    pub all_found_after_s: Option<f64>,
    pub deadline_s: f64,
    /// No event lost or duplicated, and all found by the deadline.
    pub ok: bool,
}

pub fn main(args: VerifyArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.acked).with_context(|| format!("reading {}", args.acked.display()))?;
    let mut lines = text.lines();
    let header = lines.next().context("the acked file is empty")?;
    let field = |name: &str| {
        header.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).map(str::to_owned)
    };
    let run = field("run").context("the acked file's header names no run")?;
    let started_at_ms: u64 = field("started_at_ms").and_then(|v| v.parse().ok()).context("no started_at_ms")?;
    let ended_at_ms: u64 = field("ended_at_ms").and_then(|v| v.parse().ok()).context("no ended_at_ms")?;
    let mut seen: HashMap<&str, u32> = lines.filter(|l| !l.is_empty()).map(|l| (l, 0)).collect();
    let total = seen.len() as u64;
    let prefix = format!("lg-{run}-");

    let mut child = Command::new(&args.kcat)
        .args(["-C", "-q", "-u", "-b", &args.brokers, "-t", &args.topic, "-X", "isolation.level=read_committed"])
        // -u: unbuffered, or the last rows wait in kcat's stdout buffer. From a second before the
        // run started: rows are stamped when produced, after that.
        .args(["-o", &format!("s@{}", started_at_ms.saturating_sub(1000)), "-f", "%s\\n"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", args.kcat))?;
    let stdout = child.stdout.take().context("kcat has no stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline_ms = ended_at_ms + (args.deadline_secs * 1000.0) as u64;
    // Run long after the load, verify still reads for the whole timeout before calling an event lost.
    let timeout_ms = ended_at_ms.max(now_ms()) + (args.timeout_secs.max(args.deadline_secs) * 1000.0) as u64;
    let (mut found, mut late, mut unacked, mut dup) = (0u64, 0u64, 0u64, 0u64);
    let mut all_found_after_s = None;
    let mut quiet_since = Instant::now();
    loop {
        let wait = if all_found_after_s.is_some() {
            let left = Duration::from_secs_f64(args.quiet_secs).saturating_sub(quiet_since.elapsed());
            if left.is_zero() {
                break;
            }
            left
        } else {
            let now = now_ms();
            if now >= timeout_ms {
                break;
            }
            Duration::from_millis((timeout_ms - now).min(200))
        };
        let line = match rx.recv_timeout(wait) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        quiet_since = Instant::now();
        let Some(id) = event_type(&line) else { continue };
        if !id.starts_with(&prefix) {
            continue;
        }
        match seen.get_mut(id) {
            Some(n) => {
                *n += 1;
                if *n == 1 {
                    found += 1;
                    if now_ms() > deadline_ms {
                        late += 1;
                    }
                    if found == total {
                        all_found_after_s = Some(now_ms().saturating_sub(ended_at_ms) as f64 / 1000.0);
                    }
                } else {
                    dup += 1;
                }
            }
            None => unacked += 1,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if total == 0 {
        all_found_after_s = Some(0.0);
    }
    let lost = total - found;
    let verdict = Verdict {
        acknowledged: total,
        found,
        lost,
        duplicated: dup,
        unacknowledged_rows: unacked,
        late,
        all_found_after_s,
        deadline_s: args.deadline_secs,
        ok: lost == 0 && dup == 0 && late == 0,
    };
    match verdict.all_found_after_s {
        Some(s) => eprintln!(
            "verify: all {total} acknowledged events of run {run} are in {} ({s:.2} s after the load stopped; deadline {:.0} s, {late} found after it); {dup} duplicated; {unacked} rows of unacknowledged requests",
            args.topic, args.deadline_secs
        ),
        None => eprintln!(
            "verify: {lost} of {total} acknowledged events of run {run} are missing from {} (read until {:.0} s after the load stopped or verify started; {late} more found only after the {:.0} s deadline); {dup} duplicated",
            args.topic,
            args.timeout_secs.max(args.deadline_secs),
            args.deadline_secs
        ),
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&verdict)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !verdict.ok {
        std::process::exit(1);
    }
    Ok(())
}

/// The `event_type` of a row (`{"event_type":"…",…}`, as the transform writes it).
fn event_type(row: &str) -> Option<&str> {
    let start = row.find("\"event_type\":\"")? + "\"event_type\":\"".len();
    let len = row[start..].find('"')?;
    Some(&row[start..start + len])
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_type_is_read_from_a_row() {
        let row = r#"{"event_type":"lg-ab-12","event_time":1,"user_id":"u","browser":"b","device":"d"}"#;
        assert_eq!(super::event_type(row), Some("lg-ab-12"));
        assert_eq!(super::event_type("{}"), None);
    }
}
