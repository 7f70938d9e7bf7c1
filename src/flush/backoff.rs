//! Capped exponential backoff that wakes up early when a drain deadline passes.

use std::time::{Duration, Instant};

use super::flusher::DrainSignal;

/// Capped exponential backoff that wakes up early when a drain starts.
pub struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    const START: Duration = Duration::from_millis(100);

    pub fn new(max: Duration) -> Self {
        Backoff { current: Self::START, max }
    }

    pub fn reset(&mut self) {
        self.current = Self::START;
    }

    /// Sleeps for the current backoff (doubling it for next time). Returns true if it was cut
    /// short because a drain deadline passed.
    pub async fn sleep_or_drain(&mut self, drain: &mut DrainSignal) -> bool {
        let wait = self.current;
        self.current = (self.current * 2).min(self.max);
        let until = Instant::now() + wait;
        loop {
            let deadline = *drain.borrow_and_update();
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return true;
                }
            }
            let wake = deadline.map_or(until, |d| d.min(until));
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {
                    if Instant::now() >= until {
                        return deadline.is_some_and(|d| Instant::now() >= d);
                    }
                }
                changed = drain.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(until.into()).await;
                        return false;
                    }
                }
            }
        }
    }
}
