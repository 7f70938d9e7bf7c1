//! A set of byte ranges: the parts of a file written since its last fsync.
//!
//! A WAL appends, so the set usually holds one growing range; merging on insert keeps it that
//! small. Ranges are half-open, `[start, end)`.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ranges {
    /// start -> end, disjoint and not touching (touching ranges are merged).
    spans: BTreeMap<u64, u64>,
}

impl Ranges {
    /// Adds `[start, end)`, merging it with every range it overlaps or touches.
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // The range starting at or before `start` may reach into the new one.
        if let Some((&s, &e)) = self.spans.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let absorbed: Vec<u64> = self.spans.range(start..=end).map(|(&s, _)| s).collect();
        for s in absorbed {
            let e = self.spans.remove(&s).unwrap_or(s);
            end = end.max(e);
        }
        self.spans.insert(start, end);
    }

    /// The ranges in order, each cut at `limit` (bytes past the end of the file do not exist).
    pub fn clipped(&self, limit: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.spans.iter().filter(move |(&s, _)| s < limit).map(move |(&s, &e)| (s, e.min(limit)))
    }

    pub fn clear(&mut self) {
        self.spans.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Ranges;

    fn spans(r: &Ranges) -> Vec<(u64, u64)> {
        r.clipped(u64::MAX).collect()
    }

    #[test]
    fn appends_merge_into_one_range() {
        let mut r = Ranges::default();
        for i in 0..100 {
            r.insert(i * 10, i * 10 + 10);
        }
        assert_eq!(spans(&r), vec![(0, 1000)]);
    }

    #[test]
    fn overlapping_and_disjoint_ranges() {
        let mut r = Ranges::default();
        r.insert(100, 200);
        r.insert(300, 400);
        r.insert(0, 10);
        assert_eq!(spans(&r), vec![(0, 10), (100, 200), (300, 400)]);
        r.insert(150, 350);
        assert_eq!(spans(&r), vec![(0, 10), (100, 400)]);
        r.insert(5, 5);
        assert_eq!(spans(&r), vec![(0, 10), (100, 400)]);
        r.insert(0, 1000);
        assert_eq!(spans(&r), vec![(0, 1000)]);
    }

    #[test]
    fn clipping_drops_ranges_past_the_limit() {
        let mut r = Ranges::default();
        r.insert(0, 10);
        r.insert(20, 30);
        assert_eq!(r.clipped(25).collect::<Vec<_>>(), vec![(0, 10), (20, 25)]);
        assert_eq!(r.clipped(20).collect::<Vec<_>>(), vec![(0, 10)]);
    }
}
