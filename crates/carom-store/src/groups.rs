//! Groups: each group's history of signed operations (kept as received, in the order added),
//! its messages, and how far each outgoing message got to each recipient.
//!
//! The store keeps operations as opaque bytes: what they mean, and whether they verify, is
//! `carom-group`'s business (the engine verifies everything before it writes it here, and again
//! when it reads it back at start).

use rusqlite::{OptionalExtension, Row};

use crate::err::{Error, Result, SqlResultExt};
use crate::model::{
    DeliveryStatus, Direction, GroupState, MessageKind, OutboxKind, UnixMillis, expiry,
};
use crate::outbox;
use crate::store::{Db, WriteTx, get_u64, to_sql_int};

/// A group this profile holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// Local row id.
    pub row: i64,
    /// The group's id (protocol §15).
    pub group_id: [u8; 16],
    /// Where we stand.
    pub state: GroupState,
    /// When the row was made.
    pub created_at: UnixMillis,
    /// When `state` last changed.
    pub updated_at: UnixMillis,
    /// Whether its messages are stored (`false`: history off, they live in memory only).
    pub keep_history: bool,
}

/// One operation of a group's history, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOperation {
    /// Its id (SHA3-256 of the body).
    pub op_id: [u8; 32],
    /// The body's bytes, exactly as signed.
    pub body: Vec<u8>,
    /// The author's signature.
    pub signature: [u8; 64],
}

/// A group message, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMessage {
    /// Local row id.
    pub row: i64,
    /// The group's row.
    pub group_row: i64,
    /// Who sent it (identity key; ourselves for outgoing ones).
    pub sender: [u8; 32],
    /// Which way it went.
    pub direction: Direction,
    /// The sender's id for it.
    pub msg_id: [u8; 16],
    /// The heads it was sent at (their membership is its set of ends).
    pub heads: Vec<[u8; 32]>,
    /// When the sender wrote it (sender's clock).
    pub sent_at: UnixMillis,
    /// When it was stored here.
    pub stored_at: UnixMillis,
    /// The text.
    pub body: String,
    /// The group message it answers.
    pub reply_to: Option<[u8; 16]>,
    /// The API client's idempotency token (outgoing only).
    pub client_token: Option<String>,
    /// The group's disappearing-message timer it was sent under (seconds).
    pub timer: Option<u32>,
    /// When erasure deletes it (ms, the engine's erasure clock); `None`: never by itself.
    pub expires_at: Option<UnixMillis>,
    /// A message, or a tombstone ([`MessageKind::Deleted`]: deleted for everyone).
    pub kind: MessageKind,
}

/// How far an outgoing group message got to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDelivery {
    /// The recipient's identity key.
    pub recipient: [u8; 32],
    /// Its status.
    pub status: DeliveryStatus,
    /// Why it failed, for [`DeliveryStatus::Failed`].
    pub failure: Option<String>,
    /// When the status last changed.
    pub status_at: UnixMillis,
}

/// An outgoing group message to queue.
#[derive(Debug, Clone)]
pub struct NewGroupChat {
    /// The group's row.
    pub group_row: i64,
    /// Our identity key.
    pub sender: [u8; 32],
    /// The message id (the same for every recipient).
    pub msg_id: [u8; 16],
    /// The heads it is sent at.
    pub heads: Vec<[u8; 32]>,
    /// When we wrote it.
    pub sent_at: UnixMillis,
    /// The text.
    pub body: String,
    /// The group message it answers.
    pub reply_to: Option<[u8; 16]>,
    /// The API client's idempotency token.
    pub client_token: Option<String>,
    /// Every recipient: its contact row (whose outbox carries it) and identity key.
    pub recipients: Vec<(i64, [u8; 32])>,
    /// Members it cannot be sent to, and why: their deliveries are recorded as failed.
    pub unreachable: Vec<([u8; 32], String)>,
    /// The encoded wire message, the same for every recipient.
    pub payload: Vec<u8>,
    /// Now.
    pub now: UnixMillis,
    /// The group's disappearing-message timer (seconds), as the payload carries it.
    pub expires_after: Option<u32>,
    /// The time the timer runs from (the erasure clock now); `None`: `now`.
    pub expires_from: Option<UnixMillis>,
}

/// An incoming group message to store.
#[derive(Debug, Clone)]
pub struct NewGroupIncoming {
    /// The group's row.
    pub group_row: i64,
    /// The sender (the session's verified identity).
    pub sender: [u8; 32],
    /// Its id.
    pub msg_id: [u8; 16],
    /// Its heads.
    pub heads: Vec<[u8; 32]>,
    /// When the sender wrote it.
    pub sent_at: UnixMillis,
    /// The text.
    pub body: String,
    /// The group message it answers.
    pub reply_to: Option<[u8; 16]>,
    /// Now.
    pub now: UnixMillis,
    /// The timer it was sent under (seconds): erased that long after it is stored.
    pub expires_after: Option<u32>,
    /// The time the timer runs from (the erasure clock now); `None`: `now`.
    pub expires_from: Option<UnixMillis>,
}

impl NewGroupChat {
    /// When it is erased, if it has a timer.
    pub fn expires_at(&self) -> Option<UnixMillis> {
        expiry(self.expires_from.unwrap_or(self.now), self.expires_after)
    }

    /// The message it becomes once queued with local id `row`.
    pub fn message(&self, row: i64) -> GroupMessage {
        GroupMessage {
            row,
            group_row: self.group_row,
            sender: self.sender,
            direction: Direction::Outgoing,
            msg_id: self.msg_id,
            heads: self.heads.clone(),
            sent_at: self.sent_at,
            stored_at: self.now,
            body: self.body.clone(),
            reply_to: self.reply_to,
            client_token: self.client_token.clone(),
            timer: self.expires_after,
            expires_at: self.expires_at(),
            kind: MessageKind::Text,
        }
    }

    /// Its deliveries when it is queued: queued to each recipient, failed to each member it
    /// cannot be sent to.
    pub fn deliveries(&self) -> Vec<GroupDelivery> {
        let queued = self.recipients.iter().map(|(_, recipient)| GroupDelivery {
            recipient: *recipient,
            status: DeliveryStatus::Queued,
            failure: None,
            status_at: self.now,
        });
        let failed = self
            .unreachable
            .iter()
            .map(|(recipient, why)| GroupDelivery {
                recipient: *recipient,
                status: DeliveryStatus::Failed,
                failure: Some(why.clone()),
                status_at: self.now,
            });
        failed.chain(queued).collect()
    }
}

impl NewGroupIncoming {
    /// What stands in for a message `sender` withdrew before it arrived (at `heads`, our heads
    /// now): kept and then made a tombstone, so that the late copy is a duplicate.
    pub fn placeholder(
        group_row: i64,
        sender: [u8; 32],
        msg_id: [u8; 16],
        heads: Vec<[u8; 32]>,
        now: UnixMillis,
    ) -> NewGroupIncoming {
        NewGroupIncoming {
            group_row,
            sender,
            msg_id,
            heads,
            sent_at: now,
            body: String::new(),
            reply_to: None,
            now,
            expires_after: None,
            expires_from: None,
        }
    }

    /// When it is erased, if it has a timer.
    pub fn expires_at(&self) -> Option<UnixMillis> {
        expiry(self.expires_from.unwrap_or(self.now), self.expires_after)
    }

    /// The message it becomes once kept with local id `row`.
    pub fn message(&self, row: i64) -> GroupMessage {
        GroupMessage {
            row,
            group_row: self.group_row,
            sender: self.sender,
            direction: Direction::Incoming,
            msg_id: self.msg_id,
            heads: self.heads.clone(),
            sent_at: self.sent_at,
            stored_at: self.now,
            body: self.body.clone(),
            reply_to: self.reply_to,
            client_token: None,
            timer: self.expires_after,
            expires_at: self.expires_at(),
            kind: MessageKind::Text,
        }
    }
}

/// The outcome of [`WriteTx::queue_group_chat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupQueued {
    /// Stored now.
    New(GroupMessage),
    /// A message with the same client token was queued before: nothing was stored.
    Existing(GroupMessage),
}

/// The outcome of [`WriteTx::store_group_incoming`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupReceived {
    /// Stored now.
    New(GroupMessage),
    /// Stored before (a retry or replay): acknowledge it again.
    Duplicate(GroupMessage),
}

macro_rules! group_columns {
    () => {
        "id, group_id, state, created_at, updated_at, keep_history"
    };
}

macro_rules! group_message_columns {
    () => {
        "id, group_row, sender, direction, msg_id, heads, sent_at, stored_at, body, reply_to, \
         client_token, timer, expires_at, kind"
    };
}

pub(crate) const SELECT_GROUPS: &str =
    concat!("SELECT ", group_columns!(), " FROM groups ORDER BY id");
pub(crate) const SELECT_BY_GROUP_ID: &str = concat!(
    "SELECT ",
    group_columns!(),
    " FROM groups WHERE group_id = ?1"
);
pub(crate) const SELECT_BY_ROW: &str =
    concat!("SELECT ", group_columns!(), " FROM groups WHERE id = ?1");
pub(crate) const SELECT_OPERATIONS: &str =
    "SELECT op_id, body, signature FROM group_ops WHERE group_row = ?1 ORDER BY seq";
pub(crate) const SELECT_MESSAGE_BY_ROW: &str = concat!(
    "SELECT ",
    group_message_columns!(),
    " FROM group_messages WHERE id = ?1"
);
pub(crate) const SELECT_HISTORY: &str = concat!(
    "SELECT ",
    group_message_columns!(),
    " FROM group_messages WHERE group_row = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
);
pub(crate) const SELECT_BY_SENDER_ID: &str = concat!(
    "SELECT ",
    group_message_columns!(),
    " FROM group_messages WHERE group_row = ?1 AND sender = ?2 AND msg_id = ?3"
);
pub(crate) const SELECT_BY_CLIENT_TOKEN: &str = concat!(
    "SELECT ",
    group_message_columns!(),
    " FROM group_messages WHERE group_row = ?1 AND client_token = ?2"
);
pub(crate) const SELECT_DELIVERIES: &str = "SELECT recipient, status, failure, status_at \
     FROM group_deliveries WHERE message_row = ?1 ORDER BY recipient";
pub(crate) const SET_DELIVERY: &str = "UPDATE group_deliveries \
     SET status = ?3, failure = ?4, status_at = ?5 \
     WHERE message_row = ?1 AND recipient = ?2 AND status = 'queued'";

fn group_from_row(row: &Row<'_>) -> rusqlite::Result<GroupRecord> {
    Ok(GroupRecord {
        row: row.get(0)?,
        group_id: row.get(1)?,
        state: row.get(2)?,
        created_at: get_u64(row, 3)?,
        updated_at: get_u64(row, 4)?,
        keep_history: row.get(5)?,
    })
}

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<GroupMessage> {
    let heads: Vec<u8> = row.get(5)?;
    Ok(GroupMessage {
        row: row.get(0)?,
        group_row: row.get(1)?,
        sender: row.get(2)?,
        direction: row.get(3)?,
        msg_id: row.get(4)?,
        heads: heads
            .chunks_exact(32)
            .map(|h| h.try_into().unwrap_or([0; 32]))
            .collect(),
        sent_at: get_u64(row, 6)?,
        stored_at: get_u64(row, 7)?,
        body: row.get(8)?,
        reply_to: row.get(9)?,
        client_token: row.get(10)?,
        timer: row.get(11)?,
        expires_at: crate::store::get_opt_u64(row, 12)?,
        kind: row.get(13)?,
    })
}

/// Erase a group message's content in place, keeping its place in the history.
fn tombstone(db: Db<'_>, row: i64) -> Result<()> {
    db.conn
        .prepare_cached(
            "UPDATE group_messages SET kind = 'deleted', body = '', reply_to = NULL, \
             timer = NULL, expires_at = NULL WHERE id = ?1",
        )
        .and_then(|mut stmt| stmt.execute([row]))
        .at(db.path)?;
    Ok(())
}

fn heads_blob(heads: &[[u8; 32]]) -> Result<Vec<u8>> {
    if heads.is_empty() {
        return Err(Error::Invalid {
            what: "group message heads",
            reason: "a group message names at least one head".into(),
        });
    }
    Ok(heads.concat())
}

pub(crate) fn all(db: Db<'_>) -> Result<Vec<GroupRecord>> {
    db.conn
        .prepare_cached(SELECT_GROUPS)
        .and_then(|mut stmt| {
            stmt.query_map([], group_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .at(db.path)
}

pub(crate) fn by_group_id(db: Db<'_>, group_id: &[u8; 16]) -> Result<Option<GroupRecord>> {
    db.conn
        .prepare_cached(SELECT_BY_GROUP_ID)
        .and_then(|mut stmt| stmt.query_row([group_id], group_from_row).optional())
        .at(db.path)
}

pub(crate) fn by_row(db: Db<'_>, row: i64) -> Result<Option<GroupRecord>> {
    db.conn
        .prepare_cached(SELECT_BY_ROW)
        .and_then(|mut stmt| stmt.query_row([row], group_from_row).optional())
        .at(db.path)
}

pub(crate) fn operations(db: Db<'_>, group_row: i64) -> Result<Vec<StoredOperation>> {
    db.conn
        .prepare_cached(SELECT_OPERATIONS)
        .and_then(|mut stmt| {
            stmt.query_map([group_row], |row| {
                Ok(StoredOperation {
                    op_id: row.get(0)?,
                    body: row.get(1)?,
                    signature: row.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .at(db.path)
}

pub(crate) fn message(db: Db<'_>, row: i64) -> Result<Option<GroupMessage>> {
    db.conn
        .prepare_cached(SELECT_MESSAGE_BY_ROW)
        .and_then(|mut stmt| stmt.query_row([row], message_from_row).optional())
        .at(db.path)
}

pub(crate) fn history(
    db: Db<'_>,
    group_row: i64,
    before_row: Option<i64>,
    limit: u32,
) -> Result<Vec<GroupMessage>> {
    db.conn
        .prepare_cached(SELECT_HISTORY)
        .and_then(|mut stmt| {
            stmt.query_map(
                rusqlite::params![group_row, before_row.unwrap_or(i64::MAX), limit],
                message_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .at(db.path)
}

pub(crate) fn deliveries(db: Db<'_>, message_row: i64) -> Result<Vec<GroupDelivery>> {
    db.conn
        .prepare_cached(SELECT_DELIVERIES)
        .and_then(|mut stmt| {
            stmt.query_map([message_row], |row| {
                Ok(GroupDelivery {
                    recipient: row.get(0)?,
                    status: row.get(1)?,
                    failure: row.get(2)?,
                    status_at: get_u64(row, 3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .at(db.path)
}

pub(crate) fn by_sender_id(
    db: Db<'_>,
    group_row: i64,
    sender: &[u8; 32],
    msg_id: &[u8; 16],
) -> Result<Option<GroupMessage>> {
    db.conn
        .prepare_cached(SELECT_BY_SENDER_ID)
        .and_then(|mut stmt| {
            stmt.query_row(
                rusqlite::params![group_row, sender, msg_id],
                message_from_row,
            )
            .optional()
        })
        .at(db.path)
}

fn by_client_token(db: Db<'_>, group_row: i64, token: &str) -> Result<Option<GroupMessage>> {
    db.conn
        .prepare_cached(SELECT_BY_CLIENT_TOKEN)
        .and_then(|mut stmt| {
            stmt.query_row(rusqlite::params![group_row, token], message_from_row)
                .optional()
        })
        .at(db.path)
}

fn group_must_exist(error: Error) -> Error {
    if error.is_missing_reference() {
        Error::NotFound { what: "group" }
    } else {
        error
    }
}

impl WriteTx<'_> {
    /// Records a group this profile now holds. Fails with [`Error::AlreadyExists`] if it holds
    /// it already.
    pub fn insert_group(
        &self,
        group_id: &[u8; 16],
        state: GroupState,
        now: UnixMillis,
    ) -> Result<GroupRecord> {
        let db = self.db();
        let at = to_sql_int(now, "now")?;
        db.conn
            .prepare_cached(
                "INSERT INTO groups (group_id, state, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?3)",
            )
            .and_then(|mut stmt| stmt.insert(rusqlite::params![group_id, state, at]))
            .at(db.path)
            .map_err(|e| {
                if e.is_unique_conflict() {
                    Error::AlreadyExists { what: "group" }
                } else {
                    e
                }
            })
            .map(|row| GroupRecord {
                row,
                group_id: *group_id,
                state,
                created_at: now,
                updated_at: now,
                keep_history: true,
            })
    }

    /// Keep the group's messages in the store (`true`), or in memory only from now on
    /// (`false`). Messages stored before stay until deleted or expired.
    pub fn set_group_keep_history(&self, row: i64, keep: bool, now: UnixMillis) -> Result<()> {
        let db = self.db();
        let now = to_sql_int(now, "now")?;
        let changed = db
            .conn
            .prepare_cached("UPDATE groups SET keep_history = ?2, updated_at = ?3 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute(rusqlite::params![row, keep, now]))
            .at(db.path)?;
        if changed == 0 {
            return Err(Error::NotFound { what: "group" });
        }
        Ok(())
    }

    /// Sets where this profile stands in a group. Fails with [`Error::NotFound`] for an unknown
    /// row.
    pub fn set_group_state(&self, row: i64, state: GroupState, now: UnixMillis) -> Result<()> {
        let db = self.db();
        let now = to_sql_int(now, "now")?;
        let changed = db
            .conn
            .prepare_cached("UPDATE groups SET state = ?2, updated_at = ?3 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute(rusqlite::params![row, state, now]))
            .at(db.path)?;
        if changed == 0 {
            return Err(Error::NotFound { what: "group" });
        }
        Ok(())
    }

    /// Appends operations to a group's history, after those it holds, skipping any it holds
    /// already. Returns how many were new.
    pub fn add_group_operations(&self, group_row: i64, ops: &[StoredOperation]) -> Result<u64> {
        let db = self.db();
        let mut added = 0;
        for op in ops {
            let inserted = db
                .conn
                .prepare_cached(
                    "INSERT INTO group_ops (group_row, seq, op_id, body, signature)
                     VALUES (?1,
                             (SELECT coalesce(max(seq), 0) + 1 FROM group_ops WHERE group_row = ?1),
                             ?2, ?3, ?4)
                     ON CONFLICT (group_row, op_id) DO NOTHING",
                )
                .and_then(|mut stmt| {
                    stmt.execute(rusqlite::params![
                        group_row,
                        op.op_id,
                        op.body,
                        op.signature
                    ])
                })
                .at(db.path)
                .map_err(group_must_exist)?;
            added += inserted as u64;
        }
        Ok(added)
    }

    /// Stores an outgoing group message, one delivery row per recipient (queued), and one
    /// outbox item per recipient carrying `payload`.
    ///
    /// Idempotent on (group, `client_token`), like [`WriteTx::queue_outgoing`].
    pub fn queue_group_chat(&self, new: &NewGroupChat) -> Result<GroupQueued> {
        let db = self.db();
        if let Some(token) = &new.client_token
            && let Some(existing) = by_client_token(db, new.group_row, token)?
        {
            return Ok(GroupQueued::Existing(existing));
        }
        let now = to_sql_int(new.now, "now")?;
        let sent_at = to_sql_int(new.sent_at, "sent_at")?;
        let heads = heads_blob(&new.heads)?;
        let expires_sql = new
            .expires_at()
            .map(|t| to_sql_int(t, "expires_at"))
            .transpose()?;
        let row = db
            .conn
            .prepare_cached(
                "INSERT INTO group_messages (group_row, sender, direction, msg_id, heads, sent_at,
                     stored_at, body, reply_to, client_token, timer, expires_at)
                 VALUES (?1, ?2, 'outgoing', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut stmt| {
                stmt.insert(rusqlite::params![
                    new.group_row,
                    new.sender,
                    new.msg_id,
                    heads,
                    sent_at,
                    now,
                    new.body,
                    new.reply_to,
                    new.client_token,
                    new.expires_after,
                    expires_sql,
                ])
            })
            .at(db.path)
            .map_err(|e| {
                if e.is_unique_conflict() {
                    Error::AlreadyExists {
                        what: "group message with this id",
                    }
                } else {
                    group_must_exist(e)
                }
            })?;
        for (identity, why) in &new.unreachable {
            db.conn
                .prepare_cached(
                    "INSERT INTO group_deliveries (message_row, recipient, status, failure,
                         status_at)
                     VALUES (?1, ?2, 'failed', ?3, ?4)",
                )
                .and_then(|mut stmt| stmt.execute(rusqlite::params![row, identity, why, now]))
                .at(db.path)?;
        }
        for (contact_id, identity) in &new.recipients {
            db.conn
                .prepare_cached(
                    "INSERT INTO group_deliveries (message_row, recipient, status, failure,
                         status_at)
                     VALUES (?1, ?2, 'queued', NULL, ?3)",
                )
                .and_then(|mut stmt| stmt.execute(rusqlite::params![row, identity, now]))
                .at(db.path)?;
            outbox::insert_group(
                db,
                *contact_id,
                OutboxKind::GroupChat,
                Some(row),
                &new.payload,
                now,
            )?;
        }
        Ok(GroupQueued::New(new.message(row)))
    }

    /// Queues a group-operations message (`payload`) for a contact. Returns the outbox id.
    pub fn queue_group_operations(
        &self,
        contact_id: i64,
        payload: &[u8],
        now: UnixMillis,
    ) -> Result<i64> {
        let now = to_sql_int(now, "now")?;
        outbox::insert_group(
            self.db(),
            contact_id,
            OutboxKind::GroupOperations,
            None,
            payload,
            now,
        )
    }

    /// Stores an incoming group message exactly once per (group, sender, id).
    pub fn store_group_incoming(&self, new: &NewGroupIncoming) -> Result<GroupReceived> {
        let db = self.db();
        let now = to_sql_int(new.now, "now")?;
        let sent_at = to_sql_int(new.sent_at, "sent_at")?;
        let heads = heads_blob(&new.heads)?;
        let expires_sql = new
            .expires_at()
            .map(|t| to_sql_int(t, "expires_at"))
            .transpose()?;
        let inserted = db
            .conn
            .prepare_cached(
                "INSERT INTO group_messages (group_row, sender, direction, msg_id, heads, sent_at,
                     stored_at, body, reply_to, client_token, timer, expires_at)
                 VALUES (?1, ?2, 'incoming', ?3, ?4, ?5, ?6, ?7, ?8, NULL, ?9, ?10)
                 ON CONFLICT (group_row, sender, msg_id) DO NOTHING",
            )
            .and_then(|mut stmt| {
                stmt.execute(rusqlite::params![
                    new.group_row,
                    new.sender,
                    new.msg_id,
                    heads,
                    sent_at,
                    now,
                    new.body,
                    new.reply_to,
                    new.expires_after,
                    expires_sql,
                ])
            })
            .at(db.path)
            .map_err(group_must_exist)?;
        if inserted == 0 {
            let stored = by_sender_id(db, new.group_row, &new.sender, &new.msg_id)?.ok_or(
                Error::NotFound {
                    what: "group message",
                },
            )?;
            return Ok(GroupReceived::Duplicate(stored));
        }
        Ok(GroupReceived::New(new.message(db.conn.last_insert_rowid())))
    }

    /// Deletes a group message here only (its deliveries and queued copies go with it).
    /// Returns whether there was one.
    pub fn delete_group_message(&self, row: i64) -> Result<bool> {
        let db = self.db();
        let deleted = db
            .conn
            .execute("DELETE FROM group_messages WHERE id = ?1", [row])
            .at(db.path)?;
        Ok(deleted > 0)
    }

    /// Deletes one of our group messages for everyone: it becomes a tombstone here, its copies
    /// still queued are dropped (those deliveries fail as `withdrawn`), and the withdrawal
    /// (`payload`) is queued for every recipient it was sent to (`recipients`: contact row
    /// and identity of each, whatever its delivery: a copy may be on its way). Returns the
    /// tombstone.
    ///
    /// Fails with [`Error::NotFound`] for an unknown row and [`Error::Invalid`] for a message
    /// we did not send or already withdrew.
    pub fn withdraw_group_outgoing(
        &self,
        row: i64,
        recipients: &[(i64, [u8; 32])],
        payload: &[u8],
        now: UnixMillis,
    ) -> Result<GroupMessage> {
        let db = self.db();
        let m = message(db, row)?.ok_or(Error::NotFound {
            what: "group message",
        })?;
        if m.direction != Direction::Outgoing || m.kind != MessageKind::Text {
            return Err(Error::Invalid {
                what: "group message",
                reason: "only a group message we sent can be deleted for everyone".to_owned(),
            });
        }
        let now_sql = to_sql_int(now, "now")?;
        db.conn
            .execute("DELETE FROM outbox WHERE group_message_id = ?1", [row])
            .at(db.path)?;
        db.conn
            .prepare_cached(
                "UPDATE group_deliveries SET status = 'failed', failure = 'withdrawn', \
                 status_at = ?2 WHERE message_row = ?1 AND status = 'queued'",
            )
            .and_then(|mut stmt| stmt.execute(rusqlite::params![row, now_sql]))
            .at(db.path)?;
        tombstone(db, row)?;
        for &(contact_id, _) in recipients {
            outbox::insert(db, contact_id, OutboxKind::Withdraw, None, payload, now_sql)?;
        }
        message(db, row)?.ok_or(Error::NotFound {
            what: "group message",
        })
    }

    /// A member withdrew a group message it sent: our copy becomes a tombstone. If we never
    /// had it (it is on its way, or it expired here) and `heads` is given, a tombstone is
    /// stored anyway (at `heads`), so that a late copy is a duplicate and never stored; with
    /// no `heads` (the sender is no member now) nothing is. Returns the tombstone, if there is
    /// one, and whether a body was erased.
    pub fn withdraw_group_incoming(
        &self,
        group_row: i64,
        sender: &[u8; 32],
        target: &[u8; 16],
        heads: Option<&[[u8; 32]]>,
        now: UnixMillis,
    ) -> Result<Option<(GroupMessage, bool)>> {
        let db = self.db();
        if let Some(m) = by_sender_id(db, group_row, sender, target)? {
            if m.kind != MessageKind::Text || m.direction != Direction::Incoming {
                return Ok(Some((m, false)));
            }
            tombstone(db, m.row)?;
            let m = message(db, m.row)?.ok_or(Error::NotFound {
                what: "group message",
            })?;
            return Ok(Some((m, true)));
        }
        let Some(heads) = heads else {
            return Ok(None);
        };
        let stored = self.store_group_incoming(&NewGroupIncoming::placeholder(
            group_row,
            *sender,
            *target,
            heads.to_vec(),
            now,
        ))?;
        let row = match stored {
            GroupReceived::New(m) | GroupReceived::Duplicate(m) => m.row,
        };
        tombstone(db, row)?;
        let m = message(db, row)?.ok_or(Error::NotFound {
            what: "group message",
        })?;
        Ok(Some((m, false)))
    }

    /// Sets how far an outgoing group message got to one recipient. Returns whether it
    /// changed (a delivery already delivered stays so).
    pub fn set_group_delivery(
        &self,
        message_row: i64,
        recipient: &[u8; 32],
        status: DeliveryStatus,
        failure: Option<&str>,
        now: UnixMillis,
    ) -> Result<bool> {
        let db = self.db();
        let now = to_sql_int(now, "now")?;
        let changed = db
            .conn
            .prepare_cached(SET_DELIVERY)
            .and_then(|mut stmt| {
                stmt.execute(rusqlite::params![
                    message_row,
                    recipient,
                    status,
                    failure.filter(|_| status == DeliveryStatus::Failed),
                    now
                ])
            })
            .at(db.path)?;
        Ok(changed > 0)
    }
}
