//! Servers of a test's own beside the shared stack, to stop, kill and
//! restart at will: a PostgreSQL cluster ([`ThrowawayCluster`]) and a
//! Kafka-protocol broker ([`PrivateBroker`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::stack::Stack;
use crate::support::{eventually, free_port, run_program, TempDir};

/// A PostgreSQL cluster of a test's own (not the stack's), on a free port, to
/// be started and stopped at will: a server with another `wal_level`, or one
/// that is down when capture starts.
pub struct ThrowawayCluster {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    wal_level: String,
    _dir: TempDir,
}

impl ThrowawayCluster {
    /// Runs initdb; the cluster is not started.
    pub fn create(hint: &str, wal_level: &str) -> Result<ThrowawayCluster> {
        let stack = Stack::get();
        let dir = TempDir::new(hint)?;
        let data = dir.0.join("data");
        if let Some(user) = &stack.pg_run_as {
            run_program("chown", &["-R", user, &dir.0.display().to_string()], None)?;
            run_program("chmod", &["755", &dir.0.display().to_string()], None)?;
        }
        let initdb = stack.pg_bindir.join("initdb").display().to_string();
        let data_text = data.display().to_string();
        run_program(
            &initdb,
            &["-D", &data_text, "-A", "trust", "-U", "postgres"],
            stack.pg_run_as.as_deref(),
        )?;
        Ok(ThrowawayCluster {
            port: free_port()?,
            log: dir.0.join("log"),
            data,
            wal_level: wal_level.to_owned(),
            _dir: dir,
        })
    }

    /// A standby of the running `primary`: its data directory copied by
    /// `pg_basebackup` with `-R` (it streams from `primary` once started).
    pub fn standby_of(primary: &ThrowawayCluster, hint: &str) -> Result<ThrowawayCluster> {
        let stack = Stack::get();
        let dir = TempDir::new(hint)?;
        if let Some(user) = &stack.pg_run_as {
            run_program("chown", &["-R", user, &dir.0.display().to_string()], None)?;
            run_program("chmod", &["755", &dir.0.display().to_string()], None)?;
        }
        let data = dir.0.join("data");
        let port = primary.port.to_string();
        run_program(
            &stack.pg_bindir.join("pg_basebackup").display().to_string(),
            &[
                "-D",
                &data.display().to_string(),
                "-R",
                "-X",
                "stream",
                // An immediate checkpoint, not a spread one (minutes).
                "-c",
                "fast",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
            ],
            stack.pg_run_as.as_deref(),
        )
        .context("pg_basebackup")?;
        Ok(ThrowawayCluster {
            port: free_port()?,
            log: dir.0.join("log"),
            data,
            wal_level: primary.wal_level.clone(),
            _dir: dir,
        })
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) -> Result<()> {
        let stack = Stack::get();
        run_program(
            &stack.pg_bindir.join("pg_ctl").display().to_string(),
            &["-D", &self.data.display().to_string(), "-w", "promote"],
            stack.pg_run_as.as_deref(),
        )
    }

    /// `postgres://postgres@127.0.0.1:<port>/<dbname>`.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// The cluster's own directory (the data directory is `data` in it).
    pub fn dir(&self) -> &std::path::Path {
        &self._dir.0
    }

    /// The data directory (`pg_hba.conf`, ...).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    pub fn start(&self) -> Result<()> {
        self.start_with("")
    }

    /// Starts the server with extra `-c name=value` options.
    pub fn start_with(&self, extra_options: &str) -> Result<()> {
        let stack = Stack::get();
        let socket_dir = self
            .data
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c wal_level={} -c max_wal_senders=10 -c max_replication_slots=10 -k {socket_dir} {extra_options}",
            self.port, self.wal_level
        );
        run_program(
            &stack.pg_bindir.join("pg_ctl").display().to_string(),
            &[
                "-D",
                &self.data.display().to_string(),
                "-o",
                &options,
                "-l",
                &self.log.display().to_string(),
                "-w",
                "start",
            ],
            stack.pg_run_as.as_deref(),
        )
    }

    /// Stops the server at once, as a crash would (`-m immediate`: no
    /// shutdown checkpoint; the next start recovers from the WAL).
    pub fn crash(&self) -> Result<()> {
        self.pg_ctl_stop("immediate")
    }

    pub fn stop(&self) -> Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// `pg_ctl stop -m <mode>`, waiting for the server to go.
    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let stack = Stack::get();
        run_program(
            &stack.pg_bindir.join("pg_ctl").display().to_string(),
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                mode,
                "-w",
                "stop",
            ],
            stack.pg_run_as.as_deref(),
        )
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let stack = Stack::get();
        let _ = run_program(
            &stack.pg_bindir.join("pg_ctl").display().to_string(),
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "stop",
            ],
            stack.pg_run_as.as_deref(),
        );
    }
}

/// A Kafka-protocol broker of a test's own (tansu, durable sqlite storage),
/// on a free port, to be killed and restarted without touching the shared one.
pub struct PrivateBroker {
    pub port: u16,
    /// The port the broker tells clients to connect to (its own, or a
    /// proxy's in front of it).
    advertised: u16,
    child: Option<std::process::Child>,
    dir: TempDir,
}

impl PrivateBroker {
    /// The tansu binary: `SYNC_BRIDGE_TANSU_BIN`, else where `scripts/stack` builds it.
    pub fn binary() -> PathBuf {
        if let Ok(path) = std::env::var("SYNC_BRIDGE_TANSU_BIN") {
            return PathBuf::from(path);
        }
        let cache = std::env::var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
            });
        cache.join("sync-bridge/tansu-0.6.0/bin/tansu")
    }

    /// Starts a broker and waits until it accepts connections.
    pub async fn start(hint: &str) -> Result<PrivateBroker> {
        let port = free_port()?;
        PrivateBroker::start_behind(hint, port, port).await
    }

    /// Starts a broker on `port` that tells its clients to connect to
    /// `advertised` instead: where a proxy in front of it listens.
    pub async fn start_behind(hint: &str, port: u16, advertised: u16) -> Result<PrivateBroker> {
        let dir = TempDir::new(hint)?;
        std::fs::create_dir_all(dir.0.join("data"))?;
        let mut broker = PrivateBroker {
            port,
            advertised,
            child: None,
            dir,
        };
        broker.restart().await?;
        Ok(broker)
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again (on the same port and storage).
    pub async fn restart(&mut self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("broker.log"))?;
        let child = std::process::Command::new(Self::binary())
            .current_dir(&self.dir.0)
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "sqlite://data/tansu.db"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", Self::binary().display()))?;
        self.child = Some(child);
        let address = self.address();
        eventually(
            "the private broker to listen",
            Duration::from_secs(60),
            || {
                let address = address.clone();
                async move {
                    Ok(tokio::net::TcpStream::connect(&address)
                        .await
                        .ok()
                        .map(|_| ()))
                }
            },
        )
        .await
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
