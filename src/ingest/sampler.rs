//! The status page's sampler: once a second, from the start of the pipeline until it stops
//! (through the drain too), it reads the counters the stages keep, the WAL's figures and the
//! Kafka clients' states into the [`History`](super::history::History).
//!
//! Nothing is added to the request path for it but two relaxed counter increments beside the
//! Prometheus ones ([`super::state::Accepted`]; the exporter cannot be read back). It also notes
//! what the WAL reports (a fault, records set aside or lost) among the recent errors, and
//! refreshes the `collector_kafka_connected` gauges, so that a client whose reports stopped
//! drops to 0 without anyone looking.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;

use super::history::{Sample, SAMPLE_EVERY};
use super::state::IngestState;
use crate::wal::{WalFault, WalStats};

/// Samples the pipeline every [`SAMPLE_EVERY`] into `state.history` until `stop` fires (or its
/// sender is dropped).
pub async fn sample(state: Arc<IngestState>, mut stop: oneshot::Receiver<()>) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut before = (Instant::now(), state.totals());
    let mut wal = WalWatch::default();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut stop => return,
        }
        let now = Instant::now();
        let totals = state.totals();
        let stats = state.log.stats();
        let sample = Sample::between(&before.1, &totals, now - before.0, crate::now_ms(), stats.pending_records);
        state.history.push(sample);
        before = (now, totals);
        wal.note_changes(&state, &stats);
        for link in state.kafka_links() {
            link.publish(now);
        }
    }
}

/// What the sampler last saw of the WAL, to note each change among the recent errors once.
#[derive(Debug, Default)]
struct WalWatch {
    /// The fault last noted (`None`: none, or it was cleared).
    fault: Option<String>,
    /// Records quarantined and lost as last seen (`None`: not looked yet).
    quarantined: Option<u64>,
    lost: Option<u64>,
}

impl WalWatch {
    fn note_changes(&mut self, state: &IngestState, stats: &WalStats) {
        let fault = state.wal_fault().map(|f| match f {
            WalFault::Failed(reason) => format!("the WAL failed and takes no appends: {reason}"),
            // Noted once when the stall is seen, not again as it lengthens.
            WalFault::Stalled(_) => "a WAL group commit is stalled past the append deadline".to_string(),
        });
        if fault.is_some() && fault != self.fault {
            state.errors.note("wal", fault.clone().unwrap_or_default());
        }
        self.fault = fault;
        let quarantined = self.quarantined.replace(stats.quarantined).unwrap_or(0);
        if stats.quarantined > quarantined {
            let n = stats.quarantined - quarantined;
            state.errors.note("wal", format!("{n} record(s) set aside in the quarantine (see the log for why)"));
        }
        let lost = self.lost.replace(stats.lost_records).unwrap_or(0);
        if stats.lost_records > lost {
            let n = stats.lost_records - lost;
            state.errors.note("wal", format!("{n} durable record(s) were missing when the WAL was opened"));
        }
    }
}
