//! The `collector` binary: parse the command line, start, wait for SIGTERM/SIGINT, drain.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use collector::app::{self, Pipeline};
use collector::config::{Cli, Command};
use tracing_subscriber::EnvFilter;

mod wal_cmd;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Wal(cmd) = &cli.command {
        return wal_cmd::run(cmd);
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => {
                let config = args.serve.pipeline(Some(&args.transform)).context("invalid configuration")?;
                serve(config).await
            }
            Command::Serve(args) => {
                let config = args.pipeline(None).context("invalid configuration")?;
                serve(config).await
            }
            Command::Transform(args) => {
                let (kafka, node, options) = args.worker().context("invalid configuration")?;
                app::run_transform(kafka, options, node, shutdown_signal()).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Wal(_) => unreachable!("handled above"),
        }
    });
    // A stage thread may still be blocked in a Kafka call past its deadline (the pipeline
    // already gave up on it, safely); do not let the runtime wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

async fn serve(config: app::PipelineConfig) -> Result<ExitCode> {
    let pipeline = Pipeline::start(config).await?;
    // Until a signal, or until a stage fails by itself (which has started the drain already).
    tokio::select! {
        () = shutdown_signal() => {}
        () = pipeline.shutting_down() => {}
    }
    pipeline.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
