//! Model test of the WAL: random sequences of appends, acknowledgements, reads and reopens,
//! compared after every step with a plain in-memory model (a map of pending records and a
//! watermark). Tiny random segment sizes make segment rolls and reclamation frequent.
//!
//! Crash-without-flush is not modelled here; it needs a process boundary (see the kill -9 test).

use std::collections::BTreeMap;

use collector::wal::record::{self, Entry};
use collector::wal::{LogOptions, LogStore, SledLog};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append this many records in one group.
    Append(u8),
    /// Acknowledge this many of the oldest pending records (clamped).
    Ack(u8),
    /// Read a window starting this many records after the watermark.
    Read { skip: u8, max: u8 },
    /// Close and reopen the log.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20).prop_map(Op::Append),
        2 => (0u8..30).prop_map(Op::Ack),
        2 => (0u8..10, 1u8..30).prop_map(|(skip, max)| Op::Read { skip, max }),
        1 => Just(Op::Reopen),
    ]
}

fn payload(seq: u64) -> Vec<u8> {
    format!(r#"{{"seq":{seq},"pad":"{}"}}"#, "x".repeat((seq % 17) as usize)).into_bytes()
}

fn open(dir: &std::path::Path, segment_bytes: u64) -> SledLog {
    SledLog::open(dir, LogOptions { segment_bytes, cache_bytes: 1 << 20, idempotency_window_ms: 60_000 }).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40), segment_bytes in 1u64..2000) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), segment_bytes);
        // The model: pending records by sequence number, and the delivered watermark.
        let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut delivered = 0u64;
        let mut next = 1u64;

        for op in ops {
            match op {
                Op::Append(n) => {
                    let frames: Vec<Vec<u8>> = (next..next + n as u64)
                        .map(|seq| record::encode(&Entry { received_at_ms: seq, client: "m", payload: &payload(seq) }))
                        .collect();
                    let first = log.append(&frames, &[]).unwrap();
                    log.sync().unwrap();
                    prop_assert_eq!(first, next, "sequence numbers are consecutive");
                    for seq in next..next + n as u64 {
                        pending.insert(seq, payload(seq));
                    }
                    next += n as u64;
                }
                Op::Ack(k) => {
                    let through = pending.keys().nth((k as usize).min(pending.len().saturating_sub(1))).copied();
                    if let Some(through) = through {
                        log.ack_through(through).unwrap();
                        pending.retain(|&seq, _| seq > through);
                        delivered = through;
                    }
                }
                Op::Read { skip, max } => {
                    let from = delivered + 1 + skip as u64;
                    let got = log.read(from, next - 1, max as usize, usize::MAX).unwrap();
                    let want: Vec<(u64, Vec<u8>)> =
                        pending.range(from..).take(max as usize).map(|(s, p)| (*s, p.clone())).collect();
                    let got: Vec<(u64, Vec<u8>)> = got
                        .iter()
                        .map(|r| (r.seq, record::decode(r.frame.as_ref().unwrap()).unwrap().payload.to_vec()))
                        .collect();
                    prop_assert_eq!(got, want);
                }
                Op::Reopen => {
                    drop(log);
                    log = open(dir.path(), segment_bytes);
                }
            }
            let stats = log.stats();
            prop_assert_eq!(stats.next_seq, next);
            prop_assert_eq!(stats.delivered_through, delivered);
            prop_assert_eq!(stats.pending_records, pending.len() as u64);
            prop_assert!(stats.segments >= 1);
        }
    }
}
