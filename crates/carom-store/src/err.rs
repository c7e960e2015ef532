//! The store's error type and the stable kinds the daemon exposes through its API.
//!
//! Every message names the file concerned and says what a person can do; none contains SQL
//! text, row contents or key material. The SQLite error behind an [`Error::Sqlite`] is kept as
//! its `source()` for local debug logs only.

use std::io;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;
use rusqlite::ffi;

/// A `Result` whose error is the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a store or key-file operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase does not open the key file (or the key file was deliberately altered,
    /// which cannot be told apart from a wrong passphrase).
    #[error("wrong passphrase for the key file {path}")]
    WrongPassphrase {
        /// The key file.
        path: PathBuf,
    },

    /// The key file is protected by a passphrase and none was given.
    #[error("the key file {path} is protected by a passphrase, and none was given")]
    PassphraseRequired {
        /// The key file.
        path: PathBuf,
    },

    /// The key file is damaged: truncated, not a key file, or failing its checks.
    #[error(
        "the key file {path} is damaged ({reason}); restore it from a backup. \
         Without it the database cannot be decrypted"
    )]
    KeyFileCorrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A key file was to be created where one already exists.
    #[error("the key file {path} already exists; refusing to overwrite it")]
    KeyFileExists {
        /// The key file.
        path: PathBuf,
    },

    /// The key file does not exist.
    #[error("the key file {path} does not exist")]
    KeyFileMissing {
        /// The key file.
        path: PathBuf,
    },

    /// The database could not be decrypted with the given key.
    ///
    /// SQLCipher authenticates every page with the key, so a key that belongs to another
    /// database and damage to the database's first page look the same.
    #[error(
        "the database {path} cannot be decrypted with this key: the key file belongs to \
         another database, or the database's first page is damaged"
    )]
    WrongKey {
        /// The database file.
        path: PathBuf,
    },

    /// The database is damaged.
    #[error("the database {path} is damaged ({reason}); restore it from a backup")]
    DatabaseCorrupt {
        /// The database file.
        path: PathBuf,
        /// What was found.
        reason: String,
    },

    /// The database does not exist.
    #[error("the database {path} does not exist")]
    DatabaseMissing {
        /// The database file.
        path: PathBuf,
    },

    /// A database was to be created where one already exists.
    #[error("the database {path} already exists; refusing to overwrite it")]
    DatabaseExists {
        /// The database file.
        path: PathBuf,
    },

    /// The database was written by a newer Carom with a schema this one does not know.
    #[error(
        "the database {path} has schema version {found}, newer than the newest this Carom \
         understands ({supported}); upgrade Carom"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file.
        found: u32,
        /// The newest schema version this build supports.
        supported: u32,
    },

    /// The key file was written by a newer Carom in a format this one does not know.
    #[error(
        "the key file {path} has format version {found}, newer than this Carom understands \
         ({supported}); upgrade Carom"
    )]
    NewerKeyFile {
        /// The key file.
        path: PathBuf,
        /// The format version found.
        found: u8,
        /// The newest format version this build supports.
        supported: u8,
    },

    /// The disk (or the database's size limit) is full. The change that hit it was rolled
    /// back; everything committed before is intact.
    #[error(
        "no space left for {path}; the change was not saved (everything saved before is \
         intact). Free some disk space and retry"
    )]
    DiskFull {
        /// The file that could not grow.
        path: PathBuf,
    },

    /// Another connection holds the database's write lock (normally: another daemon).
    #[error("the database {path} is in use by another process")]
    Busy {
        /// The database file.
        path: PathBuf,
    },

    /// A file-system operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase ("read", "create", …).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// A record the operation refers to does not exist.
    #[error("no such {what}")]
    NotFound {
        /// What was looked for ("contact", "message", …).
        what: &'static str,
    },

    /// The operation would create a second record where only one may exist.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What already exists ("contact with this identity", …).
        what: &'static str,
    },

    /// An argument was not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random(#[source] rand_core::Error),

    /// An unexpected SQLite failure: a bug in Carom or in its environment.
    #[error("internal database error on {path} (SQLite result code {code})")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's extended result code, or -1 when the error did not come from SQLite.
        code: i32,
        /// The error from rusqlite; for debug logs, not for users.
        #[source]
        source: rusqlite::Error,
    },
}

/// What kind of failure an [`Error`] is: a small, stable classification that the daemon's API
/// exposes as a string (see [`ErrorKind::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The passphrase is wrong.
    WrongPassphrase,
    /// A passphrase is needed and was not given.
    PassphraseRequired,
    /// The key does not decrypt the database.
    WrongKey,
    /// A file is damaged.
    Corrupt,
    /// The disk is full.
    DiskFull,
    /// A file-system error.
    Io,
    /// Another process uses the database.
    Busy,
    /// A file or record does not exist.
    NotFound,
    /// A file or record already exists.
    Conflict,
    /// An argument was refused.
    Invalid,
    /// A file comes from a newer Carom.
    Unsupported,
    /// A bug or an unexpected environment failure.
    Internal,
}

impl ErrorKind {
    /// The stable lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::WrongPassphrase => "wrong_passphrase",
            ErrorKind::PassphraseRequired => "passphrase_required",
            ErrorKind::WrongKey => "wrong_key",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::DiskFull => "disk_full",
            ErrorKind::Io => "io",
            ErrorKind::Busy => "busy",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The stable classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::WrongPassphrase { .. } => ErrorKind::WrongPassphrase,
            Error::PassphraseRequired { .. } => ErrorKind::PassphraseRequired,
            Error::WrongKey { .. } => ErrorKind::WrongKey,
            Error::KeyFileCorrupt { .. } | Error::DatabaseCorrupt { .. } => ErrorKind::Corrupt,
            Error::DiskFull { .. } => ErrorKind::DiskFull,
            Error::Io { .. } => ErrorKind::Io,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::KeyFileMissing { .. }
            | Error::DatabaseMissing { .. }
            | Error::NotFound { .. } => ErrorKind::NotFound,
            Error::KeyFileExists { .. }
            | Error::DatabaseExists { .. }
            | Error::AlreadyExists { .. } => ErrorKind::Conflict,
            Error::Invalid { .. } => ErrorKind::Invalid,
            Error::NewerSchema { .. } | Error::NewerKeyFile { .. } => ErrorKind::Unsupported,
            Error::Random(_) | Error::Sqlite { .. } => ErrorKind::Internal,
        }
    }

    /// A file-system error, classified: a full disk or exhausted quota becomes
    /// [`Error::DiskFull`], anything else [`Error::Io`].
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Error {
        let full = matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) || matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        if full {
            Error::DiskFull {
                path: path.to_owned(),
            }
        } else {
            Error::Io {
                action,
                path: path.to_owned(),
                source,
            }
        }
    }

    /// Classifies an error from SQLite on the database at `path`.
    pub(crate) fn from_sqlite(path: &Path, error: rusqlite::Error) -> Error {
        let path = path.to_owned();
        let (code, extended) = match &error {
            rusqlite::Error::SqliteFailure(e, _) => (e.code, e.extended_code),
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..)
            | rusqlite::Error::InvalidColumnType(..) => {
                // The schema's CHECK constraints make these impossible for rows we wrote.
                return Error::DatabaseCorrupt {
                    path,
                    reason: "a stored record has an impossible value".to_owned(),
                };
            }
            rusqlite::Error::ToSqlConversionFailure(_) => {
                return Error::Invalid {
                    what: "value",
                    reason: "a number is too large to store".to_owned(),
                };
            }
            _ => {
                return Error::Sqlite {
                    path,
                    code: -1,
                    source: error,
                };
            }
        };
        match code {
            ErrorCode::DiskFull => Error::DiskFull { path },
            ErrorCode::DatabaseCorrupt => Error::DatabaseCorrupt {
                path,
                reason: "its structure is inconsistent".to_owned(),
            },
            // Once the key has been checked, a page that fails SQLCipher's authentication
            // shows up as "not a database".
            ErrorCode::NotADatabase => Error::DatabaseCorrupt {
                path,
                reason: "a page failed its authentication check".to_owned(),
            },
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Error::Busy { path },
            ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::NoLargeFileSupport => Error::Io {
                action: "read or write",
                path,
                source: io::Error::other(sqlite_io_reason(code)),
            },
            ErrorCode::ConstraintViolation => match extended {
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    Error::AlreadyExists { what: "record" }
                }
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Error::NotFound {
                    what: "referenced record",
                },
                _ => Error::Invalid {
                    what: "record",
                    reason: "it violates a constraint of the schema".to_owned(),
                },
            },
            ErrorCode::TooBig => Error::Invalid {
                what: "value",
                reason: "it is too large to store".to_owned(),
            },
            _ => Error::Sqlite {
                path,
                code: extended,
                source: error,
            },
        }
    }

    /// Whether this is a unique-constraint conflict (for call sites that name what clashed).
    pub(crate) fn is_unique_conflict(&self) -> bool {
        matches!(self, Error::AlreadyExists { what: "record" })
    }

    /// Whether this is a foreign-key failure (for call sites that name what is missing).
    pub(crate) fn is_missing_reference(&self) -> bool {
        matches!(
            self,
            Error::NotFound {
                what: "referenced record"
            }
        )
    }
}

fn sqlite_io_reason(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::CannotOpen => "the file cannot be opened",
        ErrorCode::PermissionDenied => "permission denied",
        ErrorCode::ReadOnly => "the file or file system is read-only",
        ErrorCode::FileLockingProtocolFailed => "file locking failed",
        ErrorCode::NoLargeFileSupport => "the file system does not support large files",
        _ => "an I/O error occurred",
    }
}

/// Attaches the database's path to rusqlite results.
pub(crate) trait SqlResultExt<T> {
    /// Converts a rusqlite error into an [`Error`] naming `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> SqlResultExt<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::from_sqlite(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_io_errors_become_disk_full() {
        let path = Path::new("/data/carom.key");
        let full = Error::io("write", path, io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.kind(), ErrorKind::DiskFull);
        assert!(full.to_string().contains("/data/carom.key"));
        let quota = Error::io("write", path, io::Error::from_raw_os_error(libc::EDQUOT));
        assert_eq!(quota.kind(), ErrorKind::DiskFull);
        let other = Error::io("write", path, io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(other.kind(), ErrorKind::Io);
    }

    #[test]
    fn sqlite_codes_are_classified() {
        let path = Path::new("/data/carom.db");
        let failure = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        assert_eq!(
            Error::from_sqlite(path, failure(ffi::SQLITE_FULL)).kind(),
            ErrorKind::DiskFull
        );
        assert_eq!(
            Error::from_sqlite(path, failure(ffi::SQLITE_CORRUPT)).kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(
            Error::from_sqlite(path, failure(ffi::SQLITE_NOTADB)).kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(
            Error::from_sqlite(path, failure(ffi::SQLITE_BUSY)).kind(),
            ErrorKind::Busy
        );
        assert_eq!(
            Error::from_sqlite(path, failure(ffi::SQLITE_IOERR_WRITE)).kind(),
            ErrorKind::Io
        );
        assert_eq!(
            Error::from_sqlite(path, failure(ffi::SQLITE_CONSTRAINT_UNIQUE)).kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            Error::from_sqlite(path, failure(ffi::SQLITE_CONSTRAINT_FOREIGNKEY)).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            Error::from_sqlite(path, failure(ffi::SQLITE_MISUSE)).kind(),
            ErrorKind::Internal
        );
    }

    #[test]
    fn messages_do_not_carry_sqlite_text() {
        let path = Path::new("/data/carom.db");
        let secret_sql = "near \"SELECT body FROM messages\": syntax error";
        let error = Error::from_sqlite(
            path,
            rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_ERROR),
                Some(secret_sql.to_owned()),
            ),
        );
        let shown = error.to_string();
        assert!(shown.contains("/data/carom.db"), "{shown}");
        assert!(!shown.contains("SELECT"), "{shown}");
        assert_eq!(error.kind().as_str(), "internal");
    }

    #[test]
    fn kind_names_are_stable() {
        let names: Vec<&str> = [
            ErrorKind::WrongPassphrase,
            ErrorKind::PassphraseRequired,
            ErrorKind::WrongKey,
            ErrorKind::Corrupt,
            ErrorKind::DiskFull,
            ErrorKind::Io,
            ErrorKind::Busy,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Invalid,
            ErrorKind::Unsupported,
            ErrorKind::Internal,
        ]
        .into_iter()
        .map(ErrorKind::as_str)
        .collect();
        assert_eq!(
            names,
            [
                "wrong_passphrase",
                "passphrase_required",
                "wrong_key",
                "corrupt",
                "disk_full",
                "io",
                "busy",
                "not_found",
                "conflict",
                "invalid",
                "unsupported",
                "internal"
            ]
        );
    }
}
