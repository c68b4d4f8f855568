//! In-process single-flight: concurrent misses on one key share one
//! computation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

type Published = Option<Arc<[u8]>>;

#[derive(Default)]
pub(crate) struct Flights {
    next_id: AtomicU64,
    map: Mutex<HashMap<String, (u64, watch::Receiver<Published>)>>,
}

pub(crate) enum Joined<'a> {
    /// First miss: compute (or fetch), then [`Leader::publish`].
    Leader(Leader<'a>),
    /// Another caller is on it: wait for what it publishes.
    Follower(Follower),
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Joined<'_> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, rx)) = map.get(key) {
            return Joined::Follower(Follower(rx.clone()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), (id, rx));
        Joined::Leader(Leader {
            flights: self,
            key: key.to_owned(),
            id,
            tx,
        })
    }
}

pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    id: u64,
    tx: watch::Sender<Published>,
}

impl Leader<'_> {
    /// Hands the encoded value to the followers.
    pub(crate) fn publish(&self, bytes: &[u8]) {
        self.tx.send_replace(Some(Arc::from(bytes)));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut map = self
            .flights
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

pub(crate) struct Follower(watch::Receiver<Published>);

impl Follower {
    /// The leader's value, or `None` if it finished without one (its
    /// computation failed or it was cancelled).
    pub(crate) async fn wait(mut self) -> Option<Arc<[u8]>> {
        match self.0.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}
