//! Erasure that really erases: a body erased by expiry, by delete for everyone or by a local
//! delete is gone from every decrypted page of the database (free ones too) and from the WAL,
//! not merely from query results. Each test first finds the marker where it was stored (the
//! scan works), then shows it gone.

use super::*;
use crate::forensic::Image;
use crate::{MessageKind, MessageStatus, OutboxKind, StoreRead, TimerChange, TimerStamp};

const MINUTE: u64 = 60_000;

/// Pages (database and WAL) whose plaintext holds `marker`.
fn found(profile: &Profile, marker: &str) -> usize {
    let image = Image::read(&profile.db_path, &profile.key).unwrap();
    image.pages_containing(marker.as_bytes()).len()
}

/// A marker as a message body, long enough that a stray match is impossible; with some text
/// around it, as a real body would have.
fn marker(name: &str) -> String {
    format!("before MARKER-{name}-7f3a9c1e5b2d4680 after")
}

fn disappearing_in(contact_id: i64, n: u64, body: &str, now: u64, secs: u32) -> NewIncoming {
    NewIncoming {
        expires_after: Some(secs),
        ..incoming(contact_id, n, body, now)
    }
}

#[test]
fn the_scan_reads_every_page_of_the_file_and_the_wal() {
    let (profile, mut store) = Profile::new(b"pw");
    let contact = add_contact(&mut store, 1);
    let body = marker("scan");
    receive(&mut store, contact, 1, &body);
    // Committed, not checkpointed: the marker is in the WAL only.
    let image = Image::read(&profile.db_path, &profile.key).unwrap();
    assert!(image.wal_bytes > 0);
    let pages = image.pages_containing(body.as_bytes());
    assert!(!pages.is_empty(), "the marker must be found where it is");
    assert!(
        pages
            .iter()
            .all(|p| matches!(p.source, crate::forensic::PageSource::Wal(_)))
    );
    // After a checkpoint, in the file.
    store.checkpoint().unwrap();
    let image = Image::read(&profile.db_path, &profile.key).unwrap();
    assert_eq!(image.wal_bytes, 0);
    assert!(!image.pages_containing(body.as_bytes()).is_empty());
    // The wrong key is refused, not read as noise.
    let wrong = DbKey::from_bytes([7; crate::DB_KEY_LEN]);
    assert!(Image::read(&profile.db_path, &wrong).is_err());
}

#[test]
fn an_expired_message_is_gone_from_every_page_and_from_the_wal() {
    let (profile, mut store) = Profile::new(b"pw");
    let contact = add_contact(&mut store, 1);
    let gone = marker("expired");
    let kept = marker("kept");
    let sent = marker("sent-expiring");
    store
        .write(|tx| {
            tx.store_incoming(&disappearing_in(contact, 1, &gone, 1_000, 60))?;
            tx.store_incoming(&incoming(contact, 2, &kept, 1_000))?;
            tx.queue_outgoing(&NewOutgoing {
                expires_after: Some(60),
                payload: format!("wire copy: {sent}").into_bytes(),
                ..outgoing(contact, 3, &sent, 1_000)
            })
        })
        .unwrap();
    // Some of it reaches the file too, so both places are tested.
    store.checkpoint().unwrap();
    receive(&mut store, contact, 4, "more traffic");
    assert!(found(&profile, &gone) > 0);
    assert!(found(&profile, &sent) > 0);
    assert_eq!(store.next_expiry().unwrap(), Some(1_000 + MINUTE));

    // Not yet due: nothing goes.
    let early = store
        .write(|tx| tx.erase_expired(1_000 + MINUTE - 1, 100))
        .unwrap();
    assert!(early.messages.is_empty());
    assert_eq!(early.next, Some(1_000 + MINUTE));

    let erased = store
        .write(|tx| tx.erase_expired(1_000 + MINUTE, 100))
        .unwrap();
    assert_eq!(erased.messages.len(), 2);
    assert_eq!(erased.next, None);
    store.checkpoint().unwrap();
    assert_eq!(found(&profile, &gone), 0, "an expired body survived");
    assert_eq!(
        found(&profile, &sent),
        0,
        "an expired outgoing body survived"
    );
    assert!(
        found(&profile, &kept) > 0,
        "a message without a timer stays"
    );
    // Its outbox item went with it.
    assert!(store.outbox_for_contact(contact).unwrap().is_empty());
    assert_eq!(store.erasure_high_water().unwrap(), 1_000 + MINUTE);
    // And nothing else in the directory holds it in the clear.
    for (path, bytes) in files_in(profile.dir.path()) {
        assert!(!contains(&bytes, gone.as_bytes()), "{}", path.display());
    }
}

#[test]
fn without_a_checkpoint_the_wal_still_holds_the_old_page() {
    // Why erasure checkpoints: `secure_delete` overwrites the page, but the WAL keeps the
    // page's earlier version until the next checkpoint.
    let (profile, mut store) = Profile::new(b"pw");
    let contact = add_contact(&mut store, 1);
    let body = marker("wal");
    store
        .write(|tx| tx.store_incoming(&disappearing_in(contact, 1, &body, 1_000, 1)))
        .unwrap();
    store
        .write(|tx| tx.erase_expired(u64::MAX / 2, 10))
        .unwrap();
    assert!(found(&profile, &body) > 0);
    store.checkpoint().unwrap();
    assert_eq!(found(&profile, &body), 0);
}

#[test]
fn erasure_goes_in_bounded_batches_oldest_first() {
    let (_profile, mut store) = Profile::new(b"pw");
    let contact = add_contact(&mut store, 1);
    store
        .write(|tx| {
            for n in 0..10u64 {
                tx.store_incoming(&disappearing_in(contact, n, "x", 1_000 + n, 1))?;
            }
            Ok(())
        })
        .unwrap();
    let first = store.write(|tx| tx.erase_expired(1_000_000, 4)).unwrap();
    assert_eq!(first.messages.len(), 4);
    // The rest are due already: the caller goes on at once.
    assert_eq!(first.next, Some(2_004));
    let rows: Vec<i64> = first.messages.iter().map(|(_, row)| *row).collect();
    let remaining = store.history(contact, None, 100).unwrap();
    assert!(remaining.iter().all(|m| !rows.contains(&m.row)));
    assert_eq!(remaining.len(), 6);
    let rest = store.write(|tx| tx.erase_expired(1_000_000, 100)).unwrap();
    assert_eq!(rest.messages.len(), 6);
    assert_eq!(rest.next, None);
    let c = store.contact(contact).unwrap().unwrap();
    assert!(store.history(c.id, None, 10).unwrap().is_empty());
}

#[test]
fn a_local_delete_is_gone_from_every_page_after_a_checkpoint() {
    let (profile, mut store) = Profile::new(b"pw");
    let contact = add_contact(&mut store, 1);
    let body = marker("local");
    let m = receive(&mut store, contact, 1, &body).into_message();
    store.checkpoint().unwrap();
    assert!(found(&profile, &body) > 0);
    assert!(store.write(|tx| tx.delete_message(m.row)).unwrap());
    store.checkpoint().unwrap();
    assert_eq!(found(&profile, &body), 0);
}

#[test]
fn a_withdrawal_leaves_a_tombstone_and_no_body() {
    let (profile, mut store) = Profile::new(b"pw");
    let contact = add_contact(&mut store, 1);
    let theirs = marker("theirs");
    let ours = marker("ours");
    let received = receive(&mut store, contact, 1, &theirs).into_message();
    let queued = store
        .write(|tx| {
            tx.queue_outgoing(&NewOutgoing {
                payload: format!("wire copy: {ours}").into_bytes(),
                ..outgoing(contact, 2, &ours, 2_000)
            })
        })
        .unwrap()
        .into_message();
    store.checkpoint().unwrap();
    assert!(found(&profile, &theirs) > 0);
    assert!(found(&profile, &ours) > 0);

    // The peer withdraws its message: a tombstone in its place.
    let (tombstone, existed) = store
        .write(|tx| tx.withdraw_incoming(contact, &msg_id(1), 3_000))
        .unwrap();
    assert!(existed);
    assert_eq!(tombstone.row, received.row);
    assert_eq!(tombstone.kind, MessageKind::Deleted);
    assert!(tombstone.body.is_empty());
    // Again (a retried withdrawal): nothing changes.
    let (again, existed) = store
        .write(|tx| tx.withdraw_incoming(contact, &msg_id(1), 3_001))
        .unwrap();
    assert!(!existed);
    assert_eq!(again, tombstone);

    // We withdraw ours while it is still queued: its delivery stops, the withdrawal waits.
    let withdrawal = b"withdrawal wire form".to_vec();
    let ours_gone = store
        .write(|tx| tx.withdraw_outgoing(queued.row, &withdrawal, 3_000))
        .unwrap();
    assert_eq!(ours_gone.kind, MessageKind::Deleted);
    let outbox = store.outbox_for_contact(contact).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].kind, OutboxKind::Withdraw);
    assert_eq!(outbox[0].payload, withdrawal);
    assert_eq!(outbox[0].message_row, None);
    // Only our own chats can be withdrawn.
    assert!(
        store
            .write(|tx| tx.withdraw_outgoing(received.row, b"x", 3_000))
            .is_err()
    );

    store.checkpoint().unwrap();
    assert_eq!(found(&profile, &theirs), 0, "the withdrawn body survived");
    assert_eq!(found(&profile, &ours), 0, "our withdrawn body survived");
    // Both places stay in the history, in order.
    let history = store.history(contact, None, 10).unwrap();
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|m| m.kind == MessageKind::Deleted));
}

#[test]
fn a_withdrawal_that_arrives_first_keeps_the_late_copy_out() {
    let (_profile, mut store) = Profile::new(b"pw");
    let contact = add_contact(&mut store, 1);
    let (tombstone, existed) = store
        .write(|tx| tx.withdraw_incoming(contact, &msg_id(9), 1_000))
        .unwrap();
    assert!(!existed);
    assert_eq!(tombstone.kind, MessageKind::Deleted);
    // The chat itself, late: a duplicate, never stored.
    let late = receive(&mut store, contact, 9, "too late");
    assert!(!late.is_new());
    assert_eq!(late.message().kind, MessageKind::Deleted);
    assert!(late.message().body.is_empty());
}

fn change(contact_id: i64, sent_at: u64, id: u8, timer: Option<u32>) -> TimerChange {
    TimerChange {
        contact_id,
        stamp: TimerStamp {
            sent_at,
            id: [id; 16],
        },
        timer,
        now: 5_000,
    }
}

#[test]
fn concurrent_timer_changes_settle_on_the_same_one_in_either_order() {
    // Alice and Bob change the timer at once; each end sees its own change first and the
    // other's second. Both must end with the same setting: the greater (sent_at, id).
    let cases = [
        // (ours, theirs, winner is ours)
        ((100, 1, Some(60)), (200, 2, Some(3_600)), false),
        ((300, 1, Some(60)), (200, 2, None), true),
        // The same millisecond: the id decides.
        ((100, 9, Some(60)), (100, 2, Some(300)), true),
    ];
    for ((o_at, o_id, o_timer), (t_at, t_id, t_timer), ours_wins) in cases {
        let (_profile, mut store) = Profile::new(b"pw");
        let contact = add_contact(&mut store, 1);
        store
            .write(|tx| tx.queue_timer_change(&change(contact, o_at, o_id, o_timer), b"wire"))
            .unwrap();
        let stored = store
            .write(|tx| tx.store_timer_change(&change(contact, t_at, t_id, t_timer)))
            .unwrap();
        assert!(stored.new);
        assert_eq!(stored.applied, !ours_wins);
        let expected = if ours_wins { o_timer } else { t_timer };
        assert_eq!(store.contact(contact).unwrap().unwrap().timer, expected);
        // The other end, in the other order.
        let (_profile, mut other) = Profile::new(b"pw");
        let c = add_contact(&mut other, 2);
        other
            .write(|tx| tx.queue_timer_change(&change(c, t_at, t_id, t_timer), b"wire"))
            .unwrap();
        other
            .write(|tx| tx.store_timer_change(&change(c, o_at, o_id, o_timer)))
            .unwrap();
        assert_eq!(other.contact(c).unwrap().unwrap().timer, expected);
        // Both histories show both changes.
        let kinds: Vec<_> = store
            .history(contact, None, 10)
            .unwrap()
            .iter()
            .map(|m| (m.kind, m.timer))
            .collect();
        assert_eq!(kinds.len(), 2);
        assert!(kinds.iter().all(|(k, _)| *k == MessageKind::Timer));
    }
}

#[test]
fn a_timer_change_is_stored_once_and_an_older_one_of_ours_is_refused() {
    let (_profile, mut store) = Profile::new(b"pw");
    let contact = add_contact(&mut store, 1);
    let theirs = change(contact, 1_000, 1, Some(60));
    let first = store.write(|tx| tx.store_timer_change(&theirs)).unwrap();
    assert!(first.new && first.applied);
    assert_eq!(first.message.status, MessageStatus::Received);
    let again = store.write(|tx| tx.store_timer_change(&theirs)).unwrap();
    assert!(!again.new && !again.applied);
    assert_eq!(again.message.row, first.message.row);
    // Ours must be newer than the one in force: a stale clock cannot make the ends disagree.
    let stale = change(contact, 999, 9, None);
    assert!(
        store
            .write(|tx| tx.queue_timer_change(&stale, b"wire"))
            .is_err()
    );
    assert_eq!(store.contact(contact).unwrap().unwrap().timer, Some(60));
    let stamp = store.write(|tx| tx.timer_stamp(contact)).unwrap();
    assert_eq!(
        stamp,
        Some(TimerStamp {
            sent_at: 1_000,
            id: [1; 16]
        })
    );
}

#[test]
fn expired_group_messages_are_gone_from_every_page_with_their_queued_copies() {
    use crate::{GroupState, NewGroupChat, NewGroupIncoming};
    let (profile, mut store) = Profile::new(b"pw");
    let member = add_contact(&mut store, 1);
    let group = store
        .write(|tx| tx.insert_group(&[4; 16], GroupState::Member, 1))
        .unwrap();
    let theirs = marker("group-in-expiring");
    let ours = marker("group-out-expiring");
    let kept = marker("group-kept");
    let incoming = |n: u8, body: &str, timer| NewGroupIncoming {
        group_row: group.row,
        sender: [1; 32],
        msg_id: [n; 16],
        heads: vec![[1; 32]],
        sent_at: 900,
        body: body.into(),
        reply_to: None,
        now: 1_000,
        expires_after: timer,
        expires_from: None,
    };
    store
        .write(|tx| {
            tx.store_group_incoming(&incoming(1, &theirs, Some(60)))?;
            tx.store_group_incoming(&incoming(2, &kept, None))?;
            tx.queue_group_chat(&NewGroupChat {
                group_row: group.row,
                sender: [9; 32],
                msg_id: [3; 16],
                heads: vec![[1; 32]],
                sent_at: 1_000,
                body: ours.clone(),
                reply_to: None,
                client_token: None,
                recipients: vec![(member, [1; 32])],
                unreachable: vec![],
                payload: format!("wire copy: {ours}").into_bytes(),
                now: 1_000,
                expires_after: Some(60),
                expires_from: None,
            })
        })
        .unwrap();
    store.checkpoint().unwrap();
    assert!(found(&profile, &theirs) > 0);
    assert_eq!(found(&profile, &ours), 2, "the message and its queued copy");
    assert_eq!(store.next_expiry().unwrap(), Some(1_000 + MINUTE));
    assert!(store.has_outbox(member).unwrap());

    let early = store
        .write(|tx| tx.erase_expired(1_000 + MINUTE - 1, 500))
        .unwrap();
    assert!(early.group_messages.is_empty());
    // The batch limit counts both kinds.
    let one = store
        .write(|tx| tx.erase_expired(1_000 + MINUTE, 1))
        .unwrap();
    assert_eq!(one.messages.len() + one.group_messages.len(), 1);
    let rest = store
        .write(|tx| tx.erase_expired(1_000 + MINUTE, 500))
        .unwrap();
    assert_eq!(one.group_messages.len() + rest.group_messages.len(), 2);
    assert!(
        one.group_messages
            .iter()
            .chain(&rest.group_messages)
            .all(|(g, _)| *g == group.row)
    );
    assert_eq!(rest.next, None);
    assert!(
        !store.has_outbox(member).unwrap(),
        "its queued copy went too"
    );
    store.checkpoint().unwrap();
    assert_eq!(found(&profile, &theirs), 0);
    assert_eq!(found(&profile, &ours), 0);
    assert!(found(&profile, &kept) > 0);
    let left: Vec<String> = store
        .group_history(group.row, None, 10)
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(left, [kept]);
}

#[test]
fn a_group_message_withdrawn_leaves_tombstones_and_no_body_at_either_end() {
    use crate::{DeliveryStatus, GroupReceived, GroupState, NewGroupChat, NewGroupIncoming};
    let (profile, mut store) = Profile::new(b"pw");
    let bob = add_contact(&mut store, 1);
    let carol = add_contact(&mut store, 2);
    let group = store
        .write(|tx| tx.insert_group(&[4; 16], GroupState::Member, 1))
        .unwrap();
    let ours = marker("group-withdrawn-out");
    let theirs = marker("group-withdrawn-in");
    let queued = store
        .write(|tx| {
            tx.queue_group_chat(&NewGroupChat {
                group_row: group.row,
                sender: [9; 32],
                msg_id: [3; 16],
                heads: vec![[1; 32]],
                sent_at: 1_000,
                body: ours.clone(),
                reply_to: None,
                client_token: None,
                recipients: vec![(bob, [1; 32]), (carol, [2; 32])],
                unreachable: vec![],
                payload: format!("wire copy: {ours}").into_bytes(),
                now: 1_000,
                expires_after: None,
                expires_from: None,
            })
        })
        .unwrap();
    let crate::GroupQueued::New(m) = queued else {
        panic!("new")
    };
    // Bob has it; Carol's copy is still queued.
    store
        .write(|tx| tx.set_group_delivery(m.row, &[1; 32], DeliveryStatus::Delivered, None, 1_100))
        .unwrap();
    let incoming = NewGroupIncoming {
        group_row: group.row,
        sender: [1; 32],
        msg_id: [5; 16],
        heads: vec![[1; 32]],
        sent_at: 900,
        body: theirs.clone(),
        reply_to: None,
        now: 1_000,
        expires_after: None,
        expires_from: None,
    };
    store
        .write(|tx| tx.store_group_incoming(&incoming))
        .unwrap();
    store.checkpoint().unwrap();
    assert!(found(&profile, &ours) > 0 && found(&profile, &theirs) > 0);

    let tomb = store
        .write(|tx| {
            tx.withdraw_group_outgoing(
                m.row,
                &[(bob, [1; 32]), (carol, [2; 32])],
                b"withdraw",
                1_200,
            )
        })
        .unwrap();
    assert_eq!(tomb.kind, MessageKind::Deleted);
    assert!(tomb.body.is_empty());
    let deliveries = store.group_deliveries(m.row).unwrap();
    let carols = deliveries.iter().find(|d| d.recipient == [2; 32]).unwrap();
    assert_eq!(carols.status, DeliveryStatus::Failed);
    assert_eq!(carols.failure.as_deref(), Some("withdrawn"));
    for contact in [bob, carol] {
        let items = store.outbox_for_contact(contact).unwrap();
        let kinds: Vec<OutboxKind> = items.iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [OutboxKind::Withdraw],
            "the copy went, the withdrawal is queued"
        );
    }
    assert!(
        store
            .write(|tx| tx.withdraw_group_outgoing(m.row, &[], b"again", 1_300))
            .is_err(),
        "a tombstone is not withdrawn twice"
    );

    // Theirs: only its sender withdraws it; someone who is no member leaves nothing.
    let nothing = store
        .write(|tx| tx.withdraw_group_incoming(group.row, &[7; 32], &[5; 16], None, 1_300))
        .unwrap();
    assert!(nothing.is_none());
    assert_eq!(store.group_history(group.row, None, 10).unwrap().len(), 2);
    let (not_theirs, erased) = store
        .write(|tx| {
            tx.withdraw_group_incoming(group.row, &[2; 32], &[5; 16], Some(&[[1; 32]]), 1_300)
        })
        .unwrap()
        .unwrap();
    assert!(!erased);
    assert_eq!(
        not_theirs.kind,
        MessageKind::Deleted,
        "a tombstone for Carol's id, not Bob's message"
    );
    let (tomb, erased) = store
        .write(|tx| tx.withdraw_group_incoming(group.row, &[1; 32], &[5; 16], None, 1_300))
        .unwrap()
        .unwrap();
    assert!(erased);
    assert_eq!(tomb.kind, MessageKind::Deleted);
    // A withdrawal that comes first keeps the late copy out.
    let (early, erased) = store
        .write(|tx| {
            tx.withdraw_group_incoming(group.row, &[1; 32], &[6; 16], Some(&[[1; 32]]), 1_400)
        })
        .unwrap()
        .unwrap();
    assert!(!erased);
    let late = store
        .write(|tx| {
            tx.store_group_incoming(&NewGroupIncoming {
                msg_id: [6; 16],
                body: marker("group-late"),
                ..incoming.clone()
            })
        })
        .unwrap();
    assert!(matches!(late, GroupReceived::Duplicate(m) if m.row == early.row && m.body.is_empty()));

    store.checkpoint().unwrap();
    assert_eq!(
        found(&profile, &ours),
        0,
        "our body, and its queued copy, are gone"
    );
    assert_eq!(found(&profile, &theirs), 0);
    assert_eq!(found(&profile, &marker("group-late")), 0);
}
