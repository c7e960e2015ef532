//! Nothing readable at rest: known markers never appear in any file of the data directory.

use zeroize::Zeroizing;

use super::*;
use crate::{IdentityRecord, StoreRead};

const BODY: &str = "MARKER-BODY-the eagle lands at midnight";
const NICKNAME: &str = "MARKER-NICK-Zanzibar";
const OFFERED: &str = "MARKER-OFFERED-Quokka";
const GREETING: &str = "MARKER-GREETING-we met at the conference";
const ONION: &str = "markerxy2p7onionaddressqz3vbkh5r4t6y7u8i9o0p1a2s3d4f5g6hid";
const SEED: [u8; 32] = *b"MARKER-SEED-0123456789abcdefghij";

/// Markers whose absence is checked, as bytes (UTF-8 and, for the binary ones, raw).
fn markers(key: &DbKey) -> Vec<(String, Vec<u8>)> {
    let mut list: Vec<(String, Vec<u8>)> = [BODY, NICKNAME, OFFERED, GREETING, ONION]
        .iter()
        .map(|m| ((*m).to_owned(), m.as_bytes().to_vec()))
        .collect();
    // A distinctive slice of each, in case a marker straddles a page boundary in some file.
    for (name, bytes) in list.clone() {
        list.push((
            format!("tail of {name}"),
            bytes[bytes.len() - 12..].to_vec(),
        ));
    }
    list.push(("identity seed".into(), SEED.to_vec()));
    list.push(("database key".into(), key.as_bytes().to_vec()));
    list.push((
        "database key (hex)".into(),
        hex::encode(key.as_bytes()).into_bytes(),
    ));
    list
}

fn store_markers(store: &mut Store) {
    store
        .write(|tx| {
            tx.save_identity(&IdentityRecord {
                seed: Zeroizing::new(SEED),
                device_secret: Zeroizing::new([0x11; 32]),
                device_cert: b"cert".to_vec(),
                created_at: 1,
            })?;
            let mut contact = new_contact(0x42, NICKNAME, 10);
            contact.offered_nickname = Some(OFFERED.into());
            contact.greeting = Some(GREETING.into());
            let id = tx.insert_contact(&contact)?;
            tx.store_incoming(&incoming(id, 1, BODY, 20))?;
            tx.queue_outgoing(&outgoing(id, 2, &format!("{BODY} (reply)"), 30))?;
            tx.append_event(
                "contact.added",
                &format!("{{\"address\":\"{ONION}.onion\",\"nickname\":\"{NICKNAME}\"}}"),
                30,
            )?;
            Ok(())
        })
        .unwrap();
}

/// Panics naming every marker found in any file of `dir`.
fn assert_no_markers(dir: &Path, key: &DbKey) -> Vec<String> {
    let files = files_in(dir);
    let mut found = Vec::new();
    for (path, bytes) in &files {
        for (name, marker) in markers(key) {
            if contains(bytes, &marker) {
                found.push(format!("{name} in {}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "plaintext at rest: {found:#?}");
    files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn no_marker_is_readable_in_any_file_while_open_and_after_close() {
    let (profile, mut store) = Profile::new(b"pw");
    store_markers(&mut store);
    // With the store open, the transactions sit in the WAL, not yet checkpointed.
    let names = assert_no_markers(profile.dir.path(), &profile.key);
    assert!(names.contains(&"carom.db-wal".to_owned()), "{names:?}");
    assert!(names.contains(&"carom.db-shm".to_owned()), "{names:?}");
    let wal_len = std::fs::metadata(profile.dir.path().join("carom.db-wal"))
        .unwrap()
        .len();
    assert!(wal_len > 0, "the WAL must hold the un-checkpointed commits");
    // The markers really are stored.
    let contact = store.contact_by_identity(&[0x42; 32]).unwrap().unwrap();
    assert_eq!(contact.nickname, NICKNAME);
    assert_eq!(store.history(contact.id, None, 10).unwrap()[1].body, BODY);

    drop(store);
    let names = assert_no_markers(profile.dir.path(), &profile.key);
    assert_eq!(names, ["carom.db", "carom.key"]);

    // And after a passphrase change, which rewrites the key file.
    KeyFile::change_passphrase(
        &profile.key_path,
        Some(b"pw"),
        Protection::Passphrase(b"pw2"),
        CHEAP,
    )
    .unwrap();
    assert_no_markers(profile.dir.path(), &profile.key);
}

#[test]
fn the_scan_finds_markers_in_an_unencrypted_database() {
    // Control: the same data in a plain (unkeyed) SQLite database is found by the same scan,
    // so the test above would fail if encryption were off.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (body TEXT);")
        .unwrap();
    conn.execute("INSERT INTO t VALUES (?1)", [BODY]).unwrap();
    let key = DbKey::from_bytes([0x77; 32]);
    let files = files_in(dir.path());
    let hit = files
        .iter()
        .any(|(_, bytes)| contains(bytes, BODY.as_bytes()));
    assert!(hit, "the scan must see plaintext when there is some");
    let outcome = std::panic::catch_unwind(|| assert_no_markers(dir.path(), &key));
    assert!(outcome.is_err());
}

#[test]
fn ram_only_store_writes_no_file() {
    let mut store = Store::open_in_memory().unwrap();
    store_markers(&mut store);
    // Enough data to spill a sort or temporary b-tree, which must stay in RAM.
    let contact = store.contact_by_identity(&[0x42; 32]).unwrap().unwrap().id;
    store
        .write(|tx| {
            for n in 10..2_000 {
                tx.store_incoming(&incoming(contact, n, &BODY.repeat(4), n))?;
            }
            Ok(())
        })
        .unwrap();
    let sorted: i64 = store
        .connection()
        .query_row(
            "SELECT count(*) FROM (SELECT body FROM messages ORDER BY body, sent_at DESC)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sorted, 2_000 - 10 + 2);
    let temp_store: i64 = store
        .connection()
        .pragma_query_value(None, "temp_store", |r| r.get(0))
        .unwrap();
    assert_eq!(temp_store, 2);
    let db_list: String = store
        .connection()
        .query_row(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(db_list, "", "the main database must have no file");
    let journal: String = store
        .connection()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(
        journal, "memory",
        "the rollback journal must stay in RAM too"
    );
    assert_eq!(store.path(), None);
}
