//! The membership rules of `docs/protocol.md` §15.2, one scenario each.

use carom_group::{
    Action, Added, GroupId, History, HistoryError, Ignored, OpId, Operation, Policy, Role,
    SignedOperation, limits::MAX_MEMBERS,
};
use carom_proto::{IdentityKey, OnionAddress, PeerKind};

fn person(n: u8) -> IdentityKey {
    IdentityKey::from_seed(&[n; 32])
}

const GROUP: GroupId = GroupId([9; 16]);
const NOW: u64 = 1_780_000_000_000;

fn new_group(creator: &IdentityKey) -> History {
    History::create(
        creator,
        GROUP,
        "Newsroom".into(),
        Policy {
            members_can_invite: false,
        },
        PeerKind::Human,
        "creator".into(),
        NOW,
    )
}

fn copy(history: &History) -> History {
    History::from_operations(history.operations().cloned())
        .expect("a history's own operations rebuild it")
        .0
}

fn invite(
    history: &mut History,
    by: &IdentityKey,
    who: &IdentityKey,
    role: Role,
) -> SignedOperation {
    history
        .propose(
            by,
            Action::Invite {
                invitee: who.address(),
                role,
            },
            NOW,
        )
        .expect("the invitation is allowed")
}

fn accept(history: &mut History, who: &IdentityKey, kind: PeerKind) -> SignedOperation {
    let invite = history
        .membership()
        .invitations
        .values()
        .find(|inv| inv.invitee == who.address())
        .expect("an invitation stands")
        .id;
    history
        .propose(
            who,
            Action::Accept {
                invite,
                kind,
                name: format!("member {}", who.address().redacted()),
            },
            NOW,
        )
        .expect("the acceptance is allowed")
}

/// `creator` and `members` (each invited by the creator and accepted), as one history.
fn group_of(creator: &IdentityKey, members: &[&IdentityKey]) -> History {
    let mut history = new_group(creator);
    for member in members {
        invite(&mut history, creator, member, Role::Member);
        accept(&mut history, member, PeerKind::Human);
    }
    history
}

fn add_all(history: &mut History, ops: &[SignedOperation]) {
    for op in ops {
        history.add(op.clone()).expect("the operation fits");
    }
}

fn members(history: &History) -> Vec<OnionAddress> {
    history
        .membership()
        .members
        .values()
        .map(|m| m.address)
        .collect()
}

#[test]
fn the_creator_is_the_first_member_and_an_admin() {
    let alice = person(1);
    let history = new_group(&alice);
    let membership = history.membership();
    assert_eq!(membership.name, "Newsroom");
    assert_eq!(members(&history), vec![alice.address()]);
    let me = membership.member(&alice.address()).expect("a member");
    assert_eq!((me.role, me.kind), (Role::Admin, PeerKind::Human));
    assert_eq!(history.heads().len(), 1);
}

#[test]
fn nobody_is_a_member_before_accepting_and_then_with_the_declared_kind() {
    let (alice, bot) = (person(1), person(2));
    let mut history = new_group(&alice);
    invite(&mut history, &alice, &bot, Role::Member);
    assert!(!history.membership().is_member(&bot.address()));
    assert_eq!(history.membership().invitations.len(), 1);
    accept(&mut history, &bot, PeerKind::Bot);
    let member = history.membership().member(&bot.address()).expect("joined");
    assert_eq!((member.kind, member.role), (PeerKind::Bot, Role::Member));
    assert_eq!(member.invited_by, Some(alice.address()));
    assert!(history.membership().invitations.is_empty());
}

#[test]
fn only_admins_invite_unless_the_policy_lets_members_and_never_as_admins() {
    let (alice, bob, carol) = (person(1), person(2), person(3));
    let mut history = group_of(&alice, &[&bob]);
    let refused = history.propose(
        &bob,
        Action::Invite {
            invitee: carol.address(),
            role: Role::Member,
        },
        NOW,
    );
    assert_eq!(
        refused,
        Err(HistoryError::WouldBeIgnored(Ignored::NotAllowed))
    );
    history
        .propose(
            &alice,
            Action::SetPolicy {
                policy: Policy {
                    members_can_invite: true,
                },
            },
            NOW,
        )
        .expect("an admin sets the policy");
    let as_admin = history.propose(
        &bob,
        Action::Invite {
            invitee: carol.address(),
            role: Role::Admin,
        },
        NOW,
    );
    assert_eq!(
        as_admin,
        Err(HistoryError::WouldBeIgnored(Ignored::NotAllowed))
    );
    invite(&mut history, &bob, &carol, Role::Member);
    accept(&mut history, &carol, PeerKind::Human);
    assert!(history.membership().is_member(&carol.address()));
}

#[test]
fn a_stranger_cannot_accept_someone_elses_invitation_or_change_anything() {
    let (alice, bob, mallory) = (person(1), person(2), person(6));
    let mut history = new_group(&alice);
    let invitation = invite(&mut history, &alice, &bob, Role::Member);
    let stolen = Operation {
        group: GROUP,
        author: mallory.address(),
        parents: history.heads(),
        created_at: NOW,
        action: Action::Accept {
            invite: invitation.id(),
            kind: PeerKind::Human,
            name: "bob".into(),
        },
    }
    .sign(&mallory);
    history.add(stolen.clone()).expect("it fits the history");
    assert_eq!(
        history.resolution().ignored.get(&stolen.id()),
        Some(&Ignored::NotTheInvitee)
    );
    let rename = Operation {
        group: GROUP,
        author: mallory.address(),
        parents: history.heads(),
        created_at: NOW,
        action: Action::Rename {
            name: "pwned".into(),
        },
    }
    .sign(&mallory);
    history.add(rename.clone()).expect("it fits the history");
    assert_eq!(
        history.resolution().ignored.get(&rename.id()),
        Some(&Ignored::NotAMember)
    );
    assert_eq!(history.membership().name, "Newsroom");
    assert!(!history.membership().is_member(&mallory.address()));
}

#[test]
fn an_acceptance_must_build_on_its_invitation() {
    let (alice, bob) = (person(1), person(2));
    let mut history = new_group(&alice);
    let genesis = history.heads();
    let invitation = invite(&mut history, &alice, &bob, Role::Member);
    let premature = Operation {
        group: GROUP,
        author: bob.address(),
        parents: genesis,
        created_at: NOW,
        action: Action::Accept {
            invite: invitation.id(),
            kind: PeerKind::Human,
            name: "bob".into(),
        },
    }
    .sign(&bob);
    assert_eq!(
        history.add(premature),
        Err(HistoryError::AcceptWithoutInvitation)
    );
}

#[test]
fn a_concurrent_removal_beats_an_invitation_by_the_removed_member() {
    let (alice, bob, carol) = (person(1), person(2), person(3));
    let mut base = new_group(&alice);
    invite(&mut base, &alice, &bob, Role::Admin);
    accept(&mut base, &bob, PeerKind::Human);
    // Alice removes Bob while Bob, not having seen it, invites Carol, who accepts.
    let mut at_alice = copy(&base);
    let mut at_bob = copy(&base);
    let removal = at_alice
        .propose(
            &alice,
            Action::Remove {
                member: bob.address(),
            },
            NOW,
        )
        .expect("an admin removes");
    let invitation = invite(&mut at_bob, &bob, &carol, Role::Member);
    let acceptance = accept(&mut at_bob, &carol, PeerKind::Human);
    let rename = at_bob
        .propose(
            &bob,
            Action::Rename {
                name: "Bob's".into(),
            },
            NOW,
        )
        .expect("an admin renames");
    add_all(
        &mut at_alice,
        &[invitation.clone(), acceptance.clone(), rename.clone()],
    );
    add_all(&mut at_bob, &[removal]);
    for history in [&at_alice, &at_bob] {
        assert_eq!(members(history), vec![alice.address()]);
        assert_eq!(history.membership().name, "Newsroom");
        let ignored = &history.resolution().ignored;
        assert_eq!(
            ignored.get(&invitation.id()),
            Some(&Ignored::ConcurrentlyRemoved)
        );
        assert_eq!(
            ignored.get(&rename.id()),
            Some(&Ignored::ConcurrentlyRemoved)
        );
        assert_eq!(
            ignored.get(&acceptance.id()),
            Some(&Ignored::NoSuchInvitation)
        );
    }
    assert_eq!(at_alice.resolution(), at_bob.resolution());
}

#[test]
fn what_a_member_did_before_its_removal_stands() {
    let (alice, bob, carol) = (person(1), person(2), person(3));
    let mut history = new_group(&alice);
    invite(&mut history, &alice, &bob, Role::Admin);
    accept(&mut history, &bob, PeerKind::Human);
    invite(&mut history, &bob, &carol, Role::Member);
    accept(&mut history, &carol, PeerKind::Human);
    history
        .propose(
            &alice,
            Action::Remove {
                member: bob.address(),
            },
            NOW,
        )
        .expect("removed");
    assert_eq!(members(&history).len(), 2);
    assert!(history.membership().is_member(&carol.address()));
}

#[test]
fn mutual_concurrent_removals_both_take_effect() {
    let (alice, bob, carol) = (person(1), person(2), person(3));
    let mut base = new_group(&alice);
    for who in [&bob, &carol] {
        invite(&mut base, &alice, who, Role::Admin);
        accept(&mut base, who, PeerKind::Human);
    }
    let mut at_alice = copy(&base);
    let mut at_bob = copy(&base);
    let a = at_alice
        .propose(
            &alice,
            Action::Remove {
                member: bob.address(),
            },
            NOW,
        )
        .expect("removed");
    let b = at_bob
        .propose(
            &bob,
            Action::Remove {
                member: alice.address(),
            },
            NOW,
        )
        .expect("removed");
    at_alice.add(b).expect("fits");
    at_bob.add(a).expect("fits");
    assert_eq!(members(&at_alice), vec![carol.address()]);
    assert_eq!(at_alice.resolution(), at_bob.resolution());
}

#[test]
fn a_demoted_admin_loses_what_it_did_as_admin_concurrently_but_keeps_the_rest() {
    let (alice, bob, carol) = (person(1), person(2), person(3));
    let mut base = new_group(&alice);
    invite(&mut base, &alice, &bob, Role::Admin);
    accept(&mut base, &bob, PeerKind::Human);
    invite(&mut base, &alice, &carol, Role::Member);
    accept(&mut base, &carol, PeerKind::Human);
    let mut at_alice = copy(&base);
    let mut at_bob = copy(&base);
    let demote = at_alice
        .propose(
            &alice,
            Action::SetRole {
                member: bob.address(),
                role: Role::Member,
            },
            NOW,
        )
        .expect("demoted");
    let kick = at_bob
        .propose(
            &bob,
            Action::Remove {
                member: carol.address(),
            },
            NOW,
        )
        .expect("removed");
    at_alice.add(kick.clone()).expect("fits");
    at_bob.add(demote).expect("fits");
    for history in [&at_alice, &at_bob] {
        assert!(history.membership().is_member(&carol.address()));
        assert_eq!(
            history.membership().member(&bob.address()).map(|m| m.role),
            Some(Role::Member)
        );
        assert_eq!(
            history.resolution().ignored.get(&kick.id()),
            Some(&Ignored::ConcurrentlyRemoved)
        );
    }
}

#[test]
fn removing_someone_withdraws_the_invitations_they_made_and_those_made_to_them() {
    let (alice, bob, carol, dave) = (person(1), person(2), person(3), person(4));
    let mut history = new_group(&alice);
    invite(&mut history, &alice, &bob, Role::Admin);
    accept(&mut history, &bob, PeerKind::Human);
    invite(&mut history, &bob, &carol, Role::Member);
    invite(&mut history, &alice, &dave, Role::Member);
    let mut at_carol = copy(&history);
    history
        .propose(
            &alice,
            Action::Remove {
                member: bob.address(),
            },
            NOW,
        )
        .expect("removed");
    history
        .propose(
            &alice,
            Action::Remove {
                member: dave.address(),
            },
            NOW,
        )
        .expect("withdrawn");
    assert!(history.membership().invitations.is_empty());
    // Carol accepts, having seen neither: her acceptance is void wherever it is resolved.
    let late = accept(&mut at_carol, &carol, PeerKind::Human);
    history.add(late.clone()).expect("fits");
    assert_eq!(
        history.resolution().ignored.get(&late.id()),
        Some(&Ignored::NoSuchInvitation)
    );
    assert!(!history.membership().is_member(&carol.address()));
}

#[test]
fn the_membership_at_earlier_heads_is_the_set_a_message_was_sent_to() {
    let (alice, bob, carol) = (person(1), person(2), person(3));
    let mut history = group_of(&alice, &[&bob]);
    let before = history.heads();
    invite(&mut history, &alice, &carol, Role::Member);
    accept(&mut history, &carol, PeerKind::Bot);
    let then = history.membership_at(&before).expect("known heads");
    assert!(!then.is_member(&carol.address()));
    assert!(history.membership().is_member(&carol.address()));
    assert_ne!(then.members_digest(), history.membership().members_digest());
    assert_eq!(
        history.membership_at(&history.heads()).expect("known"),
        *history.membership()
    );
    assert!(matches!(
        history.membership_at(&[OpId([0; 32])]),
        Err(HistoryError::Unknown(_))
    ));
}

#[test]
fn operations_that_arrive_before_their_parents_wait_for_them() {
    let (alice, bob) = (person(1), person(2));
    let full = group_of(&alice, &[&bob]);
    let ops: Vec<SignedOperation> = full.operations().cloned().collect();
    let mut history = History::new(ops[0].clone()).expect("a creation");
    assert!(matches!(history.add(ops[2].clone()), Ok(Added::Waiting(_))));
    assert!(!history.membership().is_member(&bob.address()));
    assert_eq!(
        history.add(ops[1].clone()),
        Ok(Added::Added(vec![ops[1].id(), ops[2].id()]))
    );
    assert_eq!(history.resolution(), full.resolution());
    assert_eq!(history.add(ops[2].clone()), Ok(Added::Duplicate));
}

#[test]
fn a_second_creation_and_another_groups_operations_are_refused() {
    let (alice, bob) = (person(1), person(2));
    let mut history = new_group(&alice);
    let other = History::create(
        &bob,
        GroupId([1; 16]),
        "Other".into(),
        Policy {
            members_can_invite: true,
        },
        PeerKind::Human,
        "bob".into(),
        NOW,
    );
    let creation = other.operations().next().expect("a creation").clone();
    assert_eq!(history.add(creation), Err(HistoryError::WrongGroup));
    let same_group_creation = Operation {
        group: GROUP,
        author: bob.address(),
        parents: vec![],
        created_at: NOW,
        action: Action::Create {
            name: "Mine".into(),
            policy: Policy {
                members_can_invite: true,
            },
            kind: PeerKind::Human,
            member_name: "bob".into(),
        },
    }
    .sign(&bob);
    assert_eq!(
        history.add(same_group_creation),
        Err(HistoryError::SecondCreation)
    );
}

#[test]
fn a_full_group_admits_nobody_more() {
    let alice = person(1);
    let mut history = new_group(&alice);
    let people: Vec<IdentityKey> = (0..MAX_MEMBERS)
        .map(|n| {
            let mut seed = [0xAA; 32];
            seed[..8].copy_from_slice(&n.to_be_bytes());
            IdentityKey::from_seed(&seed)
        })
        .collect();
    for who in &people[..MAX_MEMBERS - 1] {
        invite(&mut history, &alice, who, Role::Member);
        accept(&mut history, who, PeerKind::Human);
    }
    assert_eq!(history.membership().members.len(), MAX_MEMBERS);
    let last = &people[MAX_MEMBERS - 1];
    let invitation = invite(&mut history, &alice, last, Role::Member);
    let refused = history.propose(
        last,
        Action::Accept {
            invite: invitation.id(),
            kind: PeerKind::Human,
            name: "one too many".into(),
        },
        NOW,
    );
    assert_eq!(
        refused,
        Err(HistoryError::WouldBeIgnored(Ignored::GroupFull))
    );
}

#[test]
fn a_member_who_left_can_be_invited_back() {
    let (alice, bob) = (person(1), person(2));
    let mut history = group_of(&alice, &[&bob]);
    history.propose(&bob, Action::Leave, NOW).expect("left");
    assert!(!history.membership().is_member(&bob.address()));
    invite(&mut history, &alice, &bob, Role::Member);
    accept(&mut history, &bob, PeerKind::Bot);
    assert_eq!(
        history.membership().member(&bob.address()).map(|m| m.kind),
        Some(PeerKind::Bot)
    );
}

#[test]
fn only_admins_set_the_disappearing_timer_and_every_copy_agrees_on_it() {
    let (alice, bob) = (person(1), person(2));
    let mut history = group_of(&alice, &[&bob]);
    assert_eq!(history.membership().timer, None);
    let refused = history.propose(&bob, Action::SetTimer { timer: Some(60) }, NOW);
    assert_eq!(
        refused,
        Err(HistoryError::WouldBeIgnored(Ignored::NotAllowed))
    );
    history
        .propose(&alice, Action::SetTimer { timer: Some(3_600) }, NOW)
        .expect("an admin sets it");
    assert_eq!(history.membership().timer, Some(3_600));
    assert_eq!(copy(&history).membership().timer, Some(3_600));
    history
        .propose(&alice, Action::SetTimer { timer: None }, NOW)
        .expect("off");
    assert_eq!(history.membership().timer, None);
    // A member promoted to admin may.
    history
        .propose(
            &alice,
            Action::SetRole {
                member: bob.address(),
                role: Role::Admin,
            },
            NOW,
        )
        .expect("promoted");
    history
        .propose(&bob, Action::SetTimer { timer: Some(300) }, NOW)
        .expect("an admin now");
    assert_eq!(copy(&history).membership().timer, Some(300));
}
