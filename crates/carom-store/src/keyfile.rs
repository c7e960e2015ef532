//! The key file: the database's random key, wrapped under a key derived from the user's
//! passphrase.
//!
//! The database is encrypted with a random 256-bit [`DbKey`]. The key file holds that key
//! encrypted with XChaCha20-Poly1305 under a key derived by Argon2id from the passphrase, so
//! changing the passphrase rewrites this small file and never the database. The byte layout is
//! documented in `docs/storage.md` and in [`KeyFile`].
//!
//! The file is written atomically (private temporary file, fsync, rename or link, fsync of the
//! directory): after a crash it holds either the old or the new content, never a mixture.
//! [`KeyFile::stage`] splits creation in two, for a caller that makes the key file's
//! appearance the commit point of a larger creation (the daemon's profile).

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use sha3::{Digest, Sha3_256};
use zeroize::Zeroizing;

use crate::err::{Error, Result};
use crate::fsutil::{self, Placement};

/// Length of a database key in bytes.
pub const DB_KEY_LEN: usize = 32;

/// The database's random 256-bit encryption key.
///
/// Zeroised when dropped; its `Debug` output is redacted. Never written anywhere but, wrapped,
/// into the key file, and into SQLCipher's keying pragma.
// Boxed so the key stays at one heap address: moving a `DbKey` moves a pointer, not copies of
// the key that zeroisation would miss.
pub struct DbKey(Box<Zeroizing<[u8; DB_KEY_LEN]>>);

impl DbKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<DbKey> {
        let mut key = DbKey::zeroed();
        OsRng
            .try_fill_bytes(&mut key.0[..])
            .map_err(Error::Random)?;
        Ok(key)
    }

    /// Wraps existing key bytes (for example one handed over by a caller that keeps the key
    /// elsewhere, or a test).
    pub fn from_bytes(bytes: [u8; DB_KEY_LEN]) -> DbKey {
        let mut key = DbKey::zeroed();
        *key.0 = Zeroizing::new(bytes);
        key
    }

    /// An all-zero key to fill in place.
    fn zeroed() -> DbKey {
        DbKey(Box::new(Zeroizing::new([0u8; DB_KEY_LEN])))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; DB_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for DbKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbKey(<redacted>)")
    }
}

/// Argon2id cost parameters, recorded in the key file they were used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl KdfParams {
    /// What the daemon always uses: 64 MiB, 3 passes, 1 lane.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// The most memory a key file may ask for: 1 GiB. A tampered file asking for more would
    /// make unlocking abort on allocation failure instead of failing cleanly.
    pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
    /// The most passes a key file may ask for.
    pub const MAX_ITERATIONS: u32 = 64;
    /// The most lanes a key file may ask for.
    pub const MAX_PARALLELISM: u32 = 16;

    /// Checks that these parameters are usable and within the limits above.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=Self::MAX_PARALLELISM).contains(&self.parallelism) {
            return Err(format!(
                "parallelism {} is outside 1..={}",
                self.parallelism,
                Self::MAX_PARALLELISM
            ));
        }
        if !(1..=Self::MAX_ITERATIONS).contains(&self.iterations) {
            return Err(format!(
                "iterations {} is outside 1..={}",
                self.iterations,
                Self::MAX_ITERATIONS
            ));
        }
        let min_memory = 8 * self.parallelism;
        if !(min_memory..=Self::MAX_MEMORY_KIB).contains(&self.memory_kib) {
            return Err(format!(
                "memory {} KiB is outside {min_memory}..={} KiB",
                self.memory_kib,
                Self::MAX_MEMORY_KIB
            ));
        }
        Ok(())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams::DEFAULT
    }
}

/// How a new key file protects the database key.
#[derive(Clone, Copy)]
pub enum Protection<'a> {
    /// Wrapped under Argon2id(passphrase). The passphrase's bytes are used as given (no
    /// Unicode normalisation); it must not be empty.
    Passphrase(&'a [u8]),
    /// Stored without a passphrase: anyone who can read the key file can decrypt the
    /// database. Only for profiles where the user explicitly chose this.
    Unprotected,
}

impl fmt::Debug for Protection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
            Protection::Unprotected => f.write_str("Unprotected"),
        }
    }
}

// The key file's byte layout (all integers little-endian). Bytes 0..64 are the header, and the
// whole header is the AEAD's associated data, so changing any of it (mode, parameters, salt,
// nonce) makes decryption fail.
const MAGIC: [u8; 8] = *b"CAROMKEY";
const FORMAT_VERSION: u8 = 1;
const MODE_UNPROTECTED: u8 = 0;
const MODE_ARGON2ID_XCHACHA20POLY1305: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const OFFSET_VERSION: usize = 8;
const OFFSET_MODE: usize = 9;
const OFFSET_RESERVED: usize = 10;
const OFFSET_MEMORY: usize = 12;
const OFFSET_ITERATIONS: usize = 16;
const OFFSET_PARALLELISM: usize = 20;
const OFFSET_SALT: usize = 24;
const OFFSET_NONCE: usize = OFFSET_SALT + SALT_LEN; // 40
const HEADER_LEN: usize = OFFSET_NONCE + NONCE_LEN; // 64
const OFFSET_TAG: usize = HEADER_LEN + DB_KEY_LEN; // 96
const OFFSET_CHECKSUM: usize = OFFSET_TAG + TAG_LEN; // 112
const CHECKSUM_LEN: usize = 32;
/// Total size of a version-1 key file.
pub(crate) const KEY_FILE_LEN: usize = OFFSET_CHECKSUM + CHECKSUM_LEN; // 144

/// Operations on the key file. This type is a namespace and has no values.
///
/// Layout of a version-1 key file (144 bytes, integers little-endian):
///
/// | offset | length | field |
/// | --- | --- | --- |
/// | 0 | 8 | magic `CAROMKEY` |
/// | 8 | 1 | format version, 1 |
/// | 9 | 1 | mode: 0 unprotected, 1 Argon2id + XChaCha20-Poly1305 |
/// | 10 | 2 | reserved, zero |
/// | 12 | 4 | Argon2id memory in KiB (0 when unprotected) |
/// | 16 | 4 | Argon2id passes (0 when unprotected) |
/// | 20 | 4 | Argon2id lanes (0 when unprotected) |
/// | 24 | 16 | salt (zero when unprotected) |
/// | 40 | 24 | XChaCha20 nonce |
/// | 64 | 32 | the database key, encrypted |
/// | 96 | 16 | Poly1305 tag over bytes 64..96 with bytes 0..64 as associated data |
/// | 112 | 32 | SHA3-256 of bytes 0..112 |
///
/// The wrapping key is Argon2id(passphrase, salt, params) in mode 1 and 32 zero bytes in mode
/// 0, where the tag still detects damage but protects nothing. The trailing checksum is not a
/// security measure: it lets accidental damage be reported as such rather than as a wrong
/// passphrase.
#[derive(Debug)]
pub enum KeyFile {}

impl KeyFile {
    /// Generates a database key, wraps it as `protection` says and writes a new key file at
    /// `path`. Fails with [`Error::KeyFileExists`] if a file is already there.
    pub fn create(path: &Path, protection: Protection<'_>, params: KdfParams) -> Result<DbKey> {
        if path.symlink_metadata().is_ok() {
            return Err(Error::KeyFileExists {
                path: path.to_owned(),
            });
        }
        let key = DbKey::generate()?;
        let bytes = seal(&key, protection, params)?;
        fsutil::write_atomically(path, &bytes[..], Placement::NoClobber).map_err(|e| {
            if fsutil::is_already_exists(&e) {
                Error::KeyFileExists {
                    path: path.to_owned(),
                }
            } else {
                e
            }
        })?;
        log_created(path, matches!(protection, Protection::Passphrase(_)));
        Ok(key)
    }

    /// Like [`KeyFile::create`], except that the new key file is left complete and durable at
    /// [`KeyFile::staging_path`]`(path)`, and becomes the key file at `path` only when
    /// [`StagedKeyFile::commit`] links it there.
    ///
    /// This is for a caller that creates more than the key file (a database keyed with it) and
    /// wants one atomic step, the key file's appearance, to be what makes the whole exist. Until
    /// then the staged file marks the creation as unfinished: a caller that finds one after a
    /// crash knows that what it created beside it belongs to a creation that never completed.
    /// The staged file is on disk, directory entry included, before this returns, so nothing
    /// created afterwards can survive a crash without it.
    ///
    /// Fails with [`Error::KeyFileExists`] if `path` exists, or naming the staging path if a
    /// staged file is already there (the caller decides what a leftover means and removes it
    /// with [`KeyFile::remove_staged`]; this never does).
    pub fn stage(
        path: &Path,
        protection: Protection<'_>,
        params: KdfParams,
    ) -> Result<StagedKeyFile> {
        if path.symlink_metadata().is_ok() {
            return Err(Error::KeyFileExists {
                path: path.to_owned(),
            });
        }
        let key = DbKey::generate()?;
        let bytes = seal(&key, protection, params)?;
        let staged = KeyFile::staging_path(path);
        let written =
            fsutil::write_durably(&staged, &bytes[..]).and_then(|()| fsutil::sync_dir_of(&staged));
        if let Err(e) = written {
            if fsutil::is_already_exists(&e) {
                // Someone else's leftover: not ours to remove.
                return Err(Error::KeyFileExists { path: staged });
            }
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
        Ok(StagedKeyFile {
            key,
            staged,
            target: path.to_owned(),
            protected: matches!(protection, Protection::Passphrase(_)),
        })
    }

    /// Where [`KeyFile::stage`] leaves the key file for `path`: `.<name>.staged` beside it.
    pub fn staging_path(path: &Path) -> PathBuf {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        fsutil::parent_dir(path).join(format!(".{name}.staged"))
    }

    /// Removes the staged key file for `path` (see [`KeyFile::stage`]) if there is one, and
    /// flushes the directory. Returns whether there was one.
    ///
    /// The caller must know it is a leftover: of a creation that never committed (then
    /// remove what that creation made *before* this, or a crash in between leaves those
    /// without their marker), or a second name of a committed key file (a crash between the
    /// commit's link and its removal of the staged name).
    pub fn remove_staged(path: &Path) -> Result<bool> {
        fsutil::remove_durably(&KeyFile::staging_path(path))
    }

    /// Reads the key file at `path` and unwraps the database key.
    ///
    /// A protected file needs `passphrase` ([`Error::PassphraseRequired`] without one,
    /// [`Error::WrongPassphrase`] if it does not fit). An unprotected file ignores it. Nothing
    /// is written.
    pub fn unlock(path: &Path, passphrase: Option<&[u8]>) -> Result<DbKey> {
        let file = read(path)?;
        let parsed = parse(path, &file)?;
        let wrapping_key = match parsed.mode {
            Mode::Unprotected => {
                tracing::warn!(
                    path = %path.display(),
                    passphrase_given = passphrase.is_some(),
                    "this profile's key file is UNPROTECTED: anyone who can read it can \
                     decrypt the database"
                );
                Zeroizing::new([0u8; DB_KEY_LEN])
            }
            Mode::Passphrase(params) => {
                let passphrase = passphrase.ok_or_else(|| Error::PassphraseRequired {
                    path: path.to_owned(),
                })?;
                derive_wrapping_key(passphrase, &parsed.salt, params).map_err(|reason| {
                    Error::KeyFileCorrupt {
                        path: path.to_owned(),
                        reason,
                    }
                })?
            }
        };
        // Decrypted in place, in the key's final home.
        let mut key = DbKey::zeroed();
        key.0.copy_from_slice(&file[HEADER_LEN..OFFSET_TAG]);
        let cipher = XChaCha20Poly1305::new((&*wrapping_key).into());
        let opened = cipher.decrypt_in_place_detached(
            XNonce::from_slice(&file[OFFSET_NONCE..HEADER_LEN]),
            &file[..HEADER_LEN],
            &mut key.0[..],
            Tag::from_slice(&file[OFFSET_TAG..OFFSET_CHECKSUM]),
        );
        match (opened, parsed.mode) {
            (Ok(()), _) => Ok(key),
            (Err(_), Mode::Passphrase(_)) => Err(Error::WrongPassphrase {
                path: path.to_owned(),
            }),
            (Err(_), Mode::Unprotected) => Err(Error::KeyFileCorrupt {
                path: path.to_owned(),
                reason: "its authentication tag does not match".to_owned(),
            }),
        }
    }

    /// Rewraps the database key under a new passphrase (or none), leaving the database
    /// untouched. `old` must unlock the current file. On any failure the old file is intact.
    pub fn change_passphrase(
        path: &Path,
        old: Option<&[u8]>,
        new: Protection<'_>,
        params: KdfParams,
    ) -> Result<()> {
        let key = KeyFile::unlock(path, old)?;
        let bytes = seal(&key, new, params)?;
        fsutil::write_atomically(path, &bytes[..], Placement::Replace)?;
        match new {
            Protection::Passphrase(_) => {
                tracing::info!(path = %path.display(), "key file rewrapped under a new passphrase");
            }
            Protection::Unprotected => tracing::warn!(
                path = %path.display(),
                "key file rewritten WITHOUT passphrase protection"
            ),
        }
        Ok(())
    }

    /// Destroys the key file at `path`: its bytes are overwritten in place with random ones
    /// and flushed, then the file is removed and its directory flushed. Without the key it
    /// wraps, the database (and every copy of its pages anywhere) cannot be decrypted, so this
    /// comes first when a profile is erased. Overwriting in place is what the filesystem
    /// allows: a copy-on-write filesystem or an SSD may keep the old blocks (`docs/storage.md`).
    /// Returns whether there was a file.
    pub fn shred(path: &Path) -> Result<bool> {
        use std::io::{Seek as _, Write as _};
        let mut file = match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("read", path, e))?
            .len();
        let mut noise = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX).min(1 << 20)];
        OsRng.fill_bytes(&mut noise);
        file.seek(io::SeekFrom::Start(0))
            .and_then(|_| file.write_all(&noise))
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("overwrite", path, e))?;
        drop(file);
        crate::fsutil::remove_durably(path)
    }

    /// Whether the key file at `path` needs a passphrase. Checks the file's structure but
    /// derives nothing.
    pub fn is_protected(path: &Path) -> Result<bool> {
        let file = read(path)?;
        Ok(matches!(parse(path, &file)?.mode, Mode::Passphrase(_)))
    }
}

/// A key file written by [`KeyFile::stage`], complete and durable under its staging name and
/// not yet the key file.
///
/// Dropping it leaves the staged file where it is, as a crash would: the caller removes what
/// it created with the key first, then the staged file ([`StagedKeyFile::discard`]), so that
/// a crash in between still leaves the marker.
pub struct StagedKeyFile {
    key: DbKey,
    staged: PathBuf,
    target: PathBuf,
    /// For the log line of the commit.
    protected: bool,
}

impl fmt::Debug for StagedKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagedKeyFile")
            .field("staged", &self.staged)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl StagedKeyFile {
    /// The database key the staged file holds.
    pub fn key(&self) -> &DbKey {
        &self.key
    }

    /// The staged file.
    pub fn staged_path(&self) -> &Path {
        &self.staged
    }

    /// Links the staged file to the key file's path (never overwriting: [`Error::KeyFileExists`]
    /// if something is there, and the staged file stays), removes the staging name and
    /// flushes the directory. The link is the one atomic step after which the key file exists.
    pub fn commit(self) -> Result<()> {
        fsutil::place(&self.staged, &self.target, Placement::NoClobber).map_err(|e| {
            if fsutil::is_already_exists(&e) {
                Error::KeyFileExists {
                    path: self.target.clone(),
                }
            } else {
                e
            }
        })?;
        log_created(&self.target, self.protected);
        Ok(())
    }

    /// Removes the staged file: the creation it belonged to is abandoned.
    pub fn discard(self) -> Result<()> {
        fsutil::remove_durably(&self.staged).map(drop)
    }
}

fn log_created(path: &Path, protected: bool) {
    if protected {
        tracing::info!(path = %path.display(), "created a passphrase-protected key file");
    } else {
        tracing::warn!(
            path = %path.display(),
            "created an UNPROTECTED key file: anyone who can read it can decrypt the database"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Unprotected,
    Passphrase(KdfParams),
}

struct Parsed {
    mode: Mode,
    salt: [u8; SALT_LEN],
}

/// Reads the whole key file, refusing to read more than a key file can be.
fn read(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::KeyFileMissing {
            path: path.to_owned(),
        },
        _ => Error::io("open", path, e),
    })?;
    let mut bytes = Vec::with_capacity(KEY_FILE_LEN + 1);
    // One byte more than a key file may hold tells "too long" from "exactly right".
    file.take(KEY_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(bytes)
}

/// Checks everything about the file that needs no secret.
fn parse(path: &Path, file: &[u8]) -> Result<Parsed> {
    let corrupt = |reason: String| Error::KeyFileCorrupt {
        path: path.to_owned(),
        reason,
    };
    if file.len() < MAGIC.len() || file[..MAGIC.len()] != MAGIC {
        return Err(corrupt("it is not a Carom key file".to_owned()));
    }
    let version = file.get(OFFSET_VERSION).copied().unwrap_or(0);
    if version > FORMAT_VERSION {
        return Err(Error::NewerKeyFile {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version != FORMAT_VERSION {
        return Err(corrupt(format!("unknown format version {version}")));
    }
    if file.len() != KEY_FILE_LEN {
        let what = if file.len() < KEY_FILE_LEN {
            "truncated"
        } else {
            "too long"
        };
        return Err(corrupt(format!(
            "{what}: {} bytes instead of {KEY_FILE_LEN}",
            file.len()
        )));
    }
    let checksum = Sha3_256::digest(&file[..OFFSET_CHECKSUM]);
    if checksum.as_slice() != &file[OFFSET_CHECKSUM..] {
        return Err(corrupt("its checksum does not match".to_owned()));
    }
    if file[OFFSET_RESERVED..OFFSET_MEMORY] != [0, 0] {
        return Err(corrupt("reserved bytes are not zero".to_owned()));
    }
    let params = KdfParams {
        memory_kib: read_u32(file, OFFSET_MEMORY),
        iterations: read_u32(file, OFFSET_ITERATIONS),
        parallelism: read_u32(file, OFFSET_PARALLELISM),
    };
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&file[OFFSET_SALT..OFFSET_NONCE]);
    let mode = match file[OFFSET_MODE] {
        MODE_UNPROTECTED => {
            if params
                != (KdfParams {
                    memory_kib: 0,
                    iterations: 0,
                    parallelism: 0,
                })
                || salt != [0; SALT_LEN]
            {
                return Err(corrupt(
                    "an unprotected key file carries key-derivation parameters".to_owned(),
                ));
            }
            Mode::Unprotected
        }
        MODE_ARGON2ID_XCHACHA20POLY1305 => {
            params.validate().map_err(|reason| {
                corrupt(format!("implausible key-derivation parameters: {reason}"))
            })?;
            Mode::Passphrase(params)
        }
        other => return Err(corrupt(format!("unknown protection mode {other}"))),
    };
    Ok(Parsed { mode, salt })
}

fn read_u32(file: &[u8], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&file[offset..offset + 4]);
    u32::from_le_bytes(bytes)
}

/// Builds the bytes of a key file holding `key`.
fn seal(
    key: &DbKey,
    protection: Protection<'_>,
    params: KdfParams,
) -> Result<Zeroizing<[u8; KEY_FILE_LEN]>> {
    // Zeroizing only because the buffer briefly holds the plaintext key before encryption.
    let mut file = Zeroizing::new([0u8; KEY_FILE_LEN]);
    file[..MAGIC.len()].copy_from_slice(&MAGIC);
    file[OFFSET_VERSION] = FORMAT_VERSION;
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.try_fill_bytes(&mut nonce).map_err(Error::Random)?;
    file[OFFSET_NONCE..HEADER_LEN].copy_from_slice(&nonce);
    let wrapping_key = match protection {
        Protection::Unprotected => {
            file[OFFSET_MODE] = MODE_UNPROTECTED;
            Zeroizing::new([0u8; DB_KEY_LEN])
        }
        Protection::Passphrase(passphrase) => {
            if passphrase.is_empty() {
                return Err(Error::Invalid {
                    what: "passphrase",
                    reason: "it is empty; choose an unprotected profile explicitly instead"
                        .to_owned(),
                });
            }
            params.validate().map_err(|reason| Error::Invalid {
                what: "key-derivation parameters",
                reason,
            })?;
            file[OFFSET_MODE] = MODE_ARGON2ID_XCHACHA20POLY1305;
            file[OFFSET_MEMORY..OFFSET_ITERATIONS]
                .copy_from_slice(&params.memory_kib.to_le_bytes());
            file[OFFSET_ITERATIONS..OFFSET_PARALLELISM]
                .copy_from_slice(&params.iterations.to_le_bytes());
            file[OFFSET_PARALLELISM..OFFSET_SALT]
                .copy_from_slice(&params.parallelism.to_le_bytes());
            let mut salt = [0u8; SALT_LEN];
            OsRng.try_fill_bytes(&mut salt).map_err(Error::Random)?;
            file[OFFSET_SALT..OFFSET_NONCE].copy_from_slice(&salt);
            derive_wrapping_key(passphrase, &salt, params).map_err(|reason| Error::Invalid {
                what: "key-derivation parameters",
                reason,
            })?
        }
    };
    file[HEADER_LEN..OFFSET_TAG].copy_from_slice(key.as_bytes());
    let (header, rest) = file.split_at_mut(HEADER_LEN);
    let cipher = XChaCha20Poly1305::new((&*wrapping_key).into());
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), header, &mut rest[..DB_KEY_LEN])
        .map_err(|_| Error::Invalid {
            what: "key file",
            reason: "encryption failed".to_owned(),
        })?;
    file[OFFSET_TAG..OFFSET_CHECKSUM].copy_from_slice(&tag);
    let checksum = Sha3_256::digest(&file[..OFFSET_CHECKSUM]);
    file[OFFSET_CHECKSUM..].copy_from_slice(&checksum);
    Ok(file)
}

fn derive_wrapping_key(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    params: KdfParams,
) -> Result<Zeroizing<[u8; DB_KEY_LEN]>, String> {
    let argon_params = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(DB_KEY_LEN),
    )
    .map_err(|e| format!("unusable key-derivation parameters: {e}"))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
    let mut out = Zeroizing::new([0u8; DB_KEY_LEN]);
    argon
        .hash_password_into(passphrase, salt, &mut out[..])
        .map_err(|e| format!("key derivation failed: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests;
