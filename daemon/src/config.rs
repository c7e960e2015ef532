//! The daemon's configuration: a TOML file, overridden by command-line flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `caromd.toml`. Every key is optional; unknown keys are an error (a typo must not be
/// silently ignored).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Where the profile and arti's state live.
    pub(crate) data_dir: Option<PathBuf>,
    /// Where the API socket lives.
    pub(crate) runtime_dir: Option<PathBuf>,
    /// A tracing filter, e.g. `"info"` or `"carom_engine=debug,info"`.
    pub(crate) log: Option<String>,
    /// Tor settings.
    #[serde(default)]
    pub(crate) tor: TorSection,
    /// Messaging behaviour.
    #[serde(default)]
    pub(crate) messaging: MessagingSection,
}

/// `[messaging]` in `caromd.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessagingSection {
    /// Dial contacts at start so both sides see each other online (default true). Off: you
    /// connect only to deliver something, which reveals less about when you are online.
    pub(crate) presence: Option<bool>,
    /// Events kept for frontends that reconnect later (default 100000).
    pub(crate) event_retention: Option<u64>,
}

/// How caromd reaches Tor (docs/tor.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    /// caromd's own Tor client (arti), in process.
    #[default]
    Embedded,
    /// A C tor the system runs, through its control and SOCKS ports.
    System,
}

/// `[tor]` in `caromd.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TorSection {
    /// `"embedded"` (default) or `"system"`.
    #[serde(default)]
    pub(crate) backend: Backend,
    /// The system tor's ControlPort (backend `system`; default 127.0.0.1:9051).
    pub(crate) control_port: Option<std::net::SocketAddr>,
    /// The system tor's SocksPort (backend `system`; default 127.0.0.1:9050).
    pub(crate) socks_port: Option<std::net::SocketAddr>,
    /// The system tor's control cookie (backend `system`; default: the file tor names).
    pub(crate) cookie_file: Option<PathBuf>,
    /// The system tor's control password, for `HashedControlPassword` (backend `system`).
    pub(crate) control_password: Option<String>,
    /// An arti TOML file describing another Tor network (such as `carom-testnet`'s
    /// `arti.toml`). Absent: the public Tor network.
    pub(crate) arti_config: Option<PathBuf>,
    /// Onion-service proof-of-work defence (default on).
    pub(crate) pow: Option<bool>,
    /// Bridge lines to enter Tor through (embedded Tor only), e.g.
    /// `"obfs4 192.0.2.3:443 <fingerprint> cert=… iat-mode=0"`. Lines set through the API
    /// (`carom tor bridges set`) are kept in the profile and win over these.
    #[serde(default)]
    pub(crate) bridges: Vec<String>,
    /// The pluggable-transport program of a transport, where it is not found on PATH:
    /// `[tor.transport_programs]` then `obfs4 = "/usr/bin/obfs4proxy"`.
    #[serde(default)]
    pub(crate) transport_programs: std::collections::BTreeMap<String, PathBuf>,
    /// Turn off arti's permission checks on its directories. Dangerous; for containers and
    /// tests where ownership cannot be right.
    #[serde(default)]
    pub(crate) dangerously_trust_everyone: bool,
}

/// Read a configuration file. A missing file at the default location is not an error; a
/// missing file named explicitly is.
pub(crate) fn load(path: &Path, explicit: bool) -> Result<FileConfig, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(FileConfig::default())
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_backend_is_read_with_its_ports() {
        let c: FileConfig = toml::from_str(
            "[tor]\nbackend = \"system\"\ncontrol_port = \"127.0.0.1:9151\"\nsocks_port = \"127.0.0.1:9150\"\n",
        )
        .expect("valid");
        assert_eq!(c.tor.backend, Backend::System);
        assert_eq!(c.tor.control_port, Some("127.0.0.1:9151".parse().unwrap()));
        assert_eq!(c.tor.socks_port, Some("127.0.0.1:9150".parse().unwrap()));
        let e =
            toml::from_str::<FileConfig>("[tor]\nbackend = \"external\"\n").expect_err("no such");
        assert!(e.to_string().contains("embedded"), "{e}");
        assert_eq!(FileConfig::default().tor.backend, Backend::Embedded);
    }

    #[test]
    fn bridges_and_their_programs_are_read() {
        let c: FileConfig = toml::from_str(
            "[tor]\nbridges = [\"obfs4 192.0.2.3:443 0123456789ABCDEF0123456789ABCDEF01234567 cert=x iat-mode=0\"]\n\
             [tor.transport_programs]\nobfs4 = \"/opt/lyrebird\"\n",
        )
        .expect("parses");
        assert_eq!(c.tor.bridges.len(), 1);
        assert_eq!(
            c.tor.transport_programs.get("obfs4").map(PathBuf::as_path),
            Some(Path::new("/opt/lyrebird"))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<FileConfig>("data_dir = \"/x\"\n[tor]\narti_confg = \"y\"\n")
            .expect_err("typo");
        assert!(e.to_string().contains("arti_confg"), "{e}");
    }

    #[test]
    fn a_full_file_parses() {
        let c: FileConfig = toml::from_str(
            "data_dir = \"/d\"\nruntime_dir = \"/r\"\nlog = \"debug\"\n[tor]\narti_config = \"/a.toml\"\npow = false\n",
        )
        .expect("parses");
        assert_eq!(c.tor.arti_config.as_deref(), Some(Path::new("/a.toml")));
        assert_eq!(c.tor.pow, Some(false));
    }

    #[test]
    fn a_missing_default_file_is_fine_but_a_missing_explicit_one_is_not() {
        let missing = Path::new("/nonexistent/caromd.toml");
        assert!(load(missing, false).is_ok());
        assert!(load(missing, true).is_err());
    }
}
