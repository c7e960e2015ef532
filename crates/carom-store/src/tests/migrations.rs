//! Schema migrations: from every earlier version, atomic, and refusing newer schemas.

use std::fs;

use rusqlite::Connection;

use super::*;
use crate::schema::{self, MIGRATIONS, Migration};
use crate::store::{apply_key, configure_durable};
use crate::{Error, ErrorKind, SCHEMA_VERSION, StoreRead};

/// A keyed, durable connection to a new database file at `path`.
fn raw_database(path: &Path, key: &DbKey) -> Connection {
    let conn = Connection::open(path).unwrap();
    apply_key(&conn, path, key).unwrap();
    configure_durable(&conn, path).unwrap();
    conn
}

/// The schema as SQLite records it: every table, index and trigger with its SQL.
fn schema_of(conn: &Connection) -> Vec<(String, String, Option<String>)> {
    let mut stmt = conn
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn fresh_schema() -> Vec<(String, String, Option<String>)> {
    let (_profile, store) = Profile::new(b"pw");
    schema_of(store.connection())
}

#[test]
fn every_earlier_version_migrates_to_the_current_schema() {
    let fresh = fresh_schema();
    assert!(
        fresh
            .iter()
            .any(|(_, name, _)| name == "messages_exactly_once")
    );
    for start in 0..SCHEMA_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let key = DbKey::generate().unwrap();
        {
            let mut conn = raw_database(&path, &key);
            schema::migrate_with(&mut conn, &path, MIGRATIONS, start).unwrap();
            assert_eq!(schema::version(&conn, &path).unwrap(), start);
        }
        let mut store = Store::open(&path, &key).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            SCHEMA_VERSION,
            "from {start}"
        );
        assert_eq!(schema_of(store.connection()), fresh, "from {start}");
        // And it is usable.
        let alice = add_contact(&mut store, 1);
        assert!(receive(&mut store, alice, 1, "after migration").is_new());
        store.check_integrity().unwrap();
    }
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let (profile, store) = Profile::new(b"pw");
    store
        .connection()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(store);
    let before = fs::read(&profile.db_path).unwrap();
    let error = Store::open(&profile.db_path, &profile.key).unwrap_err();
    match &error {
        Error::NewerSchema {
            path,
            found,
            supported,
        } => {
            assert_eq!(path, &profile.db_path);
            assert_eq!(*found, SCHEMA_VERSION + 1);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert!(error.to_string().contains("upgrade Carom"), "{error}");
    assert_eq!(fs::read(&profile.db_path).unwrap(), before);
}

#[test]
fn a_failing_migration_leaves_the_previous_version_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let key = DbKey::generate().unwrap();
    let mut conn = raw_database(&path, &key);
    let broken = [
        Migration {
            version: 1,
            summary: "v1",
            sql: MIGRATIONS[0].sql,
            rebuilds_referenced_table: false,
        },
        Migration {
            version: 2,
            summary: "breaks halfway",
            sql: "CREATE TABLE half_done (x); INSERT INTO no_such_table VALUES (1);",
            rebuilds_referenced_table: false,
        },
    ];
    let error = schema::migrate_with(&mut conn, &path, &broken, 2).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Internal, "{error:?}");
    assert_eq!(schema::version(&conn, &path).unwrap(), 1);
    let half: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'half_done'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(half, 0, "the failed step must leave nothing behind");
    drop(conn);
    // The database is still a good version-1 database, which opens and migrates as usual.
    let store = Store::open(&path, &key).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(store.contacts().unwrap().is_empty());
}

#[test]
fn reopening_does_not_migrate_again() {
    let (profile, mut store) = Profile::new(b"pw");
    let alice = add_contact(&mut store, 1);
    receive(&mut store, alice, 1, "kept");
    let schema = schema_of(store.connection());
    drop(store);
    for _ in 0..3 {
        let store = profile.open();
        assert_eq!(schema_of(store.connection()), schema);
        assert_eq!(store.history(alice, None, 10).unwrap().len(), 1);
    }
}

#[test]
fn the_in_memory_store_has_the_same_schema() {
    let store = Store::open_in_memory().unwrap();
    assert_eq!(schema_of(store.connection()), fresh_schema());
}

#[test]
fn version_three_keeps_every_message_and_leaves_no_trigger_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    let key = DbKey::generate().unwrap();
    {
        let mut conn = raw_database(&path, &key);
        schema::migrate_with(&mut conn, &path, MIGRATIONS, 2).unwrap();
        conn.execute_batch(
            "INSERT INTO contacts (identity, state, nickname, declared_kind, created_at,
                 updated_at) VALUES (zeroblob(32), 'accepted', 'alice', 'human', 1, 1);
             INSERT INTO messages (contact_id, direction, msg_id, sent_at, stored_at, body,
                 status, status_at) VALUES (1, 'incoming', zeroblob(16), 2, 2, 'kept', 'received', 2);
             INSERT INTO settings (key, value) VALUES ('theme', 'dark');",
        )
        .unwrap();
    }
    let mut store = Store::open(&path, &key).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let history = store.history(1, None, 10).unwrap();
    assert_eq!(
        history.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["kept"]
    );
    let leftovers: Vec<_> = schema_of(store.connection())
        .into_iter()
        .filter(|(kind, name, _)| kind == "trigger" || name == "settings")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Messages are stored and deleted as before, without the triggers.
    assert!(receive(&mut store, 1, 2, "after").is_new());
    let newest = store.history(1, None, 1).unwrap().remove(0);
    assert!(store.write(|tx| tx.delete_message(newest.row)).unwrap());
    store.check_integrity().unwrap();
}
