//! Crash-safe file placement: write a private temporary file beside the target, make it
//! durable, then move it into place and make the directory entry durable too.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

use crate::err::{Error, Result};

/// Permissions of every file the store creates: readable and writable by the owner only.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;

/// How [`place`] treats an existing file at the target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Fail with `AlreadyExists` if the target exists.
    NoClobber,
    /// Replace the target atomically.
    Replace,
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A fresh, unguessable name in the directory of `path` for a temporary sibling.
pub(crate) fn temp_sibling(path: &Path, purpose: &str) -> Result<PathBuf> {
    let mut tag = [0u8; 8];
    OsRng.try_fill_bytes(&mut tag).map_err(Error::Random)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(parent_dir(path).join(format!(".{name}.{purpose}-{}", hex::encode(tag))))
}

/// Creates `path` exclusively (`O_EXCL`, never following a symlink) with owner-only
/// permissions.
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Flushes the directory holding `path`, so a rename or link into it survives power loss.
pub(crate) fn sync_dir_of(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("flush the directory", dir, e))
}

/// Writes `bytes` to `target` atomically: after a crash at any moment, `target` holds either
/// its old content (or nothing) or all of `bytes`.
///
/// With [`Placement::NoClobber`] an existing target makes this fail with an `io::Error` of
/// kind `AlreadyExists` (returned as [`Error::Io`]); callers translate it.
pub(crate) fn write_atomically(target: &Path, bytes: &[u8], placement: Placement) -> Result<()> {
    let temp = temp_sibling(target, "tmp")?;
    let result = write_durably(&temp, bytes).and_then(|()| place(&temp, target, placement));
    if result.is_err() {
        // Best effort: the temporary file is private and holds only what the target would.
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Creates `temp` exclusively and privately, writes `bytes` and flushes the file (not its
/// directory entry: see [`sync_dir_of`]).
pub(crate) fn write_durably(temp: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = create_private(temp).map_err(|e| Error::io("create", temp, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io("write", temp, e))?;
    file.sync_all().map_err(|e| Error::io("flush", temp, e))
}

/// Removes `path` if it is there and flushes its directory, so the removal is on disk before
/// anything that must come after it. Returns whether there was something to remove.
pub(crate) fn remove_durably(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("remove", path, e)),
    }
    sync_dir_of(path)?;
    Ok(true)
}

/// The entries beside `path` that [`temp_sibling`] named for `purpose`, whatever their random
/// part (and whatever SQLite appended to them, such as `-wal`).
pub(crate) fn temp_siblings(path: &Path, purpose: &str) -> Result<Vec<PathBuf>> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.{purpose}-");
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Moves the durable file `temp` to `target` and flushes the directory.
pub(crate) fn place(temp: &Path, target: &Path, placement: Placement) -> Result<()> {
    match placement {
        Placement::Replace => {
            fs::rename(temp, target).map_err(|e| Error::io("replace", target, e))?;
        }
        Placement::NoClobber => {
            // link(2) fails if the target exists, atomically; rename(2) would overwrite.
            match fs::hard_link(temp, target) {
                Ok(()) => {
                    fs::remove_file(temp).map_err(|e| Error::io("remove", temp, e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(Error::io("create", target, e));
                }
                Err(_) => {
                    // Some file systems (FAT, some FUSE) have no hard links. Fall back to a
                    // check then rename; the window between them is the only cost.
                    if target.symlink_metadata().is_ok() {
                        return Err(Error::io(
                            "create",
                            target,
                            io::Error::from(io::ErrorKind::AlreadyExists),
                        ));
                    }
                    fs::rename(temp, target).map_err(|e| Error::io("create", target, e))?;
                }
            }
        }
    }
    sync_dir_of(target)
}

/// Whether `error` is the `AlreadyExists` that [`Placement::NoClobber`] reports.
pub(crate) fn is_already_exists(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_creates_private_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        write_atomically(&target, b"one", Placement::NoClobber).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"one");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PRIVATE_FILE_MODE);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn no_clobber_refuses_existing_file_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        let error = write_atomically(&target, b"new", Placement::NoClobber).unwrap_err();
        assert!(is_already_exists(&error), "{error}");
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replace_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        write_atomically(&target, b"new", Placement::Replace).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_siblings_finds_only_that_purpose_of_that_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f.db");
        let mine = temp_sibling(&target, "creating").unwrap();
        fs::write(&mine, b"x").unwrap();
        let mut wal = mine.as_os_str().to_owned();
        wal.push("-wal");
        fs::write(&wal, b"x").unwrap();
        fs::write(temp_sibling(&target, "tmp").unwrap(), b"x").unwrap();
        fs::write(
            temp_sibling(&dir.path().join("g.db"), "creating").unwrap(),
            b"x",
        )
        .unwrap();
        fs::write(&target, b"x").unwrap();
        let found = temp_siblings(&target, "creating").unwrap();
        assert_eq!(found, [mine, PathBuf::from(wal)]);
        assert!(
            temp_siblings(&dir.path().join("missing").join("f"), "creating")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn remove_durably_reports_whether_there_was_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"x").unwrap();
        assert!(remove_durably(&target).unwrap());
        assert!(!target.exists());
        assert!(!remove_durably(&target).unwrap());
    }

    #[test]
    fn failure_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a directory: rename over it fails after the temporary was written.
        let target = dir.path().join("sub");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("x"), b"x").unwrap();
        assert!(write_atomically(&target, b"new", Placement::Replace).is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["sub"]);
    }
}
