//! The driver of the core: one task that feeds the [`Machine`] what happens (messages from
//! connections and the API, store results, the time) and carries out what it decides (dials,
//! commands to connections, store writes). Every decision is the machine's; this file only
//! moves bytes and waits, and it never waits on the disk between two inputs: a store job is
//! sent at once and its result comes back as another input.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use carom_proto::{CloseReason, ContactRequest, Message, OnionAddress};
use carom_store::{
    ContactState, GroupQueued, GroupReceived, GroupState, MessageStatus, NewContact, NewGroupChat,
    NewGroupIncoming, StoreRead, WriteTx,
};
use carom_tor::Transport;
use rand_core::{OsRng, RngCore as _};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use carom_api::EventData;
use carom_api::event::{self, By, RemovalReason};

use crate::Shared;
use crate::config::EngineConfig;
use crate::conn::{self, ConnCmd, Ticket, append, forget_contact};
use crate::contact;
use crate::err::Result;
use crate::groups::{GroupCommand, GroupWrite};
pub(crate) use crate::machine::{Admission, ConnId, ContactOutcome, Registration, SessionUp};
use crate::machine::{
    ContactReply, DialFailure, EXPIRY_BATCH, Effect, Forgotten, Input, Known, Machine, Now, StoreOp,
};
use crate::view::{self, address_of, unix_ms};
use carom_group::{GroupId, OpId};

/// Messages to the core.
pub(crate) enum CoreMsg {
    /// The API committed a change to a contact (`row`: as it is now; `None`: it is gone).
    ContactChanged {
        contact: OnionAddress,
        row: Option<Known>,
    },
    /// The API queued something for this (accepted) contact: deliver it.
    Queued { contact: OnionAddress },
    /// A responder authenticated its peer.
    Authenticated {
        conn: ConnId,
        peer: OnionAddress,
        peer_static: [u8; 32],
        expires: u64,
        commands: Option<mpsc::UnboundedSender<ConnCmd>>,
        reply: oneshot::Sender<Admission>,
    },
    /// A session is up (either role). The reply is the contact's state, if it is one.
    Established {
        up: SessionUp,
        reply: oneshot::Sender<Registration>,
    },
    /// A contact request or response arrived.
    ContactMessage {
        peer: OnionAddress,
        message: Message,
        reply: oneshot::Sender<ContactOutcome>,
    },
    /// A connection ended (with the session's close reason, if it had one, and whether the
    /// peer gave it).
    Closed {
        conn: ConnId,
        reason: Option<(CloseReason, bool)>,
    },
    /// A dial produced a stream: may it proceed?
    Dialed {
        contact: OnionAddress,
        reply: oneshot::Sender<Option<Ticket>>,
    },
    /// A dial failed.
    DialFailed {
        contact: OnionAddress,
        failure: DialFailure,
    },
    /// Tor became ready to carry traffic (after bootstrap, or after it lost the network).
    TorReady,
    /// A group command from the API; answered once what it changed is committed.
    Group {
        command: GroupCommand,
        reply: oneshot::Sender<Result<GroupDone>>,
    },
    /// The members of a group at each of these states.
    GroupSentTo {
        group: GroupId,
        heads: Vec<Vec<OpId>>,
        reply: oneshot::Sender<Vec<Vec<String>>>,
    },
    /// A store result (or another outcome of an effect) for the machine.
    Result(Input),
    /// Close every session and stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// The answer to a group command, once committed.
#[derive(Debug, Default)]
pub(crate) struct GroupDone {
    pub(crate) view: Option<carom_api::Group>,
    pub(crate) list: Vec<carom_api::Group>,
    /// The row of the group message a `Send` queued (or had queued, for a repeated token).
    pub(crate) message_row: Option<i64>,
}

/// What a store job the machine asked for produced.
enum Written {
    Nothing,
    GroupMessage(Option<i64>),
    Request { id: i64, displaced: Forgotten },
    Forgotten(Forgotten),
    Erased { count: usize, next: Option<u64> },
}

/// The time, read once per input.
fn now() -> Now {
    Now {
        at: view::monotonic(),
        wall_ms: unix_ms(),
    }
}

pub(crate) struct Core<T: Transport> {
    shared: Arc<Shared>,
    transport: Arc<T>,
    config: EngineConfig,
    inbox: mpsc::UnboundedReceiver<CoreMsg>,
    machine: Machine,
    /// The way to each connection the machine knows.
    commands: HashMap<ConnId, mpsc::UnboundedSender<ConnCmd>>,
}

impl<T: Transport> Core<T> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        transport: Arc<T>,
        config: EngineConfig,
        inbox: mpsc::UnboundedReceiver<CoreMsg>,
    ) -> Core<T> {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let expires_at = shared.session_config().certificate.expires_at();
        let identity = shared.session_config().identity.clone();
        let machine = Machine::new(identity, config.clone(), expires_at, seed, now());
        Core {
            shared,
            transport,
            config,
            inbox,
            machine,
            commands: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        // The contacts table, once: from here on the machine keeps it current.
        let known = self
            .shared
            .store
            .read(|s| {
                let mut contacts = Vec::new();
                for c in s.contacts()? {
                    contacts.push((address_of(&c.identity)?, Known::from(&c)));
                }
                let mut groups = Vec::new();
                for g in s.groups()? {
                    groups.push((
                        GroupId(g.group_id),
                        g.state,
                        g.keep_history,
                        s.group_operations(g.row)?,
                    ));
                }
                let erasure = (s.next_expiry()?, s.erasure_high_water()?);
                Ok((contacts, s.outbox_contacts()?, groups, erasure))
            })
            .await;
        let (contacts, queued, groups, (next_expiry, erasure_high_water)) =
            known.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the contacts; starting with none");
                Default::default()
            });
        self.machine.handle(
            Input::Loaded {
                contacts,
                queued,
                groups,
                next_expiry,
                erasure_high_water,
            },
            now(),
        );
        self.execute();
        loop {
            // No fixed tick: the core wakes when the machine's earliest timer is due, or for
            // a message.
            let deadline = tokio::time::Instant::from_std(self.machine.poll_timeout(now()));
            tokio::select! {
                msg = self.inbox.recv() => match msg {
                    Some(CoreMsg::Shutdown { reply }) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(msg) => self.handle(msg),
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => self.machine.handle_timeout(now()),
            }
            self.execute();
        }
    }

    fn handle(&mut self, msg: CoreMsg) {
        let now = now();
        match msg {
            CoreMsg::ContactChanged { contact, row } => self
                .machine
                .handle(Input::ContactChanged { peer: contact, row }, now),
            CoreMsg::Queued { contact } => {
                self.machine.handle(Input::Queued { peer: contact }, now);
            }
            CoreMsg::Authenticated {
                conn,
                peer,
                peer_static,
                expires,
                commands,
                reply,
            } => {
                let tracked = commands.is_some();
                if let Some(commands) = commands {
                    self.commands.insert(conn, commands);
                }
                let admission =
                    self.machine
                        .authenticated(conn, peer, peer_static, expires, tracked);
                let _ = reply.send(admission);
            }
            CoreMsg::Established { up, reply } => {
                let _ = reply.send(self.machine.established(up, now));
            }
            CoreMsg::ContactMessage {
                peer,
                message,
                reply,
            } => {
                let answer = self.machine.contact_message(peer, message, now);
                self.answer_after_commit(peer, answer, reply);
            }
            CoreMsg::Closed { conn, reason } => {
                self.commands.remove(&conn);
                self.machine.handle(Input::Closed { conn, reason }, now);
            }
            CoreMsg::Dialed { contact, reply } => {
                let conn = self.shared.next_conn_id();
                let ticket = self.machine.dialed(contact, conn, now).map(|t| {
                    let (commands, rx) = mpsc::unbounded_channel();
                    self.commands.insert(conn, commands);
                    Ticket {
                        conn,
                        contact_id: t.contact_id,
                        cached_static: t.cached_static,
                        commands: rx,
                    }
                });
                let _ = reply.send(ticket);
            }
            CoreMsg::DialFailed { contact, failure } => self.machine.handle(
                Input::DialFailed {
                    peer: contact,
                    failure,
                },
                now,
            ),
            CoreMsg::TorReady => self.machine.handle(Input::TorReady, now),
            CoreMsg::Group { command, reply } => {
                let decision = match self.machine.group_command(command, now) {
                    Ok(decision) => decision,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let mut done = GroupDone {
                    view: decision.view,
                    list: decision.list,
                    message_row: None,
                };
                let Some(write) = decision.write else {
                    let _ = reply.send(Ok(done));
                    return;
                };
                // Issued now, before the deliveries the machine queued: they read what this
                // writes.
                let written = self.write(StoreOp::Group(Box::new(write)));
                tokio::spawn(async move {
                    match written.await {
                        Ok(Written::GroupMessage(row)) => {
                            done.message_row = row;
                            let _ = reply.send(Ok(done));
                        }
                        Ok(_) => {
                            let _ = reply.send(Ok(done));
                        }
                        Err(e) => {
                            // The machine's copy is ahead of the store: it stays so until the
                            // next start, which reads the store again.
                            tracing::warn!(error = %e, "a group change was not stored");
                            let _ = reply.send(Err(e));
                        }
                    }
                });
            }
            CoreMsg::GroupSentTo {
                group,
                heads,
                reply,
            } => {
                let _ = reply.send(self.machine.group_sent_to(group, &heads));
            }
            CoreMsg::Result(input) => self.machine.handle(input, now),
            CoreMsg::Shutdown { .. } => {}
        }
    }

    /// Send the answer to a contact message once what it acknowledges is on disk.
    fn answer_after_commit(
        &self,
        peer: OnionAddress,
        answer: ContactReply,
        reply: oneshot::Sender<ContactOutcome>,
    ) {
        let ContactReply {
            commit,
            mut outcome,
        } = answer;
        let Some(op) = commit else {
            let _ = reply.send(outcome);
            return;
        };
        let written = self.write(op);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            match written.await {
                Ok(Written::Request { id, displaced }) => {
                    outcome.contact_id = Some(id);
                    let _ = reply.send(outcome);
                    let stored = Input::RequestStored {
                        peer,
                        id: Some(id),
                        displaced,
                    };
                    let _ = shared.core.send(CoreMsg::Result(stored));
                }
                Ok(_) => {
                    let _ = reply.send(outcome);
                }
                Err(e) => {
                    debug!(error = %e, "contact message not stored");
                    let _ = reply.send(ContactOutcome {
                        close: Some(CloseReason::Normal),
                        ..ContactOutcome::default()
                    });
                    reload(&shared, peer).await;
                }
            }
        });
    }

    /// Carry out what the machine decided, in order.
    fn execute(&mut self) {
        while let Some(effect) = self.machine.poll_effect() {
            match effect {
                Effect::Deliver(conn) => self.command(conn, ConnCmd::Deliver),
                Effect::Close(conn, reason) => self.command(conn, ConnCmd::Close(reason)),
                Effect::Dial(peer) => self.dial(peer),
                Effect::ForgetPath(peer) => self.transport.forget_path(&peer),
                Effect::Online(peer, online) => self.shared.set_online(peer, online),
                Effect::Store(op) => {
                    let peer = op_peer(&op);
                    let erasing = match op {
                        StoreOp::EraseExpired { up_to, .. } => Some(up_to),
                        _ => None,
                    };
                    let written = self.write(op);
                    let shared = Arc::clone(&self.shared);
                    tokio::spawn(async move {
                        match written.await {
                            Ok(Written::Forgotten(peers)) => {
                                let _ = shared
                                    .core
                                    .send(CoreMsg::Result(Input::Forgotten { peers }));
                            }
                            Ok(Written::Erased { count, next }) => {
                                // Memory-only messages (history off) expire at the same times.
                                let up_to = erasing.unwrap_or_default();
                                // (Not counted: nothing of them is in the file to checkpoint.)
                                erase_in_memory(&shared, up_to).await;
                                let next = match (next, shared.memory().next_expiry()) {
                                    (Some(a), Some(b)) => Some(a.min(b)),
                                    (a, b) => a.or(b),
                                };
                                let erased = Input::ExpiredErased {
                                    up_to: erasing.unwrap_or_default(),
                                    outcome: Some((count, next)),
                                };
                                let _ = shared.core.send(CoreMsg::Result(erased));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "a write of the core failed");
                                if let Some(up_to) = erasing {
                                    let failed = Input::ExpiredErased {
                                        up_to,
                                        outcome: None,
                                    };
                                    let _ = shared.core.send(CoreMsg::Result(failed));
                                }
                                if let Some(peer) = peer {
                                    reload(&shared, peer).await;
                                }
                            }
                        }
                    });
                }
                Effect::Checkpoint => {
                    let checkpoint = self.shared.store.read(|s| Ok(s.checkpoint()?));
                    self.feed_back(async move {
                        if let Err(e) = checkpoint.await {
                            // The WAL keeps older copies of erased pages until a checkpoint
                            // gets through; the next erasure or delete asks again.
                            tracing::warn!(error = %e, "the checkpoint after an erasure failed");
                        }
                        Input::Checkpointed
                    });
                }
                Effect::CheckOutbox(peer) => {
                    let key = peer.public_key();
                    let shared = Arc::clone(&self.shared);
                    let read = self.shared.store.read(move |s| {
                        let Some(c) = s.contact_by_identity(&key)? else {
                            return Ok(false);
                        };
                        Ok(s.has_outbox(c.id)? || shared.memory().has_outbox(c.id))
                    });
                    self.feed_back(async move {
                        let queued = read.await.unwrap_or(false);
                        Input::HasOutbox { peer, queued }
                    });
                }
                Effect::FindExpired {
                    enqueued_before_ms,
                    limit,
                } => {
                    let read = self
                        .shared
                        .store
                        .read(move |s| Ok(s.outbox_enqueued_before(enqueued_before_ms, limit)?));
                    self.feed_back(async move {
                        let ids = read
                            .await
                            .unwrap_or_default()
                            .iter()
                            .map(|item| item.id)
                            .collect();
                        Input::ExpiryCandidates { ids }
                    });
                }
                Effect::RenewCertificate => self.renew_certificate(),
            }
        }
    }

    fn command(&self, conn: ConnId, command: ConnCmd) {
        if let Some(commands) = self.commands.get(&conn) {
            let _ = commands.send(command);
        }
    }

    /// Run `work` beside the core and hand its result to the machine.
    fn feed_back(&self, work: impl Future<Output = Input> + Send + 'static) {
        let core = self.shared.core.clone();
        tokio::spawn(async move {
            let _ = core.send(CoreMsg::Result(work.await));
        });
    }

    fn dial(&self, peer: OnionAddress) {
        let transport = Arc::clone(&self.transport);
        let shared = Arc::clone(&self.shared);
        let timeout = self.config.dial_timeout;
        tokio::spawn(async move {
            let dialled = tokio::time::timeout(timeout, transport.dial(&peer)).await;
            let stream = match dialled {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    let _ = shared.core.send(CoreMsg::DialFailed {
                        contact: peer,
                        failure: DialFailure::of(&e),
                    });
                    return;
                }
                Err(_) => {
                    let _ = shared.core.send(CoreMsg::DialFailed {
                        contact: peer,
                        failure: DialFailure::timed_out(timeout),
                    });
                    return;
                }
            };
            let ticket = shared
                .ask(|reply| CoreMsg::Dialed {
                    contact: peer,
                    reply,
                })
                .await;
            if let Ok(Some(ticket)) = ticket {
                conn::run_initiator(shared, stream, peer, ticket).await;
            }
        });
    }

    /// Replace the device key while running, ahead of its certificate's expiry: a daemon that
    /// runs past it would be refused by every peer. New sessions use the new key; peers that
    /// cached the old one fall back to XX once (the protocol's stale-key path).
    fn renew_certificate(&self) {
        let identity = self.shared.session_config().identity.clone();
        let renewed = crate::new_device(identity, &self.config);
        let record = crate::identity_record(&renewed);
        let saved = self
            .shared
            .store
            .write(move |tx| Ok(tx.save_identity(&record)?));
        let shared = Arc::clone(&self.shared);
        self.feed_back(async move {
            match saved.await {
                Ok(()) => {
                    let expires_at = renewed.certificate.expires_at();
                    info!(
                        expires_at,
                        "renewed the device key ahead of its certificate's expiry"
                    );
                    shared.set_profile(&renewed);
                    Input::CertificateRenewed {
                        expires_at: Some(expires_at),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the device key; will retry");
                    Input::CertificateRenewed { expires_at: None }
                }
            }
        });
    }

    /// Send a write to the store now (so writes commit in the order the machine decided them);
    /// the future resolves after its COMMIT.
    fn write(&self, op: StoreOp) -> BoxedWrite {
        let store = &self.shared.store;
        match op {
            StoreOp::CacheStatic { peer, key, expires } => {
                let identity = peer.public_key();
                let written = store.write(move |tx| {
                    if let Some(mut c) = tx.contact_by_identity(&identity)? {
                        c.peer_static = Some(key);
                        c.peer_static_expires = Some(expires);
                        c.updated_at = unix_ms();
                        tx.update_contact(&c)?;
                    }
                    Ok(())
                });
                boxed(async move { written.await.map(|()| Written::Nothing) })
            }
            StoreOp::Presence { peer, online } => {
                let identity = peer.public_key();
                let written = store.write(move |tx| {
                    let now = unix_ms();
                    if let Some(mut c) = tx.contact_by_identity(&identity)? {
                        c.last_seen = Some(now);
                        c.updated_at = now;
                        tx.update_contact(&c)?;
                    }
                    let event = EventData::Presence(event::Presence {
                        address: peer.to_string(),
                        online,
                    });
                    append(tx, &event, now)?;
                    Ok(())
                });
                boxed(async move { written.await.map(|()| Written::Nothing) })
            }
            StoreOp::Event(event) => {
                let written = store.write(move |tx| append(tx, &event, unix_ms()));
                boxed(async move { written.await.map(|_| Written::Nothing) })
            }
            StoreOp::StoreRequest {
                peer,
                request,
                state,
                announce,
                max_pending,
            } => {
                let written = store.write(move |tx| {
                    store_request(tx, peer, &request, state, announce, max_pending)
                });
                boxed(async move {
                    written
                        .await
                        .map(|(id, displaced)| Written::Request { id, displaced })
                })
            }
            StoreOp::PeerStep {
                peer,
                step,
                offered,
            } => {
                let identity = peer.public_key();
                let written = store.write(move |tx| {
                    let now = unix_ms();
                    let Some(mut c) = tx.contact_by_identity(&identity)? else {
                        return Ok(());
                    };
                    if let Some(state) = step.state {
                        c.state = state;
                    }
                    if let Some(offered) = &offered {
                        c.offered_nickname = Some(offered.clone());
                    }
                    c.updated_at = now;
                    tx.update_contact(&c)?;
                    contact::apply(tx, c.id, &peer, &step, By::Them, &Vec::new, now)
                });
                boxed(async move { written.await.map(|()| Written::Nothing) })
            }
            StoreOp::Group(write) => {
                // A group message under a timer runs it from now, on the erasure clock.
                let erasure_now = self.shared.erasure_now();
                let written = store.write(move |tx| group_write(tx, &write, erasure_now));
                let shared = Arc::clone(&self.shared);
                boxed(async move {
                    let mut written = written.await?;
                    // History off: memory changes only now that the rest is committed (the
                    // store may run a transaction twice), and before any acknowledgement.
                    if let Some(to_memory) = written.to_memory.take() {
                        written.row = keep_group_in_memory(&shared, to_memory)?;
                    }
                    shared.expiring(written.expires_at);
                    if written.erased {
                        shared.erased();
                    }
                    Ok(Written::GroupMessage(written.row))
                })
            }
            StoreOp::EraseExpired { up_to, limit } => {
                let written = store.write(move |tx| erase_expired(tx, up_to, limit));
                boxed(async move {
                    written.await.map(|e| Written::Erased {
                        count: e.messages.len() + e.group_messages.len(),
                        next: e.next,
                    })
                })
            }
            StoreOp::Housekeeping {
                expired,
                retention,
                forget_rejected_before_ms,
            } => {
                let written = store.write(move |tx| {
                    housekeeping(tx, &expired, retention, forget_rejected_before_ms)
                });
                boxed(async move { written.await.map(Written::Forgotten) })
            }
        }
    }

    async fn shutdown(&mut self) {
        let open = self.machine.shutdown();
        self.execute();
        // Give connections a moment to write their Close.
        let deadline = view::monotonic() + Duration::from_secs(2);
        let mut open = open;
        while open > 0 && view::monotonic() < deadline {
            match tokio::time::timeout(Duration::from_millis(100), self.inbox.recv()).await {
                Ok(Some(CoreMsg::Closed { conn, .. })) => {
                    open = self.machine.forget_conn(conn);
                }
                Ok(Some(CoreMsg::Authenticated { reply, .. })) => {
                    let _ = reply.send(Admission::Refuse(CloseReason::ShuttingDown));
                }
                Ok(Some(CoreMsg::Established { reply, .. })) => {
                    let _ = reply.send(Registration::default());
                }
                Ok(Some(CoreMsg::ContactMessage { reply, .. })) => {
                    let _ = reply.send(ContactOutcome {
                        close: Some(CloseReason::ShuttingDown),
                        ..ContactOutcome::default()
                    });
                }
                Ok(Some(CoreMsg::Dialed { reply, .. })) => {
                    let _ = reply.send(None);
                }
                Ok(Some(CoreMsg::Group { reply, .. })) => {
                    let _ = reply.send(Err(crate::err::EngineError::ShuttingDown));
                }
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => break,
            }
        }
    }
}

type BoxedWrite = std::pin::Pin<Box<dyn Future<Output = Result<Written>> + Send + 'static>>;

fn boxed(f: impl Future<Output = Result<Written>> + Send + 'static) -> BoxedWrite {
    Box::pin(f)
}

/// The contact a write is about, to read again if it fails.
fn op_peer(op: &StoreOp) -> Option<OnionAddress> {
    match op {
        StoreOp::CacheStatic { peer, .. }
        | StoreOp::Presence { peer, .. }
        | StoreOp::StoreRequest { peer, .. }
        | StoreOp::PeerStep { peer, .. } => Some(*peer),
        StoreOp::Event(_)
        | StoreOp::Housekeeping { .. }
        | StoreOp::Group(_)
        | StoreOp::EraseExpired { .. } => None,
    }
}

/// Erase the memory-only messages whose time came by `up_to`, telling the frontends live.
async fn erase_in_memory(shared: &Arc<Shared>, up_to: u64) {
    let erased_in_groups = shared.memory().erase_expired_groups(up_to);
    shared.publish_live(erased_in_groups.into_iter().map(|(group, ids)| {
        EventData::GroupExpired(carom_api::event::GroupExpired {
            group: hex::encode(group),
            ids,
        })
    }));
    let erased = shared.memory().erase_expired(up_to);
    for (contact_id, ids) in erased {
        let identity = shared
            .store
            .read(move |s| Ok(s.contact(contact_id)?.map(|c| c.identity)))
            .await;
        let Ok(Some(identity)) = identity else {
            continue;
        };
        let Ok(peer) = crate::view::address_of(&identity) else {
            continue;
        };
        shared.publish_live([EventData::Expired(carom_api::event::Expired {
            contact: peer.to_string(),
            ids,
        })]);
    }
}

/// A write about `peer` failed: give the machine the row as the store has it.
async fn reload(shared: &Shared, peer: OnionAddress) {
    let key = peer.public_key();
    let row = shared
        .store
        .read(move |s| Ok(s.contact_by_identity(&key)?))
        .await;
    if let Ok(row) = row {
        let row = row.as_ref().map(Known::from);
        let _ = shared
            .core
            .send(CoreMsg::Result(Input::Reloaded { peer, row }));
    }
}

/// Store a stranger's request (they are not a contact yet), making room in a full list by
/// dropping the oldest requests. Returns the new contact's id and the dropped ones.
fn store_request(
    tx: &WriteTx<'_>,
    peer: OnionAddress,
    request: &ContactRequest,
    state: ContactState,
    announce: bool,
    max_pending: u64,
) -> Result<(i64, Forgotten)> {
    let now = unix_ms();
    // A full list of requests makes room by dropping the oldest, so the newest are always
    // there to review: refusing new ones instead would let a flood of old ones lock every
    // later request out.
    let pending = tx.count_contacts(ContactState::Pending)?;
    let excess = (pending + 1).saturating_sub(max_pending);
    let displaced = tx.oldest_contacts(
        ContactState::Pending,
        u64::MAX,
        u32::try_from(excess).unwrap_or(u32::MAX),
    )?;
    let mut dropped = Vec::with_capacity(displaced.len());
    for old in &displaced {
        let (peer, kept) = forget_contact(tx, old, Some(RemovalReason::TooManyRequests), now)?;
        dropped.push((peer, kept.as_ref().map(Known::from)));
    }
    if !dropped.is_empty() {
        info!(
            dropped = dropped.len(),
            "the list of contact requests is full: dropped the oldest"
        );
    }
    let id = match tx.contact_by_identity(&peer.public_key())? {
        // A co-member asking to become a contact: its row takes the request.
        Some(mut c) if c.state == ContactState::CoMember => {
            c.state = state;
            c.nickname.clone_from(&request.nickname);
            c.offered_nickname = Some(request.nickname.clone());
            c.greeting = Some(request.greeting.clone());
            c.declared_kind = view::store_peer_kind(request.kind);
            c.updated_at = now;
            tx.update_contact(&c)?;
            c.id
        }
        _ => tx.insert_contact(&NewContact {
            identity: peer.public_key(),
            state,
            nickname: request.nickname.clone(),
            offered_nickname: Some(request.nickname.clone()),
            greeting: Some(request.greeting.clone()),
            declared_kind: view::store_peer_kind(request.kind),
            now,
        })?,
    };
    if announce {
        let event = EventData::RequestReceived(event::RequestReceived {
            address: peer.to_string(),
            nickname: request.nickname.clone(),
            greeting: request.greeting.clone(),
            kind: view::peer_kind(view::store_peer_kind(request.kind)),
        });
        append(tx, &event, now)?;
    }
    Ok((id, dropped))
}

/// Erase at most `limit` messages due by `up_to`, and tell the frontends (one event per
/// conversation). Used by the core's erasure schedule and at start, before anything is served.
pub(crate) fn erase_expired(
    tx: &WriteTx<'_>,
    up_to: u64,
    limit: u32,
) -> Result<carom_store::Erased> {
    let erased = tx.erase_expired(up_to, limit)?;
    let mut by_contact: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for &(contact, row) in &erased.messages {
        by_contact.entry(contact).or_default().push(row);
    }
    let now = unix_ms();
    for (contact, ids) in by_contact {
        let Some(c) = tx.contact(contact)? else {
            continue;
        };
        let event = EventData::Expired(event::Expired {
            contact: address_of(&c.identity)?.to_string(),
            ids,
        });
        append(tx, &event, now)?;
    }
    let mut by_group: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for &(group, row) in &erased.group_messages {
        by_group.entry(group).or_default().push(row);
    }
    for (group_row, ids) in by_group {
        let Some(g) = tx.group_by_row(group_row)? else {
            continue;
        };
        let event = EventData::GroupExpired(event::GroupExpired {
            group: hex::encode(g.group_id),
            ids,
        });
        append(tx, &event, now)?;
    }
    let count = erased.messages.len() + erased.group_messages.len();
    if count > 0 {
        tracing::debug!(count, "erased expired messages");
    }
    Ok(erased)
}

/// Fail the expired outbox items, prune the event log, forget old rejections; returns the
/// forgotten contacts (with the row that stays, for one that still has group traffic queued).
fn housekeeping(
    tx: &WriteTx<'_>,
    expired: &[i64],
    retention: u64,
    forget_rejected_before_ms: u64,
) -> Result<Forgotten> {
    let now = unix_ms();
    for &id in expired {
        let Some(item) = tx.outbox_item(id)? else {
            continue;
        };
        tx.remove_outbox(item.id)?;
        let Some(c) = tx.contact(item.contact_id)? else {
            continue;
        };
        let address = address_of(&c.identity)?;
        if let Some(row) = item.message_row {
            tx.set_message_status(row, MessageStatus::Failed, Some("expired"), now)?;
            if let Some(m) = tx.message(row)? {
                append(tx, &view::status_event(&m, &address), now)?;
            }
        }
        if let Some(row) = item.group_message_row {
            crate::conn::group_delivery(tx, row, address, Some("expired"), now)?;
        }
    }
    tx.prune_events(
        retention,
        carom_api::event::CHURN,
        carom_api::event::CHURN_RETENTION,
    )?;
    // A rejection is remembered long enough to answer the same person asking again; after
    // that their row (and its memory) goes, so rejected strangers cannot accumulate. Blocked
    // contacts stay: that is what blocking is.
    let forgotten = tx.oldest_contacts(
        ContactState::Rejected,
        forget_rejected_before_ms,
        EXPIRY_BATCH,
    )?;
    let mut peers = Vec::with_capacity(forgotten.len());
    for c in &forgotten {
        let kept = match tx.forget_contact(c.id, now)? {
            Some(carom_store::Forgotten::KeptAsCoMember(row)) => Some(Known::from(&*row)),
            _ => None,
        };
        if let Ok(peer) = address_of(&c.identity) {
            peers.push((peer, kept));
        }
    }
    Ok(peers)
}

/// What a group write did.
struct GroupWritten {
    /// The row of the group message it stored or queued, if any.
    row: Option<i64>,
    /// When that message expires.
    expires_at: Option<u64>,
    /// A body was erased (a withdrawal).
    erased: bool,
    /// History off: the message or withdrawal, for memory once the write commits.
    to_memory: Option<ToMemory>,
}

/// A group message or withdrawal of a group with history off, ready for memory.
enum ToMemory {
    Out {
        group: GroupId,
        chat: NewGroupChat,
        /// Who to nudge: the recipients' sessions deliver it from memory.
        recipients: Vec<OnionAddress>,
    },
    In {
        group: GroupId,
        chat: NewGroupIncoming,
    },
    Withdraw {
        group: GroupId,
        group_row: i64,
        sender: OnionAddress,
        target: [u8; 16],
        /// Where a tombstone for a message not here yet goes (`None`: none is left).
        heads: Option<Vec<[u8; 32]>>,
    },
}

/// Keep a group write's memory part; the frontends hear of it live. Returns the row of the
/// message kept, if any.
fn keep_group_in_memory(shared: &Shared, to_memory: ToMemory) -> Result<Option<i64>> {
    let now = unix_ms();
    match to_memory {
        ToMemory::Out {
            group,
            chat,
            recipients,
        } => {
            let (m, fresh, forgotten) =
                shared
                    .memory()
                    .queue_group_chat(group.0, &chat)
                    .map_err(|_| {
                        crate::EngineError::InvalidState(format!(
                            "{} messages to a member wait for delivery in memory (the group's \
                         history is off); wait until they are delivered",
                            crate::memory::MAX_WAITING
                        ))
                    })?;
            if fresh {
                let group_hex = hex::encode(group.0);
                shared.publish_live(chat.unreachable.iter().filter_map(|(key, why)| {
                    Some(EventData::GroupDelivery(event::GroupDelivered {
                        group: group_hex.clone(),
                        id: m.row,
                        recipient: address_of(key).ok()?.to_string(),
                        status: carom_api::DeliveryStatus::Failed,
                        failure: Some(why.clone()),
                    }))
                }));
                publish_group_forgotten(shared, group, forgotten);
                shared.expiring(m.expires_at);
                for contact in recipients {
                    let _ = shared.core.send(CoreMsg::Queued { contact });
                }
            }
            Ok(Some(m.row))
        }
        ToMemory::In { group, chat } => {
            let (m, fresh, forgotten) = shared.memory().receive_group(group.0, &chat);
            if fresh {
                shared.publish_live([EventData::GroupMessage(event::GroupMessageRef {
                    group: hex::encode(group.0),
                    id: m.row,
                    sender: address_of(&chat.sender)?.to_string(),
                    msg_id: hex::encode(m.msg_id),
                })]);
                publish_group_forgotten(shared, group, forgotten);
                shared.expiring(m.expires_at);
                return Ok(Some(m.row));
            }
            Ok(None)
        }
        ToMemory::Withdraw {
            group,
            group_row,
            sender,
            target,
            heads,
        } => {
            let withdrawn = shared.memory().withdraw_group_incoming(
                group.0,
                group_row,
                &sender.public_key(),
                &target,
                heads.as_deref(),
                now,
            );
            if let Some((tombstone, true)) = withdrawn {
                shared.publish_live([EventData::GroupDeleted(event::GroupDeleted {
                    group: hex::encode(group.0),
                    id: tombstone.row,
                    msg_id: hex::encode(tombstone.msg_id),
                    for_everyone: true,
                    by: event::By::Them,
                })]);
            }
            Ok(None)
        }
    }
}

/// Memory-only group messages forgotten to make room: frontends learn their rows are gone.
fn publish_group_forgotten(shared: &Shared, group: GroupId, rows: Vec<i64>) {
    if !rows.is_empty() {
        shared.publish_live([EventData::GroupExpired(event::GroupExpired {
            group: hex::encode(group.0),
            ids: rows,
        })]);
    }
}

/// Carry out a group write in its transaction: our standing, the operations, what is queued
/// for whom, an incoming or outgoing message (or, with history off, what memory is to keep
/// once it commits), the events.
fn group_write(tx: &WriteTx<'_>, write: &GroupWrite, erasure_now: u64) -> Result<GroupWritten> {
    let now = unix_ms();
    let row = match tx.group(&write.group.0)? {
        Some(g) => {
            if let Some(state) = write.state
                && state != g.state
            {
                tx.set_group_state(g.row, state, now)?;
            }
            if let Some(keep) = write.keep_history
                && keep != g.keep_history
            {
                tx.set_group_keep_history(g.row, keep, now)?;
            }
            g.row
        }
        None => {
            tx.insert_group(
                &write.group.0,
                write.state.unwrap_or(GroupState::Invited),
                now,
            )?
            .row
        }
    };
    tx.add_group_operations(row, &write.ops)?;
    // Everyone this sends to has a row (a co-member's, if they are no contact).
    let mut rows = std::collections::HashMap::with_capacity(write.peers.len());
    for (peer, name, kind) in &write.peers {
        let id =
            tx.ensure_co_member(&peer.public_key(), name, view::store_peer_kind(*kind), now)?;
        rows.insert(*peer, id);
    }
    let row_of = |peer: &OnionAddress| {
        rows.get(peer)
            .copied()
            .ok_or_else(|| crate::EngineError::bug("group traffic for a peer without a row"))
    };
    for (peer, payload) in &write.send {
        tx.queue_group_operations(row_of(peer)?, payload, now)?;
    }
    for event in &write.events {
        append(tx, event, now)?;
    }
    let group = hex::encode(write.group.0);
    let mut message_row = None;
    let mut expires_at = None;
    if let Some(out) = &write.chat_out {
        let mut recipients = Vec::with_capacity(out.recipients.len());
        for peer in &out.recipients {
            recipients.push((row_of(peer)?, peer.public_key()));
        }
        let chat = NewGroupChat {
            group_row: row,
            sender: out.sender.public_key(),
            msg_id: out.msg_id.0,
            heads: out.heads.iter().map(|h| h.0).collect(),
            sent_at: out.sent_at,
            body: out.body.clone(),
            reply_to: out.reply_to.map(|r| r.0),
            client_token: out.client_token.clone(),
            recipients,
            unreachable: out
                .unreachable
                .iter()
                .map(|p| (p.public_key(), crate::groups::BLOCKED.to_owned()))
                .collect(),
            payload: out.payload.clone(),
            now,
            expires_after: out.expires_after,
            expires_from: Some(erasure_now),
        };
        if write.in_memory {
            return Ok(GroupWritten {
                row: None,
                expires_at: None,
                erased: false,
                to_memory: Some(ToMemory::Out {
                    group: write.group,
                    chat,
                    recipients: out.recipients.clone(),
                }),
            });
        }
        let queued = tx.queue_group_chat(&chat)?;
        let m = match &queued {
            GroupQueued::New(m) | GroupQueued::Existing(m) => m,
        };
        expires_at = m.expires_at;
        message_row = Some(match queued {
            GroupQueued::New(m) => {
                for peer in &out.unreachable {
                    let event = EventData::GroupDelivery(event::GroupDelivered {
                        group: group.clone(),
                        id: m.row,
                        recipient: peer.to_string(),
                        status: carom_api::DeliveryStatus::Failed,
                        failure: Some(crate::groups::BLOCKED.to_owned()),
                    });
                    append(tx, &event, now)?;
                }
                m.row
            }
            GroupQueued::Existing(m) => m.row,
        });
    }
    if let Some(chat) = &write.chat_in {
        let new = NewGroupIncoming {
            group_row: row,
            sender: chat.sender.public_key(),
            msg_id: chat.msg_id.0,
            heads: chat.heads.iter().map(|h| h.0).collect(),
            sent_at: chat.sent_at,
            body: chat.body.clone(),
            reply_to: chat.reply_to.map(|r| r.0),
            now,
            expires_after: chat.expires_after,
            expires_from: Some(erasure_now),
        };
        // A copy stored before the history was turned off is a duplicate.
        if write.in_memory
            && tx
                .group_message_from(row, &new.sender, &new.msg_id)?
                .is_none()
        {
            return Ok(GroupWritten {
                row: None,
                expires_at: None,
                erased: false,
                to_memory: Some(ToMemory::In {
                    group: write.group,
                    chat: new,
                }),
            });
        }
        if let GroupReceived::New(m) = tx.store_group_incoming(&new)? {
            expires_at = m.expires_at;
            let event = EventData::GroupMessage(event::GroupMessageRef {
                group: group.clone(),
                id: m.row,
                sender: chat.sender.to_string(),
                msg_id: hex::encode(m.msg_id),
            });
            append(tx, &event, now)?;
            message_row = Some(m.row);
        }
    }
    let mut erased = false;
    if let Some(w) = &write.withdraw_in {
        let heads: Vec<[u8; 32]> = w.heads.iter().map(|h| h.0).collect();
        // A message stored before the history was turned off is erased from the store.
        if write.in_memory
            && tx
                .group_message_from(row, &w.sender.public_key(), &w.target.0)?
                .is_none()
        {
            return Ok(GroupWritten {
                row: message_row,
                expires_at,
                erased,
                to_memory: Some(ToMemory::Withdraw {
                    group: write.group,
                    group_row: row,
                    sender: w.sender,
                    target: w.target.0,
                    heads: w.may_precede.then_some(heads),
                }),
            });
        }
        let withdrawn = tx.withdraw_group_incoming(
            row,
            &w.sender.public_key(),
            &w.target.0,
            w.may_precede.then_some(heads.as_slice()),
            now,
        )?;
        let body_erased = withdrawn.as_ref().is_some_and(|(_, erased)| *erased);
        // Frontends that showed it learn it is gone; one for a message we never had changes
        // nothing they show.
        if let Some((tombstone, true)) = withdrawn {
            let event = EventData::GroupDeleted(event::GroupDeleted {
                group: group.clone(),
                id: tombstone.row,
                msg_id: hex::encode(tombstone.msg_id),
                for_everyone: true,
                by: event::By::Them,
            });
            append(tx, &event, now)?;
        }
        erased = body_erased;
    }
    Ok(GroupWritten {
        row: message_row,
        expires_at,
        erased,
        to_memory: None,
    })
}
