//! A fill lease held by a request (see `smartcache_core::fill` for the
//! protocol).

use std::sync::Arc;
use std::time::Duration;

use smartcache_core::fill::{fill, release};
use smartcache_core::keys::DepId;

use crate::inner::Inner;

/// A held lease. Dropped without [`Lease::fill`] (the computation failed or
/// the request was cancelled), it is released in the background so other
/// fillers need not wait for it to expire.
pub(crate) struct Lease {
    inner: Arc<Inner>,
    key: String,
    token: String,
    /// What the acquire step registered the key under; stamped with the
    /// value (as a fingerprint) so the sweeper can drop older registrations.
    deps: Vec<DepId>,
    armed: bool,
}

impl Lease {
    pub(crate) fn new(inner: Arc<Inner>, key: &str, token: String, deps: &[DepId]) -> Self {
        Self {
            inner,
            key: key.to_owned(),
            token,
            deps: deps.to_vec(),
            armed: true,
        }
    }

    /// Stores `value` if the lease still stands; true if stored.
    pub(crate) async fn fill(mut self, value: &[u8], ttl: Option<Duration>) -> bool {
        let mut con = self.inner.con.clone();
        let stored = self
            .inner
            .try_redis(
                "fill",
                fill(
                    &mut con,
                    &self.inner.ns,
                    &self.key,
                    &self.token,
                    value,
                    ttl,
                    &self.deps,
                ),
            )
            .await;
        if stored.is_some() {
            self.armed = false;
        }
        stored.unwrap_or(false)
    }

    /// Gives the lease back without storing.
    pub(crate) async fn release(mut self) {
        self.armed = false;
        let mut con = self.inner.con.clone();
        self.inner
            .try_redis(
                "release",
                release(&mut con, &self.inner.ns, &self.key, &self.token),
            )
            .await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        rt.spawn(async move {
            let mut con = inner.con.clone();
            inner
                .try_redis("release", release(&mut con, &inner.ns, &key, &token))
                .await;
        });
    }
}
