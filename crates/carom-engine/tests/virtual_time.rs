//! Engines in virtual time: the in-memory transport with a simulated latency and links that
//! can be cut, each engine's store run inline on one current-thread runtime whose clock is
//! paused. The clock moves only when every engine is idle, straight to the next timer, so a
//! test of minutes of keepalives, timeouts and backoff runs in well under a second of real
//! time, and no outcome depends on how loaded the machine is. There are no sleeps here:
//! "later" is a timer, and waiting is for an event.
//!
//! The schedules that are hard to hit in real time live here: both sides dialling at once, a
//! restart in the middle of a handshake, a path that turns into a black hole during delivery,
//! and random schedules of sends, cuts and restarts, after each of which nothing is lost,
//! nothing arrives twice and order is kept.

mod support;

use std::time::Duration;

use carom_api as api;
use carom_tor::MemoryNetwork;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use support::advance;
use support::nodes::{LATENCY, Node, config, pair, virtual_time};

#[test]
fn two_people_pair_and_chat_in_a_few_round_trips_of_virtual_time() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let alice = Node::create(&net, dir.path(), "alice");
        let bob = Node::create(&net, dir.path(), "bob");
        let start = tokio::time::Instant::now();
        pair(&alice, &bob).await;
        let paired = start.elapsed();
        let started = tokio::time::Instant::now();
        for i in 0..3 {
            alice.send(&bob, &format!("a{i}")).await;
            bob.send(&alice, &format!("b{i}")).await;
        }
        alice.wait_all_delivered(&bob).await;
        bob.wait_all_delivered(&alice).await;
        let chatted = started.elapsed();
        assert_eq!(bob.received(&alice).await, ["a0", "a1", "a2"]);
        assert_eq!(alice.received(&bob).await, ["b0", "b1", "b2"]);
        // Over an open session a message and its acknowledgement take one round trip; the
        // virtual clock shows exactly what the protocol costs, whatever the machine's load.
        assert!(
            chatted <= LATENCY * 2 + Duration::from_millis(1),
            "delivery over an open session took {chatted:?}"
        );
        // Pairing: the request's dial, handshake and delivery, the answer back on the
        // open session (or a new one): a handful of round trips, no timer.
        assert!(
            paired < Duration::from_secs(10),
            "pairing took {paired:?} of virtual time"
        );
    });
}

#[test]
fn both_adding_each_other_at_once_ends_accepted_with_one_session_each() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let alice = Node::create(&net, dir.path(), "alice");
        let bob = Node::create(&net, dir.path(), "bob");
        // Both dial at the same virtual instant: the race real time rarely produces.
        alice.add(&bob).await;
        bob.add(&alice).await;
        let (a, b) = (alice.address.clone(), bob.address.clone());
        alice
            .wait_event(api::event::CONTACT_STATE, |d| {
                d["address"] == b.as_str() && d["state"] == "accepted"
            })
            .await;
        bob.wait_event(api::event::CONTACT_STATE, |d| {
            d["address"] == a.as_str() && d["state"] == "accepted"
        })
        .await;
        // Let every duplicate be resolved; afterwards each sees the other online, once, and
        // never offline: one session survived, and nothing flaps.
        advance(Duration::from_secs(600)).await;
        for (node, other) in [(&alice, &bob), (&bob, &alice)] {
            assert!(
                node.e()
                    .contact(&other.address)
                    .await
                    .expect("contact")
                    .online
            );
            assert_eq!(node.presence(other).await, [true], "presence never flapped");
        }
        alice.send(&bob, "one session").await;
        alice.wait_all_delivered(&bob).await;
        assert_eq!(bob.received(&alice).await, ["one session"]);
    });
}

#[test]
fn messages_to_a_contact_that_is_away_arrive_once_in_order_when_it_is_back() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let alice = Node::create(&net, dir.path(), "alice");
        let mut bob = Node::create(&net, dir.path(), "bob");
        pair(&alice, &bob).await;
        bob.stop().await;
        for i in 0..20 {
            alice.send(&bob, &format!("m{i}")).await;
        }
        // Away for an hour: alice's retries back off to their longest interval meanwhile.
        advance(Duration::from_secs(3600)).await;
        assert_eq!(alice.undelivered(&bob).await, 20);
        bob.start(&net).await;
        let back = tokio::time::Instant::now();
        alice.wait_all_delivered(&bob).await;
        let took = back.elapsed();
        let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        assert_eq!(bob.received(&alice).await, expected);
        // Bob dials alice for presence as soon as he starts, and that session carries the
        // backlog: the longest retry interval is not what bob waits for.
        assert!(
            took < Duration::from_secs(10),
            "the backlog took {took:?} after bob came back"
        );
    });
}

#[test]
fn a_path_that_turns_into_a_black_hole_during_delivery_loses_nothing() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let alice = Node::create(&net, dir.path(), "alice");
        let bob = Node::create(&net, dir.path(), "bob");
        pair(&alice, &bob).await;
        alice.send(&bob, "before").await;
        alice.wait_all_delivered(&bob).await;
        // The circuit hangs with messages on it: written, never arriving, never refused.
        for i in 0..5 {
            alice.send(&bob, &format!("lost{i}")).await;
            advance(LATENCY / 2).await;
        }
        net.cut(&alice.onion(), &bob.onion(), true);
        for i in 0..5 {
            alice.send(&bob, &format!("during{i}")).await;
        }
        // The session notices the silence, ends, and every dial hangs until the link is
        // mended.
        advance(Duration::from_secs(900)).await;
        assert!(alice.undelivered(&bob).await > 0);
        net.cut(&alice.onion(), &bob.onion(), false);
        let mended = tokio::time::Instant::now();
        alice.wait_all_delivered(&bob).await;
        let took = mended.elapsed();
        let mut expected = vec!["before".to_owned()];
        expected.extend((0..5).map(|i| format!("lost{i}")));
        expected.extend((0..5).map(|i| format!("during{i}")));
        assert_eq!(bob.received(&alice).await, expected, "once each, in order");
        // After the mend, delivery waits at most for the next retry or presence dial.
        assert!(
            took <= config().retry_max + config().dial_timeout,
            "took {took:?} after the link came back"
        );
    });
}

#[test]
fn a_restart_in_the_middle_of_a_handshake_loses_nothing() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let mut alice = Node::create(&net, dir.path(), "alice");
        let mut bob = Node::create(&net, dir.path(), "bob");
        pair(&alice, &bob).await;
        // Each restart lands at a different point of the next dial and handshake: while
        // the stream opens, with the first handshake message in flight, with the answer in
        // flight, and once the first chats are on the wire.
        let steps = [LATENCY, LATENCY * 2, LATENCY * 3, LATENCY * 4, LATENCY * 5];
        let mut sent = Vec::new();
        for (round, at) in steps.into_iter().enumerate() {
            alice.restart(&net).await;
            let body = format!("round{round}");
            alice.send(&bob, &body).await;
            sent.push(body);
            advance(at).await;
            if round % 2 == 0 {
                bob.restart(&net).await;
            } else {
                alice.restart(&net).await;
            }
        }
        alice.wait_all_delivered(&bob).await;
        assert_eq!(bob.received(&alice).await, sent, "once each, in order");
    });
}

/// One step of a random schedule.
#[derive(Clone, Debug)]
enum Step {
    /// Alice (`true`) or Bob sends a message.
    Send(bool),
    /// The link between them hangs, or comes back.
    Cut(bool),
    /// Alice (`true`) or Bob restarts.
    Restart(bool),
    /// Time passes (milliseconds).
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => any::<bool>().prop_map(Step::Send),
        1 => any::<bool>().prop_map(Step::Cut),
        1 => any::<bool>().prop_map(Step::Restart),
        3 => (0u64..120_000).prop_map(Step::Advance),
    ]
}

/// Random schedules of sends, hung links and restarts: afterwards, with the link mended,
/// everything each side sent arrives, once, in the order it was sent.
#[test]
fn random_schedules_lose_nothing_duplicate_nothing_and_keep_order() {
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    // Seeded: the same schedules every run, so a failure is reproducible as it stands.
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let schedules = proptest::collection::vec(step(), 1..40);
    let result = runner.run(&schedules, |schedule| {
        virtual_time().block_on(run_schedule(&schedule));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn run_schedule(schedule: &[Step]) {
    let dir = tempfile::tempdir().expect("dir");
    let net = MemoryNetwork::new(LATENCY);
    let mut alice = Node::create(&net, dir.path(), "alice");
    let mut bob = Node::create(&net, dir.path(), "bob");
    pair(&alice, &bob).await;
    let (mut from_alice, mut from_bob) = (Vec::new(), Vec::new());
    for (n, step) in schedule.iter().enumerate() {
        match *step {
            Step::Send(true) => {
                let body = format!("a{n}");
                alice.send(&bob, &body).await;
                from_alice.push(body);
            }
            Step::Send(false) => {
                let body = format!("b{n}");
                bob.send(&alice, &body).await;
                from_bob.push(body);
            }
            Step::Cut(cut) => net.cut(&alice.onion(), &bob.onion(), cut),
            Step::Restart(true) => alice.restart(&net).await,
            Step::Restart(false) => bob.restart(&net).await,
            Step::Advance(ms) => advance(Duration::from_millis(ms)).await,
        }
    }
    net.cut(&alice.onion(), &bob.onion(), false);
    alice.wait_all_delivered(&bob).await;
    bob.wait_all_delivered(&alice).await;
    assert_eq!(
        bob.received(&alice).await,
        from_alice,
        "alice to bob: {schedule:?}"
    );
    assert_eq!(
        alice.received(&bob).await,
        from_bob,
        "bob to alice: {schedule:?}"
    );
}
