//! # carom-fs: private places on the local file system, and how to tell they are ours
//!
//! Carom keeps its profile, Tor state and API socket in directories only its user may enter.
//! Two things go wrong with the obvious code, and this crate exists to do them once, right:
//!
//! - **Creating a private directory must not follow a symbolic link.** Checking a path and
//!   then changing its mode by name (`stat`, then `chmod`) acts on whatever the name points to
//!   by then. [`ensure_private_dir`] opens the directory itself (`O_NOFOLLOW`) and inspects and
//!   tightens that open directory, so the check and the change are about the same object.
//! - **A client must not trust a socket because of its name.** Another local user can create
//!   `/tmp/carom-$UID/` first and listen there. [`check_socket`] checks that the socket and
//!   its directory belong to us and are closed to others, and [`check_peer`] checks the
//!   connected process's credentials (`SO_PEERCRED`), which no file-system trick can forge.
//!
//! What it is not: atomic file writes (those live with the store), or a portable abstraction:
//! it is for Linux and other Unixes with `SO_PEERCRED`-style credentials.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// Why a place is not private to us, or could not be made so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotPrivate {
    /// The path names a symbolic link, which could point anywhere.
    #[error(
        "{path} is a symbolic link; refusing to use it (remove it, or point Carom at the real directory)"
    )]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// Something other than a directory sits where a directory must be.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Something other than a Unix socket sits where the daemon's socket must be.
    #[error("{path} is not a Unix socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path belongs to another user.
    #[error(
        "{path} belongs to {owner}, not to you ({me}); another user may be impersonating caromd. \
         Remove it or use a directory only you can write"
    )]
    Owner {
        /// The path.
        path: PathBuf,
        /// Its owner, as `uid N (name)`.
        owner: User,
        /// The user we run as.
        me: User,
    },
    /// Other users may read or write the path.
    #[error(
        "{path} is open to other users (mode {mode:04o}); it must be {wanted:04o}. \
         Fix it with `chmod {wanted:o} {path}`"
    )]
    Mode {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What they must be.
        wanted: u32,
    },
    /// The process at the other end of the socket runs as another user.
    #[error(
        "the process listening on {path} runs as {peer}, not as you ({me}); another user is \
         impersonating caromd. Nothing was sent to it"
    )]
    Peer {
        /// The socket path.
        path: PathBuf,
        /// The listening process's user.
        peer: User,
        /// The user we run as.
        me: User,
    },
    /// The file system refused an operation.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What we tried.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
}

/// A local user, shown as `uid N (name)` where the name is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The numeric user id.
    pub uid: u32,
    /// The login name from `/etc/passwd`, if any.
    pub name: Option<String>,
}

impl User {
    /// The user with this uid, with its name looked up.
    pub fn from_uid(uid: u32) -> User {
        User {
            uid,
            name: user_name(uid),
        }
    }

    /// The effective user of this process.
    pub fn me() -> User {
        User::from_uid(my_uid())
    }
}

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "uid {} ({name})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// The effective uid of this process.
pub fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The login name of `uid` from `/etc/passwd`, for messages only.
fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// Mode of every private directory: the owner may enter, nobody else.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode the daemon's socket must have: the owner may connect, nobody else.
pub const PRIVATE_SOCKET_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode 0700, or, if it exists, checks it is a real
/// directory (not a symbolic link) owned by us and tightens its mode to 0700.
///
/// The check and the `chmod` act on the opened directory, never on the name again, so a link
/// swapped in between cannot redirect them.
pub fn ensure_private_dir(dir: &Path) -> Result<(), NotPrivate> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|source| io_error("create", dir, source))?;
    let opened = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(errno) => {
            // Name the real problem: O_NOFOLLOW reports a link as ELOOP or ENOTDIR.
            return Err(match fs::symlink_metadata(dir) {
                Ok(meta) if meta.file_type().is_symlink() => NotPrivate::Symlink {
                    path: dir.to_path_buf(),
                },
                Ok(meta) if !meta.is_dir() => NotPrivate::NotADirectory {
                    path: dir.to_path_buf(),
                },
                _ => io_error("open", dir, errno.into()),
            });
        }
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| io_error("inspect", dir, e.into()))?;
    let me = my_uid();
    if stat.st_uid != me {
        return Err(NotPrivate::Owner {
            path: dir.to_path_buf(),
            owner: User::from_uid(stat.st_uid),
            me: User::from_uid(me),
        });
    }
    if stat.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(PRIVATE_DIR_MODE))
            .map_err(|e| io_error("restrict the permissions of", dir, e.into()))?;
    }
    Ok(())
}

/// Checks, without changing anything, that `dir` is a real directory owned by us that no
/// other user may enter.
pub fn check_private_dir(dir: &Path) -> Result<(), NotPrivate> {
    let meta = fs::symlink_metadata(dir).map_err(|source| io_error("inspect", dir, source))?;
    if meta.file_type().is_symlink() {
        return Err(NotPrivate::Symlink {
            path: dir.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(NotPrivate::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    check_owner_and_mode(dir, &meta, PRIVATE_DIR_MODE)
}

/// Checks that `socket` is a Unix socket owned by us with mode 0600 (no access for others),
/// inside a directory that passes [`check_private_dir`]. Run it before connecting; then
/// [`check_peer`] on the connection.
pub fn check_socket(socket: &Path) -> Result<(), NotPrivate> {
    let dir = match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    check_private_dir(dir)?;
    let meta =
        fs::symlink_metadata(socket).map_err(|source| io_error("inspect", socket, source))?;
    if meta.file_type().is_symlink() {
        return Err(NotPrivate::Symlink {
            path: socket.to_path_buf(),
        });
    }
    if !meta.file_type().is_socket() {
        return Err(NotPrivate::NotASocket {
            path: socket.to_path_buf(),
        });
    }
    check_owner_and_mode(socket, &meta, PRIVATE_SOCKET_MODE)
}

/// Checks that the process at the other end of a connection to `socket` runs as our user.
/// `peer_uid` comes from the connection's credentials (`SO_PEERCRED`), which the kernel
/// records when the listener was created and nobody can forge.
pub fn check_peer(socket: &Path, peer_uid: u32) -> Result<(), NotPrivate> {
    let me = my_uid();
    if peer_uid == me {
        return Ok(());
    }
    Err(NotPrivate::Peer {
        path: socket.to_path_buf(),
        peer: User::from_uid(peer_uid),
        me: User::from_uid(me),
    })
}

fn check_owner_and_mode(path: &Path, meta: &fs::Metadata, wanted: u32) -> Result<(), NotPrivate> {
    let me = my_uid();
    if meta.uid() != me {
        return Err(NotPrivate::Owner {
            path: path.to_path_buf(),
            owner: User::from_uid(meta.uid()),
            me: User::from_uid(me),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(NotPrivate::Mode {
            path: path.to_path_buf(),
            mode,
            wanted,
        });
    }
    Ok(())
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> NotPrivate {
    NotPrivate::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_missing_directories_private_and_tightens_loose_ones() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let loose = root.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);
        check_private_dir(&loose).unwrap();
    }

    #[test]
    fn a_symbolic_link_is_refused_and_its_target_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("someone-elses");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        let link = root.path().join("carom");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let error = ensure_private_dir(&link).unwrap_err();
        assert!(matches!(error, NotPrivate::Symlink { .. }), "{error}");
        assert!(error.to_string().contains("symbolic link"), "{error}");
        // Following the link would have made the target 0700.
        assert_eq!(mode(&target), 0o755);
        let error = check_private_dir(&link).unwrap_err();
        assert!(matches!(error, NotPrivate::Symlink { .. }), "{error}");
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(ensure_private_dir(&file).is_err());
        let error = check_private_dir(&file).unwrap_err();
        assert!(matches!(error, NotPrivate::NotADirectory { .. }), "{error}");
    }

    #[test]
    fn a_socket_must_be_private_and_in_a_private_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        ensure_private_dir(&dir).unwrap();
        let socket = dir.join("carom.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).unwrap();
        check_socket(&socket).unwrap();

        fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
        let error = check_socket(&socket).unwrap_err();
        assert!(
            matches!(error, NotPrivate::Mode { mode: 0o666, .. }),
            "{error}"
        );
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).unwrap();

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)).unwrap();
        let error = check_socket(&socket).unwrap_err();
        assert!(
            matches!(error, NotPrivate::Mode { mode: 0o711, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("chmod 700"), "{error}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();

        let plain = dir.join("plain");
        fs::write(&plain, b"").unwrap();
        let error = check_socket(&plain).unwrap_err();
        assert!(matches!(error, NotPrivate::NotASocket { .. }), "{error}");
    }

    #[test]
    fn only_our_own_uid_is_a_trusted_peer() {
        let path = Path::new("/run/x.sock");
        check_peer(path, my_uid()).unwrap();
        let other = my_uid().wrapping_add(1);
        let error = check_peer(path, other).unwrap_err();
        assert!(
            error.to_string().contains(&format!("uid {other}")),
            "{error}"
        );
    }
}
