//! Damaged files, wrong keys and full disks: each a clear error naming the file, never a
//! panic, never a silent reset, and nothing committed lost.

use std::fs;
use std::os::unix::fs::FileExt;

use super::*;
use crate::{Error, ErrorKind, StoreRead};

/// SQLCipher 4's page size.
const PAGE: u64 = 4096;

fn assert_names(error: &Error, path: &Path) {
    let shown = error.to_string();
    assert!(
        shown.contains(&*path.to_string_lossy()),
        "the message must name {}: {shown}",
        path.display()
    );
}

/// A closed database of a few hundred pages: one contact, `n` messages.
fn populated(n: u64) -> (Profile, i64) {
    let (profile, mut store) = Profile::new(b"pw");
    let alice = add_contact(&mut store, 1);
    store
        .write(|tx| {
            for i in 0..n {
                tx.store_incoming(&incoming(
                    alice,
                    i,
                    &format!("message {i} {}", "x".repeat(300)),
                    i,
                ))?;
            }
            Ok(())
        })
        .unwrap();
    store.close().unwrap();
    (profile, alice)
}

/// Reads every message; returns the first error.
fn read_everything(store: &Store, contact: i64) -> Result<usize, Error> {
    let mut cursor = None;
    let mut total = 0;
    loop {
        let page = store.history(contact, cursor, 100)?;
        if page.is_empty() {
            return Ok(total);
        }
        total += page.len();
        cursor = page.last().map(|m| m.row);
    }
}

/// Every file of the directory with its content, to compare before and after.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_in(dir)
}

#[test]
fn wrong_key_is_a_distinct_error_and_changes_nothing() {
    let (profile, _) = populated(10);
    let before = snapshot(profile.dir.path());
    let wrong = DbKey::from_bytes([0x33; 32]);
    let error = Store::open(&profile.db_path, &wrong).unwrap_err();
    assert!(matches!(error, Error::WrongKey { .. }), "{error:?}");
    assert_eq!(error.kind().as_str(), "wrong_key");
    assert_names(&error, &profile.db_path);
    assert_eq!(snapshot(profile.dir.path()), before);
    // The right key still works.
    let store = profile.open();
    store.check_integrity().unwrap();
}

#[test]
fn a_key_file_for_another_profile_gives_wrong_key() {
    let (profile, _) = populated(3);
    let other_key = KeyFile::create(
        &profile.dir.path().join("other.key"),
        Protection::Passphrase(b"pw"),
        CHEAP,
    )
    .unwrap();
    let error = Store::open(&profile.db_path, &other_key).unwrap_err();
    assert!(matches!(error, Error::WrongKey { .. }), "{error:?}");
}

#[test]
fn corrupted_middle_pages_are_reported_naming_the_file() {
    let (profile, alice) = populated(2_000);
    let len = fs::metadata(&profile.db_path).unwrap().len();
    assert!(
        len > 100 * PAGE,
        "the fixture must span many pages ({len} bytes)"
    );
    let middle_page = len / PAGE / 2;
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&profile.db_path)
        .unwrap();
    // Overwrite the middle of four consecutive pages in the middle of the file.
    for page in middle_page..middle_page + 4 {
        file.write_all_at(&[0xA5; 64], page * PAGE + 1_000).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);

    // Opening reads only the first pages; it may succeed. Reading and checking must not.
    let store = match Store::open(&profile.db_path, &profile.key) {
        Ok(store) => store,
        Err(error) => {
            assert_eq!(error.kind(), ErrorKind::Corrupt, "{error:?}");
            assert_names(&error, &profile.db_path);
            return;
        }
    };
    let error = store.check_integrity().unwrap_err();
    assert!(matches!(error, Error::DatabaseCorrupt { .. }), "{error:?}");
    assert_names(&error, &profile.db_path);
    match read_everything(&store, alice) {
        // Pages of an index that paging does not touch may hold the damage; then the data
        // that is read is intact.
        Ok(n) => assert_eq!(n, 2_000),
        Err(error) => {
            assert!(matches!(error, Error::DatabaseCorrupt { .. }), "{error:?}");
            assert_names(&error, &profile.db_path);
        }
    }
    // Writing to a damaged database fails cleanly or succeeds; it never panics.
    let mut store = store;
    let _ = store.write(|tx| tx.store_incoming(&incoming(alice, 9_999, "after", 1)));
}

#[test]
fn a_damaged_table_page_fails_reads_with_a_clear_error() {
    let (profile, alice) = populated(2_000);
    let len = fs::metadata(&profile.db_path).unwrap().len();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&profile.db_path)
        .unwrap();
    // Damage every page except the first ten: whatever the layout, message pages are hit.
    for page in 10..len / PAGE {
        file.write_all_at(&[0x00; 16], page * PAGE + 2_000).unwrap();
    }
    drop(file);
    // Opening reads the schema, which may sit on a damaged page too.
    let error = Store::open(&profile.db_path, &profile.key)
        .and_then(|store| read_everything(&store, alice))
        .unwrap_err();
    assert!(matches!(error, Error::DatabaseCorrupt { .. }), "{error:?}");
    assert_eq!(error.kind().as_str(), "corrupt");
    assert_names(&error, &profile.db_path);
}

#[test]
fn a_damaged_first_page_cannot_be_told_from_a_wrong_key_and_says_so() {
    let (profile, _) = populated(10);
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&profile.db_path)
        .unwrap();
    file.write_all_at(&[0xFF; 32], 200).unwrap();
    drop(file);
    let error = Store::open(&profile.db_path, &profile.key).unwrap_err();
    assert!(matches!(error, Error::WrongKey { .. }), "{error:?}");
    assert!(error.to_string().contains("damaged"), "{error}");
    assert_names(&error, &profile.db_path);
}

#[test]
fn truncated_database_is_reported() {
    let (profile, alice) = populated(2_000);
    let len = fs::metadata(&profile.db_path).unwrap().len();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&profile.db_path)
        .unwrap();
    file.set_len(len / 2 + 123).unwrap();
    drop(file);
    let outcome = Store::open(&profile.db_path, &profile.key).and_then(|store| {
        store.check_integrity()?;
        read_everything(&store, alice)
    });
    let error = outcome.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Corrupt, "{error:?}");
    assert_names(&error, &profile.db_path);
}

#[test]
fn an_empty_database_file_is_damage_not_a_new_database() {
    let (profile, _) = populated(3);
    fs::write(&profile.db_path, b"").unwrap();
    let error = Store::open(&profile.db_path, &profile.key).unwrap_err();
    assert!(matches!(error, Error::DatabaseCorrupt { .. }), "{error:?}");
    assert!(error.to_string().contains("empty"), "{error}");
    assert_names(&error, &profile.db_path);
    assert_eq!(
        fs::metadata(&profile.db_path).unwrap().len(),
        0,
        "not reset"
    );
}

#[test]
fn garbage_instead_of_a_database_is_reported() {
    let (profile, _) = populated(1);
    fs::write(&profile.db_path, vec![0x5Au8; 3 * 4096]).unwrap();
    let error = Store::open(&profile.db_path, &profile.key).unwrap_err();
    assert!(
        matches!(
            error,
            Error::WrongKey { .. } | Error::DatabaseCorrupt { .. }
        ),
        "{error:?}"
    );
    assert_names(&error, &profile.db_path);
    let dir = profile.dir.path().join("a-directory.db");
    fs::create_dir(&dir).unwrap();
    let error = Store::open(&dir, &profile.key).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Corrupt, "{error:?}");
}

#[test]
fn another_sqlcipher_database_with_the_same_key_is_not_taken_for_ours() {
    let (profile, _) = populated(1);
    let foreign = profile.dir.path().join("foreign.db");
    {
        let conn = rusqlite::Connection::open(&foreign).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\"; PRAGMA cipher_compatibility = 4; \
             PRAGMA cipher_hmac_algorithm = HMAC_SHA256; \
             PRAGMA application_id = 7; PRAGMA user_version = 99; CREATE TABLE t (x);",
            hex::encode(profile.key.as_bytes())
        ))
        .unwrap();
    }
    let error = Store::open(&foreign, &profile.key).unwrap_err();
    assert!(matches!(error, Error::DatabaseCorrupt { .. }), "{error:?}");
    assert!(
        error.to_string().contains("not a Carom database"),
        "{error}"
    );
}

#[test]
fn a_full_disk_fails_the_write_and_keeps_everything_committed() {
    let (profile, mut store) = Profile::new(b"pw");
    let alice = add_contact(&mut store, 1);
    for n in 0..50 {
        receive(&mut store, alice, n, &format!("committed {n}"));
    }
    // Cap the database a few pages above its current size: small writes fit, a 64 KiB
    // message (16 overflow pages) hits "disk full".
    let pages: i64 = store
        .connection()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let cap: i64 = store
        .connection()
        .query_row(&format!("PRAGMA max_page_count = {}", pages + 8), [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(cap, pages + 8);
    let big = "y".repeat(64 * 1024);
    let error = store
        .write(|tx| {
            tx.store_incoming(&incoming(alice, 1_000, &big, 1))?;
            tx.append_event("message.received", "{}", 1)
        })
        .unwrap_err();
    assert!(matches!(error, Error::DiskFull { .. }), "{error:?}");
    assert_eq!(error.kind().as_str(), "disk_full");
    assert_names(&error, &profile.db_path);
    let error = store
        .write(|tx| tx.queue_outgoing(&outgoing(alice, 1_001, &big, 1)))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DiskFull, "{error:?}");

    // Nothing of the failed transactions; everything before them.
    assert_eq!(read_everything(&store, alice).unwrap(), 50);
    assert_eq!(store.last_event_seq().unwrap(), 0);
    assert!(store.outbox_for_contact(alice).unwrap().is_empty());
    // Small writes that fit still work.
    receive(&mut store, alice, 50, "still fits");
    drop(store);

    let mut store = profile.open();
    store.check_integrity().unwrap();
    assert_eq!(read_everything(&store, alice).unwrap(), 51);
    assert_eq!(
        store
            .message_by_id(alice, Direction::Incoming, &msg_id(1_000))
            .unwrap(),
        None
    );
    // With room again, the same write succeeds.
    assert!(
        store
            .write(|tx| tx.store_incoming(&incoming(alice, 1_000, &big, 1)))
            .unwrap()
            .is_new()
    );
}
