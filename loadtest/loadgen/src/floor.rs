//! The floor: the cheapest HTTP service the collector's stack can be.
//!
//! axum 0.8 (http1 only, as the collector), a multi-thread tokio runtime built as the collector
//! builds its own, `TCP_NODELAY` as the collector sets it, and one handler that reads the whole
//! body and answers a small JSON receipt. Whatever the collector does beyond this is its cost.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

#[derive(clap::Args)]
pub struct FloorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
}

/// Answers count requests like the collector's receipt counts its WAL sequence.
static SEQ: AtomicU64 = AtomicU64::new(0);

async fn collect(body: Bytes) -> impl IntoResponse {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) + 1;
    let receipt = format!("{{\"status\":\"ok\",\"seq\":{seq},\"bytes\":{}}}", body.len());
    ([(header::CONTENT_TYPE, "application/json")], receipt)
}

pub fn main(args: FloorArgs) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        eprintln!("floor: listening on http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/collect", post(collect))
            .route("/healthz", get(|| async { "{\"status\":\"alive\"}" }))
            // A body as large as the collector's default --max-body-bytes.
            .layer(axum::extract::DefaultBodyLimit::max(900_000));
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}
