//! Helper for `tests/api_impostor.rs`: another local user pretending to be `caromd`.
//!
//! Usage: `impostor SOCKET`, run under a uid other than the client's. It creates the socket's
//! directory if it is missing (so the directory is its own), listens on SOCKET with the modes
//! the real daemon uses, and prints `ready` on stdout. For each connection it sends a banner
//! exactly like the real daemon's, reads until the client hangs up, and prints
//! `received N` with the number of bytes the client sent it. What a client sends an impostor
//! (a passphrase, a contact list request) is what the test must show never happens.

use std::error::Error;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    let socket = PathBuf::from(std::env::args_os().nth(1).ok_or("usage: impostor SOCKET")?);
    let dir = socket.parent().ok_or("the socket path has no directory")?;
    if !dir.exists() {
        std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    }
    let listener = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        let banner = concat!(
            r#"{"jsonrpc":"2.0","method":"carom.banner","params":{"api_version":1,"#,
            r#""min_api_version":1,"daemon_version":"0.1.0","features":["events"],"session":1}}"#,
            "\n"
        );
        // A client that checked us and hung up makes this fail; that is its right.
        let _ = stream.write_all(banner.as_bytes());
        let mut received = Vec::new();
        // Ends when the client closes its side (or dies): whatever it sent is in `received`.
        let _ = stream.read_to_end(&mut received);
        writeln!(out, "received {}", received.len())?;
        out.flush()?;
    }
    Ok(())
}
