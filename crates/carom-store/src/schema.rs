//! The schema and its versioned migrations.
//!
//! `PRAGMA user_version` records the schema version. Migration `n` takes a database from
//! version `n - 1` to `n`; each runs in its own `BEGIN IMMEDIATE` transaction together with the
//! version bump, so a crash or error leaves the database at the previous version, intact.
//! Migrations are append-only: once released, a migration's SQL never changes.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::err::{Error, Result, SqlResultExt};

/// Marks a database as Carom's (`PRAGMA application_id`, "Crom").
pub(crate) const APPLICATION_ID: i32 = 0x4372_6f6d;

/// One step of the schema's history.
pub(crate) struct Migration {
    /// The version this migration produces.
    pub(crate) version: u32,
    /// What it does, for logs.
    pub(crate) summary: &'static str,
    /// The statements.
    pub(crate) sql: &'static str,
    /// It rebuilds a table that other tables reference. SQLite cannot change a table's
    /// constraints in place; the documented way is to copy it into a new table, drop the old
    /// one and rename the new one, with foreign-key enforcement off for the step (a `DROP
    /// TABLE` would otherwise cascade into the tables that reference it). The references are
    /// checked before the step commits.
    pub(crate) rebuilds_referenced_table: bool,
}

/// Every migration, in order; `MIGRATIONS[i].version == i + 1`.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        summary: "identity, contacts, messages, outbox, event log, settings",
        sql: V1,
        rebuilds_referenced_table: false,
    },
    Migration {
        version: 2,
        summary: "outbox items by age, for expiry",
        sql: V2,
        rebuilds_referenced_table: false,
    },
    Migration {
        version: 3,
        summary: "drop the unused conversation summaries and settings",
        sql: V3,
        rebuilds_referenced_table: false,
    },
    Migration {
        version: 4,
        summary: "groups: their histories, messages and per-recipient delivery; group outbox items",
        sql: V4,
        rebuilds_referenced_table: false,
    },
    Migration {
        version: 5,
        summary: "contacts: rows for co-members who are not contacts; drop two unused columns",
        sql: V5,
        rebuilds_referenced_table: true,
    },
    Migration {
        version: 6,
        summary: "disappearing messages, timer changes and tombstones; withdrawals in the outbox",
        sql: V6,
        rebuilds_referenced_table: false,
    },
    Migration {
        version: 7,
        summary: "whether a conversation's history is kept; disappearing group messages",
        sql: V7,
        rebuilds_referenced_table: false,
    },
    Migration {
        version: 8,
        summary: "whether a group's history is kept",
        sql: V8,
        rebuilds_referenced_table: false,
    },
    Migration {
        version: 9,
        summary: "the bridge lines set through the API",
        sql: V9,
        rebuilds_referenced_table: false,
    },
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: u32 = 9;

/// Tor settings made through the API (docs/storage.md, `tor_settings`): the bridge lines,
/// newline-separated; NULL (or no row) leaves the choice to the daemon's configuration.
const V9: &str = "
CREATE TABLE tor_settings (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    bridges TEXT
) STRICT;
";

/// History off for a group (docs/storage.md "History off"): its messages live in the daemon's
/// memory only; its membership history, which every member needs to verify the group, is
/// still written.
const V8: &str = "
ALTER TABLE groups ADD COLUMN keep_history INTEGER NOT NULL DEFAULT 1
    CHECK (keep_history IN (0, 1));
";

/// History off (docs/storage.md "History off"): a conversation whose messages live in the
/// daemon's memory only. The setting is the one thing about them that is written.
///
/// Group messages gain what V6 gave 1:1 messages: a kind (`deleted`: a tombstone left by delete
/// for everyone), the timer each was sent under and the time erasure deletes it (the group's
/// timer itself lives in its signed history).
const V7: &str = "
ALTER TABLE contacts ADD COLUMN keep_history INTEGER NOT NULL DEFAULT 1
    CHECK (keep_history IN (0, 1));

ALTER TABLE group_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text'
    CHECK (kind IN ('text', 'deleted'));
ALTER TABLE group_messages ADD COLUMN timer INTEGER CHECK (timer IS NULL OR timer > 0);
ALTER TABLE group_messages ADD COLUMN expires_at INTEGER;
CREATE INDEX group_messages_expiry ON group_messages (expires_at) WHERE expires_at IS NOT NULL;
";

/// Ephemerality (protocol §7.1, docs/storage.md "Erasure").
///
/// A message row is now one of three kinds: `text` (a chat), `timer` (a change of the
/// conversation's disappearing-message timer, `timer` holding the new setting, NULL for off)
/// or `deleted` (a tombstone: the body erased by delete for everyone, the row kept so that
/// both histories show where it was and a late copy is not stored again). A text row carries
/// the timer it was sent under and, with one, the time it is erased at (`expires_at`, wall
/// clock ms); the partial index finds the next one without a scan. Each conversation's timer
/// and the change that set it (for the last-writer-wins rule of concurrent changes) live on
/// its contact row. `erasure_clock` keeps the latest time erasure ran at, so that a clock set
/// back while the daemon was stopped does not bring expired messages back to life.
///
/// The outbox is rebuilt (as in V4) for one more kind, `withdraw`: a delete for everyone,
/// which lives only in the outbox like a contact request.
const V6: &str = "
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text'
    CHECK (kind IN ('text', 'timer', 'deleted'));
ALTER TABLE messages ADD COLUMN timer INTEGER CHECK (timer IS NULL OR timer > 0);
ALTER TABLE messages ADD COLUMN expires_at INTEGER;
CREATE INDEX messages_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL;

ALTER TABLE contacts ADD COLUMN timer INTEGER CHECK (timer IS NULL OR timer > 0);
ALTER TABLE contacts ADD COLUMN timer_set_at INTEGER;
ALTER TABLE contacts ADD COLUMN timer_set_id BLOB
    CHECK (timer_set_id IS NULL OR length(timer_set_id) = 16);

CREATE TABLE erasure_clock (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    high_water INTEGER NOT NULL
) STRICT;
INSERT INTO erasure_clock (id, high_water) VALUES (1, 0);

CREATE TABLE outbox_v6 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id       INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    kind             TEXT NOT NULL CHECK (kind IN ('chat', 'contact_request', 'contact_response',
                                                   'group_operations', 'group_chat',
                                                   'withdraw')),
    message_id       INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    group_message_id INTEGER REFERENCES group_messages(id) ON DELETE CASCADE,
    payload          BLOB NOT NULL,
    attempts         INTEGER NOT NULL CHECK (attempts >= 0),
    next_attempt_at  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    CHECK (group_message_id IS NULL OR kind = 'group_chat')
) STRICT;
INSERT INTO outbox_v6 (id, contact_id, kind, message_id, group_message_id, payload, attempts,
                       next_attempt_at, created_at)
    SELECT id, contact_id, kind, message_id, group_message_id, payload, attempts,
           next_attempt_at, created_at
    FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_v6';
UPDATE sqlite_sequence SET name = 'outbox_v6' WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_v6 RENAME TO outbox;
CREATE INDEX outbox_by_contact ON outbox (contact_id, id);
CREATE INDEX outbox_by_message ON outbox (message_id);
CREATE INDEX outbox_by_age ON outbox (created_at, id);
CREATE INDEX outbox_by_group_message ON outbox (group_message_id)
    WHERE group_message_id IS NOT NULL;
";

/// A row of `contacts` may now stand for a co-member who is not a contact (state
/// `co_member`): someone we share a group with, whose row carries what their sessions need
/// (the outbox of group traffic for them, their device key for IK) and nothing else. Changing
/// a CHECK constraint means rebuilding the table (see
/// [`Migration::rebuilds_referenced_table`]); the rebuild also drops the two columns V3 left
/// unused. The AUTOINCREMENT counter is carried over, so no contact id is reused.
///
/// Two outbox indexes cost every 1:1 message's insert and delete and served nothing: the engine
/// schedules retries per contact in memory, so nothing reads the outbox by due time (its
/// `attempts` and `next_attempt_at` columns stay, unused: rebuilding the outbox for them is
/// not worth it); and
/// only group messages have a `group_message_id`, so its index (which the cascade from
/// `group_messages` uses) covers those rows alone.
const V5: &str = "
CREATE TABLE contacts_v5 (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    identity            BLOB NOT NULL UNIQUE CHECK (length(identity) = 32),
    state               TEXT NOT NULL
                        CHECK (state IN ('requesting', 'pending', 'accepted', 'rejected', 'blocked',
                                         'co_member')),
    nickname            TEXT NOT NULL,
    offered_nickname    TEXT,
    greeting            TEXT,
    declared_kind       TEXT NOT NULL CHECK (declared_kind IN ('human', 'bot')),
    peer_static         BLOB CHECK (peer_static IS NULL OR length(peer_static) = 32),
    peer_static_expires INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    last_seen           INTEGER
) STRICT;
INSERT INTO contacts_v5 (id, identity, state, nickname, offered_nickname, greeting,
                         declared_kind, peer_static, peer_static_expires, created_at, updated_at,
                         last_seen)
    SELECT id, identity, state, nickname, offered_nickname, greeting, declared_kind,
           peer_static, peer_static_expires, created_at, updated_at, last_seen
    FROM contacts;
DELETE FROM sqlite_sequence WHERE name = 'contacts_v5';
UPDATE sqlite_sequence SET name = 'contacts_v5' WHERE name = 'contacts';
DROP TABLE contacts;
ALTER TABLE contacts_v5 RENAME TO contacts;
DROP INDEX outbox_due;
DROP INDEX outbox_by_group_message;
CREATE INDEX outbox_by_group_message ON outbox (group_message_id)
    WHERE group_message_id IS NOT NULL;
";

/// Groups (protocol §15). The outbox is rebuilt to carry group traffic (two more kinds, and the
/// group message an item carries): no table references it, so dropping the old one cascades
/// nothing, and its AUTOINCREMENT counter is carried over so that no outbox id is reused.
const V4: &str = "
CREATE TABLE groups (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id   BLOB NOT NULL UNIQUE CHECK (length(group_id) = 16),
    state      TEXT NOT NULL CHECK (state IN ('invited', 'member', 'declined', 'left')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- Each group's operations in the order they were added: every one after its parents.
CREATE TABLE group_ops (
    group_row INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL CHECK (seq > 0),
    op_id     BLOB NOT NULL CHECK (length(op_id) = 32),
    body      BLOB NOT NULL CHECK (length(body) <= 1024),
    signature BLOB NOT NULL CHECK (length(signature) = 64),
    PRIMARY KEY (group_row, seq),
    UNIQUE (group_row, op_id)
) STRICT;

CREATE TABLE group_messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    group_row    INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    sender       BLOB NOT NULL CHECK (length(sender) = 32),
    direction    TEXT NOT NULL CHECK (direction IN ('incoming', 'outgoing')),
    msg_id       BLOB NOT NULL CHECK (length(msg_id) = 16),
    heads        BLOB NOT NULL CHECK (length(heads) > 0 AND length(heads) % 32 = 0),
    sent_at      INTEGER NOT NULL,
    stored_at    INTEGER NOT NULL,
    body         TEXT NOT NULL,
    reply_to     BLOB CHECK (reply_to IS NULL OR length(reply_to) = 16),
    client_token TEXT,
    CHECK (client_token IS NULL OR direction = 'outgoing')
) STRICT;

-- Exactly once: one row per (group, sender, message id).
CREATE UNIQUE INDEX group_messages_exactly_once ON group_messages (group_row, sender, msg_id);
CREATE UNIQUE INDEX group_messages_client_token ON group_messages (group_row, client_token)
    WHERE client_token IS NOT NULL;
CREATE INDEX group_messages_history ON group_messages (group_row, id);

-- Each outgoing group message's recipients, and how far it got to each.
CREATE TABLE group_deliveries (
    message_row INTEGER NOT NULL REFERENCES group_messages(id) ON DELETE CASCADE,
    recipient   BLOB NOT NULL CHECK (length(recipient) = 32),
    status      TEXT NOT NULL CHECK (status IN ('queued', 'delivered', 'failed')),
    failure     TEXT,
    status_at   INTEGER NOT NULL,
    PRIMARY KEY (message_row, recipient)
) STRICT, WITHOUT ROWID;

CREATE TABLE outbox_v4 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id       INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    kind             TEXT NOT NULL CHECK (kind IN ('chat', 'contact_request', 'contact_response',
                                                   'group_operations', 'group_chat')),
    message_id       INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    group_message_id INTEGER REFERENCES group_messages(id) ON DELETE CASCADE,
    payload          BLOB NOT NULL,
    attempts         INTEGER NOT NULL CHECK (attempts >= 0),
    next_attempt_at  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    CHECK (group_message_id IS NULL OR kind = 'group_chat')
) STRICT;
INSERT INTO outbox_v4 (id, contact_id, kind, message_id, group_message_id, payload, attempts,
                       next_attempt_at, created_at)
    SELECT id, contact_id, kind, message_id, NULL, payload, attempts, next_attempt_at, created_at
    FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_v4';
UPDATE sqlite_sequence SET name = 'outbox_v4' WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_v4 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (next_attempt_at, id);
CREATE INDEX outbox_by_contact ON outbox (contact_id, id);
CREATE INDEX outbox_by_message ON outbox (message_id);
CREATE INDEX outbox_by_age ON outbox (created_at, id);
CREATE INDEX outbox_by_group_message ON outbox (group_message_id);
";

/// Expiry looks at the oldest queued items without scanning the outbox.
const V2: &str = "CREATE INDEX outbox_by_age ON outbox (created_at, id);";

/// Nothing read the per-contact message count and newest message, which two triggers kept up
/// on every insert and delete of a message, nor the settings table: the triggers and the table
/// go, until a feature needs them (and is designed around what it needs). The two columns
/// stay, unused and no longer maintained: SQLite's `DROP COLUMN` cannot rewrite V1's table
/// text (its comments), and rebuilding `contacts` under its foreign keys is not worth two
/// idle columns.
const V3: &str = "
DROP TRIGGER messages_summary_insert;
DROP TRIGGER messages_summary_delete;
DROP TABLE settings;
";

const V1: &str = r#"
PRAGMA application_id = 1131573101;

-- This profile's secrets: at most one row.
CREATE TABLE identity (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    seed          BLOB NOT NULL CHECK (length(seed) = 32),
    device_secret BLOB NOT NULL CHECK (length(device_secret) = 32),
    device_cert   BLOB NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;

-- AUTOINCREMENT everywhere an id leaves the store (API events, cursors, in-flight sends):
-- an id is never reused for a different record, even after the newest one is deleted.
CREATE TABLE contacts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    identity            BLOB NOT NULL UNIQUE CHECK (length(identity) = 32),
    state               TEXT NOT NULL
                        CHECK (state IN ('requesting', 'pending', 'accepted', 'rejected', 'blocked')),
    nickname            TEXT NOT NULL,
    offered_nickname    TEXT,
    greeting            TEXT,
    declared_kind       TEXT NOT NULL CHECK (declared_kind IN ('human', 'bot')),
    peer_static         BLOB CHECK (peer_static IS NULL OR length(peer_static) = 32),
    peer_static_expires INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    last_seen           INTEGER,
    -- Maintained by the triggers below, so listing conversations neither counts rows nor
    -- searches for each conversation's newest message.
    message_count       INTEGER NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    last_message_id     INTEGER
) STRICT;

CREATE TABLE messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id   INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    direction    TEXT NOT NULL CHECK (direction IN ('incoming', 'outgoing')),
    msg_id       BLOB NOT NULL CHECK (length(msg_id) = 16),
    sent_at      INTEGER NOT NULL,
    stored_at    INTEGER NOT NULL,
    body         TEXT NOT NULL,
    reply_to     BLOB CHECK (reply_to IS NULL OR length(reply_to) = 16),
    status       TEXT NOT NULL
                 CHECK (status IN ('queued', 'sent', 'delivered', 'failed', 'received')),
    failure      TEXT,
    client_token TEXT,
    status_at    INTEGER NOT NULL,
    CHECK ((direction = 'incoming') = (status = 'received')),
    CHECK (client_token IS NULL OR direction = 'outgoing')
) STRICT;

-- Exactly once: one row per (sender, direction, message id).
CREATE UNIQUE INDEX messages_exactly_once ON messages (contact_id, direction, msg_id);
-- Idempotent sends: one row per (contact, API client token).
CREATE UNIQUE INDEX messages_client_token ON messages (contact_id, client_token)
    WHERE client_token IS NOT NULL;
-- History pages and each conversation's newest message.
CREATE INDEX messages_history ON messages (contact_id, id);

-- Message ids only grow, so a new message is always its conversation's newest.
CREATE TRIGGER messages_summary_insert AFTER INSERT ON messages BEGIN
    UPDATE contacts SET message_count = message_count + 1, last_message_id = NEW.id
        WHERE id = NEW.contact_id;
END;
CREATE TRIGGER messages_summary_delete AFTER DELETE ON messages BEGIN
    UPDATE contacts SET
        message_count = message_count - 1,
        last_message_id = CASE WHEN last_message_id = OLD.id
            THEN (SELECT max(id) FROM messages WHERE contact_id = OLD.contact_id)
            ELSE last_message_id END
        WHERE id = OLD.contact_id;
END;

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id      INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN ('chat', 'contact_request', 'contact_response')),
    message_id      INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    payload         BLOB NOT NULL,
    attempts        INTEGER NOT NULL CHECK (attempts >= 0),
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
) STRICT;

CREATE INDEX outbox_due ON outbox (next_attempt_at, id);
-- A contact's outbox in send order; also deleting a contact's items.
CREATE INDEX outbox_by_contact ON outbox (contact_id, id);
-- Deleting a message (or marking it delivered) finds its outbox items without a scan.
CREATE INDEX outbox_by_message ON outbox (message_id);

-- The API's durable event log. AUTOINCREMENT keeps sequence numbers unique for ever.
CREATE TABLE events (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    at   INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (length(kind) > 0),
    data TEXT NOT NULL CHECK (json_valid(data))
) STRICT;

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT, WITHOUT ROWID;
"#;

/// The schema version recorded in the database.
pub(crate) fn version(conn: &Connection, path: &Path) -> Result<u32> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .at(path)?;
    u32::try_from(found).map_err(|_| Error::DatabaseCorrupt {
        path: path.to_owned(),
        reason: format!("impossible schema version {found}"),
    })
}

/// Brings the database up to [`SCHEMA_VERSION`].
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    migrate_with(conn, path, MIGRATIONS, SCHEMA_VERSION)
}

/// Applies `migrations` up to `target`; separate from [`migrate`] so tests can stop early or
/// inject a failing step.
pub(crate) fn migrate_with(
    conn: &mut Connection,
    path: &Path,
    migrations: &[Migration],
    target: u32,
) -> Result<()> {
    // Another program's database (keyed with our key by accident) is not "newer": say what
    // it is before looking at its version.
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .at(path)?;
    if application_id != 0 && application_id != APPLICATION_ID {
        return Err(Error::DatabaseCorrupt {
            path: path.to_owned(),
            reason: "it is not a Carom database".to_owned(),
        });
    }
    let supported = migrations.last().map_or(0, |m| m.version);
    let found = version(conn, path)?;
    if found > supported {
        return Err(Error::NewerSchema {
            path: path.to_owned(),
            found,
            supported,
        });
    }
    for migration in migrations
        .iter()
        .filter(|m| m.version > found && m.version <= target)
    {
        tracing::info!(
            path = %path.display(),
            version = migration.version,
            summary = migration.summary,
            "migrating the database schema"
        );
        // The pragma is a no-op inside a transaction: it is set around it.
        let enforcing: bool = conn
            .pragma_query_value(None, "foreign_keys", |row| row.get(0))
            .at(path)?;
        if migration.rebuilds_referenced_table && enforcing {
            conn.pragma_update(None, "foreign_keys", false).at(path)?;
        }
        let applied = apply(conn, path, migration);
        if migration.rebuilds_referenced_table && enforcing {
            conn.pragma_update(None, "foreign_keys", true).at(path)?;
        }
        applied?;
    }
    Ok(())
}

/// One migration in its own transaction, with the version bump.
fn apply(conn: &mut Connection, path: &Path, migration: &Migration) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .at(path)?;
    // Re-read inside the write lock: another connection may have migrated meanwhile.
    if version(&tx, path)? >= migration.version {
        return Ok(());
    }
    tx.execute_batch(migration.sql).at(path)?;
    if migration.rebuilds_referenced_table {
        // With enforcement off for the rebuild, nothing else has checked the references.
        let dangling: i64 = tx
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })
            .at(path)?;
        if dangling > 0 {
            return Err(Error::DatabaseCorrupt {
                path: path.to_owned(),
                reason: format!(
                    "migration {} would leave {dangling} rows referring to nothing",
                    migration.version
                ),
            });
        }
    }
    tx.pragma_update(None, "user_version", migration.version)
        .at(path)?;
    tx.commit().at(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_versions_are_consecutive_and_end_at_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
        assert_eq!(MIGRATIONS.last().unwrap().version, SCHEMA_VERSION);
    }

    #[test]
    fn v1_sets_the_application_id_constant() {
        assert!(V1.contains(&format!("application_id = {APPLICATION_ID};")));
    }
}
