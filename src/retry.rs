//! Pacing shared by every retry loop of the stages: a capped exponential [`Backoff`] whose
//! sleep ends early when the stage is told to stop ([`Stop`]).
//!
//! A stage is stopped with a deadline: the flusher keeps delivering until the WAL is empty or
//! the drain deadline passes; the transform worker is given a deadline of "now". Either way a
//! sleeping retry loop wakes as soon as the deadline passes, so shutdown never waits out a
//! backoff.

use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;

/// Tells a stage when to finish: `None` while it should run; `Some(deadline)` once it should
/// finish what it can and stop by `deadline`.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<Option<Instant>>);

/// The sending side of a [`Stop`].
#[derive(Debug)]
pub struct StopHandle(watch::Sender<Option<Instant>>);

impl StopHandle {
    /// Asks the stage to finish by `deadline`.
    pub fn stop_by(&self, deadline: Instant) {
        let _ = self.0.send(Some(deadline));
    }

    /// Asks the stage to stop now.
    pub fn stop_now(&self) {
        self.stop_by(Instant::now());
    }
}

impl Stop {
    /// A stop signal and the handle that triggers it.
    pub fn new() -> (StopHandle, Stop) {
        let (tx, rx) = watch::channel(None);
        (StopHandle(tx), Stop(rx))
    }

    /// True once the stage was asked to finish (its deadline may not have passed yet).
    pub fn requested(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// True once the deadline has passed: give up on what is left.
    pub fn expired(&self) -> bool {
        self.0.borrow().is_some_and(|d| Instant::now() >= d)
    }

    /// Resolves when the signal changes (or its sender is gone).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Sleeps for `wait`, or until the deadline passes if that comes first. True if the
    /// deadline has passed.
    pub async fn sleep(&mut self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        loop {
            let deadline = *self.0.borrow_and_update();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return true;
            }
            let wake = deadline.map_or(until, |d| d.min(until));
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {
                    if Instant::now() >= until {
                        return self.expired();
                    }
                }
                changed = self.0.changed() => {
                    if changed.is_err() {
                        // Nobody can stop us any more: sleep the full time.
                        tokio::time::sleep_until(until.into()).await;
                        return false;
                    }
                }
            }
        }
    }

    /// [`Stop::sleep`] for a stage thread outside the async runtime.
    pub fn sleep_blocking(&self, runtime: &Handle, wait: Duration) -> bool {
        runtime.block_on(self.clone().sleep(wait))
    }
}

/// Capped exponential backoff: 100 ms, doubling up to `max`.
#[derive(Debug)]
pub struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    const START: Duration = Duration::from_millis(100);

    pub fn new(max: Duration) -> Self {
        Backoff { current: Self::START.min(max), max }
    }

    /// Back to the shortest pause, after something worked.
    pub fn reset(&mut self) {
        self.current = Self::START.min(self.max);
    }

    /// The pause to take now; the next one is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let wait = self.current;
        self.current = (self.current * 2).min(self.max);
        wait
    }

    /// Sleeps for the next delay on a stage thread; true if `stop`'s deadline passed (give up).
    pub fn pause(&mut self, runtime: &Handle, stop: &Stop) -> bool {
        let wait = self.next_delay();
        stop.sleep_blocking(runtime, wait) || stop.expired()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_sleep_ends_early_when_the_deadline_passes() {
        let (handle, mut stop) = Stop::new();
        let started = Instant::now();
        let sleeper = tokio::spawn(async move { stop.sleep(Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        handle.stop_now();
        assert!(sleeper.await.unwrap(), "the sleep reports that the deadline passed");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_later_deadline_lets_the_sleep_finish() {
        let (handle, mut stop) = Stop::new();
        handle.stop_by(Instant::now() + Duration::from_secs(60));
        assert!(!stop.sleep(Duration::from_millis(10)).await);
        assert!(stop.requested() && !stop.expired());
    }
}
