//! Bridges: unlisted relays to enter Tor through where the public relays are blocked, and the
//! pluggable-transport programs that disguise the connection to them.
//!
//! A [`Bridges`] value is what the user configured: bridge lines, as Tor Browser and
//! bridges.torproject.org give them, and optionally where each transport's program is. It
//! is checked before it is applied ([`Bridges::resolve`]): a malformed line, a transport no
//! program is known for, or a program that is not installed is an error naming the line and
//! what to do, never a Tor client that silently cannot start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arti_client::config::BridgeConfigBuilder;

/// Programs that provide each well-known transport, in the order they are looked for on
/// `PATH`: Debian's package names `obfs4proxy`, `snowflake-client` and `webtunnel-client`;
/// `lyrebird` is obfs4proxy's newer name at the Tor Project.
const KNOWN_PROGRAMS: &[(&str, &[&str])] = &[
    ("obfs4", &["obfs4proxy", "lyrebird"]),
    ("obfs3", &["obfs4proxy", "lyrebird"]),
    ("meek_lite", &["obfs4proxy", "lyrebird"]),
    ("scramblesuit", &["obfs4proxy", "lyrebird"]),
    ("webtunnel", &["webtunnel-client", "lyrebird"]),
    ("snowflake", &["snowflake-client"]),
    ("conjure", &["conjure-client"]),
];

/// Directories searched after `PATH`: a daemon started by a service manager may have a short
/// `PATH`, and Debian installs these programs in `/usr/bin`.
const EXTRA_DIRS: &[&str] = &["/usr/bin", "/usr/local/bin"];

/// Why bridge settings cannot be used. Each says which line or transport, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A bridge line that does not parse.
    #[error(
        "bridge line {number} is not a valid bridge line ({problem}): expected \
         `[transport] address:port fingerprint [key=value ...]`, e.g. \
         `obfs4 192.0.2.3:443 0123456789ABCDEF0123456789ABCDEF01234567 cert=... iat-mode=0`"
    )]
    Malformed {
        /// 1-based position of the line in the list.
        number: usize,
        /// What the parser objected to.
        problem: String,
    },
    /// A transport for which no program is known or configured.
    #[error(
        "bridge line {number} uses the transport `{transport}`, which needs a pluggable-transport \
         program Carom does not know: name it in caromd.toml, \
         [tor.transport_programs] {transport} = \"/path/to/program\""
    )]
    UnknownTransport {
        /// 1-based position of the first line using it.
        number: usize,
        /// The transport's name.
        transport: String,
    },
    /// A transport whose program is not installed.
    #[error(
        "bridge line {number} uses the transport `{transport}`, whose program ({programs}) was not \
         found on PATH, /usr/bin or /usr/local/bin; install it (Debian: `sudo apt-get install \
         {package}`) or name it in caromd.toml, [tor.transport_programs] {transport} = \
         \"/path/to/program\""
    )]
    ProgramMissing {
        /// 1-based position of the first line using it.
        number: usize,
        /// The transport's name.
        transport: String,
        /// The programs looked for, e.g. `obfs4proxy or lyrebird`.
        programs: String,
        /// The Debian package to install.
        package: String,
    },
    /// A configured program that is not an executable file.
    #[error(
        "the program configured for the transport `{transport}` ({path}) is not an executable file"
    )]
    ProgramNotExecutable {
        /// The transport's name.
        transport: String,
        /// The configured path.
        path: PathBuf,
    },
    /// This backend takes no bridges from Carom.
    #[error("{0}")]
    NotSupported(String),
}

/// The user's bridge settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bridges {
    /// Bridge lines, e.g. `obfs4 192.0.2.3:443 <fingerprint> cert=… iat-mode=0` or
    /// `192.0.2.4:9001 <fingerprint>` (a plain bridge). An optional leading `Bridge` (torrc's
    /// form) is accepted. Empty: no bridges, Tor is reached directly.
    pub lines: Vec<String>,
    /// The program for a transport, by transport name, where it is not one of the programs
    /// looked for on `PATH` (`obfs4proxy`, `lyrebird`, `snowflake-client`, …) or not there.
    pub transport_programs: BTreeMap<String, PathBuf>,
}

/// What [`Transport::set_bridges`](crate::Transport::set_bridges) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgesApplied {
    /// Lines (1-based) that give a bridge already in use another channel (a corrected
    /// `cert=`, a new address): Tor takes them at its next start. The others are in force.
    pub at_next_start: Vec<usize>,
}

/// Bridge settings checked and ready for arti: the lines, and for each program the transports
/// it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResolvedBridges {
    pub(crate) lines: Vec<String>,
    pub(crate) programs: BTreeMap<PathBuf, Vec<String>>,
}

impl Bridges {
    /// Whether any bridge is configured.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Check every line and find the program of every transport they use (on `PATH`).
    pub fn check(&self) -> Result<(), BridgeError> {
        self.resolve().map(drop)
    }

    /// Parse every line, and find the program of every transport used.
    pub(crate) fn resolve(&self) -> Result<ResolvedBridges, BridgeError> {
        self.resolve_with(&search_path())
    }

    fn resolve_with(&self, dirs: &[PathBuf]) -> Result<ResolvedBridges, BridgeError> {
        let mut resolved = ResolvedBridges::default();
        let mut transports: BTreeMap<String, usize> = BTreeMap::new();
        for (i, line) in self.lines.iter().enumerate() {
            let number = i + 1;
            let line = line.trim();
            let parsed: BridgeConfigBuilder =
                line.parse()
                    .map_err(
                        |e: arti_client::config::BridgeParseError| BridgeError::Malformed {
                            number,
                            problem: e.to_string(),
                        },
                    )?;
            parsed.build().map_err(|e| BridgeError::Malformed {
                number,
                problem: e.to_string(),
            })?;
            if let Some(transport) = parsed.get_transport().filter(|t| !t.is_empty()) {
                transports.entry(transport.to_owned()).or_insert(number);
            }
            resolved.lines.push(line.to_owned());
        }
        for (transport, number) in transports {
            let program = self.program_for(&transport, number, dirs)?;
            resolved
                .programs
                .entry(program)
                .or_default()
                .push(transport);
        }
        Ok(resolved)
    }

    fn program_for(
        &self,
        transport: &str,
        number: usize,
        dirs: &[PathBuf],
    ) -> Result<PathBuf, BridgeError> {
        if let Some(path) = self.transport_programs.get(transport) {
            if is_executable(path) {
                return Ok(path.clone());
            }
            return Err(BridgeError::ProgramNotExecutable {
                transport: transport.to_owned(),
                path: path.clone(),
            });
        }
        let Some((_, programs)) = KNOWN_PROGRAMS.iter().find(|(t, _)| *t == transport) else {
            return Err(BridgeError::UnknownTransport {
                number,
                transport: transport.to_owned(),
            });
        };
        programs
            .iter()
            .flat_map(|program| dirs.iter().map(move |dir| dir.join(program)))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| BridgeError::ProgramMissing {
                number,
                transport: transport.to_owned(),
                programs: programs.join(" or "),
                package: programs[0].to_owned(),
            })
    }
}

impl ResolvedBridges {
    /// arti's `[bridges]` table: the lines, and each program as a managed transport that arti
    /// starts when a bridge needs it.
    pub(crate) fn arti_table(&self) -> toml::Table {
        let mut table = toml::Table::new();
        table.insert(
            "enabled".into(),
            toml::Value::Boolean(!self.lines.is_empty()),
        );
        table.insert(
            "bridges".into(),
            toml::Value::Array(
                self.lines
                    .iter()
                    .map(|l| toml::Value::String(l.clone()))
                    .collect(),
            ),
        );
        let transports = self
            .programs
            .iter()
            .map(|(program, protocols)| {
                let mut t = toml::Table::new();
                t.insert(
                    "protocols".into(),
                    toml::Value::Array(
                        protocols
                            .iter()
                            .map(|p| toml::Value::String(p.clone()))
                            .collect(),
                    ),
                );
                // `literal`: a path is not subject to arti's `${VAR}` expansion.
                let mut path = toml::Table::new();
                path.insert(
                    "literal".into(),
                    toml::Value::String(program.display().to_string()),
                );
                t.insert("path".into(), toml::Value::Table(path));
                t.insert("run_on_startup".into(), toml::Value::Boolean(false));
                toml::Value::Table(t)
            })
            .collect();
        table.insert("transports".into(), toml::Value::Array(transports));
        table
    }
}

/// A checked bridge line's parts: `(identity, channel)`, where the identity is the RSA
/// fingerprint in lower-case hex and the channel is `[transport] address [key=value …]` — what
/// arti compares to tell whether a remembered guard is still the configured bridge.
pub(crate) fn line_parts(line: &str) -> Option<(String, String)> {
    let mut words: Vec<&str> = line.split_ascii_whitespace().collect();
    if words
        .first()
        .is_some_and(|w| w.eq_ignore_ascii_case("bridge"))
    {
        words.remove(0);
    }
    let (transport, rest) = match words.first() {
        Some(first) if !first.contains(':') => (Some(*first), &words[1..]),
        _ => (None, &words[..]),
    };
    let (address, rest) = rest.split_first()?;
    let position = rest.iter().position(|w| {
        let hex = w.trim_start_matches('$');
        hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })?;
    let identity = rest[position].trim_start_matches('$').to_ascii_lowercase();
    let settings: Vec<&str> = rest
        .iter()
        .enumerate()
        .filter(|(i, w)| *i != position && w.contains('='))
        .map(|(_, w)| *w)
        .collect();
    Some((identity, channel_text(transport, address, &settings)))
}

/// `[transport] address [key=value …]`, one space apart.
pub(crate) fn channel_text(transport: Option<&str>, address: &str, settings: &[&str]) -> String {
    let mut text = String::new();
    if let Some(t) = transport {
        text.push_str(t);
        text.push(' ');
    }
    text.push_str(address);
    for s in settings {
        text.push(' ');
        text.push_str(s);
    }
    text
}

/// Lines of `new` that give a bridge arti knows (`known`: identity and channel, see
/// [`line_parts`]) another channel: arti 0.47 keeps a bridge it has sampled as a guard under
/// its first line, and cannot use it under a new one until the sample is reset (which Carom
/// does at start). 1-based positions in `new`.
pub(crate) fn changed_lines(known: &[(String, String)], new: &[String]) -> Vec<usize> {
    new.iter()
        .enumerate()
        .filter_map(|(i, line)| {
            let (id, channel) = line_parts(line)?;
            let same_bridge: Vec<&String> = known
                .iter()
                .filter(|(known_id, _)| *known_id == id)
                .map(|(_, c)| c)
                .collect();
            (!same_bridge.is_empty() && !same_bridge.contains(&&channel)).then_some(i + 1)
        })
        .collect()
}

fn search_path() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "0123456789ABCDEF0123456789ABCDEF01234567";

    fn bridges(lines: &[&str]) -> Bridges {
        Bridges {
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
            transport_programs: BTreeMap::new(),
        }
    }

    /// A directory holding an executable file named `program`.
    fn dir_with(program: &str) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(program);
        std::fs::write(&path, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    #[test]
    fn plain_and_obfs4_lines_resolve_to_one_program_per_binary() {
        let dir = dir_with("obfs4proxy");
        let b = bridges(&[
            &format!("Bridge 192.0.2.4:9001 {FINGERPRINT}"),
            &format!("obfs4 192.0.2.3:443 {FINGERPRINT} cert=c2VjcmV0 iat-mode=0"),
            &format!("meek_lite 192.0.2.5:80 {FINGERPRINT} url=https://meek.example/"),
        ]);
        let r = b.resolve_with(&[dir.path().to_path_buf()]).expect("valid");
        assert_eq!(r.lines.len(), 3);
        assert_eq!(
            r.programs,
            BTreeMap::from([(
                dir.path().join("obfs4proxy"),
                vec!["meek_lite".to_owned(), "obfs4".to_owned()]
            )])
        );
        let table = r.arti_table();
        assert_eq!(table["enabled"], toml::Value::Boolean(true));
        assert_eq!(table["transports"].as_array().expect("array").len(), 1);
    }

    #[test]
    fn a_malformed_line_is_named_with_its_number() {
        let e = bridges(&[
            &format!("192.0.2.4:9001 {FINGERPRINT}"),
            "obfs4 not-a-bridge",
        ])
        .resolve_with(&[])
        .expect_err("malformed");
        assert!(matches!(e, BridgeError::Malformed { number: 2, .. }), "{e}");
        assert!(e.to_string().contains("bridge line 2"), "{e}");
        let e = bridges(&["192.0.2.4:9001 nothex"])
            .resolve_with(&[])
            .expect_err("bad fingerprint");
        assert!(matches!(e, BridgeError::Malformed { number: 1, .. }), "{e}");
    }

    #[test]
    fn a_missing_or_unknown_program_says_what_to_install_or_configure() {
        let line = format!("obfs4 192.0.2.3:443 {FINGERPRINT} cert=c2VjcmV0 iat-mode=0");
        let empty = tempfile::tempdir().expect("tempdir");
        let e = bridges(&[&line])
            .resolve_with(&[empty.path().to_path_buf()])
            .expect_err("no program");
        assert!(
            matches!(e, BridgeError::ProgramMissing { number: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("apt-get install obfs4proxy"), "{e}");

        let e = bridges(&[&format!("carrierpigeon 192.0.2.3:443 {FINGERPRINT}")])
            .resolve_with(&[])
            .expect_err("unknown");
        assert!(matches!(e, BridgeError::UnknownTransport { .. }), "{e}");

        // A configured program wins over the search, and must be executable.
        let dir = dir_with("my-obfs4");
        let mut b = bridges(&[&line]);
        b.transport_programs
            .insert("obfs4".into(), dir.path().join("my-obfs4"));
        let r = b.resolve_with(&[]).expect("configured");
        assert!(r.programs.contains_key(&dir.path().join("my-obfs4")));
        b.transport_programs
            .insert("obfs4".into(), dir.path().join("absent"));
        let e = b.resolve_with(&[]).expect_err("not executable");
        assert!(matches!(e, BridgeError::ProgramNotExecutable { .. }), "{e}");
    }

    #[test]
    fn a_line_is_split_into_its_identity_and_its_channel() {
        let obfs4 = format!("Bridge obfs4 192.0.2.3:443 ${FINGERPRINT} cert=c2Vj iat-mode=0");
        assert_eq!(
            line_parts(&obfs4),
            Some((
                FINGERPRINT.to_ascii_lowercase(),
                "obfs4 192.0.2.3:443 cert=c2Vj iat-mode=0".to_owned()
            ))
        );
        assert_eq!(
            line_parts(&format!("192.0.2.4:9001 {FINGERPRINT}")),
            Some((
                FINGERPRINT.to_ascii_lowercase(),
                "192.0.2.4:9001".to_owned()
            ))
        );
        let known = vec![line_parts(&obfs4).expect("valid")];
        let fixed = format!("obfs4 192.0.2.3:443 {FINGERPRINT} cert=ZmlY iat-mode=0");
        let other =
            "obfs4 192.0.2.9:443 1111111111111111111111111111111111111111 cert=x iat-mode=0";
        assert_eq!(changed_lines(&known, &[other.to_owned(), fixed]), vec![2]);
        assert!(changed_lines(&known, &[obfs4]).is_empty());
    }

    #[test]
    fn no_lines_mean_bridges_off() {
        let r = Bridges::default().resolve_with(&[]).expect("empty");
        assert_eq!(r.arti_table()["enabled"], toml::Value::Boolean(false));
    }
}
