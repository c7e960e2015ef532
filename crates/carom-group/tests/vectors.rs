//! Group test vectors (`crates/carom-group/vectors/groups.json`, described in
//! `docs/protocol.md` §15.5): a scripted history with concurrent branches, every operation's
//! exact bytes, and what the history resolves to.
//!
//! One test regenerates the file with the reference implementation and compares (set
//! `CAROM_UPDATE_VECTORS=1` to rewrite it after a reviewed change); the other checks it as an
//! outside implementation would: each body is re-encoded by hand from its fields, each id is
//! the SHA3-256 of the body, each signature verifies under the author's key.

use carom_group::{Action, GroupId, History, Ignored, Membership, Policy, Role, SignedOperation};
use carom_proto::{GROUP_OPERATION_LABEL, IdentityKey, OnionAddress, PeerKind};
use serde_json::{Map, Value, json};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/groups.json");
const GROUP: GroupId = GroupId([0x47; 16]);
const T0: u64 = 1_800_000_000_000;

fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex text")).expect("hex")
}

fn person(n: u8) -> IdentityKey {
    IdentityKey::from_seed(&[n; 32])
}

fn kind(k: PeerKind) -> u8 {
    match k {
        PeerKind::Human => 0,
        PeerKind::Bot => 1,
    }
}

fn role(r: Role) -> u8 {
    match r {
        Role::Member => 0,
        Role::Admin => 1,
    }
}

fn action_fields(action: &Action) -> Value {
    match action {
        Action::Create {
            name,
            policy,
            kind: k,
            member_name,
        } => json!({ "type": 0, "name": name, "members_can_invite": policy.members_can_invite,
                     "kind": kind(*k), "member_name": member_name }),
        Action::Invite { invitee, role: r } => {
            json!({ "type": 1, "invitee": h(&invitee.public_key()), "role": role(*r) })
        }
        Action::Accept {
            invite,
            kind: k,
            name,
        } => json!({ "type": 2, "invite": h(&invite.0), "kind": kind(*k), "name": name }),
        Action::Remove { member } => json!({ "type": 3, "member": h(&member.public_key()) }),
        Action::Leave => json!({ "type": 4 }),
        Action::SetRole { member, role: r } => {
            json!({ "type": 5, "member": h(&member.public_key()), "role": role(*r) })
        }
        Action::Rename { name } => json!({ "type": 6, "name": name }),
        Action::SetPolicy { policy } => {
            json!({ "type": 7, "members_can_invite": policy.members_can_invite })
        }
        Action::SetTimer { timer } => json!({ "type": 8, "timer": timer }),
    }
}

fn op_json(name: &str, op: &SignedOperation) -> Value {
    let body = op.operation();
    json!({
        "name": name,
        "id": h(&op.id().0),
        "body": h(op.body()),
        "signature": h(op.signature()),
        "fields": {
            "group": h(&body.group.0),
            "author": h(&body.author.public_key()),
            "parents": body.parents.iter().map(|p| h(&p.0)).collect::<Vec<_>>(),
            "created_at": body.created_at,
            "action": action_fields(&body.action),
        },
    })
}

fn membership_json(m: &Membership) -> Value {
    let members: Vec<Value> = m
        .members
        .values()
        .map(|member| {
            json!({
                "address": member.address.to_string(),
                "kind": kind(member.kind),
                "name": member.name,
                "role": role(member.role),
                "joined_by": h(&member.joined_by.0),
            })
        })
        .collect();
    let invitations: Vec<Value> = m
        .invitations
        .values()
        .map(|inv| {
            json!({ "invite": h(&inv.id.0), "invitee": inv.invitee.to_string(),
                    "role": role(inv.role) })
        })
        .collect();
    json!({
        "name": m.name,
        "members_can_invite": m.policy.members_can_invite,
        "timer": m.timer,
        "members": members,
        "invitations": invitations,
        "members_digest": h(&m.members_digest()),
    })
}

/// The scripted history. Names in comments are the `name`s of the vector entries.
fn script() -> (Vec<(&'static str, SignedOperation)>, History) {
    let (alice, bob, carol, dave) = (person(1), person(2), person(3), person(4));
    let mut ops = Vec::new();
    let mut at_alice = History::create(
        &alice,
        GROUP,
        "Desk".into(),
        Policy {
            members_can_invite: false,
        },
        PeerKind::Human,
        "Alice".into(),
        T0,
    );
    ops.push((
        "create",
        at_alice.operations().next().cloned().expect("one"),
    ));
    let mut step = |history: &mut History, who: &IdentityKey, name, action, t| {
        let op = history.propose(who, action, T0 + t).expect("allowed");
        ops.push((name, op.clone()));
        op
    };
    let invite_bob = step(
        &mut at_alice,
        &alice,
        "invite_bob",
        Action::Invite {
            invitee: bob.address(),
            role: Role::Member,
        },
        1,
    );
    step(
        &mut at_alice,
        &bob,
        "bob_accepts",
        Action::Accept {
            invite: invite_bob.id(),
            kind: PeerKind::Bot,
            name: "Bob's bot".into(),
        },
        2,
    );
    let invite_carol = step(
        &mut at_alice,
        &alice,
        "invite_carol_as_admin",
        Action::Invite {
            invitee: carol.address(),
            role: Role::Admin,
        },
        3,
    );
    step(
        &mut at_alice,
        &carol,
        "carol_accepts",
        Action::Accept {
            invite: invite_carol.id(),
            kind: PeerKind::Human,
            name: "Carol".into(),
        },
        4,
    );
    step(
        &mut at_alice,
        &alice,
        "members_may_invite",
        Action::SetPolicy {
            policy: Policy {
                members_can_invite: true,
            },
        },
        5,
    );
    // Two branches from here: Carol removes Bob and renames; concurrently Bob invites Dave,
    // who accepts.
    let mut at_bob = History::from_operations(at_alice.operations().cloned())
        .expect("rebuilds")
        .0;
    step(
        &mut at_alice,
        &carol,
        "carol_removes_bob",
        Action::Remove {
            member: bob.address(),
        },
        6,
    );
    step(
        &mut at_alice,
        &carol,
        "carol_renames",
        Action::Rename {
            name: "Night desk".into(),
        },
        7,
    );
    let invite_dave = step(
        &mut at_bob,
        &bob,
        "bob_invites_dave",
        Action::Invite {
            invitee: dave.address(),
            role: Role::Member,
        },
        8,
    );
    step(
        &mut at_bob,
        &dave,
        "dave_accepts",
        Action::Accept {
            invite: invite_dave.id(),
            kind: PeerKind::Human,
            name: "Dave".into(),
        },
        9,
    );
    // Alice, an admin, sets a disappearing-message timer of a day on her branch.
    step(
        &mut at_alice,
        &alice,
        "alice_sets_timer",
        Action::SetTimer {
            timer: Some(86_400),
        },
        10,
    );
    let (all, refused) =
        History::from_operations(ops.iter().map(|(_, op)| op.clone())).expect("rebuilds");
    assert!(refused.is_empty());
    (ops, all)
}

fn generate() -> Value {
    let (ops, history) = script();
    let people: Vec<Value> = [(1u8, "alice"), (2, "bob"), (3, "carol"), (4, "dave")]
        .iter()
        .map(|(n, name)| {
            let id = person(*n);
            json!({ "name": name, "seed": h(&[*n; 32]), "public_key": h(&id.address().public_key()),
                    "address": id.address().to_string() })
        })
        .collect();
    let mut ignored = Map::new();
    for (id, reason) in &history.resolution().ignored {
        let name = ops
            .iter()
            .find(|(_, op)| op.id() == *id)
            .map(|(name, _)| *name)
            .expect("scripted");
        ignored.insert(name.into(), json!(reason.name()));
    }
    let name_of = |id: &carom_group::OpId| {
        ops.iter()
            .find(|(_, op)| op.id() == *id)
            .map(|(name, _)| *name)
            .expect("scripted")
    };
    let at = |names: &[&str]| {
        let heads: Vec<carom_group::OpId> = names
            .iter()
            .map(|n| {
                ops.iter()
                    .find(|(name, _)| name == n)
                    .expect("scripted")
                    .1
                    .id()
            })
            .collect();
        let membership = history.membership_at(&heads).expect("known");
        json!({ "heads": names, "membership": membership_json(&membership) })
    };
    json!({
        "about": "Carom group vectors; see docs/protocol.md §15.5. Hex is lower case.",
        "label": String::from_utf8(GROUP_OPERATION_LABEL.to_vec()).expect("ascii"),
        "people": people,
        "operations": ops.iter().map(|(name, op)| op_json(name, op)).collect::<Vec<_>>(),
        "heads": history.heads().iter().map(name_of).collect::<Vec<_>>(),
        "resolution": {
            "membership": membership_json(history.membership()),
            "ignored": ignored,
        },
        "membership_at": [at(&["members_may_invite"]), at(&["carol_renames"]), at(&["dave_accepts"])],
    })
}

#[test]
fn the_implementation_reproduces_the_vectors() {
    let generated = generate();
    let text = serde_json::to_string_pretty(&generated).expect("json") + "\n";
    if std::env::var_os("CAROM_UPDATE_VECTORS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(VECTORS).parent().expect("dir"))
            .expect("mkdir");
        std::fs::write(VECTORS, &text).expect("write vectors");
    }
    let stored = std::fs::read_to_string(VECTORS).expect(
        "vectors/groups.json is missing: run with CAROM_UPDATE_VECTORS=1 once, review, commit",
    );
    let stored: Value = serde_json::from_str(&stored).expect("vectors parse");
    assert_eq!(
        stored, generated,
        "the group format or its resolution changed"
    );
}

#[test]
fn the_scripted_concurrency_is_what_the_vectors_show() {
    // The point of the script: Bob's invitation of Dave is concurrent with his removal, so it
    // and Dave's acceptance are void; Carol's rename stands.
    let (ops, history) = script();
    let id = |n: &str| {
        ops.iter()
            .find(|(name, _)| *name == n)
            .expect("scripted")
            .1
            .id()
    };
    let ignored = &history.resolution().ignored;
    assert_eq!(
        ignored.get(&id("bob_invites_dave")),
        Some(&Ignored::ConcurrentlyRemoved)
    );
    assert_eq!(
        ignored.get(&id("dave_accepts")),
        Some(&Ignored::NoSuchInvitation)
    );
    assert_eq!(ignored.len(), 2);
    assert_eq!(history.membership().name, "Night desk");
    let members: Vec<OnionAddress> = history
        .membership()
        .members
        .values()
        .map(|m| m.address)
        .collect();
    assert_eq!(members.len(), 2);
    assert_eq!(history.heads().len(), 2);
}

// ----- the independent check -----

enum Item {
    U(u64),
    Bool(bool),
    B(Vec<u8>),
    T(String),
    A(Vec<Item>),
    M(Vec<(u64, Item)>),
    Null,
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | u8::try_from(n).expect("small"));
    } else if let Ok(n) = u8::try_from(n) {
        out.extend_from_slice(&[m | 24, n]);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(m | 25);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(m | 26);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn put(out: &mut Vec<u8>, item: &Item) {
    let len = |n: usize| u64::try_from(n).expect("small");
    match item {
        Item::U(n) => head(out, 0, *n),
        Item::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Item::Null => out.push(0xf6),
        Item::B(b) => {
            head(out, 2, len(b.len()));
            out.extend_from_slice(b);
        }
        Item::T(s) => {
            head(out, 3, len(s.len()));
            out.extend_from_slice(s.as_bytes());
        }
        Item::A(items) => {
            head(out, 4, len(items.len()));
            for i in items {
                put(out, i);
            }
        }
        Item::M(entries) => {
            head(out, 5, len(entries.len()));
            for (k, v) in entries {
                head(out, 0, *k);
                put(out, v);
            }
        }
    }
}

/// §15.1, from the JSON fields.
fn body_from_fields(f: &Value) -> Vec<u8> {
    let a = &f["action"];
    let u = |k: &str| Item::U(a[k].as_u64().expect("a number"));
    let b = |k: &str| Item::B(unhex(&a[k]));
    let t = |k: &str| Item::T(a[k].as_str().expect("text").to_owned());
    let flag = |k: &str| Item::Bool(a[k].as_bool().expect("a bool"));
    let code = a["type"].as_u64().expect("type");
    let mut action = vec![Item::U(code)];
    action.extend(match code {
        0 => vec![
            t("name"),
            flag("members_can_invite"),
            u("kind"),
            t("member_name"),
        ],
        1 => vec![b("invitee"), u("role")],
        2 => vec![b("invite"), u("kind"), t("name")],
        3 => vec![b("member")],
        4 => vec![],
        5 => vec![b("member"), u("role")],
        6 => vec![t("name")],
        7 => vec![flag("members_can_invite")],
        8 => vec![if a["timer"].is_null() {
            Item::Null
        } else {
            u("timer")
        }],
        other => panic!("action {other}"),
    });
    let parents = f["parents"].as_array().expect("parents");
    let mut out = Vec::new();
    put(
        &mut out,
        &Item::M(vec![
            (0, Item::B(unhex(&f["group"]))),
            (1, Item::B(unhex(&f["author"]))),
            (
                2,
                Item::A(parents.iter().map(|p| Item::B(unhex(p))).collect()),
            ),
            (3, Item::U(f["created_at"].as_u64().expect("created_at"))),
            (4, Item::A(action)),
        ]),
    );
    out
}

#[test]
fn an_independent_construction_matches_the_vectors() {
    use sha3::Digest as _;
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).expect("vectors")).expect("json");
    let label = stored["label"].as_str().expect("label").as_bytes().to_vec();
    for op in stored["operations"].as_array().expect("operations") {
        let body = body_from_fields(&op["fields"]);
        assert_eq!(
            h(&body),
            op["body"].as_str().expect("body"),
            "{}",
            op["name"]
        );
        assert_eq!(
            h(&sha3::Sha3_256::digest(&body)),
            op["id"].as_str().expect("id")
        );
        let author: [u8; 32] = unhex(&op["fields"]["author"]).try_into().expect("32 bytes");
        let key = ed25519_dalek::VerifyingKey::from_bytes(&author).expect("a key");
        let signature =
            ed25519_dalek::Signature::from_slice(&unhex(&op["signature"])).expect("64 bytes");
        let mut signed = label.clone();
        signed.extend_from_slice(&body);
        key.verify_strict(&signed, &signature)
            .expect("the author's signature");
    }
    // §15.3: the members digest, by hand.
    let people = stored["people"].as_array().expect("people");
    for m in std::iter::once(&stored["resolution"]["membership"]).chain(
        stored["membership_at"]
            .as_array()
            .expect("list")
            .iter()
            .map(|a| &a["membership"]),
    ) {
        let mut keys: Vec<(Vec<u8>, u8)> = m["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|member| {
                let person = people
                    .iter()
                    .find(|p| p["address"] == member["address"])
                    .expect("a person of the vectors");
                let kind = u8::try_from(member["kind"].as_u64().expect("kind")).expect("0 or 1");
                (unhex(&person["public_key"]), kind)
            })
            .collect();
        keys.sort();
        let mut hash = sha3::Sha3_256::new();
        hash.update(b"carom/group-members/v1");
        for (key, kind) in keys {
            hash.update(&key);
            hash.update([kind]);
        }
        assert_eq!(
            h(&hash.finalize()),
            m["members_digest"].as_str().expect("digest")
        );
    }
}
