//! `loadgen`: the collector's own HTTP load generator and the yardsticks around it.
//!
//! # Layout
//! - `run` ([`run`]): workers, one keep-alive HTTP/1.1 connection each, post `/collect` bodies
//!   built by [`body`] (every event id unique: `event_type` = `lg-<run>-<n>`), closed loop (max
//!   rate) or open loop (`--rate`, latency from the intended send time), into HDR histograms;
//!   a progress line each second, then a summary ([`report`]: JSON, HTML with inline SVG) and
//!   the acknowledged ids.
//! - `floor` ([`floor`]): a do-nothing axum handler, the ceiling any HTTP service on this machine
//!   can reach; every collector figure is read as a ratio to it, measured in the same run.
//! - `verify` ([`verify`]): reads the transformed topic through `kcat` (`read_committed`) and
//!   checks that each acknowledged event is there exactly once.
//! - `table` ([`table`]): the scenario runner's table, from run summaries and their floors.

mod body;
mod floor;
mod report;
mod run;
mod table;
mod verify;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadgen", version, about = "Load generator, floor and verifier for the collector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send load to a /collect endpoint and report throughput and latency.
    Run(run::RunArgs),
    /// Serve the floor: POST /collect reads the body and answers a small JSON 200, nothing else.
    Floor(floor::FloorArgs),
    /// Check that every acknowledged event of a run is in the transformed topic exactly once.
    Verify(verify::VerifyArgs),
    /// Print the scenario table (markdown) from run summaries and their floors.
    Table(table::TableArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Floor(args) => floor::main(args),
        Command::Verify(args) => verify::main(args),
        Command::Table(args) => table::main(args),
    }
}
