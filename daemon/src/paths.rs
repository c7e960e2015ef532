//! Where the daemon keeps things (XDG base directories) and how it makes them private.

use std::path::{Path, PathBuf};

/// The daemon's directories.
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    /// Profile, database, arti state: `$XDG_DATA_HOME/carom`.
    pub(crate) data_dir: PathBuf,
    /// The API socket: `$XDG_RUNTIME_DIR/carom`, or `/tmp/carom-$UID`.
    pub(crate) runtime_dir: PathBuf,
}

impl Paths {
    pub(crate) fn key_file(&self) -> PathBuf {
        self.data_dir.join("profile.key")
    }
    pub(crate) fn database(&self) -> PathBuf {
        self.data_dir.join("profile.db")
    }
    pub(crate) fn lock_file(&self) -> PathBuf {
        self.data_dir.join("caromd.lock")
    }
    pub(crate) fn socket(&self) -> PathBuf {
        self.runtime_dir.join("carom.sock")
    }
}

/// `$XDG_DATA_HOME/carom` (usually `~/.local/share/carom`).
pub(crate) fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "carom").map(|d| d.data_dir().to_path_buf())
}

/// `$XDG_CONFIG_HOME/carom/caromd.toml` (usually `~/.config/carom/caromd.toml`).
pub(crate) fn default_config_file() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "carom").map(|d| d.config_dir().join("caromd.toml"))
}

/// Create `dir` (and parents) if needed, owned by us with mode 0700, refusing a directory
/// that someone else owns or a symbolic link (see [`carom_fs::ensure_private_dir`]).
pub(crate) fn private_dir(dir: &Path) -> Result<(), String> {
    carom_fs::ensure_private_dir(dir).map_err(|e| e.to_string())
}
