//! Messages: queueing outgoing ones, storing incoming ones exactly once, delivery state and
//! history pages.

use rusqlite::{OptionalExtension, Row};

use crate::err::{Error, Result, SqlResultExt};
use crate::model::{
    Direction, Message, MessageStatus, NewIncoming, NewOutgoing, OutboxKind, Queued, Received,
    UnixMillis,
};
use crate::outbox;
use crate::store::{Db, WriteTx, get_opt_u64, get_u64, to_sql_int};

/// The columns [`from_row`] reads, each prefixed with `$prefix` (a table alias and a dot, or
/// nothing).
macro_rules! message_columns {
    ($prefix:literal) => {
        concat!(
            $prefix,
            "id, ",
            $prefix,
            "contact_id, ",
            $prefix,
            "direction, ",
            $prefix,
            "msg_id, ",
            $prefix,
            "sent_at, ",
            $prefix,
            "stored_at, ",
            $prefix,
            "body, ",
            $prefix,
            "reply_to, ",
            $prefix,
            "status, ",
            $prefix,
            "failure, ",
            $prefix,
            "client_token, ",
            $prefix,
            "status_at, ",
            $prefix,
            "kind, ",
            $prefix,
            "timer, ",
            $prefix,
            "expires_at"
        )
    };
}

pub(crate) const SELECT_BY_ROW: &str = concat!(
    "SELECT ",
    message_columns!(""),
    " FROM messages WHERE id = ?1"
);

pub(crate) const SELECT_BY_ID: &str = concat!(
    "SELECT ",
    message_columns!(""),
    " FROM messages WHERE contact_id = ?1 AND direction = ?2 AND msg_id = ?3"
);

pub(crate) const SELECT_BY_CLIENT_TOKEN: &str = concat!(
    "SELECT ",
    message_columns!(""),
    " FROM messages WHERE contact_id = ?1 AND client_token = ?2"
);

/// A range scan of messages_history (contact_id, id), backwards from the cursor.
pub(crate) const SELECT_HISTORY: &str = concat!(
    "SELECT ",
    message_columns!(""),
    " FROM messages WHERE contact_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
);

const UPDATE_STATUS: &str = concat!(
    "UPDATE messages SET status = ?2, failure = ?3, status_at = ?4 WHERE id = ?1 RETURNING ",
    message_columns!("")
);

pub(crate) const MARK_DELIVERED: &str = concat!(
    "UPDATE messages SET status = 'delivered', failure = ?4, status_at = ?3 \
     WHERE contact_id = ?1 AND direction = 'outgoing' AND msg_id = ?2 \
     AND status IN ('queued', 'sent') RETURNING ",
    message_columns!("")
);

/// An outgoing message the peer refused for good: failed, with the peer's reason.
pub(crate) const MARK_REJECTED: &str = concat!(
    "UPDATE messages SET status = 'failed', failure = ?4, status_at = ?3 \
     WHERE contact_id = ?1 AND direction = 'outgoing' AND msg_id = ?2 \
     AND status IN ('queued', 'sent') RETURNING ",
    message_columns!("")
);

pub(crate) const DELETE_OUTBOX_OF_MESSAGE: &str = "DELETE FROM outbox WHERE message_id = ?1";

pub(crate) fn from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<Message> {
    Ok(Message {
        row: row.get(first)?,
        contact_id: row.get(first + 1)?,
        direction: row.get(first + 2)?,
        msg_id: row.get(first + 3)?,
        sent_at: get_u64(row, first + 4)?,
        stored_at: get_u64(row, first + 5)?,
        body: row.get(first + 6)?,
        reply_to: row.get(first + 7)?,
        status: row.get(first + 8)?,
        failure: row.get(first + 9)?,
        client_token: row.get(first + 10)?,
        status_at: get_u64(row, first + 11)?,
        kind: row.get(first + 12)?,
        timer: row.get(first + 13)?,
        expires_at: get_opt_u64(row, first + 14)?,
    })
}

pub(crate) fn get(db: Db<'_>, row: i64) -> Result<Option<Message>> {
    db.conn
        .prepare_cached(SELECT_BY_ROW)
        .and_then(|mut stmt| stmt.query_row([row], |r| from_row(r, 0)).optional())
        .at(db.path)
}

pub(crate) fn by_id(
    db: Db<'_>,
    contact_id: i64,
    direction: Direction,
    msg_id: &[u8; 16],
) -> Result<Option<Message>> {
    db.conn
        .prepare_cached(SELECT_BY_ID)
        .and_then(|mut stmt| {
            stmt.query_row(rusqlite::params![contact_id, direction, msg_id], |r| {
                from_row(r, 0)
            })
            .optional()
        })
        .at(db.path)
}

fn by_client_token(db: Db<'_>, contact_id: i64, token: &str) -> Result<Option<Message>> {
    db.conn
        .prepare_cached(SELECT_BY_CLIENT_TOKEN)
        .and_then(|mut stmt| {
            stmt.query_row(rusqlite::params![contact_id, token], |r| from_row(r, 0))
                .optional()
        })
        .at(db.path)
}

pub(crate) fn history(
    db: Db<'_>,
    contact_id: i64,
    before_row: Option<i64>,
    limit: u32,
) -> Result<Vec<Message>> {
    db.conn
        .prepare_cached(SELECT_HISTORY)
        .and_then(|mut stmt| {
            stmt.query_map(
                rusqlite::params![contact_id, before_row.unwrap_or(i64::MAX), limit],
                |r| from_row(r, 0),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .at(db.path)
}

/// Names the missing contact when an insert's foreign key fails.
pub(crate) fn contact_must_exist(error: Error) -> Error {
    if error.is_missing_reference() {
        Error::NotFound { what: "contact" }
    } else {
        error
    }
}

impl WriteTx<'_> {
    /// Stores an outgoing message as [`MessageStatus::Queued`] together with its outbox item
    /// ([`OutboxKind::Chat`], due at `now`).
    ///
    /// Idempotent on (`contact_id`, `client_token`): if a message with the same token was
    /// queued before, returns it as [`Queued::Existing`] and stores nothing, so a retried API
    /// call cannot send twice. Fails with [`Error::NotFound`] for an unknown contact and
    /// [`Error::AlreadyExists`] if the message id was used before in this conversation.
    pub fn queue_outgoing(&self, new: &NewOutgoing) -> Result<Queued> {
        let db = self.db();
        if let Some(token) = &new.client_token
            && let Some(existing) = by_client_token(db, new.contact_id, token)?
        {
            return Ok(Queued::Existing(existing));
        }
        let now = to_sql_int(new.now, "now")?;
        let sent_at = to_sql_int(new.sent_at, "sent_at")?;
        let expires_at_sql = new
            .expires_at()
            .map(|t| to_sql_int(t, "expires_at"))
            .transpose()?;
        let row = db
            .conn
            .prepare_cached(
                "INSERT INTO messages (contact_id, direction, msg_id, sent_at, stored_at, body,
                     reply_to, status, failure, client_token, status_at, kind, timer, expires_at)
                 VALUES (?1, 'outgoing', ?2, ?3, ?4, ?5, ?6, 'queued', NULL, ?7, ?4, 'text',
                     ?8, ?9)",
            )
            .and_then(|mut stmt| {
                stmt.insert(rusqlite::params![
                    new.contact_id,
                    new.msg_id,
                    sent_at,
                    now,
                    new.body,
                    new.reply_to,
                    new.client_token,
                    new.expires_after,
                    expires_at_sql,
                ])
            })
            .at(db.path)
            .map_err(|e| {
                if e.is_unique_conflict() {
                    Error::AlreadyExists {
                        what: "outgoing message with this id",
                    }
                } else {
                    contact_must_exist(e)
                }
            })?;
        outbox::insert(
            db,
            new.contact_id,
            OutboxKind::Chat,
            Some(row),
            &new.payload,
            now,
        )?;
        Ok(Queued::New(new.message(row)))
    }

    /// Stores an incoming message exactly once per (sender, message id).
    ///
    /// A replayed or retried delivery returns the stored copy as [`Received::Duplicate`] and
    /// writes nothing; acknowledge it to the peer again. Fails with [`Error::NotFound`] for an
    /// unknown contact.
    pub fn store_incoming(&self, new: &NewIncoming) -> Result<Received> {
        let db = self.db();
        let now = to_sql_int(new.now, "now")?;
        let sent_at = to_sql_int(new.sent_at, "sent_at")?;
        let expires_at_sql = new
            .expires_at()
            .map(|t| to_sql_int(t, "expires_at"))
            .transpose()?;
        // The UNIQUE index messages_exactly_once decides; DO NOTHING leaves other constraint
        // failures (an unknown contact) as errors.
        let inserted = db
            .conn
            .prepare_cached(
                "INSERT INTO messages (contact_id, direction, msg_id, sent_at, stored_at, body,
                     reply_to, status, failure, client_token, status_at, kind, timer, expires_at)
                 VALUES (?1, 'incoming', ?2, ?3, ?4, ?5, ?6, 'received', NULL, NULL, ?4, 'text',
                     ?7, ?8)
                 ON CONFLICT (contact_id, direction, msg_id) DO NOTHING",
            )
            .and_then(|mut stmt| {
                stmt.execute(rusqlite::params![
                    new.contact_id,
                    new.msg_id,
                    sent_at,
                    now,
                    new.body,
                    new.reply_to,
                    new.expires_after,
                    expires_at_sql,
                ])
            })
            .at(db.path)
            .map_err(contact_must_exist)?;
        if inserted == 0 {
            let stored = by_id(db, new.contact_id, Direction::Incoming, &new.msg_id)?
                .ok_or(Error::NotFound { what: "message" })?;
            return Ok(Received::Duplicate(stored));
        }
        Ok(Received::New(new.message(db.conn.last_insert_rowid())))
    }

    /// Sets a message's delivery status (and failure reason, kept only for
    /// [`MessageStatus::Failed`]) and returns the updated message. Leaves the outbox alone.
    ///
    /// Fails with [`Error::NotFound`] for an unknown row and [`Error::Invalid`] for a status
    /// that does not fit the message's direction.
    pub fn set_message_status(
        &self,
        row: i64,
        status: MessageStatus,
        failure: Option<&str>,
        now: UnixMillis,
    ) -> Result<Message> {
        let db = self.db();
        let now = to_sql_int(now, "now")?;
        let current = get(db, row)?.ok_or(Error::NotFound { what: "message" })?;
        if !status.fits(current.direction) {
            return Err(Error::Invalid {
                what: "message status",
                reason: format!(
                    "{status} does not apply to an {} message",
                    current.direction
                ),
            });
        }
        let failure = if status == MessageStatus::Failed {
            failure
        } else {
            None
        };
        db.conn
            .prepare_cached(UPDATE_STATUS)
            .and_then(|mut stmt| {
                stmt.query_row(rusqlite::params![row, status, failure, now], |r| {
                    from_row(r, 0)
                })
            })
            .at(db.path)
    }

    /// Marks the outgoing messages with these ids in this conversation as delivered and
    /// removes their outbox items. Only messages still [`MessageStatus::Queued`] or
    /// [`MessageStatus::Sent`] change; returns those, in the order of `msg_ids`. Unknown ids
    /// and repeated acknowledgements are ignored.
    pub fn mark_delivered(
        &self,
        contact_id: i64,
        msg_ids: &[[u8; 16]],
        now: UnixMillis,
    ) -> Result<Vec<Message>> {
        self.settle_outgoing(MARK_DELIVERED, contact_id, msg_ids, None, now)
    }

    /// Marks outgoing messages to `contact_id` with these protocol ids `failed` with
    /// `failure` (the peer refused them for good: a negative acknowledgement) and removes
    /// their outbox items; returns the messages that changed. Delivered ones stay delivered.
    pub fn mark_rejected(
        &self,
        contact_id: i64,
        msg_ids: &[[u8; 16]],
        failure: &str,
        now: UnixMillis,
    ) -> Result<Vec<Message>> {
        self.settle_outgoing(MARK_REJECTED, contact_id, msg_ids, Some(failure), now)
    }

    /// Runs `update` (?1 contact, ?2 msg id, ?3 now, ?4 failure) for each id, and removes the
    /// outbox item of each message it changed.
    fn settle_outgoing(
        &self,
        update: &str,
        contact_id: i64,
        msg_ids: &[[u8; 16]],
        failure: Option<&str>,
        now: UnixMillis,
    ) -> Result<Vec<Message>> {
        let db = self.db();
        let now = to_sql_int(now, "now")?;
        let mut changed = Vec::new();
        let mut update = db.conn.prepare_cached(update).at(db.path)?;
        let mut remove = db
            .conn
            .prepare_cached(DELETE_OUTBOX_OF_MESSAGE)
            .at(db.path)?;
        for msg_id in msg_ids {
            let updated = update
                .query_row(rusqlite::params![contact_id, msg_id, now, failure], |r| {
                    from_row(r, 0)
                })
                .optional()
                .at(db.path)?;
            if let Some(message) = updated {
                remove.execute([message.row]).at(db.path)?;
                changed.push(message);
            }
        }
        Ok(changed)
    }

    /// Deletes a message (and its outbox item); returns whether it existed.
    pub fn delete_message(&self, row: i64) -> Result<bool> {
        let db = self.db();
        let removed = db
            .conn
            .execute("DELETE FROM messages WHERE id = ?1", [row])
            .at(db.path)?;
        Ok(removed > 0)
    }
}
