//! Property tests against simple in-memory models.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::StoreRead;

#[derive(Debug, Clone)]
enum Op {
    /// A message to or from contact `0..3`.
    Add { contact: usize, outgoing: bool },
    /// Delete the `n % len`-th stored message, if any.
    Delete { n: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, any::<bool>()).prop_map(|(contact, outgoing)| Op::Add { contact, outgoing }),
        1 => any::<usize>().prop_map(|n| Op::Delete { n }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Paging a conversation with any page size returns every stored message exactly once,
    /// newest first, whatever the interleaving of contacts, directions and deletions; and the
    /// conversation list's counts and newest messages agree.
    #[test]
    fn history_paging_returns_every_message_once_in_order(
        ops in proptest::collection::vec(op(), 0..120),
        page_sizes in proptest::collection::vec(1u32..20, 1..8),
    ) {
        let mut store = Store::open_in_memory().unwrap();
        let contacts: Vec<i64> = (1u8..=3).map(|i| add_contact(&mut store, i)).collect();
        // Model: contact index -> rows, in insertion order.
        let mut model: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        for (n, op) in ops.iter().enumerate() {
            match *op {
                Op::Add { contact, outgoing: is_out } => {
                    let cid = contacts[contact];
                    let row = if is_out {
                        queue(&mut store, cid, n as u64, "o").into_message().row
                    } else {
                        receive(&mut store, cid, n as u64, "i").into_message().row
                    };
                    model.entry(contact).or_default().push(row);
                }
                Op::Delete { n } => {
                    let all: Vec<(usize, usize)> = model
                        .iter()
                        .flat_map(|(c, rows)| (0..rows.len()).map(move |i| (*c, i)))
                        .collect();
                    if all.is_empty() {
                        continue;
                    }
                    let (c, i) = all[n % all.len()];
                    let row = model.get_mut(&c).unwrap().remove(i);
                    prop_assert!(store.write(|tx| tx.delete_message(row)).unwrap());
                }
            }
        }
        for (i, cid) in contacts.iter().enumerate() {
            let expected: Vec<i64> =
                model.get(&i).map(|r| r.iter().rev().copied().collect()).unwrap_or_default();
            let mut got = Vec::new();
            let mut cursor = None;
            let mut page_no = 0;
            loop {
                let size = page_sizes[page_no % page_sizes.len()];
                page_no += 1;
                let page = store.history(*cid, cursor, size).unwrap();
                prop_assert!(page.len() <= size as usize);
                if page.is_empty() {
                    break;
                }
                prop_assert!(page.iter().all(|m| m.contact_id == *cid));
                cursor = page.last().map(|m| m.row);
                got.extend(page.iter().map(|m| m.row));
            }
            prop_assert_eq!(&got, &expected);
        }
    }

    /// Any sequence of deliveries, with any repetitions, stores each (sender, id) once; a
    /// delivery is new exactly when it was not seen before.
    #[test]
    fn deliveries_are_stored_exactly_once(
        deliveries in proptest::collection::vec((0usize..2, 0u64..12), 0..80),
    ) {
        let mut store = Store::open_in_memory().unwrap();
        let contacts = [add_contact(&mut store, 1), add_contact(&mut store, 2)];
        let mut seen = BTreeSet::new();
        for (contact, id) in deliveries {
            let outcome = receive(&mut store, contacts[contact], id, "x");
            prop_assert_eq!(outcome.is_new(), seen.insert((contact, id)));
            prop_assert_eq!(outcome.message().msg_id, msg_id(id));
        }
        for (contact, cid) in contacts.iter().enumerate() {
            let stored = store.history(*cid, None, 1_000).unwrap();
            let distinct = seen.iter().filter(|(c, _)| *c == contact).count();
            prop_assert_eq!(stored.len(), distinct);
        }
    }

    /// Reading the event log from any position in pages of any size returns exactly the
    /// events kept, in order, across appends and prunes; sequence numbers never repeat.
    #[test]
    fn event_log_reads_what_was_kept(
        steps in proptest::collection::vec((1usize..6, proptest::option::of(0u64..8)), 1..20),
        page in 1u32..7,
    ) {
        let mut store = Store::open_in_memory().unwrap();
        let mut kept: Vec<u64> = Vec::new();
        let mut last = 0;
        for (appends, prune) in steps {
            for _ in 0..appends {
                let seq = store.write(|tx| tx.append_event("e", "{}", 1)).unwrap();
                prop_assert!(seq > last);
                last = seq;
                kept.push(seq);
            }
            if let Some(keep) = prune {
                let removed = store.write(|tx| tx.prune_events(keep, &[], 0)).unwrap();
                let drop_count = kept.len().saturating_sub(usize::try_from(keep).unwrap());
                prop_assert_eq!(removed, drop_count as u64);
                kept.drain(..drop_count);
            }
            prop_assert_eq!(store.last_event_seq().unwrap(), last);
            prop_assert_eq!(store.oldest_event_seq(&[]).unwrap(), kept.first().copied());
        }
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let events = store.events_since(after, page).unwrap();
            if events.is_empty() {
                break;
            }
            after = events.last().unwrap().seq;
            got.extend(events.iter().map(|e| e.seq));
        }
        prop_assert_eq!(got, kept);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any passphrase unlocks the key it protects, and no other passphrase does.
    #[test]
    fn key_files_open_only_with_their_passphrase(
        passphrase in proptest::collection::vec(any::<u8>(), 1..48),
        other in proptest::collection::vec(any::<u8>(), 1..48),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = KeyFile::create(&path, Protection::Passphrase(&passphrase), CHEAP).unwrap();
        let unlocked = KeyFile::unlock(&path, Some(&passphrase)).unwrap();
        prop_assert_eq!(unlocked.as_bytes(), key.as_bytes());
        if other != passphrase {
            let wrong = KeyFile::unlock(&path, Some(&other));
            prop_assert!(
                matches!(wrong, Err(crate::Error::WrongPassphrase { .. })),
                "unexpected {:?}",
                wrong
            );
        }
    }
}
