//! What lets several processes that share one store keep their in-memory
//! catalogs in step (issue 12: many fineport replicas behave as one): a
//! [`CatalogWatch`] says which services other processes changed, and a
//! [`CatalogLock`] makes one catalog change of a service at a time across
//! every process.
//!
//! A store that only one process can open (DuckDB) has neither:
//! [`crate::Store::watch_catalog`] and [`crate::Store::lock_catalog`]
//! answer `None`, and that process's memory is the catalog's only copy.

use std::pin::Pin;

use async_trait::async_trait;
use fineport_contract::ServiceId;
use futures::Stream;

/// A catalog change some process committed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CatalogChange {
    /// Something of this service changed: its settings or limits, its
    /// tokens, its taxonomy or its audiences, or it was created.
    Service(ServiceId),
    /// The watch is (again) active after a time it was not: anything may
    /// have changed meanwhile, so the whole catalog must be read again.
    /// Always the first item of a watch, once it listens.
    Resync,
}

/// The changes other processes make to a shared catalog, as they commit
/// (the watcher's own changes too). A change is announced only once it is
/// committed, so a read of the store after receiving it sees the change.
/// The first item is [`CatalogChange::Resync`] as soon as the watch
/// listens; a watch that loses its connection re-establishes it by itself
/// and yields `Resync` again. The stream does not end while it is held;
/// dropping it stops the watch and frees its connection.
pub type CatalogWatch = Pin<Box<dyn Stream<Item = CatalogChange> + Send>>;

/// A catalog change of one service in progress, held across processes:
/// while one process holds it, [`crate::Store::lock_catalog`] of the same
/// service waits in every other process. Hold it while reading the
/// service's current state, checking the change against it and writing it
/// (e.g. a token reissue's cool-down), so that two processes never both
/// pass a check that only one of them should.
#[async_trait]
pub trait CatalogLockGuard: Send + Sync {
    /// Gives the lock back. Never fails: a lock that cannot be given back
    /// cleanly is given back by closing what holds it.
    async fn release(self: Box<Self>);
}

/// A held [`CatalogLockGuard`]. Dropping it without
/// [`CatalogLockGuard::release`] (e.g. when a request is cancelled) also
/// gives it back, by closing its connection.
pub type CatalogLock = Box<dyn CatalogLockGuard>;
