//! A crash at any step of `carom init` leaves either no profile or the complete profile.
//!
//! The real `caromd` is started with `CAROMD_CRASH_AFTER=<step>` (a hook of debug builds; see
//! `daemon/src/profile.rs`), asked through its API to create a profile, and kills itself with
//! SIGKILL the moment that step of the real creation code is done. A fresh daemon on the same
//! directory must then find either no profile, with nothing of the interrupted creation left,
//! after which `profile.create` works and the new profile unlocks after a restart; or the
//! complete profile, which unlocks. Every step is tried with a passphrase-protected profile
//! and with an unprotected one (which the daemon opens by itself at start: a half-created one
//! used to make it exit at every start).
//!
//! The same harness shows that a store which takes itself out of service (a bug left its
//! connection in doubt; here a debug build's fault injection, `CAROM_DEBUG_STORE_POISON_AFTER_WRITES`)
//! stops the daemon with a reason and a failing exit status, instead of leaving it looking
//! alive while every call fails; and that what was saved before is there at the next start.
//!
//! No Tor network is needed. The daemons get an arti configuration whose only directory cache
//! is a port on 127.0.0.1 that the test holds open and never serves, so arti starts and waits
//! for a directory without contacting anything else.

use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use carom_api as api;
use carom_client::Client;

const PASSPHRASE: &str = "crash test passphrase";

/// The signal the hook kills the daemon with (9 on every Unix).
const SIGKILL: i32 = 9;

/// What a fresh start must find after a crash right after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The crash came before the commit point.
    NoProfile,
    /// The crash came after it.
    Complete,
}

/// The daemon's files in its data directory that are not the profile's.
const NOT_THE_PROFILE: [&str; 2] = ["caromd.lock", "tor"];

struct Daemon {
    dir: PathBuf,
    arti: PathBuf,
    child: Option<Child>,
    /// More environment for the next start (a fault injection of debug builds).
    env: Vec<(&'static str, String)>,
}

impl Daemon {
    fn new(dir: &Path, directory_port: u16) -> Daemon {
        let arti = dir.join("arti.toml");
        // Made-up identities: nothing answers on the port anyway.
        std::fs::write(
            &arti,
            format!(
                "[tor_network]\n\
                 fallback_caches = [\n  {{ rsa_identity = \"{rsa}\", \
                 ed_identity = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\", \
                 orports = [\"127.0.0.1:{directory_port}\"] }},\n]\n\
                 [tor_network.authorities]\nv3idents = [\"{v3}\"]\n\
                 [address_filter]\nallow_local_addrs = true\n\
                 [preemptive_circuits]\ninitial_predicted_ports = []\n",
                rsa = "1".repeat(40),
                v3 = "2".repeat(40),
            ),
        )
        .expect("arti configuration");
        std::fs::write(dir.join("caromd.toml"), "").expect("daemon configuration");
        Daemon {
            dir: dir.to_owned(),
            arti,
            child: None,
            env: Vec::new(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run").join("carom.sock")
    }

    fn start(&mut self, crash_after: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("caromd.log"))
            .expect("log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_caromd"));
        command
            .arg("--config")
            .arg(self.dir.join("caromd.toml"))
            .arg("--data-dir")
            .arg(self.data())
            .arg("--runtime-dir")
            .arg(self.dir.join("run"))
            .arg("--arti-config")
            .arg(&self.arti)
            .arg("--log")
            .arg("info,caromd=debug")
            .env_remove("CAROMD_CRASH_AFTER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(step) = crash_after {
            command.env("CAROMD_CRASH_AFTER", step);
        }
        command.env_remove(carom_engine::POISON_AFTER_WRITES_VAR);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        self.child = Some(command.spawn().expect("caromd starts"));
    }

    async fn client(&mut self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // A socket left by a killed daemon is there until the new one replaces it.
            match Client::connect(&self.socket()).await {
                Ok(client) => return client,
                Err(e) => {
                    if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                        panic!("caromd exited ({status}) before serving\n{}", self.log());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "cannot connect: {e}\n{}",
                        self.log()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("caromd did not exit\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop through the API and wait for a clean exit.
    async fn stop(&mut self) {
        let client = self.client().await;
        client.shutdown().await.expect("shutdown");
        let status = self.wait_exit().await;
        assert!(
            status.success(),
            "caromd stopped with {status}\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("caromd.log")).unwrap_or_default()
    }

    /// The names in the data directory that belong to a profile (or to its creation).
    fn profile_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data())
            .expect("data directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| !NOT_THE_PROFILE.contains(&name.as_str()))
            .collect();
        names.sort();
        names
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn create_params(protected: bool) -> api::ProfileCreate {
    if protected {
        api::ProfileCreate {
            passphrase: Some(PASSPHRASE.into()),
            no_passphrase: false,
        }
    } else {
        api::ProfileCreate {
            passphrase: None,
            no_passphrase: true,
        }
    }
}

/// Open the profile a fresh daemon found: unlock it if it is protected, or check that the
/// daemon opened it by itself. Returns its address.
async fn open_existing(client: &Client, protected: bool, log: impl Fn() -> String) -> String {
    let info = client.info().await.expect("info");
    if protected {
        assert_eq!(info.profile, api::ProfileState::Locked, "{}", log());
        client.unlock(PASSPHRASE).await.expect("unlock").address
    } else {
        assert_eq!(info.profile, api::ProfileState::Unlocked, "{}", log());
        client.identity().await.expect("identity").address
    }
}

async fn crash_then_start_again(step: &str, protected: bool, expect: Expect) {
    // Held, never served: arti's connections to it just wait.
    let directory = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = directory.local_addr().expect("port").port();
    let root = tempfile::tempdir().expect("temporary directory");
    let mut daemon = Daemon::new(root.path(), port);

    daemon.start(Some(step));
    let client = daemon.client().await;
    let answer = client.create_profile(&create_params(protected)).await;
    let status = daemon.wait_exit().await;
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "caromd was to kill itself after {step} but ended with {status}; answer: {answer:?}\n{}",
        daemon.log()
    );
    assert!(answer.is_err(), "no answer can come from a killed daemon");
    drop(client);

    daemon.start(None);
    let client = daemon.client().await;
    match expect {
        Expect::NoProfile => {
            let info = client.info().await.expect("info");
            assert_eq!(
                info.profile,
                api::ProfileState::None,
                "after a crash after {step}\n{}",
                daemon.log()
            );
            assert_eq!(
                daemon.profile_files(),
                Vec::<String>::new(),
                "the start removed what the interrupted creation left"
            );
            let created = client
                .create_profile(&create_params(protected))
                .await
                .expect("a new profile can be created");
            drop(client);
            daemon.stop().await;
            daemon.start(None);
            let client = daemon.client().await;
            let address = open_existing(&client, protected, || daemon.log()).await;
            assert_eq!(
                address, created.address,
                "the new profile is the one reopened"
            );
        }
        Expect::Complete => {
            let address = open_existing(&client, protected, || daemon.log()).await;
            assert!(address.ends_with(".onion"), "{address}");
        }
    }
    daemon.stop().await;
    assert_eq!(
        daemon.profile_files(),
        ["profile.db", "profile.key"],
        "a complete, closed profile and nothing else"
    );
    drop(directory);
}

macro_rules! crash_tests {
    ($($name:ident: $step:literal, $protected:literal => $expect:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(debug_assertions),
            ignore = "the crash hook is compiled into debug builds only"
        )]
        async fn $name() {
            crash_then_start_again($step, $protected, Expect::$expect).await;
        }
    )*};
}

crash_tests! {
    crash_after_staging_the_key_file_protected: "key-staged", true => NoProfile;
    crash_after_staging_the_key_file_unprotected: "key-staged", false => NoProfile;
    crash_after_creating_the_database_protected: "database-created", true => NoProfile;
    crash_after_creating_the_database_unprotected: "database-created", false => NoProfile;
    crash_after_saving_the_identity_protected: "identity-saved", true => NoProfile;
    crash_after_saving_the_identity_unprotected: "identity-saved", false => NoProfile;
    crash_after_placing_the_key_file_protected: "key-placed", true => Complete;
    crash_after_placing_the_key_file_unprotected: "key-placed", false => Complete;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the fault injection is compiled into debug builds only"
)]
async fn a_store_that_takes_itself_out_of_service_stops_the_daemon_with_a_reason() {
    let directory = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = directory.local_addr().expect("port").port();
    let root = tempfile::tempdir().expect("temporary directory");
    let mut daemon = Daemon::new(root.path(), port);
    daemon.start(None);
    let client = daemon.client().await;
    client
        .create_profile(&create_params(false))
        .await
        .expect("created");
    drop(client);
    daemon.stop().await;

    // From the tenth committed write on, the store acts as if a bug had left it in doubt.
    daemon.env = vec![(carom_engine::POISON_AFTER_WRITES_VAR, "10".to_owned())];
    daemon.start(None);
    let client = daemon.client().await;
    let mut added = Vec::new();
    for n in 0..200u8 {
        let address = carom_proto::IdentityKey::from_seed(&[n; 32])
            .address()
            .to_string();
        let params = api::ContactAdd {
            address: address.clone(),
            nickname: format!("contact {n}"),
            offer_nickname: String::new(),
            greeting: String::new(),
            kind: api::PeerKind::Human,
        };
        match client.add_contact(&params).await {
            Ok(_) => added.push(address),
            Err(_) => break,
        }
    }
    drop(client);
    let status = daemon.wait_exit().await;
    let log = daemon.log();
    assert_eq!(status.code(), Some(1), "caromd ended with {status}\n{log}");
    assert!(
        log.contains("took itself out of service"),
        "the log says why\n{log}"
    );
    assert!(added.len() < 200, "calls stopped succeeding");

    // Started again without the fault: everything saved before is there.
    daemon.env.clear();
    daemon.start(None);
    let client = daemon.client().await;
    let contacts: Vec<String> = client
        .contacts()
        .await
        .expect("contacts")
        .into_iter()
        .map(|c| c.address)
        .collect();
    for address in &added {
        assert!(
            contacts.contains(address),
            "{address} was saved and is there"
        );
    }
    drop(client);
    daemon.stop().await;
    drop(directory);
}

/// A frontend that reconnects at once, hundreds of times (a polling bot), is never refused for
/// the connections it already closed — even when every commit lags (a slow disk: a debug
/// build's fault injection, `CAROM_DEBUG_STORE_WRITE_DELAY_MS`), which once kept a closed
/// connection's place taken while its attach event waited to commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the fault injection is compiled into debug builds only"
)]
async fn a_frontend_that_reconnects_at_once_is_never_refused_for_closed_connections() {
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::net::UnixStream;

    let directory = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = directory.local_addr().expect("port").port();
    let root = tempfile::tempdir().expect("temporary directory");
    let mut daemon = Daemon::new(root.path(), port);
    daemon.start(None);
    let client = daemon.client().await;
    client
        .create_profile(&create_params(false))
        .await
        .expect("created");
    drop(client);
    daemon.stop().await;

    daemon.env = vec![(carom_engine::SLOW_WRITES_VAR, "50".to_owned())];
    daemon.start(None);
    drop(daemon.client().await);
    let socket = daemon.socket();
    let firsts = tokio::task::spawn_blocking(move || {
        (0..300)
            .map(|_| {
                let stream = UnixStream::connect(&socket).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut line = String::new();
                BufReader::new(stream)
                    .read_line(&mut line)
                    .expect("a first line");
                line
            })
            .collect::<Vec<String>>()
    })
    .await
    .expect("the frontend loop");
    let refused: Vec<&String> = firsts
        .iter()
        .filter(|line| !line.contains(api::method::BANNER))
        .collect();
    assert!(
        refused.is_empty(),
        "{} of 300 connections were refused, the first with {}\n{}",
        refused.len(),
        refused[0],
        daemon.log()
    );
    daemon.stop().await;
}
