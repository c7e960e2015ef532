//! Finding, running and stopping tor processes.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::err::{Error, Result};

/// Locate a program: `$CAROM_TOR_BIN`-style override, then `$PATH`, then the sbin/bin
/// directories Debian installs tor into (not always on a non-root user's `$PATH`).
pub(crate) fn find_program(program: &'static str, override_var: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(override_var) {
        return Ok(PathBuf::from(path));
    }
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_dirs)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(Error::ProgramMissing { program })
}

/// Run a helper command to completion, feeding it `stdin`, and fail with its stderr.
pub(crate) fn run(command: &mut Command, stdin: &[u8]) -> Result<String> {
    use std::io::Write;
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::CommandFailed {
            command: shown.clone(),
            status: "could not start".into(),
            stderr: e.to_string(),
        })?;
    if let Some(mut input) = child.stdin.take() {
        // A program that does not read its stdin closes the pipe; that is not an error here.
        let _ = input.write_all(stdin);
    }
    let output = child.wait_with_output().map_err(|e| Error::CommandFailed {
        command: shown.clone(),
        status: "could not wait".into(),
        stderr: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(Error::CommandFailed {
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 16 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::from("(no log written)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a process with this PID exists.
pub(crate) fn is_alive(pid: u32) -> bool {
    to_pid(pid).is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

/// Send `signal` to a process this crate started (see [`terminate`]); a process already gone
/// is not an error.
pub(crate) fn signal(pid: u32, signal: Signal) {
    if let Some(target) = to_pid(pid) {
        let _ = rustix::process::kill_process(target, signal);
    }
}

/// Send SIGTERM, wait up to `grace` for the process to go, then SIGKILL.
///
/// Only ever called with PIDs this crate started (recorded at spawn time, and for detached
/// networks re-checked against the process's command line before use).
pub(crate) fn terminate(pid: u32, grace: Duration) {
    let Some(target) = to_pid(pid) else { return };
    if rustix::process::kill_process(target, Signal::TERM).is_err() {
        return; // already gone
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_alive(pid) || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = rustix::process::kill_process(target, Signal::KILL);
}

/// A child that has exited but was not yet reaped still "exists"; treat it as gone.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesised command name, which may itself hold spaces.
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(false)
}

/// The processes whose parent is `parent` and whose program (`comm`) is `program`: for
/// instance the pluggable-transport program arti started inside a daemon or a test.
pub fn children_named(parent: u32, program: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid …`: comm may hold spaces, so split after its `)`.
            stat.rsplit_once(") ").is_some_and(|(head, rest)| {
                head.ends_with(&format!("({program}"))
                    && rest.split_whitespace().nth(1) == Some(parent.to_string().as_str())
            })
        })
        .collect()
}

/// The command line of a running process, arguments joined by spaces.
pub(crate) fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}
