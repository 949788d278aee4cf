//! Keeps this replica's catalog in step with the changes other replicas
//! commit to the store they share (issue 12: a revoked token answers 401
//! on every replica within a second).
//!
//! [`spawn`] starts one task per server, which asks the store for its
//! catalog watch ([`Store::watch_catalog`](fineport_store::Store::watch_catalog)).
//! A store only one process opens (DuckDB) has none, and the task ends at
//! once. Otherwise the task:
//! - on [`CatalogChange::Service`], reads that service again
//!   ([`Catalog::reload_services`]);
//! - on [`CatalogChange::Resync`] (the watch started, or came back after it
//!   was lost, so announcements may have been missed) and every
//!   [`Config::catalog_refresh_every`](crate::Config::catalog_refresh_every)
//!   (the safety net for whatever the watch could not tell), reads the
//!   whole catalog again ([`Catalog::reload`]).
//!
//! Bursts coalesce: while a reload runs, the changes that arrive wait in
//! the watch, and the next reload takes all of them at once (more than
//! [`ONE_BY_ONE`] services: the whole catalog). A reload that fails is
//! logged and tried again after a growing pause (up to [`RETRY_MAX`]);
//! meanwhile the catalog in memory keeps serving as it was. The task never
//! ends the server.

use std::collections::BTreeSet;
use std::time::Duration;

use fineport_contract::ServiceId;
use fineport_store::{CatalogChange, CatalogWatch, StoreError};
use futures::{FutureExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::catalog::Catalog;
use crate::SharedState;

/// More changed services than this at once: the whole catalog is read
/// rather than each service.
pub const ONE_BY_ONE: usize = 32;

/// The first pause after a failed reload or watch start.
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The longest pause between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// The running sync task; dropping this aborts it (so a `serve` future
/// that is dropped takes its task along).
pub struct Syncer(JoinHandle<()>);

impl Drop for Syncer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts keeping `state`'s catalog in step with the store (see the
/// module docs).
pub fn spawn(state: SharedState) -> Syncer {
    Syncer(tokio::spawn(run(state)))
}

async fn run(state: SharedState) {
    let mut retry = RETRY_FIRST;
    loop {
        let watch = match state.store.watch_catalog().await {
            Ok(Some(watch)) => watch,
            // Only this process changes the catalog: nothing to follow.
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, retry_in_ms = retry.as_millis() as u64, "cannot watch the catalog");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        retry = RETRY_FIRST;
        follow(&state.catalog, watch, state.config.catalog_refresh_every).await;
        tracing::warn!("the catalog watch ended; starting it again");
    }
}

/// What the next reload reads.
#[derive(Debug, Default)]
struct Pending {
    /// The whole catalog.
    everything: bool,
    services: BTreeSet<ServiceId>,
}

impl Pending {
    fn add(&mut self, change: CatalogChange) {
        match change {
            CatalogChange::Service(service_id) => {
                self.services.insert(service_id);
            }
            CatalogChange::Resync => self.everything = true,
        }
    }

    fn merge(&mut self, other: Pending) {
        self.everything |= other.everything;
        self.services.extend(other.services);
    }

    fn is_empty(&self) -> bool {
        !self.everything && self.services.is_empty()
    }
}

/// Applies the changes of `watch` to `catalog` until the watch ends.
async fn follow(catalog: &Catalog, mut watch: CatalogWatch, refresh_every: Duration) {
    let refresh_every = refresh_every.max(Duration::from_millis(10));
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + refresh_every, refresh_every);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pending = Pending::default();
    let mut retry = RETRY_FIRST;
    loop {
        if pending.is_empty() {
            tokio::select! {
                change = watch.next() => match change {
                    Some(change) => pending.add(change),
                    None => return,
                },
                _ = refresh.tick() => pending.everything = true,
            }
        }
        // What else has arrived joins this reload.
        while let Some(change) = watch.next().now_or_never() {
            match change {
                Some(change) => pending.add(change),
                None => return,
            }
        }
        let work = std::mem::take(&mut pending);
        match apply(catalog, &work).await {
            Ok(()) => {
                retry = RETRY_FIRST;
                if work.everything {
                    refresh.reset();
                }
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    everything = work.everything,
                    services = work.services.len(),
                    retry_in_ms = retry.as_millis() as u64,
                    "reloading the catalog failed; the catalog in memory keeps serving"
                );
                pending.merge(work);
                let pause = tokio::time::sleep(retry);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        () = &mut pause => break,
                        change = watch.next() => match change {
                            Some(change) => pending.add(change),
                            None => return,
                        },
                    }
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn apply(catalog: &Catalog, work: &Pending) -> Result<(), StoreError> {
    if work.everything || work.services.len() > ONE_BY_ONE {
        catalog.reload().await?;
        tracing::debug!("catalog reloaded");
    } else {
        catalog.reload_services(&work.services).await?;
        tracing::debug!(services = ?work.services, "catalog services reloaded");
    }
    Ok(())
}
