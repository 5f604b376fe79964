//! The service binaries (`capture`, `apply`) run as child processes of a
//! test ([`ServiceProcess`]): where they are built, their config and log
//! files, waiting on their output, terminating or killing them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::support::{eventually, TempDir};

/// Where the workspace's built binaries are.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(format!("SYNC_BRIDGE_{}_BIN", name.to_uppercase())) {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug").join(name)
}

/// A service binary (`capture`, `apply`) running as a child process.
pub struct ServiceProcess {
    child: tokio::process::Child,
    pub log: PathBuf,
    _dir: TempDir,
}

impl ServiceProcess {
    pub fn spawn(binary_name: &str, toml: &str, hint: &str) -> Result<ServiceProcess> {
        Self::spawn_with_env(binary_name, toml, hint, &[])
    }

    /// Like [`ServiceProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        binary_name: &str,
        toml: &str,
        hint: &str,
        env: &[(&str, &str)],
    ) -> Result<ServiceProcess> {
        let dir = TempDir::new(hint)?;
        let config = dir.0.join("config.toml");
        std::fs::write(&config, toml)?;
        let log = dir.0.join("service.log");
        let stderr = std::fs::File::create(&log)?;
        let bin = binary(binary_name);
        if !bin.exists() {
            bail!(
                "{} is missing: build it first (scripts/test does)",
                bin.display()
            );
        }
        let stdout = std::fs::File::create(dir.0.join("stdout.log"))?;
        let child = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("SYNC_BRIDGE_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        Ok(ServiceProcess {
            child,
            log,
            _dir: dir,
        })
    }

    /// What the process wrote: stderr (the logs), then stdout.
    pub fn output(&self) -> String {
        // Read as bytes: a debug log can carry bytes that are not UTF-8,
        // and the rest of it must still be readable.
        let read = |path: &std::path::Path| {
            String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
        };
        let mut text = read(&self.log);
        if let Some(dir) = self.log.parent() {
            text.push_str(&read(&dir.join("stdout.log")));
        }
        text
    }

    /// Waits until the output contains `text`, or fails after `timeout`
    /// showing the output.
    pub async fn wait_for_output(&self, text: &str, timeout: Duration) -> Result<()> {
        let found = eventually(&format!("{text:?} in the output"), timeout, || async {
            Ok(self.output().contains(text).then_some(()))
        })
        .await;
        found.with_context(|| format!("output so far:\n{}", self.output()))
    }

    pub async fn kill_hard(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit code.
    pub async fn terminate(&mut self) -> Result<Option<i32>> {
        if let Some(pid) = self.child.id() {
            let status = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()?;
            if !status.success() {
                bail!("kill -TERM {pid} failed");
            }
        }
        self.wait(Duration::from_secs(60)).await
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .context("the service did not exit in time")??;
        Ok(status.code())
    }
}

/// How a one-shot command of a service binary ended.
pub struct Finished {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `binary_name --config <toml> <args>` to its end (a subcommand such
/// as `status` or `verify`).
pub async fn run_command(binary_name: &str, toml: &str, args: &[&str]) -> Result<Finished> {
    let dir = TempDir::new(&crate::support::unique("command"))?;
    let config = dir.0.join("config.toml");
    std::fs::write(&config, toml)?;
    let output = tokio::process::Command::new(binary(binary_name))
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("SYNC_BRIDGE_LOG_FORMAT", "text")
        .env("RUST_LOG", "info")
        .output()
        .await
        .with_context(|| format!("run {binary_name} {}", args.join(" ")))?;
    Ok(Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
