//! The outbox: what waits to be sent, and when to try next.

use rusqlite::{OptionalExtension, Row};

use crate::err::{Error, Result, SqlResultExt};
use crate::model::{Direction, OutboxItem, OutboxKind, UnixMillis};
use crate::store::{Db, WriteTx, get_u64, to_sql_int};

/// The columns [`from_row`] reads.
macro_rules! outbox_columns {
    () => {
        "id, contact_id, kind, message_id, payload, attempts, next_attempt_at, created_at, \
         group_message_id"
    };
}

const SELECT_BY_ID: &str = concat!("SELECT ", outbox_columns!(), " FROM outbox WHERE id = ?1");

pub(crate) const SELECT_FOR_CONTACT: &str = concat!(
    "SELECT ",
    outbox_columns!(),
    " FROM outbox WHERE contact_id = ?1 ORDER BY id"
);

pub(crate) const SELECT_FOR_CONTACT_AFTER: &str = concat!(
    "SELECT ",
    outbox_columns!(),
    " FROM outbox WHERE contact_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
);

pub(crate) const SELECT_ENQUEUED_BEFORE: &str = concat!(
    "SELECT ",
    outbox_columns!(),
    " FROM outbox WHERE created_at <= ?1 ORDER BY created_at, id LIMIT ?2"
);

pub(crate) const DELETE_KIND: &str = "DELETE FROM outbox WHERE contact_id = ?1 AND kind = ?2";

fn from_row(row: &Row<'_>) -> rusqlite::Result<OutboxItem> {
    Ok(OutboxItem {
        id: row.get(0)?,
        contact_id: row.get(1)?,
        kind: row.get(2)?,
        message_row: row.get(3)?,
        payload: row.get(4)?,
        attempts: row.get(5)?,
        next_attempt_at: get_u64(row, 6)?,
        created_at: get_u64(row, 7)?,
        group_message_row: row.get(8)?,
    })
}

fn collect(db: Db<'_>, sql: &str, params: impl rusqlite::Params) -> Result<Vec<OutboxItem>> {
    db.conn
        .prepare_cached(sql)
        .and_then(|mut stmt| {
            stmt.query_map(params, from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .at(db.path)
}

pub(crate) fn get(db: Db<'_>, id: i64) -> Result<Option<OutboxItem>> {
    db.conn
        .prepare_cached(SELECT_BY_ID)
        .and_then(|mut stmt| stmt.query_row([id], from_row).optional())
        .at(db.path)
}

pub(crate) fn for_contact(db: Db<'_>, contact_id: i64) -> Result<Vec<OutboxItem>> {
    collect(db, SELECT_FOR_CONTACT, [contact_id])
}

pub(crate) fn for_contact_after(
    db: Db<'_>,
    contact_id: i64,
    after_id: i64,
    limit: u32,
) -> Result<Vec<OutboxItem>> {
    collect(
        db,
        SELECT_FOR_CONTACT_AFTER,
        rusqlite::params![contact_id, after_id, limit],
    )
}

pub(crate) const SELECT_HAS_ITEMS: &str =
    "SELECT EXISTS (SELECT 1 FROM outbox WHERE contact_id = ?1)";

pub(crate) const SELECT_CONTACTS: &str =
    "SELECT DISTINCT contact_id FROM outbox ORDER BY contact_id";

pub(crate) fn has_items(db: Db<'_>, contact_id: i64) -> Result<bool> {
    db.conn
        .prepare_cached(SELECT_HAS_ITEMS)
        .and_then(|mut stmt| stmt.query_row([contact_id], |row| row.get(0)))
        .at(db.path)
}

pub(crate) fn contacts(db: Db<'_>) -> Result<Vec<i64>> {
    db.conn
        .prepare_cached(SELECT_CONTACTS)
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()
        })
        .at(db.path)
}

pub(crate) fn enqueued_before(
    db: Db<'_>,
    cutoff: UnixMillis,
    limit: u32,
) -> Result<Vec<OutboxItem>> {
    let cutoff = to_sql_int(cutoff, "cutoff")?;
    collect(db, SELECT_ENQUEUED_BEFORE, rusqlite::params![cutoff, limit])
}

/// Adds an item; shared by [`WriteTx::enqueue`] and message queueing.
pub(crate) fn insert(
    db: Db<'_>,
    contact_id: i64,
    kind: OutboxKind,
    message_row: Option<i64>,
    payload: &[u8],
    now: i64,
) -> Result<i64> {
    db.conn
        .prepare_cached(
            "INSERT INTO outbox (contact_id, kind, message_id, payload, attempts,
                 next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
        )
        .and_then(|mut stmt| {
            stmt.insert(rusqlite::params![
                contact_id,
                kind,
                message_row,
                payload,
                now
            ])
        })
        .at(db.path)
        .map_err(|e| {
            if e.is_missing_reference() {
                Error::NotFound {
                    what: "contact or message",
                }
            } else {
                e
            }
        })
}

/// Adds a group item (operations, or a group chat pointing at its row).
pub(crate) fn insert_group(
    db: Db<'_>,
    contact_id: i64,
    kind: OutboxKind,
    group_message_row: Option<i64>,
    payload: &[u8],
    now: i64,
) -> Result<i64> {
    db.conn
        .prepare_cached(
            "INSERT INTO outbox (contact_id, kind, message_id, group_message_id, payload,
                 attempts, next_attempt_at, created_at)
             VALUES (?1, ?2, NULL, ?3, ?4, 0, ?5, ?5)",
        )
        .and_then(|mut stmt| {
            stmt.insert(rusqlite::params![
                contact_id,
                kind,
                group_message_row,
                payload,
                now
            ])
        })
        .at(db.path)
        .map_err(|e| {
            if e.is_missing_reference() {
                Error::NotFound {
                    what: "contact or group message",
                }
            } else {
                e
            }
        })
}

impl WriteTx<'_> {
    /// Adds an item to a contact's outbox, due at `now`, and returns its id. A `message_row`
    /// must name an outgoing message of the same contact.
    pub fn enqueue(
        &self,
        contact_id: i64,
        kind: OutboxKind,
        message_row: Option<i64>,
        payload: &[u8],
        now: UnixMillis,
    ) -> Result<i64> {
        let db = self.db();
        if let Some(row) = message_row {
            let message =
                crate::messages::get(db, row)?.ok_or(Error::NotFound { what: "message" })?;
            if message.contact_id != contact_id || message.direction != Direction::Outgoing {
                return Err(Error::Invalid {
                    what: "outbox item",
                    reason: "its message is not an outgoing message to this contact".to_owned(),
                });
            }
        }
        insert(
            db,
            contact_id,
            kind,
            message_row,
            payload,
            to_sql_int(now, "now")?,
        )
    }

    /// Removes an item; returns whether it existed.
    pub fn remove_outbox(&self, id: i64) -> Result<bool> {
        let db = self.db();
        let removed = db
            .conn
            .prepare_cached("DELETE FROM outbox WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute([id]))
            .at(db.path)?;
        Ok(removed > 0)
    }

    /// Removes every item of one kind for a contact; returns how many there were.
    pub fn remove_outbox_kind(&self, contact_id: i64, kind: OutboxKind) -> Result<u64> {
        let db = self.db();
        let removed = db
            .conn
            .execute(DELETE_KIND, rusqlite::params![contact_id, kind])
            .at(db.path)?;
        Ok(removed as u64)
    }
}
