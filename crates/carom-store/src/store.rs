//! Opening the database, keying it, and the read and write entry points.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use zeroize::Zeroizing;

use crate::err::{Error, Result, SqlResultExt};
use crate::fsutil::{self, Placement};
use crate::groups::{GroupDelivery, GroupMessage, GroupRecord, StoredOperation};
use crate::keyfile::DbKey;
use crate::model::{
    Contact, ContactState, Direction, Event, IdentityRecord, Message, OutboxItem, UnixMillis,
};
use crate::{contacts, ephemeral, events, groups, identity, messages, outbox, schema};

/// How long a write waits for another connection's lock before reporting [`Error::Busy`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The size, in bytes, to which the WAL is truncated after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

/// The name errors use for the RAM-only database.
const MEMORY_NAME: &str = "(in-memory database)";

/// Carom's encrypted database: one SQLCipher file (plus its `-wal` and `-shm`), or RAM only.
///
/// Reads are methods of [`StoreRead`], implemented by `Store` and by [`WriteTx`]. Writes happen
/// only inside [`Store::write`], one transaction per call, and are durable when it returns.
///
/// A `Store` is one connection: `Send` but not `Sync`. The daemon owns it from one task (or
/// behind a mutex).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    location: Location,
}

#[derive(Debug)]
enum Location {
    File(PathBuf),
    Memory,
}

impl Location {
    /// The path errors name.
    fn for_errors(&self) -> &Path {
        match self {
            Location::File(path) => path,
            Location::Memory => Path::new(MEMORY_NAME),
        }
    }
}

impl Store {
    /// Creates a new encrypted database at `path`, keyed with `key`, at the current schema
    /// version. Fails with [`Error::DatabaseExists`] if something is already there.
    ///
    /// Creation is atomic: the database is built under a temporary name in the same directory
    /// and linked into place only when complete, so a crash leaves either no database or a
    /// complete, empty one (and possibly a stray `.NAME.creating-*` file, which may be
    /// deleted: [`Store::remove_creation_leftovers`]).
    pub fn create(path: &Path, key: &DbKey) -> Result<Store> {
        initialise_sqlite_once();
        if path.symlink_metadata().is_ok() {
            return Err(Error::DatabaseExists {
                path: path.to_owned(),
            });
        }
        let dir = fsutil::parent_dir(path);
        if let Err(e) = fs::metadata(dir) {
            return Err(Error::io("create a database in", dir, e));
        }
        let temp = fsutil::temp_sibling(path, "creating")?;
        let built = build_database(&temp, key)
            .and_then(|()| fsutil::place(&temp, path, Placement::NoClobber));
        if let Err(error) = built {
            remove_database_files(&temp);
            return Err(if fsutil::is_already_exists(&error) {
                Error::DatabaseExists {
                    path: path.to_owned(),
                }
            } else {
                error
            });
        }
        tracing::info!(path = %path.display(), "created an encrypted database");
        Store::open(path, key)
    }

    /// Opens the existing database at `path` with `key`, migrating it to the current schema
    /// if it is older.
    ///
    /// Errors: [`Error::DatabaseMissing`], [`Error::WrongKey`] (the key does not decrypt it),
    /// [`Error::DatabaseCorrupt`] (naming the file; an empty file counts as damaged, never as
    /// a new database), [`Error::NewerSchema`].
    pub fn open(path: &Path, key: &DbKey) -> Result<Store> {
        initialise_sqlite_once();
        let metadata = fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::DatabaseMissing {
                path: path.to_owned(),
            },
            _ => Error::io("read", path, e),
        })?;
        if !metadata.is_file() {
            return Err(Error::DatabaseCorrupt {
                path: path.to_owned(),
                reason: "it is not a regular file".to_owned(),
            });
        }
        if metadata.len() == 0 {
            // SQLite would treat an empty file as a new database: a silent reset.
            return Err(Error::DatabaseCorrupt {
                path: path.to_owned(),
                reason: "the file is empty".to_owned(),
            });
        }
        let mut conn = open_keyed(path, key)?;
        configure_durable(&conn, path)?;
        schema::migrate(&mut conn, path)?;
        tracing::debug!(path = %path.display(), "opened the database");
        Ok(Store {
            conn,
            location: Location::File(path.to_owned()),
        })
    }

    /// Opens a RAM-only store for amnesic use: nothing is ever written to disk, and everything
    /// is gone when the `Store` is dropped. It is not encrypted (there is nothing at rest).
    pub fn open_in_memory() -> Result<Store> {
        initialise_sqlite_once();
        let path = Path::new(MEMORY_NAME);
        let mut conn = Connection::open_in_memory().at(path)?;
        configure_common(&conn, path)?;
        schema::migrate(&mut conn, path)?;
        Ok(Store {
            conn,
            location: Location::Memory,
        })
    }

    /// Removes what [`Store::create`] calls for `path` left behind when they were
    /// interrupted: their `.NAME.creating-*` files with SQLite's `-wal` and `-shm` beside them.
    /// None of them is ever a database in use (one becomes `path` by a link, and that name is
    /// not among them), so they may always go, as long as no `Store::create` for `path` is
    /// running at the same time. Returns the paths removed.
    pub fn remove_creation_leftovers(path: &Path) -> Result<Vec<PathBuf>> {
        let leftovers = fsutil::temp_siblings(path, "creating")?;
        for leftover in &leftovers {
            fsutil::remove_durably(leftover)?;
        }
        Ok(leftovers)
    }

    /// The files of the database at `path`: itself, its `-wal` and its `-shm`.
    pub fn database_files(path: &Path) -> [PathBuf; 3] {
        [
            path.to_owned(),
            sidecar(path, "-wal"),
            sidecar(path, "-shm"),
        ]
    }

    /// Deletes the database at `path` with its `-wal` and `-shm` files, then flushes the
    /// directory so the deletion is on disk before whatever the caller does next. Missing files
    /// are not an error; returns whether the database itself was there.
    ///
    /// Irreversible: only for a database known to hold nothing anyone needs, such as the one
    /// an interrupted profile creation left behind. The database must not be open.
    pub fn delete_files(path: &Path) -> Result<bool> {
        // The main file last: while it remains, the database is still recognisably there.
        let [_, wal, shm] = Store::database_files(path);
        for side in [wal, shm] {
            fsutil::remove_durably(&side)?;
        }
        let existed = fsutil::remove_durably(path)?;
        if existed {
            tracing::info!(path = %path.display(), "deleted a database");
        }
        Ok(existed)
    }

    /// Whether the connection is idle: no transaction open, as after every [`Store::write`]
    /// and every read.
    ///
    /// A caller that caught a panic from inside a write or a read checks this before trusting
    /// the connection again. Unwinding out of [`Store::write`] rolls its transaction back, but
    /// should that rollback fail, the transaction would stay open and the next write would
    /// fail or, worse, join it.
    pub fn is_idle(&self) -> bool {
        self.conn.is_autocommit()
    }

    /// The database file, or `None` for a RAM-only store.
    pub fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::File(path) => Some(path),
            Location::Memory => None,
        }
    }

    /// The schema version of the open database (always [`crate::SCHEMA_VERSION`] once open).
    pub fn schema_version(&self) -> Result<u32> {
        schema::version(&self.conn, self.location.for_errors())
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`) and commits it.
    ///
    /// Returns only after `COMMIT` has returned, which with WAL and `synchronous=FULL` means the
    /// changes are on disk: only then may the caller report "queued" or acknowledge a peer. If
    /// `f` fails (or panics), or the commit fails, everything `f` did is rolled back.
    pub fn write<T>(&mut self, f: impl FnOnce(&WriteTx<'_>) -> Result<T>) -> Result<T> {
        self.write_with(f)
    }

    /// [`Store::write`] for closures with their own error type, so a caller can abort the
    /// transaction with its own reason.
    pub fn write_with<T, E: From<Error>>(
        &mut self,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let Store { conn, location } = self;
        let path = location.for_errors();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        let write_tx = WriteTx { tx, path };
        match f(&write_tx) {
            Ok(value) => {
                write_tx.tx.commit().at(path)?;
                Ok(value)
            }
            Err(error) => {
                if let Err(rollback) = write_tx.tx.rollback() {
                    // SQLite rolls back by itself after some errors (a full disk, for one);
                    // then there is nothing left to roll back.
                    tracing::debug!(error = %rollback, "rollback after a failed write");
                }
                Err(error)
            }
        }
    }

    /// Moves everything in the WAL into the database file and truncates the WAL to nothing,
    /// so that older copies of pages (the content erasure just overwrote, for one) no longer
    /// exist in it. Waits (up to the busy timeout) for other connections' readers; fails with
    /// [`Error::Busy`] if one still holds an old snapshot. A no-op for the RAM-only store.
    pub fn checkpoint(&self) -> Result<()> {
        let path = self.location.for_errors();
        if matches!(self.location, Location::Memory) {
            return Ok(());
        }
        // (busy, frames in the WAL, frames checkpointed); busy = 1: it could not finish.
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .at(path)?;
        if busy != 0 {
            return Err(Error::Busy {
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    /// Checks the whole database: SQLCipher's authentication of every page, then SQLite's
    /// structural integrity check. Reads everything, so it takes time proportional to the
    /// database's size.
    pub fn check_integrity(&self) -> Result<()> {
        let path = self.location.for_errors();
        let corrupt = |reason: String| Error::DatabaseCorrupt {
            path: path.to_owned(),
            reason,
        };
        if matches!(self.location, Location::File(_)) {
            // One row per page that fails its HMAC; none when all is well.
            let failures = pragma_lines(&self.conn, "PRAGMA cipher_integrity_check").at(path)?;
            if let Some(first) = failures.first() {
                return Err(corrupt(format!(
                    "{} page check failure(s), first: {first}",
                    failures.len()
                )));
            }
        }
        let problems = pragma_lines(&self.conn, "PRAGMA integrity_check").at(path)?;
        if problems != ["ok"] {
            return Err(corrupt(format!(
                "integrity check found {} problem(s), first: {}",
                problems.len(),
                problems.first().map_or("", String::as_str)
            )));
        }
        Ok(())
    }

    /// Closes the database, reporting errors that dropping the `Store` would only log.
    pub fn close(self) -> Result<()> {
        let path = self.location.for_errors().to_owned();
        self.conn
            .close()
            .map_err(|(_, e)| Error::from_sqlite(&path, e))
    }

    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// A write transaction, handed to the closure of [`Store::write`].
///
/// It can read too (it implements [`StoreRead`]), and sees its own uncommitted writes, so an
/// engine can read, decide and write atomically.
#[derive(Debug)]
pub struct WriteTx<'s> {
    tx: rusqlite::Transaction<'s>,
    path: &'s Path,
}

impl WriteTx<'_> {
    pub(crate) fn db(&self) -> Db<'_> {
        Db {
            conn: &self.tx,
            path: self.path,
        }
    }
}

/// A connection and the path its errors name.
#[derive(Debug, Clone, Copy)]
pub struct Db<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) path: &'a Path,
}

mod sealed {
    /// Gives [`super::StoreRead`] its connection. Public in a private module so the trait can
    /// be used outside the crate but implemented only inside it.
    #[allow(unreachable_pub)]
    pub trait Connected {
        /// The connection to read from.
        fn db(&self) -> super::Db<'_>;
    }
}

impl sealed::Connected for Store {
    fn db(&self) -> Db<'_> {
        Db {
            conn: &self.conn,
            path: self.location.for_errors(),
        }
    }
}

impl sealed::Connected for WriteTx<'_> {
    fn db(&self) -> Db<'_> {
        WriteTx::db(self)
    }
}

/// Every read the daemon needs, on a [`Store`] (each call its own consistent snapshot) or on a
/// [`WriteTx`] (inside the transaction, seeing its writes).
pub trait StoreRead: sealed::Connected {
    /// This profile's identity, if one was saved.
    fn identity(&self) -> Result<Option<IdentityRecord>> {
        identity::get(self.db())
    }

    /// The bridge lines set through the API (`Some(vec![])`: explicitly none), or `None` if
    /// the profile leaves bridges to the daemon's configuration.
    fn tor_bridges(&self) -> Result<Option<Vec<String>>> {
        crate::tor::bridges(self.db())
    }

    /// The contact with local id `id`.
    fn contact(&self, id: i64) -> Result<Option<Contact>> {
        contacts::get(self.db(), id)
    }

    /// The contact with this identity.
    fn contact_by_identity(&self, identity: &[u8; 32]) -> Result<Option<Contact>> {
        contacts::by_identity(self.db(), identity)
    }

    /// Every contact, by id.
    fn contacts(&self) -> Result<Vec<Contact>> {
        contacts::all(self.db())
    }

    /// How many contacts are in `state` (counted, not listed).
    fn count_contacts(&self, state: ContactState) -> Result<u64> {
        contacts::count_in_state(self.db(), state)
    }

    /// Up to `limit` contacts in `state` last changed before `updated_before` (ms), least
    /// recently changed first (for a pending request: the oldest request first).
    fn oldest_contacts(
        &self,
        state: ContactState,
        updated_before: UnixMillis,
        limit: u32,
    ) -> Result<Vec<Contact>> {
        contacts::oldest_in_state(self.db(), state, updated_before, limit)
    }

    /// The message with local id `row`.
    fn message(&self, row: i64) -> Result<Option<Message>> {
        messages::get(self.db(), row)
    }

    /// The message with this protocol id in this conversation and direction.
    fn message_by_id(
        &self,
        contact_id: i64,
        direction: Direction,
        msg_id: &[u8; 16],
    ) -> Result<Option<Message>> {
        messages::by_id(self.db(), contact_id, direction, msg_id)
    }

    /// A page of a conversation, newest first: at most `limit` messages with
    /// `row < before_row` (all rows when `before_row` is `None`). Pass the last row of a page
    /// as `before_row` to get the next one.
    fn history(
        &self,
        contact_id: i64,
        before_row: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        messages::history(self.db(), contact_id, before_row, limit)
    }

    /// The outbox item with id `id`.
    fn outbox_item(&self, id: i64) -> Result<Option<OutboxItem>> {
        outbox::get(self.db(), id)
    }

    /// A contact's outbox, in send order (id order).
    fn outbox_for_contact(&self, contact_id: i64) -> Result<Vec<OutboxItem>> {
        outbox::for_contact(self.db(), contact_id)
    }

    /// At most `limit` of a contact's items with an id above `after_id`, in send order: how a
    /// session walks a long outbox without re-reading what it already sent.
    fn outbox_for_contact_after(
        &self,
        contact_id: i64,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<OutboxItem>> {
        outbox::for_contact_after(self.db(), contact_id, after_id, limit)
    }

    /// Whether a contact has anything in its outbox (reads no payloads).
    fn has_outbox(&self, contact_id: i64) -> Result<bool> {
        outbox::has_items(self.db(), contact_id)
    }

    /// Every group this profile holds, by row.
    fn groups(&self) -> Result<Vec<GroupRecord>> {
        groups::all(self.db())
    }

    /// The group with this id.
    fn group(&self, group_id: &[u8; 16]) -> Result<Option<GroupRecord>> {
        groups::by_group_id(self.db(), group_id)
    }

    /// The group with local row id `row`.
    fn group_by_row(&self, row: i64) -> Result<Option<GroupRecord>> {
        groups::by_row(self.db(), row)
    }

    /// A group's operations, in the order they were added.
    fn group_operations(&self, group_row: i64) -> Result<Vec<StoredOperation>> {
        groups::operations(self.db(), group_row)
    }

    /// The group message with local id `row`.
    fn group_message(&self, row: i64) -> Result<Option<GroupMessage>> {
        groups::message(self.db(), row)
    }

    /// The group message (or tombstone) `sender` sent with id `msg_id`, if it is stored.
    fn group_message_from(
        &self,
        group_row: i64,
        sender: &[u8; 32],
        msg_id: &[u8; 16],
    ) -> Result<Option<GroupMessage>> {
        groups::by_sender_id(self.db(), group_row, sender, msg_id)
    }

    /// Up to `limit` of a group's messages before row `before` (all if `None`), newest first.
    fn group_history(
        &self,
        group_row: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<GroupMessage>> {
        groups::history(self.db(), group_row, before, limit)
    }

    /// How far an outgoing group message got to each recipient.
    fn group_deliveries(&self, message_row: i64) -> Result<Vec<GroupDelivery>> {
        groups::deliveries(self.db(), message_row)
    }

    /// When the next message is due to be erased (wall clock, ms), if any is.
    fn next_expiry(&self) -> Result<Option<UnixMillis>> {
        ephemeral::next_expiry(self.db())
    }

    /// The latest time erasure ran at (wall clock, ms; 0 if it never did).
    fn erasure_high_water(&self) -> Result<UnixMillis> {
        ephemeral::erasure_high_water(self.db())
    }

    /// The contacts that have something in their outbox, by id (reads no payloads).
    fn outbox_contacts(&self) -> Result<Vec<i64>> {
        outbox::contacts(self.db())
    }

    /// At most `limit` items enqueued at or before `cutoff`, oldest first: the candidates for
    /// expiry.
    fn outbox_enqueued_before(&self, cutoff: UnixMillis, limit: u32) -> Result<Vec<OutboxItem>> {
        outbox::enqueued_before(self.db(), cutoff, limit)
    }

    /// At most `limit` events with `seq > after_seq`, in ascending order.
    fn events_since(&self, after_seq: u64, limit: u32) -> Result<Vec<Event>> {
        events::since(self.db(), after_seq, limit)
    }

    /// The highest sequence number ever assigned (0 if none), even if pruned since.
    fn last_event_seq(&self) -> Result<u64> {
        events::last_seq(self.db())
    }

    /// The oldest event still kept, not counting the `churn` kinds (see
    /// [`WriteTx::prune_events`]): every other event after it is still there.
    fn oldest_event_seq(&self, churn: &[&str]) -> Result<Option<u64>> {
        events::oldest_seq(self.db(), churn)
    }
}

impl StoreRead for Store {}
impl StoreRead for WriteTx<'_> {}

/// Initialise SQLite, and SQLCipher with it, before this process opens its first database.
///
/// SQLite marks itself initialised *before* it runs SQLCipher's part of the initialisation
/// (`SQLITE_EXTRA_INIT`), so a connection that another thread opens in that window cannot be
/// keyed: `PRAGMA key` fails with a bare `SQLITE_ERROR` (SQLCipher's "not initialized"). That
/// was seen once in 200 runs of the engine tests under load, in the first two stores a test
/// binary created at the same moment. Here the first store of the process initialises SQLite
/// alone, through a throwaway in-memory connection, while every other waits. Nothing else in
/// Carom opens SQLite earlier (arti, which links the same library, starts after the store).
fn initialise_sqlite_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = Connection::open_in_memory() {
            tracing::warn!(error = %e, "could not initialise SQLite");
        }
    });
}

/// Opens `path` (which must exist), keys it and proves the key fits.
fn open_keyed(path: &Path, key: &DbKey) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).at(path)?;
    apply_key(&conn, path, key)?;
    // The first read of page 1 is where SQLCipher checks the key (by the page's HMAC).
    let verified: rusqlite::Result<i64> =
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0));
    match verified {
        Ok(_) => Ok(conn),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
            Err(Error::WrongKey {
                path: path.to_owned(),
            })
        }
        Err(e) => Err(Error::from_sqlite(path, e)),
    }
}

/// Keys the connection with the raw key, bypassing SQLCipher's own passphrase KDF: the key is
/// already random and full-strength.
pub(crate) fn apply_key(conn: &Connection, path: &Path, key: &DbKey) -> Result<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const PREFIX: &str = "PRAGMA key = \"x'";
    const SUFFIX: &str = "'\";";
    // Built in place at its final capacity so no reallocation leaves a copy behind; zeroised
    // on drop.
    let mut sql = Zeroizing::new(String::with_capacity(
        PREFIX.len() + 2 * key.as_bytes().len() + SUFFIX.len(),
    ));
    sql.push_str(PREFIX);
    for byte in key.as_bytes() {
        sql.push(char::from(HEX[usize::from(byte >> 4)]));
        sql.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    sql.push_str(SUFFIX);
    debug_assert_eq!(
        sql.len(),
        sql.capacity(),
        "the buffer must not have reallocated"
    );
    // SQLCipher writes its own diagnostics (failed page checks) straight to stderr, past the
    // daemon's logging; the errors reach the caller anyway. The setting is process-wide.
    conn.execute_batch("PRAGMA cipher_log_level = NONE")
        .at(path)?;
    conn.execute_batch(&sql).map_err(|e| {
        // Drop SQLite's message: it could quote the statement, which holds the key.
        let code = e.sqlite_error().copied();
        match code {
            Some(code) => Error::Sqlite {
                path: path.to_owned(),
                code: code.extended_code,
                source: rusqlite::Error::SqliteFailure(code, None),
            },
            None => Error::Sqlite {
                path: path.to_owned(),
                code: -1,
                source: rusqlite::Error::InvalidQuery,
            },
        }
    })?;
    // Pin the on-disk format to SQLCipher 4's, so a later SQLCipher with new defaults still
    // reads our files, with one change: pages are authenticated with HMAC-SHA256 rather than
    // SHA512. Both are far beyond what a 256-bit random key needs, and SHA-256 has CPU
    // instructions on current x86 and ARM: it was a tenth of the store's time in profiles.
    conn.execute_batch(
        "PRAGMA cipher_compatibility = 4; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
    )
    .at(path)
}

/// Settings for every connection, on disk or in RAM.
fn configure_common(conn: &Connection, path: &Path) -> Result<()> {
    // Temporary tables and sort spills stay in RAM rather than in temporary files.
    conn.pragma_update(None, "temp_store", "MEMORY").at(path)?;
    conn.pragma_update(None, "foreign_keys", true).at(path)?;
    // Deleted content is overwritten, so it cannot be recovered even by someone who later
    // learns the key.
    conn.pragma_update(None, "secure_delete", true).at(path)?;
    // 16 MiB of decrypted pages (SQLite's default is 2 MiB): hot index and table pages stay
    // decrypted instead of being decrypted again on every transaction.
    conn.pragma_update(None, "cache_size", -16 * 1024)
        .at(path)?;
    conn.busy_timeout(BUSY_TIMEOUT).at(path)?;
    let foreign_keys: bool = conn
        .pragma_query_value(None, "foreign_keys", |row| row.get(0))
        .at(path)?;
    if !foreign_keys {
        return Err(Error::Invalid {
            what: "SQLite build",
            reason: "it does not enforce foreign keys".to_owned(),
        });
    }
    Ok(())
}

/// The durability settings of an on-disk database, checked after setting them.
pub(crate) fn configure_durable(conn: &Connection, path: &Path) -> Result<()> {
    configure_common(conn, path)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .at(path)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Io {
            action: "enable write-ahead logging for",
            path: path.to_owned(),
            source: io::Error::other(format!("SQLite stayed in {mode} mode")),
        });
    }
    conn.pragma_update(None, "synchronous", "FULL").at(path)?;
    // After a checkpoint, a WAL grown by a burst of writes is cut back to this size rather
    // than left large on disk.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
        .at(path)?;
    let synchronous: i64 = conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .at(path)?;
    // 2 is FULL: the WAL is fsynced at every commit.
    if synchronous != 2 {
        return Err(Error::Invalid {
            what: "SQLite build",
            reason: format!("synchronous stayed at {synchronous} instead of FULL"),
        });
    }
    Ok(())
}

/// Builds a complete database at `temp` (a path that must not exist).
fn build_database(temp: &Path, key: &DbKey) -> Result<()> {
    // Created by us with owner-only permissions; SQLite gives its -wal and -shm files the
    // database file's permissions.
    drop(fsutil::create_private(temp).map_err(|e| Error::io("create", temp, e))?);
    let mut conn = {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(temp, flags).at(temp)?;
        apply_key(&conn, temp, key)?;
        conn
    };
    configure_durable(&conn, temp)?;
    schema::migrate(&mut conn, temp)?;
    // Move everything into the main file so the WAL can be left behind with the temporary name.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .at(temp)?;
    conn.close().map_err(|(_, e)| Error::from_sqlite(temp, e))?;
    let file = fs::File::open(temp).map_err(|e| Error::io("open", temp, e))?;
    file.sync_all().map_err(|e| Error::io("flush", temp, e))?;
    for suffix in ["-wal", "-shm"] {
        let side = sidecar(temp, suffix);
        if let Err(e) = fs::remove_file(&side)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(Error::io("remove", &side, e));
        }
    }
    Ok(())
}

/// The path of a database's `-wal` or `-shm` file.
fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Best-effort removal of a half-built database.
fn remove_database_files(db: &Path) {
    for path in Store::database_files(db) {
        let _ = fs::remove_file(path);
    }
}

/// The text rows a pragma returns.
fn pragma_lines(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    rows.collect()
}

/// A caller's unsigned number (a time, a sequence number) as SQLite's signed integer.
pub(crate) fn to_sql_int(value: u64, what: &'static str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Invalid {
        what,
        reason: format!("{value} is too large to store"),
    })
}

/// Reads an unsigned column stored as SQLite's signed integer.
pub(crate) fn get_u64(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, value))
}

/// Reads a nullable unsigned column stored as SQLite's signed integer.
pub(crate) fn get_opt_u64(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<u64>> {
    let value: Option<i64> = row.get(index)?;
    value
        .map(|v| u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, v)))
        .transpose()
}
