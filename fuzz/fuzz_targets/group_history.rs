//! Group operations and histories on arbitrary input: the operation decoder never panics and
//! accepts only canonical bodies; and a history built from operations the input describes
//! (signed by a few fixed identities, building on earlier ones) never panics and resolves the
//! same whichever order its operations are added in.
#![no_main]

use carom_group::{Action, GroupId, History, Operation, Policy, Role, SignedOperation};
use carom_proto::{IdentityKey, PeerKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = Operation::decode(data) {
        assert_eq!(op.encode(), data);
    }
    let _ = SignedOperation::decode(data);

    let people: Vec<IdentityKey> = (1..=4u8)
        .map(|n| IdentityKey::from_seed(&[n; 32]))
        .collect();
    let mut history = History::create(
        &people[0],
        GroupId([1; 16]),
        "g".into(),
        Policy {
            members_can_invite: data.first().is_some_and(|b| b & 1 == 1),
        },
        PeerKind::Human,
        "p0".into(),
        0,
    );
    let mut made: Vec<SignedOperation> = history.operations().cloned().collect();
    for chunk in data.chunks_exact(4) {
        let author = &people[usize::from(chunk[0]) % people.len()];
        let target = people[usize::from(chunk[1]) % people.len()].address();
        let action = match chunk[2] % 8 {
            0 => Action::Invite { invitee: target, role: if chunk[3] & 1 == 1 { Role::Admin } else { Role::Member } },
            1 => match made.iter().rev().find(|op| matches!(op.operation().action, Action::Invite { invitee, .. } if invitee == author.address())) {
                Some(invite) => Action::Accept { invite: invite.id(), kind: PeerKind::Bot, name: String::new() },
                None => continue,
            },
            2 => Action::Remove { member: target },
            3 => Action::Leave,
            4 => Action::SetRole { member: target, role: Role::Admin },
            5 => Action::SetRole { member: target, role: Role::Member },
            6 => Action::Rename { name: "r".into() },
            _ => Action::SetPolicy { policy: Policy { members_can_invite: chunk[3] & 2 == 2 } },
        };
        // Build on a few earlier operations the input picks (not only the heads), so that
        // operations are concurrent in arbitrary ways.
        let mut parents: Vec<_> = [chunk[3], chunk[3].wrapping_mul(7), chunk[1]]
            .iter()
            .map(|&b| made[usize::from(b) % made.len()].id())
            .collect();
        parents.sort();
        parents.dedup();
        let op = Operation {
            group: GroupId([1; 16]),
            author: author.address(),
            parents,
            created_at: 0,
            action,
        }
        .sign(author);
        if history.add(op.clone()).is_ok() {
            made.push(op);
        }
    }
    let mut reversed = made.clone();
    reversed.reverse();
    let (again, _) = History::from_operations(reversed).expect("has a creation");
    assert_eq!(again.resolution(), history.resolution());
});
