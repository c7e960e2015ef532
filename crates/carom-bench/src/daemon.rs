//! Real daemons for the benchmarks: this binary re-executed as `caromd` (the same code as the
//! `caromd` binary), each in its own process so its memory can be measured alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carom_api as api;
use carom_client::Client;

/// The argument that makes this binary run as `caromd`.
pub(crate) const AS_DAEMON: &str = "__caromd";

pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

pub(crate) struct Daemon {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    arti_config: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Start a daemon whose files live in `dir`, on the network described by `arti_config`.
    pub(crate) fn start(
        dir: &Path,
        name: &str,
        arti_config: &Path,
        config: &str,
    ) -> Result<Daemon, Error> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("caromd.toml"), config)?;
        let mut d = Daemon {
            name: name.into(),
            dir: dir.to_path_buf(),
            arti_config: arti_config.to_path_buf(),
            child: None,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("caromd.log"))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg(AS_DAEMON)
            .arg("--config")
            .arg(self.dir.join("caromd.toml"))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--runtime-dir")
            .arg(self.dir.join("run"))
            .arg("--log")
            .arg(std::env::var("CAROM_DAEMON_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // A daemon on the system's tor (its configuration says so) reaches the network
        // through that tor, not through an arti of its own.
        let config = std::fs::read_to_string(self.dir.join("caromd.toml"))?;
        if !config.contains("backend = \"system\"") {
            command.arg("--arti-config").arg(&self.arti_config);
        }
        let child = command.spawn()?;
        self.child = Some(child);
        Ok(())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stop (asking over the API), then start again on the same files.
    pub(crate) async fn restart(&mut self) -> Result<(), Error> {
        self.stop().await;
        self.spawn()
    }

    pub(crate) async fn stop(&mut self) {
        if let Ok(c) = Client::connect(&self.socket()).await {
            let _ = c.shutdown().await;
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("run").join("carom.sock")
    }

    pub(crate) async fn client(&self) -> Result<Client, Error> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match Client::connect(&self.socket()).await {
                Ok(c) => return Ok(c),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(format!("{}: {e}", self.name).into()),
            }
        }
    }

    /// Create (or unlock) the profile and wait until Tor is ready and the service has been
    /// published. Returns the address and how long that took from now.
    pub(crate) async fn up(&self) -> Result<(String, Duration), Error> {
        let started = Instant::now();
        let client = self.client().await?;
        if client.info().await?.profile == api::ProfileState::None {
            client
                .create_profile(&api::ProfileCreate {
                    passphrase: None,
                    no_passphrase: true,
                })
                .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let tor = client.tor_status().await?;
            // On the private network arti's publisher reports "degraded" even while clients
            // get through (see docs/testing.md); a descriptor has been published either way.
            if tor.ready && tor.service.is_reachable() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{}: Tor not ready: {tor:?}", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((client.identity().await?.address, started.elapsed()))
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

/// Subscribe (from now) and return a client whose next events are new ones.
pub(crate) async fn watcher(d: &Daemon, kinds: &[&str]) -> Result<Client, Error> {
    let c = d.client().await?;
    c.subscribe(&api::EventsSubscribe {
        since_seq: None,
        kinds: Some(kinds.iter().map(|k| (*k).to_owned()).collect()),
    })
    .await?;
    Ok(c)
}

/// Wait on `watcher` for an event matching `pred`; returns when it arrived.
pub(crate) async fn next_matching(
    watcher: &Client,
    limit: Duration,
    pred: impl Fn(&api::Event) -> bool,
) -> Result<Instant, Error> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, watcher.next_event()).await {
            Ok(Some(e)) if pred(&e) => return Ok(Instant::now()),
            Ok(Some(_)) => {}
            Ok(None) => return Err("the daemon closed the event stream".into()),
            Err(_) => return Err(format!("no matching event within {limit:?}").into()),
        }
    }
}
