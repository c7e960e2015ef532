//! Contacts and the conversation list.

use rusqlite::{OptionalExtension, Row};

use crate::err::{Error, Result, SqlResultExt};
use crate::model::{Contact, ContactState, Forgotten, NewContact, PeerKind, UnixMillis};
use crate::store::{Db, WriteTx, get_opt_u64, get_u64, to_sql_int};

/// The columns [`from_row`] reads, each prefixed with `$prefix`.
macro_rules! contact_columns {
    ($prefix:literal) => {
        concat!(
            $prefix,
            "id, ",
            $prefix,
            "identity, ",
            $prefix,
            "state, ",
            $prefix,
            "nickname, ",
            $prefix,
            "offered_nickname, ",
            $prefix,
            "greeting, ",
            $prefix,
            "declared_kind, ",
            $prefix,
            "peer_static, ",
            $prefix,
            "peer_static_expires, ",
            $prefix,
            "created_at, ",
            $prefix,
            "updated_at, ",
            $prefix,
            "last_seen, ",
            $prefix,
            "timer, ",
            $prefix,
            "keep_history"
        )
    };
}

pub(crate) const SELECT_BY_ID: &str = concat!(
    "SELECT ",
    contact_columns!(""),
    " FROM contacts WHERE id = ?1"
);

pub(crate) const SELECT_BY_IDENTITY: &str = concat!(
    "SELECT ",
    contact_columns!(""),
    " FROM contacts WHERE identity = ?1"
);

const SELECT_ALL: &str = concat!(
    "SELECT ",
    contact_columns!(""),
    " FROM contacts ORDER BY id"
);

const SELECT_OLDEST_IN_STATE: &str = concat!(
    "SELECT ",
    contact_columns!(""),
    " FROM contacts WHERE state = ?1 AND updated_at < ?2 ORDER BY updated_at, id LIMIT ?3"
);

fn from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<Contact> {
    Ok(Contact {
        id: row.get(first)?,
        identity: row.get(first + 1)?,
        state: row.get(first + 2)?,
        nickname: row.get(first + 3)?,
        offered_nickname: row.get(first + 4)?,
        greeting: row.get(first + 5)?,
        declared_kind: row.get(first + 6)?,
        peer_static: row.get(first + 7)?,
        peer_static_expires: get_opt_u64(row, first + 8)?,
        created_at: get_u64(row, first + 9)?,
        updated_at: get_u64(row, first + 10)?,
        last_seen: get_opt_u64(row, first + 11)?,
        timer: row.get(first + 12)?,
        keep_history: row.get(first + 13)?,
    })
}

pub(crate) fn get(db: Db<'_>, id: i64) -> Result<Option<Contact>> {
    db.conn
        .prepare_cached(SELECT_BY_ID)
        .and_then(|mut stmt| stmt.query_row([id], |row| from_row(row, 0)).optional())
        .at(db.path)
}

pub(crate) fn by_identity(db: Db<'_>, identity: &[u8; 32]) -> Result<Option<Contact>> {
    db.conn
        .prepare_cached(SELECT_BY_IDENTITY)
        .and_then(|mut stmt| {
            stmt.query_row([identity], |row| from_row(row, 0))
                .optional()
        })
        .at(db.path)
}

pub(crate) fn all(db: Db<'_>) -> Result<Vec<Contact>> {
    db.conn
        .prepare_cached(SELECT_ALL)
        .and_then(|mut stmt| {
            stmt.query_map([], |row| from_row(row, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .at(db.path)
}

pub(crate) fn count_in_state(db: Db<'_>, state: ContactState) -> Result<u64> {
    db.conn
        .prepare_cached("SELECT count(*) FROM contacts WHERE state = ?1")
        .and_then(|mut stmt| stmt.query_row([state], |row| get_u64(row, 0)))
        .at(db.path)
}

pub(crate) fn oldest_in_state(
    db: Db<'_>,
    state: ContactState,
    updated_before: u64,
    limit: u32,
) -> Result<Vec<Contact>> {
    // "Before the end of time" is a fine thing to ask for.
    let before = i64::try_from(updated_before).unwrap_or(i64::MAX);
    db.conn
        .prepare_cached(SELECT_OLDEST_IN_STATE)
        .and_then(|mut stmt| {
            stmt.query_map(rusqlite::params![state, before, limit], |row| {
                from_row(row, 0)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .at(db.path)
}

impl WriteTx<'_> {
    /// Adds a contact and returns its id. Fails with [`Error::AlreadyExists`] if a contact with
    /// this identity exists.
    pub fn insert_contact(&self, new: &NewContact) -> Result<i64> {
        let db = self.db();
        let now = to_sql_int(new.now, "now")?;
        db.conn
            .prepare_cached(
                "INSERT INTO contacts (identity, state, nickname, offered_nickname, greeting,
                     declared_kind, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            )
            .and_then(|mut stmt| {
                stmt.insert(rusqlite::params![
                    new.identity,
                    new.state,
                    new.nickname,
                    new.offered_nickname,
                    new.greeting,
                    new.declared_kind,
                    now,
                ])
            })
            .at(db.path)
            .map_err(|e| {
                if e.is_unique_conflict() {
                    Error::AlreadyExists {
                        what: "contact with this identity",
                    }
                } else {
                    e
                }
            })
    }

    /// Writes every field of `contact` except `id`, `identity` and `created_at`, which never
    /// change. Fails with [`Error::NotFound`] if there is no contact with that id.
    pub fn update_contact(&self, contact: &Contact) -> Result<()> {
        let db = self.db();
        let expires = contact
            .peer_static_expires
            .map(|t| to_sql_int(t, "peer_static_expires"))
            .transpose()?;
        let updated_at = to_sql_int(contact.updated_at, "updated_at")?;
        let last_seen = contact
            .last_seen
            .map(|t| to_sql_int(t, "last_seen"))
            .transpose()?;
        let changed = db
            .conn
            .prepare_cached(
                "UPDATE contacts SET state = ?2, nickname = ?3, offered_nickname = ?4,
                     greeting = ?5, declared_kind = ?6, peer_static = ?7,
                     peer_static_expires = ?8, updated_at = ?9, last_seen = ?10
                 WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(rusqlite::params![
                    contact.id,
                    contact.state,
                    contact.nickname,
                    contact.offered_nickname,
                    contact.greeting,
                    contact.declared_kind,
                    contact.peer_static,
                    expires,
                    updated_at,
                    last_seen,
                ])
            })
            .at(db.path)?;
        if changed == 0 {
            return Err(Error::NotFound { what: "contact" });
        }
        Ok(())
    }

    /// Keep the conversation's history in the store (`true`), or keep its messages in memory
    /// only from now on (`false`). Messages stored before stay until deleted or expired.
    pub fn set_keep_history(&self, contact_id: i64, keep: bool, now: UnixMillis) -> Result<()> {
        let db = self.db();
        let now = to_sql_int(now, "updated_at")?;
        let changed = db
            .conn
            .prepare_cached("UPDATE contacts SET keep_history = ?2, updated_at = ?3 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute(rusqlite::params![contact_id, keep, now]))
            .at(db.path)?;
        if changed == 0 {
            return Err(Error::NotFound { what: "contact" });
        }
        Ok(())
    }

    /// The row of someone we share a group with, made (as a [`ContactState::CoMember`]) if
    /// there is none; returns its id. An existing row of any state is left as it is.
    pub fn ensure_co_member(
        &self,
        identity: &[u8; 32],
        nickname: &str,
        declared_kind: PeerKind,
        now: UnixMillis,
    ) -> Result<i64> {
        if let Some(c) = by_identity(self.db(), identity)? {
            return Ok(c.id);
        }
        self.insert_contact(&NewContact {
            identity: *identity,
            state: ContactState::CoMember,
            nickname: nickname.to_owned(),
            offered_nickname: None,
            greeting: None,
            declared_kind,
            now,
        })
    }

    /// Forgets a contact: its messages and its 1:1 outbox go. If group traffic is still
    /// queued for it, the row stays as a [`ContactState::CoMember`] to carry that traffic
    /// (and is returned); otherwise it is deleted. `None`: there was no such row.
    pub fn forget_contact(&self, id: i64, now: UnixMillis) -> Result<Option<Forgotten>> {
        let db = self.db();
        let Some(mut contact) = get(db, id)? else {
            return Ok(None);
        };
        let group_traffic: bool = db
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE contact_id = ?1
                     AND kind IN ('group_operations', 'group_chat'))",
            )
            .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)))
            .at(db.path)?;
        if !group_traffic {
            self.delete_contact(id)?;
            return Ok(Some(Forgotten::Deleted));
        }
        db.conn
            .prepare_cached(
                "DELETE FROM outbox WHERE contact_id = ?1
                     AND kind NOT IN ('group_operations', 'group_chat')",
            )
            .and_then(|mut stmt| stmt.execute([id]))
            .at(db.path)?;
        db.conn
            .prepare_cached("DELETE FROM messages WHERE contact_id = ?1")
            .and_then(|mut stmt| stmt.execute([id]))
            .at(db.path)?;
        contact.state = ContactState::CoMember;
        contact.offered_nickname = None;
        contact.greeting = None;
        contact.last_seen = None;
        contact.updated_at = now;
        self.update_contact(&contact)?;
        Ok(Some(Forgotten::KeptAsCoMember(Box::new(contact))))
    }

    /// Deletes a contact with its messages and outbox items; returns whether it existed.
    pub fn delete_contact(&self, id: i64) -> Result<bool> {
        let db = self.db();
        let removed = db
            .conn
            .execute("DELETE FROM contacts WHERE id = ?1", [id])
            .at(db.path)?;
        Ok(removed > 0)
    }
}
