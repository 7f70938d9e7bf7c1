//! `plot`: several runs on shared charts, as standalone SVG files (the README's figures):
//! acknowledged requests per second over time, and the latency distribution.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::report::{self, Summary};

#[derive(clap::Args)]
pub struct PlotArgs {
    /// A run to draw: `LABEL=FILE`, FILE being a `run --json` summary (repeatable; drawn in
    /// this order).
    #[arg(long = "run", required = true)]
    runs: Vec<String>,
    /// Write the throughput chart (req/s per second of each run) here.
    #[arg(long)]
    throughput: Option<PathBuf>,
    /// Write the latency-distribution chart (each run's latency by percentile) here.
    #[arg(long)]
    latency: Option<PathBuf>,
}

pub fn main(args: PlotArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for run in &args.runs {
        let (label, file) = run.split_once('=').with_context(|| format!("--run {run}: expected LABEL=FILE"))?;
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        let summary: Summary = serde_json::from_str(&text).with_context(|| format!("parsing {file}"))?;
        runs.push((label, summary));
    }
    if let Some(path) = &args.throughput {
        let series: Vec<(&str, Vec<(f64, f64)>)> = runs
            .iter()
            .map(|(label, s)| (*label, s.series.iter().map(|x| (x.t as f64, x.acked as f64)).collect()))
            .collect();
        write(path, &report::svg_lines(&series, "seconds", "acknowledged req/s"))?;
    }
    if let Some(path) = &args.latency {
        let series: Vec<(&str, Vec<(f64, f64)>)> =
            runs.iter().map(|(label, s)| (*label, report::nines(&s.latency_spectrum))).collect();
        write(path, &report::svg_lines(&series, "percentile (nines: 1 = 90 %, 2 = 99 %, 3 = 99.9 %)", "latency ms"))?;
    }
    Ok(())
}

fn write(path: &PathBuf, svg: &str) -> anyhow::Result<()> {
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}
