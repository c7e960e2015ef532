//! Ephemerality: disappearing-message timers, delete for everyone, and erasure.
//!
//! A conversation's timer lives on its contact row together with the change that set it, so
//! that concurrent changes from both ends resolve the same way at both (the greater
//! `(sent_at, id)` wins, protocol §7.1). Messages carry the time they are erased at; erasure
//! deletes them in bounded batches (so that it never holds the write lock for long), and
//! [`crate::Store::checkpoint`] then moves the WAL into the database and truncates it, so that
//! no older copy of an erased page survives in the WAL. `secure_delete` (set on every
//! connection) has SQLite overwrite deleted content in the pages themselves.

use rusqlite::OptionalExtension;

use crate::err::{Error, Result, SqlResultExt};
use crate::messages;
use crate::model::{Direction, Message, MessageKind, MessageStatus, OutboxKind, UnixMillis};
use crate::outbox;
use crate::store::{Db, WriteTx, get_opt_u64, to_sql_int};

/// The change that set a conversation's timer: compared as `(sent_at, id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerStamp {
    /// When it was made, by its maker's clock (ms since the Unix epoch).
    pub sent_at: UnixMillis,
    /// Its message id: the tie-break.
    pub id: [u8; 16],
}

/// A change of a conversation's timer, ours or the peer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerChange {
    /// The conversation.
    pub contact_id: i64,
    /// When and which: see [`TimerStamp`].
    pub stamp: TimerStamp,
    /// The new timer in seconds; `None`: messages no longer disappear.
    pub timer: Option<u32>,
    /// Now: `stored_at`.
    pub now: UnixMillis,
}

/// What [`WriteTx::store_timer_change`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerStored {
    /// The conversation item, new or (for a repeated delivery) as stored before.
    pub message: Message,
    /// It was new.
    pub new: bool,
    /// It is now the conversation's setting (it was newer than the one in force).
    pub applied: bool,
}

/// Messages [`WriteTx::erase_expired`] erased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Erased {
    /// Each erased message: its conversation and its local id.
    pub messages: Vec<(i64, i64)>,
    /// Each erased group message: its group's row and its local id.
    pub group_messages: Vec<(i64, i64)>,
    /// When the next message is due to be erased, if any is.
    pub next: Option<UnixMillis>,
}

/// The earliest expiry of a message or a group message (a walk to the first entry of each
/// partial index; the aggregate skips the NULL of one that has none).
pub(crate) const SELECT_NEXT_EXPIRY: &str = "SELECT min(at) FROM \
     (SELECT min(expires_at) AS at FROM messages WHERE expires_at IS NOT NULL \
      UNION ALL SELECT min(expires_at) FROM group_messages WHERE expires_at IS NOT NULL)";

/// The `limit` (?2) messages due first by ?1, deleted; their conversations and rows.
pub(crate) const ERASE_EXPIRED: &str = "DELETE FROM messages WHERE id IN (SELECT id FROM messages \
     WHERE expires_at IS NOT NULL AND expires_at <= ?1 \
     ORDER BY expires_at, id LIMIT ?2) RETURNING contact_id, id";

/// The same for group messages: their groups' rows and their rows. (Their deliveries and
/// queued copies go with them, by the foreign keys.)
pub(crate) const ERASE_EXPIRED_GROUP: &str = "DELETE FROM group_messages WHERE id IN \
     (SELECT id FROM group_messages WHERE expires_at IS NOT NULL AND expires_at <= ?1 \
     ORDER BY expires_at, id LIMIT ?2) RETURNING group_row, id";

const SELECT_TIMER_STAMP: &str = "SELECT timer_set_at, timer_set_id FROM contacts WHERE id = ?1";

/// The change in force for a conversation, if there was one.
pub(crate) fn timer_stamp(db: Db<'_>, contact_id: i64) -> Result<Option<TimerStamp>> {
    let found = db
        .conn
        .prepare_cached(SELECT_TIMER_STAMP)
        .and_then(|mut stmt| {
            stmt.query_row([contact_id], |r| {
                Ok((get_opt_u64(r, 0)?, r.get::<_, Option<[u8; 16]>>(1)?))
            })
            .optional()
        })
        .at(db.path)?;
    match found {
        None => Err(Error::NotFound { what: "contact" }),
        Some((Some(sent_at), Some(id))) => Ok(Some(TimerStamp { sent_at, id })),
        Some(_) => Ok(None),
    }
}

/// When the next message is due to be erased.
pub(crate) fn next_expiry(db: Db<'_>) -> Result<Option<UnixMillis>> {
    db.conn
        .prepare_cached(SELECT_NEXT_EXPIRY)
        .and_then(|mut stmt| stmt.query_row([], |r| get_opt_u64(r, 0)))
        .at(db.path)
}

/// The latest time erasure ran at (0 if it never did).
pub(crate) fn erasure_high_water(db: Db<'_>) -> Result<UnixMillis> {
    db.conn
        .prepare_cached("SELECT high_water FROM erasure_clock WHERE id = 1")
        .and_then(|mut stmt| stmt.query_row([], |r| get_opt_u64(r, 0)))
        .at(db.path)
        .map(Option::unwrap_or_default)
}

impl WriteTx<'_> {
    /// Sets the conversation's timer to `change` and records it as the change in force.
    fn apply_timer(&self, change: &TimerChange) -> Result<()> {
        let db = self.db();
        let sent_at = to_sql_int(change.stamp.sent_at, "sent_at")?;
        db.conn
            .prepare_cached(
                "UPDATE contacts SET timer = ?2, timer_set_at = ?3, timer_set_id = ?4 \
                 WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(rusqlite::params![
                    change.contact_id,
                    change.timer,
                    sent_at,
                    change.stamp.id,
                ])
            })
            .at(db.path)?;
        Ok(())
    }

    /// The change in force for a conversation, if any (to make a newer one).
    pub fn timer_stamp(&self, contact_id: i64) -> Result<Option<TimerStamp>> {
        timer_stamp(self.db(), contact_id)
    }

    /// Our change of a conversation's timer: it takes effect here at once, and goes to the
    /// peer as `payload` (a conversation item of kind [`MessageKind::Timer`], queued like a
    /// chat). `change.stamp` must be newer than the change in force
    /// ([`WriteTx::timer_stamp`]): otherwise the peer would keep the older one and the ends
    /// would disagree. Fails with [`Error::Invalid`] if it is not.
    pub fn queue_timer_change(&self, change: &TimerChange, payload: &[u8]) -> Result<Message> {
        if let Some(in_force) = self.timer_stamp(change.contact_id)?
            && change.stamp <= in_force
        {
            return Err(Error::Invalid {
                what: "timer change",
                reason: "it is not newer than the change in force".to_owned(),
            });
        }
        let row =
            self.insert_timer_row(change, Direction::Outgoing)?
                .ok_or(Error::AlreadyExists {
                    what: "outgoing message with this id",
                })?;
        outbox::insert(
            self.db(),
            change.contact_id,
            OutboxKind::Chat,
            Some(row),
            payload,
            to_sql_int(change.now, "now")?,
        )?;
        self.apply_timer(change)?;
        messages::get(self.db(), row)?.ok_or(Error::NotFound { what: "message" })
    }

    /// The peer's change of a conversation's timer, stored exactly once per id; it becomes
    /// the setting only if it is newer than the change in force (so both ends settle on the
    /// same one, whatever order concurrent changes arrive in).
    pub fn store_timer_change(&self, change: &TimerChange) -> Result<TimerStored> {
        let Some(row) = self.insert_timer_row(change, Direction::Incoming)? else {
            let message = messages::by_id(
                self.db(),
                change.contact_id,
                Direction::Incoming,
                &change.stamp.id,
            )?
            .ok_or(Error::NotFound { what: "message" })?;
            return Ok(TimerStored {
                message,
                new: false,
                applied: false,
            });
        };
        let applied = self
            .timer_stamp(change.contact_id)?
            .is_none_or(|in_force| change.stamp > in_force);
        if applied {
            self.apply_timer(change)?;
        }
        let message = messages::get(self.db(), row)?.ok_or(Error::NotFound { what: "message" })?;
        Ok(TimerStored {
            message,
            new: true,
            applied,
        })
    }

    /// Inserts a timer-change row; `None` if one with its id exists already.
    fn insert_timer_row(&self, change: &TimerChange, direction: Direction) -> Result<Option<i64>> {
        let db = self.db();
        let now = to_sql_int(change.now, "now")?;
        let sent_at = to_sql_int(change.stamp.sent_at, "sent_at")?;
        let status = match direction {
            Direction::Outgoing => MessageStatus::Queued,
            Direction::Incoming => MessageStatus::Received,
        };
        let inserted = db
            .conn
            .prepare_cached(
                "INSERT INTO messages (contact_id, direction, msg_id, sent_at, stored_at, body,
                     reply_to, status, failure, client_token, status_at, kind, timer, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, '', NULL, ?6, NULL, NULL, ?5, 'timer', ?7, NULL)
                 ON CONFLICT (contact_id, direction, msg_id) DO NOTHING",
            )
            .and_then(|mut stmt| {
                stmt.execute(rusqlite::params![
                    change.contact_id,
                    direction,
                    change.stamp.id,
                    sent_at,
                    now,
                    status,
                    change.timer,
                ])
            })
            .at(db.path)
            .map_err(messages::contact_must_exist)?;
        Ok((inserted > 0).then(|| db.conn.last_insert_rowid()))
    }

    /// Deletes one of our chats for everyone: its row becomes a tombstone here (body erased),
    /// its delivery stops if it is still queued (it fails as `withdrawn`), and the withdrawal (`payload`, a
    /// [`OutboxKind::Withdraw`] item) is queued for the peer. Returns the tombstone.
    ///
    /// Fails with [`Error::NotFound`] for an unknown row and [`Error::Invalid`] for a message
    /// that is not a chat we sent.
    pub fn withdraw_outgoing(&self, row: i64, payload: &[u8], now: UnixMillis) -> Result<Message> {
        let db = self.db();
        let message = messages::get(db, row)?.ok_or(Error::NotFound { what: "message" })?;
        if message.direction != Direction::Outgoing || message.kind != MessageKind::Text {
            return Err(Error::Invalid {
                what: "message",
                reason: "only a chat we sent can be deleted for everyone".to_owned(),
            });
        }
        let undelivered = db
            .conn
            .execute(messages::DELETE_OUTBOX_OF_MESSAGE, [row])
            .at(db.path)?
            > 0;
        if undelivered {
            // It will never be delivered now; nothing waits for it.
            self.set_message_status(row, MessageStatus::Failed, Some("withdrawn"), now)?;
        }
        let tombstone = self.make_tombstone(row, now)?;
        outbox::insert(
            db,
            message.contact_id,
            OutboxKind::Withdraw,
            None,
            payload,
            to_sql_int(now, "now")?,
        )?;
        Ok(tombstone)
    }

    /// The peer deleted one of its chats for everyone: our copy becomes a tombstone. If we
    /// never had it (it is still on its way, or it expired here), the tombstone is made
    /// anyway, so that a late copy is taken for a duplicate and never stored. Returns the
    /// tombstone and whether a message was there to erase.
    pub fn withdraw_incoming(
        &self,
        contact_id: i64,
        target: &[u8; 16],
        now: UnixMillis,
    ) -> Result<(Message, bool)> {
        let db = self.db();
        if let Some(m) = messages::by_id(db, contact_id, Direction::Incoming, target)? {
            if m.kind != MessageKind::Text {
                // Already a tombstone (a repeated withdrawal), or a timer change, which is
                // not a chat and stays.
                return Ok((m, false));
            }
            return Ok((self.make_tombstone(m.row, now)?, true));
        }
        let now_sql = to_sql_int(now, "now")?;
        db.conn
            .prepare_cached(
                "INSERT INTO messages (contact_id, direction, msg_id, sent_at, stored_at, body,
                     reply_to, status, failure, client_token, status_at, kind, timer, expires_at)
                 VALUES (?1, 'incoming', ?2, ?3, ?3, '', NULL, 'received', NULL, NULL, ?3,
                     'deleted', NULL, NULL)",
            )
            .and_then(|mut stmt| stmt.execute(rusqlite::params![contact_id, target, now_sql]))
            .at(db.path)?;
        let row = db.conn.last_insert_rowid();
        let m = messages::get(db, row)?.ok_or(Error::NotFound { what: "message" })?;
        Ok((m, false))
    }

    /// Erases a message's content in place, keeping its place in the history.
    fn make_tombstone(&self, row: i64, now: UnixMillis) -> Result<Message> {
        let db = self.db();
        let now_sql = to_sql_int(now, "now")?;
        db.conn
            .prepare_cached(
                "UPDATE messages SET kind = 'deleted', body = '', reply_to = NULL, \
                 status_at = ?2 WHERE id = ?1",
            )
            .and_then(|mut stmt| stmt.execute(rusqlite::params![row, now_sql]))
            .at(db.path)?;
        messages::get(db, row)?.ok_or(Error::NotFound { what: "message" })
    }

    /// Erases (deletes, with their outbox items) at most `limit` messages due by `up_to`,
    /// oldest due first, and records `up_to` as the time erasure last ran at. Call
    /// [`crate::Store::checkpoint`] after a run of these.
    pub fn erase_expired(&self, up_to: UnixMillis, limit: u32) -> Result<Erased> {
        let db = self.db();
        let up_to_sql = to_sql_int(up_to, "up_to")?;
        let messages: Vec<(i64, i64)> = db
            .conn
            .prepare_cached(ERASE_EXPIRED)
            .and_then(|mut stmt| {
                stmt.query_map(rusqlite::params![up_to_sql, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .at(db.path)?;
        let room = limit.saturating_sub(u32::try_from(messages.len()).unwrap_or(limit));
        let group_messages: Vec<(i64, i64)> = if room == 0 {
            Vec::new()
        } else {
            db.conn
                .prepare_cached(ERASE_EXPIRED_GROUP)
                .and_then(|mut stmt| {
                    stmt.query_map(rusqlite::params![up_to_sql, room], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .at(db.path)?
        };
        db.conn
            .prepare_cached(
                "UPDATE erasure_clock SET high_water = max(high_water, ?1) WHERE id = 1",
            )
            .and_then(|mut stmt| stmt.execute([up_to_sql]))
            .at(db.path)?;
        let next = next_expiry(db)?;
        Ok(Erased {
            messages,
            group_messages,
            next,
        })
    }
}
