//! The `collector` binary: read the command line, environment and configuration file, start, wait for SIGTERM/SIGINT, drain. A
//! second signal during the drain exits at once, non-zero: what the WAL holds stays there,
//! safe, for the next start.

use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use collector::app::{self, Pipeline};
use collector::config::{self, Command, LoadError, Loaded, LogFormat, Startup};
use signals::Signals;
use tracing::warn;
use tracing_subscriber::EnvFilter;

mod signals;
mod wal_cmd;

/// mimalloc instead of glibc's malloc: the request path allocates on the tokio workers and
/// frees on the WAL writer, which glibc pays for in `malloc_consolidate` and `unlink_chunk`
/// (17-21 % of the collector's samples under load). Without transparent huge pages
/// (`no_thp`), which cost 40-50 MB more RSS for the same load. Measured in loadtest/PROFILE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The exit status of a configuration that cannot work, as clap's for a flag that does not
/// parse: restarting cannot fix it (the systemd unit's RestartPreventExitStatus).
const INVALID_CONFIGURATION: u8 = 2;

fn main() -> ExitCode {
    let Loaded { cli, origins } = match config::load(std::env::args_os()) {
        Ok(loaded) => loaded,
        Err(LoadError::Cli(e)) => e.exit(),
        Err(LoadError::Config(e)) => {
            eprintln!("collector: invalid configuration: {e}");
            return ExitCode::from(INVALID_CONFIGURATION);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        // The event's fields at the top level; the innermost span (e.g. `request` with its
        // `request_id`) as `span`.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
    match run(cli.command, &origins) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, origins: &config::Origins) -> Result<ExitCode> {
    let startup = match &command {
        Command::Wal(cmd) => return wal_cmd::run(cmd),
        Command::Config(cmd) => return Ok(config_check(cmd, origins)),
        other => other.startup().expect("run, serve and transform start something"),
    };
    let startup = match startup {
        Ok(startup) => startup,
        Err(e) => {
            eprintln!("collector: invalid configuration: {}", origins.explain(&e));
            return Ok(ExitCode::from(INVALID_CONFIGURATION));
        }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let signals = Signals::listen().context("installing the signal handlers")?;
        match startup {
            Startup::Pipeline(config) => serve(config, &signals).await,
            Startup::Transform { kafka, node, options, admin } => {
                tokio::select! {
                    stopped = app::run_transform(kafka, options, node, admin, signals.received(1)) => stopped?,
                    () = signals.received(2) => {
                        // Safe: the batch in hand is not committed, so it is read again.
                        warn!("A second signal: exiting now, without waiting for the worker.");
                        return Err(anyhow!("stopped by a second signal before the worker finished"));
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    // A stage thread may still be blocked in a Kafka call past its deadline (the pipeline
    // already gave up on it, safely); do not let the runtime wait for it.
    runtime.shutdown_timeout(app::RUNTIME_EXIT_GRACE);
    result
}

/// `collector config check`: the effective configuration on stdout, then the verdict.
fn config_check(cmd: &config::ConfigCmd, origins: &config::Origins) -> ExitCode {
    let checked = config::check::run(cmd, origins);
    print!("{}", checked.effective);
    match checked.verdict {
        Ok(()) => {
            println!(
                "\n# Valid: `collector {}` would start with this configuration.",
                origins.command.trim_start_matches("config check ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("collector: invalid configuration: {e}");
            ExitCode::from(INVALID_CONFIGURATION)
        }
    }
}

async fn serve(config: app::PipelineConfig, signals: &Signals) -> Result<ExitCode> {
    let pipeline = Pipeline::start(config).await?;
    // Until a signal, or until a stage fails by itself (which has started the drain already).
    tokio::select! {
        () = signals.received(1) => {}
        () = pipeline.shutting_down() => {}
    }
    let wal = pipeline.wal();
    let interrupt = signals.count() + 1;
    tokio::select! {
        stopped = pipeline.stop() => stopped?,
        () = signals.received(interrupt) => {
            let pending = wal.stats().pending_records;
            warn!(pending_records = pending, "A second signal: exiting now, before the drain finished. The records still in the WAL are safe there and are delivered after the next start.");
            return Err(anyhow!("stopped by a second signal while draining; {pending} records stay in the WAL"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
