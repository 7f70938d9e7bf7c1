//! Model test of the WAL: random sequences of appends, syncs, acknowledgements, reads, clean
//! reopens and crashes, compared after every step with a plain in-memory model.
//!
//! A crash is simulated faithfully: the WAL directory is copied while the log is open and
//! has not flushed (what a `kill -9` leaves on disk), and the copy is opened. Records that were
//! synced must all be there, intact; records appended after the last sync may or may not be.
//! Tiny random segment sizes make segment rolls and reclamation frequent.

mod common;

use std::collections::BTreeMap;

use collector::wal::record::{self, Entry};
use collector::wal::{LogOptions, LogStore, SledLog};
use common::{copy_dir, open_wal};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append this many records in one group (not yet durable).
    Append(u8),
    /// fsync: everything appended so far becomes durable.
    Sync,
    /// Acknowledge this many of the oldest durable records (clamped).
    Ack(u8),
    /// Read a window starting this many records after the watermark.
    Read { skip: u8, max: u8 },
    /// Close and reopen the log.
    Reopen,
    /// Lose the process: reopen from what is on disk right now.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20).prop_map(Op::Append),
        3 => Just(Op::Sync),
        2 => (0u8..30).prop_map(Op::Ack),
        2 => (0u8..10, 1u8..30).prop_map(|(skip, max)| Op::Read { skip, max }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn payload(seq: u64) -> Vec<u8> {
    format!(r#"{{"seq":{seq},"pad":"{}"}}"#, "x".repeat((seq % 17) as usize)).into_bytes()
}

fn open(dir: &std::path::Path, segment_bytes: u64) -> SledLog {
    open_wal(dir, LogOptions { segment_bytes, cache_bytes: 1 << 20, idempotency_window_ms: 60_000 })
}

/// Every pending record the log holds, in order.
fn contents(log: &SledLog, delivered: u64) -> Vec<(u64, Vec<u8>)> {
    log.read(delivered + 1, u64::MAX, usize::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| (r.seq, record::decode(r.frame.as_ref().expect("no corruption here")).unwrap().payload.to_vec()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40), segment_bytes in 1u64..2000) {
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        let mut log = open(dirs[0].path(), segment_bytes);
        // The model: pending records that are durable, pending records that are not yet, the
        // delivered watermark, and the lowest number the next append may get.
        let mut durable: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut volatile: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut delivered = 0u64;
        let mut next = 1u64;

        for op in ops {
            match op {
                Op::Append(n) => {
                    let first = log.stats().next_seq;
                    prop_assert!(first >= next, "sequence number {first} below {next}");
                    let frames: Vec<Vec<u8>> = (first..first + n as u64)
                        .map(|seq| record::encode(&Entry { received_at_ms: seq, client: "m", payload: &payload(seq) }))
                        .collect();
                    prop_assert_eq!(log.append(&frames, &[]).unwrap(), first);
                    for seq in first..first + n as u64 {
                        volatile.insert(seq, payload(seq));
                    }
                    next = first + n as u64;
                }
                Op::Sync => {
                    log.sync().unwrap();
                    durable.append(&mut volatile);
                }
                Op::Ack(k) => {
                    let through = durable.keys().nth((k as usize).min(durable.len().saturating_sub(1))).copied();
                    if let Some(through) = through {
                        log.ack_through(through).unwrap();
                        durable.retain(|&seq, _| seq > through);
                        volatile.retain(|&seq, _| seq > through);
                        delivered = through;
                    }
                }
                Op::Read { skip, max } => {
                    let from = delivered + 1 + skip as u64;
                    let got = log.read(from, next - 1, max as usize, usize::MAX).unwrap();
                    let all: BTreeMap<u64, Vec<u8>> = durable.iter().chain(volatile.iter()).map(|(s, p)| (*s, p.clone())).collect();
                    let want: Vec<(u64, Vec<u8>)> = all.range(from..).take(max as usize).map(|(s, p)| (*s, p.clone())).collect();
                    let got: Vec<(u64, Vec<u8>)> = got
                        .iter()
                        .map(|r| (r.seq, record::decode(r.frame.as_ref().unwrap()).unwrap().payload.to_vec()))
                        .collect();
                    prop_assert_eq!(got, want);
                }
                Op::Reopen | Op::Crash => {
                    if matches!(op, Op::Crash) {
                        // What a kill -9 leaves: the files as they are, nothing flushed.
                        let copy = tempfile::tempdir().unwrap();
                        copy_dir(dirs.last().unwrap().path(), copy.path());
                        drop(log);
                        dirs.push(copy);
                    } else {
                        drop(log);
                    }
                    log = open(dirs.last().unwrap().path(), segment_bytes);
                    let found = contents(&log, delivered);
                    for (seq, p) in &durable {
                        prop_assert!(found.contains(&(*seq, p.clone())), "durable record {} lost", seq);
                    }
                    for (seq, p) in &found {
                        let expected = durable.get(seq).or_else(|| volatile.get(seq));
                        prop_assert_eq!(Some(p), expected, "record {} is not one that was appended", seq);
                    }
                    // Whatever survived is now on disk; the rest is gone.
                    durable = found.into_iter().collect();
                    volatile.clear();
                    next = next.min(log.stats().next_seq).max(durable.keys().last().map_or(1, |s| s + 1));
                }
            }
            let stats = log.stats();
            prop_assert!(stats.next_seq >= next);
            prop_assert_eq!(stats.delivered_through, delivered);
            prop_assert_eq!(stats.pending_records, (durable.len() + volatile.len()) as u64);
            prop_assert!(stats.segments >= 1);
        }
    }
}
