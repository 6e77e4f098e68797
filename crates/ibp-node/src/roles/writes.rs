//! How a role's writer treats a failed write, one policy for every table:
//!
//! * **refused for good** (a constraint, a value too long for its key column, a number out
//!   of range: [`StoreError::is_permanent`]) — the batch is retried item by item, and each
//!   item the database refuses is logged with its content, counted and set aside in
//!   `ibp_dead_letters` (or, if even that fails, a JSON-lines file in the work directory).
//!   It never blocks the writes behind it.
//! * **the database is away** (connection lost, locked, restarting) — the write waits and is
//!   retried with backoff for as long as it takes; nothing is dropped and `/healthz` says
//!   storage is failing. An error of an unknown kind is treated the same way until the
//!   database answers a ping while this write still fails: then the write itself is the
//!   problem, and it is set aside.
//! * **shutdown** — a writer still retrying when the shutdown grace runs out writes what it
//!   holds to `unsaved-<kind>.jsonl` in the work directory instead of losing it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ibp_storage::{Store, StoreError};
use serde::Serialize;
use tokio::sync::watch;

use crate::health::{Health, Part};
use crate::metrics::Metrics;

/// Unknown errors are retried this many times before a ping decides who is at fault.
const UNKNOWN_ATTEMPTS: u32 = 8;

/// What happened to one item of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome<T> {
    /// Stored; the write's result.
    Stored(T),
    /// Refused for good and set aside (dead letter).
    SetAside,
    /// Not stored before the shutdown grace ran out; saved to a file.
    Unsaved,
}

/// The storage side every writer of a node shares: the store, the health registry, the
/// metrics and where files go when the database cannot take them.
#[derive(Clone)]
pub struct StorageHealth {
    store: Store,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    dir: PathBuf,
    /// Fires when the shutdown grace is over: writers stop retrying.
    abandon: watch::Receiver<bool>,
    /// Writes being retried right now (storage stays failing while any is).
    retrying: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for StorageHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageHealth")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl StorageHealth {
    /// The write policy over `store`; files go to `dir`; `abandon` ends retries.
    pub fn new(
        store: Store,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        dir: PathBuf,
        abandon: watch::Receiver<bool>,
    ) -> StorageHealth {
        StorageHealth {
            store,
            health,
            metrics,
            dir,
            abandon,
            retrying: Arc::default(),
        }
    }

    /// The write policy over `store` with a health registry and metrics of its own, files
    /// in the system's temporary directory, never abandoned: for tools and tests that use a
    /// role's service without a whole node.
    pub fn standalone(store: Store) -> StorageHealth {
        let (tx, rx) = watch::channel(false);
        // Kept alive for the life of the process: nothing ever abandons these writes.
        std::mem::forget(tx);
        StorageHealth::new(
            store,
            Arc::new(Health::new()),
            Arc::new(Metrics::new()),
            std::env::temp_dir(),
            rx,
        )
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Writes `items` with `write` (all or nothing per call; it returns one result per
    /// item), following the module's policy. Returns one outcome per item, in order.
    pub async fn write_batch<I, T, F, Fut>(
        &self,
        kind: &str,
        items: &[I],
        mut write: F,
    ) -> Vec<WriteOutcome<T>>
    where
        I: Serialize,
        F: FnMut(&[I]) -> Fut,
        Fut: Future<Output = Result<Vec<T>, StoreError>>,
    {
        if items.is_empty() {
            return Vec::new();
        }
        match self.write_one(kind, items, &mut write).await {
            Attempt::Stored(v) => v.into_iter().map(WriteOutcome::Stored).collect(),
            Attempt::Abandoned => {
                self.save_unsaved(kind, items);
                items.iter().map(|_| WriteOutcome::Unsaved).collect()
            }
            Attempt::Refused(e) if items.len() == 1 => {
                self.set_aside(kind, &items[0], &e).await;
                vec![WriteOutcome::SetAside]
            }
            Attempt::Refused(_) => {
                // Find the bad ones: the rest must not pay for them.
                let mut out = Vec::with_capacity(items.len());
                for (i, it) in items.iter().enumerate() {
                    let one = std::slice::from_ref(it);
                    match self.write_one(kind, one, &mut write).await {
                        Attempt::Stored(mut v) => out.push(match v.pop() {
                            Some(t) => WriteOutcome::Stored(t),
                            None => WriteOutcome::SetAside,
                        }),
                        Attempt::Refused(e) => {
                            self.set_aside(kind, it, &e).await;
                            out.push(WriteOutcome::SetAside);
                        }
                        Attempt::Abandoned => {
                            self.save_unsaved(kind, &items[i..]);
                            out.extend(items[i..].iter().map(|_| WriteOutcome::Unsaved));
                            break;
                        }
                    }
                }
                out
            }
        }
    }

    /// One write, retried while the database is away.
    async fn write_one<I, T, F, Fut>(&self, kind: &str, items: &[I], write: &mut F) -> Attempt<T>
    where
        F: FnMut(&[I]) -> Fut,
        Fut: Future<Output = Result<Vec<T>, StoreError>>,
    {
        let mut attempts = 0u32;
        let r = self.write_retrying(kind, items, write, &mut attempts).await;
        if attempts > 0 {
            self.retrying
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }

    async fn write_retrying<I, T, F, Fut>(
        &self,
        kind: &str,
        items: &[I],
        write: &mut F,
        attempts: &mut u32,
    ) -> Attempt<T>
    where
        F: FnMut(&[I]) -> Fut,
        Fut: Future<Output = Result<Vec<T>, StoreError>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut abandon = self.abandon.clone();
        loop {
            match write(items).await {
                Ok(v) => {
                    if *attempts > 0 {
                        tracing::info!(kind, attempts, "storage write succeeded after retries");
                        if self.retrying.load(std::sync::atomic::Ordering::SeqCst) <= 1 {
                            self.health.recover(Part::Storage);
                        }
                    }
                    return Attempt::Stored(v);
                }
                Err(e) if e.is_permanent() => {
                    self.metrics.storage_error(kind);
                    return Attempt::Refused(e);
                }
                Err(e) => {
                    *attempts += 1;
                    if *attempts == 1 {
                        self.retrying
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    self.metrics.storage_error(kind);
                    if !e.is_unavailable()
                        && *attempts >= UNKNOWN_ATTEMPTS
                        && self.store.ping().await.is_ok()
                    {
                        tracing::error!(kind, error = %e, attempts, "the database answers but keeps refusing this write; setting it aside");
                        return Attempt::Refused(e);
                    }
                    self.health.fail(Part::Storage, format!("{kind}: {e}"));
                    if attempts.is_power_of_two() {
                        tracing::warn!(kind, attempts, error = %e, items = items.len(), "storage write failed; holding it and retrying");
                    }
                    if *abandon.borrow() {
                        return Attempt::Abandoned;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = abandon.changed() => {}
                    }
                    if *abandon.borrow() {
                        return Attempt::Abandoned;
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Sets one refused item aside: the dead-letter table, else a file.
    pub async fn set_aside<I: Serialize>(&self, kind: &str, item: &I, e: &StoreError) {
        let payload = serde_json::to_value(item).unwrap_or(serde_json::Value::Null);
        self.metrics.dead_lettered(kind);
        tracing::error!(kind, error = %e, item = %payload, "write refused by the database; set aside in ibp_dead_letters");
        if let Err(e2) = self.store.dead_letter(kind, &payload, &e.to_string()).await {
            tracing::error!(error = %e2, "cannot store the dead letter; appending it to dead-letters.jsonl");
            self.append(
                "dead-letters.jsonl",
                &[serde_json::json!({"kind": kind, "error": e.to_string(), "payload": payload})],
            );
        }
    }

    fn save_unsaved<I: Serialize>(&self, kind: &str, items: &[I]) {
        let lines: Vec<serde_json::Value> = items
            .iter()
            .map(|i| serde_json::to_value(i).unwrap_or(serde_json::Value::Null))
            .collect();
        let file = format!("unsaved-{kind}.jsonl");
        self.append(&file, &lines);
        tracing::error!(kind, items = items.len(), file = %self.dir.join(&file).display(), "the database did not come back before the shutdown grace ran out: what was not stored is saved to a file");
    }

    fn append(&self, file: &str, lines: &[serde_json::Value]) {
        use std::io::Write;
        let path = self.dir.join(file);
        let r = std::fs::create_dir_all(&self.dir).and_then(|()| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            for l in lines {
                writeln!(f, "{l}")?;
            }
            f.sync_all()
        });
        if let Err(e) = r {
            tracing::error!(path = %path.display(), error = %e, lines = ?lines, "cannot write the file either; the data is in this log line");
        }
    }

    /// Pings the database every `period` (bounded by `period`), reporting to the health
    /// registry, until `stop` fires.
    pub async fn watch(self, period: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            match tokio::time::timeout(period, self.store.ping()).await {
                Ok(Ok(())) => {
                    // Writers that are still failing keep the part failing.
                    if self.retrying.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                        self.health.recover(Part::Storage);
                    }
                }
                Ok(Err(e)) => {
                    self.metrics.storage_error("ping");
                    self.health.fail(Part::Storage, format!("ping: {e}"));
                }
                Err(_) => {
                    self.metrics.storage_error("ping");
                    self.health.fail(
                        Part::Storage,
                        format!("ping: no answer within {period:?} (locked or overloaded)"),
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => break,
            }
        }
    }
}

enum Attempt<T> {
    Stored(Vec<T>),
    Refused(StoreError),
    Abandoned,
}
