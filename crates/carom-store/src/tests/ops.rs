//! Every operation of the store, including idempotency and exactly-once storage.

use zeroize::Zeroizing;

use super::*;
use crate::{
    Contact, Error, ErrorKind, IdentityRecord, MessageStatus, OutboxKind, SCHEMA_VERSION, StoreRead,
};

fn memory() -> Store {
    Store::open_in_memory().unwrap()
}

#[test]
fn fresh_stores_are_at_the_current_schema_and_know_their_path() {
    let store = memory();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.path(), None);
    let (profile, store) = Profile::new(b"pw");
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.path(), Some(profile.db_path.as_path()));
}

#[test]
fn durability_pragmas_are_in_force_on_disk() {
    let (_profile, store) = Profile::new(b"pw");
    let conn = store.connection();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let synchronous: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(synchronous, 2, "synchronous must be FULL");
    let fk: i64 = conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
    let temp_store: i64 = conn
        .pragma_query_value(None, "temp_store", |r| r.get(0))
        .unwrap();
    assert_eq!(temp_store, 2, "temp_store must be MEMORY");
    let secure_delete: i64 = conn
        .pragma_query_value(None, "secure_delete", |r| r.get(0))
        .unwrap();
    assert_eq!(secure_delete, 1);
    let limit: i64 = conn
        .pragma_query_value(None, "journal_size_limit", |r| r.get(0))
        .unwrap();
    assert_eq!(limit, 16 * 1024 * 1024);
    // SQLCipher 4's format, pinned by cipher_compatibility = 4, with HMAC-SHA256 pages.
    let page_size: String = conn
        .pragma_query_value(None, "cipher_page_size", |r| r.get(0))
        .unwrap();
    assert_eq!(page_size, "4096");
    let hmac: String = conn
        .pragma_query_value(None, "cipher_hmac_algorithm", |r| r.get(0))
        .unwrap();
    assert_eq!(hmac, "HMAC_SHA256");
}

#[test]
fn create_in_a_missing_directory_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let error = Store::create(&missing.join("carom.db"), &DbKey::generate().unwrap()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Io, "{error:?}");
    assert!(error.to_string().contains("no-such-dir"), "{error}");
    assert!(!missing.exists());
}

#[test]
fn create_refuses_existing_database_and_open_refuses_missing_one() {
    let (profile, store) = Profile::new(b"pw");
    drop(store);
    let before = std::fs::read(&profile.db_path).unwrap();
    let error = Store::create(&profile.db_path, &profile.key).unwrap_err();
    assert!(matches!(error, Error::DatabaseExists { .. }), "{error}");
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert_eq!(std::fs::read(&profile.db_path).unwrap(), before);

    let missing = profile.dir.path().join("nope.db");
    let error = Store::open(&missing, &profile.key).unwrap_err();
    assert!(matches!(error, Error::DatabaseMissing { .. }), "{error}");
    assert!(error.to_string().contains("nope.db"));
    assert!(!missing.exists(), "open must not create a database");
}

#[test]
fn create_leaves_only_the_database_behind() {
    let (profile, store) = Profile::new(b"pw");
    drop(store);
    let names: Vec<String> = files_in(profile.dir.path())
        .into_iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // The WAL and shared-memory files are removed when the last connection closes.
    assert_eq!(names, ["carom.db", "carom.key"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&profile.db_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn database_files_are_private_while_open() {
    use std::os::unix::fs::PermissionsExt;
    let (profile, mut store) = Profile::new(b"pw");
    let contact = add_contact(&mut store, 1);
    receive(&mut store, contact, 1, "hello");
    for (path, _) in files_in(profile.dir.path()) {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others", path.display());
    }
}

#[test]
fn identity_is_saved_replaced_and_read_back() {
    let mut store = memory();
    assert!(store.identity().unwrap().is_none());
    let record = |byte: u8| IdentityRecord {
        seed: Zeroizing::new([byte; 32]),
        device_secret: Zeroizing::new([byte + 1; 32]),
        device_cert: vec![byte; 70],
        created_at: 42,
    };
    store.write(|tx| tx.save_identity(&record(1))).unwrap();
    let got = store.identity().unwrap().unwrap();
    assert_eq!(*got.seed, [1; 32]);
    assert_eq!(*got.device_secret, [2; 32]);
    assert_eq!(got.device_cert, vec![1; 70]);
    assert_eq!(got.created_at, 42);
    // Device-key rotation replaces the single row.
    store.write(|tx| tx.save_identity(&record(9))).unwrap();
    let got = store.identity().unwrap().unwrap();
    assert_eq!(*got.seed, [9; 32]);
    assert_eq!(*got.device_secret, [10; 32]);
    let rows: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM identity", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

#[test]
fn contacts_are_inserted_read_updated_and_unique_by_identity() {
    let mut store = memory();
    let mut new = new_contact(7, "Alice", 100);
    new.offered_nickname = Some("alice".into());
    new.greeting = Some("hi, it's me".into());
    new.state = ContactState::Pending;
    new.declared_kind = PeerKind::Bot;
    let id = store.write(|tx| tx.insert_contact(&new)).unwrap();
    let contact = store.contact(id).unwrap().unwrap();
    assert_eq!(
        contact,
        Contact {
            id,
            identity: [7; 32],
            state: ContactState::Pending,
            nickname: "Alice".into(),
            offered_nickname: Some("alice".into()),
            greeting: Some("hi, it's me".into()),
            declared_kind: PeerKind::Bot,
            peer_static: None,
            peer_static_expires: None,
            created_at: 100,
            updated_at: 100,
            last_seen: None,
            timer: None,
            keep_history: true,
        }
    );
    assert_eq!(
        store.contact_by_identity(&[7; 32]).unwrap(),
        Some(contact.clone())
    );
    assert_eq!(store.contact_by_identity(&[8; 32]).unwrap(), None);
    assert_eq!(store.contact(id + 100).unwrap(), None);

    let error = store.write(|tx| tx.insert_contact(&new)).unwrap_err();
    assert!(
        matches!(error, Error::AlreadyExists { what } if what.contains("identity")),
        "{error}"
    );

    let mut changed = contact.clone();
    changed.state = ContactState::Accepted;
    changed.nickname = "Alice B.".into();
    changed.peer_static = Some([3; 32]);
    changed.peer_static_expires = Some(1_900_000_000);
    changed.updated_at = 200;
    changed.last_seen = Some(150);
    // Immutable fields are ignored by update_contact.
    changed.created_at = 999;
    store.write(|tx| tx.update_contact(&changed)).unwrap();
    let stored = store.contact(id).unwrap().unwrap();
    assert_eq!(stored.created_at, 100);
    changed.created_at = 100;
    assert_eq!(stored, changed);

    // The history setting changes only by its own call, which update_contact leaves alone.
    store
        .write(|tx| tx.set_keep_history(id, false, 250))
        .unwrap();
    let off = store.contact(id).unwrap().unwrap();
    assert!(!off.keep_history);
    assert_eq!(off.updated_at, 250);
    store.write(|tx| tx.update_contact(&changed)).unwrap();
    assert!(!store.contact(id).unwrap().unwrap().keep_history);
    let error = store
        .write(|tx| tx.set_keep_history(id + 100, false, 250))
        .unwrap_err();
    assert!(
        matches!(error, Error::NotFound { what: "contact" }),
        "{error}"
    );
    store
        .write(|tx| tx.set_keep_history(id, true, 260))
        .unwrap();
    changed.updated_at = 260;
    assert_eq!(store.contact(id).unwrap().unwrap(), changed);

    let mut ghost = changed.clone();
    ghost.id = id + 100;
    let error = store.write(|tx| tx.update_contact(&ghost)).unwrap_err();
    assert!(
        matches!(error, Error::NotFound { what: "contact" }),
        "{error}"
    );

    let second = store
        .write(|tx| tx.insert_contact(&new_contact(8, "Bob", 300)))
        .unwrap();
    let all: Vec<i64> = store.contacts().unwrap().iter().map(|c| c.id).collect();
    assert_eq!(all, [id, second]);
}

#[test]
fn deleting_a_contact_cascades_to_messages_and_outbox() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let bob = add_contact(&mut store, 2);
    receive(&mut store, alice, 1, "a1");
    let queued = queue(&mut store, alice, 2, "a2").into_message();
    store
        .write(|tx| tx.enqueue(alice, OutboxKind::ContactResponse, None, b"resp", 5))
        .unwrap();
    receive(&mut store, bob, 1, "b1");
    queue(&mut store, bob, 2, "b2");

    assert!(store.write(|tx| tx.delete_contact(alice)).unwrap());
    assert!(!store.write(|tx| tx.delete_contact(alice)).unwrap());
    assert_eq!(store.contact(alice).unwrap(), None);
    assert_eq!(store.message(queued.row).unwrap(), None);
    assert!(store.history(alice, None, 10).unwrap().is_empty());
    assert!(store.outbox_for_contact(alice).unwrap().is_empty());
    // Bob's are untouched.
    assert_eq!(store.history(bob, None, 10).unwrap().len(), 2);
    assert_eq!(store.outbox_for_contact(bob).unwrap().len(), 1);
    // Ids are never reused: a new contact gets a fresh id.
    let carol = add_contact(&mut store, 3);
    assert!(carol > bob);
}

#[test]
fn queue_outgoing_stores_message_and_outbox_item_atomically() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let mut new = outgoing(alice, 1, "hello", 500);
    new.reply_to = Some(msg_id(77));
    let queued = store.write(|tx| tx.queue_outgoing(&new)).unwrap();
    let Queued::New(message) = queued else {
        panic!("expected a new message, got {queued:?}");
    };
    assert_eq!(message.direction, Direction::Outgoing);
    assert_eq!(message.status, MessageStatus::Queued);
    assert_eq!(message.body, "hello");
    assert_eq!(message.reply_to, Some(msg_id(77)));
    assert_eq!(message.client_token.as_deref(), Some("token-1"));
    assert_eq!(
        (message.stored_at, message.status_at, message.sent_at),
        (500, 500, 500)
    );
    assert_eq!(store.message(message.row).unwrap(), Some(message.clone()));

    let outbox = store.outbox_for_contact(alice).unwrap();
    assert_eq!(outbox.len(), 1);
    let item = &outbox[0];
    assert_eq!(item.kind, OutboxKind::Chat);
    assert_eq!(item.message_row, Some(message.row));
    assert_eq!(item.payload, b"wire-1");
    assert_eq!(
        (item.attempts, item.next_attempt_at, item.created_at),
        (0, 500, 500)
    );
    assert_eq!(store.outbox_item(item.id).unwrap().as_ref(), Some(item));
}

#[test]
fn queue_outgoing_is_idempotent_on_client_token() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let bob = add_contact(&mut store, 2);
    let first = queue(&mut store, alice, 1, "once").into_message();
    // A retried API call: same token, even with a new message id, stores nothing.
    let mut retry = outgoing(alice, 2, "once", 2_000);
    retry.client_token = Some("token-1".into());
    let again = store.write(|tx| tx.queue_outgoing(&retry)).unwrap();
    assert_eq!(again, Queued::Existing(first.clone()));
    assert!(!again.is_new());
    assert_eq!(store.history(alice, None, 10).unwrap().len(), 1);
    assert_eq!(store.outbox_for_contact(alice).unwrap().len(), 1);
    // The same token for another contact is a different request.
    let mut other = outgoing(bob, 1, "once", 2_000);
    other.client_token = Some("token-1".into());
    assert!(
        store
            .write(|tx| tx.queue_outgoing(&other))
            .unwrap()
            .is_new()
    );
    // Without a token every call queues.
    for n in 10..12 {
        let mut untokened = outgoing(alice, n, "again", 3_000);
        untokened.client_token = None;
        assert!(
            store
                .write(|tx| tx.queue_outgoing(&untokened))
                .unwrap()
                .is_new()
        );
    }
    assert_eq!(store.history(alice, None, 10).unwrap().len(), 3);
}

#[test]
fn queue_outgoing_refuses_reused_message_id_and_unknown_contact() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    queue(&mut store, alice, 1, "x");
    let mut clash = outgoing(alice, 1, "y", 10);
    clash.client_token = Some("other".into());
    let error = store.write(|tx| tx.queue_outgoing(&clash)).unwrap_err();
    assert!(matches!(error, Error::AlreadyExists { .. }), "{error}");
    let error = store
        .write(|tx| tx.queue_outgoing(&outgoing(alice + 50, 2, "y", 10)))
        .unwrap_err();
    assert!(
        matches!(error, Error::NotFound { what: "contact" }),
        "{error}"
    );
    // Nothing of the failed transactions remains.
    assert_eq!(store.outbox_for_contact(alice).unwrap().len(), 1);
}

#[test]
fn store_incoming_is_exactly_once_per_sender_and_id() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let bob = add_contact(&mut store, 2);
    let first = receive(&mut store, alice, 1, "hi");
    let Received::New(message) = first else {
        panic!("expected a new message");
    };
    assert_eq!(message.status, MessageStatus::Received);
    assert_eq!(message.direction, Direction::Incoming);
    // Replay, even with different content and time: the stored copy comes back.
    let replay = store
        .write(|tx| tx.store_incoming(&incoming(alice, 1, "tampered", 9_999)))
        .unwrap();
    assert_eq!(replay, Received::Duplicate(message.clone()));
    assert!(!replay.is_new());
    assert_eq!(count_rows(&store, alice, Direction::Incoming, 1), 1);
    // The same id from another sender, or in the other direction, is another message.
    assert!(receive(&mut store, bob, 1, "hi").is_new());
    queue(&mut store, alice, 1, "mine");
    assert_eq!(count_rows(&store, alice, Direction::Incoming, 1), 1);
    assert_eq!(count_rows(&store, alice, Direction::Outgoing, 1), 1);
    assert_eq!(
        store
            .message_by_id(alice, Direction::Incoming, &msg_id(1))
            .unwrap(),
        Some(message)
    );
    assert_eq!(
        store
            .message_by_id(alice, Direction::Incoming, &msg_id(2))
            .unwrap(),
        None
    );
    let error = store
        .write(|tx| tx.store_incoming(&incoming(bob + 9, 1, "?", 1)))
        .unwrap_err();
    assert!(
        matches!(error, Error::NotFound { what: "contact" }),
        "{error}"
    );
}

#[test]
fn exactly_once_survives_reopening() {
    let (profile, mut store) = Profile::new(b"pw");
    let alice = add_contact(&mut store, 1);
    assert!(receive(&mut store, alice, 1, "hi").is_new());
    drop(store);
    let mut store = profile.open();
    assert!(!receive(&mut store, alice, 1, "hi").is_new());
    assert_eq!(count_rows(&store, alice, Direction::Incoming, 1), 1);
}

#[test]
fn message_status_changes_are_checked() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let out = queue(&mut store, alice, 1, "x").into_message();
    let inc = receive(&mut store, alice, 2, "y").into_message();
    let sent = store
        .write(|tx| tx.set_message_status(out.row, MessageStatus::Sent, Some("ignored"), 7))
        .unwrap();
    assert_eq!(
        (sent.status, sent.status_at, sent.failure.as_deref()),
        (MessageStatus::Sent, 7, None)
    );
    let failed = store
        .write(|tx| tx.set_message_status(out.row, MessageStatus::Failed, Some("no route"), 8))
        .unwrap();
    assert_eq!(failed.failure.as_deref(), Some("no route"));
    assert_eq!(store.message(out.row).unwrap(), Some(failed));
    let error = store
        .write(|tx| tx.set_message_status(inc.row, MessageStatus::Delivered, None, 9))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    let error = store
        .write(|tx| tx.set_message_status(out.row, MessageStatus::Received, None, 9))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    let error = store
        .write(|tx| tx.set_message_status(out.row + 100, MessageStatus::Sent, None, 9))
        .unwrap_err();
    assert!(matches!(error, Error::NotFound { what: "message" }));
}

#[test]
fn mark_delivered_changes_only_pending_outgoing_and_clears_their_outbox() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let bob = add_contact(&mut store, 2);
    let q1 = queue(&mut store, alice, 1, "1").into_message();
    let q2 = queue(&mut store, alice, 2, "2").into_message();
    let q3 = queue(&mut store, alice, 3, "3").into_message();
    let failed = queue(&mut store, alice, 4, "4").into_message();
    let bobs = queue(&mut store, bob, 1, "b").into_message();
    receive(&mut store, alice, 5, "incoming with id 5");
    store
        .write(|tx| {
            tx.set_message_status(q2.row, MessageStatus::Sent, None, 10)?;
            tx.set_message_status(failed.row, MessageStatus::Failed, Some("gave up"), 10)
        })
        .unwrap();

    let ids = [
        msg_id(2),
        msg_id(1),
        msg_id(4),
        msg_id(5),
        msg_id(99),
        msg_id(2),
    ];
    let changed = store
        .write(|tx| tx.mark_delivered(alice, &ids, 20))
        .unwrap();
    let rows: Vec<i64> = changed.iter().map(|m| m.row).collect();
    assert_eq!(rows, [q2.row, q1.row]);
    assert!(
        changed
            .iter()
            .all(|m| m.status == MessageStatus::Delivered && m.status_at == 20)
    );
    assert_eq!(
        store.message(failed.row).unwrap().unwrap().status,
        MessageStatus::Failed
    );
    assert_eq!(
        store.message(q3.row).unwrap().unwrap().status,
        MessageStatus::Queued
    );
    assert_eq!(
        store.message(bobs.row).unwrap().unwrap().status,
        MessageStatus::Queued
    );
    let left: Vec<Option<i64>> = store
        .outbox_for_contact(alice)
        .unwrap()
        .iter()
        .map(|i| i.message_row)
        .collect();
    assert_eq!(left, [Some(q3.row), Some(failed.row)]);
    // A repeated acknowledgement changes nothing.
    assert!(
        store
            .write(|tx| tx.mark_delivered(alice, &ids, 30))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn delete_message_removes_it_and_its_outbox_item() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let q = queue(&mut store, alice, 1, "x").into_message();
    assert!(store.write(|tx| tx.delete_message(q.row)).unwrap());
    assert!(!store.write(|tx| tx.delete_message(q.row)).unwrap());
    assert_eq!(store.message(q.row).unwrap(), None);
    assert!(store.outbox_for_contact(alice).unwrap().is_empty());
    // Rows are never reused.
    let next = queue(&mut store, alice, 2, "y").into_message();
    assert!(next.row > q.row);
}

#[test]
fn history_pages_newest_first_by_cursor() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let bob = add_contact(&mut store, 2);
    let mut rows = Vec::new();
    for n in 0..25 {
        let m = if n % 3 == 0 {
            queue(&mut store, alice, n, &format!("m{n}")).into_message()
        } else {
            receive(&mut store, alice, n, &format!("m{n}")).into_message()
        };
        rows.push(m.row);
        receive(&mut store, bob, n, "noise");
    }
    rows.reverse();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.history(alice, cursor, 7).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        assert!(page.iter().all(|m| m.contact_id == alice));
        cursor = page.last().map(|m| m.row);
        seen.extend(page.iter().map(|m| m.row));
    }
    assert_eq!(seen, rows);
    assert!(store.history(alice, None, 0).unwrap().is_empty());
    assert_eq!(
        store.history(alice, Some(rows[0]), 1).unwrap()[0].row,
        rows[1]
    );
}

#[test]
fn a_contacts_outbox_can_be_walked_by_cursor() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let bob = add_contact(&mut store, 2);
    let ids: Vec<i64> = store
        .write(|tx| {
            let mut ids = Vec::new();
            for i in 0..5u8 {
                ids.push(tx.enqueue(alice, OutboxKind::Chat, None, &[i], 10)?);
                tx.enqueue(bob, OutboxKind::Chat, None, &[i], 10)?;
            }
            Ok(ids)
        })
        .unwrap();
    let first: Vec<i64> = store
        .outbox_for_contact_after(alice, 0, 2)
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(first, ids[..2]);
    let rest: Vec<i64> = store
        .outbox_for_contact_after(alice, ids[1], 100)
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(
        rest,
        ids[2..],
        "only Alice's items after the cursor, in order"
    );
    assert!(
        store
            .outbox_for_contact_after(alice, ids[4], 100)
            .unwrap()
            .is_empty()
    );
}

/// SQLite's plan for `sql`, one line per step.
fn plan(store: &Store, sql: &str) -> String {
    let mut stmt = store
        .connection()
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap();
    // The plan does not depend on the values; bind NULLs.
    let nulls = std::iter::repeat_n(rusqlite::types::Null, stmt.parameter_count());
    let lines: Vec<String> = stmt
        .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    lines.join("\n")
}

#[test]
fn every_daemon_query_is_served_by_an_index() {
    use crate::{contacts, ephemeral, events, groups, messages, outbox};
    let store = memory();
    // (query, what its plan must contain). None may scan a whole table of messages, outbox
    // items or events, or sort them.
    let cases = [
        (
            groups::SELECT_BY_GROUP_ID,
            "SEARCH groups USING INDEX sqlite_autoindex_groups_1",
        ),
        (
            groups::SELECT_OPERATIONS,
            "SEARCH group_ops USING INDEX sqlite_autoindex_group_ops_1 (group_row=?)",
        ),
        (
            groups::SELECT_MESSAGE_BY_ROW,
            "SEARCH group_messages USING INTEGER PRIMARY KEY",
        ),
        (
            groups::SELECT_HISTORY,
            "SEARCH group_messages USING INDEX group_messages_history (group_row=? AND id<?)",
        ),
        (
            groups::SELECT_BY_SENDER_ID,
            "SEARCH group_messages USING INDEX group_messages_exactly_once",
        ),
        (
            groups::SELECT_BY_CLIENT_TOKEN,
            "SEARCH group_messages USING INDEX group_messages_client_token",
        ),
        (
            groups::SELECT_DELIVERIES,
            "SEARCH group_deliveries USING PRIMARY KEY (message_row=?)",
        ),
        (
            groups::SET_DELIVERY,
            "SEARCH group_deliveries USING PRIMARY KEY (message_row=? AND recipient=?)",
        ),
        (
            ephemeral::SELECT_NEXT_EXPIRY,
            "SEARCH messages USING COVERING INDEX messages_expiry",
        ),
        (
            ephemeral::SELECT_NEXT_EXPIRY,
            "SEARCH group_messages USING COVERING INDEX group_messages_expiry",
        ),
        (
            messages::SELECT_HISTORY,
            "SEARCH messages USING INDEX messages_history (contact_id=? AND id<?)",
        ),
        (
            messages::SELECT_BY_ID,
            "SEARCH messages USING INDEX messages_exactly_once",
        ),
        (
            messages::SELECT_BY_CLIENT_TOKEN,
            "SEARCH messages USING INDEX messages_client_token",
        ),
        (
            messages::SELECT_BY_ROW,
            "SEARCH messages USING INTEGER PRIMARY KEY",
        ),
        (
            messages::MARK_DELIVERED,
            "SEARCH messages USING INDEX messages_exactly_once",
        ),
        (
            messages::DELETE_OUTBOX_OF_MESSAGE,
            "SEARCH outbox USING COVERING INDEX outbox_by_message",
        ),
        (
            contacts::SELECT_BY_IDENTITY,
            "SEARCH contacts USING INDEX sqlite_autoindex_contacts_1",
        ),
        (
            contacts::SELECT_BY_ID,
            "SEARCH contacts USING INTEGER PRIMARY KEY",
        ),
        (
            // What the cascade from a deleted group message looks up: the partial index
            // serves it.
            "SELECT id FROM outbox WHERE group_message_id = ?1",
            "SEARCH outbox USING COVERING INDEX outbox_by_group_message (group_message_id=?)",
        ),
        (
            outbox::SELECT_FOR_CONTACT,
            "SEARCH outbox USING INDEX outbox_by_contact (contact_id=?)",
        ),
        (
            outbox::SELECT_FOR_CONTACT_AFTER,
            "SEARCH outbox USING INDEX outbox_by_contact (contact_id=? AND id>?)",
        ),
        (
            outbox::SELECT_HAS_ITEMS,
            "SEARCH outbox USING COVERING INDEX outbox_by_contact (contact_id=?)",
        ),
        (
            outbox::SELECT_ENQUEUED_BEFORE,
            "SEARCH outbox USING INDEX outbox_by_age (created_at<?)",
        ),
        (
            outbox::DELETE_KIND,
            "SEARCH outbox USING INDEX outbox_by_contact (contact_id=?)",
        ),
        (
            events::SELECT_SINCE,
            "SEARCH events USING INTEGER PRIMARY KEY (rowid>?)",
        ),
        (events::SELECT_OLDEST_SEQ, "SEARCH events"),
        (
            events::PRUNE,
            "SEARCH events USING INTEGER PRIMARY KEY (rowid<?)",
        ),
    ];
    // Erasure's subquery, with values (bound to NULL, SQLite folds it away): a range of the
    // partial index, never a scan of the messages.
    let erase = ephemeral::ERASE_EXPIRED
        .replace("?1", "1000")
        .replace("?2", "500");
    let erase_plan = plan(&store, &erase);
    assert!(
        erase_plan.contains("SEARCH messages USING COVERING INDEX messages_expiry"),
        "{erase_plan}"
    );
    assert!(!erase_plan.contains("SCAN"), "{erase_plan}");
    let erase = ephemeral::ERASE_EXPIRED_GROUP
        .replace("?1", "1000")
        .replace("?2", "500");
    let erase_plan = plan(&store, &erase);
    assert!(
        erase_plan.contains("SEARCH group_messages USING COVERING INDEX group_messages_expiry"),
        "{erase_plan}"
    );
    assert!(!erase_plan.contains("SCAN"), "{erase_plan}");
    for (sql, expected) in cases {
        let plan = plan(&store, sql);
        assert!(
            plan.contains(expected),
            "{sql}\nexpected {expected:?} in:\n{plan}"
        );
        if sql == events::PRUNE {
            // Its subquery walks back `keep_newest` rows from the newest: bounded, and rare.
            continue;
        }
        for table in ["messages", "outbox", "events"] {
            assert!(
                !plan
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("SCAN {table}"))),
                "{sql} scans {table}:\n{plan}"
            );
        }
        assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts:\n{plan}");
    }
}

#[test]
fn outbox_is_ordered_and_removable() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let bob = add_contact(&mut store, 2);
    let (a1, a2, b1) = store
        .write(|tx| {
            Ok((
                tx.enqueue(alice, OutboxKind::ContactRequest, None, b"req", 100)?,
                tx.enqueue(alice, OutboxKind::ContactRequest, None, b"req2", 100)?,
                tx.enqueue(bob, OutboxKind::ContactResponse, None, b"resp", 50)?,
            ))
        })
        .unwrap();
    assert!(a1 < a2 && a2 < b1);
    let ids: Vec<i64> = store
        .outbox_for_contact(alice)
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, [a1, a2]);

    assert!(store.has_outbox(alice).unwrap() && store.has_outbox(bob).unwrap());
    assert_eq!(store.outbox_contacts().unwrap(), [alice, bob]);
    let old: Vec<i64> = store
        .outbox_enqueued_before(50, 10)
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(old, [b1]);
    assert_eq!(store.outbox_enqueued_before(100, 10).unwrap().len(), 3);
    assert_eq!(store.outbox_enqueued_before(49, 10).unwrap().len(), 0);

    assert_eq!(
        store
            .write(|tx| tx.remove_outbox_kind(alice, OutboxKind::ContactRequest))
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .write(|tx| tx.remove_outbox_kind(alice, OutboxKind::ContactRequest))
            .unwrap(),
        0
    );
    assert!(store.write(|tx| tx.remove_outbox(b1)).unwrap());
    assert!(!store.write(|tx| tx.remove_outbox(b1)).unwrap());
    assert!(!store.has_outbox(alice).unwrap() && !store.has_outbox(bob).unwrap());
    assert!(store.outbox_contacts().unwrap().is_empty());
    // Outbox ids are never reused either.
    let again = store
        .write(|tx| tx.enqueue(bob, OutboxKind::ContactResponse, None, b"x", 1))
        .unwrap();
    assert!(again > b1);
}

#[test]
fn enqueue_checks_the_message_it_points_at() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let bob = add_contact(&mut store, 2);
    let out = queue(&mut store, alice, 1, "x").into_message();
    let inc = receive(&mut store, alice, 2, "y").into_message();
    let id = store
        .write(|tx| tx.enqueue(alice, OutboxKind::Chat, Some(out.row), b"again", 3))
        .unwrap();
    assert_eq!(
        store.outbox_item(id).unwrap().unwrap().message_row,
        Some(out.row)
    );
    for (contact, row) in [(bob, out.row), (alice, inc.row)] {
        let error = store
            .write(|tx| tx.enqueue(contact, OutboxKind::Chat, Some(row), b"x", 3))
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Invalid, "{error}");
    }
    let error = store
        .write(|tx| tx.enqueue(alice, OutboxKind::Chat, Some(out.row + 99), b"x", 3))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    let error = store
        .write(|tx| tx.enqueue(bob + 99, OutboxKind::ContactRequest, None, b"x", 3))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
}

#[test]
fn event_log_is_sequenced_paged_and_pruned_without_reuse() {
    let mut store = memory();
    assert_eq!(store.last_event_seq().unwrap(), 0);
    assert_eq!(store.oldest_event_seq(&[]).unwrap(), None);
    let seqs: Vec<u64> = store
        .write(|tx| {
            (0..10)
                .map(|i| tx.append_event("message.received", &format!("{{\"n\":{i}}}"), 100 + i))
                .collect()
        })
        .unwrap();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(store.last_event_seq().unwrap(), seqs[9]);
    assert_eq!(store.oldest_event_seq(&[]).unwrap(), Some(seqs[0]));

    let page = store.events_since(seqs[2], 3).unwrap();
    let got: Vec<u64> = page.iter().map(|e| e.seq).collect();
    assert_eq!(got, seqs[3..6]);
    assert_eq!(page[0].kind, "message.received");
    assert_eq!(page[0].data, "{\"n\":3}");
    assert_eq!(page[0].at, 103);
    assert_eq!(store.events_since(0, 100).unwrap().len(), 10);
    assert!(store.events_since(seqs[9], 100).unwrap().is_empty());
    assert!(store.events_since(u64::MAX, 100).unwrap().is_empty());

    assert_eq!(store.write(|tx| tx.prune_events(4, &[], 0)).unwrap(), 6);
    assert_eq!(store.oldest_event_seq(&[]).unwrap(), Some(seqs[6]));
    assert_eq!(store.write(|tx| tx.prune_events(4, &[], 0)).unwrap(), 0);
    assert_eq!(store.write(|tx| tx.prune_events(100, &[], 0)).unwrap(), 0);
    assert_eq!(store.write(|tx| tx.prune_events(0, &[], 0)).unwrap(), 4);
    assert_eq!(store.oldest_event_seq(&[]).unwrap(), None);
    // The sequence carries on after everything was pruned.
    assert_eq!(store.last_event_seq().unwrap(), seqs[9]);
    let next = store.write(|tx| tx.append_event("x", "null", 1)).unwrap();
    assert!(next > seqs[9]);
}

#[test]
fn churn_events_are_retained_apart_and_never_push_others_out() {
    const CHURN: &[&str] = &["frontend.attached", "frontend.detached"];
    let mut store = Store::open_in_memory().unwrap();
    let mut messages = Vec::new();
    for n in 0..5 {
        messages.push(
            store
                .write(|tx| tx.append_event("message.received", &format!("{{\"n\":{n}}}"), 1))
                .unwrap(),
        );
        // A polling frontend: many attach/detach pairs between any two messages.
        for _ in 0..20 {
            store
                .write(|tx| {
                    tx.append_event("frontend.attached", "{}", 1)?;
                    tx.append_event("frontend.detached", "{}", 1)
                })
                .unwrap();
        }
    }
    // Keep 3 messages and 10 churn events: 2 messages and 190 churn events go.
    assert_eq!(
        store.write(|tx| tx.prune_events(3, CHURN, 10)).unwrap(),
        192
    );
    let left = store.events_since(0, 1000).unwrap();
    let kept: Vec<u64> = left
        .iter()
        .filter(|e| e.kind == "message.received")
        .map(|e| e.seq)
        .collect();
    assert_eq!(kept, messages[2..]);
    assert_eq!(left.len(), 3 + 10);
    // The oldest kept event, for gap detection, ignores churn: every message after it is kept.
    assert_eq!(store.oldest_event_seq(CHURN).unwrap(), Some(messages[2]));
    // Nothing more to prune.
    assert_eq!(store.write(|tx| tx.prune_events(3, CHURN, 10)).unwrap(), 0);
}

#[test]
fn event_sequence_survives_pruning_and_reopening() {
    let (profile, mut store) = Profile::new(b"pw");
    let last = store
        .write(|tx| {
            tx.append_event("a", "{}", 1)?;
            tx.append_event("b", "[]", 2)
        })
        .unwrap();
    store.write(|tx| tx.prune_events(0, &[], 0)).unwrap();
    drop(store);
    let mut store = profile.open();
    assert_eq!(store.last_event_seq().unwrap(), last);
    assert!(store.write(|tx| tx.append_event("c", "1", 3)).unwrap() > last);
}

#[test]
fn event_data_must_be_json() {
    let mut store = memory();
    let error = store
        .write(|tx| tx.append_event("x", "{not json", 1))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert!(error.to_string().contains("JSON"), "{error}");
    let error = store.write(|tx| tx.append_event("", "{}", 1)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert_eq!(store.last_event_seq().unwrap(), 0);
}

#[test]
fn failed_write_rolls_back_everything() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let error = store
        .write(|tx| {
            tx.store_incoming(&incoming(alice, 1, "kept?", 10))?;
            tx.append_event("message.received", "{}", 10)?;
            Err::<(), _>(Error::Invalid {
                what: "test",
                reason: "abort".into(),
            })
        })
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert!(store.history(alice, None, 10).unwrap().is_empty());
    assert_eq!(store.last_event_seq().unwrap(), 0);
}

#[test]
fn panicking_write_rolls_back_and_the_store_stays_usable() {
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = store.write(|tx| {
            tx.store_incoming(&incoming(alice, 1, "lost", 10))?;
            panic!("engine bug");
            #[allow(unreachable_code)]
            Ok(())
        });
    }));
    assert!(outcome.is_err());
    assert!(store.is_idle(), "the unwinding rolled the transaction back");
    assert!(store.history(alice, None, 10).unwrap().is_empty());
    assert!(receive(&mut store, alice, 1, "again").is_new());
}

#[test]
fn write_with_carries_the_callers_error_type() {
    #[derive(Debug)]
    enum EngineError {
        NotAccepted,
        Store(Error),
    }
    impl From<Error> for EngineError {
        fn from(e: Error) -> Self {
            EngineError::Store(e)
        }
    }
    let mut store = memory();
    let alice = add_contact(&mut store, 1);
    let result: Result<(), EngineError> = store.write_with(|tx| {
        let contact = tx.contact(alice)?.ok_or(EngineError::NotAccepted)?;
        tx.store_incoming(&incoming(contact.id, 1, "x", 1))?;
        Err(EngineError::NotAccepted)
    });
    assert!(matches!(result, Err(EngineError::NotAccepted)));
    assert!(store.history(alice, None, 1).unwrap().is_empty());
    let result: Result<i64, EngineError> =
        store.write_with(|tx| Ok(tx.insert_contact(&new_contact(1, "dup", 1))?));
    assert!(matches!(
        result,
        Err(EngineError::Store(Error::AlreadyExists { .. }))
    ));
}

#[test]
fn reads_inside_a_write_see_its_own_changes() {
    let mut store = memory();
    store
        .write(|tx| {
            let id = tx.insert_contact(&new_contact(1, "alice", 1))?;
            assert_eq!(tx.contact(id)?.unwrap().nickname, "alice");
            tx.store_incoming(&incoming(id, 1, "x", 2))?;
            assert_eq!(tx.history(id, None, 10)?.len(), 1);
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_second_writer_gets_busy_not_a_hang() {
    let (profile, mut store) = Profile::new(b"pw");
    let alice = add_contact(&mut store, 1);
    let mut other = profile.open();
    // Hold the write lock on the first connection while the second tries to write.
    let conn = store.connection();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn.busy_timeout(std::time::Duration::from_millis(1))
        .unwrap();
    other
        .connection()
        .busy_timeout(std::time::Duration::from_millis(50))
        .unwrap();
    let error = other
        .write(|tx| tx.store_incoming(&incoming(alice, 1, "x", 1)))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Busy, "{error}");
    assert!(error.to_string().contains("carom.db"));
    conn.execute_batch("ROLLBACK").unwrap();
    assert!(
        other
            .write(|tx| tx.store_incoming(&incoming(alice, 1, "x", 1)))
            .unwrap()
            .is_new()
    );
}

#[test]
fn times_too_large_for_sqlite_are_refused() {
    let mut store = memory();
    let error = store
        .write(|tx| tx.insert_contact(&new_contact(1, "x", u64::MAX)))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert!(store.contacts().unwrap().is_empty());
}

#[test]
fn close_reports_success() {
    let (profile, store) = Profile::new(b"pw");
    store.close().unwrap();
    profile.open().check_integrity().unwrap();
}

#[test]
fn bridge_lines_are_kept_forgotten_or_explicitly_none_and_survive_reopening() {
    let (profile, mut store) = Profile::new(b"pw");
    assert_eq!(store.tor_bridges().unwrap(), None);
    let lines = vec![
        "obfs4 192.0.2.3:443 0123456789ABCDEF0123456789ABCDEF01234567 cert=x iat-mode=0".to_owned(),
        "192.0.2.4:9001 0123456789ABCDEF0123456789ABCDEF01234567".to_owned(),
    ];
    store.write(|tx| tx.set_tor_bridges(Some(&lines))).unwrap();
    assert_eq!(store.tor_bridges().unwrap(), Some(lines.clone()));
    store.close().unwrap();
    let mut store = profile.open();
    assert_eq!(store.tor_bridges().unwrap(), Some(lines));
    store.write(|tx| tx.set_tor_bridges(Some(&[]))).unwrap();
    assert_eq!(store.tor_bridges().unwrap(), Some(Vec::new()));
    let e = store
        .write(|tx| tx.set_tor_bridges(Some(&["a\nb".to_owned()])))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert_eq!(store.tor_bridges().unwrap(), Some(Vec::new()));
    store.write(|tx| tx.set_tor_bridges(None)).unwrap();
    assert_eq!(store.tor_bridges().unwrap(), None);
}
