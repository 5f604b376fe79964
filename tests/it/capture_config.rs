//! A configuration the source cannot serve ends capture with a message that
//! says what to fix, and exit code 2: no retry loop.

use std::time::Duration;

use sync_bridge_tests::{
    create_topic, unique, CaptureSetup, ServiceProcess, Side, Stack, TempDir, TestDb,
};

const EXIT: Duration = Duration::from_secs(60);

async fn exits_with_message(toml: &str, hint: &str, expected: &[&str]) -> anyhow::Result<()> {
    let mut process = ServiceProcess::spawn("capture", toml, hint)?;
    let code = process.wait(EXIT).await?;
    let output = process.output();
    assert_eq!(
        code,
        Some(2),
        "a configuration error exits 2; output:\n{output}"
    );
    for text in expected {
        assert!(
            output.contains(text),
            "the message should mention {text:?}; output:\n{output}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_does_not_exist_is_named_in_the_error() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "notable").await?;
    db.execute("CREATE TABLE present (id int PRIMARY KEY)")
        .await?;
    let setup = CaptureSetup::new(db, &["present", "public.absent"]);
    create_topic(&setup.topic).await?;
    exits_with_message(&setup.toml(), "notable", &["public.absent", "do not exist"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_is_told_to_grant_it() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "norepl").await?;
    let role = unique("plain");
    db.execute(&format!(
        "CREATE TABLE things (id int PRIMARY KEY);
         CREATE ROLE {role} LOGIN;
         GRANT SELECT ON things TO {role};"
    ))
    .await?;
    let setup = CaptureSetup::new(db, &["things"]);
    let toml = setup
        .toml()
        .replace("postgres://postgres@", &format!("postgres://{role}@"));
    exits_with_message(&toml, "norepl", &["REPLICATION", &role]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_configuration_key_is_rejected_before_connecting() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "badkey").await?;
    let setup = CaptureSetup::new(db, &["things"]);
    let toml = setup
        .toml()
        .replace("[kafka]", "[kafka]\nbrokerz = \"oops\"");
    exits_with_message(&toml, "badkey", &["brokerz"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_logical_wal_level_is_told_what_to_set() -> anyhow::Result<()> {
    let cluster = ReplicaCluster::start()?;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let client = sync_bridge_tests::connect(&url).await?;
    client
        .batch_execute("CREATE TABLE things (id int PRIMARY KEY)")
        .await?;
    let toml = format!(
        "[source]\nname = \"legacy\"\nurl = {url:?}\ntables = [\"things\"]\n[kafka]\nbrokers = {:?}\n",
        Stack::get().brokers
    );
    exits_with_message(&toml, "walreplica", &["wal_level", "logical"]).await
}

/// A throwaway cluster with `wal_level = replica`.
struct ReplicaCluster {
    port: u16,
    data: std::path::PathBuf,
    _dir: TempDir,
}

impl ReplicaCluster {
    fn start() -> anyhow::Result<ReplicaCluster> {
        let stack = Stack::get();
        let dir = TempDir::new("walreplica")?;
        let data = dir.0.join("data");
        let port = free_port()?;
        if let Some(user) = &stack.pg_run_as {
            run("chown", &["-R", user, &dir.0.display().to_string()], None)?;
            run("chmod", &["755", &dir.0.display().to_string()], None)?;
        }
        let bin = |name: &str| stack.pg_bindir.join(name).display().to_string();
        run(
            &bin("initdb"),
            &[
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
            stack.pg_run_as.as_deref(),
        )?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c wal_level=replica -k {}",
            dir.0.display()
        );
        run(
            &bin("pg_ctl"),
            &[
                "-D",
                &data.display().to_string(),
                "-o",
                &options,
                "-l",
                &dir.0.join("log").display().to_string(),
                "-w",
                "start",
            ],
            stack.pg_run_as.as_deref(),
        )?;
        Ok(ReplicaCluster {
            port,
            data,
            _dir: dir,
        })
    }
}

impl Drop for ReplicaCluster {
    fn drop(&mut self) {
        let stack = Stack::get();
        let pg_ctl = stack.pg_bindir.join("pg_ctl").display().to_string();
        let _ = run(
            &pg_ctl,
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

fn run(program: &str, args: &[&str], as_user: Option<&str>) -> anyhow::Result<()> {
    let mut command = match as_user {
        Some(user) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--", program]);
            c
        }
        None => std::process::Command::new(program),
    };
    let output = command.args(args).output()?;
    anyhow::ensure!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
