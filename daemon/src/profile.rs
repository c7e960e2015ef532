//! The profile's lifecycle: none → (create) → unlocked; locked → (unlock) → unlocked.
//!
//! Tor and the engine start only once the profile is unlocked, because the onion service runs
//! under the identity key kept in the encrypted store.

use std::path::PathBuf;

use carom_api::{self as api, ErrorKind, ErrorObject, ProfileState};
use carom_engine::{Engine, EngineConfig, Profile};
use carom_store::{DbKey, KdfParams, KeyFile, Protection, Store};
use carom_tor::{ArtiConfig, ArtiTransport, TorNetwork};
use tokio::sync::{RwLock, RwLockReadGuard};
use zeroize::Zeroizing;

use crate::paths::{Paths, private_dir};

/// How to run Tor.
#[derive(Clone, Debug)]
pub(crate) struct TorSettings {
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
}

/// Read access to the running engine.
pub(crate) type EngineRef<'a> = tokio::sync::RwLockReadGuard<'a, Engine>;

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorObject {
    ErrorObject::new(kind, message)
}

/// An API error for a store failure (its message names the file, never a key).
pub(crate) fn store_error(e: &carom_store::Error) -> ErrorObject {
    err(carom_engine::store_kind(e), e.to_string())
}

/// An API error for an engine failure.
pub(crate) fn engine_error(e: &carom_engine::EngineError) -> ErrorObject {
    err(e.kind(), e.to_string())
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
        }
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
        let (store, profile) = if self.ephemeral {
            let config = self.engine_config.clone();
            tokio::task::spawn_blocking(move || {
                let mut store = Store::open_in_memory().map_err(|e| store_error(&e))?;
                let profile = carom_engine::create_profile(&mut store, &config)
                    .map_err(|e| engine_error(&e))?;
                Ok::<_, ErrorObject>((store, profile))
            })
            .await
            .map_err(|_| err(ErrorKind::Internal, "profile creation was interrupted"))??
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
            .map_err(|_| err(ErrorKind::Internal, "profile creation was interrupted"))??
        };
        if !protected && !self.ephemeral {
            tracing::warn!(
                "created a profile WITHOUT a passphrase: anyone who can read its files can read it"
            );
        }
        let engine = self.start_engine(store, &profile).await?;
        let identity = engine.identity();
        *state = State::Running { engine, protected };
        tracing::info!(address = %profile.identity.address().redacted(), "profile created");
        Ok(identity)
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
                carom_engine::load_profile(&mut store, &config).map_err(|e| engine_error(&e))?;
            Ok::<_, ErrorObject>((store, profile, protected))
        })
        .await
        .map_err(|_| err(ErrorKind::Internal, "unlocking was interrupted"))??;
        let engine = self.start_engine(store, &profile).await?;
        let identity = engine.identity();
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
        let mut arti = ArtiConfig::new(&self.tor_data_dir());
        arti.network = match &self.tor.arti_config {
            Some(file) => TorNetwork::CustomFile(file.clone()),
            None => TorNetwork::Public,
        };
        arti.pow = self.tor.pow;
        arti.dangerously_trust_everyone = self.tor.dangerously_trust_everyone;
        let transport = ArtiTransport::start(arti, &profile.identity)
            .await
            .map_err(|e| err(ErrorKind::Internal, format!("Tor could not start: {e}")))?;
        Engine::start(store, profile, transport, self.engine_config.clone())
            .map_err(|e| engine_error(&e))
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

/// Create the key file, then the database and the identity. If the database cannot be
/// created, the new key file is removed again so that a retry starts clean (nothing was
/// stored yet).
fn create_on_disk(
    paths: &Paths,
    passphrase: Option<&str>,
    config: &EngineConfig,
) -> Result<(Store, Profile), ErrorObject> {
    private_dir(&paths.data_dir).map_err(|e| err(ErrorKind::Storage, e))?;
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
    let key: DbKey = KeyFile::create(&paths.key_file(), protection, KdfParams::default())
        .map_err(|e| store_error(&e))?;
    let built = Store::create(&paths.database(), &key)
        .map_err(|e| store_error(&e))
        .and_then(|mut store| {
            let profile =
                carom_engine::create_profile(&mut store, config).map_err(|e| engine_error(&e))?;
            Ok((store, profile))
        });
    if built.is_err() {
        let _ = std::fs::remove_file(paths.key_file());
        let _ = std::fs::remove_file(paths.database());
    }
    built
}
