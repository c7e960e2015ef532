//! Groups: histories kept in order, messages exactly once, per-recipient delivery, and the
//! outbox rebuilt by version 4 without losing an item or reusing an id.

use super::*;
use crate::schema::{self, MIGRATIONS};
use crate::store::{apply_key, configure_durable};
use crate::{
    DeliveryStatus, Error, GroupQueued, GroupReceived, GroupState, NewGroupChat, NewGroupIncoming,
    OutboxKind, StoreRead, StoredOperation,
};

fn op(n: u8) -> StoredOperation {
    StoredOperation {
        op_id: [n; 32],
        body: vec![n; 40],
        signature: [n; 64],
    }
}

fn chat(group_row: i64, recipients: Vec<(i64, [u8; 32])>, token: &str) -> NewGroupChat {
    NewGroupChat {
        group_row,
        sender: [9; 32],
        msg_id: msg_id(7),
        heads: vec![[1; 32], [2; 32]],
        sent_at: 100,
        body: "to all".into(),
        reply_to: None,
        client_token: Some(token.into()),
        recipients,
        unreachable: vec![([5; 32], "not a contact".into())],
        payload: b"wire".to_vec(),
        now: 101,
        expires_after: None,
        expires_from: None,
    }
}

#[test]
fn a_history_comes_back_in_the_order_added_without_duplicates() {
    let (_profile, mut store) = Profile::new(b"pw");
    let group = store
        .write(|tx| tx.insert_group(&[4; 16], GroupState::Member, 1))
        .unwrap();
    assert!(matches!(
        store.write(|tx| tx.insert_group(&[4; 16], GroupState::Invited, 2)),
        Err(Error::AlreadyExists { .. })
    ));
    let added = store
        .write(|tx| tx.add_group_operations(group.row, &[op(3), op(1)]))
        .unwrap();
    assert_eq!(added, 2);
    let added = store
        .write(|tx| tx.add_group_operations(group.row, &[op(1), op(2)]))
        .unwrap();
    assert_eq!(added, 1);
    let ids: Vec<u8> = store
        .group_operations(group.row)
        .unwrap()
        .iter()
        .map(|o| o.op_id[0])
        .collect();
    assert_eq!(ids, [3, 1, 2]);
    store
        .write(|tx| tx.set_group_state(group.row, GroupState::Left, 5))
        .unwrap();
    assert_eq!(
        store.group(&[4; 16]).unwrap().map(|g| g.state),
        Some(GroupState::Left)
    );
    assert!(matches!(
        store.write(|tx| tx.add_group_operations(999, &[op(5)])),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn an_outgoing_group_message_is_queued_once_per_recipient_and_delivered_per_recipient() {
    let (_profile, mut store) = Profile::new(b"pw");
    let bob = add_contact(&mut store, 2);
    let carol = add_contact(&mut store, 3);
    let group = store
        .write(|tx| tx.insert_group(&[4; 16], GroupState::Member, 1))
        .unwrap();
    let recipients = vec![(bob, [2; 32]), (carol, [3; 32])];
    let GroupQueued::New(message) = store
        .write(|tx| tx.queue_group_chat(&chat(group.row, recipients.clone(), "t1")))
        .unwrap()
    else {
        panic!("queued anew");
    };
    // The same client token again: nothing more is stored.
    assert!(matches!(
        store
            .write(|tx| tx.queue_group_chat(&chat(group.row, recipients, "t1")))
            .unwrap(),
        GroupQueued::Existing(_)
    ));
    for contact in [bob, carol] {
        let items = store.outbox_for_contact(contact).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].kind, OutboxKind::GroupChat);
        assert_eq!(items[0].group_message_row, Some(message.row));
        assert_eq!(items[0].message_row, None);
    }
    assert!(
        store
            .write(|tx| tx.set_group_delivery(
                message.row,
                &[2; 32],
                DeliveryStatus::Delivered,
                None,
                200
            ))
            .unwrap()
    );
    // Delivered stays delivered.
    assert!(
        !store
            .write(|tx| tx.set_group_delivery(
                message.row,
                &[2; 32],
                DeliveryStatus::Failed,
                Some("late"),
                300
            ))
            .unwrap()
    );
    let statuses: Vec<_> = store
        .group_deliveries(message.row)
        .unwrap()
        .into_iter()
        .map(|d| (d.recipient[0], d.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (2, DeliveryStatus::Delivered),
            (3, DeliveryStatus::Queued),
            (5, DeliveryStatus::Failed)
        ]
    );
    let stored = store.group_message(message.row).unwrap().unwrap();
    assert_eq!(stored.heads, vec![[1; 32], [2; 32]]);
}

#[test]
fn an_incoming_group_message_is_stored_exactly_once_per_sender() {
    let (_profile, mut store) = Profile::new(b"pw");
    let group = store
        .write(|tx| tx.insert_group(&[4; 16], GroupState::Member, 1))
        .unwrap();
    let incoming = |sender: u8| NewGroupIncoming {
        group_row: group.row,
        sender: [sender; 32],
        msg_id: msg_id(1),
        heads: vec![[1; 32]],
        sent_at: 5,
        body: "hi".into(),
        reply_to: Some(msg_id(0)),
        now: 6,
        expires_after: None,
        expires_from: None,
    };
    assert!(matches!(
        store
            .write(|tx| tx.store_group_incoming(&incoming(2)))
            .unwrap(),
        GroupReceived::New(_)
    ));
    assert!(matches!(
        store
            .write(|tx| tx.store_group_incoming(&incoming(2)))
            .unwrap(),
        GroupReceived::Duplicate(_)
    ));
    // The same id from another sender is another message.
    assert!(matches!(
        store
            .write(|tx| tx.store_group_incoming(&incoming(3)))
            .unwrap(),
        GroupReceived::New(_)
    ));
    let history = store.group_history(group.row, None, 10).unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[0].row > history[1].row, "newest first");
}

#[test]
fn version_four_keeps_every_outbox_item_and_never_reuses_an_outbox_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    let key = crate::DbKey::generate().unwrap();
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        apply_key(&conn, &path, &key).unwrap();
        configure_durable(&conn, &path).unwrap();
        schema::migrate_with(&mut conn, &path, MIGRATIONS, 3).unwrap();
        conn.execute_batch(
            "INSERT INTO contacts (identity, state, nickname, declared_kind, created_at,
                 updated_at) VALUES (zeroblob(32), 'accepted', 'alice', 'human', 1, 1);
             INSERT INTO outbox (contact_id, kind, payload, attempts, next_attempt_at, created_at)
                 VALUES (1, 'contact_request', x'01', 0, 1, 1);
             INSERT INTO outbox (contact_id, kind, payload, attempts, next_attempt_at, created_at)
                 VALUES (1, 'contact_request', x'02', 3, 9, 2);
             INSERT INTO outbox (contact_id, kind, payload, attempts, next_attempt_at, created_at)
                 VALUES (1, 'contact_request', x'03', 0, 1, 3);
             DELETE FROM outbox WHERE id = 3;",
        )
        .unwrap();
    }
    let mut store = Store::open(&path, &key).unwrap();
    let items = store.outbox_for_contact(1).unwrap();
    assert_eq!(
        items
            .iter()
            .map(|i| (i.id, i.payload.clone(), i.attempts))
            .collect::<Vec<_>>(),
        [(1, vec![1], 0), (2, vec![2], 3)]
    );
    // Id 3 was used (and deleted) before the migration: the next item gets 4.
    let next = store
        .write(|tx| tx.queue_group_operations(1, b"ops", 10))
        .unwrap();
    assert_eq!(next, 4);
    store.check_integrity().unwrap();
}

#[test]
fn version_five_keeps_contacts_messages_and_outbox_and_their_cascade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    let key = crate::DbKey::generate().unwrap();
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        apply_key(&conn, &path, &key).unwrap();
        configure_durable(&conn, &path).unwrap();
        schema::migrate_with(&mut conn, &path, MIGRATIONS, 4).unwrap();
        conn.execute_batch(
            "INSERT INTO contacts (identity, state, nickname, declared_kind, peer_static,
                 created_at, updated_at) VALUES (zeroblob(32), 'accepted', 'alice', 'bot',
                 zeroblob(32), 1, 2);
             INSERT INTO contacts (identity, state, nickname, declared_kind, created_at,
                 updated_at) VALUES (x'0101010101010101010101010101010101010101010101010101010101010101',
                 'pending', 'bob', 'human', 3, 3);
             DELETE FROM contacts WHERE id = 2;
             INSERT INTO messages (contact_id, direction, msg_id, sent_at, stored_at, body,
                 status, status_at) VALUES (1, 'incoming', zeroblob(16), 1, 1, 'hi', 'received', 1);
             INSERT INTO outbox (contact_id, kind, payload, attempts, next_attempt_at, created_at)
                 VALUES (1, 'contact_request', x'01', 0, 1, 1);",
        )
        .unwrap();
    }
    let mut store = Store::open(&path, &key).unwrap();
    let alice = store.contact(1).unwrap().unwrap();
    assert_eq!(
        (alice.state, alice.nickname.as_str(), alice.declared_kind),
        (ContactState::Accepted, "alice", PeerKind::Bot)
    );
    assert_eq!(alice.peer_static, Some([0; 32]));
    assert_eq!(store.history(1, None, 10).unwrap().len(), 1);
    assert_eq!(store.outbox_for_contact(1).unwrap().len(), 1);
    // Id 2 was used before the migration: the next contact gets 3.
    let next = store
        .write(|tx| tx.ensure_co_member(&[7; 32], "carol", PeerKind::Human, 5))
        .unwrap();
    assert_eq!(next, 3);
    // References still cascade.
    store.write(|tx| tx.delete_contact(1)).unwrap();
    assert!(store.history(1, None, 10).unwrap().is_empty());
    assert!(store.outbox_for_contact(1).unwrap().is_empty());
    store.check_integrity().unwrap();
}

#[test]
fn a_co_member_row_is_made_once_and_left_alone_when_it_exists() {
    let (_profile, mut store) = Profile::new(b"pw");
    let alice = add_contact(&mut store, 1);
    let (again, carol, carol_again) = store
        .write(|tx| {
            Ok((
                tx.ensure_co_member(&[1; 32], "ignored", PeerKind::Bot, 5)?,
                tx.ensure_co_member(&[3; 32], "carol", PeerKind::Bot, 5)?,
                tx.ensure_co_member(&[3; 32], "other", PeerKind::Human, 6)?,
            ))
        })
        .unwrap();
    assert_eq!(again, alice);
    assert_eq!(carol, carol_again);
    let a = store.contact(alice).unwrap().unwrap();
    assert_eq!(
        (a.state, a.nickname.as_str()),
        (ContactState::Accepted, "friend")
    );
    let c = store.contact(carol).unwrap().unwrap();
    assert_eq!(
        (c.state, c.nickname.as_str(), c.declared_kind),
        (ContactState::CoMember, "carol", PeerKind::Bot)
    );
}

#[test]
fn forgetting_a_contact_keeps_its_row_only_while_group_traffic_waits_for_it() {
    let (_profile, mut store) = Profile::new(b"pw");
    let alice = add_contact(&mut store, 1);
    let bob = add_contact(&mut store, 2);
    assert!(receive(&mut store, alice, 1, "hello").is_new());
    assert!(receive(&mut store, bob, 2, "hello").is_new());
    store
        .write(|tx| {
            tx.queue_group_operations(alice, b"ops", 10)?;
            tx.queue_outgoing(&NewOutgoing {
                contact_id: alice,
                msg_id: msg_id(3),
                sent_at: 10,
                body: "1:1".into(),
                reply_to: None,
                client_token: None,
                payload: b"chat".to_vec(),
                now: 10,
                expires_after: None,
                expires_from: None,
            })?;
            Ok(())
        })
        .unwrap();
    let (kept, deleted, nothing) = store
        .write(|tx| {
            Ok((
                tx.forget_contact(alice, 20)?,
                tx.forget_contact(bob, 20)?,
                tx.forget_contact(99, 20)?,
            ))
        })
        .unwrap();
    let Some(crate::Forgotten::KeptAsCoMember(row)) = kept else {
        panic!("expected the row kept, got {kept:?}");
    };
    assert_eq!(row.state, ContactState::CoMember);
    assert_eq!(deleted, Some(crate::Forgotten::Deleted));
    assert_eq!(nothing, None);
    assert_eq!(
        store.contact(alice).unwrap().unwrap().state,
        ContactState::CoMember
    );
    assert!(store.contact(bob).unwrap().is_none());
    // The 1:1 conversation is gone; the group traffic waits.
    assert!(store.history(alice, None, 10).unwrap().is_empty());
    let left: Vec<OutboxKind> = store
        .outbox_for_contact(alice)
        .unwrap()
        .iter()
        .map(|i| i.kind)
        .collect();
    assert_eq!(left, [OutboxKind::GroupOperations]);
}
