//! Groups between engines in virtual time (the in-memory transport, real stores on disk):
//! invitations with two consents, fan-out over pairwise sessions, the frozen set of ends of
//! each message, removal, a member away during sends, concurrent changes converging, and
//! refusal of group traffic from outside the group.

mod support;

use carom_api as api;
use carom_tor::MemoryNetwork;
use support::nodes::{LATENCY, Node, pair, virtual_time};

/// Everyone pairs with everyone (group traffic rides contact sessions).
async fn mesh(nodes: &[&Node]) {
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            pair(a, b).await;
        }
    }
}

async fn create(node: &Node, name: &str) -> api::Group {
    node.e()
        .group_create(api::GroupCreate {
            name: name.into(),
            members_can_invite: false,
            member_name: "creator".into(),
            kind: api::PeerKind::Human,
        })
        .await
        .expect("created")
}

async fn invite(node: &Node, group: &str, who: &Node) -> api::Group {
    node.e()
        .group_invite(api::GroupInvite {
            group: group.into(),
            address: who.address.clone(),
            role: api::GroupRole::Member,
        })
        .await
        .expect("invited")
}

/// Wait for the invitation, look at it, accept it.
async fn join(node: &Node, group: &str, kind: api::PeerKind) -> api::Group {
    let g = group.to_owned();
    node.wait_event(api::event::GROUP_INVITED, |d| d["group"] == g.as_str())
        .await;
    node.e()
        .group_accept(api::GroupAccept {
            group: group.into(),
            name: format!("member {}", &node.address[..6]),
            kind,
        })
        .await
        .expect("accepted")
}

async fn get(node: &Node, group: &str) -> api::Group {
    node.e()
        .group_get(&api::GroupParams {
            group: group.into(),
        })
        .await
        .expect("group")
}

fn members(g: &api::Group) -> Vec<String> {
    let mut m: Vec<String> = g.members.iter().map(|m| m.address.clone()).collect();
    m.sort();
    m
}

/// Look again after each of `node`'s events (stored or live) until `check` is done (`Ok`),
/// for at most [`support::nodes::WAIT`] of virtual time; then fail with what it last said.
async fn until<T, Fut: std::future::Future<Output = Result<T, String>>>(
    node: &Node,
    check: impl Fn() -> Fut,
) -> T {
    let mut notify = node.e().event_notifier();
    let mut live = node.e().live_events();
    let deadline = tokio::time::Instant::now() + support::nodes::WAIT;
    loop {
        let why = match check().await {
            Ok(done) => return done,
            Err(why) => why,
        };
        let next = async {
            tokio::select! {
                _ = notify.changed() => {}
                _ = live.recv() => {}
            }
        };
        if tokio::time::timeout_at(deadline, next).await.is_err() {
            panic!("{why}");
        }
    }
}

/// Wait until `node` sees exactly `expected` as the members.
async fn wait_members(node: &Node, group: &str, expected: &[&Node]) {
    let mut want: Vec<String> = expected.iter().map(|n| n.address.clone()).collect();
    want.sort();
    until(node, || async {
        let seen = members(&get(node, group).await);
        if seen == want {
            Ok(())
        } else {
            Err(format!("members {seen:?}, expected {want:?}"))
        }
    })
    .await;
}

/// Alice, Bob and Carol, each the others' contact, in a group named `name` that Alice made
/// (Bob and Carol joined as humans), every one of them seeing all three as members.
async fn three_in_a_group(
    net: &MemoryNetwork,
    dir: &std::path::Path,
    name: &str,
) -> (Vec<Node>, String) {
    let nodes: Vec<Node> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| Node::create(net, dir, n))
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    mesh(&all).await;
    let group = create(&nodes[0], name).await.id;
    for n in &nodes[1..] {
        invite(&nodes[0], &group, n).await;
        join(n, &group, api::PeerKind::Human).await;
    }
    for n in &all {
        wait_members(n, &group, &all).await;
    }
    (nodes, group)
}

async fn send(node: &Node, group: &str, body: &str) -> api::GroupMessage {
    node.e()
        .group_send(api::GroupSend {
            group: group.into(),
            body: body.into(),
            reply_to: None,
            client_token: None,
        })
        .await
        .expect("queued")
}

async fn history(node: &Node, group: &str) -> Vec<api::GroupMessage> {
    let mut page = node
        .e()
        .group_history(&api::GroupHistory {
            group: group.into(),
            before: None,
            limit: Some(500),
        })
        .await
        .expect("history")
        .messages;
    page.reverse();
    page
}

/// Bodies `node` received in the group, oldest first.
async fn received(node: &Node, group: &str) -> Vec<String> {
    history(node, group)
        .await
        .into_iter()
        .filter(|m| m.direction == api::Direction::In)
        .map(|m| m.body)
        .collect()
}

/// Wait until `node` has received `count` group messages.
async fn wait_received(node: &Node, group: &str, count: usize) {
    until(node, || async {
        let got = received(node, group).await.len();
        if got >= count {
            Ok(())
        } else {
            Err(format!("{got} of {count} group messages received"))
        }
    })
    .await;
}

/// Wait until every recipient acknowledged message `id`.
async fn wait_delivered(node: &Node, group: &str, id: i64) -> api::GroupMessage {
    until(node, || async {
        let m = history(node, group)
            .await
            .into_iter()
            .find(|m| m.id == id)
            .expect("sent");
        if m.deliveries
            .iter()
            .all(|d| d.status == api::DeliveryStatus::Delivered)
        {
            Ok(m)
        } else {
            Err(format!("not delivered to all: {:?}", m.deliveries))
        }
    })
    .await
}

#[test]
fn an_invitee_sees_the_members_with_their_kinds_and_joins_only_by_accepting() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let alice = Node::create(&net, dir.path(), "alice");
        let bot = Node::create(&net, dir.path(), "bot");
        let carol = Node::create(&net, dir.path(), "carol");
        mesh(&[&alice, &bot, &carol]).await;
        let group = create(&alice, "Desk").await.id;
        invite(&alice, &group, &bot).await;
        join(&bot, &group, api::PeerKind::Bot).await;
        wait_members(&alice, &group, &[&alice, &bot]).await;

        invite(&alice, &group, &carol).await;
        let g = group.clone();
        carol
            .wait_event(api::event::GROUP_INVITED, |d| d["group"] == g.as_str())
            .await;
        // Before accepting, Carol sees the group, who is in it and what each declared itself.
        let seen = get(&carol, &group).await;
        assert_eq!(seen.state, api::GroupState::Invited);
        assert_eq!(seen.name, "Desk");
        assert_eq!(seen.invited_by.as_deref(), Some(alice.address.as_str()));
        let kind_of = |g: &api::Group, n: &Node| {
            g.members
                .iter()
                .find(|m| m.address == n.address)
                .map(|m| m.kind)
        };
        assert_eq!(kind_of(&seen, &bot), Some(api::PeerKind::Bot));
        assert_eq!(kind_of(&seen, &alice), Some(api::PeerKind::Human));
        assert!(!seen.members.iter().any(|m| m.address == carol.address));
        // Not a member: nothing can be sent.
        assert!(
            carol
                .e()
                .group_send(api::GroupSend {
                    group: group.clone(),
                    body: "early".into(),
                    reply_to: None,
                    client_token: None,
                })
                .await
                .is_err()
        );
        join(&carol, &group, api::PeerKind::Human).await;
        for n in [&alice, &bot, &carol] {
            wait_members(n, &group, &[&alice, &bot, &carol]).await;
        }
        // The bot is shown as a bot to everyone.
        for n in [&alice, &carol] {
            assert_eq!(
                kind_of(&get(n, &group).await, &bot),
                Some(api::PeerKind::Bot)
            );
        }
    });
}

#[test]
fn messages_fan_out_and_every_history_agrees_on_them_and_their_set_of_ends() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let nodes: Vec<Node> = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|n| Node::create(&net, dir.path(), n))
            .collect();
        let all: Vec<&Node> = nodes.iter().collect();
        mesh(&all).await;
        let group = create(&nodes[0], "Four").await.id;
        for n in &nodes[1..] {
            invite(&nodes[0], &group, n).await;
            join(n, &group, api::PeerKind::Human).await;
        }
        for n in &all {
            wait_members(n, &group, &all).await;
        }
        let mut sent = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            sent.push(send(n, &group, &format!("hello from {i}")).await);
        }
        for (i, n) in nodes.iter().enumerate() {
            wait_delivered(n, &group, sent[i].id).await;
            wait_received(n, &group, 3).await;
        }
        let mut everyone: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
        everyone.sort();
        for n in &nodes {
            let h = history(n, &group).await;
            assert_eq!(h.len(), 4, "each member holds all four messages");
            for m in &h {
                let mut to = m.sent_to.clone();
                to.sort();
                assert_eq!(to, everyone, "sent to the whole group");
            }
            let mut ids: Vec<String> = h.iter().map(|m| m.msg_id.clone()).collect();
            ids.sort();
            let mut expected: Vec<String> = sent.iter().map(|m| m.msg_id.clone()).collect();
            expected.sort();
            assert_eq!(ids, expected, "the same messages everywhere");
        }
    });
}

#[test]
fn a_late_joiner_sees_nothing_from_before_and_a_removed_member_nothing_after() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let alice = Node::create(&net, dir.path(), "alice");
        let bob = Node::create(&net, dir.path(), "bob");
        let carol = Node::create(&net, dir.path(), "carol");
        mesh(&[&alice, &bob, &carol]).await;
        let group = create(&alice, "G").await.id;
        invite(&alice, &group, &bob).await;
        join(&bob, &group, api::PeerKind::Human).await;
        wait_members(&alice, &group, &[&alice, &bob]).await;
        let before = send(&alice, &group, "before carol").await;
        wait_delivered(&alice, &group, before.id).await;

        invite(&alice, &group, &carol).await;
        join(&carol, &group, api::PeerKind::Human).await;
        for n in [&alice, &bob, &carol] {
            wait_members(n, &group, &[&alice, &bob, &carol]).await;
        }
        let with_carol = send(&bob, &group, "with carol").await;
        wait_delivered(&bob, &group, with_carol.id).await;
        assert_eq!(received(&carol, &group).await, ["with carol"]);

        // Alice removes Bob; what anyone sends afterwards does not reach him.
        alice
            .e()
            .group_remove(&api::GroupMemberParams {
                group: group.clone(),
                address: bob.address.clone(),
            })
            .await
            .expect("removed");
        for n in [&alice, &carol] {
            wait_members(n, &group, &[&alice, &carol]).await;
        }
        let b = group.clone();
        bob.wait_event(api::event::GROUP_CHANGED, |d| d["group"] == b.as_str())
            .await;
        let after = send(&carol, &group, "after bob").await;
        let delivered = wait_delivered(&carol, &group, after.id).await;
        let recipients: Vec<&str> = delivered
            .deliveries
            .iter()
            .map(|d| d.address.as_str())
            .collect();
        assert_eq!(
            recipients,
            [alice.address.as_str()],
            "sent to the members at that state only"
        );
        let bobs = received(&bob, &group).await;
        assert!(!bobs.contains(&"after bob".to_owned()), "{bobs:?}");
        assert_eq!(get(&bob, &group).await.state, api::GroupState::Left);
        // Bob can no longer send to the group.
        assert!(
            bob.e()
                .group_send(api::GroupSend {
                    group: group.clone(),
                    body: "still here?".into(),
                    reply_to: None,
                    client_token: None,
                })
                .await
                .is_err()
        );
        // Invited again, he can join again, and still never gets what was sent meanwhile.
        invite(&alice, &group, &bob).await;
        until(&bob, || async {
            match get(&bob, &group).await.state {
                api::GroupState::Invited => Ok(()),
                other => Err(format!("never invited again: {other:?}")),
            }
        })
        .await;
        bob.e()
            .group_accept(api::GroupAccept {
                group: group.clone(),
                name: "bob again".into(),
                kind: api::PeerKind::Human,
            })
            .await
            .expect("joined again");
        for n in [&alice, &bob, &carol] {
            wait_members(n, &group, &[&alice, &bob, &carol]).await;
        }
        let welcome = send(&alice, &group, "welcome back").await;
        wait_delivered(&alice, &group, welcome.id).await;
        let bobs = received(&bob, &group).await;
        assert!(bobs.contains(&"welcome back".to_owned()), "{bobs:?}");
        assert!(!bobs.contains(&"after bob".to_owned()), "{bobs:?}");
    });
}

#[test]
fn a_member_away_during_sends_gets_all_of_them_in_order_when_back() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let alice = Node::create(&net, dir.path(), "alice");
        let mut bob = Node::create(&net, dir.path(), "bob");
        let carol = Node::create(&net, dir.path(), "carol");
        mesh(&[&alice, &bob, &carol]).await;
        let group = create(&alice, "G").await.id;
        for n in [&bob, &carol] {
            invite(&alice, &group, n).await;
            join(n, &group, api::PeerKind::Human).await;
        }
        for n in [&alice, &bob, &carol] {
            wait_members(n, &group, &[&alice, &bob, &carol]).await;
        }
        bob.stop().await;
        let mut last = None;
        for i in 0..10 {
            last = Some(send(&alice, &group, &format!("m{i}")).await);
        }
        wait_received(&carol, &group, 10).await;
        bob.start(&net).await;
        wait_received(&bob, &group, 10).await;
        let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        assert_eq!(received(&bob, &group).await, expected);
        wait_delivered(&alice, &group, last.expect("sent").id).await;
    });
}

#[test]
fn concurrent_changes_made_on_different_members_converge_everywhere() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let nodes: Vec<Node> = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|n| Node::create(&net, dir.path(), n))
            .collect();
        let all: Vec<&Node> = nodes.iter().collect();
        mesh(&all).await;
        let [alice, bob, carol, dave] = [&nodes[0], &nodes[1], &nodes[2], &nodes[3]];
        let group = create(alice, "G").await.id;
        for n in [bob, carol] {
            alice
                .e()
                .group_invite(api::GroupInvite {
                    group: group.clone(),
                    address: n.address.clone(),
                    role: api::GroupRole::Admin,
                })
                .await
                .expect("invited");
            join(n, &group, api::PeerKind::Human).await;
        }
        for n in [alice, bob, carol] {
            wait_members(n, &group, &[alice, bob, carol]).await;
        }
        // Cut Bob off from Alice and Carol: he invites Dave while Carol removes him.
        for other in [alice, carol] {
            net.cut(&bob.onion(), &other.onion(), true);
        }
        invite(bob, &group, dave).await;
        carol
            .e()
            .group_remove(&api::GroupMemberParams {
                group: group.clone(),
                address: bob.address.clone(),
            })
            .await
            .expect("removed");
        join(dave, &group, api::PeerKind::Human).await;
        for other in [alice, carol] {
            net.cut(&bob.onion(), &other.onion(), false);
        }
        // Everyone ends with the same membership: Bob's concurrent invitation (and so Dave's
        // acceptance) is void.
        for n in [alice, carol, dave] {
            wait_members(n, &group, &[alice, carol]).await;
        }
        let views: Vec<api::Group> = {
            let mut v = Vec::new();
            for n in [alice, carol, dave] {
                v.push(get(n, &group).await);
            }
            v
        };
        for v in &views {
            assert_eq!(members(v), members(&views[0]));
            assert_eq!(v.name, views[0].name);
        }
    });
}

#[test]
fn group_traffic_from_someone_who_is_not_a_member_is_refused() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let alice = Node::create(&net, dir.path(), "alice");
        let bob = Node::create(&net, dir.path(), "bob");
        let mallory = Node::create(&net, dir.path(), "mallory");
        mesh(&[&alice, &bob, &mallory]).await;
        let group = create(&alice, "G").await.id;
        invite(&alice, &group, &bob).await;
        join(&bob, &group, api::PeerKind::Human).await;
        wait_members(&alice, &group, &[&alice, &bob]).await;
        // Mallory, a contact of both but no member, knows the group's id and tries to post.
        let refused = mallory
            .e()
            .group_send(api::GroupSend {
                group: group.clone(),
                body: "let me in".into(),
                reply_to: None,
                client_token: None,
            })
            .await;
        assert!(matches!(refused, Err(e) if e.kind() == api::ErrorKind::NotFound));
        let m = send(&alice, &group, "members only").await;
        wait_delivered(&alice, &group, m.id).await;
        assert_eq!(received(&bob, &group).await, ["members only"]);
        assert!(mallory.e().group_list().await.expect("list").is_empty());
    });
}

#[test]
fn an_invitation_to_a_group_with_a_long_history_arrives_whole() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let alice = Node::create(&net, dir.path(), "alice");
        let bob = Node::create(&net, dir.path(), "bob");
        mesh(&[&alice, &bob]).await;
        let group = create(&alice, "G").await.id;
        // 70 renames: the invitation travels with 72 operations, in three messages.
        for i in 0..70 {
            alice
                .e()
                .group_rename(api::GroupRename {
                    group: group.clone(),
                    name: format!("name {i}"),
                })
                .await
                .expect("renamed");
        }
        invite(&alice, &group, &bob).await;
        let seen = join(&bob, &group, api::PeerKind::Human).await;
        assert_eq!(seen.name, "name 69");
        wait_members(&alice, &group, &[&alice, &bob]).await;
        let m = send(&alice, &group, "after a long history").await;
        wait_delivered(&alice, &group, m.id).await;
        assert_eq!(received(&bob, &group).await, ["after a long history"]);
    });
}

/// The `Reject` reasons that came back for `id`.
fn rejections(events: &[carom_proto::Event], id: carom_proto::MessageId) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            carom_proto::Event::Message(carom_proto::Message::Reject(r)) if r.ids.contains(&id) => {
                Some(r.reason)
            }
            _ => None,
        })
        .collect()
}

fn closed_refused(events: &[carom_proto::Event]) -> bool {
    events.iter().any(|e| {
        matches!(
            e,
            carom_proto::Event::Closed {
                reason: carom_proto::CloseReason::Refused,
                by_peer: true
            }
        )
    })
}

fn a_group_chat(group: &str, heads: Vec<carom_group::OpId>) -> carom_proto::Message {
    let mut id = [0u8; 16];
    id.copy_from_slice(&hex::decode(group).expect("hex")[..16]);
    carom_proto::Message::GroupChat(carom_proto::GroupChat {
        id: carom_proto::MessageId([0x42; 16]),
        group: carom_group::GroupId(id),
        heads,
        members_digest: carom_proto::Digest32([0; 32]),
        sent_at: 1,
        body: "injected".into(),
        reply_to: None,
        expires_after: None,
    })
}

/// Alice is everyone's contact; Bob, Carol and Dave are nobody's but hers. Membership lets
/// co-members' daemons reach each other for the group's traffic — and for nothing else.
#[test]
fn members_who_are_not_each_others_contacts_reach_each_other_for_group_traffic_only() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let nodes: Vec<Node> = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|n| Node::create(&net, dir.path(), n))
            .collect();
        let (alice, bob, carol, dave) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
        for n in [bob, carol, dave] {
            pair(alice, n).await;
        }
        let group = create(alice, "Star").await.id;
        for n in [bob, carol, dave] {
            invite(alice, &group, n).await;
            join(n, &group, api::PeerKind::Human).await;
        }
        let all: Vec<&Node> = nodes.iter().collect();
        for n in &all {
            wait_members(n, &group, &all).await;
        }
        // Every member's message reaches every other member, each over its own session.
        let mut sent = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            sent.push(send(n, &group, &format!("hello from {i}")).await);
        }
        for (i, n) in nodes.iter().enumerate() {
            let m = wait_delivered(n, &group, sent[i].id).await;
            assert_eq!(m.deliveries.len(), 3, "{:?}", m.deliveries);
            wait_received(n, &group, 3).await;
        }
        let mut everyone: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
        everyone.sort();
        for n in &nodes {
            let h = history(n, &group).await;
            assert_eq!(h.len(), 4);
            for m in &h {
                let mut to = m.sent_to.clone();
                to.sort();
                assert_eq!(to, everyone);
            }
        }
        // Bob sees Carol as a member who is not his contact; his contacts are Alice alone.
        let seen = get(bob, &group).await;
        let contact_flag = |n: &Node| {
            seen.members
                .iter()
                .find(|m| m.address == n.address)
                .map(|m| m.contact)
        };
        assert_eq!(contact_flag(alice), Some(true));
        assert_eq!(contact_flag(carol), Some(false));
        let contacts: Vec<String> = bob
            .e()
            .contacts()
            .await
            .expect("contacts")
            .into_iter()
            .map(|c| c.address)
            .collect();
        assert_eq!(contacts, std::slice::from_ref(&alice.address));

        // No 1:1 chat without pairing: not from Bob's side…
        let refused = bob
            .e()
            .send_message(api::MessageSend {
                to: carol.address.clone(),
                body: "just us".into(),
                reply_to: None,
                client_token: None,
            })
            .await;
        assert!(
            matches!(&refused, Err(e) if e.kind() == api::ErrorKind::NotFound),
            "{refused:?}"
        );
        // …nor by hand, as Bob, over a session Carol admits for the group: refused, not kept.
        let chat_id = carom_proto::MessageId([0x24; 16]);
        let answer = support::nodes::speak_as(
            &net,
            &bob.profile,
            carol,
            vec![carom_proto::Message::Chat(carom_proto::Chat {
                id: chat_id,
                sent_at: 1,
                body: "just us".into(),
                reply_to: None,
                expires_after: None,
            })],
            std::time::Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            rejections(&answer, chat_id),
            [carom_proto::reject::NOT_A_CONTACT],
            "{answer:?}"
        );
        assert!(
            carol
                .e()
                .contacts()
                .await
                .expect("contacts")
                .iter()
                .all(|c| c.address != bob.address)
        );

        // Someone outside the group who knows its id is not let in at all.
        let mallory = carom_proto::IdentityKey::from_seed(&[0x66; 32]);
        let mallory = carom_engine::Profile {
            device: bob.profile.device.clone(),
            certificate: carom_proto::DeviceCertificate::issue(
                &mallory,
                &bob.profile.device.public(),
                bob.profile.certificate.expires_at(),
            ),
            identity: mallory,
        };
        let heads = Vec::new();
        let answer = support::nodes::speak_as(
            &net,
            &mallory,
            carol,
            vec![a_group_chat(&group, heads)],
            std::time::Duration::from_secs(30),
        )
        .await;
        assert!(closed_refused(&answer), "{answer:?}");

        // A removed member is refused from the moment the removal is known.
        alice
            .e()
            .group_remove(&api::GroupMemberParams {
                group: group.clone(),
                address: dave.address.clone(),
            })
            .await
            .expect("removed");
        for n in [alice, bob, carol] {
            wait_members(n, &group, &[alice, bob, carol]).await;
        }
        let answer = support::nodes::speak_as(
            &net,
            &dave.profile,
            carol,
            vec![a_group_chat(&group, Vec::new())],
            std::time::Duration::from_secs(30),
        )
        .await;
        assert!(closed_refused(&answer), "{answer:?}");
        assert_eq!(
            history(carol, &group).await.len(),
            4,
            "nothing injected was kept"
        );
        let after = send(bob, &group, "without dave").await;
        let m = wait_delivered(bob, &group, after.id).await;
        let mut to: Vec<String> = m.deliveries.iter().map(|d| d.address.clone()).collect();
        to.sort();
        let mut expected = vec![alice.address.clone(), carol.address.clone()];
        expected.sort();
        assert_eq!(to, expected);

        // Every co-member's device key was kept, whichever side dialled first, so that after a
        // restart the first dial to it is IK.
        let mut nodes = nodes;
        for n in &mut nodes {
            n.stop().await;
        }
        for n in &nodes {
            let store = n.open_store();
            for other in nodes.iter().filter(|o| o.address != n.address) {
                use carom_store::StoreRead as _;
                let row = store
                    .contact_by_identity(&other.onion().public_key())
                    .expect("read")
                    .unwrap_or_else(|| panic!("{} has no row for {}", n.address, other.address));
                assert!(
                    row.peer_static.is_some(),
                    "{} has no device key for {} ({:?})",
                    n.address,
                    other.address,
                    row.state
                );
            }
        }
    });
}

/// How many decrypted pages (database and WAL) of `node`'s store hold `marker`.
fn pages_with(node: &Node, marker: impl AsRef<[u8]>) -> usize {
    let key = carom_store::DbKey::from_bytes(node.key);
    let image = carom_store::forensic::Image::read(&node.db, &key).expect("readable");
    image.pages_containing(marker.as_ref()).len()
}

#[test]
fn an_admins_timer_holds_for_every_member_and_each_erases_the_groups_messages() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let (nodes, group) = three_in_a_group(&net, dir.path(), "Brief").await;
        // A member who is not an admin may not set it.
        let refused = nodes[1]
            .e()
            .group_set_timer(&api::GroupSetTimer {
                group: group.clone(),
                timer: Some(60),
            })
            .await;
        assert!(refused.is_err(), "a member set the group's timer");
        let set = nodes[0]
            .e()
            .group_set_timer(&api::GroupSetTimer {
                group: group.clone(),
                timer: Some(60),
            })
            .await
            .expect("the admin sets it");
        assert_eq!(set.timer, Some(60));
        for n in &nodes[1..] {
            until(n, || async {
                let g = get(n, &group).await;
                if g.timer == Some(60) {
                    Ok(())
                } else {
                    Err(format!("{:?}", g.timer))
                }
            })
            .await;
        }
        // Bob's message goes out under it, and every member erases it a minute after storing
        // it, unattended; one sent after the timer is turned off stays.
        let marker = "MARKER-group-expiry-2b7f91c4: gone in a minute";
        let sent = send(&nodes[1], &group, marker).await;
        assert_eq!(sent.timer, Some(60));
        assert!(sent.expires_at.is_some());
        wait_delivered(&nodes[1], &group, sent.id).await;
        for n in &nodes {
            wait_received(n, &group, if n.address == nodes[1].address { 0 } else { 1 }).await;
            let copy = history(n, &group).await;
            assert_eq!(
                copy[0].timer,
                Some(60),
                "it carries the timer it was sent under"
            );
            assert!(pages_with(n, marker) > 0, "stored at {}", n.address);
        }
        nodes[0]
            .e()
            .group_set_timer(&api::GroupSetTimer {
                group: group.clone(),
                timer: None,
            })
            .await
            .expect("off");
        for n in &nodes {
            n.wait_event(api::event::GROUP_EXPIRED, |d| d["group"] == group.as_str())
                .await;
            assert!(
                history(n, &group).await.iter().all(|m| m.body != marker),
                "still listed at {}",
                n.address
            );
            assert_eq!(pages_with(n, marker), 0, "still on disk at {}", n.address);
        }
        for n in &nodes[1..] {
            until(n, || async {
                match get(n, &group).await.timer {
                    None => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        }
        let kept = send(&nodes[2], &group, "this one stays").await;
        assert_eq!(kept.timer, None);
        wait_delivered(&nodes[2], &group, kept.id).await;
        support::advance(std::time::Duration::from_secs(3_600)).await;
        for n in &nodes {
            assert!(
                history(n, &group)
                    .await
                    .iter()
                    .any(|m| m.body == "this one stays")
            );
        }
    });
}

async fn delete(node: &Node, group: &str, id: i64, for_everyone: bool) {
    node.e()
        .group_delete(&api::GroupDelete {
            group: group.to_owned(),
            id,
            for_everyone,
        })
        .await
        .expect("deleted");
}

#[test]
fn a_group_message_deleted_for_everyone_is_erased_by_every_member_it_reached_or_would_have() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let (mut nodes, group) = three_in_a_group(&net, dir.path(), "Oops").await;
        // Online: Alice withdraws a message both others have.
        let first = "MARKER-group-withdraw-5e0c3a71: wrong group";
        let sent = send(&nodes[0], &group, first).await;
        wait_delivered(&nodes[0], &group, sent.id).await;
        for n in &nodes {
            assert!(pages_with(n, first) > 0, "stored at {}", n.address);
        }
        // Only its sender may withdraw it.
        let bobs_copy = history(&nodes[1], &group).await[0].id;
        assert!(
            nodes[1]
                .e()
                .group_delete(&api::GroupDelete {
                    group: group.clone(),
                    id: bobs_copy,
                    for_everyone: true,
                })
                .await
                .is_err()
        );
        delete(&nodes[0], &group, sent.id, true).await;
        for n in &nodes[1..] {
            n.wait_event(api::event::GROUP_DELETED, |d| {
                d["group"] == group.as_str() && d["by"] == "them" && d["for_everyone"] == true
            })
            .await;
        }
        for n in &nodes {
            let h = history(n, &group).await;
            assert_eq!(h.len(), 1);
            assert_eq!(
                h[0].kind,
                api::MessageKind::Deleted,
                "a tombstone at {}",
                n.address
            );
            assert!(h[0].body.is_empty());
            until(n, || async {
                match pages_with(n, first) {
                    0 => Ok(()),
                    k => Err(format!("{k} pages still hold it")),
                }
            })
            .await;
        }

        // Carol away: the copy queued for her stops, the withdrawal waits, and when she is back
        // she never stores the body; Bob's copy is erased at once.
        nodes[2].stop().await;
        let second = "MARKER-group-withdraw-a4d9176b: not for Carol";
        let sent = send(&nodes[0], &group, second).await;
        until(&nodes[1], || async {
            if received(&nodes[1], &group)
                .await
                .iter()
                .any(|b| b == second)
            {
                Ok(())
            } else {
                Err("not yet at Bob's".to_owned())
            }
        })
        .await;
        delete(&nodes[0], &group, sent.id, true).await;
        let deliveries = history(&nodes[0], &group)
            .await
            .into_iter()
            .find(|m| m.id == sent.id)
            .expect("the tombstone")
            .deliveries;
        let carols = deliveries
            .iter()
            .find(|d| d.address == nodes[2].address)
            .expect("Carol's delivery");
        assert_eq!(carols.failure.as_deref(), Some("withdrawn"));
        let net2 = &net;
        nodes[2].start(net2).await;
        until(&nodes[1], || async {
            match pages_with(&nodes[1], second) {
                0 => Ok(()),
                k => Err(format!("{k} pages at Bob's")),
            }
        })
        .await;
        // Carol gets the withdrawal (a tombstone) and never the body.
        until(&nodes[2], || async {
            let h = history(&nodes[2], &group).await;
            if h.iter()
                .filter(|m| m.kind == api::MessageKind::Deleted)
                .count()
                == 2
            {
                Ok(())
            } else {
                Err(format!("{h:?}"))
            }
        })
        .await;
        assert_eq!(pages_with(&nodes[2], second), 0);

        // A local delete of a received message: gone here only.
        let third = send(&nodes[1], &group, "keep this one").await;
        wait_delivered(&nodes[1], &group, third.id).await;
        let at_carol = history(&nodes[2], &group)
            .await
            .into_iter()
            .find(|m| m.body == "keep this one")
            .expect("Carol has it");
        delete(&nodes[2], &group, at_carol.id, false).await;
        assert!(
            history(&nodes[2], &group)
                .await
                .iter()
                .all(|m| m.id != at_carol.id)
        );
        assert!(
            history(&nodes[0], &group)
                .await
                .iter()
                .any(|m| m.body == "keep this one")
        );
    });
}

/// Assert that nothing of the group message `m` is in `node`'s store: body, wire id, or an
/// event naming its row or id.
async fn nowhere_in_store(node: &Node, m: &api::GroupMessage, body: &str) {
    assert_eq!(pages_with(node, body), 0, "its body at {}", node.address);
    let id = hex::decode(&m.msg_id).expect("hex id");
    assert_eq!(pages_with(node, id), 0, "its id at {}", node.address);
    let events = node.e().events_since(0, 100_000).await.expect("events");
    let named: Vec<_> = events
        .iter()
        .filter(|e| {
            let data = e.data.to_value();
            data["id"] == m.id || data["msg_id"] == m.msg_id.as_str()
        })
        .collect();
    assert!(named.is_empty(), "events about it were stored: {named:?}");
}

async fn set_history(node: &Node, group: &str, keep: bool) -> api::Group {
    node.e()
        .group_set_history(&api::GroupSetHistory {
            group: group.to_owned(),
            keep_history: keep,
        })
        .await
        .expect("history set")
}

/// `node`'s copy of the group message whose body is `body`.
async fn copy_of(node: &Node, group: &str, body: &str) -> Option<api::GroupMessage> {
    history(node, group)
        .await
        .into_iter()
        .find(|m| m.body == body)
}

/// Wait until `node` holds a copy of the group message `body`.
async fn wait_copy(node: &Node, group: &str, body: &str) -> api::GroupMessage {
    until(node, || async {
        copy_of(node, group, body)
            .await
            .ok_or_else(|| format!("{body:?} not at {}", node.address))
    })
    .await
}

#[test]
fn with_history_off_a_members_group_messages_never_reach_its_disk_while_the_others_keep_theirs() {
    virtual_time().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let net = MemoryNetwork::new(LATENCY);
        let (mut nodes, group) = three_in_a_group(&net, dir.path(), "Quiet").await;
        // Bob turns history off: his alone (the others' views say nothing of it).
        assert!(!set_history(&nodes[1], &group, false).await.keep_history);
        assert!(get(&nodes[0], &group).await.keep_history);
        let mut bob_live = nodes[1].e().live_events();

        // Alice's message: Bob keeps it in memory, Alice and Carol store theirs.
        let first = "MARKER-group-memory-0b3e7d21: Bob never writes this";
        let sent = send(&nodes[0], &group, first).await;
        assert!(!sent.memory_only);
        let at_bob = wait_copy(&nodes[1], &group, first).await;
        assert!(at_bob.memory_only);
        assert_eq!(at_bob.sent_to.len(), 3, "its set of ends as everywhere");
        wait_delivered(&nodes[0], &group, sent.id).await;
        assert!(pages_with(&nodes[2], first) > 0, "Carol stores hers");

        // Bob's own message: queued in memory, delivered to both from there.
        let second = "MARKER-group-memory-7f4c2a90: nor this";
        let mine = send(&nodes[1], &group, second).await;
        assert!(mine.memory_only);
        let delivered = wait_delivered(&nodes[1], &group, mine.id).await;
        assert_eq!(delivered.deliveries.len(), 2);
        for n in [&nodes[0], &nodes[2]] {
            assert!(!wait_copy(n, &group, second).await.memory_only);
        }
        // Its delivery events are live only.
        support::live(&mut bob_live, api::event::GROUP_DELIVERY, |d| {
            d["id"] == mine.id && d["status"] == "delivered"
        })
        .await;

        // Bob withdraws his: the others erase theirs; his is a tombstone in memory.
        delete(&nodes[1], &group, mine.id, true).await;
        for n in [&nodes[0], &nodes[2]] {
            n.wait_event(api::event::GROUP_DELETED, |d| d["by"] == "them")
                .await;
            until(n, || async {
                match pages_with(n, second) {
                    0 => Ok(()),
                    k => Err(format!("{k} pages at {}", n.address)),
                }
            })
            .await;
        }
        let tomb = history(&nodes[1], &group)
            .await
            .into_iter()
            .find(|m| m.id == mine.id)
            .expect("the tombstone");
        assert_eq!(tomb.kind, api::MessageKind::Deleted);
        // Alice withdraws hers: Bob's memory copy goes, live.
        delete(&nodes[0], &group, sent.id, true).await;
        support::live(&mut bob_live, api::event::GROUP_DELETED, |d| {
            d["id"] == at_bob.id && d["by"] == "them"
        })
        .await;
        assert!(copy_of(&nodes[1], &group, first).await.is_none());

        // The group's timer holds for memory-only copies too.
        nodes[0]
            .e()
            .group_set_timer(&api::GroupSetTimer {
                group: group.clone(),
                timer: Some(60),
            })
            .await
            .expect("timer");
        until(&nodes[1], || async {
            match get(&nodes[1], &group).await.timer {
                Some(60) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let brief = "MARKER-group-memory-c2d81f55: a minute in memory";
        send(&nodes[2], &group, brief).await;
        let brief_at_bob = wait_copy(&nodes[1], &group, brief).await;
        assert_eq!(brief_at_bob.timer, Some(60));
        assert!(brief_at_bob.memory_only);
        support::advance(std::time::Duration::from_secs(65)).await;
        support::live(&mut bob_live, api::event::GROUP_EXPIRED, |d| {
            d["ids"][0] == brief_at_bob.id
        })
        .await;
        assert!(copy_of(&nodes[1], &group, brief).await.is_none());
        nodes[0]
            .e()
            .group_set_timer(&api::GroupSetTimer {
                group: group.clone(),
                timer: None,
            })
            .await
            .expect("timer off");

        // Carol away: Bob's message waits in his memory and goes when she is back.
        nodes[2].stop().await;
        let later = "MARKER-group-memory-5a90e3b7: for when Carol is back";
        let queued = send(&nodes[1], &group, later).await;
        support::advance(std::time::Duration::from_secs(30)).await;
        nodes[2].start(&net).await;
        wait_delivered(&nodes[1], &group, queued.id).await;
        assert!(pages_with(&nodes[2], later) > 0);

        // Nothing of any of them in Bob's store: body, id, or an event.
        for (m, body) in [
            (&at_bob, first),
            (&mine, second),
            (&brief_at_bob, brief),
            (&queued, later),
        ] {
            nowhere_in_store(&nodes[1], m, body).await;
        }
        // And a restart forgets them; the group and the setting (stored) remain.
        nodes[1].restart(&net).await;
        let g = get(&nodes[1], &group).await;
        assert!(!g.keep_history);
        assert_eq!(g.members.len(), 3);
        assert!(
            history(&nodes[1], &group).await.is_empty(),
            "nothing of the group's messages survives Bob's restart"
        );
        // History on again: stored from then on.
        assert!(set_history(&nodes[1], &group, true).await.keep_history);
        let stored = "MARKER-group-memory-e61b04c8: written from now on";
        let m = send(&nodes[0], &group, stored).await;
        wait_delivered(&nodes[0], &group, m.id).await;
        assert!(!wait_copy(&nodes[1], &group, stored).await.memory_only);
        assert!(pages_with(&nodes[1], stored) > 0);
    });
}
