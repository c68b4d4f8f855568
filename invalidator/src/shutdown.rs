//! A shutdown signal that many waiters can observe.

use std::future::Future;
use tokio::sync::watch;

/// Set once, when the future given to [`Shutdown::new`] completes.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Watches `signal` on a background task.
    pub fn new(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = tx.send(true);
        });
        Self { rx }
    }

    /// Whether shutdown was asked for.
    pub fn is_set(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when shutdown is asked for (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the sender is gone without sending; treat a lost
        // signal as "never".
        if self.rx.wait_for(|set| *set).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
