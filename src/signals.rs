//! SIGTERM and SIGINT for the binary: the first starts the graceful drain, the next one while
//! draining cuts it short (an operator who asks twice wants out now).

use tokio::sync::watch;

/// Counts SIGTERM/SIGINT from the moment it is created, so a quick second signal is never
/// missed between two waits.
pub struct Signals(watch::Receiver<u32>);

impl Signals {
    /// Starts listening (needs the Tokio runtime).
    ///
    /// # Errors
    /// The signal handlers cannot be installed.
    pub fn listen() -> std::io::Result<Signals> {
        let (count, received) = watch::channel(0);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    count.send_modify(|n| *n += 1);
                }
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                count.send_modify(|n| *n += 1);
            }
        });
        Ok(Signals(received))
    }

    /// How many signals arrived so far.
    pub fn count(&self) -> u32 {
        *self.0.borrow()
    }

    /// Resolves once `n` signals arrived in all.
    pub async fn received(&self, n: u32) {
        let _ = self.0.clone().wait_for(|count| *count >= n).await;
    }
}
