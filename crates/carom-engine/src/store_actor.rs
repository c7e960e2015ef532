//! One thread owns the [`Store`]; everyone else sends it jobs.
//!
//! SQLite connections are not shared across threads here, and every write ends in an fsync
//! (WAL, `synchronous=FULL`). So writes are **group-committed**: when several write jobs are
//! waiting, the thread runs them all in one transaction and answers each only after that single
//! COMMIT has returned. Durability per job is unchanged ("acknowledged" still means "on disk");
//! throughput under load is many jobs per fsync. If any job in a batch fails (or the commit
//! does), the batch is rolled back and each job is retried alone, so one bad job never fails
//! another.
//!
//! After every write the thread publishes the newest event sequence number, which is how event
//! subscribers learn there is something new.
//!
//! The thread is never left behind: when the last handle goes, it finishes the jobs already
//! sent, closes the database and is joined before the drop returns. A store thread still
//! inside SQLCipher while the process exits races the crypto library's `atexit` cleanup (a
//! test binary that had passed every test died of SIGSEGV that way), so "the engine is gone"
//! must imply "the database is closed".

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use carom_store::{Store, StoreRead, WriteTx};
use tokio::sync::{mpsc, oneshot, watch};

use crate::err::{EngineError, Result};

/// Most write jobs committed together.
const MAX_BATCH: usize = 512;

type AnyBox = Box<dyn Any + Send>;
type WriteFn = Box<dyn FnMut(&WriteTx<'_>) -> Result<AnyBox> + Send>;

enum Job {
    Read(Box<dyn FnOnce(&Store) + Send>),
    Write {
        run: WriteFn,
        reply: oneshot::Sender<Result<AnyBox>>,
    },
    /// Close the database and end the thread (with a reply, or silently from a drop).
    Close(Option<oneshot::Sender<Result<()>>>),
}

/// A handle to the store thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StoreHandle {
    thread: Arc<StoreThread>,
    event_seq: watch::Receiver<u64>,
}

/// The thread and the way to it, shared by every handle; dropping the last handle closes the
/// store and joins the thread.
struct StoreThread {
    jobs: mpsc::UnboundedSender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for StoreThread {
    fn drop(&mut self) {
        // Jobs already sent run first (they are in order); then the database is closed.
        let _ = self.jobs.send(Job::Close(None));
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
            && thread.join().is_err()
        {
            tracing::error!("the store thread panicked");
        }
    }
}

impl StoreHandle {
    /// Move `store` onto its own thread.
    pub(crate) fn spawn(store: Store) -> Result<StoreHandle> {
        let last = store.last_event_seq()?;
        let (seq_tx, seq_rx) = watch::channel(last);
        let (jobs, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("carom-store".into())
            .spawn(move || run(store, rx, &seq_tx))
            .map_err(|e| EngineError::Internal(format!("cannot start the store thread: {e}")))?;
        Ok(StoreHandle {
            thread: Arc::new(StoreThread {
                jobs,
                thread: Mutex::new(Some(thread)),
            }),
            event_seq: seq_rx,
        })
    }

    fn send(&self, job: Job) -> Result<()> {
        self.thread
            .jobs
            .send(job)
            .map_err(|_| EngineError::ShuttingDown)
    }

    /// Run a read on the store thread.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Read(Box::new(move |store| {
            let _ = tx.send(f(store));
        }));
        self.send(job)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Run a write in a transaction; returns after COMMIT. `f` may run more than once (if its
    /// batch is retried), so it must not have effects outside the transaction.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&WriteTx<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let run: WriteFn = Box::new(move |wtx| f(wtx).map(|v| Box::new(v) as AnyBox));
        self.send(Job::Write { run, reply: tx })?;
        let value = rx.await.map_err(|_| EngineError::ShuttingDown)??;
        value
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| EngineError::Internal("store reply of the wrong type".into()))
    }

    /// The newest event sequence number, updated after each commit.
    pub(crate) fn event_seq(&self) -> watch::Receiver<u64> {
        self.event_seq.clone()
    }

    /// Finish pending jobs, checkpoint and close the database.
    pub(crate) async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Close(Some(tx)))?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }
}

fn run(mut store: Store, mut jobs: mpsc::UnboundedReceiver<Job>, seq: &watch::Sender<u64>) {
    let mut next = jobs.blocking_recv();
    while let Some(job) = next.take() {
        match job {
            Job::Read(f) => f(&store),
            Job::Close(reply) => {
                let closed = store.close().map_err(EngineError::from);
                match reply {
                    Some(reply) => {
                        let _ = reply.send(closed);
                    }
                    None => {
                        if let Err(e) = closed {
                            tracing::warn!(error = %e, "closing the store failed");
                        }
                    }
                }
                return;
            }
            Job::Write { run, reply } => {
                let mut batch = vec![(run, reply)];
                while batch.len() < MAX_BATCH {
                    match jobs.try_recv() {
                        Ok(Job::Write { run, reply }) => batch.push((run, reply)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_batch(&mut store, batch);
                if let Ok(last) = store.last_event_seq() {
                    seq.send_if_modified(|current| {
                        let changed = last > *current;
                        *current = (*current).max(last);
                        changed
                    });
                }
            }
        }
        if next.is_none() {
            next = jobs.blocking_recv();
        }
    }
}

fn commit_batch(store: &mut Store, mut batch: Vec<(WriteFn, oneshot::Sender<Result<AnyBox>>)>) {
    if batch.len() > 1 {
        let mut results = Vec::with_capacity(batch.len());
        let together = store.write_with(|tx| {
            for (run, _) in &mut batch {
                results.push(run(tx)?);
            }
            Ok::<(), EngineError>(())
        });
        if together.is_ok() {
            for ((_, reply), result) in batch.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
            return;
        }
        // Something in the batch failed: everything was rolled back. Run each job alone.
    }
    for (mut run, reply) in batch {
        let _ = reply.send(store.write_with(|tx| run(tx)));
    }
}

#[cfg(test)]
mod tests {
    use carom_store::DbKey;

    use super::*;

    /// SQLite removes a database's `-wal` file when its last connection closes, so its absence
    /// right after the drop shows the database was closed before the drop returned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_last_handle_closes_the_store_before_returning() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("store.db");
        let key = DbKey::generate().expect("key");
        let store = Store::create(&db, &key).expect("store");
        let handle = StoreHandle::spawn(store).expect("store thread");
        let second = handle.clone();
        handle
            .write(|tx| Ok(tx.append_event("test", "{}", 1)?))
            .await
            .expect("write");
        // A job still queued when the handles go must run before the thread ends.
        let (tx, rx) = oneshot::channel();
        second
            .send(Job::Write {
                run: Box::new(|tx| Ok(Box::new(tx.append_event("late", "{}", 2)?) as AnyBox)),
                reply: tx,
            })
            .expect("queued");
        drop(handle);
        let wal = dir.path().join("store.db-wal");
        assert!(wal.exists(), "the store is open while a handle remains");
        drop(second);
        assert!(
            !wal.exists(),
            "the store thread was still running after its last handle was dropped"
        );
        assert!(rx.await.expect("the queued job ran").is_ok());
        let reopened = Store::open(&db, &key).expect("reopen");
        assert_eq!(reopened.last_event_seq().expect("seq"), 2);
    }
}
