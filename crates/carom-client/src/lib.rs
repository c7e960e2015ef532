//! # carom-client: a typed client for `caromd`'s local API
//!
//! Connects to the daemon's Unix socket, reads the banner, and calls any method described in
//! `carom_api::method` with that method's own types ([`Client::call`]), with a shorthand for
//! each, plus a stream of typed events once subscribed. Requests may be issued concurrently from
//! clones of the [`Client`]; responses are matched by id. Used by the `carom` CLI and the tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), carom_client::ClientError> {
//! let client = carom_client::Client::connect(&carom_client::default_socket_path()).await?;
//! let me = client.identity().await?;
//! println!("my address: {}", me.address);
//! # Ok(()) }
//! ```
//!
//! What it is not: a UI, or a way to reach a daemon on another machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use carom_api::{self as api, method as m};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use zeroize::{Zeroize, Zeroizing};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The daemon's socket could not be reached.
    #[error(
        "cannot reach caromd at {path}: {source}. Is the daemon running? Start it with `caromd`"
    )]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket, its directory or the process listening on it is not ours: it may be
    /// another local user impersonating `caromd`. Nothing was sent.
    #[error("refusing to talk to the daemon's socket: {0}")]
    Untrusted(#[from] carom_fs::NotPrivate),
    /// The daemon answered with an error.
    #[error("{0}")]
    Api(api::ErrorObject),
    /// The connection broke or the daemon sent something unexpected.
    #[error("connection to caromd lost: {0}")]
    Disconnected(String),
    /// The daemon speaks an API version this client does not.
    #[error("caromd speaks API {daemon} (oldest {min}); this client needs API {ours}")]
    Incompatible {
        /// The daemon's API version.
        daemon: u32,
        /// The daemon's oldest supported version.
        min: u32,
        /// Ours.
        ours: u32,
    },
}

impl ClientError {
    /// The API error kind, if the daemon answered with an error.
    pub fn kind(&self) -> Option<api::ErrorKind> {
        match self {
            ClientError::Api(e) => Some(e.data.kind),
            _ => None,
        }
    }
}

/// Overwrites every string inside `value` with zeros (for values that held a passphrase).
fn wipe_strings(value: &mut Value) {
    match value {
        Value::String(text) => text.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe_strings),
        Value::Object(members) => members.values_mut().for_each(wipe_strings),
        _ => {}
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, api::ErrorObject>>>>>;

/// A connection to `caromd`. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    writer: Arc<AsyncMutex<OwnedWriteHalf>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    events: Arc<AsyncMutex<mpsc::UnboundedReceiver<api::Event>>>,
    live: Arc<AsyncMutex<mpsc::UnboundedReceiver<api::LiveEvent>>>,
    banner: api::Banner,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.banner.session)
            .finish_non_exhaustive()
    }
}

/// Where `caromd` puts its socket by default: `$XDG_RUNTIME_DIR/carom/carom.sock`, or
/// `/tmp/carom-$UID/carom.sock` without `XDG_RUNTIME_DIR`. `$CAROM_SOCKET` overrides.
pub fn default_socket_path() -> PathBuf {
    if let Some(path) = std::env::var_os("CAROM_SOCKET") {
        return PathBuf::from(path);
    }
    default_runtime_dir().join("carom.sock")
}

/// The daemon's default runtime directory (see [`default_socket_path`]).
pub fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("carom"),
        _ => {
            let uid = std::fs::metadata("/proc/self")
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap_or(0);
            std::env::temp_dir().join(format!("carom-{uid}"))
        }
    }
}

impl Client {
    /// Connect to the daemon's socket, make sure it is our own user's daemon, and read its
    /// banner.
    ///
    /// Before a byte is sent, the socket and its directory must belong to us and be closed to
    /// other users (modes 0600 and 0700), and the listening process must run as our user
    /// (`SO_PEERCRED`); otherwise this fails with [`ClientError::Untrusted`], naming the path
    /// and its owner. This is what stops another local user who created `/tmp/carom-$UID/`
    /// first from collecting a passphrase.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        match carom_fs::check_socket(path) {
            Ok(()) => {}
            // A missing socket is the usual "daemon not running"; say that, not "cannot inspect".
            Err(carom_fs::NotPrivate::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(ClientError::Connect {
                    path: path.to_path_buf(),
                    source,
                });
            }
            Err(e) => return Err(e.into()),
        }
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let peer = stream.peer_cred().map_err(|e| {
            ClientError::Disconnected(format!("cannot read the daemon's credentials: {e}"))
        })?;
        carom_fs::check_peer(path, peer.uid())?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let first = lines
            .next_line()
            .await
            .map_err(|e| ClientError::Disconnected(e.to_string()))?
            .ok_or_else(|| ClientError::Disconnected("closed before the banner".into()))?;
        let banner: api::Banner = serde_json::from_str::<Value>(&first)
            .ok()
            .filter(|v| v["method"] == api::method::BANNER)
            .and_then(|v| serde_json::from_value(v["params"].clone()).ok())
            .ok_or_else(|| ClientError::Disconnected("the first line was not a banner".into()))?;
        if banner.min_api_version > api::API_VERSION {
            return Err(ClientError::Incompatible {
                daemon: banner.api_version,
                min: banner.min_api_version,
                ours: api::API_VERSION,
            });
        }
        let pending: Pending = Arc::default();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (live_tx, live_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(lines, Arc::clone(&pending), (event_tx, live_tx)));
        Ok(Client {
            writer: Arc::new(AsyncMutex::new(write)),
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            events: Arc::new(AsyncMutex::new(event_rx)),
            live: Arc::new(AsyncMutex::new(live_rx)),
            banner,
        })
    }

    /// What the daemon said on connect.
    pub fn banner(&self) -> &api::Banner {
        &self.banner
    }

    /// Call any method, with the parameter and result types its description fixes.
    pub async fn call<M: api::Method>(&self, params: &M::Params) -> Result<M::Result, ClientError> {
        let params = serde_json::to_value(params).map_err(|e| {
            ClientError::Disconnected(format!("cannot encode parameters for {}: {e}", M::NAME))
        })?;
        let value = self.call_value(M::NAME, params).await?;
        serde_json::from_value(value).map_err(|e| {
            ClientError::Disconnected(format!("unexpected result for {}: {e}", M::NAME))
        })
    }

    /// Call a method and return the raw result.
    pub async fn call_value(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let mut request =
            serde_json::json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        // Parameters may hold a passphrase: wipe every copy we made once it is written.
        let line = Zeroizing::new(request.to_string());
        wipe_strings(&mut request);
        self.send_line(&line).await?;
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(ClientError::Api(error)),
            Err(_) => Err(ClientError::Disconnected(
                "the daemon closed the connection".into(),
            )),
        }
    }

    /// Write one raw line (for tests of malformed input).
    pub async fn send_line(&self, line: &str) -> Result<(), ClientError> {
        let mut writer = self.writer.lock().await;
        let mut bytes = Zeroizing::new(Vec::with_capacity(line.len() + 1));
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        writer
            .write_all(&bytes)
            .await
            .map_err(|e| ClientError::Disconnected(e.to_string()))
    }

    /// The next event after [`Self::subscribe`]; `None` once the connection is gone.
    pub async fn next_event(&self) -> Option<api::Event> {
        self.events.lock().await.recv().await
    }

    /// The next live event after [`Self::subscribe`] (about a conversation with history off;
    /// never stored, never replayed); `None` once the connection is gone.
    pub async fn next_live_event(&self) -> Option<api::LiveEvent> {
        self.live.lock().await.recv().await
    }

    /// `daemon.info`.
    pub async fn info(&self) -> Result<api::DaemonInfo, ClientError> {
        self.call::<m::DaemonInfo>(&api::Empty {}).await
    }

    /// `daemon.stats`.
    pub async fn stats(&self) -> Result<api::Stats, ClientError> {
        self.call::<m::DaemonStats>(&api::Empty {}).await
    }

    /// `daemon.shutdown`.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.call::<m::DaemonShutdown>(&api::Empty {})
            .await
            .map(drop)
    }

    /// `profile.create`.
    pub async fn create_profile(
        &self,
        params: &api::ProfileCreate,
    ) -> Result<api::Identity, ClientError> {
        self.call::<m::ProfileCreate>(params).await
    }

    /// `profile.unlock`.
    pub async fn unlock(&self, passphrase: &str) -> Result<api::Identity, ClientError> {
        let params = api::ProfileUnlock {
            passphrase: passphrase.into(),
        };
        self.call::<m::ProfileUnlock>(&params).await
    }

    /// `profile.change_passphrase`.
    pub async fn change_passphrase(
        &self,
        params: &api::ProfileChangePassphrase,
    ) -> Result<(), ClientError> {
        self.call::<m::ProfileChangePassphrase>(params)
            .await
            .map(drop)
    }

    /// `identity.get`.
    pub async fn identity(&self) -> Result<api::Identity, ClientError> {
        self.call::<m::IdentityGet>(&api::Empty {}).await
    }

    /// `tor.status`.
    pub async fn tor_status(&self) -> Result<api::TorStatus, ClientError> {
        self.call::<m::TorStatus>(&api::Empty {}).await
    }

    /// `contact.add`.
    pub async fn add_contact(&self, params: &api::ContactAdd) -> Result<api::Contact, ClientError> {
        self.call::<m::ContactAdd>(params).await
    }

    /// `contact.list`.
    pub async fn contacts(&self) -> Result<Vec<api::Contact>, ClientError> {
        self.call::<m::ContactList>(&api::Empty {}).await
    }

    /// `contact.get`.
    pub async fn contact(&self, address: &str) -> Result<api::Contact, ClientError> {
        self.call::<m::ContactGet>(&address_params(address)).await
    }

    /// `contact.respond`.
    pub async fn respond(
        &self,
        address: &str,
        response: api::Response,
        nickname: Option<String>,
    ) -> Result<api::Contact, ClientError> {
        let params = api::ContactRespond {
            address: address.to_owned(),
            response,
            nickname,
        };
        self.call::<m::ContactRespond>(&params).await
    }

    /// `contact.clear_requests`.
    pub async fn clear_requests(&self) -> Result<api::Cleared, ClientError> {
        self.call::<m::ContactClearRequests>(&api::Empty {}).await
    }

    /// `contact.rename`.
    pub async fn rename(&self, address: &str, nickname: &str) -> Result<api::Contact, ClientError> {
        let params = api::ContactRename {
            address: address.to_owned(),
            nickname: nickname.to_owned(),
        };
        self.call::<m::ContactRename>(&params).await
    }

    /// `contact.remove`.
    pub async fn remove_contact(&self, address: &str) -> Result<(), ClientError> {
        self.call::<m::ContactRemove>(&address_params(address))
            .await
            .map(drop)
    }

    /// `message.send`.
    pub async fn send(&self, params: &api::MessageSend) -> Result<api::Message, ClientError> {
        self.call::<m::MessageSend>(params).await
    }

    /// `message.list`.
    pub async fn history(
        &self,
        params: &api::MessageList,
    ) -> Result<api::MessagePage, ClientError> {
        self.call::<m::MessageList>(params).await
    }

    /// `message.get`.
    pub async fn message(&self, id: i64) -> Result<api::Message, ClientError> {
        self.call::<m::MessageGet>(&api::MessageIdParams { id })
            .await
    }

    /// `profile.erase`: the profile is gone for good (this sends the confirmation; ask the
    /// user first).
    pub async fn erase_profile(&self) -> Result<api::ProfileErased, ClientError> {
        self.call::<m::ProfileErase>(&api::ProfileErase {
            confirm: api::ERASE_CONFIRMATION.to_owned(),
        })
        .await
    }

    /// `message.delete`: here only, or (`for_everyone`, a chat we sent) at both ends.
    pub async fn delete_message(&self, id: i64, for_everyone: bool) -> Result<(), ClientError> {
        self.call::<m::MessageDelete>(&api::MessageDelete { id, for_everyone })
            .await
            .map(drop)
    }

    /// `contact.set_timer`: the conversation's disappearing-message timer in seconds, or
    /// `None` for off.
    pub async fn set_timer(
        &self,
        address: &str,
        timer: Option<u32>,
    ) -> Result<api::Contact, ClientError> {
        let params = api::ContactSetTimer {
            address: address.to_owned(),
            timer,
        };
        self.call::<m::ContactSetTimer>(&params).await
    }

    /// `contact.set_history`: keep the conversation's messages in the store (`true`), or in
    /// the daemon's memory only (`false`).
    pub async fn set_history(
        &self,
        address: &str,
        keep_history: bool,
    ) -> Result<api::Contact, ClientError> {
        let params = api::ContactSetHistory {
            address: address.to_owned(),
            keep_history,
        };
        self.call::<m::ContactSetHistory>(&params).await
    }

    /// `events.subscribe`; then read events with [`Self::next_event`] (and live ones with
    /// [`Self::next_live_event`]).
    pub async fn subscribe(
        &self,
        params: &api::EventsSubscribe,
    ) -> Result<api::Subscribed, ClientError> {
        self.call::<m::EventsSubscribe>(params).await
    }

    /// `session.list`.
    pub async fn sessions(&self) -> Result<Vec<api::FrontendSession>, ClientError> {
        self.call::<m::SessionList>(&api::Empty {}).await
    }

    /// `session.hello`.
    pub async fn hello(&self, client: &str) -> Result<(), ClientError> {
        let params = api::SessionHello {
            client: client.to_owned(),
        };
        self.call::<m::SessionHello>(&params).await.map(drop)
    }
}

fn address_params(address: &str) -> api::AddressParams {
    api::AddressParams {
        address: address.to_owned(),
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    (events, live): (
        mpsc::UnboundedSender<api::Event>,
        mpsc::UnboundedSender<api::LiveEvent>,
    ),
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if value.get("method").and_then(Value::as_str) == Some(api::method::EVENT) {
            if let Ok(event) = serde_json::from_value(value["params"].clone()) {
                let _ = events.send(event);
            }
            continue;
        }
        if value.get("method").and_then(Value::as_str) == Some(api::method::LIVE_EVENT) {
            if let Ok(event) = serde_json::from_value(value["params"].clone()) {
                let _ = live.send(event);
            }
            continue;
        }
        let Some(id) = value.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let reply = match (value.get("result"), value.get("error")) {
            (_, Some(error)) => Err(serde_json::from_value(error.clone()).unwrap_or_else(|_| {
                api::ErrorObject::new(api::ErrorKind::Unknown, error.to_string())
            })),
            (Some(result), None) => Ok(result.clone()),
            (None, None) => Ok(Value::Null),
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(reply);
        }
    }
    // Wake every caller still waiting: the connection is gone.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
