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
//! - `disk` ([`disk`]): the disk's append + `fdatasync` latency, S3's yardstick.
//! - `watch` and `soak` ([`soak`]): the collector's RSS and WAL backlog sampled each second
//!   during a long run, and the verdict on them (S4).
//! - `table` ([`table`]): the scenario runner's table, from the measurements and their floors,
//!   with each row's target and whether it was met.
//! - `plot` ([`plot`]): several runs on shared SVG charts, the README's figures.

mod body;
mod disk;
mod floor;
mod plot;
mod report;
mod run;
mod soak;
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
    /// Measure the disk: append + fdatasync latency of fixed-size blocks in a directory.
    Disk(disk::DiskArgs),
    /// Sample a collector's RSS and WAL backlog once a second (for `soak`).
    Watch(soak::WatchArgs),
    /// Judge a soak: RSS flat and under its limit, backlog bounded, no errors.
    Soak(soak::SoakArgs),
    /// Print the scenario table (markdown) from the measurements and their floors.
    Table(table::TableArgs),
    /// Draw several runs on shared charts (SVG files): throughput over time, latency distribution.
    Plot(plot::PlotArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Floor(args) => floor::main(args),
        Command::Verify(args) => verify::main(args),
        Command::Disk(args) => disk::main(args),
        Command::Watch(args) => soak::watch(args),
        Command::Soak(args) => soak::soak(args),
        Command::Table(args) => table::main(args),
        Command::Plot(args) => plot::main(args),
    }
}
