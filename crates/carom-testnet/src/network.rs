//! Starting, describing and stopping a private Tor network.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::consensus::ConsensusSummary;
use crate::err::{Error, Result};
use crate::ports::PortBlock;
use crate::process;
use crate::torrc::{self, AuthorityLine, Role};

/// Flags every relay must carry in the consensus before the network counts as ready.
const REQUIRED_FLAGS: &[&str] = &["Running", "Valid", "Guard", "HSDir", "Exit", "V2Dir"];
/// How long a stopping tor gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Name of the file that describes a network on disk.
const STATE_FILE: &str = "network.json";
/// Name of the arti configuration fragment written for a network.
pub const ARTI_CONFIG_FILE: &str = "arti.toml";

/// How to build a network.
#[derive(Clone, Debug)]
pub struct NetworkOptions {
    relays: usize,
    ready_timeout: Duration,
    root: Option<PathBuf>,
    detached: bool,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            relays: 4,
            ready_timeout: Duration::from_secs(300),
            root: None,
            detached: false,
        }
    }
}

impl NetworkOptions {
    /// Number of non-authority relays (default 4; the network always has 3 authorities).
    #[must_use]
    pub fn relays(mut self, relays: usize) -> Self {
        self.relays = relays;
        self
    }

    /// Longest wait for a usable consensus before giving up (default 300 s).
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Put the network in this directory (kept afterwards) instead of a fresh temporary one
    /// (removed when the network stops, unless a test is panicking).
    #[must_use]
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Let the network outlive this process (for the `carom-testnet up` command): tor processes
    /// are not tied to our PID and are put in their own process group, and dropping the
    /// [`TestNetwork`] leaves them running. Stop them with [`stop_detached`].
    #[must_use]
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }
}

/// One tor process of the network, as recorded on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The relay nickname (unique within the network).
    pub nickname: String,
    /// What it does.
    pub role: Role,
    /// Its ORPort on 127.0.0.1 (relays and authorities).
    pub or_port: Option<u16>,
    /// Its DirPort on 127.0.0.1 (relays and authorities).
    pub dir_port: Option<u16>,
    /// Its SOCKS port on 127.0.0.1 (clients).
    pub socks_port: Option<u16>,
    /// Hex RSA identity fingerprint (relays and authorities).
    pub rsa_identity: Option<String>,
    /// Base64 ed25519 identity (relays and authorities).
    pub ed_identity: Option<String>,
    /// Hex v3 authority identity (authorities).
    pub v3ident: Option<String>,
    /// Its data directory (holds its torrc and `notice.log`).
    pub data_dir: PathBuf,
    /// Its process ID while running.
    pub pid: Option<u32>,
}

impl NodeInfo {
    /// The node's torrc.
    pub fn torrc(&self) -> PathBuf {
        self.data_dir.join("torrc")
    }

    /// The node's notice-level log.
    pub fn log(&self) -> PathBuf {
        self.data_dir.join("notice.log")
    }
}

/// What `network.json` holds: enough to find, check and stop a network from another process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkState {
    /// The network's directory.
    pub root: PathBuf,
    /// The process whose death makes the relays exit, if any.
    pub owner_pid: Option<u32>,
    /// Every tor process of the network.
    pub nodes: Vec<NodeInfo>,
}

/// A running node and, if we started it in this process, its [`Child`] handle.
struct RunningNode {
    info: NodeInfo,
    child: Option<Child>,
}

/// A private Tor network of real C tor authorities and relays on 127.0.0.1.
///
/// Started by [`TestNetwork::start`], which returns only once clients can bootstrap from it.
/// Dropping it stops every tor process it started (by PID) and frees its ports.
pub struct TestNetwork {
    root: PathBuf,
    remove_root: bool,
    detached: bool,
    tor: PathBuf,
    authorities: Vec<AuthorityLine>,
    owner_pid: Option<u32>,
    nodes: Mutex<Vec<RunningNode>>,
    ports: Mutex<PortBlock>,
}

impl std::fmt::Debug for TestNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNetwork")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl TestNetwork {
    /// Generate keys and configuration, start 3 authorities and the relays, and wait (bounded)
    /// until their consensus lists every relay with the flags clients need.
    pub fn start(options: &NetworkOptions) -> Result<TestNetwork> {
        let started = Instant::now();
        let tor = process::find_program("tor", "CAROM_TOR_BIN")?;
        let gencert = process::find_program("tor-gencert", "CAROM_TOR_GENCERT_BIN")?;
        let mut ports = PortBlock::reserve()?;
        let (root, remove_root) = match &options.root {
            Some(root) => (root.clone(), false),
            None => (unique_temp_dir(), true),
        };
        make_private_dir(&root)?;
        make_private_dir(&root.join("nodes"))?;
        let owner_pid = (!options.detached).then(std::process::id);

        // Keys first: every torrc names every authority's identities.
        let mut infos = Vec::new();
        for i in 0..3 {
            let info = NodeInfo::new(&root, format!("auth{i}"), Role::Authority, &mut ports)?;
            infos.push(info);
        }
        for i in 0..options.relays {
            let info = NodeInfo::new(&root, format!("relay{i}"), Role::Relay, &mut ports)?;
            infos.push(info);
        }
        for info in &mut infos {
            if info.role == Role::Authority {
                info.v3ident = Some(generate_authority_keys(&gencert, info)?);
            }
            let (rsa, ed) = relay_identities(&tor, &info.data_dir)?;
            info.rsa_identity = Some(rsa);
            info.ed_identity = Some(ed);
        }
        let authorities: Vec<AuthorityLine> = infos
            .iter()
            .filter(|n| n.role == Role::Authority)
            .map(|n| AuthorityLine {
                nickname: n.nickname.clone(),
                or_port: n.or_port.unwrap_or_default(),
                dir_port: n.dir_port.unwrap_or_default(),
                v3ident: n.v3ident.clone().unwrap_or_default(),
                rsa_fingerprint: n.rsa_identity.clone().unwrap_or_default(),
            })
            .collect();

        let network = TestNetwork {
            root,
            remove_root,
            detached: options.detached,
            tor,
            authorities,
            owner_pid,
            nodes: Mutex::new(Vec::new()),
            ports: Mutex::new(ports),
        };
        for info in infos {
            let mut text = torrc::common(
                &info.nickname,
                &info.data_dir,
                &network.authorities,
                owner_pid,
            );
            text.push_str(&torrc::relay(
                info.or_port.unwrap_or_default(),
                info.dir_port.unwrap_or_default(),
            ));
            if info.role == Role::Authority {
                text.push_str(&torrc::authority());
            }
            network.launch(info, &text)?;
        }
        write_file(&network.root.join(ARTI_CONFIG_FILE), &network.arti_config())?;
        write_file(
            &network.root.join("client-torrc"),
            &network.ctor_client_torrc(),
        )?;
        network.save_state()?;
        network.wait_ready(options.ready_timeout)?;
        tracing::info!(root = %network.root.display(), elapsed = ?started.elapsed(), "private Tor network ready");
        Ok(network)
    }

    /// The network's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the arti configuration fragment for this network (see [`Self::arti_config`]).
    pub fn arti_config_path(&self) -> PathBuf {
        self.root.join(ARTI_CONFIG_FILE)
    }

    /// TOML for an arti client to use this network instead of the public Tor network.
    ///
    /// Callers add their own `[storage]` section (state and cache directories).
    pub fn arti_config(&self) -> String {
        let nodes = self.nodes_snapshot();
        let mut t = String::from(
            "# arti client settings for a private Tor network on 127.0.0.1 (carom-testnet).\n\
             [tor_network]\nfallback_caches = [\n",
        );
        for n in nodes.iter().filter(|n| n.role == Role::Authority) {
            let _ = writeln!(
                t,
                "  {{ rsa_identity = \"{}\", ed_identity = \"{}\", orports = [\"127.0.0.1:{}\"] }},",
                n.rsa_identity.as_deref().unwrap_or_default(),
                n.ed_identity.as_deref().unwrap_or_default(),
                n.or_port.unwrap_or_default()
            );
        }
        t.push_str("]\n\n[tor_network.authorities]\nv3idents = [");
        let idents: Vec<String> = self
            .authorities
            .iter()
            .map(|a| format!("\"{}\"", a.v3ident))
            .collect();
        t.push_str(&idents.join(", "));
        t.push_str(
            "]\n\n\
             # Every relay shares 127.0.0.1: without these, all of them count as one family and\n\
             # no path exists.\n\
             [path_rules]\nipv4_subnet_family_prefix = 33\nipv6_subnet_family_prefix = 129\n\n\
             [address_filter]\nallow_local_addrs = true\n\n\
             # Exits accept only 127.0.0.0/8, which microdescriptor policy summaries cannot\n\
             # express, so predicting exit circuits would only build useless ones.\n\
             [preemptive_circuits]\ninitial_predicted_ports = []\n",
        );
        t
    }

    /// torrc lines a C tor client needs to use this network (add `DataDirectory` and ports).
    pub fn ctor_client_torrc(&self) -> String {
        let mut text =
            String::from("# C tor client settings for a private Tor network (carom-testnet).\n");
        for line in torrc::common("client", Path::new("."), &self.authorities, None).lines() {
            // Node-specific lines are the caller's to choose.
            if ["Nickname", "DataDirectory", "PidFile", "Log "]
                .iter()
                .any(|p| line.starts_with(p))
            {
                continue;
            }
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// What every node of the network is, with PIDs.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes_snapshot()
    }

    /// PIDs of every tor process this network started and has not stopped yet.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes_snapshot().iter().filter_map(|n| n.pid).collect()
    }

    /// Every loopback port the network's relays listen on.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes_snapshot()
            .iter()
            .flat_map(|n| [n.or_port, n.dir_port, n.socks_port])
            .flatten()
            .collect()
    }

    /// Start a C tor client on this network with a SOCKS port and, if `onion_service` is
    /// `Some((virtual_port, target_port))`, an onion service forwarding that virtual port to
    /// 127.0.0.1:`target_port`. Returns once the client has bootstrapped.
    pub fn start_ctor_client(
        &self,
        onion_service: Option<(u16, u16)>,
    ) -> Result<crate::CtorClient<'_>> {
        crate::ctor::start(self, onion_service, false)
    }

    /// Start a C tor client on this network with a SOCKS port and a control port (cookie
    /// authentication), as a system's tor that Carom's system backend drives. Returns once it
    /// has bootstrapped.
    pub fn start_ctor_client_with_control(&self) -> Result<crate::CtorClient<'_>> {
        crate::ctor::start(self, None, true)
    }

    /// Start an unlisted bridge relay with an obfs4 server transport (Debian's `obfs4proxy`,
    /// or `CAROM_OBFS4PROXY_BIN`). Returns once the bridge has a consensus to serve and its
    /// transport is listening; [`crate::Obfs4Bridge::bridge_line`] is what clients configure.
    pub fn start_obfs4_bridge(&self) -> Result<crate::Obfs4Bridge<'_>> {
        crate::bridge::start(self)
    }

    pub(crate) fn next_bridge_name(&self) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        format!("bridge{}", COUNTER.fetch_add(1, Ordering::Relaxed))
    }

    /// Create a relay's identity keys in `data_dir`; returns (hex RSA fingerprint, base64
    /// ed25519 identity).
    pub(crate) fn relay_identities(&self, data_dir: &Path) -> Result<(String, String)> {
        relay_identities(&self.tor, data_dir)
    }

    pub(crate) fn next_client_name(&self) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        format!("client{}", COUNTER.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn take_port(&self) -> u16 {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub(crate) fn owner_pid(&self) -> Option<u32> {
        self.owner_pid
    }

    pub(crate) fn authority_lines(&self) -> &[AuthorityLine] {
        &self.authorities
    }

    /// Write `text` as the node's torrc and start tor on it.
    pub(crate) fn launch(&self, mut info: NodeInfo, text: &str) -> Result<u32> {
        let torrc = info.torrc();
        write_file(&torrc, text)?;
        let stdout = info.data_dir.join("stdout.log");
        let out = fs::File::create(&stdout).map_err(|e| Error::io("creating", &stdout, e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("opening", &stdout, e))?;
        let mut command = Command::new(&self.tor);
        command
            .arg("-f")
            .arg(&torrc)
            .arg("--ignore-missing-torrc")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if self.detached {
            // Keep a terminal's Ctrl-C from reaching a network meant to outlive the command.
            command.process_group(0);
        }
        let child = command.spawn().map_err(|e| Error::CommandFailed {
            command: format!("{} -f {}", self.tor.display(), torrc.display()),
            status: "could not start".into(),
            stderr: e.to_string(),
        })?;
        let pid = child.id();
        info.pid = Some(pid);
        tracing::debug!(node = %info.nickname, pid, "started tor");
        self.lock_nodes().push(RunningNode {
            info,
            child: Some(child),
        });
        self.save_state()?;
        Ok(pid)
    }

    /// The PIDs of the nodes in `roles`, in start order.
    fn pids_of(&self, roles: &[Role]) -> Vec<u32> {
        self.lock_nodes()
            .iter()
            .filter(|n| roles.contains(&n.info.role))
            .filter_map(|n| n.info.pid)
            .collect()
    }

    /// The PIDs of the network's relays (not its authorities), in start order.
    pub fn relay_pids(&self) -> Vec<u32> {
        self.pids_of(&[Role::Relay])
    }

    /// The PIDs of the network's directory authorities, in start order.
    pub fn authority_pids(&self) -> Vec<u32> {
        self.pids_of(&[Role::Authority])
    }

    /// The PIDs of every node that carries circuits — the relays **and the authorities**,
    /// which are relays too and may hold any position of a path, and any bridges — in start
    /// order. A test that must stop whatever is on a path partitions these, not
    /// [`Self::relay_pids`]: with three authorities, a circuit can avoid every relay.
    pub fn router_pids(&self) -> Vec<u32> {
        self.pids_of(&[Role::Authority, Role::Relay, Role::Bridge])
    }

    /// Freeze these relays or authorities (SIGSTOP): their connections stay open but nothing moves through
    /// them, as with a relay that hangs. They resume when the returned guard is dropped — or,
    /// should this process die first, when `at_most` has passed: a separate thawer process
    /// (`sleep`, then `kill -CONT`) makes sure no relay stays frozen, so each can notice
    /// that its owner is gone and exit. Only relays of this network can be frozen.
    pub fn freeze(&self, pids: &[u32], at_most: Duration) -> Result<Frozen> {
        let ours = self.router_pids();
        if let Some(pid) = pids.iter().find(|p| !ours.contains(p)) {
            return Err(Error::NotARelay { pid: *pid });
        }
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let thawer = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep {}; kill -CONT {} 2>/dev/null",
                at_most.as_secs().max(1),
                list.join(" ")
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("start the thawer for", &self.root, e))?;
        for &pid in pids {
            process::signal(pid, rustix::process::Signal::STOP);
        }
        Ok(Frozen {
            pids: pids.to_vec(),
            thawer: Some(thawer),
        })
    }

    /// Stop one node started by [`Self::launch`] (used by C tor clients).
    pub(crate) fn stop_node(&self, pid: u32) {
        let node = {
            let mut nodes = self.lock_nodes();
            nodes
                .iter()
                .position(|n| n.info.pid == Some(pid))
                .map(|i| nodes.remove(i))
        };
        if let Some(node) = node {
            stop(node);
        }
        let _ = self.save_state();
    }

    /// If a node has exited, the error that says which and why.
    pub(crate) fn check_alive(&self) -> Result<()> {
        let mut nodes = self.lock_nodes();
        for node in nodes.iter_mut() {
            if let Some(child) = &mut node.child
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(Error::NodeExited {
                    node: node.info.nickname.clone(),
                    status: status.to_string(),
                    log: node.info.log(),
                    log_tail: process::log_tail(&node.info.log(), 15),
                });
            }
        }
        Ok(())
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let relays: Vec<String> = self
            .nodes_snapshot()
            .iter()
            .filter(|n| n.role != Role::Client)
            .map(|n| n.nickname.clone())
            .collect();
        let relay_refs: Vec<&str> = relays.iter().map(String::as_str).collect();
        let mut problem = String::from("no authority has a consensus yet");
        let mut worst_log = PathBuf::new();
        loop {
            self.check_alive()?;
            problem.clear();
            for node in self
                .nodes_snapshot()
                .iter()
                .filter(|n| n.role == Role::Authority)
            {
                let missing = match ConsensusSummary::read(&node.data_dir) {
                    None => Some("no consensus yet".to_owned()),
                    Some(c) => c.missing(&relay_refs, REQUIRED_FLAGS).or_else(|| {
                        let want = torrc::HSDIR_INTERVAL_MINUTES.to_string();
                        (c.params.get("hsdir_interval") != Some(&want))
                            .then(|| format!("consensus lacks hsdir_interval={want}"))
                    }),
                };
                if let Some(m) = missing {
                    let _ = write!(problem, "{}: {m}. ", node.nickname);
                    worst_log = node.log();
                }
            }
            if problem.is_empty() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(Error::NotReady {
                    waited: started.elapsed(),
                    problem: problem.trim().to_owned(),
                    log_tail: process::log_tail(&worst_log, 20),
                    log: worst_log,
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stop every tor process of the network (idempotent).
    pub fn stop(&self) {
        let nodes: Vec<RunningNode> = std::mem::take(&mut *self.lock_nodes());
        for node in nodes {
            stop(node);
        }
    }

    fn save_state(&self) -> Result<()> {
        let state = NetworkState {
            root: self.root.clone(),
            owner_pid: self.owner_pid,
            nodes: self.nodes_snapshot(),
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| Error::Malformed {
            path: self.root.join(STATE_FILE),
            problem: e.to_string(),
        })?;
        write_file(&self.root.join(STATE_FILE), &json)
    }

    fn nodes_snapshot(&self) -> Vec<NodeInfo> {
        self.lock_nodes().iter().map(|n| n.info.clone()).collect()
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, Vec<RunningNode>> {
        // A panic while holding the lock leaves the list intact; keep using it so teardown
        // still finds every PID.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.stop();
        if self.remove_root {
            if std::thread::panicking() {
                #[allow(
                    clippy::print_stderr,
                    reason = "a failing test's reader needs the logs"
                )]
                {
                    eprintln!(
                        "carom-testnet: keeping the network's logs for the failed test in {}",
                        self.root.display()
                    );
                }
            } else {
                let _ = fs::remove_dir_all(&self.root);
            }
        }
    }
}

/// Relays frozen by [`TestNetwork::freeze`]; dropping it lets them run again.
#[derive(Debug)]
pub struct Frozen {
    pids: Vec<u32>,
    thawer: Option<Child>,
}

impl Frozen {
    /// Let the relays run again now.
    pub fn thaw(mut self) {
        self.resume();
    }

    fn resume(&mut self) {
        for &pid in &self.pids {
            process::signal(pid, rustix::process::Signal::CONT);
        }
        self.pids.clear();
        if let Some(mut thawer) = self.thawer.take() {
            let _ = thawer.kill();
            let _ = thawer.wait();
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.resume();
    }
}

fn stop(mut node: RunningNode) {
    if let Some(pid) = node.info.pid {
        process::terminate(pid, STOP_GRACE);
    }
    if let Some(child) = &mut node.child {
        // Reap it so no zombie is left behind.
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl NodeInfo {
    fn new(root: &Path, nickname: String, role: Role, ports: &mut PortBlock) -> Result<NodeInfo> {
        let data_dir = root.join("nodes").join(&nickname);
        make_private_dir(&data_dir)?;
        let (or_port, dir_port) = match role {
            Role::Client | Role::Bridge => (None, None),
            Role::Authority | Role::Relay => (Some(ports.take()), Some(ports.take())),
        };
        Ok(NodeInfo {
            nickname,
            role,
            or_port,
            dir_port,
            socks_port: None,
            rsa_identity: None,
            ed_identity: None,
            v3ident: None,
            data_dir,
            pid: None,
        })
    }
}

/// Create an authority's v3 identity and signing keys; returns its v3 identity fingerprint.
fn generate_authority_keys(gencert: &Path, info: &NodeInfo) -> Result<String> {
    let keys = info.data_dir.join("keys");
    make_private_dir(&keys)?;
    let address = format!("127.0.0.1:{}", info.dir_port.unwrap_or_default());
    process::run(
        Command::new(gencert)
            .arg("--create-identity-key")
            .arg("--passphrase-fd")
            .arg("0")
            .args(["-m", "12", "-a", &address])
            .arg("-i")
            .arg(keys.join("authority_identity_key"))
            .arg("-s")
            .arg(keys.join("authority_signing_key"))
            .arg("-c")
            .arg(keys.join("authority_certificate")),
        b"\n",
    )?;
    let cert_path = keys.join("authority_certificate");
    let cert = fs::read_to_string(&cert_path).map_err(|e| Error::io("reading", &cert_path, e))?;
    cert.lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .map(|f| f.trim().to_owned())
        .ok_or_else(|| Error::Malformed {
            path: cert_path,
            problem: "no fingerprint line".into(),
        })
}

/// Create a relay's identity keys; returns (hex RSA fingerprint, base64 ed25519 identity).
fn relay_identities(tor: &Path, data_dir: &Path) -> Result<(String, String)> {
    process::run(
        Command::new(tor)
            .args(["--ignore-missing-torrc", "-f", "/dev/null", "--quiet"])
            .arg("--datadirectory")
            .arg(data_dir)
            .args(["--list-fingerprint", "--orport", "1"])
            .args([
                "--dirserver",
                "placeholder 127.0.0.1:1 ffffffffffffffffffffffffffffffffffffffff",
            ]),
        b"",
    )?;
    let second_word = |file: &str| -> Result<String> {
        let path = data_dir.join(file);
        let text = fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        text.split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .ok_or(Error::Malformed {
                path,
                problem: "expected `nickname identity`".into(),
            })
    };
    Ok((
        second_word("fingerprint")?,
        second_word("fingerprint-ed25519")?,
    ))
}

pub(crate) fn make_private_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io("creating", path, e))
}

pub(crate) fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| Error::io("writing", path, e))
}

fn unique_temp_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    remove_stale_temp_dirs();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "carom-testnet-{}-{n}-{nanos:08x}",
        std::process::id()
    ))
}

/// Remove temporary network directories left by test processes that were killed before they
/// could clean up (their relays exited by themselves through `__OwningControllerProcess`).
fn remove_stale_temp_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("carom-testnet-")) else {
            continue;
        };
        let owner = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = owner
            && !process::is_alive(pid)
        {
            tracing::debug!(dir = %entry.path().display(), "removing a dead test run's network");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Read the description of a network from its directory.
pub fn load_state(root: &Path) -> Result<NetworkState> {
    let path = root.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Malformed {
        path,
        problem: e.to_string(),
    })
}

/// Stop a network started with [`NetworkOptions::detached`], by the PIDs in its state file.
///
/// A PID is signalled only if that process's command line still names the node's torrc, so a
/// PID reused by an unrelated process since is never touched. Returns the nodes stopped.
pub fn stop_detached(root: &Path) -> Result<Vec<String>> {
    let state = load_state(root)?;
    let mut stopped = Vec::new();
    for node in &state.nodes {
        let Some(pid) = node.pid else { continue };
        let torrc = node.torrc().display().to_string();
        if process::command_line(pid).is_some_and(|cmd| cmd.contains(&torrc)) {
            process::terminate(pid, STOP_GRACE);
            stopped.push(node.nickname.clone());
        }
    }
    Ok(stopped)
}

/// A one-line health summary of each node of a network on disk.
pub fn status(root: &Path) -> Result<Vec<String>> {
    let state = load_state(root)?;
    let mut lines = Vec::new();
    for node in &state.nodes {
        let torrc = node.torrc().display().to_string();
        let running = node
            .pid
            .is_some_and(|pid| process::command_line(pid).is_some_and(|c| c.contains(&torrc)));
        let mut line = format!(
            "{:<8} {:<9} pid {:<7} {}",
            node.nickname,
            format!("{:?}", node.role).to_lowercase(),
            node.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            if running { "running" } else { "stopped" },
        );
        if node.role == Role::Authority {
            match ConsensusSummary::read(&node.data_dir) {
                Some(c) => {
                    let _ = write!(
                        line,
                        ", consensus valid-after {} with {} relays",
                        c.valid_after,
                        c.relays.len()
                    );
                }
                None => line.push_str(", no consensus yet"),
            }
        }
        lines.push(line);
    }
    Ok(lines)
}
