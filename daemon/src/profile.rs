//! The profile's lifecycle: none → (create) → unlocked; locked → (unlock) → unlocked.
//!
//! Tor and the engine start only once the profile is unlocked, because the onion service runs
//! under the identity key kept in the encrypted store.

use std::path::{Path, PathBuf};

use carom_api::{self as api, ErrorKind, ErrorObject, ProfileState};
use carom_engine::{Engine, EngineConfig, Profile};
use carom_store::StoreRead as _;
use carom_store::{KdfParams, KeyFile, Protection, Store};
use carom_tor::{
    ArtiConfig, ArtiTransport, Bridges, SystemTorConfig, SystemTorTransport, TorNetwork,
};
use tokio::sync::{RwLock, RwLockReadGuard};
use zeroize::Zeroizing;

use crate::paths::{Paths, private_dir};

/// How to run Tor.
#[derive(Clone, Debug)]
pub(crate) struct TorSettings {
    /// The system's tor instead of the embedded arti (`[tor] backend = "system"`).
    pub(crate) system: Option<SystemTorConfig>,
    /// caromd.toml's bridges and transport programs (checked at start); the profile's own
    /// lines, if it has any, replace these lines.
    pub(crate) bridges: Bridges,
    pub(crate) arti_config: Option<PathBuf>,
    pub(crate) pow: bool,
    pub(crate) dangerously_trust_everyone: bool,
}

enum State {
    /// No profile on disk.
    Missing,
    /// A profile whose key is protected, not yet unlocked.
    Locked,
    /// Running.
    Running { engine: Engine, protected: bool },
    /// Shut down.
    Stopped,
}

/// Owns the profile and, once unlocked, the engine.
pub(crate) struct Profiles {
    paths: Paths,
    ephemeral: bool,
    tor: TorSettings,
    engine_config: EngineConfig,
    state: RwLock<State>,
    /// The bridges the running Tor was given, and where they came from.
    bridges: std::sync::Mutex<api::TorBridges>,
    /// Set when a running engine's store takes itself out of service: the daemon then stops.
    store_failed: tokio::sync::watch::Sender<bool>,
}

/// Read access to the running engine.
pub(crate) type EngineRef<'a> = tokio::sync::RwLockReadGuard<'a, Engine>;

/// What `tor.bridges` says before Tor has started, and for the system's tor.
fn no_bridges() -> api::TorBridges {
    api::TorBridges {
        lines: Vec::new(),
        source: api::BridgeSource::None,
        at_next_start: Vec::new(),
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorObject {
    ErrorObject::new(kind, message)
}

/// An API error for a store failure (its message names the file, never a key).
pub(crate) fn store_error(e: &carom_store::Error) -> ErrorObject {
    err(carom_engine::store_kind(e), e.to_string())
}

impl Profiles {
    pub(crate) fn new(
        paths: Paths,
        ephemeral: bool,
        tor: TorSettings,
        engine_config: EngineConfig,
    ) -> Profiles {
        let state = if ephemeral || !paths.key_file().exists() {
            State::Missing
        } else {
            State::Locked
        };
        Profiles {
            paths,
            ephemeral,
            tor,
            engine_config,
            state: RwLock::new(state),
            bridges: std::sync::Mutex::new(no_bridges()),
            store_failed: tokio::sync::watch::channel(false).0,
        }
    }

    /// Becomes `true` when the running engine's store has taken itself out of service (a bug
    /// left its connection in doubt): every later call would fail, so the daemon must stop and
    /// say why rather than look alive.
    pub(crate) fn store_failed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.store_failed.subscribe()
    }

    /// Pass on the engine's store failure to [`Profiles::store_failed`].
    fn watch_store(&self, engine: &Engine) {
        let mut out_of_service = engine.store_out_of_service();
        let failed = self.store_failed.clone();
        tokio::spawn(async move {
            if out_of_service.wait_for(|failed| *failed).await.is_ok() {
                failed.send_replace(true);
            }
        });
    }

    pub(crate) fn paths(&self) -> &Paths {
        &self.paths
    }

    /// At start: create the RAM-only profile, or unlock an unprotected profile, or unlock
    /// with the passphrase from `passphrase_file`.
    pub(crate) async fn start(
        &self,
        passphrase_file: Option<&std::path::Path>,
    ) -> Result<(), String> {
        if self.ephemeral {
            tracing::warn!(
                "RAM-only profile: nothing is written to disk, and everything is lost at exit"
            );
            return self
                .create(&api::ProfileCreate {
                    passphrase: None,
                    no_passphrase: true,
                })
                .await
                .map(drop)
                .map_err(|e| e.message);
        }
        // Before anything reads the profile: only the daemon holding the lock gets here, and
        // no creation can be under way yet.
        recover_interrupted_creation(&self.paths)?;
        if !matches!(*self.state.read().await, State::Locked) {
            return Ok(());
        }
        let key_file = self.paths.key_file();
        let protected = KeyFile::is_protected(&key_file).map_err(|e| e.to_string())?;
        if !protected {
            tracing::warn!(
                "this profile is not protected by a passphrase: anyone who can read its files can read it"
            );
            return self.unlock("").await.map(drop).map_err(|e| e.message);
        }
        if let Some(file) = passphrase_file {
            let text =
                Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
                    format!("cannot read the passphrase file {}: {e}", file.display())
                })?);
            let passphrase = text.lines().next().unwrap_or_default();
            return self
                .unlock(passphrase)
                .await
                .map(drop)
                .map_err(|e| e.message);
        }
        tracing::info!("the profile is locked: unlock it with `carom unlock`");
        Ok(())
    }

    /// The profile's state, whether it is protected, and whether it is RAM-only.
    pub(crate) async fn info(&self) -> (ProfileState, Option<bool>) {
        match &*self.state.read().await {
            State::Missing | State::Stopped => (ProfileState::None, None),
            State::Locked => (ProfileState::Locked, Some(true)),
            State::Running { protected, .. } => (ProfileState::Unlocked, Some(*protected)),
        }
    }

    pub(crate) fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// The running engine, or the error that explains why there is none.
    pub(crate) async fn engine(&self) -> Result<EngineRef<'_>, ErrorObject> {
        RwLockReadGuard::try_map(self.state.read().await, |s| match s {
            State::Running { engine, .. } => Some(engine),
            _ => None,
        })
        .map_err(|guard| match &*guard {
            State::Missing => err(
                ErrorKind::NoProfile,
                "there is no profile yet: create one with `carom init`",
            ),
            State::Locked => err(ErrorKind::Locked, "the profile is locked: `carom unlock`"),
            State::Stopped | State::Running { .. } => {
                err(ErrorKind::ShuttingDown, "the daemon is shutting down")
            }
        })
    }

    /// The bridges Tor is to use, given the profile's own lines (`None`: it has none, and
    /// caromd.toml's apply), with caromd.toml's transport programs; and where they come from.
    fn bridges_in_force(&self, profile_lines: Option<Vec<String>>) -> (Bridges, api::BridgeSource) {
        let (lines, source) = match profile_lines {
            Some(lines) => (lines, api::BridgeSource::Profile),
            None if self.tor.bridges.is_empty() => (Vec::new(), api::BridgeSource::None),
            None => (self.tor.bridges.lines.clone(), api::BridgeSource::Config),
        };
        let bridges = Bridges {
            lines,
            transport_programs: self.tor.bridges.transport_programs.clone(),
        };
        (bridges, source)
    }

    /// `tor.bridges`.
    pub(crate) async fn tor_bridges(&self) -> Result<api::TorBridges, ErrorObject> {
        let _engine = self.engine().await?;
        Ok(lock(&self.bridges).clone())
    }

    /// `tor.set_bridges`: the lines (or, for `null`, caromd.toml's again) with caromd.toml's
    /// transport programs, applied to the running Tor and then kept in the profile.
    pub(crate) async fn set_tor_bridges(
        &self,
        params: api::TorSetBridges,
    ) -> Result<api::TorBridges, ErrorObject> {
        let engine = self.engine().await?;
        let (bridges, source) = self.bridges_in_force(params.lines.clone());
        let lines = bridges.lines.clone();
        let applied = engine
            .set_tor_bridges(bridges, params.lines)
            .await
            .map_err(ErrorObject::from)?;
        let result = api::TorBridges {
            lines,
            source,
            at_next_start: applied
                .at_next_start
                .iter()
                .map(|n| u32::try_from(*n).unwrap_or(u32::MAX))
                .collect(),
        };
        *lock(&self.bridges) = api::TorBridges {
            at_next_start: Vec::new(),
            ..result.clone()
        };
        Ok(result)
    }

    /// `profile.create`.
    pub(crate) async fn create(
        &self,
        params: &api::ProfileCreate,
    ) -> Result<api::Identity, ErrorObject> {
        let mut state = self.state.write().await;
        if !matches!(*state, State::Missing) {
            return Err(err(ErrorKind::ProfileExists, "a profile exists already"));
        }
        let passphrase = match (&params.passphrase, params.no_passphrase) {
            (Some(p), false) if !p.expose().is_empty() => Some(p.clone()),
            (None, true) => None,
            (Some(_), true) => {
                return Err(err(
                    ErrorKind::InvalidParams,
                    "give a passphrase or no_passphrase, not both",
                ));
            }
            _ => {
                return Err(err(
                    ErrorKind::PassphraseRequired,
                    "a passphrase is required (or choose no_passphrase explicitly)",
                ));
            }
        };
        let protected = passphrase.is_some();
        let created = if self.ephemeral {
            let config = self.engine_config.clone();
            tokio::task::spawn_blocking(move || {
                let mut store = Store::open_in_memory().map_err(|e| store_error(&e))?;
                let profile =
                    carom_engine::create_profile(&mut store, &config).map_err(ErrorObject::from)?;
                Ok::<_, ErrorObject>((store, profile))
            })
            .await
            .map_err(|_| err(ErrorKind::Internal, "profile creation was interrupted"))
            .flatten()
        } else {
            let paths = self.paths.clone();
            let config = self.engine_config.clone();
            tokio::task::spawn_blocking(move || {
                create_on_disk(
                    &paths,
                    passphrase.as_ref().map(api::Passphrase::expose),
                    &config,
                )
            })
            .await
            .map_err(|_| err(ErrorKind::Internal, "profile creation was interrupted"))
            .flatten()
        };
        let (store, profile) = created.map_err(|e| self.after_failed_creation(&mut state, e))?;
        if !protected && !self.ephemeral {
            tracing::warn!(
                "created a profile WITHOUT a passphrase: anyone who can read its files can read it"
            );
        }
        let engine = self
            .start_engine(store, &profile)
            .await
            .map_err(|e| self.after_failed_creation(&mut state, e))?;
        let identity = engine.identity();
        self.watch_store(&engine);
        *state = State::Running { engine, protected };
        tracing::info!(address = %profile.identity.address().redacted(), "profile created");
        Ok(identity)
    }

    /// A creation that failed after its commit point (Tor did not start, say) left a complete
    /// profile on disk: the state says so, so that `profile.unlock` opens it, instead of
    /// claiming there is none while `profile.create` refuses to overwrite it.
    fn after_failed_creation(&self, state: &mut State, error: ErrorObject) -> ErrorObject {
        if !self.ephemeral && self.paths.key_file().exists() {
            *state = State::Locked;
            tracing::warn!(
                error = %error.message,
                "the profile was created but could not be started: unlock it to try again"
            );
        }
        error
    }

    /// `profile.unlock`.
    pub(crate) async fn unlock(&self, passphrase: &str) -> Result<api::Identity, ErrorObject> {
        let mut state = self.state.write().await;
        match *state {
            State::Locked => {}
            State::Missing => {
                return Err(err(
                    ErrorKind::NoProfile,
                    "there is no profile yet: `carom init`",
                ));
            }
            State::Running { .. } => {
                return Err(err(
                    ErrorKind::AlreadyUnlocked,
                    "the profile is unlocked already",
                ));
            }
            State::Stopped => return Err(err(ErrorKind::ShuttingDown, "shutting down")),
        }
        let paths = self.paths.clone();
        let config = self.engine_config.clone();
        let passphrase = Zeroizing::new(passphrase.to_owned());
        let (store, profile, protected) = tokio::task::spawn_blocking(move || {
            let key_file = paths.key_file();
            let protected = KeyFile::is_protected(&key_file).map_err(|e| store_error(&e))?;
            let key = KeyFile::unlock(&key_file, protected.then_some(passphrase.as_bytes()))
                .map_err(|e| store_error(&e))?;
            let mut store = Store::open(&paths.database(), &key).map_err(|e| store_error(&e))?;
            let profile =
                carom_engine::load_profile(&mut store, &config).map_err(ErrorObject::from)?;
            Ok::<_, ErrorObject>((store, profile, protected))
        })
        .await
        .map_err(|_| err(ErrorKind::Internal, "unlocking was interrupted"))??;
        let engine = self.start_engine(store, &profile).await?;
        let identity = engine.identity();
        self.watch_store(&engine);
        *state = State::Running { engine, protected };
        tracing::info!(address = %profile.identity.address().redacted(), "profile unlocked");
        Ok(identity)
    }

    /// `profile.change_passphrase`: rewrap the database key; the database is not rewritten.
    pub(crate) async fn change_passphrase(
        &self,
        params: &api::ProfileChangePassphrase,
    ) -> Result<(), ErrorObject> {
        if self.ephemeral {
            return Err(err(
                ErrorKind::InvalidState,
                "a RAM-only profile has no passphrase",
            ));
        }
        let mut state = self.state.write().await;
        if matches!(*state, State::Missing | State::Stopped) {
            return Err(err(ErrorKind::NoProfile, "there is no profile yet"));
        }
        let new = match (&params.new, params.no_passphrase) {
            (Some(p), false) if !p.expose().is_empty() => Some(p.clone()),
            (None, true) => None,
            _ => {
                return Err(err(
                    ErrorKind::PassphraseRequired,
                    "give the new passphrase, or no_passphrase explicitly",
                ));
            }
        };
        let key_file = self.paths.key_file();
        let old = params.old.clone();
        let now_protected = new.is_some();
        tokio::task::spawn_blocking(move || {
            let protected = KeyFile::is_protected(&key_file)?;
            let protection = match &new {
                Some(p) => Protection::Passphrase(p.expose().as_bytes()),
                None => Protection::Unprotected,
            };
            KeyFile::change_passphrase(
                &key_file,
                protected.then_some(old.expose().as_bytes()),
                protection,
                KdfParams::default(),
            )
        })
        .await
        .map_err(|_| err(ErrorKind::Internal, "interrupted"))?
        .map_err(|e| store_error(&e))?;
        if let State::Running { protected, .. } = &mut *state {
            *protected = now_protected;
        }
        Ok(())
    }

    async fn start_engine(&self, store: Store, profile: &Profile) -> Result<Engine, ErrorObject> {
        if let Some(system) = &self.tor.system {
            let transport = SystemTorTransport::start(system.clone(), &profile.identity)
                .await
                .map_err(|e| {
                    err(
                        ErrorKind::Internal,
                        format!("the system's tor could not host Carom's service: {e}"),
                    )
                })?;
            return Engine::start(store, profile, transport, self.engine_config.clone())
                .map_err(ErrorObject::from);
        }
        let (bridges, source) =
            self.bridges_in_force(store.tor_bridges().map_err(|e| store_error(&e))?);
        let lines = bridges.lines.clone();
        let mut arti = ArtiConfig::new(&self.tor_data_dir());
        arti.bridges = bridges;
        arti.network = match &self.tor.arti_config {
            Some(file) => TorNetwork::CustomFile(file.clone()),
            None => TorNetwork::Public,
        };
        arti.pow = self.tor.pow;
        arti.dangerously_trust_everyone = self.tor.dangerously_trust_everyone;
        let transport = ArtiTransport::start(arti, &profile.identity)
            .await
            .map_err(|e| match e {
                carom_tor::TransportError::Bridges(e) => err(
                    ErrorKind::InvalidState,
                    format!("Tor could not start with the profile's bridges: {e}"),
                ),
                e => err(ErrorKind::Internal, format!("Tor could not start: {e}")),
            })?;
        *lock(&self.bridges) = api::TorBridges {
            lines,
            source,
            at_next_start: Vec::new(),
        };
        Engine::start(store, profile, transport, self.engine_config.clone())
            .map_err(ErrorObject::from)
    }

    /// arti's state and cache: under the data directory, or (RAM-only) under the runtime
    /// directory, which is normally a tmpfs.
    fn tor_data_dir(&self) -> PathBuf {
        if self.ephemeral {
            self.paths
                .runtime_dir
                .join(format!("ephemeral-{}", std::process::id()))
        } else {
            self.paths.data_dir.clone()
        }
    }

    /// `profile.erase` (its confirmation was checked with its parameters): stop the engine,
    /// shred the key file first — from then on nothing of the profile can be decrypted, so an
    /// interruption after it leaves nothing readable — then remove the database with its WAL
    /// and Tor's state and cache. The daemon goes on without a profile; `profile.create` makes
    /// a new one (a new identity).
    pub(crate) async fn erase(&self) -> Result<api::ProfileErased, ErrorObject> {
        let mut state = self.state.write().await;
        match std::mem::replace(&mut *state, State::Missing) {
            State::Running { engine, .. } => {
                if let Err(e) = engine.shutdown().await {
                    tracing::warn!(error = %e, "the store did not close cleanly before erasure");
                }
            }
            State::Locked => {}
            State::Missing => {
                return Err(err(ErrorKind::NoProfile, "there is no profile to erase"));
            }
            State::Stopped => {
                *state = State::Stopped;
                return Err(err(ErrorKind::ShuttingDown, "the daemon is shutting down"));
            }
        }
        if self.ephemeral {
            let dir = self.tor_data_dir();
            let _ = std::fs::remove_dir_all(&dir);
            tracing::warn!("erased the RAM-only profile");
            return Ok(api::ProfileErased {
                shredded: Vec::new(),
                removed: vec![dir.display().to_string()],
            });
        }
        let paths = self.paths.clone();
        let erased = tokio::task::spawn_blocking(move || erase_on_disk(&paths))
            .await
            .map_err(|_| err(ErrorKind::Internal, "erasure was interrupted"))?;
        if self.paths.key_file().exists() {
            // The key file could not be shredded: the profile is still there, locked.
            *state = State::Locked;
        }
        let erased = erased?;
        tracing::warn!(
            shredded = erased.shredded.len(),
            removed = erased.removed.len(),
            "erased the profile"
        );
        Ok(erased)
    }

    /// Stop the engine (closing sessions, stopping Tor, checkpointing the store).
    pub(crate) async fn shutdown(&self) {
        let previous = std::mem::replace(&mut *self.state.write().await, State::Stopped);
        if let State::Running { engine, .. } = previous
            && let Err(e) = engine.shutdown().await
        {
            tracing::warn!(error = %e, "the store did not close cleanly");
        }
        if self.ephemeral {
            let _ = std::fs::remove_dir_all(self.tor_data_dir());
        }
    }
}

/// What an erasure does, in order: the key file (and a staged one) shredded, then the
/// database with its WAL, then Tor's directory under the data directory.
fn erase_on_disk(paths: &Paths) -> Result<api::ProfileErased, ErrorObject> {
    let mut done = api::ProfileErased::default();
    let key_file = paths.key_file();
    // A creation interrupted before its key was placed leaves a staged key file: it wraps the
    // same kind of secret.
    for key in [key_file.clone(), KeyFile::staging_path(&key_file)] {
        if KeyFile::shred(&key).map_err(|e| store_error(&e))? {
            done.shredded.push(key.display().to_string());
        }
    }
    let database = paths.database();
    let present: Vec<PathBuf> = Store::database_files(&database)
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    Store::delete_files(&database).map_err(|e| store_error(&e))?;
    done.removed
        .extend(present.iter().map(|p| p.display().to_string()));
    let tor = paths.data_dir.join("tor");
    match std::fs::remove_dir_all(&tor) {
        Ok(()) => done.removed.push(tor.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(err(
                ErrorKind::Internal,
                format!("cannot remove {}: {e}", tor.display()),
            ));
        }
    }
    Ok(done)
}

/// The steps of [`create_on_disk`], in order. Each is on disk when it is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CreationStep {
    /// The key file is written and flushed under its staging name, which marks a creation
    /// under way.
    KeyStaged,
    /// The empty database is in place under its own name.
    DatabaseCreated,
    /// The identity is committed in it.
    IdentitySaved,
    /// The key file is linked to its own name: the profile exists.
    KeyPlaced,
}

impl CreationStep {
    fn name(self) -> &'static str {
        match self {
            CreationStep::KeyStaged => "key-staged",
            CreationStep::DatabaseCreated => "database-created",
            CreationStep::IdentitySaved => "identity-saved",
            CreationStep::KeyPlaced => "key-placed",
        }
    }
}

/// In debug builds, `CAROMD_CRASH_AFTER=<step>` (a [`CreationStep::name`]) makes the daemon
/// kill itself with SIGKILL the moment that step of profile creation is done, as a crash or a
/// `kill -9` would at that moment. It is how `daemon/tests/profile_crash.rs` stops the real
/// creation code after each of its steps. Release builds have no such hook.
#[cfg(debug_assertions)]
const CRASH_AFTER_VAR: &str = "CAROMD_CRASH_AFTER";

fn step_done(step: CreationStep) {
    tracing::debug!(step = step.name(), "profile creation step done");
    #[cfg(debug_assertions)]
    if std::env::var_os(CRASH_AFTER_VAR).is_some_and(|v| v == step.name()) {
        tracing::warn!(
            step = step.name(),
            "{CRASH_AFTER_VAR} is set: killing the daemon after this step of profile creation"
        );
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

/// Create the profile on disk so that a crash at any moment leaves either no profile (once
/// the next start has tidied up) or the complete profile, never a key file without its
/// database or a database without its identity:
///
/// 1. the key file is written and flushed under its staging name ([`KeyFile::stage`]); from
///    now on the staged file marks an unfinished creation;
/// 2. the database is created under its own name (atomically, by [`Store::create`]),
/// 3. the identity is committed in it,
/// 4. the staged key file is linked to its own name ([`carom_store::StagedKeyFile::commit`]):
///    the one atomic step after which the profile exists.
///
/// A crash before step 4 leaves the marker, and the next start removes the rest
/// ([`recover_interrupted_creation`]). A failure is cleaned up the same way at once.
fn create_on_disk(
    paths: &Paths,
    passphrase: Option<&str>,
    config: &EngineConfig,
) -> Result<(Store, Profile), ErrorObject> {
    private_dir(&paths.data_dir).map_err(|e| err(ErrorKind::Storage, e))?;
    // The start tidied up already; this covers a leftover of a failed clean-up since.
    recover_interrupted_creation(paths).map_err(|e| err(ErrorKind::Storage, e))?;
    if paths.database().exists() {
        return Err(err(
            ErrorKind::ProfileExists,
            format!(
                "{} exists without its key file; refusing to overwrite it",
                paths.database().display()
            ),
        ));
    }
    let protection = match passphrase {
        Some(p) => Protection::Passphrase(p.as_bytes()),
        None => Protection::Unprotected,
    };
    let staged = KeyFile::stage(&paths.key_file(), protection, KdfParams::default())
        .map_err(|e| store_error(&e))?;
    step_done(CreationStep::KeyStaged);
    let built = Store::create(&paths.database(), staged.key())
        .map_err(|e| store_error(&e))
        .and_then(|mut store| {
            step_done(CreationStep::DatabaseCreated);
            let profile =
                carom_engine::create_profile(&mut store, config).map_err(ErrorObject::from)?;
            step_done(CreationStep::IdentitySaved);
            Ok((store, profile))
        });
    let committed = built.and_then(|(store, profile)| {
        staged
            .commit()
            .map(|()| (store, profile))
            .map_err(|e| store_error(&e))
    });
    match committed {
        Ok(created) => {
            step_done(CreationStep::KeyPlaced);
            Ok(created)
        }
        Err(error) => {
            // The store is closed by now (dropped with the error), so its files can go. The
            // rule that tidies up after a crash decides what goes: should the commit have
            // linked the key file before failing, the profile is complete and stays.
            if let Err(e) = recover_interrupted_creation(paths) {
                tracing::warn!(error = %e, "could not tidy up after a failed profile creation");
            }
            Err(error)
        }
    }
}

/// Whether something is at `path` (a dangling symbolic link counts). Only "not found" means
/// no: an error that hides the answer must not pass for absence.
fn is_there(path: &Path) -> Result<bool, String> {
    match path.symlink_metadata() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot look at {}: {e}", path.display())),
    }
}

/// Removes what an interrupted [`create_on_disk`] left behind, so that the data directory
/// reads as "no profile" and a new creation can start. Returns whether there was anything.
///
/// The rule follows from the order of creation. The staged key file is on disk before
/// anything else is made, and the key file's own name appears only once everything else is
/// complete. So with the key file in place the profile is complete, and only a second name of
/// it may be left (a crash between the commit's link and its removal of the staging name);
/// without it, a staged key file says that the database beside it belongs to the unfinished
/// creation. A database with neither is not known to be ours to delete and stays
/// ([`create_on_disk`] then refuses to overwrite it). Half-built databases under temporary
/// names are never a profile's and always go.
///
/// Runs only under the daemon's single-instance lock, with no creation in progress.
fn recover_interrupted_creation(paths: &Paths) -> Result<bool, String> {
    let key = paths.key_file();
    let database = paths.database();
    let failed = |e: carom_store::Error| {
        format!(
            "cannot remove what an interrupted profile creation left in {}: {e}",
            paths.data_dir.display()
        )
    };
    let temporaries = Store::remove_creation_leftovers(&database).map_err(failed)?;
    if !is_there(&KeyFile::staging_path(&key))? {
        return Ok(!temporaries.is_empty());
    }
    if is_there(&key)? {
        KeyFile::remove_staged(&key).map_err(failed)?;
        tracing::info!(
            "removed a second name of the key file left by a crash just after it was created"
        );
        return Ok(true);
    }
    // The database first, the marker last: a crash in between leaves the marker, and the next
    // start finishes the job.
    Store::delete_files(&database).map_err(failed)?;
    KeyFile::remove_staged(&key).map_err(failed)?;
    tracing::warn!(
        "removed the remains of a profile creation that was interrupted: there is no profile; \
         create one with `carom init`"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(dir: &tempfile::TempDir) -> Paths {
        Paths {
            data_dir: dir.path().join("data"),
            runtime_dir: dir.path().join("run"),
        }
    }

    fn names(paths: &Paths) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&paths.data_dir)
            .expect("data directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn write(paths: &Paths, name: &str) {
        std::fs::write(paths.data_dir.join(name), name).expect("write");
    }

    /// A complete profile, as `create_on_disk` leaves it (with the daemon's own key
    /// derivation parameters, a fraction of a second with the optimised Argon2).
    fn complete(paths: &Paths) {
        let (store, _profile) =
            create_on_disk(paths, Some("pw"), &EngineConfig::default()).expect("created");
        store.close().expect("closed");
    }

    #[test]
    fn a_creation_leaves_only_the_profile_and_unlocks() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let paths = paths(&dir);
        complete(&paths);
        assert_eq!(names(&paths), ["profile.db", "profile.key"]);
        let key = KeyFile::unlock(&paths.key_file(), Some(b"pw")).expect("unlock");
        let mut store = Store::open(&paths.database(), &key).expect("open");
        carom_engine::load_profile(&mut store, &EngineConfig::default()).expect("identity");
        // An open profile is as safe as a closed one.
        assert!(!recover_interrupted_creation(&paths).expect("nothing to do"));
        store.close().expect("closed");
        assert_eq!(names(&paths), ["profile.db", "profile.key"]);
    }

    #[test]
    fn a_staged_key_file_without_the_key_file_takes_the_database_with_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let paths = paths(&dir);
        private_dir(&paths.data_dir).expect("data directory");
        for name in [
            ".profile.key.staged",
            "profile.db",
            "profile.db-wal",
            "profile.db-shm",
            ".profile.db.creating-0011223344556677",
            ".profile.db.creating-0011223344556677-wal",
            "caromd.lock",
        ] {
            write(&paths, name);
        }
        assert!(recover_interrupted_creation(&paths).expect("recovered"));
        assert_eq!(names(&paths), ["caromd.lock"]);
        // And then a creation works.
        complete(&paths);
    }

    #[test]
    fn with_the_key_file_in_place_only_the_second_name_goes() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let paths = paths(&dir);
        complete(&paths);
        // A crash between the commit's link and its removal of the staging name.
        std::fs::hard_link(paths.key_file(), KeyFile::staging_path(&paths.key_file()))
            .expect("second name");
        write(&paths, ".profile.db.creating-0011223344556677");
        assert!(recover_interrupted_creation(&paths).expect("recovered"));
        assert_eq!(names(&paths), ["profile.db", "profile.key"]);
        let key = KeyFile::unlock(&paths.key_file(), Some(b"pw")).expect("unlock");
        Store::open(&paths.database(), &key).expect("open");
    }

    #[test]
    fn a_database_without_any_key_file_is_never_deleted() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let paths = paths(&dir);
        private_dir(&paths.data_dir).expect("data directory");
        write(&paths, "profile.db");
        assert!(!recover_interrupted_creation(&paths).expect("nothing to do"));
        let refused = create_on_disk(&paths, None, &EngineConfig::default()).expect_err("refused");
        assert_eq!(refused.data.kind, ErrorKind::ProfileExists);
        assert_eq!(names(&paths), ["profile.db"]);
        assert_eq!(
            std::fs::read(paths.database()).expect("kept"),
            b"profile.db"
        );
    }

    #[test]
    fn erasing_shreds_the_key_then_removes_the_database_and_tor_state_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let paths = paths(&dir);
        complete(&paths);
        write(&paths, "profile.db-wal");
        write(&paths, "caromd.lock");
        std::fs::create_dir_all(paths.data_dir.join("tor").join("state")).expect("tor dir");
        std::fs::write(paths.data_dir.join("tor").join("state").join("guards"), "x")
            .expect("tor state");
        // The key file's inode, to see what happened to its bytes.
        let witness = dir.path().join("witness");
        std::fs::hard_link(paths.key_file(), &witness).expect("link");
        let before = std::fs::read(&witness).expect("key file");

        let erased = erase_on_disk(&paths).expect("erased");
        assert_eq!(erased.shredded, [paths.key_file().display().to_string()]);
        assert_eq!(
            erased.removed,
            [
                paths.database().display().to_string(),
                format!("{}-wal", paths.database().display()),
                paths.data_dir.join("tor").display().to_string(),
            ]
        );
        // Only the daemon's lock stays (it is the running daemon's, not the profile's).
        assert_eq!(names(&paths), ["caromd.lock"]);
        let after = std::fs::read(&witness).expect("witness");
        assert_eq!(after.len(), before.len());
        assert_ne!(
            after, before,
            "the key file was removed without being overwritten"
        );
        // Again: nothing left to do, and no error.
        assert_eq!(
            erase_on_disk(&paths).expect("nothing"),
            api::ProfileErased::default()
        );
    }
}
