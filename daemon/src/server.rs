//! The local API: newline-delimited JSON-RPC 2.0 over a Unix socket.
//!
//! Each connection: peer uid checked; banner first; requests handled in order (responses carry
//! their ids, so clients may pipeline); JSON-RPC 2.0 as written, batches and notifications
//! included (see `docs/api.md` for the few documented differences). A line that is not UTF-8
//! JSON closes the connection, as does a line longer than [`api::MAX_LINE_BYTES`]; events flow
//! after `events.subscribe`, replayed from the durable log and then live, with an explicit gap
//! event when the requested cursor fell out of retention. Subscriptions belong to their
//! connection. At most [`api::MAX_CONNECTIONS`] frontends are served at once.
//!
//! Request lines may hold a passphrase: they are read into buffers that are wiped when
//! dropped, and grow only as bytes arrive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use carom_api::{self as api, ErrorKind, ErrorObject, EventData, Method, Request, method};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use zeroize::{Zeroize, Zeroizing};

use crate::profile::Profiles;

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
    let places = Arc::new(Places::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.retain(|h: &JoinHandle<()>| !h.is_finished());
                    // What counts is frontends still connected. One that hung up holds its
                    // place until its connection reads the end of the stream, which can lag
                    // behind a frontend that reconnects at once (a polling bot): at the limit,
                    // connections get a moment to notice they were closed before this one is
                    // refused.
                    let Some(place) = places.take_within(CLOSING_GRACE).await else {
                        warn!(
                            limit = api::MAX_CONNECTIONS,
                            "refused a frontend: too many connected"
                        );
                        tokio::spawn(refuse(stream));
                        continue;
                    };
                    connections.push(tokio::spawn(connection(Arc::clone(&server), stream, place)));
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

/// How long a frontend over the limit waits for a place held by a connection whose frontend
/// already hung up (noticing takes a read of the stream's end).
const CLOSING_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The [`api::MAX_CONNECTIONS`] places for connected frontends.
#[derive(Default)]
struct Places {
    taken: AtomicUsize,
    freed: tokio::sync::Notify,
}

impl Places {
    /// A place, waiting up to `grace` for one to be given back if all are taken.
    async fn take_within(self: &Arc<Places>, grace: std::time::Duration) -> Option<Place> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            // Registered before the check, so a place given back in between is not missed.
            let freed = self.freed.notified();
            if self
                .taken
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < api::MAX_CONNECTIONS).then_some(n + 1)
                })
                .is_ok()
            {
                return Some(Place(Arc::clone(self)));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }
}

/// One place, given back when dropped.
struct Place(Arc<Places>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::SeqCst);
        self.0.freed.notify_waiters();
    }
}

/// Tell a frontend over the limit why it is disconnected, then do so.
async fn refuse(mut stream: UnixStream) {
    let e = ErrorObject::new(
        ErrorKind::TooManyConnections,
        format!(
            "{} frontends are connected already; close one and try again",
            api::MAX_CONNECTIONS
        ),
    );
    let mut line = api::error_response(None, &e).to_string();
    line.push('\n');
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads newline-terminated request lines. Its buffer grows only as bytes arrive, and every
/// buffer that held request bytes is wiped when dropped (a line may carry a passphrase).
struct LineReader<R> {
    read: R,
    pending: Zeroizing<Vec<u8>>,
}

/// What [`LineReader::next`] found.
enum Line {
    /// One line, without its newline.
    Complete(Zeroizing<Vec<u8>>),
    /// A line longer than [`api::MAX_LINE_BYTES`].
    TooLong,
    /// The connection ended (mid-line or between lines).
    Closed,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(read: R) -> Self {
        LineReader {
            read,
            pending: Zeroizing::new(Vec::new()),
        }
    }

    async fn next(&mut self) -> Line {
        let mut chunk = Zeroizing::new([0u8; 8192]);
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                if end > api::MAX_LINE_BYTES {
                    return Line::TooLong;
                }
                let line = Zeroizing::new(self.pending[..end].to_vec());
                let held = self.pending.len();
                self.pending.drain(..=end);
                // Zero the bytes the drain left behind in the spare capacity.
                let kept = self.pending.len();
                self.pending.resize(held, 0);
                self.pending.truncate(kept);
                return Line::Complete(line);
            }
            if self.pending.len() > api::MAX_LINE_BYTES {
                return Line::TooLong;
            }
            let n = match self.read.read(&mut chunk[..]).await {
                Ok(0) | Err(_) => return Line::Closed,
                Ok(n) => n,
            };
            append_wiping(&mut self.pending, &chunk[..n]);
            chunk[..n].zeroize();
        }
    }
}

/// Appends `bytes` to `buf`; when it must grow, the old allocation is wiped, not just freed.
fn append_wiping(buf: &mut Zeroizing<Vec<u8>>, bytes: &[u8]) {
    if buf.capacity() - buf.len() < bytes.len() {
        let wanted = (buf.len() + bytes.len())
            .max(buf.capacity().saturating_mul(2))
            .max(1024);
        let mut bigger = Zeroizing::new(Vec::with_capacity(wanted));
        bigger.extend_from_slice(buf);
        *buf = bigger;
    }
    buf.extend_from_slice(bytes);
}

/// What one request line holds.
#[derive(Debug)]
enum Parsed {
    /// Blank: ignored.
    Blank,
    /// A JSON value: a request, a notification, a batch, or something invalid.
    Json(Value),
    /// Valid JSON that cannot be represented here (a number beyond 64-bit and double
    /// range, e.g. `1e400`): answered with `invalid_request`; the connection stays.
    Unrepresentable,
    /// Not UTF-8: rejected rather than altered; the connection closes.
    NotUtf8,
    /// Not JSON: the connection closes (this also ends cross-protocol attempts).
    NotJson,
}

fn parse_line(line: &[u8]) -> Parsed {
    let Ok(text) = std::str::from_utf8(line) else {
        return Parsed::NotUtf8;
    };
    let text = text.trim();
    if text.is_empty() {
        return Parsed::Blank;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(value) => Parsed::Json(value),
        // serde_json checks the grammar only when it ignores a value, so this tells "not
        // JSON" from "JSON with a number we cannot hold".
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            Parsed::Unrepresentable
        }
        Err(_) => Parsed::NotJson,
    }
}

/// One request, checked against JSON-RPC 2.0.
#[derive(Debug)]
struct Call {
    /// `None` for a notification: it runs, and gets no response.
    id: Option<Value>,
    method: String,
    params: Value,
}

/// Reads one request object; an invalid one yields the error response it gets.
fn read_call(value: Value) -> Result<Call, Value> {
    let invalid = |id: Option<&Value>, why: &str| {
        api::error_response(id, &ErrorObject::new(ErrorKind::InvalidRequest, why))
    };
    let Value::Object(mut object) = value else {
        return Err(invalid(None, "a request must be a JSON object"));
    };
    let id = object.remove("id");
    if id
        .as_ref()
        .is_some_and(|id| !matches!(id, Value::Number(_) | Value::String(_) | Value::Null))
    {
        return Err(invalid(None, "`id` must be a number, a string or null"));
    }
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(id.as_ref(), "`jsonrpc` must be \"2.0\""));
    }
    let method = match object.remove("method") {
        Some(Value::String(method)) => method,
        _ => return Err(invalid(id.as_ref(), "`method` must be a string")),
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => Value::Null,
        Some(params @ Value::Object(_)) => params,
        Some(Value::Array(_)) => {
            let e = ErrorObject::new(
                ErrorKind::InvalidParams,
                "`params` must be an object: every method takes named parameters",
            );
            return Err(api::error_response(id.as_ref(), &e));
        }
        Some(_) => return Err(invalid(id.as_ref(), "`params` must be an object")),
    };
    Ok(Call { id, method, params })
}

struct Conn {
    id: u64,
    out: mpsc::Sender<String>,
    events: Option<JoinHandle<()>>,
}

async fn connection(server: Arc<Server>, stream: UnixStream, place: Place) {
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
        let attached = api::event::Attached {
            session: id,
            pid,
            process,
        };
        // Queued now, so it precedes in the log whatever this frontend causes; not waited
        // for, so that a frontend that hangs up at once is noticed at once (its place is free
        // without waiting for a commit).
        drop(engine.append_event(EventData::Attached(attached)));
    }

    let mut conn = Conn {
        id,
        out,
        events: None,
    };
    let mut reader = LineReader::new(read);
    loop {
        let line = match reader.next().await {
            Line::Complete(line) => line,
            Line::TooLong => {
                let e = ErrorObject::new(
                    ErrorKind::LineTooLong,
                    format!("lines are limited to {} bytes", api::MAX_LINE_BYTES),
                );
                let _ = conn
                    .out
                    .send(api::error_response(None, &e).to_string())
                    .await;
                break;
            }
            Line::Closed => break,
        };
        let (reply, close) = match parse_line(&line) {
            Parsed::Blank => continue,
            Parsed::Json(value) => (handle(&server, &mut conn, value).await, false),
            Parsed::Unrepresentable => {
                let e = ErrorObject::new(
                    ErrorKind::InvalidRequest,
                    "the line holds a number too large to represent; numbers must fit in a \
                     64-bit integer or a double",
                );
                (Some(api::error_response(None, &e)), false)
            }
            Parsed::NotUtf8 => {
                let e = ErrorObject::new(ErrorKind::ParseError, "the line is not valid UTF-8");
                (Some(api::error_response(None, &e)), true)
            }
            Parsed::NotJson => {
                let e = ErrorObject::new(ErrorKind::ParseError, "the line is not valid JSON");
                (Some(api::error_response(None, &e)), true)
            }
        };
        drop(line);
        if let Some(reply) = reply
            && conn.out.send(reply.to_string()).await.is_err()
        {
            break;
        }
        if close || *server.stop.borrow() {
            break;
        }
    }

    if let Some(events) = conn.events.take() {
        events.abort();
    }
    server.frontends().remove(&id);
    // The frontend is gone: its place is free before the detach event is written.
    drop(place);
    if let Ok(engine) = server.profiles.engine().await {
        let detached = api::event::Detached { session: id };
        let _ = engine.append_event(EventData::Detached(detached)).await;
    }
    drop(conn);
    let _ = writer.await;
}

/// Handle one line's value: a request, a notification or a batch. Returns what to answer
/// (nothing for notifications, or for a batch of only notifications).
async fn handle(server: &Arc<Server>, conn: &mut Conn, value: Value) -> Option<Value> {
    let Value::Array(batch) = value else {
        return handle_one(server, conn, value).await;
    };
    if batch.is_empty() {
        let e = ErrorObject::new(ErrorKind::InvalidRequest, "an empty batch");
        return Some(api::error_response(None, &e));
    }
    let mut replies = Vec::new();
    for value in batch {
        if let Some(reply) = handle_one(server, conn, value).await {
            replies.push(reply);
        }
    }
    (!replies.is_empty()).then_some(Value::Array(replies))
}

async fn handle_one(server: &Arc<Server>, conn: &mut Conn, value: Value) -> Option<Value> {
    let call = match read_call(value) {
        Ok(call) => call,
        Err(reply) => return Some(reply),
    };
    let result = dispatch(server, conn, &call.method, call.params).await;
    let id = call.id?;
    Some(match result {
        Ok(result) => api::response(&id, result),
        Err(e) => api::error_response(Some(&id), &e),
    })
}

/// The JSON of a method's result, its type fixed by the method's description.
fn reply<M: Method>(result: M::Result) -> Result<Value, ErrorObject> {
    serde_json::to_value(result)
        .map_err(|_| ErrorObject::new(ErrorKind::Internal, "could not encode the result"))
}

/// Runs one request. The match is exhaustive over [`Request`]: a method described in
/// `carom-api` and not served here does not compile.
async fn dispatch(
    server: &Arc<Server>,
    conn: &mut Conn,
    method: &str,
    params: Value,
) -> Result<Value, ErrorObject> {
    use api::method as m;
    let profiles = &server.profiles;
    macro_rules! engine {
        () => {
            profiles.engine().await?
        };
    }
    match Request::parse(method, params)? {
        Request::DaemonInfo(_) => {
            let (profile, protected) = profiles.info().await;
            reply::<m::DaemonInfo>(api::DaemonInfo {
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
        Request::DaemonStats(_) => reply::<m::DaemonStats>(engine!().stats()),
        Request::DaemonShutdown(_) => {
            info!("shutdown requested through the API");
            let _ = server.stop.send(true);
            reply::<m::DaemonShutdown>(api::Empty {})
        }
        Request::ProfileCreate(p) => reply::<m::ProfileCreate>(profiles.create(&p).await?),
        Request::ProfileUnlock(p) => {
            reply::<m::ProfileUnlock>(profiles.unlock(p.passphrase.expose()).await?)
        }
        Request::ProfileChangePassphrase(p) => {
            profiles.change_passphrase(&p).await?;
            reply::<m::ProfileChangePassphrase>(api::Empty {})
        }
        Request::ProfileErase(_) => reply::<m::ProfileErase>(profiles.erase().await?),
        Request::IdentityGet(_) => reply::<m::IdentityGet>(engine!().identity()),
        Request::TorStatus(_) => reply::<m::TorStatus>(engine!().tor_status()),
        Request::TorBridges(_) => reply::<m::TorBridges>(profiles.tor_bridges().await?),
        Request::TorSetBridges(p) => reply::<m::TorSetBridges>(profiles.set_tor_bridges(p).await?),
        Request::ContactAdd(p) => reply::<m::ContactAdd>(engine!().add_contact(p).await?),
        Request::ContactList(_) => reply::<m::ContactList>(engine!().contacts().await?),
        Request::ContactGet(p) => reply::<m::ContactGet>(engine!().contact(&p.address).await?),
        Request::ContactRespond(p) => reply::<m::ContactRespond>(engine!().respond(p).await?),
        Request::ContactClearRequests(_) => {
            reply::<m::ContactClearRequests>(engine!().clear_requests().await?)
        }
        Request::ContactRename(p) => reply::<m::ContactRename>(engine!().rename(p).await?),
        Request::ContactRemove(p) => {
            engine!().remove_contact(&p.address).await?;
            reply::<m::ContactRemove>(api::Empty {})
        }
        Request::MessageSend(p) => reply::<m::MessageSend>(engine!().send_message(p).await?),
        Request::MessageList(p) => reply::<m::MessageList>(engine!().history(p).await?),
        Request::MessageGet(p) => reply::<m::MessageGet>(engine!().message(p.id).await?),
        Request::MessageDelete(p) => {
            engine!().delete_message(p).await?;
            reply::<m::MessageDelete>(api::Empty {})
        }
        Request::ContactSetTimer(p) => reply::<m::ContactSetTimer>(engine!().set_timer(p).await?),
        Request::ContactSetHistory(p) => {
            reply::<m::ContactSetHistory>(engine!().set_history(p).await?)
        }
        Request::GroupCreate(p) => reply::<m::GroupCreate>(engine!().group_create(p).await?),
        Request::GroupList(_) => reply::<m::GroupList>(engine!().group_list().await?),
        Request::GroupGet(p) => reply::<m::GroupGet>(engine!().group_get(&p).await?),
        Request::GroupInvite(p) => reply::<m::GroupInvite>(engine!().group_invite(p).await?),
        Request::GroupAccept(p) => reply::<m::GroupAccept>(engine!().group_accept(p).await?),
        Request::GroupDecline(p) => reply::<m::GroupDecline>(engine!().group_decline(&p).await?),
        Request::GroupLeave(p) => reply::<m::GroupLeave>(engine!().group_leave(&p).await?),
        Request::GroupRemove(p) => reply::<m::GroupRemove>(engine!().group_remove(&p).await?),
        Request::GroupSetRole(p) => reply::<m::GroupSetRole>(engine!().group_set_role(&p).await?),
        Request::GroupRename(p) => reply::<m::GroupRename>(engine!().group_rename(p).await?),
        Request::GroupDelete(p) => {
            engine!().group_delete(&p).await?;
            reply::<m::GroupDelete>(api::Empty {})
        }
        Request::GroupSetTimer(p) => {
            reply::<m::GroupSetTimer>(engine!().group_set_timer(&p).await?)
        }
        Request::GroupSetHistory(p) => {
            reply::<m::GroupSetHistory>(engine!().group_set_history(&p).await?)
        }
        Request::GroupSetPolicy(p) => {
            reply::<m::GroupSetPolicy>(engine!().group_set_policy(&p).await?)
        }
        Request::GroupSend(p) => reply::<m::GroupSend>(engine!().group_send(p).await?),
        Request::GroupHistory(p) => reply::<m::GroupHistory>(engine!().group_history(&p).await?),
        Request::EventsSubscribe(p) => {
            reply::<m::EventsSubscribe>(subscribe(server, conn, p).await?)
        }
        Request::EventsUnsubscribe(_) => {
            if let Some(events) = conn.events.take() {
                events.abort();
            }
            if let Some(f) = server.frontends().get_mut(&conn.id) {
                f.subscribed = false;
            }
            reply::<m::EventsUnsubscribe>(api::Empty {})
        }
        Request::SessionList(_) => {
            let mut list: Vec<api::FrontendSession> =
                server.frontends().values().cloned().collect();
            list.sort_by_key(|f| f.id);
            reply::<m::SessionList>(list)
        }
        Request::SessionHello(p) => {
            if let Some(f) = server.frontends().get_mut(&conn.id) {
                f.client = Some(p.client);
            }
            reply::<m::SessionHello>(api::Empty {})
        }
    }
}

/// Start (or restart) this connection's event stream.
async fn subscribe(
    server: &Arc<Server>,
    conn: &mut Conn,
    request: api::EventsSubscribe,
) -> Result<api::Subscribed, ErrorObject> {
    let engine = server.profiles.engine().await?;
    let (latest, oldest) = engine.event_bounds().await?;
    let notifier = engine.event_notifier();
    // Live events from now on (they are never stored, so none can be replayed).
    let live = engine.live_events();
    drop(engine);
    if let Some(old) = conn.events.take() {
        old.abort();
    }
    let cursor = request.since_seq.unwrap_or(latest);
    let result = api::Subscribed {
        latest_seq: latest,
        oldest_seq: oldest,
    };
    // The response goes out before any event: it is queued first on the same writer (the
    // forwarding task yields before its first line).
    let task = tokio::spawn(forward_events(
        Arc::clone(server),
        conn.out.clone(),
        (notifier, live),
        cursor,
        request.kinds,
    ));
    conn.events = Some(task);
    if let Some(f) = server.frontends().get_mut(&conn.id) {
        f.subscribed = true;
    }
    Ok(result)
}

/// Replay events after `cursor`, then follow new ones, until the connection goes. Live events
/// (never stored) are forwarded as they come, between pages.
async fn forward_events(
    server: Arc<Server>,
    out: mpsc::Sender<String>,
    (mut notifier, mut live): (watch::Receiver<u64>, broadcast::Receiver<api::LiveEvent>),
    mut cursor: u64,
    kinds: Option<Vec<String>>,
) {
    let wanted = |kind: &str| kinds.as_ref().is_none_or(|k| k.iter().any(|w| w == kind));
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
                        data: EventData::Gap(api::event::Gap {
                            from_seq: cursor + 1,
                            to_seq: oldest - 1,
                        }),
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
            if !wanted(event.kind()) {
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
        // Wait for something newer than what we sent, forwarding live events meanwhile.
        while *notifier.borrow_and_update() <= cursor {
            tokio::select! {
                changed = notifier.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                received = live.recv() => {
                    let event = match received {
                        Ok(event) => event,
                        // Never a silent drop: the subscriber learns how many it missed.
                        Err(broadcast::error::RecvError::Lagged(count)) => api::LiveEvent {
                            at: unix_ms(),
                            data: EventData::LiveMissed(api::event::LiveMissed { count }),
                        },
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if !wanted(event.kind()) {
                        continue;
                    }
                    let line = api::notification(method::LIVE_EVENT, json!(event)).to_string();
                    if out.send(line).await.is_err() {
                        return;
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(reply: &Value) -> &str {
        reply["error"]["data"]["kind"].as_str().unwrap_or("")
    }

    #[test]
    fn lines_are_classified_before_any_method_runs() {
        assert!(matches!(parse_line(b"  \r"), Parsed::Blank));
        assert!(matches!(parse_line(br#"{"a":1}"#), Parsed::Json(_)));
        assert!(matches!(
            parse_line(b"[1,2]"),
            Parsed::Json(Value::Array(_))
        ));
        assert!(matches!(parse_line(b"5"), Parsed::Json(_)));
        assert!(matches!(parse_line(b"1e400"), Parsed::Unrepresentable));
        assert!(matches!(
            parse_line(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":-1e999}}"#),
            Parsed::Unrepresentable
        ));
        assert!(matches!(parse_line(b"GET / HTTP/1.1\r"), Parsed::NotJson));
        assert!(matches!(parse_line(b"{\"a\":"), Parsed::NotJson));
        // Invalid UTF-8 inside a string is refused, never replaced by U+FFFD.
        assert!(matches!(
            parse_line(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"message.send\",\"params\":{\"body\":\"a\xffb\"}}"),
            Parsed::NotUtf8
        ));
    }

    #[test]
    fn requests_are_checked_against_json_rpc() {
        let call = |text: &str| read_call(serde_json::from_str(text).unwrap());
        let ok = call(r#"{"jsonrpc":"2.0","id":"a","method":"m","params":{"x":1}}"#).unwrap();
        assert_eq!((ok.id, ok.method.as_str()), (Some(json!("a")), "m"));
        // A notification: no id member. A null id is a request (answered with a null id).
        assert_eq!(call(r#"{"jsonrpc":"2.0","method":"m"}"#).unwrap().id, None);
        assert_eq!(
            call(r#"{"jsonrpc":"2.0","id":null,"method":"m"}"#)
                .unwrap()
                .id,
            Some(Value::Null)
        );
        for (text, kind, id) in [
            ("5", "invalid_request", Value::Null),
            (r#""m""#, "invalid_request", Value::Null),
            (
                r#"{"jsonrpc":"2.0","id":[1],"method":"m"}"#,
                "invalid_request",
                Value::Null,
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"m"}"#,
                "invalid_request",
                Value::Null,
            ),
            (
                r#"{"jsonrpc":"1.0","id":7,"method":"m"}"#,
                "invalid_request",
                json!(7),
            ),
            (r#"{"id":7,"method":"m"}"#, "invalid_request", json!(7)),
            (
                r#"{"jsonrpc":"2.0","id":7,"method":5}"#,
                "invalid_request",
                json!(7),
            ),
            (r#"{"jsonrpc":"2.0","id":7}"#, "invalid_request", json!(7)),
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"m","params":3}"#,
                "invalid_request",
                json!(7),
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"m","params":[1]}"#,
                "invalid_params",
                json!(7),
            ),
        ] {
            let reply = call(text).expect_err(text);
            assert_eq!(kind_of(&reply), kind, "{text}");
            assert_eq!(reply["id"], id, "{text}");
            assert_eq!(reply["jsonrpc"], "2.0", "{text}");
        }
    }

    #[tokio::test]
    async fn the_line_reader_splits_lines_bounds_them_and_grows_as_bytes_arrive() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = LineReader::new(server);
        client.write_all(b"one\ntw").await.unwrap();
        let Line::Complete(line) = reader.next().await else {
            panic!("a line")
        };
        assert_eq!(&line[..], b"one");
        // Nothing buffered beyond what arrived: a slow first frame costs what it sent.
        assert!(reader.pending.capacity() <= 1024);
        client.write_all(b"o\n\nthree").await.unwrap();
        let Line::Complete(line) = reader.next().await else {
            panic!("a line")
        };
        assert_eq!(&line[..], b"two");
        let Line::Complete(line) = reader.next().await else {
            panic!("a blank line")
        };
        assert!(line.is_empty());
        drop(client);
        assert!(matches!(reader.next().await, Line::Closed));

        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = LineReader::new(server);
        let writer = tokio::spawn(async move {
            let chunk = vec![b'a'; 1 << 16];
            for _ in 0..=(api::MAX_LINE_BYTES >> 16) {
                if client.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = client.write_all(b"\n").await;
        });
        assert!(matches!(reader.next().await, Line::TooLong));
        drop(reader);
        writer.await.unwrap();
    }

    #[test]
    fn growing_the_buffer_keeps_every_byte_in_order() {
        let mut buf = Zeroizing::new(Vec::new());
        let mut expected = Vec::new();
        for n in 0..5000u32 {
            let bytes = n.to_le_bytes();
            append_wiping(&mut buf, &bytes);
            expected.extend_from_slice(&bytes);
        }
        assert_eq!(&buf[..], &expected[..]);
    }
}
