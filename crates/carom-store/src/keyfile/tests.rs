//! Key file: creation, unlocking, passphrase changes, damage and tampering.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::*;
use crate::ErrorKind;
use crate::tests::CHEAP;

fn key_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("carom.key")
}

/// Content, modification time and the directory's listing: everything a failed operation
/// must leave alone.
fn snapshot(path: &Path) -> (Vec<u8>, SystemTime, Vec<PathBuf>) {
    let mut listing: Vec<PathBuf> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    listing.sort();
    (
        fs::read(path).unwrap(),
        fs::metadata(path).unwrap().modified().unwrap(),
        listing,
    )
}

/// Rewrites the trailing checksum so deliberate tampering gets past the damage check.
fn fix_checksum(file: &mut [u8]) {
    let checksum = Sha3_256::digest(&file[..OFFSET_CHECKSUM]);
    file[OFFSET_CHECKSUM..].copy_from_slice(&checksum);
}

#[test]
fn create_then_unlock_returns_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let key = KeyFile::create(&path, Protection::Passphrase(b"correct horse"), CHEAP).unwrap();
    let unlocked = KeyFile::unlock(&path, Some(b"correct horse")).unwrap();
    assert_eq!(key.as_bytes(), unlocked.as_bytes());
    assert!(KeyFile::is_protected(&path).unwrap());
    assert_eq!(fs::metadata(&path).unwrap().len(), KEY_FILE_LEN as u64);
    // The plaintext key is nowhere in the file.
    assert!(!crate::tests::contains(
        &fs::read(&path).unwrap(),
        key.as_bytes()
    ));
}

#[test]
fn default_parameters_work_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let key = KeyFile::create(&path, Protection::Passphrase(b"pw"), KdfParams::DEFAULT).unwrap();
    let file = fs::read(&path).unwrap();
    assert_eq!(read_u32(&file, OFFSET_MEMORY), 65_536);
    assert_eq!(read_u32(&file, OFFSET_ITERATIONS), 3);
    assert_eq!(read_u32(&file, OFFSET_PARALLELISM), 1);
    assert_eq!(file[OFFSET_MODE], MODE_ARGON2ID_XCHACHA20POLY1305);
    assert_eq!(&file[..8], b"CAROMKEY");
    assert_eq!(
        KeyFile::unlock(&path, Some(b"pw")).unwrap().as_bytes(),
        key.as_bytes()
    );
}

#[test]
fn every_key_is_fresh_and_salts_and_nonces_differ() {
    let dir = tempfile::tempdir().unwrap();
    let a = KeyFile::create(&dir.path().join("a"), Protection::Passphrase(b"pw"), CHEAP).unwrap();
    let b = KeyFile::create(&dir.path().join("b"), Protection::Passphrase(b"pw"), CHEAP).unwrap();
    assert_ne!(a.as_bytes(), b.as_bytes());
    let fa = fs::read(dir.path().join("a")).unwrap();
    let fb = fs::read(dir.path().join("b")).unwrap();
    assert_ne!(fa[OFFSET_SALT..OFFSET_NONCE], fb[OFFSET_SALT..OFFSET_NONCE]);
    assert_ne!(fa[OFFSET_NONCE..HEADER_LEN], fb[OFFSET_NONCE..HEADER_LEN]);
}

#[test]
fn create_refuses_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    KeyFile::create(&path, Protection::Passphrase(b"pw"), CHEAP).unwrap();
    let before = snapshot(&path);
    let error = KeyFile::create(&path, Protection::Passphrase(b"other"), CHEAP).unwrap_err();
    assert!(matches!(error, Error::KeyFileExists { .. }), "{error}");
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert_eq!(snapshot(&path), before);
    assert!(KeyFile::unlock(&path, Some(b"pw")).is_ok());
}

#[test]
fn wrong_passphrase_is_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    KeyFile::create(&path, Protection::Passphrase(b"right"), CHEAP).unwrap();
    let before = snapshot(&path);
    let error = KeyFile::unlock(&path, Some(b"wrong")).unwrap_err();
    assert!(matches!(error, Error::WrongPassphrase { .. }), "{error}");
    assert_eq!(error.kind().as_str(), "wrong_passphrase");
    assert!(error.to_string().contains("carom.key"), "{error}");
    let error =
        KeyFile::change_passphrase(&path, Some(b"wrong"), Protection::Passphrase(b"new"), CHEAP)
            .unwrap_err();
    assert!(matches!(error, Error::WrongPassphrase { .. }), "{error}");
    assert_eq!(snapshot(&path), before);
    assert!(KeyFile::unlock(&path, Some(b"right")).is_ok());
}

#[test]
fn a_protected_file_requires_a_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    KeyFile::create(&path, Protection::Passphrase(b"pw"), CHEAP).unwrap();
    let error = KeyFile::unlock(&path, None).unwrap_err();
    assert!(matches!(error, Error::PassphraseRequired { .. }), "{error}");
    assert_eq!(error.kind(), ErrorKind::PassphraseRequired);
}

#[test]
fn passphrase_change_rewraps_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let key = KeyFile::create(&path, Protection::Passphrase(b"old"), CHEAP).unwrap();
    let before = fs::read(&path).unwrap();
    KeyFile::change_passphrase(&path, Some(b"old"), Protection::Passphrase(b"new"), CHEAP).unwrap();
    assert_ne!(fs::read(&path).unwrap(), before);
    let error = KeyFile::unlock(&path, Some(b"old")).unwrap_err();
    assert!(matches!(error, Error::WrongPassphrase { .. }), "{error}");
    assert_eq!(
        KeyFile::unlock(&path, Some(b"new")).unwrap().as_bytes(),
        key.as_bytes()
    );
    // Only the key file remains: no temporary left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn passphrase_change_can_change_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let key = KeyFile::create(&path, Protection::Passphrase(b"old"), CHEAP).unwrap();
    let stronger = KdfParams {
        memory_kib: 256,
        iterations: 2,
        parallelism: 2,
    };
    KeyFile::change_passphrase(
        &path,
        Some(b"old"),
        Protection::Passphrase(b"new"),
        stronger,
    )
    .unwrap();
    let file = fs::read(&path).unwrap();
    assert_eq!(read_u32(&file, OFFSET_MEMORY), 256);
    assert_eq!(read_u32(&file, OFFSET_PARALLELISM), 2);
    assert_eq!(
        KeyFile::unlock(&path, Some(b"new")).unwrap().as_bytes(),
        key.as_bytes()
    );
}

#[test]
fn unprotected_mode_only_when_asked_and_convertible_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let key = KeyFile::create(&path, Protection::Unprotected, CHEAP).unwrap();
    assert!(!KeyFile::is_protected(&path).unwrap());
    let file = fs::read(&path).unwrap();
    assert_eq!(file[OFFSET_MODE], MODE_UNPROTECTED);
    // No parameters or salt are recorded for a file that derives nothing.
    assert!(file[OFFSET_MEMORY..OFFSET_NONCE].iter().all(|b| *b == 0));
    assert_eq!(
        KeyFile::unlock(&path, None).unwrap().as_bytes(),
        key.as_bytes()
    );
    assert_eq!(
        KeyFile::unlock(&path, Some(b"anything"))
            .unwrap()
            .as_bytes(),
        key.as_bytes()
    );

    KeyFile::change_passphrase(&path, None, Protection::Passphrase(b"now protected"), CHEAP)
        .unwrap();
    assert!(KeyFile::is_protected(&path).unwrap());
    assert!(matches!(
        KeyFile::unlock(&path, None),
        Err(Error::PassphraseRequired { .. })
    ));
    KeyFile::change_passphrase(
        &path,
        Some(b"now protected"),
        Protection::Unprotected,
        CHEAP,
    )
    .unwrap();
    assert!(!KeyFile::is_protected(&path).unwrap());
    assert_eq!(
        KeyFile::unlock(&path, None).unwrap().as_bytes(),
        key.as_bytes()
    );
}

#[test]
fn an_empty_passphrase_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let error = KeyFile::create(&path, Protection::Passphrase(b""), CHEAP).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert!(!path.exists());
}

#[test]
fn unusable_parameters_are_refused_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    for params in [
        KdfParams {
            memory_kib: 4,
            iterations: 1,
            parallelism: 1,
        },
        KdfParams {
            memory_kib: 64,
            iterations: 0,
            parallelism: 1,
        },
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 0,
        },
        KdfParams {
            memory_kib: KdfParams::MAX_MEMORY_KIB + 1,
            iterations: 1,
            parallelism: 1,
        },
    ] {
        let error = KeyFile::create(&path, Protection::Passphrase(b"pw"), params).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Invalid, "{params:?}: {error}");
        assert!(!path.exists());
    }
}

#[test]
fn missing_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let error = KeyFile::unlock(&path, Some(b"pw")).unwrap_err();
    assert!(matches!(error, Error::KeyFileMissing { .. }), "{error}");
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert!(KeyFile::is_protected(&path).is_err());
    let error = KeyFile::change_passphrase(&path, Some(b"pw"), Protection::Passphrase(b"x"), CHEAP)
        .unwrap_err();
    assert!(matches!(error, Error::KeyFileMissing { .. }), "{error}");
    assert!(!path.exists());
}

fn assert_corrupt(path: &Path, error: &Error) {
    assert!(
        matches!(error, Error::KeyFileCorrupt { .. }),
        "expected a damaged key file, got {error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::Corrupt);
    assert!(
        error.to_string().contains(&*path.to_string_lossy()),
        "the message must name the file: {error}"
    );
}

#[test]
fn truncated_files_are_reported_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    KeyFile::create(&path, Protection::Passphrase(b"pw"), CHEAP).unwrap();
    let full = fs::read(&path).unwrap();
    for len in [0, 5, 8, 9, 63, 64, 100, KEY_FILE_LEN - 1] {
        fs::write(&path, &full[..len]).unwrap();
        let error = KeyFile::unlock(&path, Some(b"pw")).unwrap_err();
        assert_corrupt(&path, &error);
        let error = KeyFile::is_protected(&path).unwrap_err();
        assert_corrupt(&path, &error);
    }
    let mut long = full.clone();
    long.push(0);
    fs::write(&path, &long).unwrap();
    assert_corrupt(&path, &KeyFile::unlock(&path, Some(b"pw")).unwrap_err());
    // A damaged file is never replaced by a passphrase change.
    let error = KeyFile::change_passphrase(&path, Some(b"pw"), Protection::Passphrase(b"x"), CHEAP)
        .unwrap_err();
    assert_corrupt(&path, &error);
    assert_eq!(fs::read(&path).unwrap(), long);
}

#[test]
fn every_flipped_byte_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let key = KeyFile::create(&path, Protection::Passphrase(b"pw"), CHEAP).unwrap();
    let good = fs::read(&path).unwrap();
    for i in 0..KEY_FILE_LEN {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        match KeyFile::unlock(&path, Some(b"pw")) {
            // Accidental damage is caught by the checksum and named as such.
            Err(error) => assert_corrupt(&path, &error),
            Ok(k) => panic!(
                "byte {i} flipped but unlocked (same key: {})",
                k.as_bytes() == key.as_bytes()
            ),
        }
    }
}

#[test]
fn not_a_key_file_and_newer_versions_are_distinguished() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    fs::write(&path, b"-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    let error = KeyFile::unlock(&path, Some(b"pw")).unwrap_err();
    assert_corrupt(&path, &error);
    assert!(
        error.to_string().contains("not a Carom key file"),
        "{error}"
    );

    KeyFile::create(&dir.path().join("k2"), Protection::Passphrase(b"pw"), CHEAP).unwrap();
    let mut newer = fs::read(dir.path().join("k2")).unwrap();
    newer[OFFSET_VERSION] = 2;
    fs::write(&path, &newer).unwrap();
    let error = KeyFile::unlock(&path, Some(b"pw")).unwrap_err();
    assert!(
        matches!(
            error,
            Error::NewerKeyFile {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(error.kind(), ErrorKind::Unsupported);
}

#[test]
fn tampered_parameters_are_detected_by_the_aead() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    KeyFile::create(&path, Protection::Passphrase(b"pw"), CHEAP).unwrap();
    let good = fs::read(&path).unwrap();
    // An attacker who lowers the cost (or changes salt, nonce, ciphertext) and fixes up the
    // unauthenticated checksum still fails: the header is associated data.
    type Tampering = (&'static str, fn(&mut Vec<u8>));
    let tamperings: [Tampering; 5] = [
        ("iterations", |f| {
            f[OFFSET_ITERATIONS..OFFSET_PARALLELISM].copy_from_slice(&2u32.to_le_bytes());
        }),
        ("memory", |f| {
            f[OFFSET_MEMORY..OFFSET_ITERATIONS].copy_from_slice(&32u32.to_le_bytes());
        }),
        ("salt", |f| f[OFFSET_SALT] ^= 0x80),
        ("nonce", |f| f[OFFSET_NONCE + 3] ^= 0x01),
        ("ciphertext", |f| f[HEADER_LEN + 7] ^= 0x01),
    ];
    for (what, tamper) in tamperings {
        let mut bad = good.clone();
        tamper(&mut bad);
        fix_checksum(&mut bad);
        fs::write(&path, &bad).unwrap();
        let error = KeyFile::unlock(&path, Some(b"pw")).unwrap_err();
        assert!(
            matches!(error, Error::WrongPassphrase { .. }),
            "tampered {what}: {error:?}"
        );
    }
    // Downgrading to "unprotected" does not hand out the key either.
    let mut bad = good.clone();
    bad[OFFSET_MODE] = MODE_UNPROTECTED;
    bad[OFFSET_MEMORY..OFFSET_NONCE].fill(0);
    fix_checksum(&mut bad);
    fs::write(&path, &bad).unwrap();
    assert_corrupt(&path, &KeyFile::unlock(&path, None).unwrap_err());
    // Parameters beyond the limits are refused before any memory is allocated.
    let mut bad = good.clone();
    bad[OFFSET_MEMORY..OFFSET_ITERATIONS].copy_from_slice(&u32::MAX.to_le_bytes());
    fix_checksum(&mut bad);
    fs::write(&path, &bad).unwrap();
    let error = KeyFile::unlock(&path, Some(b"pw")).unwrap_err();
    assert_corrupt(&path, &error);
    assert!(error.to_string().contains("implausible"), "{error}");
}

#[test]
fn the_header_layout_is_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    KeyFile::create(&path, Protection::Passphrase(b"pw"), CHEAP).unwrap();
    let file = fs::read(&path).unwrap();
    assert_eq!(file.len(), 144);
    assert_eq!(&file[0..8], b"CAROMKEY");
    assert_eq!(file[8], 1);
    assert_eq!(file[9], 1);
    assert_eq!(&file[10..12], &[0, 0]);
    assert_eq!(&file[12..16], &64u32.to_le_bytes());
    assert_eq!(&file[16..20], &1u32.to_le_bytes());
    assert_eq!(&file[20..24], &1u32.to_le_bytes());
    assert_eq!(Sha3_256::digest(&file[..112]).as_slice(), &file[112..]);
}

#[test]
fn key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    KeyFile::create(&path, Protection::Passphrase(b"pw"), CHEAP).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    KeyFile::change_passphrase(&path, Some(b"pw"), Protection::Passphrase(b"x"), CHEAP).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn debug_output_never_shows_secrets() {
    let key = DbKey::from_bytes([0x5a; 32]);
    let shown = format!("{key:?}");
    assert!(!shown.contains("5a") && !shown.contains("90"), "{shown}");
    let shown = format!("{:?}", Protection::Passphrase(b"hunter2"));
    assert!(
        !shown.contains("hunter2") && !shown.contains("104"),
        "{shown}"
    );
}

fn names(dir: &tempfile::TempDir) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_staged_key_file_is_durable_under_its_staging_name_until_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let staged = KeyFile::stage(&path, Protection::Passphrase(b"pw"), CHEAP).unwrap();
    assert_eq!(staged.staged_path(), KeyFile::staging_path(&path));
    assert_eq!(names(&dir), [".carom.key.staged"]);
    // Complete before the commit: it unlocks to the same key.
    let early = KeyFile::unlock(staged.staged_path(), Some(b"pw")).unwrap();
    assert_eq!(early.as_bytes(), staged.key().as_bytes());
    let key = *staged.key().as_bytes();
    staged.commit().unwrap();
    assert_eq!(names(&dir), ["carom.key"]);
    assert_eq!(
        KeyFile::unlock(&path, Some(b"pw")).unwrap().as_bytes(),
        &key
    );
}

#[test]
fn staging_refuses_an_existing_key_file_or_staged_file_and_removes_neither() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    KeyFile::create(&path, Protection::Unprotected, CHEAP).unwrap();
    let before = fs::read(&path).unwrap();
    let error = KeyFile::stage(&path, Protection::Unprotected, CHEAP).unwrap_err();
    assert!(matches!(error, Error::KeyFileExists { .. }), "{error}");
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(names(&dir), ["carom.key"]);

    let other = dir.path().join("other.key");
    fs::write(KeyFile::staging_path(&other), b"leftover").unwrap();
    let error = KeyFile::stage(&other, Protection::Unprotected, CHEAP).unwrap_err();
    assert!(
        matches!(&error, Error::KeyFileExists { path } if *path == KeyFile::staging_path(&other)),
        "{error}"
    );
    assert_eq!(
        fs::read(KeyFile::staging_path(&other)).unwrap(),
        b"leftover"
    );
}

#[test]
fn a_commit_never_overwrites_a_key_file_and_keeps_the_staged_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let staged = KeyFile::stage(&path, Protection::Unprotected, CHEAP).unwrap();
    fs::write(&path, b"someone else's").unwrap();
    let error = staged.commit().unwrap_err();
    assert!(matches!(error, Error::KeyFileExists { .. }), "{error}");
    assert_eq!(fs::read(&path).unwrap(), b"someone else's");
    assert!(KeyFile::staging_path(&path).exists());
    assert!(KeyFile::remove_staged(&path).unwrap());
    assert!(!KeyFile::remove_staged(&path).unwrap());
    assert_eq!(names(&dir), ["carom.key"]);
}

#[test]
fn discarding_a_staged_key_file_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let staged = KeyFile::stage(&path, Protection::Passphrase(b"pw"), CHEAP).unwrap();
    staged.discard().unwrap();
    assert!(names(&dir).is_empty());
    // An empty passphrase is refused before anything is written.
    assert!(KeyFile::stage(&path, Protection::Passphrase(b""), CHEAP).is_err());
    assert!(names(&dir).is_empty());
}
