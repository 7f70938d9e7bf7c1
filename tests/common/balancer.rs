//! A load balancer in the test's clients: tracker-like load spread over several collectors,
//! each request sent to the collector its `Idempotency-Key` hashes to, as nginx's `hash
//! $http_idempotency_key consistent` (with `proxy_next_upstream off`) would route it.
//!
//! The key decides the collector, not the connection or the attempt, so a retry reaches the
//! collector whose WAL holds the key's record, also while that collector is down: the retry
//! waits for it. A balancer that sent the retry of an answered-but-lost request elsewhere would
//! have it stored twice, since each collector remembers only its own keys.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{LoadCounters, LoadOutcome, LoadShape};

/// Which of `backends` collectors `key` goes to: FNV-1a of the key, then Lamping and Veach's
/// jump consistent hash, so adding a backend moves only the keys the new one takes.
pub fn backend_for(key: &str, backends: usize) -> usize {
    assert!(backends > 0, "no backend to route to");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let (mut chosen, mut next): (i64, i64) = (-1, 0);
    while next < backends as i64 {
        chosen = next;
        hash = hash.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((chosen + 1) as f64 * ((1u64 << 31) as f64 / ((hash >> 33) + 1) as f64)) as i64;
    }
    chosen as usize
}

/// What a balanced load did: the load's outcome, and how it was spread.
#[derive(Default)]
pub struct BalancedOutcome {
    pub load: LoadOutcome,
    /// Per backend (in the order of the ports given), the requests it acknowledged.
    pub acked_per_backend: Vec<usize>,
    /// Acknowledgements that were a collector's answer to a retry it had already stored
    /// (`"duplicate":true` in the receipt): an earlier attempt's answer was cut off.
    pub deduplicated: usize,
}

/// Tracker-like clients in front of several collectors (`ports`): one-event requests with
/// unique ids (`c{client}-{n}`, carried as `event_type` and as the `Idempotency-Key`), each sent
/// to `ports[backend_for(id)]` and retried there until it is acknowledged (a 503 must carry
/// `Retry-After`; a cut-off answer is retried); a client gives up on the request in hand only
/// when `stop` is set. Each client sends one request at a time, in order, so
/// [`LoadCounters::acked_per_client`] says exactly which ids were acknowledged so far.
pub fn start_balanced_load(
    ports: &[u16],
    shape: LoadShape,
    stop: Arc<AtomicBool>,
    counters: Arc<LoadCounters>,
) -> Vec<tokio::task::JoinHandle<BalancedOutcome>> {
    let urls: Arc<Vec<String>> = Arc::new(ports.iter().map(|p| format!("http://127.0.0.1:{p}/collect")).collect());
    (0..shape.clients)
        .map(|c| {
            let (stop, counters, urls) = (stop.clone(), counters.clone(), urls.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
                let filler = "x".repeat(shape.pad);
                let mut out = BalancedOutcome { acked_per_backend: vec![0; urls.len()], ..Default::default() };
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("c{c}-{i}");
                    i += 1;
                    out.load.attempted += 1;
                    let backend = backend_for(&id, urls.len());
                    let body = format!(
                        r#"{{"events":[{{"event_type":"{id}","event_time":1750867000000,"user_id":"user-{c}","pad":"{filler}"}}],"ctx":{{"browser":"Firefox","device":"Desktop","version":"126.0"}}}}"#
                    );
                    loop {
                        let sent = http
                            .post(&urls[backend])
                            .header("content-type", "application/json")
                            .header("idempotency-key", &id)
                            .body(body.clone())
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == 200 => {
                                // A cut-off body counts as a lost answer: retried like one.
                                let Ok(receipt) = r.json::<serde_json::Value>().await else {
                                    out.load.retries += 1;
                                    continue;
                                };
                                if receipt["duplicate"] == true {
                                    out.deduplicated += 1;
                                }
                                out.load.acked.insert(id.clone());
                                out.acked_per_backend[backend] += 1;
                                counters.acked.fetch_add(1, Ordering::Relaxed);
                                counters.acked_per_client.lock().unwrap().insert(c, i);
                                tokio::time::sleep(shape.pace).await;
                                break;
                            }
                            Ok(r) if r.status() == 503 => {
                                assert!(r.headers().contains_key("retry-after"), "503 without Retry-After");
                                counters.unavailable.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => panic!("unexpected status {} from {}", r.status(), urls[backend]),
                            Err(_) => {}
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        out.load.retries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                out
            })
        })
        .collect()
}

/// Waits for every client of [`start_balanced_load`] and sums what they did.
pub async fn finish_balanced_load(clients: Vec<tokio::task::JoinHandle<BalancedOutcome>>) -> BalancedOutcome {
    let mut total = BalancedOutcome::default();
    for c in clients {
        let o = c.await.unwrap();
        total.load.attempted += o.load.attempted;
        total.load.retries += o.load.retries;
        total.load.acked.extend(o.load.acked);
        total.deduplicated += o.deduplicated;
        if total.acked_per_backend.len() < o.acked_per_backend.len() {
            total.acked_per_backend.resize(o.acked_per_backend.len(), 0);
        }
        for (sum, n) in total.acked_per_backend.iter_mut().zip(&o.acked_per_backend) {
            *sum += n;
        }
    }
    total
}
