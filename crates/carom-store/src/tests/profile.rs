//! A whole profile — key file and database — through passphrase mistakes, passphrase changes
//! and a damaged key file: clear errors, no file changed, nothing committed lost.

use std::fs;
use std::time::SystemTime;

use super::*;
use crate::{Error, StoreRead};

/// Every file of the profile directory with its content and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, SystemTime)> {
    files_in(dir)
        .into_iter()
        .map(|(path, bytes)| {
            let mtime = fs::metadata(&path).unwrap().modified().unwrap();
            (path, bytes, mtime)
        })
        .collect()
}

/// A closed profile holding `n` acknowledged incoming messages.
fn profile_with_messages(n: u64) -> (Profile, i64) {
    let (profile, mut store) = Profile::new(b"old passphrase");
    let alice = add_contact(&mut store, 1);
    for i in 0..n {
        receive(&mut store, alice, i, &format!("acknowledged {i}"));
    }
    drop(store);
    (profile, alice)
}

fn assert_all_messages(profile: &Profile, passphrase: &[u8], contact: i64, n: u64) {
    let key = KeyFile::unlock(&profile.key_path, Some(passphrase)).unwrap();
    let store = Store::open(&profile.db_path, &key).unwrap();
    store.check_integrity().unwrap();
    let history = store.history(contact, None, u32::MAX).unwrap();
    assert_eq!(history.len() as u64, n);
    for i in 0..n {
        let m = store
            .message_by_id(contact, Direction::Incoming, &msg_id(i))
            .unwrap()
            .unwrap();
        assert_eq!(m.body, format!("acknowledged {i}"));
    }
}

#[test]
fn wrong_passphrase_changes_no_file_and_the_profile_still_opens() {
    let (profile, alice) = profile_with_messages(20);
    let before = snapshot(profile.dir.path());
    for attempt in [&b"Old passphrase"[..], b"old passphrase ", b"x"] {
        let error = KeyFile::unlock(&profile.key_path, Some(attempt)).unwrap_err();
        assert!(matches!(error, Error::WrongPassphrase { .. }), "{error:?}");
    }
    let error = KeyFile::unlock(&profile.key_path, None).unwrap_err();
    assert!(
        matches!(error, Error::PassphraseRequired { .. }),
        "{error:?}"
    );
    assert_eq!(snapshot(profile.dir.path()), before);
    assert_all_messages(&profile, b"old passphrase", alice, 20);
}

#[test]
fn passphrase_change_rewraps_without_touching_the_database() {
    let (profile, alice) = profile_with_messages(20);
    let db_before = fs::read(&profile.db_path).unwrap();
    let db_mtime = fs::metadata(&profile.db_path).unwrap().modified().unwrap();
    KeyFile::change_passphrase(
        &profile.key_path,
        Some(b"old passphrase"),
        Protection::Passphrase(b"new passphrase"),
        CHEAP,
    )
    .unwrap();
    assert_eq!(fs::read(&profile.db_path).unwrap(), db_before);
    assert_eq!(
        fs::metadata(&profile.db_path).unwrap().modified().unwrap(),
        db_mtime
    );
    let error = KeyFile::unlock(&profile.key_path, Some(b"old passphrase")).unwrap_err();
    assert!(matches!(error, Error::WrongPassphrase { .. }), "{error:?}");
    assert_all_messages(&profile, b"new passphrase", alice, 20);
}

#[test]
fn a_damaged_key_file_is_reported_and_a_restored_one_opens_everything() {
    let (profile, alice) = profile_with_messages(20);
    let key_file = fs::read(&profile.key_path).unwrap();
    let db_before = fs::read(&profile.db_path).unwrap();
    let mut damaged = key_file.clone();
    damaged[70] ^= 0x10;
    fs::write(&profile.key_path, &damaged).unwrap();
    let error = KeyFile::unlock(&profile.key_path, Some(b"old passphrase")).unwrap_err();
    assert!(matches!(error, Error::KeyFileCorrupt { .. }), "{error:?}");
    assert!(error.to_string().contains("carom.key"), "{error}");
    let error = KeyFile::change_passphrase(
        &profile.key_path,
        Some(b"old passphrase"),
        Protection::Passphrase(b"new"),
        CHEAP,
    )
    .unwrap_err();
    assert!(matches!(error, Error::KeyFileCorrupt { .. }), "{error:?}");
    assert_eq!(
        fs::read(&profile.key_path).unwrap(),
        damaged,
        "never replaced"
    );
    assert_eq!(fs::read(&profile.db_path).unwrap(), db_before);
    // From a backup, everything is back.
    fs::write(&profile.key_path, &key_file).unwrap();
    assert_all_messages(&profile, b"old passphrase", alice, 20);
}

#[test]
fn an_unprotected_profile_opens_without_a_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("carom.key");
    let db_path = dir.path().join("carom.db");
    let key = KeyFile::create(&key_path, Protection::Unprotected, CHEAP).unwrap();
    let mut store = Store::create(&db_path, &key).unwrap();
    let alice = add_contact(&mut store, 1);
    receive(&mut store, alice, 1, "kept");
    drop(store);
    let key = KeyFile::unlock(&key_path, None).unwrap();
    let store = Store::open(&db_path, &key).unwrap();
    assert_eq!(store.history(alice, None, 10).unwrap().len(), 1);
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn delete_files_removes_the_database_and_its_sidecars_and_nothing_else() {
    let (profile, mut store) = Profile::new(b"pw");
    let alice = add_contact(&mut store, 1);
    receive(&mut store, alice, 1, "doomed");
    // While open the WAL holds the message: deleting must take it too.
    assert!(listing(profile.dir.path()).contains(&"carom.db-wal".to_owned()));
    drop(store);
    // As a killed process would have left them.
    fs::write(profile.db_path.with_file_name("carom.db-wal"), b"wal").unwrap();
    fs::write(profile.db_path.with_file_name("carom.db-shm"), b"shm").unwrap();
    assert!(Store::delete_files(&profile.db_path).unwrap());
    assert_eq!(listing(profile.dir.path()), ["carom.key"]);
    assert!(!Store::delete_files(&profile.db_path).unwrap());
}

#[test]
fn creation_leftovers_are_removed_and_the_database_is_not() {
    let (profile, store) = Profile::new(b"pw");
    drop(store);
    let dir = profile.dir.path();
    for name in [
        ".carom.db.creating-0123456789abcdef",
        ".carom.db.creating-0123456789abcdef-wal",
        ".carom.db.creating-0123456789abcdef-shm",
    ] {
        fs::write(dir.join(name), b"half-built").unwrap();
    }
    let removed = Store::remove_creation_leftovers(&profile.db_path).unwrap();
    assert_eq!(removed.len(), 3);
    assert_eq!(listing(dir), ["carom.db", "carom.key"]);
    assert!(
        Store::remove_creation_leftovers(&profile.db_path)
            .unwrap()
            .is_empty()
    );
    profile.open().check_integrity().unwrap();
}

#[test]
fn a_shredded_key_file_is_overwritten_in_place_before_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.key");
    KeyFile::create(&path, Protection::Passphrase(b"pw"), CHEAP).unwrap();
    let before = std::fs::read(&path).unwrap();
    // A second name for the same inode shows what happened to its bytes after the first
    // name is gone.
    let witness = dir.path().join("witness");
    std::fs::hard_link(&path, &witness).unwrap();
    assert!(KeyFile::shred(&path).unwrap());
    assert!(!path.exists());
    let after = std::fs::read(&witness).unwrap();
    assert_eq!(after.len(), before.len());
    assert_ne!(after, before);
    assert!(KeyFile::unlock(&witness, Some(b"pw")).is_err());
    // Nothing there: nothing to do.
    assert!(!KeyFile::shred(&path).unwrap());
}
