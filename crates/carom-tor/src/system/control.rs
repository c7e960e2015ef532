//! A minimal client of C tor's control protocol (control-spec.txt): replies and events parsed
//! from lines without I/O, and one connection that sends commands in order and hands
//! asynchronous events (`650`) to a channel.
//!
//! Only what the backend needs: `PROTOCOLINFO`, `AUTHCHALLENGE`/`AUTHENTICATE`, `SETEVENTS`,
//! `GETINFO`, `ADD_ONION`, `DEL_ONION`. Nothing here logs a command's text: `ADD_ONION`
//! carries the identity key and `AUTHENTICATE` the cookie's proof or the password.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::TransportError;

/// Longest line tor may send us; anything longer is a broken or hostile peer.
const MAX_LINE: usize = 64 * 1024;
/// Most lines in one reply (a `GETINFO` of ours is a handful).
const MAX_LINES: usize = 4_096;

/// One reply (or asynchronous event) from tor: its status code and its lines, each without
/// the code and separator; a data block (`+`) is one line with its content after the
/// keyword, its lines joined by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) lines: Vec<String>,
}

impl Reply {
    pub(crate) fn is_ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The value of `KEY=` at the start of a line, unquoted if quoted.
    pub(crate) fn value(&self, key: &str) -> Option<String> {
        self.lines.iter().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix('=')?;
            Some(unquote(rest).unwrap_or_else(|| rest.to_owned()))
        })
    }

    /// The first line that begins with `word` followed by a space (or is `word`): the rest.
    pub(crate) fn line_after(&self, word: &str) -> Option<&str> {
        self.lines.iter().find_map(|line| {
            if line == word {
                return Some("");
            }
            line.strip_prefix(word)?.strip_prefix(' ')
        })
    }

    /// What tor said, for an error message.
    pub(crate) fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join("; "))
    }
}

/// Builds replies from lines as they come.
#[derive(Debug, Default)]
pub(crate) struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
    /// Inside a data block: its keyword line so far, and whether a data line came yet.
    data: Option<(String, bool)>,
}

/// A line tor should never send.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

impl ReplyParser {
    /// Feed one line (without its CRLF). Returns a reply once its last line came.
    pub(crate) fn line(&mut self, line: &str) -> Result<Option<Reply>, Malformed> {
        if let Some((data, started)) = &mut self.data {
            if line == "." {
                let (block, _) = self.data.take().unwrap_or_default();
                self.push(block)?;
            } else {
                // A leading ".." stands for a line that begins with ".".
                let line = line
                    .strip_prefix('.')
                    .filter(|l| l.starts_with('.'))
                    .unwrap_or(line);
                if data.len() + line.len() > MAX_LINE {
                    return Err(Malformed("a data block too long".into()));
                }
                if *started {
                    data.push('\n');
                }
                *started = true;
                data.push_str(line);
            }
            return Ok(None);
        }
        let (code, separator, rest) = split(line)?;
        if *self.code.get_or_insert(code) != code {
            return Err(Malformed(format!(
                "status {code} inside a reply of another"
            )));
        }
        match separator {
            '-' => self.push(rest.to_owned()).map(|()| None),
            '+' => {
                self.data = Some((rest.to_owned(), false));
                Ok(None)
            }
            _ => {
                self.push(rest.to_owned())?;
                let reply = Reply {
                    code,
                    lines: std::mem::take(&mut self.lines),
                };
                self.code = None;
                Ok(Some(reply))
            }
        }
    }

    fn push(&mut self, line: String) -> Result<(), Malformed> {
        if self.lines.len() >= MAX_LINES {
            return Err(Malformed("a reply with too many lines".into()));
        }
        self.lines.push(line);
        Ok(())
    }
}

fn split(line: &str) -> Result<(u16, char, &str), Malformed> {
    let bad = || {
        Malformed(format!(
            "not a reply line: {:?}",
            line.chars().take(40).collect::<String>()
        ))
    };
    let code = line.get(..3).ok_or_else(bad)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let code: u16 = code.parse().map_err(|_| bad())?;
    let separator = line[3..].chars().next().ok_or_else(bad)?;
    if !matches!(separator, '-' | '+' | ' ') {
        return Err(bad());
    }
    Ok((code, separator, &line[4..]))
}

/// A control-spec `QuotedString`'s content, or `None` if `text` is not one.
pub(crate) fn unquote(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// `text` as a control-spec `QuotedString`.
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The `KEY=value` pairs of a line, values unquoted.
pub(crate) fn pairs(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let end = rest.find([' ', '=']).unwrap_or(rest.len());
        let key = &rest[..end];
        rest = &rest[end..];
        if let Some(after) = rest.strip_prefix('=') {
            if after.starts_with('"') {
                // Find the closing quote, honouring escapes.
                let mut escaped = false;
                let mut close = None;
                for (i, c) in after.char_indices().skip(1) {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => {
                            close = Some(i);
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                let close = close.unwrap_or(after.len() - 1);
                let value = unquote(&after[..=close]).unwrap_or_default();
                out.push((key.to_owned(), value));
                rest = &after[close + 1..];
            } else {
                let end = after.find(' ').unwrap_or(after.len());
                out.push((key.to_owned(), after[..end].to_owned()));
                rest = &after[end..];
            }
        } else {
            out.push((key.to_owned(), String::new()));
        }
        rest = rest.trim_start();
    }
    out
}

/// Where each command's reply goes: a reply, or why the connection ended.
type Waiting = Arc<Mutex<VecDeque<oneshot::Sender<Result<Reply, String>>>>>;

/// An open, authenticated control connection.
pub(crate) struct Control {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Replies to commands come in the order the commands were sent.
    pending: Waiting,
    timeout: Duration,
}

impl Control {
    /// Connect to `addr`; events (`650` replies) go to the returned channel, which closes
    /// when the connection does.
    pub(crate) async fn connect(
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(Control, mpsc::UnboundedReceiver<Reply>), TransportError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| TransportError::Tor {
                action: "connecting to the control port",
                detail: format!("no answer from {addr} within {timeout:?}"),
                retryable: true,
            })?
            .map_err(|e| TransportError::Tor {
                action: "connecting to the control port",
                detail: format!(
                    "{addr}: {e} (is tor running with ControlPort {}?)",
                    addr.port()
                ),
                retryable: true,
            })?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let pending: Waiting = Arc::default();
        let (events, events_rx) = mpsc::unbounded_channel();
        let waiting = Arc::clone(&pending);
        tokio::spawn(async move {
            let mut reader = BufReader::new(read);
            let mut parser = ReplyParser::default();
            let mut line = Vec::new();
            let end = loop {
                line.clear();
                match (&mut reader)
                    .take(MAX_LINE as u64 + 2)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) => break "tor closed the control connection".to_owned(),
                    Ok(_) => {}
                    Err(e) => break format!("reading from the control port: {e}"),
                }
                if line.last() != Some(&b'\n') {
                    break "a line from the control port too long".to_owned();
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\r', '\n']);
                match parser.line(text) {
                    Ok(None) => {}
                    Ok(Some(reply)) if reply.code == 650 => {
                        let _ = events.send(reply);
                    }
                    Ok(Some(reply)) => {
                        let next = waiting
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .pop_front();
                        match next {
                            Some(reply_to) => {
                                let _ = reply_to.send(Ok(reply));
                            }
                            None => break "a reply nobody asked for".to_owned(),
                        }
                    }
                    Err(Malformed(why)) => break why,
                }
            };
            tracing::debug!(reason = %end, "control connection ended");
            for reply_to in waiting.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                let _ = reply_to.send(Err(end.clone()));
            }
        });
        Ok((
            Control {
                writer: tokio::sync::Mutex::new(write),
                pending,
                timeout,
            },
            events_rx,
        ))
    }

    /// Send one command line (without CRLF) and wait for its reply. `action` says what it is
    /// for, in errors. The line may hold secrets: it is never logged.
    pub(crate) async fn command(
        &self,
        action: &'static str,
        line: Zeroizing<String>,
    ) -> Result<Reply, TransportError> {
        let broken = |detail: String| TransportError::Tor {
            action,
            detail,
            retryable: true,
        };
        let (reply_to, reply) = oneshot::channel();
        {
            let mut writer = self.writer.lock().await;
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(reply_to);
            let mut bytes = Zeroizing::new(Vec::with_capacity(line.len() + 2));
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(b"\r\n");
            writer
                .write_all(&bytes)
                .await
                .map_err(|e| broken(format!("writing to the control port: {e}")))?;
        }
        let reply = tokio::time::timeout(self.timeout, reply)
            .await
            .map_err(|_| broken(format!("no reply within {:?}", self.timeout)))?
            .map_err(|_| broken("the control connection ended".into()))?
            .map_err(broken)?;
        if reply.is_ok() {
            Ok(reply)
        } else {
            Err(TransportError::Tor {
                action,
                detail: format!("tor answered {}", reply.text()),
                retryable: false,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Vec<Reply> {
        let mut parser = ReplyParser::default();
        lines
            .iter()
            .filter_map(|l| parser.line(l).expect("well formed"))
            .collect()
    }

    #[test]
    fn replies_of_one_and_several_lines_and_data_blocks_are_read_whole() {
        let replies = parse(&[
            "250 OK",
            "250-PROTOCOLINFO 1",
            "250-AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE=\"/run/tor/control.authcookie\"",
            "250-VERSION Tor=\"0.4.8.16\"",
            "250 OK",
            "250+onions/current=",
            "abc",
            "..def",
            ".",
            "250 OK",
        ]);
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[0].lines, ["OK"]);
        let info = &replies[1];
        let auth = info.line_after("AUTH").expect("AUTH line");
        assert_eq!(
            pairs(auth),
            [
                ("METHODS".to_owned(), "COOKIE,SAFECOOKIE".to_owned()),
                (
                    "COOKIEFILE".to_owned(),
                    "/run/tor/control.authcookie".to_owned()
                )
            ]
        );
        assert_eq!(replies[2].lines[0], "onions/current=abc\n.def");
    }

    #[test]
    fn events_and_errors_keep_their_codes() {
        let replies = parse(&[
            "650 STATUS_CLIENT NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY=\"Done\"",
            "552 Unrecognized key \"x\"",
        ]);
        assert_eq!(replies[0].code, 650);
        let event = replies[0].line_after("STATUS_CLIENT").unwrap();
        assert!(pairs(event).contains(&("PROGRESS".into(), "100".into())));
        assert!(pairs(event).contains(&("SUMMARY".into(), "Done".into())));
        assert!(!replies[1].is_ok());
    }

    #[test]
    fn lines_that_are_not_replies_are_refused() {
        for bad in ["", "25", "abc OK", "250xOK", "2500"] {
            let mut parser = ReplyParser::default();
            assert!(parser.line(bad).is_err(), "{bad:?}");
        }
        let mut parser = ReplyParser::default();
        parser.line("250-a").unwrap();
        assert!(
            parser.line("251 b").is_err(),
            "a code change inside a reply"
        );
    }

    #[test]
    fn quoting_round_trips() {
        for text in ["plain", "with \"quotes\"", "back\\slash", ""] {
            assert_eq!(unquote(&quote(text)).as_deref(), Some(text));
        }
        assert_eq!(unquote("\"unterminated"), None);
        assert_eq!(
            pairs("A=1 B=\"x \\\" y\" FLAG"),
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x \" y".to_owned()),
                ("FLAG".to_owned(), String::new())
            ]
        );
    }
}
