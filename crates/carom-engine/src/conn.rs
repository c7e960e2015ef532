//! The connection driver: one task per stream, owning a sans-IO [`Session`].
//!
//! It moves bytes between the stream and the session, runs the session's timers, and handles
//! what arrives: chats and acknowledgements directly through the store (commit first, then
//! acknowledge), contact requests and responses through the core (which owns the rules and
//! the rate limits). It delivers the contact's outbox in order, once per connection, and tells
//! the core when the session is established and when it ends.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use carom_proto::SendError;
use carom_proto::{Ack, CloseReason, Event, Message, MessageId, OnionAddress, Phase, Session};
use carom_store::{
    ContactState, Direction, MessageStatus, NewIncoming, OutboxItem, OutboxKind, StoreRead,
    TimerChange, TimerStamp, WriteTx,
};
use rand_core::OsRng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use carom_api::EventData;
use carom_api::event::{self, By, ContactStateChange, RemovalReason};

use crate::core::{Admission, ConnId, CoreMsg, SessionUp};
use crate::err::{EngineError, Result};
use crate::view::{self, unix_ms, unix_secs};
use crate::{Counters, Shared};

/// What the core can ask of a connection.
#[derive(Debug)]
pub(crate) enum ConnCmd {
    /// New items are in the contact's outbox: send them.
    Deliver,
    /// End the session with this reason.
    Close(CloseReason),
}

/// What a dialled connection needs from the core to start.
pub(crate) struct Ticket {
    pub(crate) conn: ConnId,
    pub(crate) contact_id: Option<i64>,
    pub(crate) cached_static: Option<[u8; 32]>,
    pub(crate) commands: mpsc::UnboundedReceiver<ConnCmd>,
}

/// Bytes read from the stream at a time (a little more than one frame).
const READ_CHUNK: usize = 66 * 1024;
/// … and before the peer has authenticated: a stranger's connection costs what it sent, not a
/// frame-sized buffer up front.
const PREAUTH_READ_CHUNK: usize = 4 * 1024;
/// Incoming connections allowed in their handshake at once. Each holds at most one partial
/// frame (64 KiB) and [`PREAUTH_READ_CHUNK`], so all of them together hold at most about
/// 9 MiB. One more pushes out the oldest: a flood then costs the flooder fresh connections
/// and, as a handshake takes a round trip or two, a genuine peer's completes among them.
pub const MAX_PREAUTH: usize = 128;
/// Stop producing new outbox frames while this much is waiting to be written (in the writer
/// and in the session together)…
const HIGH_WATER: usize = 256 * 1024;
/// Outbox items read from the store at a time. Items are at most one frame (64 KiB), so a
/// page in memory stays under 4 MiB however long the outbox is.
const OUTBOX_PAGE: u32 = 64;
/// … and resume below this.
const LOW_WATER: usize = 64 * 1024;
/// A peer that lets this much pile up (it sends but never reads our acknowledgements) is
/// dropped rather than allowed to grow our memory.
const HARD_LIMIT: usize = 16 << 20;
/// How long a closing connection waits for its last frames (a Close) to be written.
const FINAL_WRITE: Duration = Duration::from_secs(5);

/// The write side of a connection, in a task of its own: reading must never wait for a write
/// to finish. Over Tor both directions have small flow-control windows; a side that stops
/// reading while it writes can deadlock with a peer doing the same.
struct Writer {
    queue: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes handed to the writer and not yet written.
    unsent: Arc<AtomicUsize>,
    /// Signalled when `unsent` falls to [`LOW_WATER`].
    drained: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Writer {
    fn spawn<W: AsyncWrite + Send + 'static>(half: WriteHalf<W>, shared: Arc<Shared>) -> Writer {
        let (queue, rx) = mpsc::unbounded_channel();
        let unsent = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        let task = tokio::spawn(write_loop(
            half,
            rx,
            Arc::clone(&unsent),
            Arc::clone(&drained),
            shared,
        ));
        Writer {
            queue,
            unsent,
            drained,
            task,
        }
    }

    fn unsent(&self) -> usize {
        self.unsent.load(Ordering::Acquire)
    }

    /// Hand bytes over; false if the writer has stopped (the stream broke).
    fn send(&self, bytes: Vec<u8>) -> bool {
        self.unsent.fetch_add(bytes.len(), Ordering::AcqRel);
        self.queue.send(bytes).is_ok()
    }

    /// Let the writer finish what it has (bounded), then close the write side.
    async fn finish(self) {
        drop(self.queue);
        let mut task = self.task;
        if tokio::time::timeout(FINAL_WRITE, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn write_loop<W: AsyncWrite>(
    mut half: WriteHalf<W>,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    unsent: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    shared: Arc<Shared>,
) {
    while let Some(first) = queue.recv().await {
        // Write everything already waiting, then flush once: arti holds written bytes in
        // relay cells until flushed, and a flush per batch keeps cells full under load.
        let mut written = 0;
        let mut next = Some(first);
        let mut broken = false;
        while let Some(bytes) = next {
            if half.write_all(&bytes).await.is_err() {
                broken = true;
                break;
            }
            written += bytes.len();
            next = if written < LOW_WATER {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if broken || half.flush().await.is_err() {
            break;
        }
        trace!(bytes = written, "wrote");
        Counters::add(&shared.counters.bytes_sent, written);
        let before = unsent.fetch_sub(written, Ordering::AcqRel);
        if before - written <= LOW_WATER {
            drained.notify_one();
        }
    }
    let _ = half.shutdown().await;
}

/// An incoming connection's place among those still in their handshake; leaving it (the peer
/// authenticated, or the connection ended) frees the place.
struct PreAuthSlot {
    shared: Arc<Shared>,
    conn: ConnId,
}

impl PreAuthSlot {
    /// Takes a place, pushing out the oldest connection if all are taken.
    fn take(shared: &Arc<Shared>, conn: ConnId, commands: mpsc::UnboundedSender<ConnCmd>) -> Self {
        let mut waiting = shared.preauth.lock().unwrap_or_else(|e| e.into_inner());
        while waiting.len() >= MAX_PREAUTH {
            if let Some((oldest, close)) = waiting.pop_front() {
                debug!(
                    ?oldest,
                    "too many unauthenticated connections: dropping the oldest"
                );
                let _ = close.send(ConnCmd::Close(CloseReason::RateLimited));
            }
        }
        waiting.push_back((conn, commands));
        PreAuthSlot {
            shared: Arc::clone(shared),
            conn,
        }
    }
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        self.shared
            .preauth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(conn, _)| *conn != self.conn);
    }
}

struct Conn<S> {
    shared: Arc<Shared>,
    /// Held until the peer authenticates (incoming connections only).
    preauth: Option<PreAuthSlot>,
    /// Set while the session waits to show it is live before it may replace the contact's
    /// registered one: the peer's static key and certificate expiry, to register it with.
    probation: Option<([u8; 32], u64)>,
    reader: ReadHalf<S>,
    writer: Writer,
    /// Outbox delivery waits for the writer to drain.
    paused: bool,
    /// Outbox items read from the store and not yet handed to the session (the rest of a
    /// page, when delivery paused for room).
    page: VecDeque<OutboxItem>,
    session: Session,
    conn: ConnId,
    commands: mpsc::UnboundedReceiver<ConnCmd>,
    commands_tx: Option<mpsc::UnboundedSender<ConnCmd>>,
    initiator: bool,
    peer: Option<OnionAddress>,
    contact_id: Option<i64>,
    /// Every outbox item up to this id has been written on this connection (items are sent
    /// in id order, so one number says it).
    sent_up_to: i64,
    /// The same for the outbox kept in memory (conversations with history off), sent after
    /// the stored one.
    memory_sent_up_to: i64,
    /// Items that live only in the outbox (contact requests and responses, group traffic)
    /// written on this connection, by message id → outbox id, kind and group message row, so
    /// their acknowledgements can clear them without searching the outbox.
    control_sent: HashMap<MessageId, (i64, OutboxKind, Option<i64>)>,
    /// Chats written since the last flush whose status should become `sent`.
    just_sent: Vec<i64>,
    registered: bool,
    /// Only a contact request may come through; the session ends after the handshake.
    request_only: bool,
    /// A co-member who is not a contact: group traffic only (a 1:1 chat is refused).
    group_only: bool,
    /// We refused the peer: nothing it sent is looked at.
    refused: bool,
    /// How the session ended, once it has: (reason, by the peer).
    closed: Option<(CloseReason, bool)>,
}

/// Run a connection we dialled.
pub(crate) async fn run_initiator<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: OnionAddress,
    ticket: Ticket,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = Session::initiator(
        shared.session_config(),
        peer,
        ticket.cached_static,
        unix_secs(),
        view::monotonic(),
        &mut OsRng,
    );
    let (reader, writer) = tokio::io::split(stream);
    let writer = Writer::spawn(writer, Arc::clone(&shared));
    let mut conn = Conn {
        shared,
        preauth: None,
        probation: None,
        reader,
        writer,
        paused: false,
        page: VecDeque::new(),
        session,
        conn: ticket.conn,
        commands: ticket.commands,
        commands_tx: None,
        initiator: true,
        peer: Some(peer),
        contact_id: ticket.contact_id,
        sent_up_to: 0,
        memory_sent_up_to: 0,
        control_sent: HashMap::new(),
        just_sent: Vec::new(),
        registered: true,
        request_only: false,
        group_only: false,
        refused: false,
        closed: None,
    };
    // Queue the outbox before the first write, so it rides in the handshake.
    if let Err(e) = conn.deliver_outbox().await {
        debug!(error = %e, "could not read the outbox for a new connection");
    }
    conn.run().await;
}

/// Run a connection that arrived on our onion service.
pub(crate) async fn run_responder<S>(shared: Arc<Shared>, stream: S, conn: ConnId)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = Session::responder(
        shared.session_config(),
        unix_secs(),
        view::monotonic(),
        &mut OsRng,
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let preauth = Some(PreAuthSlot::take(&shared, conn, tx.clone()));
    let (reader, writer) = tokio::io::split(stream);
    let writer = Writer::spawn(writer, Arc::clone(&shared));
    let conn = Conn {
        shared,
        preauth,
        probation: None,
        reader,
        writer,
        paused: false,
        page: VecDeque::new(),
        session,
        conn,
        commands: rx,
        commands_tx: Some(tx),
        initiator: false,
        peer: None,
        contact_id: None,
        sent_up_to: 0,
        memory_sent_up_to: 0,
        control_sent: HashMap::new(),
        just_sent: Vec::new(),
        registered: false,
        request_only: false,
        group_only: false,
        refused: false,
        closed: None,
    };
    conn.run().await;
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self) {
        Counters::add(&self.shared.counters.connections, 1);
        let mut buf = vec![
            0u8;
            if self.preauth.is_some() {
                PREAUTH_READ_CHUNK
            } else {
                READ_CHUNK
            }
        ];
        loop {
            if let Err(e) = self.handle_events().await {
                warn!(error = %e, "closing a session after a local failure");
                let reason = if matches!(e, EngineError::ShuttingDown) {
                    CloseReason::ShuttingDown
                } else {
                    CloseReason::Normal
                };
                self.session.close(reason, view::monotonic());
            }
            if self.flush().await.is_err() {
                break;
            }
            if self.session.is_closed() {
                break;
            }
            if self.preauth.is_none() && buf.len() < READ_CHUNK {
                buf.resize(READ_CHUNK, 0);
            }
            let deadline = self.session.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let drained = Arc::clone(&self.writer.drained);
            tokio::select! {
                read = self.reader.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        Counters::add(&self.shared.counters.bytes_received, n);
                        if let Err(e) = self.session.handle_input(&buf[..n], view::monotonic()) {
                            debug!(peer = ?self.peer.map(|p| p.redacted()), kind = %e.kind(), "protocol error");
                        }
                    }
                },
                command = self.commands.recv() => match coalesce(command, &mut self.commands) {
                    Some(ConnCmd::Deliver) => {
                        if self.session.phase() == Phase::Established
                            && let Err(e) = self.deliver_outbox().await
                        {
                            debug!(error = %e, "could not deliver the outbox");
                        }
                    }
                    Some(ConnCmd::Close(reason)) => self.session.close(reason, view::monotonic()),
                    None => self.session.close(CloseReason::ShuttingDown, view::monotonic()),
                },
                () = sleep => self.session.handle_timeout(view::monotonic()),
                () = drained.notified(), if self.paused => {
                    self.paused = false;
                    if let Err(e) = self.deliver_outbox().await {
                        debug!(error = %e, "could not deliver the outbox");
                    }
                }
            }
        }
        // Hand over what the session still owes (a Close, acks) and let it be written.
        let _ = self.flush().await;
        let Conn {
            writer,
            shared,
            registered,
            conn,
            closed,
            ..
        } = self;
        writer.finish().await;
        if registered {
            let _ = shared.core.send(CoreMsg::Closed {
                conn,
                reason: closed,
            });
        }
    }

    /// Hand whatever the session has to say to the writer, then mark those chats as sent.
    async fn flush(&mut self) -> std::io::Result<()> {
        if let Some(bytes) = self.session.poll_transmit()
            && !self.writer.send(bytes)
        {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        if self.writer.unsent() > HARD_LIMIT {
            debug!(peer = ?self.peer.map(|p| p.redacted()), "the peer does not read; dropping it");
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        if !self.just_sent.is_empty() && self.session.phase() == Phase::Established {
            let rows = std::mem::take(&mut self.just_sent);
            if let Some(peer) = self.peer {
                // "Sent" is for people; nothing here waits for its commit (an fsync), so the
                // session goes on delivering and reading acknowledgements meanwhile.
                let written = mark_sent(&self.shared, peer, rows);
                tokio::spawn(async move {
                    if let Err(e) = written.await {
                        debug!(error = %e, "could not record messages as sent");
                    }
                });
            }
        }
        Ok(())
    }

    /// Handle every pending event. Handling can itself produce events (accepting a session
    /// emits `Established`), so this drains until none are left: an event left queued would
    /// wait for the peer's next bytes, which may never come.
    async fn handle_events(&mut self) -> Result<()> {
        loop {
            self.end_probation_if_live().await?;
            let mut batch = Vec::new();
            while let Some(event) = self.session.poll_event() {
                batch.push(event);
            }
            if batch.is_empty() {
                return Ok(());
            }
            self.handle_batch(batch).await?;
        }
    }

    async fn handle_batch(&mut self, batch: Vec<Event>) -> Result<()> {
        let mut incoming = Vec::new();
        let mut deciding = false;
        for event in batch {
            match event {
                Event::PeerAuthenticated {
                    peer,
                    peer_static,
                    certificate_expires,
                    ..
                } => {
                    deciding = true;
                    self.preauth = None;
                    self.authenticated(peer, peer_static, certificate_expires)
                        .await?;
                }
                Event::Established {
                    peer,
                    peer_static,
                    certificate_expires,
                    ..
                } => {
                    Counters::add(&self.shared.counters.sessions, 1);
                    self.preauth = None;
                    self.established(peer, peer_static, certificate_expires)
                        .await?;
                }
                Event::Message(m) => incoming.push(m),
                Event::UnknownMessage { message_type } => {
                    debug!(message_type, "ignored a message of an unknown type");
                }
                Event::MalformedMessage {
                    reason,
                    salvaged,
                    too_large,
                } => {
                    debug!(%reason, "dropped a malformed message");
                    // A chat we can name but never store is refused by id, or its sender
                    // would retry it for ever.
                    if let Some((carom_proto::types::CHAT, id)) = salvaged
                        && self.contact_id.is_some()
                        && !self.refused
                        && !self.request_only
                    {
                        let reason = if too_large {
                            carom_proto::reject::TOO_LARGE
                        } else {
                            carom_proto::reject::MALFORMED
                        };
                        let _ = self.session.send(
                            Message::Reject(carom_proto::Reject {
                                ids: vec![id],
                                reason,
                                text: None,
                            }),
                            view::monotonic(),
                        );
                    }
                }
                Event::Closed { reason, by_peer } => {
                    debug!(?reason, by_peer, peer = ?self.peer.map(|p| p.redacted()), "session closed");
                    self.closed = Some((reason, by_peer));
                }
                _ => {}
            }
        }
        // Messages that arrived together with the peer's Close still count (an acknowledgement
        // followed by "request received", for one); only a peer we refused is ignored.
        if !incoming.is_empty() && !self.refused {
            self.handle_messages(incoming).await?;
        }
        if deciding && self.session.phase() == Phase::AwaitingDecision {
            if self.request_only {
                // A non-contact had its chance (a contact request in the handshake).
                self.session.close(CloseReason::Refused, view::monotonic());
            } else {
                // Everything that rode in the handshake is handled and acknowledged: go on.
                self.session.accept(view::monotonic());
            }
        }
        Ok(())
    }

    /// (Responder) Ask the core who this is and what they may do.
    async fn authenticated(
        &mut self,
        peer: OnionAddress,
        peer_static: [u8; 32],
        expires: u64,
    ) -> Result<()> {
        self.peer = Some(peer);
        let (conn, commands) = (self.conn, self.commands_tx.take());
        self.registered = true;
        let admission = self
            .shared
            .ask(|reply| CoreMsg::Authenticated {
                conn,
                peer,
                peer_static,
                expires,
                commands,
                reply,
            })
            .await?;
        match admission {
            Admission::Contact { contact_id, .. } => {
                self.contact_id = Some(contact_id);
            }
            Admission::GroupPeer { contact_id } => {
                self.contact_id = contact_id;
                self.group_only = true;
            }
            Admission::RequestOnly { contact_id } => {
                self.contact_id = contact_id;
                self.request_only = true;
            }
            Admission::Refuse(reason) => {
                self.refused = true;
                self.session.close(reason, view::monotonic());
            }
        }
        Ok(())
    }

    /// The session is up both ways.
    async fn established(
        &mut self,
        peer: OnionAddress,
        peer_static: [u8; 32],
        expires: u64,
    ) -> Result<()> {
        self.peer = Some(peer);
        let (conn, initiator) = (self.conn, self.initiator);
        let live = self.session.peer_is_live();
        let up = SessionUp {
            conn,
            peer,
            initiator,
            live,
            peer_static,
            expires,
        };
        let registration = self
            .shared
            .ask(|reply| CoreMsg::Established { up, reply })
            .await?;
        if registration.on_probation {
            // Ask for an answer only the real peer can give; its first authenticated frame
            // (this Pong, or anything it sends) ends the probation.
            self.probation = Some((peer_static, expires));
            let nonce = rand_core::RngCore::next_u64(&mut OsRng);
            let _ = self.session.send(
                Message::Ping(carom_proto::Ping { nonce }),
                view::monotonic(),
            );
            return Ok(());
        }
        if registration.state.is_some() {
            self.deliver_outbox().await?;
        }
        Ok(())
    }

    /// A session on probation whose peer has now shown it is live is registered.
    async fn end_probation_if_live(&mut self) -> Result<()> {
        if let (Some((peer_static, expires)), Some(peer)) = (self.probation, self.peer)
            && self.session.peer_is_live()
        {
            self.probation = None;
            self.established(peer, peer_static, expires).await?;
        }
        Ok(())
    }

    /// Handle a batch of application messages, in order.
    async fn handle_messages(&mut self, messages: Vec<Message>) -> Result<()> {
        let Some(peer) = self.peer else {
            return Ok(());
        };
        let mut chats = Vec::new();
        for message in messages {
            match message {
                Message::Chat(chat) => chats.push(Item::Chat(chat)),
                Message::SetTimer(change) => chats.push(Item::Timer(change)),
                Message::Withdraw(withdrawal) => chats.push(Item::Withdraw(withdrawal)),
                Message::Ack(ack) => {
                    self.store_chats(peer, std::mem::take(&mut chats)).await?;
                    self.acknowledged(peer, ack.ids).await?;
                }
                Message::Reject(reject) => {
                    self.store_chats(peer, std::mem::take(&mut chats)).await?;
                    self.rejected(peer, reject).await?;
                }
                Message::ContactRequest(_)
                | Message::ContactResponse(_)
                | Message::GroupOperations(_)
                | Message::GroupChat(_)
                | Message::GroupWithdraw(_) => {
                    self.store_chats(peer, std::mem::take(&mut chats)).await?;
                    let outcome = self
                        .shared
                        .ask(|reply| CoreMsg::ContactMessage {
                            peer,
                            message,
                            reply,
                        })
                        .await?;
                    let now = view::monotonic();
                    for m in outcome.send {
                        // An ack (or our answer) must not be lost to a limit: if it is refused
                        // the peer simply retries.
                        let _ = self.session.send(m, now);
                    }
                    if let Some(id) = outcome.contact_id {
                        self.contact_id = Some(id);
                    }
                    if outcome.now_accepted {
                        self.request_only = false;
                    }
                    if let Some(reason) = outcome.close {
                        self.session.close(reason, now);
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        self.store_chats(peer, chats).await
    }

    /// Commit conversation items (chats, timer changes, withdrawals) from an accepted
    /// contact, then acknowledge them (duplicates too).
    async fn store_chats(&mut self, peer: OnionAddress, chats: Vec<Item>) -> Result<()> {
        if chats.is_empty() {
            return Ok(());
        }
        let Some(contact_id) = self.row().await? else {
            if self.group_only {
                self.refuse_chats(&chats, carom_proto::reject::NOT_A_CONTACT);
            } else {
                debug!(peer = %peer.redacted(), count = chats.len(), "ignored chats from a non-contact");
            }
            return Ok(());
        };
        let now = unix_ms();
        let erasure_now = self.shared.erasure_now();
        let shared = Arc::clone(&self.shared);
        let clock = view::monotonic();
        let (stored, refused, charged, after, to_memory) = self
            .shared
            .store
            .write(move |tx| {
                // Checked inside the transaction, never cached: an acceptance made on another
                // session counts at once, and a block or removal committed just before wins.
                let contact = tx.contact(contact_id)?;
                // History off: chats (and withdrawals of chats not stored) are kept in memory
                // once this commits, never written. Memory is only read in here: this may run
                // again if another write of its batch fails.
                let in_memory = contact.as_ref().is_some_and(|c| !c.keep_history);
                let mut to_memory = Vec::new();
                match contact.map(|c| c.state) {
                    Some(ContactState::Accepted) => {}
                    // No relationship at all (a co-member's session): refused, so that the
                    // sender does not retry for ever. 1:1 chat needs pairing.
                    Some(ContactState::CoMember) | None => {
                        let refused = chats
                            .iter()
                            .map(|c| (c.id(), carom_proto::reject::NOT_A_CONTACT))
                            .collect();
                        return Ok((Vec::new(), refused, 0.0, Stored::default(), to_memory));
                    }
                    // A relationship on its way (a request, an answer): they learn their
                    // standing from it, and may send again once accepted.
                    Some(_) => {
                        return Ok((Vec::new(), Vec::new(), 0.0, Stored::default(), to_memory));
                    }
                }
                let mut after = Stored::default();
                let mut ids = Vec::with_capacity(chats.len());
                let mut refused = Vec::new();
                // Decided against an allowance, charged only once this commits: a rolled-back
                // or re-run transaction costs the contact nothing.
                let mut allowance = shared
                    .quota
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .allowance(contact_id, clock);
                for item in &chats {
                    // A copy we already have is acknowledged again, whatever the quota: the
                    // sender only missed our first acknowledgement. (A body over its limit
                    // never gets here: the decoder refuses it.)
                    let new_here = item.is_new_here(tx, contact_id)?
                        && !(in_memory && shared.memory().has_incoming(contact_id, &item.id().0));
                    if new_here && !allowance.admit(item.cost()) {
                        refused.push((item.id(), carom_proto::reject::OVER_QUOTA));
                        continue;
                    }
                    let stored = match item {
                        Item::Chat(chat) if in_memory => {
                            if new_here {
                                to_memory.push(Item::Chat(chat.clone()));
                            }
                            None
                        }
                        Item::Withdraw(w)
                            if in_memory
                                && tx
                                    .message_by_id(contact_id, Direction::Incoming, &w.target.0)?
                                    .is_none() =>
                        {
                            to_memory.push(Item::Withdraw(w.clone()));
                            None
                        }
                        Item::Chat(chat) => {
                            let received = tx.store_incoming(&NewIncoming {
                                contact_id,
                                msg_id: chat.id.0,
                                sent_at: chat.sent_at,
                                body: chat.body.clone(),
                                reply_to: chat.reply_to.map(|r| r.0),
                                now,
                                expires_after: chat.expires_after,
                                expires_from: Some(erasure_now),
                            })?;
                            let new = received.is_new();
                            Some((received.into_message(), new))
                        }
                        Item::Timer(change) => {
                            let stored = tx.store_timer_change(&TimerChange {
                                contact_id,
                                stamp: TimerStamp {
                                    sent_at: change.sent_at,
                                    id: change.id.0,
                                },
                                timer: change.expires_after,
                                now,
                            })?;
                            if stored.applied {
                                let event = EventData::TimerChanged(event::TimerChanged {
                                    address: peer.to_string(),
                                    timer: change.expires_after,
                                    by: By::Them,
                                });
                                append(tx, &event, now)?;
                            }
                            Some((stored.message, stored.new))
                        }
                        Item::Withdraw(w) => {
                            let (tombstone, erased) =
                                tx.withdraw_incoming(contact_id, &w.target.0, now)?;
                            // Frontends that showed it learn it is gone; one for a message we
                            // never had (or a repeated withdrawal) changes nothing they show.
                            if erased {
                                let event = EventData::Deleted(event::Deleted {
                                    id: tombstone.row,
                                    contact: peer.to_string(),
                                    msg_id: hex::encode(tombstone.msg_id),
                                    for_everyone: true,
                                    by: By::Them,
                                });
                                append(tx, &event, now)?;
                            }
                            after.erased |= erased;
                            None
                        }
                    };
                    if let Some((message, true)) = stored {
                        let event = EventData::MessageReceived(event::MessageRef {
                            id: message.row,
                            contact: peer.to_string(),
                            msg_id: hex::encode(message.msg_id),
                        });
                        append(tx, &event, now)?;
                        if let Some(at) = message.expires_at {
                            after.next_expiry = Some(after.next_expiry.map_or(at, |n| n.min(at)));
                        }
                    }
                    ids.push(item.id());
                }
                Ok((ids, refused, allowance.charged(), after, to_memory))
            })
            .await?;
        // Before any acknowledgement: "acknowledged" means kept, in memory or on disk.
        self.keep_in_memory(peer, contact_id, to_memory, now, erasure_now);
        self.shared.expiring(after.next_expiry);
        if after.erased {
            self.shared.erased();
        }
        self.shared
            .quota
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .charge(contact_id, charged, clock);
        trace!(count = stored.len(), "stored chats; acknowledging");
        let now = view::monotonic();
        for ids in stored.chunks(carom_proto::MAX_ACK_IDS) {
            let _ = self
                .session
                .send(Message::Ack(Ack { ids: ids.to_vec() }), now);
        }
        if !refused.is_empty() {
            debug!(peer = %peer.redacted(), count = refused.len(), "refused chats");
        }
        for (id, reason) in refused {
            // A refusal must reach the sender or it retries for ever: never dropped for room.
            let _ = self.session.send(
                Message::Reject(carom_proto::Reject {
                    ids: vec![id],
                    reason,
                    text: None,
                }),
                now,
            );
        }
        Ok(())
    }

    /// Keep conversation items of a conversation with history off in memory; the events
    /// about them are live only.
    fn keep_in_memory(
        &self,
        peer: OnionAddress,
        contact_id: i64,
        items: Vec<Item>,
        now: u64,
        erasure_now: u64,
    ) {
        let mut live = Vec::new();
        let mut forgotten = Vec::new();
        let mut next_expiry = None::<u64>;
        {
            let mut memory = self.shared.memory();
            for item in items {
                match item {
                    Item::Chat(chat) => {
                        let (message, new, gone) = memory.receive(&NewIncoming {
                            contact_id,
                            msg_id: chat.id.0,
                            sent_at: chat.sent_at,
                            body: chat.body,
                            reply_to: chat.reply_to.map(|r| r.0),
                            now,
                            expires_after: chat.expires_after,
                            expires_from: Some(erasure_now),
                        });
                        forgotten.extend(gone);
                        if new {
                            live.push(EventData::MessageReceived(event::MessageRef {
                                id: message.row,
                                contact: peer.to_string(),
                                msg_id: hex::encode(message.msg_id),
                            }));
                            if let Some(at) = message.expires_at {
                                next_expiry = Some(next_expiry.map_or(at, |n| n.min(at)));
                            }
                        }
                    }
                    Item::Withdraw(w) => {
                        let (tombstone, erased) =
                            memory.withdraw_incoming(contact_id, &w.target.0, now);
                        if erased {
                            live.push(EventData::Deleted(event::Deleted {
                                id: tombstone.row,
                                contact: peer.to_string(),
                                msg_id: hex::encode(tombstone.msg_id),
                                for_everyone: true,
                                by: By::Them,
                            }));
                        }
                    }
                    // Settings are stored: never sent here.
                    Item::Timer(_) => {}
                }
            }
        }
        self.shared.publish_live(live);
        self.shared.publish_forgotten(forgotten, &peer);
        self.shared.expiring(next_expiry);
    }

    /// Refuse every one of `chats` for `reason`, without looking at them.
    fn refuse_chats(&mut self, chats: &[Item], reason: u32) {
        let now = view::monotonic();
        for chat in chats {
            let _ = self.session.send(
                Message::Reject(carom_proto::Reject {
                    ids: vec![chat.id()],
                    reason,
                    text: None,
                }),
                now,
            );
        }
    }

    /// The peer's row. A contact's is known from the start; a co-member's may have been
    /// made after this connection began (by the write that queued group traffic for it), so
    /// it is looked up when first needed.
    async fn row(&mut self) -> Result<Option<i64>> {
        if self.contact_id.is_none()
            && !self.request_only
            && !self.refused
            && let Some(peer) = self.peer
        {
            let key = peer.public_key();
            self.contact_id = self
                .shared
                .store
                .read(move |s| Ok(s.contact_by_identity(&key)?.map(|c| c.id)))
                .await?;
        }
        Ok(self.contact_id)
    }

    /// The peer refused messages for good: they fail here, with its reason, and leave the
    /// outbox.
    async fn rejected(&mut self, peer: OnionAddress, reject: carom_proto::Reject) -> Result<()> {
        let Some(contact_id) = self.row().await? else {
            return Ok(());
        };
        let now = unix_ms();
        let failure = carom_proto::reject::name(reject.reason);
        info!(peer = %peer.redacted(), count = reject.ids.len(), failure, "the peer refused messages");
        let control: Vec<(i64, OutboxKind, Option<i64>)> = reject
            .ids
            .iter()
            .filter_map(|id| self.control_sent.remove(id))
            .collect();
        let raw: Vec<[u8; 16]> = reject.ids.iter().map(|id| id.0).collect();
        let settled =
            self.shared
                .memory()
                .settle(contact_id, &peer.public_key(), &raw, Some(failure), now);
        self.shared.publish_settled(&settled, &peer);
        self.shared
            .store
            .write(move |tx| {
                let raw: Vec<[u8; 16]> = reject.ids.iter().map(|id| id.0).collect();
                let failed = tx.mark_rejected(contact_id, &raw, failure, now)?;
                status_events(tx, &failed, peer, now)?;
                // Refused group traffic leaves the outbox too; a group message fails for
                // this recipient with the reason.
                for &(item, kind, group_message) in &control {
                    if tx.remove_outbox(item)?
                        && kind == OutboxKind::GroupChat
                        && let Some(row) = group_message
                    {
                        group_delivery(tx, row, peer, Some(failure), now)?;
                    }
                }
                Ok(())
            })
            .await
    }

    /// The peer acknowledged messages: mark them delivered and clear the outbox.
    async fn acknowledged(&mut self, peer: OnionAddress, ids: Vec<MessageId>) -> Result<()> {
        let Some(contact_id) = self.row().await? else {
            return Ok(());
        };
        let now = unix_ms();
        trace!(count = ids.len(), "acknowledgement received");
        // Contact requests and responses and group traffic live only in the outbox; we know
        // which we sent.
        let control: Vec<(i64, OutboxKind, Option<i64>)> = ids
            .iter()
            .filter_map(|id| self.control_sent.remove(id))
            .collect();
        let raw: Vec<[u8; 16]> = ids.iter().map(|id| id.0).collect();
        let settled = self
            .shared
            .memory()
            .settle(contact_id, &peer.public_key(), &raw, None, now);
        self.shared.publish_settled(&settled, &peer);
        self.shared
            .store
            .write(move |tx| {
                let raw: Vec<[u8; 16]> = ids.iter().map(|id| id.0).collect();
                let delivered = tx.mark_delivered(contact_id, &raw, now)?;
                status_events(tx, &delivered, peer, now)?;
                for &(item, kind, group_message) in &control {
                    if !tx.remove_outbox(item)? {
                        continue;
                    }
                    match (kind, group_message) {
                        (OutboxKind::ContactRequest, _) => {
                            let event = EventData::RequestDelivered(event::ContactRef {
                                address: peer.to_string(),
                            });
                            append(tx, &event, now)?;
                        }
                        (OutboxKind::GroupChat, Some(row)) => {
                            group_delivery(tx, row, peer, None, now)?;
                        }
                        _ => {}
                    }
                }
                Ok(())
            })
            .await
    }

    /// Send every outbox item not yet written on this connection, in order, as far as there
    /// is room: at most [`HIGH_WATER`] bytes wait in the session and the writer together.
    /// Delivery resumes by itself when the writer drains (`paused`) or, before the handshake,
    /// when the session is established. Memory does not grow with the outbox.
    async fn deliver_outbox(&mut self) -> Result<()> {
        let Some(contact_id) = self.row().await? else {
            return Ok(());
        };
        if self.probation.is_some() {
            // Not the contact's session (yet): what it sends might reach nobody.
            return Ok(());
        }
        self.paused = false;
        loop {
            if self.writer.unsent() + self.session.pending_output() > HIGH_WATER
                && !self.make_room().await
            {
                return Ok(());
            }
            let Some(item) = self.page.pop_front() else {
                let after = self.sent_up_to;
                let mut items = self
                    .shared
                    .store
                    .read(move |store| {
                        Ok(store.outbox_for_contact_after(contact_id, after, OUTBOX_PAGE)?)
                    })
                    .await?;
                if items.is_empty() {
                    // The stored outbox is sent: then what waits in memory (history off).
                    items = self.shared.memory().outbox_after(
                        contact_id,
                        self.memory_sent_up_to,
                        usize::try_from(OUTBOX_PAGE).unwrap_or(usize::MAX),
                    );
                }
                trace!(items = items.len(), after, "outbox page");
                if items.is_empty() {
                    return Ok(());
                }
                self.page = items.into();
                continue;
            };
            let message = match Message::decode(&item.payload) {
                Ok(carom_proto::Decoded::Known(m)) => m,
                _ => {
                    warn!(
                        item = item.id,
                        "an outbox item does not decode; skipping it"
                    );
                    self.sent_up_to_item(item.id);
                    continue;
                }
            };
            // Items that live only in the outbox (no message row): we must know which we sent
            // to clear them when they are acknowledged or refused.
            let control = match &message {
                Message::ContactRequest(r) => Some(r.id),
                Message::ContactResponse(r) => Some(r.id),
                Message::GroupOperations(g) => Some(g.id),
                Message::GroupChat(c) => Some(c.id),
                Message::GroupWithdraw(w) => Some(w.id),
                Message::Withdraw(w) => Some(w.id),
                _ => None,
            };
            match self.session.send(message, view::monotonic()) {
                Ok(()) => {}
                Err(SendError::Backpressure) => {
                    // Acknowledgements and pings took the room: wait for it as above.
                    self.page.push_front(item);
                    if !self.make_room().await {
                        return Ok(());
                    }
                    continue;
                }
                Err(SendError::Closed) => return Ok(()),
                Err(e) => {
                    // Checked when it was queued, so this is a bug or a changed limit; it can
                    // never go out, and must not hold back what follows.
                    warn!(item = item.id, error = %e, "an outbox item cannot be sent; skipping it");
                    self.sent_up_to_item(item.id);
                    continue;
                }
            }
            self.sent_up_to_item(item.id);
            if let Some(row) = item.message_row {
                self.just_sent.push(row);
            }
            if let Some(id) = control {
                self.control_sent
                    .insert(id, (item.id, item.kind, item.group_message_row));
            }
        }
    }

    /// Everything up to this outbox item (stored, or in memory) has been written here.
    fn sent_up_to_item(&mut self, id: i64) {
        if crate::memory::is_memory_row(id) {
            self.memory_sent_up_to = id;
        } else {
            self.sent_up_to = id;
        }
    }

    /// Hand the session's output to the writer. True if there is room to send more now;
    /// false if delivery must wait: for the writer to drain (then `paused` is set) or, while
    /// the handshake is under way, for the session to be established.
    async fn make_room(&mut self) -> bool {
        if self.flush().await.is_err() {
            return false;
        }
        if self.writer.unsent() > HIGH_WATER {
            self.paused = true;
            return false;
        }
        self.session.pending_output() <= HIGH_WATER
    }
}

/// Several "deliver" nudges in a row ask for the same thing once; a close wins.
/// A conversation item from a contact: stored in order, acknowledged by its id.
enum Item {
    Chat(carom_proto::Chat),
    Timer(carom_proto::SetTimer),
    Withdraw(carom_proto::Withdraw),
}

/// What storing conversation items leaves to do once they are committed.
#[derive(Default)]
struct Stored {
    /// The earliest time one of them is erased at.
    next_expiry: Option<u64>,
    /// A withdrawal erased a body.
    erased: bool,
}

/// What a timer change or a tombstone costs of a contact's daily allowance: about a row.
const TOMBSTONE_COST: usize = 64;

impl Item {
    fn id(&self) -> MessageId {
        match self {
            Item::Chat(c) => c.id,
            Item::Timer(t) => t.id,
            Item::Withdraw(w) => w.id,
        }
    }

    fn cost(&self) -> usize {
        match self {
            Item::Chat(c) => c.body.len(),
            Item::Timer(_) | Item::Withdraw(_) => TOMBSTONE_COST,
        }
    }

    /// Whether storing it would take room: a chat or timer change not stored before, or any
    /// withdrawal (idempotent by itself, and one for a message we never had leaves a
    /// tombstone, so it is charged as a row).
    fn is_new_here(&self, tx: &WriteTx<'_>, contact_id: i64) -> carom_store::Result<bool> {
        match self {
            Item::Withdraw(_) => Ok(true),
            Item::Chat(_) | Item::Timer(_) => Ok(tx
                .message_by_id(contact_id, Direction::Incoming, &self.id().0)?
                .is_none()),
        }
    }
}

fn coalesce(
    first: Option<ConnCmd>,
    rest: &mut mpsc::UnboundedReceiver<ConnCmd>,
) -> Option<ConnCmd> {
    let mut command = first?;
    while let Ok(next) = rest.try_recv() {
        if matches!(command, ConnCmd::Deliver) {
            command = next;
        } else {
            break;
        }
    }
    Some(command)
}

/// Record chats as written to a session (only those still queued: an ack may have won). The
/// job is sent when this is called, so it commits before the write of any acknowledgement that
/// arrives later.
fn mark_sent(
    shared: &Shared,
    peer: OnionAddress,
    rows: Vec<i64>,
) -> impl Future<Output = Result<()>> + Send + 'static {
    let now = unix_ms();
    let (in_memory, rows): (Vec<i64>, Vec<i64>) = rows
        .into_iter()
        .partition(|&row| crate::memory::is_memory_row(row));
    if !in_memory.is_empty() {
        let sent = shared.memory().mark_sent(&in_memory, now);
        shared.publish_statuses(&sent, &peer);
    }
    shared.store.write(move |tx| {
        for &row in &rows {
            if let Some(m) = tx.message(row)?
                && m.status == MessageStatus::Queued
                && m.direction == Direction::Outgoing
            {
                tx.set_message_status(row, MessageStatus::Sent, None, now)?;
                let mut m = m;
                m.status = MessageStatus::Sent;
                append(tx, &view::status_event(&m, &peer), now)?;
            }
        }
        Ok(())
    })
}

/// A group message reached `peer` (`failure`: it never will): its delivery row, and the event.
pub(crate) fn group_delivery(
    tx: &WriteTx<'_>,
    message_row: i64,
    peer: OnionAddress,
    failure: Option<&str>,
    now: u64,
) -> Result<()> {
    let status = if failure.is_some() {
        carom_store::DeliveryStatus::Failed
    } else {
        carom_store::DeliveryStatus::Delivered
    };
    if !tx.set_group_delivery(message_row, &peer.public_key(), status, failure, now)? {
        return Ok(());
    }
    let Some(message) = tx.group_message(message_row)? else {
        return Ok(());
    };
    let Some(group) = tx.group_by_row(message.group_row)? else {
        return Ok(());
    };
    let event = EventData::GroupDelivery(event::GroupDelivered {
        group: hex::encode(group.group_id),
        id: message_row,
        recipient: peer.to_string(),
        status: view::delivery_status_api(status),
        failure: failure.map(str::to_owned),
    });
    append(tx, &event, now)?;
    Ok(())
}

/// A `message.status` event for each message whose status changed.
fn status_events(
    tx: &WriteTx<'_>,
    messages: &[carom_store::Message],
    peer: OnionAddress,
    now: u64,
) -> Result<()> {
    for m in messages {
        append(tx, &view::status_event(m, &peer), now)?;
    }
    Ok(())
}

/// Forget a contact and tell frontends: `contact.state` `removed` by us, with why if given.
/// Returns its address, and its row if the row stays as a co-member's (group traffic still
/// waits for it).
pub(crate) fn forget_contact(
    tx: &WriteTx<'_>,
    contact: &carom_store::Contact,
    reason: Option<RemovalReason>,
    now: u64,
) -> Result<(OnionAddress, Option<carom_store::Contact>)> {
    let peer = view::address_of(&contact.identity)?;
    let kept = match tx.forget_contact(contact.id, now)? {
        Some(carom_store::Forgotten::KeptAsCoMember(row)) => Some(*row),
        _ => None,
    };
    let event = view::state_event(&peer, ContactStateChange::Removed, By::Us, reason);
    append(tx, &event, now)?;
    Ok((peer, kept))
}

/// Append an event inside a transaction.
pub(crate) fn append(tx: &WriteTx<'_>, event: &EventData, now: u64) -> Result<u64> {
    Ok(tx.append_event(event.kind(), &event.to_value().to_string(), now)?)
}
