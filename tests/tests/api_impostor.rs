//! Another local user must not be able to pose as `caromd`.
//!
//! With `XDG_RUNTIME_DIR` unset the daemon's socket lives in `/tmp/carom-$UID/`, a name any
//! local user can take first. These tests start a real impostor process (`impostor`, this
//! crate's helper binary) under a second uid and check that `carom-client` — which every Rust
//! frontend and the `carom` CLI use — refuses it before sending a single byte, with an error
//! that names the path and its owner.
//!
//! Switching to a second uid needs root, as CI runs; without it these tests fail and say so.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use carom_client::{Client, ClientError};
use carom_fs::NotPrivate;

/// The impostor's uid: `nobody` on Debian. It need not exist in `/etc/passwd`.
const IMPOSTOR_UID: u32 = 65534;

/// A running impostor; killed (by its PID) and reaped when dropped, even if the test fails.
struct Impostor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Impostor {
    /// Starts the impostor under [`IMPOSTOR_UID`], listening on `socket`, and waits until it is.
    fn start(socket: &Path) -> Impostor {
        assert_eq!(
            carom_fs::my_uid(),
            0,
            "this test starts an impostor under a second uid ({IMPOSTOR_UID}), which needs root; \
             run the tests as root (as CI does)"
        );
        let mut child = spawn_as_impostor(|program| {
            Command::new(program)
                .arg(socket)
                .uid(IMPOSTOR_UID)
                .gid(IMPOSTOR_UID)
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the impostor")
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut impostor = Impostor { child, lines };
        assert_eq!(impostor.next_line(), Some("ready".to_owned()));
        impostor
    }

    /// The impostor's next line of output, or `None` if none comes within 10 s.
    fn next_line(&mut self) -> Option<String> {
        self.lines.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Everything it printed so far, after stopping it.
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::iter::from_fn(|| self.lines.recv_timeout(Duration::from_secs(5)).ok()).collect()
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `spawn` with a copy of the impostor program that other users may execute (our build
/// directory may be closed to them).
///
/// One lock covers the copy and every spawn: a fork while the copy's file is still open for
/// writing would hand the child that descriptor, and exec of the copy would then fail with
/// "text file busy".
fn spawn_as_impostor(spawn: impl FnOnce(&Path) -> Child) -> Child {
    static PROGRAM: Mutex<Option<(tempfile::TempDir, PathBuf)>> = Mutex::new(None);
    let mut program = PROGRAM.lock().unwrap_or_else(|e| e.into_inner());
    let (_, path) = program.get_or_insert_with(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let path = dir.path().join("impostor");
        std::fs::copy(env!("CARGO_BIN_EXE_impostor"), &path).expect("copy the impostor");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        (dir, path)
    });
    spawn(path)
}

/// A directory like `/tmp`: anyone may create entries, nobody may remove another's.
fn shared_playground() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    dir
}

/// What a frontend does first: connect, then (if that worked) send the passphrase.
async fn connect_and_unlock(socket: &Path) -> Result<(), ClientError> {
    let client = Client::connect(socket).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), client.unlock("correct horse")).await;
    Ok(())
}

#[tokio::test]
async fn a_runtime_directory_created_by_another_user_is_refused_before_connecting() {
    let playground = shared_playground();
    // The attack: the impostor takes the name `/tmp/carom-$UID/` before the daemon starts.
    let runtime_dir = playground
        .path()
        .join(format!("carom-{}", carom_fs::my_uid()));
    let socket = runtime_dir.join("carom.sock");
    let impostor = Impostor::start(&socket);

    let error = connect_and_unlock(&socket)
        .await
        .expect_err("talked to the impostor");
    let message = error.to_string();
    assert!(
        matches!(
            &error,
            ClientError::Untrusted(NotPrivate::Owner { path, owner, .. })
                if path == &runtime_dir && owner.uid == IMPOSTOR_UID
        ),
        "{message}"
    );
    assert!(
        message.contains(&runtime_dir.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("uid {IMPOSTOR_UID}")),
        "{message}"
    );
    // It never even connected.
    assert_eq!(impostor.stop(), Vec::<String>::new());
}

#[tokio::test]
async fn a_listener_of_another_user_is_refused_even_behind_our_own_files() {
    let playground = shared_playground();
    let theirs = playground.path().join("theirs/carom.sock");
    let mut impostor = Impostor::start(&theirs);
    // Make every file-system check pass: move the impostor's listening socket into a private
    // directory of ours and give the socket file to us. Only the listening process is still
    // the impostor, and only its credentials (SO_PEERCRED) can tell.
    let ours = playground.path().join("ours");
    carom_fs::ensure_private_dir(&ours).expect("our runtime directory");
    let socket = ours.join("carom.sock");
    std::fs::rename(&theirs, &socket).expect("move the socket");
    std::os::unix::fs::chown(&socket, Some(0), Some(0)).expect("chown");
    carom_fs::check_socket(&socket).expect("the files alone look like ours");

    let error = connect_and_unlock(&socket)
        .await
        .expect_err("talked to the impostor");
    let message = error.to_string();
    assert!(
        matches!(
            &error,
            ClientError::Untrusted(NotPrivate::Peer { peer, .. }) if peer.uid == IMPOSTOR_UID
        ),
        "{message}"
    );
    assert!(message.contains(&socket.display().to_string()), "{message}");
    // The impostor saw a connection and not one byte on it.
    assert_eq!(impostor.next_line(), Some("received 0".to_owned()));
}

#[tokio::test]
async fn a_symbolic_link_in_place_of_the_runtime_directory_is_refused() {
    let playground = shared_playground();
    let theirs = playground.path().join("theirs/carom.sock");
    let impostor = Impostor::start(&theirs);
    let link = playground.path().join("carom-link");
    std::os::unix::fs::symlink(theirs.parent().expect("dir"), &link).expect("symlink");
    let socket: PathBuf = link.join("carom.sock");

    let error = connect_and_unlock(&socket)
        .await
        .expect_err("talked to the impostor");
    assert!(
        matches!(&error, ClientError::Untrusted(NotPrivate::Symlink { path }) if path == &link),
        "{error}"
    );
    assert_eq!(impostor.stop(), Vec::<String>::new());
}
