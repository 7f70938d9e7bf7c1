//! `table`: the scenario runner's one table, from the runs' JSON summaries.
//!
//! Each row is a run and, optionally, the floor it is compared with (the same load against the
//! do-nothing handler, in the same run of the scenario runner) and a `verify` result.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::report::Summary;

#[derive(clap::Args)]
pub struct TableArgs {
    /// A row: `LABEL|RUN.json[|FLOOR.json[|VERIFY.json]]` (empty fields allowed).
    #[arg(long = "row", required = true)]
    rows: Vec<String>,
    /// Also write the table (markdown, with the notes) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A line printed under the table (repeatable).
    #[arg(long)]
    note: Vec<String>,
}

pub fn main(args: TableArgs) -> anyhow::Result<()> {
    let mut t = String::from(
        "| scenario | req/s | × floor | events/s | MB/s | p50 ms | p99 ms | p99.9 ms | errors | generator CPU | all in topic2 after |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in &args.rows {
        let f: Vec<&str> = row.split('|').collect();
        anyhow::ensure!(f.len() >= 2, "a row is LABEL|RUN.json[|FLOOR.json[|VERIFY.json]]: {row}");
        let run = load(Path::new(f[1]))?;
        let ratio = match f.get(2).filter(|p| !p.is_empty()) {
            Some(p) => format!("{:.2}", run.req_per_s / load(Path::new(p))?.req_per_s.max(1e-9)),
            None => "–".into(),
        };
        let verified = match f.get(3).filter(|p| !p.is_empty()) {
            Some(p) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {p}"))?)?;
                let verdict = if v["ok"].as_bool() == Some(true) { "" } else { " **(fails)**" };
                match v["all_found_after_s"].as_f64() {
                    Some(s) => format!("{s:.1} s, {} duplicated{verdict}", v["duplicated"]),
                    None => format!("**{} lost**, {} duplicated", v["lost"], v["duplicated"]),
                }
            }
            None => "–".into(),
        };
        let l = &run.latency_ms;
        let _ = writeln!(
            t,
            "| {} | {:.0} | {ratio} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.0} % | {verified} |",
            f[0],
            run.req_per_s,
            run.events_per_s,
            run.mb_per_s,
            l.p50,
            l.p99,
            l.p99_9,
            run.error_total,
            run.client_cpu_percent
        );
    }
    for n in &args.note {
        let _ = write!(t, "\n{n}\n");
    }
    println!("{t}");
    if let Some(out) = &args.out {
        std::fs::write(out, &t).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn load(path: &Path) -> anyhow::Result<Summary> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}
