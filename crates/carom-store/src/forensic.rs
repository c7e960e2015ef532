//! Reading a database the way someone holding its key and an image of the disk would: every
//! page of the file decrypted (live pages and free ones alike, since SQLCipher encrypts whole
//! pages and does not know which are free) and every frame of the WAL, old versions included.
//!
//! This exists for tests that prove erasure: that a deleted or expired body is gone from
//! everything SQLite left on disk, not merely from the rows a query returns. It reads files
//! directly and never opens them with SQLite, so it sees what the pager would not show.
//!
//! What it is not: a recovery tool, or a check of SQLCipher's page authentication (it does not
//! verify the HMACs; a wrong key is caught by the plaintext header check instead).
//!
//! The format is SQLCipher 4's as Carom configures it (`docs/storage.md`): 4096-byte pages,
//! each encrypted with AES-256-CBC under the raw database key, followed by a reserved area of
//! 48 bytes (a 16-byte IV, then a 32-byte HMAC-SHA256); page 1 begins with the 16-byte salt in
//! the clear, so its encrypted part starts after it.

use std::path::{Path, PathBuf};

use aes::Aes256;
use aes::cipher::{BlockCipherDecrypt, KeyInit};

use crate::keyfile::DbKey;

/// SQLCipher's page size as Carom uses it.
pub const PAGE_SIZE: usize = 4096;
/// IV and HMAC-SHA256 at the end of each page.
const RESERVED: usize = 48;
const IV_LEN: usize = 16;
const SALT_LEN: usize = 16;
const WAL_HEADER: usize = 32;
const WAL_FRAME_HEADER: usize = 24;
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Why a file could not be read as a Carom database.
#[derive(Debug, thiserror::Error)]
pub enum ForensicError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its first page did not decrypt to an SQLite header: the wrong key, or not SQLCipher 4
    /// as Carom configures it.
    #[error("{path} does not decrypt with this key to an SQLite database of 4096-byte pages")]
    NotDecrypted {
        /// The file.
        path: PathBuf,
    },
}

/// One decrypted page.
#[derive(Clone, Debug)]
pub struct Page {
    /// Where it came from: the database file or a WAL frame.
    pub source: PageSource,
    /// Its page number (1-based).
    pub number: u32,
    /// The plaintext, [`PAGE_SIZE`] bytes minus the reserved area (page 1 with SQLite's
    /// magic string where the salt is on disk).
    pub plaintext: Vec<u8>,
}

/// Where a [`Page`] was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSource {
    /// The main database file.
    Database,
    /// The WAL, frame `n` (0-based).
    Wal(usize),
}

/// Every page of a database and of its WAL, decrypted.
#[derive(Debug)]
pub struct Image {
    /// The pages, the database file's first, then the WAL's frames in order.
    pub pages: Vec<Page>,
    /// The free-list length the database header records.
    pub free_pages: u32,
    /// The WAL's size in bytes (0 if it does not exist).
    pub wal_bytes: u64,
}

impl Image {
    /// Reads the database at `path` (and its `-wal`, if there is one) with `key`.
    pub fn read(path: &Path, key: &DbKey) -> Result<Image, ForensicError> {
        let cipher =
            Aes256::new_from_slice(key.as_bytes()).map_err(|_| ForensicError::NotDecrypted {
                path: path.to_owned(),
            })?;
        let file = std::fs::read(path).map_err(|source| ForensicError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut pages = Vec::new();
        for (i, raw) in file.chunks(PAGE_SIZE).enumerate() {
            if raw.len() < PAGE_SIZE {
                break;
            }
            let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
            pages.push(Page {
                source: PageSource::Database,
                number,
                plaintext: decrypt_page(&cipher, raw, number),
            });
        }
        let header = pages.first().map(|p| p.plaintext.as_slice()).unwrap_or(&[]);
        if !is_sqlite_header(header) {
            return Err(ForensicError::NotDecrypted {
                path: path.to_owned(),
            });
        }
        let free_pages = u32::from_be_bytes([header[36], header[37], header[38], header[39]]);
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal_path = PathBuf::from(wal_path);
        let wal = match std::fs::read(&wal_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(ForensicError::Io {
                    path: wal_path,
                    source,
                });
            }
        };
        let wal_bytes = u64::try_from(wal.len()).unwrap_or(u64::MAX);
        if wal.len() > WAL_HEADER {
            let frames = wal[WAL_HEADER..].chunks(WAL_FRAME_HEADER + PAGE_SIZE);
            for (n, frame) in frames.enumerate() {
                if frame.len() < WAL_FRAME_HEADER + PAGE_SIZE {
                    break;
                }
                let number = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                pages.push(Page {
                    source: PageSource::Wal(n),
                    number,
                    plaintext: decrypt_page(&cipher, &frame[WAL_FRAME_HEADER..], number),
                });
            }
        }
        Ok(Image {
            pages,
            free_pages,
            wal_bytes,
        })
    }

    /// The pages in which `needle` occurs.
    pub fn pages_containing(&self, needle: &[u8]) -> Vec<&Page> {
        self.pages
            .iter()
            .filter(|p| contains(&p.plaintext, needle))
            .collect()
    }
}

/// Whether `needle` occurs in `haystack` (an empty needle never does).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A decrypted page 1 starts like any SQLite database: the magic, then the page size
/// (4096, big-endian), the file format bytes, the space reserved at the end of each page (at
/// least SQLCipher's; the header records more, which SQLite leaves unused), and the three
/// payload fractions every SQLite database has (64, 32, 32). Random bytes pass this with odds
/// of about 2^-48.
fn is_sqlite_header(page: &[u8]) -> bool {
    page.len() > 40
        && page.starts_with(SQLITE_MAGIC)
        && page[16..18] == [0x10, 0x00]
        && usize::from(page[20]) >= RESERVED
        && page[21..24] == [64, 32, 32]
}

/// AES-256-CBC decryption of one page with the IV stored in its reserved area.
fn decrypt_page(cipher: &Aes256, raw: &[u8], number: u32) -> Vec<u8> {
    let offset = if number == 1 { SALT_LEN } else { 0 };
    let end = PAGE_SIZE - RESERVED;
    let mut previous = [0u8; IV_LEN];
    previous.copy_from_slice(&raw[end..end + IV_LEN]);
    let mut plaintext = Vec::with_capacity(end);
    if number == 1 {
        plaintext.extend_from_slice(SQLITE_MAGIC);
    }
    for chunk in raw[offset..end].chunks_exact(IV_LEN) {
        let mut block = aes::Block::default();
        block.copy_from_slice(chunk);
        cipher.decrypt_block(&mut block);
        for (b, p) in block.iter_mut().zip(previous) {
            *b ^= p;
        }
        plaintext.extend_from_slice(&block);
        previous.copy_from_slice(chunk);
    }
    plaintext
}
