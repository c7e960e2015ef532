//! History off: a conversation whose messages live in the daemon's memory only. Between
//! engines in virtual time, each with its real encrypted store on disk, these show that
//! nothing of such a message reaches the disk — not its body, not its id, not an event about
//! it — by reading every decrypted page of each database and its WAL, and every file beside
//! them; and that what the API promises still holds while the daemons run: delivery with
//! acknowledgement, a queue for a peer who is away, delete for everyone, disappearing timers.
//! A restart forgets it all, a message still queued included. The same conversation runs
//! between real daemons over a private Tor network in `daemon/tests/e2e.rs`.

mod support;

use std::path::Path;
use std::time::Duration;

use carom_api as api;
use carom_api::EventData;
use carom_store::DbKey;
use carom_store::forensic::Image;
use carom_tor::MemoryNetwork;
use support::nodes::{LATENCY, Node, pair};
use support::{advance, live};

/// How many decrypted pages (database and WAL) of `node`'s store hold `needle`.
fn pages_with(node: &Node, needle: &[u8]) -> usize {
    let image = Image::read(&node.db, &DbKey::from_bytes(node.key)).expect("readable");
    image.pages_containing(needle).len()
}

/// Every file under `dir` whose raw bytes hold `needle`.
fn files_with(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).expect("readable");
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Assert that nothing of `message` is on `node`'s disk: body, wire id, or an event naming
/// its row.
async fn nowhere_on_disk(node: &Node, dir: &Path, message: &api::Message) {
    let id = hex::decode(&message.msg_id).expect("hex id");
    assert_eq!(
        pages_with(node, message.body.as_bytes()),
        0,
        "its body is in a page"
    );
    assert_eq!(pages_with(node, &id), 0, "its id is in a page");
    assert_eq!(
        files_with(dir, message.body.as_bytes()),
        Vec::<String>::new()
    );
    let events = node.e().events_since(0, 100_000).await.expect("events");
    let named: Vec<_> = events
        .iter()
        .filter(|e| {
            let data = e.data.to_value();
            data["id"] == message.id || data["msg_id"] == message.msg_id.as_str()
        })
        .collect();
    assert!(named.is_empty(), "events about it were stored: {named:?}");
}

async fn set_history(node: &Node, with: &Node, keep: bool) -> api::Contact {
    node.e()
        .set_history(api::ContactSetHistory {
            address: with.address.clone(),
            keep_history: keep,
        })
        .await
        .expect("history set")
}

/// The message of `node`'s conversation with `with` whose body is `body`.
async fn find(node: &Node, with: &Node, body: &str) -> Option<api::Message> {
    node.conversation(with)
        .await
        .into_iter()
        .find(|m| m.body == body)
}

fn run(test: impl AsyncFnOnce(&MemoryNetwork, &Path)) {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    support::nodes::virtual_time().block_on(test(&net, dir.path()));
}

#[test]
fn with_history_off_at_both_ends_nothing_reaches_the_disk_and_a_restart_forgets_it_all() {
    run(async |net, dir| {
        let mut alice = Node::create(net, dir, "alice");
        let mut bob = Node::create(net, dir, "bob");
        pair(&alice, &bob).await;
        let off = set_history(&alice, &bob, false).await;
        assert!(!off.keep_history);
        assert!(!set_history(&bob, &alice, false).await.keep_history);
        // The setting is ours alone: the peer's view of us is unchanged.
        assert!(!bob.e().contact(&alice.address).await.unwrap().keep_history);
        let mut alice_live = alice.e().live_events();
        let mut bob_live = bob.e().live_events();

        // Delivered and acknowledged as ever; held in memory at both ends.
        let to_bob = "MARKER-memory-5d1f0a9b: meet at the usual place";
        let sent = alice.send(&bob, to_bob).await;
        assert!(sent.memory_only);
        assert!(carom_engine_row_is_memory(sent.id));
        let id = sent.id;
        live(&mut alice_live, api::event::MESSAGE_STATUS, |d| {
            d["id"] == id && d["status"] == "delivered"
        })
        .await;
        let received = live(&mut bob_live, api::event::MESSAGE_RECEIVED, |_| true).await;
        let EventData::MessageReceived(r) = received.data else {
            panic!("typed")
        };
        let got = bob.e().message(r.id).await.expect("get");
        assert_eq!(got.body, to_bob);
        assert!(got.memory_only);
        assert_eq!(got.msg_id, sent.msg_id);
        let to_alice = "MARKER-memory-90c2e6d4: understood";
        bob.send(&alice, to_alice).await;
        live(&mut alice_live, api::event::MESSAGE_RECEIVED, |_| true).await;
        let reply = find(&alice, &bob, to_alice)
            .await
            .expect("in Alice's history");

        // Delete for everyone, in memory at both ends.
        let oops = "MARKER-memory-1e77b0c3: wrong chat";
        let oops_sent = alice.send(&bob, oops).await;
        live(&mut bob_live, api::event::MESSAGE_RECEIVED, |_| true).await;
        alice
            .e()
            .delete_message(api::MessageDelete {
                id: oops_sent.id,
                for_everyone: true,
            })
            .await
            .expect("withdrawn");
        live(&mut bob_live, api::event::MESSAGE_DELETED, |d| {
            d["by"] == "them" && d["for_everyone"] == true
        })
        .await;
        assert!(find(&bob, &alice, oops).await.is_none(), "erased at Bob's");

        // A disappearing timer (a setting: stored) applies to memory-only messages too.
        alice
            .e()
            .set_timer(api::ContactSetTimer {
                address: bob.address.clone(),
                timer: Some(60),
            })
            .await
            .expect("timer");
        bob.wait_event(api::event::CONTACT_TIMER, |d| d["timer"] == 60)
            .await;
        let brief = "MARKER-memory-6ab3f215: gone in a minute";
        let brief_sent = alice.send(&bob, brief).await;
        assert_eq!(brief_sent.timer, Some(60));
        live(&mut bob_live, api::event::MESSAGE_RECEIVED, |_| true).await;
        advance(Duration::from_secs(65)).await;
        live(&mut bob_live, api::event::MESSAGE_EXPIRED, |_| true).await;
        assert!(find(&bob, &alice, brief).await.is_none());
        assert!(find(&alice, &bob, brief).await.is_none());

        // Nothing of any of them on either disk: body, id, or an event about it.
        let everything = [
            sent.clone(),
            reply.clone(),
            oops_sent.clone(),
            brief_sent.clone(),
        ];
        for message in &everything {
            for node in [&alice, &bob] {
                nowhere_on_disk(node, dir, message).await;
            }
        }
        // While the scan can find what is stored: the timer change is.
        let timer_item = bob
            .conversation(&alice)
            .await
            .into_iter()
            .find(|m| m.kind == api::MessageKind::Timer)
            .expect("the timer change");
        assert!(!timer_item.memory_only);
        assert!(pages_with(&bob, &hex::decode(&timer_item.msg_id).unwrap()) > 0);

        // Bob away: Alice's message waits in her memory and goes when he is back.
        bob.stop().await;
        let waiting = "MARKER-memory-c41d88e0: for when you are back";
        let queued = alice.send(&bob, waiting).await;
        assert_eq!(queued.status, api::MessageStatus::Queued);
        advance(Duration::from_secs(30)).await;
        bob.start(net).await;
        let qid = queued.id;
        live(&mut alice_live, api::event::MESSAGE_STATUS, |d| {
            d["id"] == qid && d["status"] == "delivered"
        })
        .await;
        assert_eq!(
            find(&bob, &alice, waiting).await.map(|m| m.memory_only),
            Some(true),
            "Bob's restarted daemon kept it in memory: his setting is stored"
        );
        nowhere_on_disk(&alice, dir, &queued).await;
        nowhere_on_disk(&bob, dir, &queued).await;

        // A restart forgets everything in memory, at both ends.
        bob.restart(net).await;
        assert!(find(&bob, &alice, waiting).await.is_none());
        let left: Vec<_> = bob
            .conversation(&alice)
            .await
            .into_iter()
            .map(|m| m.kind)
            .collect();
        assert_eq!(
            left,
            [api::MessageKind::Timer],
            "only the stored setting change"
        );

        // And what was queued when the sender stopped is lost (stated in docs/api.md).
        bob.stop().await;
        let lost = "MARKER-memory-0f3a7c59: this one is lost";
        alice.send(&bob, lost).await;
        alice.restart(net).await;
        bob.start(net).await;
        advance(Duration::from_secs(15 * 60)).await;
        assert!(find(&bob, &alice, lost).await.is_none());
        assert!(find(&alice, &bob, lost).await.is_none());
        assert_eq!(pages_with(&alice, lost.as_bytes()), 0);
    });
}

fn carom_engine_row_is_memory(id: i64) -> bool {
    // Memory-only rows are drawn from 2^52 upward, above any stored row.
    id >= 1 << 52
}

#[test]
fn history_off_at_one_end_keeps_nothing_there_while_the_peer_stores_its_copy() {
    run(async |net, dir| {
        let alice = Node::create(net, dir, "alice");
        let bob = Node::create(net, dir, "bob");
        pair(&alice, &bob).await;
        set_history(&alice, &bob, false).await;
        let mut alice_live = alice.e().live_events();

        let to_bob = "MARKER-half-3c9e51aa: Bob keeps this";
        let sent = alice.send(&bob, to_bob).await;
        let id = sent.id;
        live(&mut alice_live, api::event::MESSAGE_STATUS, |d| {
            d["id"] == id && d["status"] == "delivered"
        })
        .await;
        let at_bob = find(&bob, &alice, to_bob).await.expect("stored by Bob");
        assert!(!at_bob.memory_only);
        assert!(
            pages_with(&bob, to_bob.as_bytes()) > 0,
            "Bob's own setting keeps it"
        );
        let to_alice = "MARKER-half-b80d2f16: Alice does not";
        bob.send(&alice, to_alice).await;
        live(&mut alice_live, api::event::MESSAGE_RECEIVED, |_| true).await;
        bob.wait_all_delivered(&alice).await;
        let at_alice = find(&alice, &bob, to_alice).await.expect("in memory");
        assert!(at_alice.memory_only);
        nowhere_on_disk(&alice, dir, &sent).await;
        nowhere_on_disk(&alice, dir, &at_alice).await;

        // History on again: from then on it is stored, and what was in memory stays there.
        assert!(set_history(&alice, &bob, true).await.keep_history);
        let stored = "MARKER-half-71e4c0d8: written from now on";
        bob.send(&alice, stored).await;
        bob.wait_all_delivered(&alice).await;
        let m = find(&alice, &bob, stored).await.expect("stored");
        assert!(!m.memory_only);
        assert!(pages_with(&alice, stored.as_bytes()) > 0);
        assert!(
            find(&alice, &bob, to_alice)
                .await
                .is_some_and(|m| m.memory_only)
        );
        // Both kinds are in one history, the memory-only first (newest first by row).
        let page = alice
            .e()
            .history(api::MessageList {
                with: bob.address.clone(),
                before: None,
                limit: Some(1),
            })
            .await
            .expect("page");
        assert!(page.messages[0].memory_only);
        let rest = alice
            .e()
            .history(api::MessageList {
                with: bob.address.clone(),
                before: page.next_before,
                limit: Some(500),
            })
            .await
            .expect("page");
        assert!(rest.messages.iter().any(|m| m.body == stored));
        assert!(rest.messages.iter().any(|m| m.body == to_bob));
    });
}
