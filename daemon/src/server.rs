//! The local API: newline-delimited JSON-RPC 2.0 over a Unix socket.
//!
//! Each connection: peer uid checked; banner first; requests handled in order (responses carry
//! their ids, so clients may pipeline); a line that is not JSON closes the connection, as does a
//! line longer than [`api::MAX_LINE_BYTES`]; events flow after `events.subscribe`, replayed from
//! the durable log and then live, with an explicit gap event when the requested cursor fell
//! out of retention. Subscriptions belong to their connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use carom_api::{self as api, ErrorKind, ErrorObject, method};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::profile::{Profiles, engine_error};

/// Lines waiting to be written to one frontend; a slow reader slows only its own events.
const OUTBOX_LINES: usize = 1024;
/// Events fetched from the log per read.
const EVENT_PAGE: u32 = 500;

/// The API server's shared state.
pub(crate) struct Server {
    profiles: Arc<Profiles>,
    frontends: Mutex<HashMap<u64, api::FrontendSession>>,
    next_session: AtomicU64,
    stop: watch::Sender<bool>,
}

impl Server {
    pub(crate) fn new(profiles: Arc<Profiles>, stop: watch::Sender<bool>) -> Server {
        Server {
            profiles,
            frontends: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            stop,
        }
    }

    fn frontends(&self) -> std::sync::MutexGuard<'_, HashMap<u64, api::FrontendSession>> {
        self.frontends.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Accept frontends until told to stop.
pub(crate) async fn serve(listener: UnixListener, server: Arc<Server>) {
    let mut stop = server.stop.subscribe();
    let mut connections = Vec::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.retain(|h: &JoinHandle<()>| !h.is_finished());
                    connections.push(tokio::spawn(connection(Arc::clone(&server), stream)));
                }
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    for c in connections {
        c.abort();
    }
}

struct Conn {
    id: u64,
    out: mpsc::Sender<String>,
    events: Option<JoinHandle<()>>,
}

async fn connection(server: Arc<Server>, stream: UnixStream) {
    // Only our own user may drive the daemon (the socket is 0600 in a 0700 directory; this is
    // the belt to those braces).
    let me = rustix::process::geteuid().as_raw();
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "no peer credentials; closing");
            return;
        }
    };
    if cred.uid() != me {
        info!(
            uid = cred.uid(),
            "refused an API connection from another user"
        );
        return;
    }
    let id = server.next_session.fetch_add(1, Ordering::Relaxed);
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
    let process = pid.and_then(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .ok()
            .map(|s| s.trim().to_owned())
    });
    server.frontends().insert(
        id,
        api::FrontendSession {
            id,
            client: None,
            pid,
            process: process.clone(),
            connected_at: unix_ms(),
            subscribed: false,
        },
    );

    let (read, mut write) = stream.into_split();
    let (out, mut lines) = mpsc::channel::<String>(OUTBOX_LINES);
    let writer = tokio::spawn(async move {
        while let Some(mut line) = lines.recv().await {
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    });

    let banner = api::Banner {
        api_version: api::API_VERSION,
        min_api_version: api::MIN_API_VERSION,
        daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        features: vec!["events".into(), "qr".into()],
        session: id,
    };
    let _ = out
        .send(api::notification(method::BANNER, json!(banner)).to_string())
        .await;
    if let Ok(engine) = server.profiles.engine().await {
        let _ = engine
            .append_event(
                api::event::FRONTEND_ATTACHED,
                json!({ "session": id, "pid": pid, "process": process }),
            )
            .await;
    }

    let mut conn = Conn {
        id,
        out,
        events: None,
    };
    let mut reader = BufReader::new(read);
    let limit = u64::try_from(api::MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            if line.len() as u64 >= limit {
                let e = ErrorObject::new(
                    ErrorKind::LineTooLong,
                    format!("lines are limited to {} bytes", api::MAX_LINE_BYTES),
                );
                let _ = conn
                    .out
                    .send(api::error_response(None, &e).to_string())
                    .await;
            }
            break; // too long, or the connection ended mid-line
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        let request: api::RawRequest = match serde_json::from_str(text.trim()) {
            Ok(r) => r,
            Err(_) => {
                // Not JSON: answer once, then hang up (this also stops cross-protocol abuse).
                let e = ErrorObject::new(ErrorKind::ParseError, "the line is not valid JSON");
                let _ = conn
                    .out
                    .send(api::error_response(None, &e).to_string())
                    .await;
                break;
            }
        };
        let reply = handle(&server, &mut conn, request).await;
        if let Some(reply) = reply
            && conn.out.send(reply.to_string()).await.is_err()
        {
            break;
        }
        if *server.stop.borrow() {
            break;
        }
    }

    if let Some(events) = conn.events.take() {
        events.abort();
    }
    server.frontends().remove(&id);
    if let Ok(engine) = server.profiles.engine().await {
        let _ = engine
            .append_event(api::event::FRONTEND_DETACHED, json!({ "session": id }))
            .await;
    }
    drop(conn);
    let _ = writer.await;
}

/// Validate and dispatch one request; returns the response line.
async fn handle(server: &Arc<Server>, conn: &mut Conn, request: api::RawRequest) -> Option<Value> {
    let id = request.id.clone();
    let valid_id = matches!(&id, Some(Value::Number(_) | Value::String(_)));
    let method = match (&request.jsonrpc, &request.method, valid_id) {
        (Some(v), Some(m), true) if v == "2.0" => m.clone(),
        _ => {
            let e = ErrorObject::new(
                ErrorKind::InvalidRequest,
                "expected {\"jsonrpc\":\"2.0\",\"id\":…,\"method\":…,\"params\":…}",
            );
            return Some(api::error_response(id.as_ref(), &e));
        }
    };
    let id = id.unwrap_or(Value::Null);
    match dispatch(server, conn, &method, request.params).await {
        Ok(result) => Some(api::response(&id, result)),
        Err(e) => Some(api::error_response(Some(&id), &e)),
    }
}

fn params<T: DeserializeOwned>(value: Value) -> Result<T, ErrorObject> {
    let value = if value.is_null() { json!({}) } else { value };
    serde_json::from_value(value)
        .map_err(|e| ErrorObject::new(ErrorKind::InvalidParams, format!("invalid parameters: {e}")))
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, ErrorObject> {
    serde_json::to_value(value)
        .map_err(|_| ErrorObject::new(ErrorKind::Internal, "could not encode the result"))
}

async fn dispatch(
    server: &Arc<Server>,
    conn: &mut Conn,
    method: &str,
    p: Value,
) -> Result<Value, ErrorObject> {
    let profiles = &server.profiles;
    macro_rules! engine {
        () => {
            profiles.engine().await?
        };
    }
    match method {
        method::DAEMON_INFO => {
            let (profile, protected) = profiles.info().await;
            to_value(&api::DaemonInfo {
                daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
                api_version: api::API_VERSION,
                min_api_version: api::MIN_API_VERSION,
                profile,
                passphrase_protected: protected,
                ephemeral: profiles.is_ephemeral(),
                data_dir: (!profiles.is_ephemeral())
                    .then(|| profiles.paths().data_dir.display().to_string()),
            })
        }
        method::DAEMON_STATS => to_value(&engine!().stats()),
        method::DAEMON_SHUTDOWN => {
            info!("shutdown requested through the API");
            let _ = server.stop.send(true);
            Ok(json!({}))
        }
        method::PROFILE_CREATE => to_value(&profiles.create(&params(p)?).await?),
        method::PROFILE_UNLOCK => {
            let unlock: api::ProfileUnlock = params(p)?;
            to_value(&profiles.unlock(&unlock.passphrase).await?)
        }
        method::PROFILE_CHANGE_PASSPHRASE => {
            profiles.change_passphrase(&params(p)?).await?;
            Ok(json!({}))
        }
        method::IDENTITY_GET => to_value(&engine!().identity()),
        method::TOR_STATUS => to_value(&engine!().tor_status()),
        method::CONTACT_ADD => to_value(
            &engine!()
                .add_contact(params(p)?)
                .await
                .map_err(|e| engine_error(&e))?,
        ),
        method::CONTACT_LIST => {
            to_value(&engine!().contacts().await.map_err(|e| engine_error(&e))?)
        }
        method::CONTACT_GET => {
            let a: api::AddressParams = params(p)?;
            to_value(
                &engine!()
                    .contact(&a.address)
                    .await
                    .map_err(|e| engine_error(&e))?,
            )
        }
        method::CONTACT_RESPOND => to_value(
            &engine!()
                .respond(params(p)?)
                .await
                .map_err(|e| engine_error(&e))?,
        ),
        method::CONTACT_RENAME => to_value(
            &engine!()
                .rename(params(p)?)
                .await
                .map_err(|e| engine_error(&e))?,
        ),
        method::CONTACT_REMOVE => {
            let a: api::AddressParams = params(p)?;
            engine!()
                .remove_contact(&a.address)
                .await
                .map_err(|e| engine_error(&e))?;
            Ok(json!({}))
        }
        method::MESSAGE_SEND => to_value(
            &engine!()
                .send_message(params(p)?)
                .await
                .map_err(|e| engine_error(&e))?,
        ),
        method::MESSAGE_LIST => to_value(
            &engine!()
                .history(params(p)?)
                .await
                .map_err(|e| engine_error(&e))?,
        ),
        method::MESSAGE_GET => {
            let m: api::MessageIdParams = params(p)?;
            to_value(
                &engine!()
                    .message(m.id)
                    .await
                    .map_err(|e| engine_error(&e))?,
            )
        }
        method::MESSAGE_DELETE => {
            let m: api::MessageIdParams = params(p)?;
            engine!()
                .delete_message(m.id)
                .await
                .map_err(|e| engine_error(&e))?;
            Ok(json!({}))
        }
        method::EVENTS_SUBSCRIBE => subscribe(server, conn, params(p)?).await,
        method::EVENTS_UNSUBSCRIBE => {
            if let Some(events) = conn.events.take() {
                events.abort();
            }
            if let Some(f) = server.frontends().get_mut(&conn.id) {
                f.subscribed = false;
            }
            Ok(json!({}))
        }
        method::SESSION_LIST => {
            let mut list: Vec<api::FrontendSession> =
                server.frontends().values().cloned().collect();
            list.sort_by_key(|f| f.id);
            to_value(&list)
        }
        method::SESSION_HELLO => {
            let hello: api::SessionHello = params(p)?;
            let client: String = hello.client.chars().take(64).collect();
            if let Some(f) = server.frontends().get_mut(&conn.id) {
                f.client = Some(client);
            }
            Ok(json!({}))
        }
        other => Err(ErrorObject::new(
            ErrorKind::MethodNotFound,
            format!(
                "no method named `{}`",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// Start (or restart) this connection's event stream.
async fn subscribe(
    server: &Arc<Server>,
    conn: &mut Conn,
    request: api::EventsSubscribe,
) -> Result<Value, ErrorObject> {
    let engine = server.profiles.engine().await?;
    let (latest, oldest) = engine.event_bounds().await.map_err(|e| engine_error(&e))?;
    let notifier = engine.event_notifier();
    drop(engine);
    if let Some(old) = conn.events.take() {
        old.abort();
    }
    let cursor = request.since_seq.unwrap_or(latest);
    let result = api::Subscribed {
        latest_seq: latest,
        oldest_seq: oldest,
    };
    // The response goes out before any event: it is queued first on the same writer.
    let reply = to_value(&result)?;
    let task = tokio::spawn(forward_events(
        Arc::clone(server),
        conn.out.clone(),
        notifier,
        cursor,
        request.kinds,
    ));
    conn.events = Some(task);
    if let Some(f) = server.frontends().get_mut(&conn.id) {
        f.subscribed = true;
    }
    Ok(reply)
}

/// Replay events after `cursor`, then follow new ones, until the connection goes.
async fn forward_events(
    server: Arc<Server>,
    out: mpsc::Sender<String>,
    mut notifier: watch::Receiver<u64>,
    mut cursor: u64,
    kinds: Option<Vec<String>>,
) {
    // Let the subscribe response be written first.
    tokio::task::yield_now().await;
    let mut checked_gap = false;
    loop {
        let (gap, page) = {
            // Hold the read guard only while reading, never while writing to a slow client.
            let Ok(engine) = server.profiles.engine().await else {
                return;
            };
            let mut gap = None;
            if !checked_gap {
                checked_gap = true;
                if let Ok((_, Some(oldest))) = engine.event_bounds().await
                    && cursor + 1 < oldest
                {
                    gap = Some(api::Event {
                        seq: oldest - 1,
                        at: unix_ms(),
                        kind: api::event::GAP.into(),
                        data: json!({ "from_seq": cursor + 1, "to_seq": oldest - 1 }),
                    });
                    cursor = oldest - 1;
                }
            }
            match engine.events_since(cursor, EVENT_PAGE).await {
                Ok(page) => (gap, page),
                Err(_) => return,
            }
        };
        if let Some(gap) = gap {
            let line = api::notification(method::EVENT, json!(gap)).to_string();
            if out.send(line).await.is_err() {
                return;
            }
        }
        let full = page.len() == usize::try_from(EVENT_PAGE).unwrap_or(usize::MAX);
        for event in page {
            cursor = event.seq;
            if kinds.as_ref().is_some_and(|k| !k.contains(&event.kind)) {
                continue;
            }
            let line = api::notification(method::EVENT, json!(event)).to_string();
            if out.send(line).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        // Wait for something newer than what we sent.
        while *notifier.borrow_and_update() <= cursor {
            if notifier.changed().await.is_err() {
                return;
            }
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
