//! The catalog watch and the catalog lock of cluster mode ([`crate::sync`])
//! on PostgreSQL, the catalog's source of truth.
//!
//! **Watch.** Every catalog write announces the service it changed with
//! `pg_notify(CHANNEL, service_id)` inside its own transaction
//! (`super::announce`); PostgreSQL delivers a notification only when its
//! transaction commits, to every session that `LISTEN`s on the channel of
//! the same database. The watch is one such session on a connection of its
//! own (never a pooled one: the pool hands its connections to others, and
//! a listener must keep its session), read with
//! `Connection::poll_message`. When the connection breaks (the server
//! restarted, the backend was terminated, keepalive found the peer gone)
//! the watch connects again with a bounded backoff, `LISTEN`s again and
//! yields `Resync`: what was committed meanwhile was never announced to it.
//!
//! **Lock.** A session-level advisory lock, `pg_advisory_lock(
//! CATALOG_LOCK_NAMESPACE, hashtext(service_id))`, on a pooled connection
//! held until the lock is given back: waiting is bounded by
//! `lock_timeout` ([`LOCK_TIMEOUT`]); the lock is given back with
//! `pg_advisory_unlock`, after which the connection returns to the pool. A
//! lock dropped without being given back (a cancelled request) closes its
//! connection instead, and PostgreSQL releases what that session held.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Object;
use fineport_contract::ServiceId;
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio_postgres::{AsyncMessage, NoTls};

use super::schema::CATALOG_LOCK_NAMESPACE;
use super::{pg_error, Postgres};
use crate::{CatalogChange, CatalogLock, CatalogLockGuard, CatalogWatch, StoreError};

/// The channel catalog changes are announced on. Notifications are per
/// database, so processes on other databases of the same server never hear
/// them: a constant suffices.
pub(crate) const CHANNEL: &str = "fineport_catalog";

/// `LISTEN` on [`CHANNEL`] (an identifier, so it cannot be a parameter).
const LISTEN: &str = "LISTEN fineport_catalog";

/// The first wait before connecting again, after the watch's connection
/// broke or could not be made; doubled at each failure up to
/// [`RECONNECT_MAX`], and back to this once a connection listened.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);

/// The longest wait between two attempts to connect the watch.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How long connecting the watch may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Postgres::lock_catalog`] waits for another process's lock
/// (PostgreSQL's `lock_timeout`): a holder hangs only if its process does,
/// and a change is short.
pub(crate) const LOCK_TIMEOUT: &str = "10s";

impl Postgres {
    /// Starts the catalog watch ([`CatalogWatch`]): a task that listens on
    /// a connection of its own and ends when the returned stream is
    /// dropped. The stream's first item, `Resync`, comes once `LISTEN` is
    /// active; from then on every committed catalog write of any process on
    /// this database is announced with its service id (this process's own
    /// writes too). Connection failures are retried in the task (logged),
    /// never returned, so this only fails if the task cannot start.
    pub async fn watch_catalog(&self) -> Result<CatalogWatch, StoreError> {
        let mut config = self.config.clone();
        config
            .connect_timeout(CONNECT_TIMEOUT)
            // A peer that vanished (a network cut, a server that lost
            // power) is noticed within ~25 s instead of TCP's hours; the
            // server's periodic refresh covers that time.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .application_name("fineport catalog watch");
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(listen(config, sender));
        Ok(Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|change| (change, receiver))
        })))
    }

    /// Takes the catalog lock of `service_id` across every process on this
    /// database, waiting at most [`LOCK_TIMEOUT`] for another holder.
    /// Errors: `Query` (SQLSTATE 55P03) when the wait timed out, `Internal`
    /// when PostgreSQL cannot be reached.
    pub async fn lock_catalog(&self, service_id: &ServiceId) -> Result<CatalogLock, StoreError> {
        let mut lock = PgCatalogLock {
            client: Some(self.client().await?),
            service_id: service_id.clone(),
        };
        // Dropped on an error or a cancellation (e.g. while waiting): the
        // connection is closed, never pooled with a lock it may get later.
        let client = lock
            .client
            .as_mut()
            .ok_or_else(|| StoreError::internal("no connection"))?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .await
            .map_err(pg_error)?;
        // A session-level lock outlives the transaction that took it; the
        // transaction only scopes `lock_timeout`.
        tx.execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&CATALOG_LOCK_NAMESPACE, &service_id.as_str()],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Box::new(lock))
    }
}

/// A held catalog lock: the pooled connection whose session holds it.
struct PgCatalogLock {
    /// `None` once given back.
    client: Option<Object>,
    service_id: ServiceId,
}

#[async_trait]
impl CatalogLockGuard for PgCatalogLock {
    async fn release(mut self: Box<Self>) {
        let Some(client) = self.client.take() else { return };
        let unlocked = client
            .query_one(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[&CATALOG_LOCK_NAMESPACE, &self.service_id.as_str()],
            )
            .await
            .and_then(|row| row.try_get::<_, bool>(0));
        match unlocked {
            // Clean again: back to the pool.
            Ok(true) => drop(client),
            other => {
                tracing::warn!(
                    service_id = %self.service_id,
                    answer = ?other.map_err(|e| e.to_string()),
                    "the catalog lock could not be given back; closing its connection"
                );
                drop(Object::take(client));
            }
        }
    }
}

impl Drop for PgCatalogLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Closing the session releases its locks.
            drop(Object::take(client));
        }
    }
}

/// The watch's task: one listening session after the other until nobody
/// holds the watch any more.
async fn listen(config: tokio_postgres::Config, changes: UnboundedSender<CatalogChange>) {
    let mut backoff = RECONNECT_FIRST;
    loop {
        let (listened, why) = tokio::select! {
            ended = session(&config, &changes) => ended,
            () = changes.closed() => return,
        };
        if changes.is_closed() {
            return;
        }
        if listened {
            backoff = RECONNECT_FIRST;
            tracing::warn!(why = %why, "the catalog watch lost its PostgreSQL connection; reconnecting");
        } else {
            tracing::warn!(
                why = %why,
                retry_in_ms = backoff.as_millis() as u64,
                "the catalog watch cannot listen on PostgreSQL; retrying"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = changes.closed() => return,
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// One session of the watch: connects, `LISTEN`s, yields `Resync`, then
/// forwards every notification until the connection ends. Returns whether
/// it was listening, and why it ended.
async fn session(config: &tokio_postgres::Config, changes: &UnboundedSender<CatalogChange>) -> (bool, String) {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(connected) => connected,
        Err(e) => return (false, e.to_string()),
    };
    // `client` lives until the session ends: dropping it would close the
    // connection.
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    {
        // The connection must be polled for `LISTEN` to get its answer.
        let listening = client.batch_execute(LISTEN);
        tokio::pin!(listening);
        loop {
            tokio::select! {
                listened = &mut listening => match listened {
                    Ok(()) => break,
                    Err(e) => return (false, e.to_string()),
                },
                message = messages.next() => match message {
                    Some(Ok(message)) => forward(message, changes),
                    Some(Err(e)) => return (false, e.to_string()),
                    None => return (false, "the connection closed".into()),
                },
            }
        }
    }
    let _ = changes.send(CatalogChange::Resync);
    loop {
        match messages.next().await {
            Some(Ok(message)) => forward(message, changes),
            Some(Err(e)) => return (true, e.to_string()),
            None => return (true, "the connection closed".into()),
        }
    }
}

/// Passes a notification on as the change of its service. A payload that
/// is not a service id (another program on the channel) makes the whole
/// catalog be read again rather than be ignored.
fn forward(message: AsyncMessage, changes: &UnboundedSender<CatalogChange>) {
    match message {
        AsyncMessage::Notification(n) if n.channel() == CHANNEL => {
            let change = match ServiceId::parse(n.payload()) {
                Ok(service_id) => CatalogChange::Service(service_id),
                Err(e) => {
                    tracing::warn!(error = %e, "a catalog notification without a service id; reading everything");
                    CatalogChange::Resync
                }
            };
            let _ = changes.send(change);
        }
        AsyncMessage::Notice(notice) => tracing::debug!(notice = %notice, "PostgreSQL notice on the catalog watch"),
        _ => {}
    }
}
