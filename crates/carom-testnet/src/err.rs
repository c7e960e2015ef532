//! Errors of the test-network harness.

use std::path::PathBuf;
use std::time::Duration;

/// Why a private Tor network could not be set up, checked or torn down.
///
/// Every variant names the file or node a person should look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required program (`tor`, `tor-gencert` or `obfs4proxy`) is not installed.
    #[error(
        "`{program}` was not found (looked in $PATH, /usr/sbin and /usr/bin). \
         Run scripts/install-deps, which installs Debian's tor and obfs4proxy packages \
         (`sudo apt-get install -y tor obfs4proxy`)"
    )]
    ProgramMissing {
        /// The program looked for.
        program: &'static str,
    },

    /// A helper program ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line that was run.
        command: String,
        /// Its exit status, as text.
        status: String,
        /// What it printed on standard error (trimmed).
        stderr: String,
    },

    /// Reading or writing a file of the network failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// No block of free loopback ports could be reserved.
    #[error(
        "no free block of {size} loopback ports in {first}..{last}: \
         stop another test network (`carom-testnet down`) or free some ports"
    )]
    NoFreePorts {
        /// Ports needed.
        size: u16,
        /// Lowest port considered.
        first: u16,
        /// Highest port considered.
        last: u16,
    },

    /// A tor process exited while the network was starting or running.
    #[error("tor node {node} exited ({status}); its log is {log}:\n{log_tail}")]
    NodeExited {
        /// The node's nickname.
        node: String,
        /// Its exit status, as text.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// The network did not become usable within the allowed time.
    #[error(
        "the private Tor network was not ready after {waited:?}: {problem}. \
         Look at {log}:\n{log_tail}"
    )]
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// What was still missing (e.g. which relays lack which flags).
        problem: String,
        /// The log most likely to explain it.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// A process that is not one of the network's relays was named where one was needed.
    #[error("pid {pid} is not a relay of this network")]
    NotARelay {
        /// The process.
        pid: u32,
    },

    /// A file written by tor did not have the expected form.
    #[error("unexpected contents in {path}: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        problem: String,
    },

    /// A SOCKS connection through a C tor client failed.
    #[error("SOCKS connection via {proxy} to {target} failed: {problem}")]
    Socks {
        /// The SOCKS proxy address.
        proxy: String,
        /// The requested destination.
        target: String,
        /// What went wrong.
        problem: String,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
