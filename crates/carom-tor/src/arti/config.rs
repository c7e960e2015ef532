//! Configuration of the embedded-arti backend, and its translation into arti's own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arti_client::TorClientConfig;
use arti_client::config::{CfgPath, TorClientConfigBuilder};

use crate::{AdmissionConfig, Bridges, TransportError};

/// Which Tor network to use.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum TorNetwork {
    /// The public Tor network, with arti's built-in directory authorities and fallbacks.
    #[default]
    Public,
    /// Another network, described by arti TOML (e.g. `carom_testnet::TestNetwork::arti_config`):
    /// `[tor_network]`, `[path_rules]`, `[address_filter]` and similar. It may not contain
    /// `[storage]`, `[vanguards]` or `[bridges]`: those come from [`ArtiConfig`]. Unknown keys are errors.
    Custom(String),
    /// As `Custom`, read from a file (e.g. carom-testnet's `arti.toml`).
    CustomFile(PathBuf),
}

/// Vanguards: pinned middle relays for onion-service circuits, against guard discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Vanguards {
    /// Vanguards-lite (arti's and C tor's default): one pinned second layer.
    #[default]
    Lite,
    /// Full vanguards: pinned second and third layers. Stronger against an adversary hunting
    /// for the service's location, at the cost of longer service-side circuits; needs a
    /// network with enough relays.
    Full,
}

/// Settings of [`ArtiTransport`](crate::ArtiTransport). Start from [`ArtiConfig::new`] and
/// change fields; every default is documented on its field.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ArtiConfig {
    /// arti's persistent state (guards, onion-service bookkeeping; no keys). Default:
    /// `<data_dir>/tor/state`. Created 0700.
    pub state_dir: PathBuf,
    /// arti's directory cache. Default: `<data_dir>/tor/cache`. Created 0700.
    pub cache_dir: PathBuf,
    /// Default: [`TorNetwork::Public`].
    pub network: TorNetwork,
    /// Admission control for rendezvous requests. Default: [`AdmissionConfig::default`].
    pub admission: AdmissionConfig,
    /// Most streams open at once on one rendezvous circuit; a client that opens one more has
    /// its whole circuit closed (arti's behaviour). Default 32 (arti's is 65535). Carom uses
    /// one stream per session, so this only bounds what one circuit can cost us.
    pub max_streams_per_circuit: u32,
    /// Onion-service proof-of-work (prop 327, Equi-X) on our service. Default `true`.
    ///
    /// With it on, admission *waits* for a token instead of rejecting, so queued requests
    /// stay in arti's effort-ordered queue (bounded by `pow_queue_depth` and expired after
    /// the network's intro timeout) and arti raises the suggested effort when the queue backs
    /// up. With it off, requests beyond the bucket are rejected at once. Solving puzzles
    /// when dialling a peer that asks for it is always on.
    pub pow: bool,
    /// Depth of arti's proof-of-work request queue. Default 128 (arti's is 8192).
    pub pow_queue_depth: usize,
    /// Default: [`Vanguards::Lite`].
    pub vanguards: Vanguards,
    /// Enter Tor through these bridges instead of the network's listed relays. Default: none.
    /// Changed at run time with [`ArtiTransport::set_bridges`](crate::ArtiTransport::set_bridges).
    pub bridges: Bridges,
    /// How long the bootstrap may make no progress before the status calls it stalled and
    /// points to bridges. Default 30 s: on an open network arti finishes in a few seconds.
    pub bootstrap_stall_after: Duration,
    /// Introduction points (3 to 20). Default 3.
    pub num_intro_points: u8,
    /// Bound on one dial, from call to open stream. Default 60 s: on the live network a cold
    /// dial (descriptor, introduction, rendezvous) takes seconds, and arti retries inside it.
    pub dial_timeout: Duration,
    /// A dial still pending after this long gets a second attempt over a fresh path (a new
    /// circuit and descriptor) beside the first; whichever opens first wins. A dial over a
    /// known path (a peer reached before) is hedged after a third of this. Default 10 s: a
    /// cold dial on the test network takes under a second, on the live network a few; a warm
    /// one is a round trip.
    pub dial_hedge_after: Duration,
    /// Turn off arti's file-permission checks on the state and cache directories (and their
    /// parents). **Dangerous**; default `false`. Only for environments where ownership cannot
    /// be right, such as some containers or tests. Without it the checks are also immune to
    /// arti's `ARTI_FS_DISABLE_PERMISSION_CHECKS` environment variable: Carom's configuration
    /// is the only switch.
    pub dangerously_trust_everyone: bool,
}

impl ArtiConfig {
    /// Defaults, with arti's directories under `data_dir` (Carom's data directory).
    pub fn new(data_dir: &Path) -> ArtiConfig {
        ArtiConfig {
            state_dir: data_dir.join("tor").join("state"),
            cache_dir: data_dir.join("tor").join("cache"),
            network: TorNetwork::Public,
            admission: AdmissionConfig::default(),
            max_streams_per_circuit: 32,
            pow: true,
            pow_queue_depth: 128,
            vanguards: Vanguards::Lite,
            bridges: Bridges::default(),
            bootstrap_stall_after: Duration::from_secs(30),
            num_intro_points: 3,
            dial_timeout: Duration::from_secs(60),
            dial_hedge_after: Duration::from_secs(10),
            dangerously_trust_everyone: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), TransportError> {
        self.admission.validate().map_err(TransportError::Config)?;
        if self.max_streams_per_circuit == 0 {
            return Err(TransportError::Config(
                "max_streams_per_circuit must be at least 1".into(),
            ));
        }
        if !(3..=20).contains(&self.num_intro_points) {
            return Err(TransportError::Config(
                "num_intro_points must be between 3 and 20".into(),
            ));
        }
        if self.pow_queue_depth == 0 {
            return Err(TransportError::Config(
                "pow_queue_depth must be at least 1".into(),
            ));
        }
        if self.dial_hedge_after.is_zero() {
            return Err(TransportError::Config(
                "dial_hedge_after must be positive".into(),
            ));
        }
        if self.bootstrap_stall_after.is_zero() {
            return Err(TransportError::Config(
                "bootstrap_stall_after must be positive".into(),
            ));
        }
        if self.dial_timeout.is_zero() {
            return Err(TransportError::Config(
                "dial_timeout must be positive".into(),
            ));
        }
        Ok(())
    }

    /// arti's client configuration for these settings.
    ///
    /// Whatever the custom network says, the keystore is arti's *ephemeral* one (keys in
    /// memory only) and the directories are ours.
    pub(crate) fn tor_client_config(&self) -> Result<TorClientConfig, TransportError> {
        let text = match &self.network {
            TorNetwork::Public => String::new(),
            TorNetwork::Custom(text) => text.clone(),
            TorNetwork::CustomFile(path) => std::fs::read_to_string(path)
                .map_err(|e| TransportError::io("read the arti configuration", path, e))?,
        };
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| TransportError::Config(format!("the arti configuration: {e}")))?;
        for owned in ["storage", "vanguards", "bridges"] {
            if table.contains_key(owned) {
                return Err(TransportError::Config(format!(
                    "the arti configuration may not contain [{owned}]: Carom sets it"
                )));
            }
        }
        table.insert(
            "storage".into(),
            toml::Value::Table(toml::toml! {
                [keystore]
                enabled = true
                [keystore.primary]
                kind = "ephemeral"
            }),
        );
        let mode = match self.vanguards {
            Vanguards::Lite => "lite",
            Vanguards::Full => "full",
        };
        let mut vanguards = toml::Table::new();
        vanguards.insert("mode".into(), toml::Value::String(mode.into()));
        table.insert("vanguards".into(), toml::Value::Table(vanguards));
        table.insert(
            "bridges".into(),
            toml::Value::Table(self.bridges.resolve()?.arti_table()),
        );

        let mut unknown = Vec::new();
        let mut builder: TorClientConfigBuilder =
            serde_ignored::deserialize(toml::Value::Table(table), |path| {
                unknown.push(path.to_string());
            })
            .map_err(|e| TransportError::Config(format!("the arti configuration: {e}")))?;
        if !unknown.is_empty() {
            return Err(TransportError::Config(format!(
                "unknown keys in the arti configuration: {}",
                unknown.join(", ")
            )));
        }
        builder
            .storage()
            .state_dir(CfgPath::new_literal(&self.state_dir))
            .cache_dir(CfgPath::new_literal(&self.cache_dir));
        let permissions = builder.storage().permissions();
        if self.dangerously_trust_everyone {
            permissions.dangerously_trust_everyone();
        } else {
            permissions.ignore_environment();
        }
        builder
            .build()
            .map_err(|e| TransportError::Config(format!("the arti configuration: {e}")))
    }
}

/// Create `dir` (and missing parents) readable by us only, and tighten it if it exists; a
/// symbolic link or another user's directory is refused (see [`carom_fs::ensure_private_dir`]).
pub(crate) fn private_dir(dir: &Path) -> Result<(), TransportError> {
    carom_fs::ensure_private_dir(dir).map_err(|e| TransportError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_public_tor_ephemeral_keys_and_lite_vanguards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ArtiConfig::new(dir.path());
        assert_eq!(config.network, TorNetwork::Public);
        assert!(config.pow);
        assert!(!config.dangerously_trust_everyone);
        assert_eq!(config.state_dir, dir.path().join("tor/state"));
        let arti = config.tor_client_config().expect("builds");
        // The keystore must never be arti's on-disk one.
        assert_eq!(
            format!("{:?}", arti.keystore().primary_kind()),
            "Some(Ephemeral)"
        );
        let vanguards: &arti_client::config::vanguards::VanguardConfig = arti.as_ref();
        assert_eq!(vanguards.mode().to_string(), "lite");
        // Public Tor: arti's built-in fallback directories, not a custom list.
        let dir_config = arti.dir_mgr_config().expect("directory config");
        assert!(dir_config.network.fallback_caches().len() > 10);
        // Permission checks on: a world-writable directory is refused.
        assert!(
            arti.fs_mistrust()
                .check_directory(world_writable(dir.path()))
                .is_err()
        );
    }

    #[test]
    fn a_custom_network_cannot_bring_its_own_keystore_or_typos() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ArtiConfig::new(dir.path());
        config.network =
            TorNetwork::Custom("[storage.keystore.primary]\nkind = \"native\"\n".into());
        let e = config.tor_client_config().expect_err("storage is ours");
        assert!(e.to_string().contains("[storage]"), "{e}");

        config.network = TorNetwork::Custom("[address_filter]\nallow_local_adrs = true\n".into());
        let e = config.tor_client_config().expect_err("typo");
        assert!(e.to_string().contains("allow_local_adrs"), "{e}");

        config.network = TorNetwork::Custom(
            "[address_filter]\nallow_local_addrs = true\n[path_rules]\nipv4_subnet_family_prefix = 33\n"
                .into(),
        );
        config.vanguards = Vanguards::Full;
        let arti = config.tor_client_config().expect("valid custom network");
        let vanguards: &arti_client::config::vanguards::VanguardConfig = arti.as_ref();
        assert_eq!(vanguards.mode().to_string(), "full");
    }

    #[test]
    fn trusting_everyone_is_an_explicit_opt_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ArtiConfig::new(dir.path());
        config.dangerously_trust_everyone = true;
        let arti = config.tor_client_config().expect("builds");
        assert!(
            arti.fs_mistrust()
                .check_directory(world_writable(dir.path()))
                .is_ok()
        );
    }

    /// A world-writable directory under `parent` (no sticky bit).
    fn world_writable(parent: &Path) -> PathBuf {
        let dir = parent.join("loose");
        std::fs::create_dir_all(&dir).expect("mkdir");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        dir
    }

    #[test]
    fn invalid_settings_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = ArtiConfig::new(dir.path());
        let mut c = base.clone();
        c.num_intro_points = 2;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.max_streams_per_circuit = 0;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.admission.per_second = -1.0;
        assert!(c.validate().is_err());
        assert!(base.validate().is_ok());
    }
}
