//! Disappearing messages, delete for everyone and local deletes, between engines in virtual
//! time, each with its real encrypted store on disk. Erasure is shown by reading every
//! decrypted page of each database and its WAL (`carom_store::forensic`): a marker found there
//! before is absent after — not merely missing from the history. The same flows run between
//! real daemons over a private Tor network in `tests/tests/ephemeral.rs`.

mod support;

use std::time::Duration;

use carom_api as api;
use carom_store::DbKey;
use carom_store::forensic::Image;
use carom_tor::MemoryNetwork;
use support::advance;
use support::nodes::{LATENCY, Node, pair};

const MINUTE: Duration = Duration::from_secs(60);

/// How many decrypted pages (database and WAL) of `node`'s store hold `marker`.
fn pages_with(node: &Node, marker: &str) -> usize {
    let image = Image::read(&node.db, &DbKey::from_bytes(node.key)).expect("readable");
    image.pages_containing(marker.as_bytes()).len()
}

async fn set_timer(node: &Node, with: &Node, timer: Option<u32>) -> api::Contact {
    node.e()
        .set_timer(api::ContactSetTimer {
            address: with.address.clone(),
            timer,
        })
        .await
        .expect("timer set")
}

async fn timer_of(node: &Node, with: &Node) -> Option<u32> {
    node.e()
        .contact(&with.address)
        .await
        .expect("contact")
        .timer
}

async fn delete(node: &Node, id: i64, for_everyone: bool) {
    node.e()
        .delete_message(api::MessageDelete { id, for_everyone })
        .await
        .expect("deleted");
}

/// Wait for `node` to receive a message from `from` with `body`; its row.
async fn wait_received(node: &Node, from: &Node, body: &str) -> api::Message {
    let mut notify = node.e().event_notifier();
    let deadline = tokio::time::Instant::now() + support::nodes::WAIT;
    loop {
        if let Some(m) = node
            .conversation(from)
            .await
            .into_iter()
            .find(|m| m.direction == api::Direction::In && m.body == body)
        {
            return m;
        }
        tokio::time::timeout_at(deadline, notify.changed())
            .await
            .expect("the message arrives")
            .expect("engine running");
    }
}

/// Alice and Bob, paired, with a `secs` timer Alice set and Bob has.
async fn paired_with_timer(net: &MemoryNetwork, dir: &std::path::Path, secs: u32) -> (Node, Node) {
    let alice = Node::create(net, dir, "alice");
    let bob = Node::create(net, dir, "bob");
    pair(&alice, &bob).await;
    set_timer(&alice, &bob, Some(secs)).await;
    alice.wait_all_delivered(&bob).await;
    (alice, bob)
}

fn run(test: impl AsyncFnOnce(&MemoryNetwork, &std::path::Path)) {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    support::nodes::virtual_time().block_on(test(&net, dir.path()));
}

#[test]
fn a_timer_set_at_one_end_holds_at_both_and_messages_disappear_at_both_ends() {
    run(async |net, dir| {
        let alice = Node::create(net, dir, "alice");
        let bob = Node::create(net, dir, "bob");
        pair(&alice, &bob).await;

        let set = set_timer(&alice, &bob, Some(60)).await;
        assert_eq!(set.timer, Some(60));
        let a = alice.address.clone();
        bob.wait_event(api::event::CONTACT_TIMER, |d| {
            d["address"] == a.as_str() && d["timer"] == 60 && d["by"] == "them"
        })
        .await;
        assert_eq!(timer_of(&bob, &alice).await, Some(60));
        // The change is a conversation item both ends show.
        for (node, other) in [(&alice, &bob), (&bob, &alice)] {
            let items = node.conversation(other).await;
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].kind, api::MessageKind::Timer);
            assert_eq!(items[0].timer, Some(60));
        }

        let to_bob = "MARKER-to-bob-4b1d9e2c: the meeting moved";
        let to_alice = "MARKER-to-alice-77c0aa31: understood";
        let sent = alice.send(&bob, to_bob).await;
        assert_eq!(sent.timer, Some(60));
        let got = wait_received(&bob, &alice, to_bob).await;
        assert_eq!(
            got.timer,
            Some(60),
            "it carries the timer it was sent under"
        );
        // Bob's reply goes under the same (agreed) timer.
        bob.send(&alice, to_alice).await;
        wait_received(&alice, &bob, to_alice).await;
        for marker in [to_bob, to_alice] {
            assert!(pages_with(&alice, marker) > 0, "stored at Alice's");
            assert!(pages_with(&bob, marker) > 0, "stored at Bob's");
        }

        // A minute after each end stored them, both ends erase them, unattended.
        advance(MINUTE + Duration::from_secs(5)).await;
        for (node, other) in [(&alice, &bob), (&bob, &alice)] {
            let o = other.address.clone();
            node.wait_event(api::event::MESSAGE_EXPIRED, |d| d["contact"] == o.as_str())
                .await;
            let left: Vec<_> = node
                .conversation(other)
                .await
                .into_iter()
                .map(|m| m.kind)
                .collect();
            assert_eq!(left, [api::MessageKind::Timer], "only the change stays");
        }
        advance(Duration::from_secs(1)).await;
        for marker in [to_bob, to_alice] {
            assert_eq!(
                pages_with(&alice, marker),
                0,
                "{marker} survives at Alice's"
            );
            assert_eq!(pages_with(&bob, marker), 0, "{marker} survives at Bob's");
        }

        // Either end may turn it off; messages then stay.
        set_timer(&bob, &alice, None).await;
        let b = bob.address.clone();
        alice
            .wait_event(api::event::CONTACT_TIMER, |d| {
                d["address"] == b.as_str() && d["timer"].is_null() && d["by"] == "them"
            })
            .await;
        assert_eq!(timer_of(&alice, &bob).await, None);
        let kept = alice.send(&bob, "this one stays").await;
        assert_eq!(kept.expires_at, None);
    });
}

#[test]
fn concurrent_timer_changes_settle_on_the_same_setting_at_both_ends() {
    run(async |net, dir| {
        let alice = Node::create(net, dir, "alice");
        let bob = Node::create(net, dir, "bob");
        pair(&alice, &bob).await;
        // Both change it before either hears of the other's change.
        let (a, b) = tokio::join!(
            set_timer(&alice, &bob, Some(300)),
            set_timer(&bob, &alice, Some(3600))
        );
        assert_eq!((a.timer, b.timer), (Some(300), Some(3600)));
        alice.wait_all_delivered(&bob).await;
        bob.wait_all_delivered(&alice).await;
        let (at_alice, at_bob) = (timer_of(&alice, &bob).await, timer_of(&bob, &alice).await);
        assert_eq!(at_alice, at_bob, "the ends disagree");
        assert!(at_alice == Some(300) || at_alice == Some(3600));
    });
}

#[test]
fn delete_for_everyone_reaches_the_peer_now_or_when_it_is_back() {
    run(async |net, dir| {
        let alice = Node::create(net, dir, "alice");
        let mut bob = Node::create(net, dir, "bob");
        pair(&alice, &bob).await;

        // Bob is online: his copy becomes a tombstone at once.
        let first = "MARKER-first-19af03: wrong chat";
        let sent = alice.send(&bob, first).await;
        let got = wait_received(&bob, &alice, first).await;
        alice.wait_all_delivered(&bob).await;
        assert!(pages_with(&bob, first) > 0);
        delete(&alice, sent.id, true).await;
        let a = alice.address.clone();
        bob.wait_event(api::event::MESSAGE_DELETED, |d| {
            d["contact"] == a.as_str() && d["id"] == got.id && d["by"] == "them"
        })
        .await;
        let theirs = bob.e().message(got.id).await.expect("the tombstone stays");
        assert_eq!(theirs.kind, api::MessageKind::Deleted);
        assert!(theirs.body.is_empty());
        let ours = alice.e().message(sent.id).await.expect("our tombstone");
        assert_eq!(ours.kind, api::MessageKind::Deleted);
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            pages_with(&bob, first),
            0,
            "the withdrawn body survives at Bob's"
        );
        assert_eq!(
            pages_with(&alice, first),
            0,
            "the withdrawn body survives at Alice's"
        );

        // Bob is away: one message he has, one still queued for him. Both are withdrawn; when
        // he is back he gets the withdrawals and never the queued one.
        let second = "MARKER-second-8e21c4: he has this one";
        let delivered = alice.send(&bob, second).await;
        wait_received(&bob, &alice, second).await;
        alice.wait_all_delivered(&bob).await;
        bob.stop().await;
        let third = "MARKER-third-5d0b77: he never gets this one";
        let queued = alice.send(&bob, third).await;
        delete(&alice, delivered.id, true).await;
        delete(&alice, queued.id, true).await;
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            pages_with(&alice, third),
            0,
            "the queued body survives at Alice's"
        );
        let withdrawn = alice.e().message(queued.id).await.expect("tombstone");
        assert_eq!(withdrawn.status, api::MessageStatus::Failed);
        assert_eq!(withdrawn.failure.as_deref(), Some("withdrawn"));
        bob.start(net).await;
        let a = alice.address.clone();
        bob.wait_event(api::event::MESSAGE_DELETED, |d| {
            d["contact"] == a.as_str() && d["id"] != got.id && d["by"] == "them"
        })
        .await;
        // The withdrawal of the message Bob never had leaves a tombstone (and no event: he
        // never saw it); wait for it.
        let mut notify = bob.e().event_notifier();
        while bob.conversation(&alice).await.len() < 3 {
            tokio::time::timeout(support::nodes::WAIT, notify.changed())
                .await
                .expect("the second withdrawal arrives")
                .expect("running");
        }
        let bobs: Vec<_> = bob
            .conversation(&alice)
            .await
            .into_iter()
            .map(|m| (m.kind, m.body))
            .collect();
        assert_eq!(
            bobs,
            [
                (api::MessageKind::Deleted, String::new()),
                (api::MessageKind::Deleted, String::new()),
                (api::MessageKind::Deleted, String::new()),
            ],
            "Bob keeps three tombstones and no body"
        );
        assert_eq!(pages_with(&bob, second), 0);
        assert_eq!(pages_with(&bob, third), 0);
        // Only the sender can withdraw.
        let theirs = bob.conversation(&alice).await[0].id;
        let refused = bob
            .e()
            .delete_message(api::MessageDelete {
                id: theirs,
                for_everyone: true,
            })
            .await;
        assert!(refused.is_err());
    });
}

#[test]
fn a_local_delete_erases_the_body_from_the_file() {
    run(async |net, dir| {
        let alice = Node::create(net, dir, "alice");
        let bob = Node::create(net, dir, "bob");
        pair(&alice, &bob).await;
        let body = "MARKER-local-3c9e1f: delete me here";
        alice.send(&bob, body).await;
        let got = wait_received(&bob, &alice, body).await;
        assert!(pages_with(&bob, body) > 0);
        delete(&bob, got.id, false).await;
        advance(Duration::from_secs(1)).await;
        assert_eq!(pages_with(&bob, body), 0);
        assert!(bob.e().message(got.id).await.is_err(), "the row is gone");
        // Alice still has hers: a local delete is local.
        assert!(pages_with(&alice, body) > 0);
    });
}

#[test]
fn messages_that_expired_while_stopped_are_erased_before_anything_is_served() {
    run(async |net, dir| {
        let (alice, mut bob) = paired_with_timer(net, dir, 600).await;
        let body = "MARKER-stopped-a6f2d8: gone while you slept";
        alice.send(&bob, body).await;
        wait_received(&bob, &alice, body).await;
        bob.stop().await;
        assert!(pages_with(&bob, body) > 0, "stored before the stop");
        advance(Duration::from_secs(601)).await;
        // Starting erases (and checkpoints) before the engine takes any call or connection.
        bob.start(net).await;
        assert_eq!(
            pages_with(&bob, body),
            0,
            "served with an expired body on disk"
        );
        let texts = bob
            .conversation(&alice)
            .await
            .into_iter()
            .filter(|m| m.kind == api::MessageKind::Text)
            .count();
        assert_eq!(texts, 0);
        let a = alice.address.clone();
        bob.wait_event(api::event::MESSAGE_EXPIRED, |d| d["contact"] == a.as_str())
            .await;
    });
}

#[test]
fn a_clock_set_back_neither_keeps_messages_longer_nor_cuts_new_ones_short() {
    run(async |net, dir| {
        let (alice, bob) = paired_with_timer(net, dir, 3600).await;

        let before_jump = alice.send(&bob, "an hour, whatever the clock says").await;
        advance(Duration::from_secs(600)).await;
        // Someone sets the clock back a day.
        carom_engine::shift_virtual_wall_clock(-24 * 3600 * 1000);
        advance(Duration::from_secs(1)).await;
        // A message sent after the jump gets its full hour too.
        let after_jump = alice.send(&bob, "and this one its own hour").await;
        // 3,500 s after the first was sent.
        advance(Duration::from_secs(2899)).await;
        assert!(
            alice.e().message(before_jump.id).await.is_ok(),
            "erased early"
        );
        // The first hour ends (plus at most the minute in which the clock is read again).
        advance(Duration::from_secs(161)).await;
        assert!(
            alice.e().message(before_jump.id).await.is_err(),
            "a clock set back kept a message past its hour"
        );
        assert!(
            alice.e().message(after_jump.id).await.is_ok(),
            "a clock set back cut a new message's hour short"
        );
        advance(Duration::from_secs(600)).await;
        assert!(alice.e().message(after_jump.id).await.is_err());
    });
}

#[test]
fn a_clock_set_forward_erases_early_within_the_minute() {
    run(async |net, dir| {
        let (alice, bob) = paired_with_timer(net, dir, 3600).await;
        // On the side of erasure: the jump cannot be told from time passing while asleep.
        let forward = alice.send(&bob, "caught by a clock set forward").await;
        carom_engine::shift_virtual_wall_clock(2 * 24 * 3600 * 1000);
        advance(MINUTE + Duration::from_secs(1)).await;
        assert!(alice.e().message(forward.id).await.is_err());
    });
}
