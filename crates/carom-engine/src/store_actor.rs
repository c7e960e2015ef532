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
//! A job that panics (a bug) is caught on its own: its caller gets an internal error, its
//! transaction is rolled back (by the unwinding, as [`Store::write`] promises), the panic is
//! logged, and the thread carries on with the next job. In a batch, the others are retried
//! alone, without the one that panicked. (Uncaught, one panic ended the thread, and every
//! later call answered `shutting_down` while the daemon looked alive.) Should the connection
//! be left inside a transaction all the same (its rollback failed), it cannot be trusted with
//! another job: the thread closes it, logs why, and answers every later job with an internal
//! error that says to restart the daemon.
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
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use carom_store::{Store, StoreRead, WriteTx};
use tokio::sync::{mpsc, oneshot, watch};

use crate::err::{EngineError, Result};

/// Most write jobs committed together.
const MAX_BATCH: usize = 512;

type AnyBox = Box<dyn Any + Send>;
type ReadFn = Box<dyn FnOnce(&Store) -> Result<AnyBox> + Send>;
type WriteFn = Box<dyn FnMut(&WriteTx<'_>) -> Result<AnyBox> + Send>;
type Reply = oneshot::Sender<Result<AnyBox>>;

enum Job {
    // The reply travels beside the closure, not inside it, so that a job that panics can still
    // be answered.
    Read {
        run: ReadFn,
        reply: Reply,
    },
    Write {
        run: WriteFn,
        reply: Reply,
    },
    /// Close the database and end the thread (with a reply, or silently from a drop).
    Close(Option<oneshot::Sender<Result<()>>>),
}

/// A handle to the store thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StoreHandle {
    backend: Backend,
    event_seq: watch::Receiver<u64>,
    out_of_service: watch::Receiver<bool>,
}

#[derive(Clone)]
enum Backend {
    Thread(Arc<StoreThread>),
    /// Jobs run on the caller's thread, when they are sent (see [`StoreHandle::inline`]).
    Inline(Arc<Inline>),
}

/// The store of an inline handle: `None` once closed (or no longer trusted).
struct Inline {
    store: Mutex<Option<Store>>,
    seq: watch::Sender<u64>,
    out_of_service: watch::Sender<bool>,
}

impl Inline {
    fn run(&self, job: Job) {
        let mut guard = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let Some(store) = guard.as_mut() else {
            answer_refused(job);
            return;
        };
        let trusted = match job {
            Job::Read { run, reply } => run_read(store, run, reply),
            Job::Write { run, reply } => {
                let trusted = commit_batch(store, vec![(run, reply)]) && !debug_poisoned();
                if trusted {
                    publish_seq(store, &self.seq);
                }
                trusted
            }
            Job::Close(reply) => {
                let closed = guard
                    .take()
                    .map_or(Ok(()), |store| store.close().map_err(EngineError::from));
                if let Some(reply) = reply {
                    let _ = reply.send(closed);
                }
                return;
            }
        };
        if !trusted {
            tracing::error!("the store cannot be trusted after a panic: closing it");
            if let Some(store) = guard.take() {
                let _ = store.close();
            }
            self.out_of_service.send_replace(true);
        }
    }
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
        let (failed, out_of_service) = watch::channel(false);
        let (jobs, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("carom-store".into())
            .spawn(move || run(store, rx, &seq_tx, &failed))
            .map_err(|e| EngineError::Internal(format!("cannot start the store thread: {e}")))?;
        Ok(StoreHandle {
            backend: Backend::Thread(Arc::new(StoreThread {
                jobs,
                thread: Mutex::new(Some(thread)),
            })),
            event_seq: seq_rx,
            out_of_service,
        })
    }

    /// Keep `store` on the caller's thread and run each job as it is sent: deterministic, for
    /// tests in virtual time on a current-thread runtime. Never for a daemon: every fsync
    /// would stall every task, and writes are not group-committed.
    pub(crate) fn inline(store: Store) -> Result<StoreHandle> {
        let last = store.last_event_seq()?;
        let (seq, event_seq) = watch::channel(last);
        let (failed, out_of_service) = watch::channel(false);
        Ok(StoreHandle {
            backend: Backend::Inline(Arc::new(Inline {
                store: Mutex::new(Some(store)),
                seq,
                out_of_service: failed,
            })),
            event_seq,
            out_of_service,
        })
    }

    fn send(&self, job: Job) -> Result<()> {
        match &self.backend {
            Backend::Thread(thread) => thread.jobs.send(job).map_err(|_| EngineError::ShuttingDown),
            Backend::Inline(inline) => {
                inline.run(job);
                Ok(())
            }
        }
    }

    /// Run a read on the store thread. The job is sent when this is called, not when the
    /// future is first polled: jobs run in the order they were asked for.
    pub(crate) fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let run: ReadFn = Box::new(move |store| f(store).map(|v| Box::new(v) as AnyBox));
        let sent = self.send(Job::Read { run, reply: tx });
        async move {
            sent?;
            downcast(rx.await.map_err(|_| EngineError::ShuttingDown)??)
        }
    }

    /// Run a write in a transaction; the future resolves after COMMIT. `f` may run more than
    /// once (if its batch is retried), so it must not have effects outside the transaction.
    /// As with [`StoreHandle::read`], the job is sent when this is called.
    pub(crate) fn write<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&WriteTx<'_>) -> Result<T> + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let run: WriteFn = Box::new(move |wtx| f(wtx).map(|v| Box::new(v) as AnyBox));
        let sent = self.send(Job::Write { run, reply: tx });
        async move {
            sent?;
            downcast(rx.await.map_err(|_| EngineError::ShuttingDown)??)
        }
    }

    /// Becomes `true` when the store has taken itself out of service (a bug left its
    /// connection in doubt): every later job fails, and the daemon should stop.
    pub(crate) fn out_of_service(&self) -> watch::Receiver<bool> {
        self.out_of_service.clone()
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

fn downcast<T: 'static>(value: AnyBox) -> Result<T> {
    value
        .downcast::<T>()
        .map(|b| *b)
        .map_err(|_| EngineError::bug("a store reply of the wrong type"))
}

fn run(
    store: Store,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    seq: &watch::Sender<u64>,
    out_of_service: &watch::Sender<bool>,
) {
    if let Some(untrusted) = serve(store, &mut jobs, seq) {
        // Closing rolls back whatever transaction is still open; everything committed before
        // is on disk.
        if let Err(e) = untrusted.close() {
            tracing::warn!(error = %e, "closing the store after the failure failed too");
        }
        out_of_service.send_replace(true);
        refuse(&mut jobs);
    }
}

/// The environment variable of a debug build's fault injection: after this many committed
/// write batches, the store acts as if a bug had left its connection in doubt (so that a test
/// can watch a real daemon take its store out of service and stop).
#[cfg(debug_assertions)]
pub const POISON_AFTER_WRITES_VAR: &str = "CAROM_DEBUG_STORE_POISON_AFTER_WRITES";

/// Whether the debug build's fault injection says this commit leaves the store untrusted.
fn debug_poisoned() -> bool {
    #[cfg(debug_assertions)]
    {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let limit = LIMIT.get_or_init(|| {
            std::env::var(POISON_AFTER_WRITES_VAR)
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(limit) = *limit {
            return WRITES.fetch_add(1, Ordering::SeqCst) + 1 >= limit;
        }
    }
    false
}

/// The environment variable of a debug build's slow disk: every write batch takes this many
/// milliseconds longer (so that a test can watch a real daemon whose commits lag).
#[cfg(debug_assertions)]
pub const SLOW_WRITES_VAR: &str = "CAROM_DEBUG_STORE_WRITE_DELAY_MS";

/// In a debug build with [`SLOW_WRITES_VAR`] set, wait before a write batch.
fn debug_slow_disk() {
    #[cfg(debug_assertions)]
    {
        use std::sync::OnceLock;
        static DELAY: OnceLock<Option<std::time::Duration>> = OnceLock::new();
        let delay = DELAY.get_or_init(|| {
            std::env::var(SLOW_WRITES_VAR)
                .ok()
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis)
        });
        if let Some(delay) = *delay {
            std::thread::sleep(delay);
        }
    }
}

/// Runs jobs until a `Close` (or the last sender is gone), then returns `None` with the store
/// closed; or, should a panic leave the connection in a state it cannot be trusted in, returns
/// the store at once, every job answered that was taken from the queue.
fn serve(
    mut store: Store,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    seq: &watch::Sender<u64>,
) -> Option<Store> {
    let mut next = jobs.blocking_recv();
    while let Some(job) = next.take() {
        let trusted = match job {
            Job::Read { run, reply } => run_read(&store, run, reply),
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
                return None;
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
                debug_slow_disk();
                let trusted = commit_batch(&mut store, batch) && !debug_poisoned();
                if trusted {
                    publish_seq(&store, seq);
                }
                trusted
            }
        };
        if !trusted {
            tracing::error!(
                "after a panic the store's connection is still inside a transaction, so it \
                 cannot be trusted with more work: closing the store; every further request \
                 fails until caromd is restarted (everything committed before is safe)"
            );
            if let Some(job) = next.take() {
                answer_refused(job);
            }
            return Some(store);
        }
        if next.is_none() {
            next = jobs.blocking_recv();
        }
    }
    None
}

/// Runs a read and answers it; returns whether the connection can still be trusted (a read
/// that panicked may have left it inside a transaction).
fn run_read(store: &Store, run: ReadFn, reply: Reply) -> bool {
    match catch_unwind(AssertUnwindSafe(|| run(store))) {
        Ok(result) => {
            let _ = reply.send(result);
            true
        }
        Err(payload) => {
            let _ = reply.send(Err(panicked("read", payload.as_ref())));
            still_trusted(store)
        }
    }
}

/// After a commit: tell event subscribers the newest sequence number, if it moved.
fn publish_seq(store: &Store, seq: &watch::Sender<u64>) {
    if let Ok(last) = store.last_event_seq() {
        seq.send_if_modified(|current| {
            let changed = last > *current;
            *current = (*current).max(last);
            changed
        });
    }
}

/// Runs a batch of writes; returns whether the connection can still be trusted (if not, every
/// job of the batch has been answered).
fn commit_batch(store: &mut Store, mut batch: Vec<(WriteFn, Reply)>) -> bool {
    if batch.len() > 1 {
        let mut results = Vec::with_capacity(batch.len());
        // Which job is running, so that a panic is pinned on it; none once all have run.
        let mut running = None;
        let together = catch_unwind(AssertUnwindSafe(|| {
            store.write_with(|tx| {
                for (index, (run, _)) in batch.iter_mut().enumerate() {
                    running = Some(index);
                    results.push(run(tx)?);
                }
                running = None;
                Ok::<(), EngineError>(())
            })
        }));
        match together {
            Ok(Ok(())) => {
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
                return true;
            }
            // Something in the batch failed: everything was rolled back. Run each job alone.
            Ok(Err(_)) => {}
            Err(payload) => {
                // Rolled back by the unwinding. The job that panicked is answered and not run
                // again (it would most likely panic again); the others run alone below.
                let error = panicked("write", payload.as_ref());
                if let Some(index) = running {
                    let (_, reply) = batch.remove(index);
                    let _ = reply.send(Err(error));
                }
                if !still_trusted(store) {
                    refuse_all(batch);
                    return false;
                }
            }
        }
    }
    let mut batch = batch.into_iter();
    while let Some((mut run, reply)) = batch.next() {
        match catch_unwind(AssertUnwindSafe(|| store.write_with(|tx| run(tx)))) {
            Ok(result) => {
                let _ = reply.send(result);
            }
            Err(payload) => {
                let _ = reply.send(Err(panicked("write", payload.as_ref())));
                if !still_trusted(store) {
                    refuse_all(batch);
                    return false;
                }
            }
        }
    }
    true
}

/// Logs a job's panic and makes the error its caller gets.
fn panicked(job: &str, payload: &(dyn Any + Send)) -> EngineError {
    // Only a literal message is repeated here: a formatted one could carry data from the job
    // (a message body, say). The panic hook printed it to standard error already, with where
    // it happened.
    let literal = payload.downcast_ref::<&'static str>().copied();
    tracing::error!(
        job,
        panic = literal.unwrap_or("(a formatted message, not repeated in the log)"),
        "a store job panicked, which is a bug: its transaction was rolled back and its caller \
         got an internal error; the store carries on"
    );
    EngineError::Bug(
        "a store job panicked; none of this storage operation was saved (the daemon's log \
         says more)"
            .into(),
    )
}

/// Whether the connection is as a job found it after one panicked: outside any transaction.
fn still_trusted(store: &Store) -> bool {
    #[cfg(test)]
    if tests::CONNECTION_UNTRUSTED.with(|flag| flag.replace(false)) {
        return false;
    }
    store.is_idle()
}

/// The error of every job after the store was closed on a failure.
fn out_of_service() -> EngineError {
    EngineError::Internal(
        "the store was closed after a bug left its connection in an unknown state; restart \
         caromd (everything saved before is safe)"
            .into(),
    )
}

fn answer_refused(job: Job) {
    match job {
        Job::Read { reply, .. } | Job::Write { reply, .. } => {
            let _ = reply.send(Err(out_of_service()));
        }
        Job::Close(Some(reply)) => {
            let _ = reply.send(Err(out_of_service()));
        }
        Job::Close(None) => {}
    }
}

fn refuse_all(batch: impl IntoIterator<Item = (WriteFn, Reply)>) {
    for (_, reply) in batch {
        let _ = reply.send(Err(out_of_service()));
    }
}

/// After the store was closed on a failure: answer every job with the reason until the last
/// handle goes (or a `Close` comes), so that callers learn what happened instead of
/// `shutting_down`.
fn refuse(jobs: &mut mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = jobs.blocking_recv() {
        let last = matches!(job, Job::Close(_));
        answer_refused(job);
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use carom_store::DbKey;

    use super::*;

    thread_local! {
        /// Set on the store thread by a test job: the next check after a panic finds the
        /// connection untrusted, as it would if a rollback had failed (which no job can cause
        /// through the store's API).
        pub(super) static CONNECTION_UNTRUSTED: Cell<bool> = const { Cell::new(false) };
    }

    fn memory_store() -> StoreHandle {
        StoreHandle::spawn(Store::open_in_memory().expect("store")).expect("store thread")
    }

    /// The caller got an internal error (a bug, or a store out of service).
    fn is_internal(result: &Result<impl std::fmt::Debug>) -> bool {
        matches!(result, Err(e) if e.kind() == carom_api::ErrorKind::Internal)
    }

    async fn append(store: &StoreHandle, kind: &'static str) -> Result<u64> {
        store
            .write(move |tx| Ok(tx.append_event(kind, "{}", 1)?))
            .await
    }

    async fn kinds(store: &StoreHandle) -> Vec<String> {
        store
            .read(|s| Ok(s.events_since(0, 100)?))
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_read_is_answered_and_the_store_carries_on() {
        let store = memory_store();
        let answer = store
            .read(|_| -> Result<()> { panic!("a bug in a read") })
            .await;
        assert!(matches!(answer, Err(EngineError::Bug(_))), "{answer:?}");
        append(&store, "after").await.expect("a write still works");
        assert_eq!(kinds(&store).await, ["after"], "and so does a read");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_write_is_rolled_back_and_the_store_carries_on() {
        let store = memory_store();
        append(&store, "before").await.expect("write");
        let mut seq = store.event_seq();
        seq.borrow_and_update();
        let answer = store
            .write(|tx| -> Result<()> {
                tx.append_event("lost", "{}", 2)?;
                panic!("a bug in a write");
            })
            .await;
        assert!(is_internal(&answer), "{answer:?}");
        assert_eq!(
            kinds(&store).await,
            ["before"],
            "the panicking write left nothing"
        );
        append(&store, "after").await.expect("a write still works");
        assert_eq!(kinds(&store).await, ["before", "after"]);
        assert!(
            seq.has_changed().expect("open"),
            "subscribers still hear of new events"
        );
    }

    /// Sends a write job at once (as `StoreHandle::write` does on its first poll).
    fn queue_write(
        store: &StoreHandle,
        run: impl FnMut(&WriteTx<'_>) -> Result<AnyBox> + Send + 'static,
    ) -> oneshot::Receiver<Result<AnyBox>> {
        let (reply, answer) = oneshot::channel();
        store
            .send(Job::Write {
                run: Box::new(run),
                reply,
            })
            .expect("queued");
        answer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_in_a_batch_fails_only_itself_and_runs_once() {
        let store = memory_store();
        // Hold the thread in a read until every write is queued, so that they form one batch.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (reply, holding) = oneshot::channel();
        store
            .send(Job::Read {
                run: Box::new(move |_| {
                    let _ = held.recv();
                    Ok(Box::new(()) as AnyBox)
                }),
                reply,
            })
            .expect("queued");
        let first_runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&first_runs);
        let first = queue_write(&store, move |tx| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(tx.append_event("first", "{}", 1)?) as AnyBox)
        });
        let panics = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&panics);
        let bad = queue_write(&store, move |tx| {
            counted.fetch_add(1, Ordering::SeqCst);
            tx.append_event("lost", "{}", 2)?;
            panic!("a bug in a batched write");
        });
        let last = queue_write(&store, |tx| {
            Ok(Box::new(tx.append_event("last", "{}", 3)?) as AnyBox)
        });
        release.send(()).expect("release");
        assert!(holding.await.expect("answered").is_ok());
        assert!(first.await.expect("answered").is_ok());
        let bad = bad.await.expect("answered");
        assert!(is_internal(&bad), "{:?}", bad.err());
        assert!(last.await.expect("answered").is_ok());
        assert_eq!(
            first_runs.load(Ordering::SeqCst),
            2,
            "the first job ran in the batch, then again alone"
        );
        assert_eq!(
            panics.load(Ordering::SeqCst),
            1,
            "the panicking job was not run again"
        );
        assert_eq!(kinds(&store).await, ["first", "last"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_untrusted_connection_is_closed_and_every_later_job_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("store.db");
        let key = DbKey::generate().expect("key");
        let store = StoreHandle::spawn(Store::create(&db, &key).expect("store")).expect("thread");
        append(&store, "kept").await.expect("write");
        assert!(!*store.out_of_service().borrow());
        let answer = store
            .read(|_| -> Result<()> {
                CONNECTION_UNTRUSTED.with(|flag| flag.set(true));
                panic!("a bug that leaves the connection in doubt");
            })
            .await;
        assert!(is_internal(&answer), "{answer:?}");
        let later = append(&store, "refused").await;
        assert!(
            matches!(&later, Err(EngineError::Internal(m)) if m.contains("restart")),
            "{later:?}"
        );
        assert!(
            *store.out_of_service().borrow(),
            "the store says it is out of service"
        );
        // Refusals come only after the close.
        assert!(
            !dir.path().join("store.db-wal").exists(),
            "the store was closed at once"
        );
        let read = store.read(|s| Ok(s.last_event_seq()?)).await;
        assert!(is_internal(&read), "{read:?}");
        assert!(store.close().await.is_err(), "closing reports the failure");
        drop(store);
        let reopened = Store::open(&db, &key).expect("reopen");
        assert_eq!(
            reopened.last_event_seq().expect("seq"),
            1,
            "what was committed is there"
        );
    }

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
