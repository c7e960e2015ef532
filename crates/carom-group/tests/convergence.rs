//! Convergence: members that hold the same operations agree on the membership, whatever order
//! the operations reached them in and however their histories diverged meanwhile.
//!
//! A seeded simulation of up to six people: each acts on its own copy of the history (invite,
//! accept, remove, leave, change roles, rename, set the policy), and copies exchange some of
//! what they lack, in shuffled order, at random moments — so operations are concurrent in every
//! way the schedule allows, and many arrive before their parents. At the end every copy gets
//! everything, and so do fresh histories built in other orders; all must resolve alike, and
//! every member must have joined by its own acceptance of a standing invitation.

use carom_group::{Action, GroupId, History, Policy, Role, SignedOperation};
use carom_proto::{IdentityKey, PeerKind};
use proptest::prelude::*;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

const PEOPLE: usize = 6;
const NOW: u64 = 1_780_000_000_000;

#[derive(Clone, Debug)]
enum Step {
    /// Person `who` tries a change on its own copy.
    Act { who: usize, what: u8, whom: usize },
    /// `from` sends `to` some of what `to` lacks, shuffled.
    Sync { from: usize, to: usize, share: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..PEOPLE, 0u8..100, 0..PEOPLE).prop_map(|(who, what, whom)| Step::Act { who, what, whom }),
        2 => (0..PEOPLE, 0..PEOPLE, 1u8..=4).prop_map(|(from, to, share)| Step::Sync { from, to, share }),
    ]
}

struct Sim {
    people: Vec<IdentityKey>,
    copies: Vec<Option<History>>,
    made: Vec<SignedOperation>,
    rng: ChaCha8Rng,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let people: Vec<IdentityKey> = (1..=PEOPLE)
            .map(|n| IdentityKey::from_seed(&[u8::try_from(n).expect("a few people"); 32]))
            .collect();
        let creation = History::create(
            &people[0],
            GroupId([3; 16]),
            "group".into(),
            // Members may invite at first, so that a group whose admins are gone still grows
            // (the policy is changed at random later).
            Policy {
                members_can_invite: true,
            },
            PeerKind::Human,
            "p0".into(),
            NOW,
        );
        let made = creation.operations().cloned().collect();
        let mut copies: Vec<Option<History>> = (0..PEOPLE).map(|_| None).collect();
        copies[0] = Some(creation);
        Sim {
            people,
            copies,
            made,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn act(&mut self, who: usize, what: u8, whom: usize) {
        // Whoever acts holds a copy (the others have nothing to act on).
        let holders: Vec<usize> = (0..PEOPLE).filter(|&p| self.copies[p].is_some()).collect();
        let who = holders[who % holders.len()];
        let history = self.copies[who].as_mut().expect("a holder");
        let target = self.people[whom].address();
        let me = self.people[who].address();
        // Weighted so that the group grows and stays busy: mostly invitations and acceptances,
        // a steady share of removals and role changes (the concurrent cases), few departures.
        let action = match what {
            0..30 => Action::Invite {
                invitee: target,
                role: if self.rng.gen_bool(0.3) {
                    Role::Admin
                } else {
                    Role::Member
                },
            },
            30..55 => {
                let Some(invitation) = history
                    .membership()
                    .invitations
                    .values()
                    .find(|inv| inv.invitee == me)
                else {
                    return;
                };
                Action::Accept {
                    invite: invitation.id,
                    kind: if who.is_multiple_of(2) {
                        PeerKind::Human
                    } else {
                        PeerKind::Bot
                    },
                    name: format!("p{who}"),
                }
            }
            55..67 => Action::Remove { member: target },
            67..70 => Action::Leave,
            70..80 => Action::SetRole {
                member: target,
                role: Role::Admin,
            },
            80..87 => Action::SetRole {
                member: target,
                role: Role::Member,
            },
            87..91 => Action::Rename {
                name: format!("renamed by p{who}"),
            },
            91..93 => Action::SetTimer {
                timer: self
                    .rng
                    .gen_bool(0.7)
                    .then(|| self.rng.gen_range(1..=86_400)),
            },
            _ => Action::SetPolicy {
                policy: Policy {
                    members_can_invite: self.rng.gen_bool(0.5),
                },
            },
        };
        // A change that would have no effect is refused locally and never sent.
        let Ok(op) = history.propose(&self.people[who], action, NOW) else {
            return;
        };
        let invited = matches!(op.operation().action, Action::Invite { .. });
        self.made.push(op);
        // An invitation travels to its invitee with the history it builds on.
        if invited {
            self.sync(who, whom, 4);
        }
    }

    fn sync(&mut self, from: usize, to: usize, share: u8) {
        if from == to {
            return;
        }
        let Some(source) = self.copies[from].as_ref() else {
            return;
        };
        let Some(target) = self.copies[to].as_ref() else {
            // Someone without the group gets all of it, but only with an invitation.
            if !source
                .membership()
                .invitations
                .values()
                .any(|inv| inv.invitee == self.people[to].address())
            {
                return;
            }
            let (history, refused) =
                History::from_operations(source.operations().cloned()).expect("rebuilds");
            assert!(refused.is_empty(), "{refused:?}");
            self.copies[to] = Some(history);
            return;
        };
        let mut lacking: Vec<SignedOperation> = source
            .missing_for(&target.heads())
            .into_iter()
            .cloned()
            .collect();
        lacking.shuffle(&mut self.rng);
        lacking.truncate(lacking.len() * usize::from(share) / 4);
        let target = self.copies[to].as_mut().expect("checked above");
        for op in lacking {
            target.add(op).expect("a peer's operation fits");
        }
    }
}

/// Runs the schedule and checks convergence; returns the number of operations made and how
/// many of them had no effect.
fn check(seed: u64, steps: &[Step]) -> (usize, usize) {
    let mut sim = Sim::new(seed);
    for step in steps {
        match *step {
            Step::Act { who, what, whom } => sim.act(who, what, whom),
            Step::Sync { from, to, share } => sim.sync(from, to, share),
        }
    }
    // A fresh history from everything made, in the order made and in shuffled orders.
    let (reference, refused) = History::from_operations(sim.made.clone()).expect("rebuilds");
    assert!(refused.is_empty(), "{refused:?}");
    let expected = reference.resolution().clone();
    for _ in 0..3 {
        let mut ops = sim.made.clone();
        ops.shuffle(&mut sim.rng);
        let (history, refused) = History::from_operations(ops).expect("rebuilds");
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(
            history.resolution(),
            &expected,
            "another order, another membership"
        );
    }
    // Every copy, once it has everything.
    for copy in sim.copies.iter_mut().flatten() {
        for op in reference.missing_for(&copy.heads()) {
            copy.add(op.clone()).expect("fits");
        }
        assert_eq!(copy.len(), reference.len());
        assert_eq!(copy.resolution(), &expected, "a copy diverged");
    }
    // Consent: every member but the creator joined by its own acceptance of an invitation
    // that some member made.
    for member in expected.membership.members.values() {
        let joined = reference.get(&member.joined_by).expect("in the history");
        assert_eq!(joined.operation().author, member.address);
        match &joined.operation().action {
            Action::Create { .. } => assert_eq!(member.address, sim.people[0].address()),
            Action::Accept { invite, kind, .. } => {
                assert_eq!(*kind, member.kind);
                let invitation = reference.get(invite).expect("in the history");
                assert!(matches!(
                    invitation.operation().action,
                    Action::Invite { invitee, .. } if invitee == member.address
                ));
            }
            other => panic!("joined by {}", other.name()),
        }
    }
    // Removal beats what the removed did concurrently: nothing of it took effect, except
    // removing (or demoting) the remover in return.
    for removal in reference.operations() {
        let Action::Remove { member } = removal.operation().action else {
            continue;
        };
        if expected.ignored.contains_key(&removal.id()) || member == removal.operation().author {
            continue;
        }
        let remover = removal.operation().author;
        for op in reference.operations() {
            let body = op.operation();
            if body.author != member
                || reference.are_concurrent(&op.id(), &removal.id()) != Some(true)
            {
                continue;
            }
            let retaliates = match body.action {
                Action::Remove { member } => member == remover,
                Action::SetRole { member, role } => member == remover && role == Role::Member,
                _ => false,
            };
            assert!(
                retaliates || expected.ignored.contains_key(&op.id()),
                "{} by a concurrently removed member took effect",
                body.action.name()
            );
        }
    }
    (sim.made.len(), expected.ignored.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn every_copy_converges_on_one_membership(seed: u64, steps in prop::collection::vec(step(), 1..300)) {
        check(seed, &steps);
    }
}

/// A long fixed schedule, so that deep histories with many concurrent branches are covered on
/// every run, not only when the generator happens to produce one.
#[test]
fn a_long_busy_schedule_converges() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xC0FFEE);
    let steps: Vec<Step> = (0..2000)
        .map(|_| {
            if rng.gen_bool(0.6) {
                Step::Act {
                    who: rng.gen_range(0..PEOPLE),
                    what: rng.gen_range(0..100),
                    whom: rng.gen_range(0..PEOPLE),
                }
            } else {
                Step::Sync {
                    from: rng.gen_range(0..PEOPLE),
                    to: rng.gen_range(0..PEOPLE),
                    share: rng.gen_range(1..=4),
                }
            }
        })
        .collect();
    let (made, ignored) = check(7, &steps);
    // The point of this schedule is its depth: make sure it has it.
    assert!(
        made >= 150 && ignored >= 5,
        "made {made}, ignored {ignored}"
    );
}
