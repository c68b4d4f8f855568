//! The doorbell lease: while the daemon waits for work, writers ring
//! (NOTIFY); while it drains, or when no daemon runs, they don't.
//!
//! A NOTIFY in a writer's transaction serialises commits (PostgreSQL holds
//! the notify queue lock through the commit's WAL flush), so writers ring
//! only while `smartcache.doorbell` holds a time in the future: an idle
//! daemon keeps it [`LEASE`] ahead, a draining one sets it to 0, and a
//! daemon that dies stops renewing it, so within [`LEASE`] nobody rings a
//! bell nobody listens to.

use std::time::{Duration, Instant};
use tokio_postgres::{Client, Statement};

/// How far ahead an idle daemon keeps the ring time.
pub(crate) const LEASE: Duration = Duration::from_secs(5);
/// How often it renews it.
const RENEW: Duration = Duration::from_millis(1500);

/// This session's view of the doorbell.
pub(crate) struct Doorbell {
    ring: Statement,
    quiet: Statement,
    ringing: bool,
    renewed: Instant,
}

impl Doorbell {
    /// Prepares the statements and asks writers not to ring (the daemon
    /// drains first).
    pub(crate) async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let ring = client
            .prepare(
                "SELECT setval('smartcache.doorbell', \
                 (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $1)",
            )
            .await?;
        let quiet = client
            .prepare("SELECT setval('smartcache.doorbell', 0)")
            .await?;
        let mut bell = Self {
            ring,
            quiet,
            ringing: true,
            renewed: Instant::now(),
        };
        bell.quiet(client).await?;
        Ok(bell)
    }

    /// Whether writers are asked to ring.
    pub(crate) fn ringing(&self) -> bool {
        self.ringing
    }

    /// Asks writers to ring for the next [`LEASE`].
    pub(crate) async fn ring(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let ms = LEASE.as_millis() as i64;
        client.query_one(&self.ring, &[&ms]).await?;
        self.ringing = true;
        self.renewed = Instant::now();
        Ok(())
    }

    /// Asks writers not to ring.
    pub(crate) async fn quiet(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        if self.ringing {
            client.query_one(&self.quiet, &[]).await?;
            self.ringing = false;
        }
        Ok(())
    }

    /// Renews the lease when it is time.
    pub(crate) async fn renew_if_due(
        &mut self,
        client: &Client,
    ) -> Result<(), tokio_postgres::Error> {
        if self.ringing && self.renewed.elapsed() >= RENEW {
            self.ring(client).await?;
        }
        Ok(())
    }

    /// Time left until the next renewal.
    pub(crate) fn renew_in(&self) -> Duration {
        RENEW.saturating_sub(self.renewed.elapsed())
    }
}
