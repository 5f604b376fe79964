//! Security basics against real servers: the least-privilege roles of
//! `deploy/sql/` are enough for both directions, TLS to Postgres is honoured
//! by both kinds of connection, and secrets never reach the output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runtime::tls::{PgTls, SslMode};
use sync_bridge_tests::{
    binary, connect, count, create_topic, eventually, mapping_dir, random_writes, run_program,
    server_of, three_rows_stream, unique, Bridge, CaptureSetup, Proxy, ServiceProcess, Side, Stack,
    TempDir, TestDb, ThrowawayCluster,
};

const WAIT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a file of `deploy/sql/` with psql, as the admin of `url`.
fn psql_file(url: &str, file: &str, variables: &[(&str, &str)]) -> anyhow::Result<()> {
    let psql = Stack::get().pg_bindir.join("psql").display().to_string();
    let path = repo().join("deploy/sql").join(file).display().to_string();
    let mut args: Vec<String> = vec![
        "-X".into(),
        "-q".into(),
        "-d".into(),
        url.into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
    ];
    for (name, value) in variables {
        args.push("-v".into());
        args.push(format!("{name}={value}"));
    }
    args.push("-f".into());
    args.push(path);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_program(&psql, &args, None)
}

const ADMIN: &str = "postgres://postgres@";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_roles_keep_both_directions_in_step() -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("leastpriv").await?;
    let capture_role = unique("capture");
    let apply_role = unique("apply");
    for (setup, file) in [
        (&bridge.legacy, "legacy-roles.sql"),
        (&bridge.platform, "platform-roles.sql"),
    ] {
        psql_file(
            &setup.db.url,
            file,
            &[
                ("capture_role", &capture_role),
                ("apply_role", &apply_role),
                ("capture_password", "capture-password"),
                ("apply_password", "apply-password"),
                ("publication", &setup.publication),
            ],
        )?;
    }
    let admin_urls = (bridge.legacy.db.url.clone(), bridge.platform.db.url.clone());
    assert!(admin_urls.0.starts_with(ADMIN) && admin_urls.1.starts_with(ADMIN));
    let apply_toml = bridge
        .apply_toml()
        .replace(ADMIN, &format!("postgres://{apply_role}@"));
    for setup in [&mut bridge.legacy, &mut bridge.platform] {
        setup.db.url = setup
            .db
            .url
            .replace(ADMIN, &format!("postgres://{capture_role}@"));
    }

    // The roles are what the SQL says: no superuser, no CREATE on the
    // database, nothing owned but apply's bookkeeping schema.
    for db in [bridge.legacy(), bridge.platform()] {
        for role in [&capture_role, &apply_role] {
            let row = db
                .client()
                .query_one(
                    "SELECT rolsuper, has_database_privilege($1, current_database(), 'CREATE'), \
                            (SELECT count(*) FROM pg_class WHERE relowner = r.oid) \
                     FROM pg_roles r WHERE rolname = $1",
                    &[role],
                )
                .await?;
            assert!(!row.get::<_, bool>(0), "{role} is no superuser");
            assert!(
                !row.get::<_, bool>(1),
                "{role} may not CREATE in the database"
            );
            assert_eq!(row.get::<_, i64>(2), 0, "{role} owns no relation yet");
        }
    }

    bridge.start_captures().await?;
    bridge.start_apply_with(&apply_toml)?;
    let (legacy_writes, platform_writes) = tokio::join!(
        random_writes(&admin_urls.0, Side::Legacy, Duration::from_secs(6), 11),
        random_writes(&admin_urls.1, Side::Platform, Duration::from_secs(6), 12),
    );
    assert!(legacy_writes? > 0 && platform_writes? > 0);
    bridge.converged(Duration::from_secs(180)).await?;
    let crossed = (
        bridge.counters.legacy_to_platform.snapshot().applied,
        bridge.counters.platform_to_legacy.snapshot().applied,
    );
    assert!(
        crossed.0 > 0 && crossed.1 > 0,
        "both directions applied rows: {crossed:?}"
    );
    for db in [bridge.legacy(), bridge.platform()] {
        let owner: String = db
            .client()
            .query_one(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'syncbridge'",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(owner, apply_role);
    }
    bridge.stop().await
}

/// A cluster of the test's own with `ssl=on` and a certificate for
/// 127.0.0.1 and localhost signed by a CA made for the test.
struct TlsServer {
    cluster: ThrowawayCluster,
    ca: PathBuf,
    other_ca: PathBuf,
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    run_program("openssl", args, None)
}

fn certificate_authority(dir: &Path, name: &str) -> anyhow::Result<(String, String)> {
    let key = dir.join(format!("{name}.key")).display().to_string();
    let cert = dir.join(format!("{name}.crt")).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &cert,
        "-days",
        "2",
        "-subj",
        &format!("/CN=sync bridge test {name}"),
    ])?;
    Ok((key, cert))
}

impl TlsServer {
    fn start(hint: &str) -> anyhow::Result<TlsServer> {
        let cluster = ThrowawayCluster::create(hint, "logical")?;
        let dir = cluster.dir().join("tls");
        std::fs::create_dir_all(&dir)?;
        let (ca_key, ca) = certificate_authority(&dir, "ca")?;
        let (_, other_ca) = certificate_authority(&dir, "other-ca")?;
        let path = |name: &str| dir.join(name).display().to_string();
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &path("server.key"),
            "-out",
            &path("server.csr"),
            "-subj",
            "/CN=localhost",
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path("server.csr"),
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &path("server.crt"),
            "-days",
            "2",
            "-extfile",
            &path("san.ext"),
        ])?;
        // The server insists on a private key only its own user can read.
        if let Some(user) = &Stack::get().pg_run_as {
            run_program(
                "chown",
                &[user, &path("server.key"), &path("server.crt")],
                None,
            )?;
        }
        run_program("chmod", &["600", &path("server.key")], None)?;
        cluster.start_with(&format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            path("server.crt"),
            path("server.key")
        ))?;
        Ok(TlsServer {
            cluster,
            ca: PathBuf::from(ca),
            other_ca: PathBuf::from(other_ca),
        })
    }

    /// A capture configuration for table `things` of database `postgres`.
    fn capture_toml(&self, tls: &str, topic: &str) -> String {
        format!(
            "[source]\nname = \"legacy\"\nurl = {:?}\n{tls}\ntables = [\"things\"]\n\
             slot = \"s_tls\"\npublication = \"p_tls\"\n\
             [kafka]\nbrokers = {:?}\ntopic = {topic:?}\n\
             [capture]\nstatus_interval = \"200ms\"\nmax_backoff = \"2s\"\nheartbeat_interval = \"0s\"\n",
            self.cluster.url("postgres"),
            Stack::get().brokers,
        )
    }
}

/// Streams three rows through capture configured with `tls` and checks both
/// of its connections (queries and replication) were encrypted.
async fn streams_encrypted(server: &TlsServer, tls: &str) -> anyhow::Result<()> {
    let admin = connect(&server.cluster.url("postgres")).await?;
    admin
        .batch_execute("CREATE TABLE IF NOT EXISTS things (id int PRIMARY KEY, label text)")
        .await?;
    let topic = unique("tls");
    create_topic(&topic).await?;
    let config = capture::Config::from_toml(&server.capture_toml(tls, &topic))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(capture::run(config, shutdown.clone()));
    assert_eq!(three_rows_stream(&admin, "s_tls", &topic).await?, 3);
    let encrypted = count(
        &admin,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'syncbridge-capture-legacy' AND s.ssl",
    )
    .await?;
    let plain = count(
        &admin,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'syncbridge-capture-legacy' AND NOT s.ssl",
    )
    .await?;
    assert!(
        encrypted >= 2 && plain == 0,
        "the query and the replication connection are encrypted ({encrypted} encrypted, {plain} plain)"
    );
    shutdown.cancel();
    task.await??;
    admin.batch_execute("TRUNCATE things").await?;
    eventually("the slot to be dropped", WAIT, || async {
        let dropped = admin
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = 's_tls' AND NOT active",
                &[],
            )
            .await?
            .len();
        Ok((dropped == 1).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_streams_over_tls_with_sslmode_require_and_verify_full() -> anyhow::Result<()> {
    let server = TlsServer::start("tlsok")?;
    streams_encrypted(&server, "sslmode = \"require\"").await?;
    streams_encrypted(
        &server,
        &format!(
            "sslmode = \"verify-full\"\nsslrootcert = {:?}",
            server.ca.display().to_string()
        ),
    )
    .await?;

    // A certificate from another CA is refused, once, with what to fix.
    let topic = unique("tlsbad");
    let toml = server.capture_toml(
        &format!(
            "sslmode = \"verify-full\"\nsslrootcert = {:?}",
            server.other_ca.display().to_string()
        ),
        &topic,
    );
    let mut process = ServiceProcess::spawn("capture", &toml, "tlsbad")?;
    let code = process.wait(WAIT).await?;
    let output = process.output();
    assert_eq!(
        code,
        Some(2),
        "a certificate that does not verify is definite:\n{output}"
    );
    assert!(
        output.contains("sslmode = verify-full") && output.contains("certificate"),
        "{output}"
    );
    Ok(())
}

/// The deadline reads the protocol above the encryption: a TLS link that
/// stops forwarding between two answers fails as a plain one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_link_that_stops_between_two_pipelined_answers_fails_within_its_deadline(
) -> anyhow::Result<()> {
    let server = TlsServer::start("tlslink")?;
    let url = server.cluster.url("postgres");
    let proxy = Proxy::start(&server_of(&url)).await?;
    let pg: tokio_postgres::Config = proxy.url_through(&url).parse()?;
    let tls = PgTls {
        mode: SslMode::VerifyFull,
        root_cert: Some(server.ca.clone()),
    };
    crate::links::the_second_of_two_pipelined_queries_fails_within_the_deadline(pg, tls, &proxy)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_admitted_only_over_tls_is_served_by_the_stream_the_status_and_the_snapshot(
) -> anyhow::Result<()> {
    let server = TlsServer::start("tlsonly")?;
    let admin = connect(&server.cluster.url("postgres")).await?;
    admin
        .batch_execute(
            "CREATE TABLE things (id int PRIMARY KEY, label text);
             CREATE ROLE tls_only LOGIN SUPERUSER REPLICATION;",
        )
        .await?;
    // The server refuses this role on a connection without TLS.
    let hba = server.cluster.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba)?;
    std::fs::write(&hba, format!("hostnossl all tls_only all reject\n{rules}"))?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    let url = server
        .cluster
        .url("postgres")
        .replacen("postgres@", "tls_only@", 1);
    assert!(
        connect(&url).await.is_err(),
        "a plaintext connection as tls_only is refused"
    );

    let topic = unique("tlsonly");
    create_topic(&topic).await?;
    let toml = server
        .capture_toml("sslmode = \"require\"", &topic)
        .replacen("postgres://postgres@", "postgres://tls_only@", 1);
    let config = capture::Config::from_toml(&toml)?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(capture::run(config.clone(), shutdown.clone()));
    three_rows_stream(&admin, "s_tls", &topic).await?;

    let dir = TempDir::new("tlsonly-status")?;
    let config_file = dir.0.join("config.toml");
    std::fs::write(&config_file, &toml)?;
    let output = tokio::process::Command::new(binary("capture"))
        .arg("--config")
        .arg(&config_file)
        .args(["status", "--json"])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let status: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|e| anyhow::anyhow!("capture status --json: {e}: {stdout}"))?;
    assert!(
        status["slots"][0]["error"].is_null() && status["slots"][0]["exists"] == true,
        "capture status reads the slot over TLS: {status}"
    );

    let summary = capture::snapshot::snapshot(
        &config,
        &capture::snapshot::SnapshotOptions::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    assert_eq!(summary.confirmed, 3, "the snapshot reads over TLS");

    shutdown.cancel();
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_against_a_server_without_tls_fails_clearly() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "notls").await?;
    db.execute("CREATE TABLE things (id int PRIMARY KEY)")
        .await?;
    let setup = CaptureSetup::new(db, &["things"]);
    create_topic(&setup.topic).await?;
    let toml = setup
        .toml()
        .replacen("[source]\n", "[source]\nsslmode = \"require\"\n", 1);
    let mut process = ServiceProcess::spawn("capture", &toml, "notls")?;
    let code = process.wait(WAIT).await?;
    let output = process.output();
    assert_eq!(code, Some(2), "exit 2, no retry loop:\n{output}");
    for text in [
        "sslmode = require",
        "does not support TLS",
        "enable ssl on the server",
    ] {
        assert!(output.contains(text), "mentions {text:?}:\n{output}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_from_the_environment_or_files_never_appear_in_the_output() -> anyhow::Result<()>
{
    let cluster = ThrowawayCluster::create("secrets", "logical")?;
    // Passwords are checked (SCRAM) for everyone but the admin.
    std::fs::write(
        cluster.data_dir().join("pg_hba.conf"),
        "local all all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n\
         host replication all 127.0.0.1/32 scram-sha-256\n",
    )?;
    cluster.start()?;
    let password = format!("Pw-{}", unique("secret"));
    let wrong = format!("Wrong-{}", unique("secret"));
    let admin = connect(&cluster.url("postgres")).await?;
    admin
        .batch_execute(&format!(
            "CREATE ROLE bridge LOGIN SUPERUSER PASSWORD '{password}'"
        ))
        .await?;
    for db in ["legacy_db", "platform_db"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await?;
    }
    let reference = &Stack::get().reference_dir;
    for (db, file) in [("legacy_db", "legacy.sql"), ("platform_db", "platform.sql")] {
        let client = connect(&cluster.url(db)).await?;
        client
            .batch_execute(&std::fs::read_to_string(reference.join(file))?)
            .await?;
    }
    let url = |db: &str| {
        cluster
            .url(db)
            .replace("postgres://postgres@", "postgres://bridge@")
    };
    let password_file = sync_bridge_tests::TempDir::new("secretfile")?;
    let password_path = password_file.0.join("password");
    std::fs::write(&password_path, format!("{password}\n"))?;

    let topics = [unique("secret.legacy"), unique("secret.platform")];
    for topic in &topics {
        create_topic(topic).await?;
    }
    let capture_toml = |name: &str, db: &str, tables: &str, topic: &str, extra: &str| {
        format!(
            "[source]\nname = {name:?}\nurl = {:?}\n{extra}tables = [{tables}]\n\
             [kafka]\nbrokers = {:?}\ntopic = {topic:?}\n\
             [capture]\nstatus_interval = \"200ms\"\nmax_backoff = \"2s\"\nheartbeat_interval = \"1s\"\n",
            url(db),
            Stack::get().brokers,
        )
    };
    let legacy_tables = "\"public.users\", \"public.categories\", \"public.teams\", \"public.team_members\", \"public.geofences\"";
    let platform_tables =
        "\"identity.identities\", \"org.groups\", \"org.memberships\", \"geo.zones\"";
    // Everything at debug level: the password must not show up anywhere.
    let debug = ("RUST_LOG", "debug");
    let mut processes = vec![
        ServiceProcess::spawn_with_env(
            "capture",
            &capture_toml("legacy", "legacy_db", legacy_tables, &topics[0], ""),
            "secret_capture_env",
            &[("SYNC_BRIDGE_SOURCE__PASSWORD", &password), debug],
        )?,
        ServiceProcess::spawn_with_env(
            "capture",
            &capture_toml(
                "platform",
                "platform_db",
                platform_tables,
                &topics[1],
                &format!(
                    "password_file = {:?}\n",
                    password_path.display().to_string()
                ),
            ),
            "secret_capture_file",
            &[debug],
        )?,
    ];
    let apply_toml = format!(
        "[legacy]\nurl = {:?}\ntopic = {:?}\npassword_file = {:?}\n\n[platform]\nurl = {:?}\ntopic = {:?}\n\n\
         [kafka]\nbrokers = {:?}\ngroup_id = {:?}\ndead_letter_topic = {:?}\n\n\
         [apply]\nmapping_dir = {:?}\nmax_backoff = \"2s\"\n",
        url("legacy_db"),
        topics[0],
        password_path.display().to_string(),
        url("platform_db"),
        topics[1],
        Stack::get().brokers,
        unique("secret_apply"),
        unique("secret.dead"),
        mapping_dir().display().to_string(),
    );
    processes.push(ServiceProcess::spawn_with_env(
        "apply",
        &apply_toml,
        "secret_apply",
        &[("SYNC_BRIDGE_PLATFORM__PASSWORD", &password), debug],
    )?);
    // A wrong password is reported without being shown either.
    let wrong_capture = ServiceProcess::spawn_with_env(
        "capture",
        &capture_toml(
            "legacy",
            "legacy_db",
            legacy_tables,
            &unique("secret.wrong"),
            "slot = \"s_wrong\"\n",
        ),
        "secret_capture_wrong",
        &[("SYNC_BRIDGE_SOURCE__PASSWORD", &wrong), debug],
    )?;

    // Both directions cross: every password reached its server.
    let legacy = connect(&cluster.url("legacy_db")).await?;
    let platform = connect(&cluster.url("platform_db")).await?;
    // Both captures stream from their slots (a row written before its
    // slot exists is never captured) and apply has started.
    eventually("both captures to stream and apply to start", WAIT, || async {
        let streaming = count(
            &admin,
            "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name LIKE 'syncbridge_%'",
        )
        .await?;
        let applying = processes[2].output().matches("applying").count();
        Ok((streaming == 2 && applying >= 2).then_some(()))
    })
    .await
    .map_err(|e| {
        let logs: Vec<String> = processes.iter().map(|p| p.output()).collect();
        anyhow::anyhow!("{e:#}\n{}", logs.join("\n"))
    })?;
    legacy
        .batch_execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
             VALUES ('secret@example.com', 'Secret Keeper', 'member', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC'))",
        )
        .await?;
    platform
        .batch_execute(
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at)
             VALUES (gen_random_uuid(), 'other@example.com', 'Other', 'Side', 'member', false, now(), now())",
        )
        .await?;
    eventually("each row on the other side", WAIT, || async {
        let there = count(
            &platform,
            "SELECT count(*) FROM identity.identities WHERE email = 'secret@example.com'",
        )
        .await?
            + count(
                &legacy,
                "SELECT count(*) FROM users WHERE email = 'other@example.com'",
            )
            .await?;
        Ok((there == 2).then_some(()))
    })
    .await
    .map_err(|e| {
        let logs: Vec<String> = processes.iter().map(|p| p.output()).collect();
        anyhow::anyhow!("{e:#}\n{}", logs.join("\n"))
    })?;
    wrong_capture
        .wait_for_output("password authentication failed", WAIT)
        .await?;

    let mut outputs = Vec::new();
    for mut process in processes.into_iter().chain([wrong_capture]) {
        let code = process.terminate().await?;
        outputs.push((code, process.output()));
    }
    for (code, output) in &outputs {
        assert!(!output.is_empty());
        assert!(
            !output.contains(&password) && !output.contains(&wrong),
            "a password in the output (exit {code:?}):\n{output}"
        );
    }
    Ok(())
}
