//! The live status page in a real headless browser (Debian's `chromium`): the page, opened
//! once, follows the collector under load without reloading; its figures agree with the status
//! document, every Kafka client shows connected, and the configuration summary names the WAL
//! and the topics. Leaves a screenshot at `target/status-page.png` (the path is printed).

mod browser;
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use browser::Browser;
use common::*;

/// Events per request the load sends: the events figure must differ from the requests one.
const EVENTS_PER_REQUEST: u64 = 3;

/// Clients posting `EVENTS_PER_REQUEST`-event requests, one at a time each, until `stop`;
/// `acked` counts the 200s.
fn start_load(
    port: u16,
    clients: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let url = format!("http://127.0.0.1:{port}/collect");
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let events: Vec<String> = (0..EVENTS_PER_REQUEST)
                        .map(|e| {
                            format!(
                                r#"{{"event_type":"page-{c}-{i}-{e}","event_time":1750867000000,"user_id":"user-{c}"}}"#
                            )
                        })
                        .collect();
                    let body = format!(
                        r#"{{"events":[{}],"ctx":{{"browser":"Chromium","device":"Desktop","version":"156"}}}}"#,
                        events.join(",")
                    );
                    let sent = http.post(&url).header("content-type", "application/json").body(body).send().await;
                    let status = sent.map(|r| r.status().as_u16()).unwrap_or_else(|e| panic!("posting failed: {e}"));
                    assert_eq!(status, 200, "the load is refused");
                    acked.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        })
        .collect()
}

/// A figure of the page: the `data-value` of the element with id `id`, as a number.
fn figure(page: &mut Browser, id: &str) -> f64 {
    let value = page.eval(&format!("document.getElementById('{id}').dataset.value"));
    value.as_str().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("#{id} carries no number: {value}"))
}

fn text(page: &mut Browser, id: &str) -> String {
    page.eval(&format!("document.getElementById('{id}').textContent")).as_str().unwrap_or_default().to_string()
}

#[test]
fn the_status_page_follows_the_pipeline_under_load_without_reloading() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    let c = Collector::start("run", wal.path(), 0, &topics.args("run"));

    let mut page = Browser::launch();
    page.open(&c.admin_url("/"));
    page.wait_for(
        "the page's first update",
        Duration::from_secs(20),
        "Number(document.body.dataset.updates || 0) >= 1",
    );
    // Set in the page once: a reload would lose it.
    page.eval("window.statusPageTest = 'not reloaded'");
    assert_eq!(figure(&mut page, "total-requests"), 0.0);
    let updates_before = page.eval("Number(document.body.dataset.updates)").as_f64().unwrap();

    // Load, and the figures move on the open page.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let clients = {
        let _entered = runtime.enter();
        start_load(c.port(), 3, stop.clone(), acked.clone())
    };
    let minute = Duration::from_secs(60);
    page.wait_for(
        "accepted requests to rise on the page",
        minute,
        "Number(document.getElementById('total-requests').dataset.value) >= 100",
    );
    page.wait_for(
        "a current request rate above 0",
        minute,
        "Number(document.getElementById('rate-requests').dataset.value) > 0",
    );
    page.wait_for(
        "records delivered to Kafka",
        minute,
        "Number(document.getElementById('total-delivered').dataset.value) >= 50",
    );
    page.wait_for("rows transformed", minute, "Number(document.getElementById('total-rows').dataset.value) >= 150");
    page.wait_for(
        "the requests sparkline to show the load",
        minute,
        "Number(document.getElementById('spark-requests').dataset.max) > 0",
    );
    page.wait_for(
        "every stage's Kafka client to show connected",
        minute,
        "[...document.querySelectorAll('#kafka tr')].map(r => r.dataset.stage + '=' + r.dataset.state).join(' ') === \
         'flusher=connected transform_consumer=connected transform_producer=connected'",
    );
    page.wait_for(
        "the transform's lag to be reported",
        minute,
        "document.getElementById('transform-lag').dataset.value !== ''",
    );
    // A quarter of a minute of load on the sparklines, for the screenshot.
    page.wait_for("15 s of history", minute, "Number(document.getElementById('spark-requests').dataset.points) >= 15");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("status-page.png");
    page.screenshot(&shot);
    println!("status page screenshot (under load): {}", shot.display());
    eprintln!("status page screenshot (under load): {}", shot.display());

    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for client in clients {
            client.await.unwrap();
        }
    });
    let sent = acked.load(Ordering::Relaxed);
    assert!(sent >= 100, "{sent} requests acknowledged");

    // Once everything has gone through, the page shows exactly what the document says.
    let all_through = format!(
        "Number(document.getElementById('total-requests').dataset.value) === {sent} && \
         Number(document.getElementById('total-delivered').dataset.value) === {sent} && \
         Number(document.getElementById('total-rows').dataset.value) === {rows} && \
         Number(document.getElementById('wal-pending').dataset.value) === 0",
        rows = sent * EVENTS_PER_REQUEST
    );
    page.wait_for("the page to show every request delivered and transformed", minute, &all_through);
    let document: serde_json::Value =
        runtime.block_on(async { reqwest::get(c.admin_url("/status.json")).await.unwrap().json().await.unwrap() });
    assert_eq!(document["totals"]["requests_accepted"], sent, "{document}");
    assert_eq!(figure(&mut page, "total-requests"), sent as f64, "the page agrees with the document");
    assert_eq!(figure(&mut page, "total-events"), (sent * EVENTS_PER_REQUEST) as f64);
    assert_eq!(document["totals"]["events_accepted"], sent * EVENTS_PER_REQUEST);
    assert_eq!(document["totals"]["rows_transformed"], sent * EVENTS_PER_REQUEST);

    // It updated itself, in place.
    assert_eq!(page.eval("window.statusPageTest"), "not reloaded", "the page was reloaded");
    let updates = page.eval("Number(document.body.dataset.updates)").as_f64().unwrap();
    assert!(updates >= updates_before + 5.0, "updates {updates_before} → {updates}");
    let points = page.eval("Number(document.getElementById('spark-requests').dataset.points)").as_f64().unwrap();
    assert!(points >= 5.0, "the sparkline has one point a second: {points}");

    assert_eq!(page.eval("document.getElementById('state').dataset.state"), "accepting");
    assert_eq!(text(&mut page, "state"), "Accepting");
    assert_eq!(text(&mut page, "errors-empty"), "None since start.");
    assert_eq!(page.eval("document.getElementById('errors-empty').hidden"), false, "no error listed");
    let wal_dir = wal.path().display().to_string();
    assert_eq!(text(&mut page, "config-wal-dir"), wal_dir);
    let topics_shown = text(&mut page, "config-topics");
    for topic in [&topics.raw, &topics.transformed, &topics.dead_letter] {
        assert!(topics_shown.contains(topic.as_str()), "{topic} in {topics_shown:?}");
    }
    assert_eq!(text(&mut page, "config-brokers"), brokers);
    assert_eq!(text(&mut page, "config-guarantee"), "exactly-once · the WAL's fsync (--ack wal)");
    assert!(text(&mut page, "config-access").starts_with("off (open)"));
    assert_eq!(text(&mut page, "node"), document["node_id"].as_str().unwrap());
}
