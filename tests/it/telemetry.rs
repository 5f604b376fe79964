//! Observability: the metrics both services expose (Prometheus text and
//! DogStatsD), the health endpoints, the lag as it grows and shrinks, and the
//! `status` subcommands, all against running service processes.

use std::collections::BTreeSet;
use std::time::Duration;

use runtime::telemetry::http::get_once;
use sync_bridge_tests::metrics as names;
use sync_bridge_tests::{
    connect, count, eventually, free_port, unique, until_count, Bridge, PrivateBroker,
    ServiceProcess, Stack,
};

const WAIT: Duration = Duration::from_secs(120);

/// The two captures and apply of a bridge, as processes, each with its
/// telemetry endpoints on a port of its own.
struct Services {
    legacy: ServiceProcess,
    platform: ServiceProcess,
    apply: ServiceProcess,
    legacy_address: String,
    apply_address: String,
}

/// The `[telemetry]` body serving on a free port (and sampling every 500 ms),
/// with `extra` lines.
fn telemetry_on(extra: &str) -> anyhow::Result<(String, String)> {
    let address = format!("127.0.0.1:{}", free_port()?);
    Ok((
        address.clone(),
        format!("listen = {address:?}\nsample_interval = \"500ms\"\n{extra}"),
    ))
}

impl Services {
    /// Starts both captures, waits for their slots, then starts apply.
    /// `brokers` replaces the shared broker in every configuration.
    async fn start(
        bridge: &mut Bridge,
        extra: &str,
        brokers: Option<&str>,
    ) -> anyhow::Result<Services> {
        let (legacy_address, legacy_telemetry) = telemetry_on(extra)?;
        let (_, platform_telemetry) = telemetry_on(extra)?;
        let (apply_address, apply_telemetry) = telemetry_on(extra)?;
        bridge.legacy.telemetry_options = legacy_telemetry;
        bridge.platform.telemetry_options = platform_telemetry;
        bridge.apply_telemetry = apply_telemetry;
        let route = |toml: String| match brokers {
            Some(brokers) => toml.replace(
                &format!("{:?}", Stack::get().brokers),
                &format!("{brokers:?}"),
            ),
            None => toml,
        };
        let name = &bridge.legacy.db.name;
        let legacy = ServiceProcess::spawn(
            "capture",
            &route(bridge.legacy.toml()),
            &format!("{name}_cl"),
        )?;
        let platform = ServiceProcess::spawn(
            "capture",
            &route(bridge.platform.toml()),
            &format!("{name}_cp"),
        )?;
        for setup in [&bridge.legacy, &bridge.platform] {
            eventually("the slot", WAIT, || async {
                Ok(setup.db.confirmed_flush_lsn(&setup.slot).await?.map(|_| ()))
            })
            .await?;
        }
        let apply =
            ServiceProcess::spawn("apply", &route(bridge.apply_toml()), &format!("{name}_ap"))?;
        Ok(Services {
            legacy,
            platform,
            apply,
            legacy_address,
            apply_address,
        })
    }

    /// Every line the three services logged.
    fn logs(&self) -> String {
        format!(
            "--- capture legacy\n{}\n--- capture platform\n{}\n--- apply\n{}",
            self.legacy.output(),
            self.platform.output(),
            self.apply.output()
        )
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        let logs = self.logs();
        for service in [&mut self.apply, &mut self.legacy, &mut self.platform] {
            assert_eq!(service.terminate().await?, Some(0), "{logs}");
        }
        Ok(())
    }
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name
                && labels.iter().all(|(k, v)| {
                    label_text
                        .split(',')
                        .any(|pair| pair == format!("{k}=\"{v}\""))
                }))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .next()
}

async fn scrape(address: &str) -> anyhow::Result<String> {
    let (code, body) = get_once(address, "/metrics")
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    Ok(body)
}

/// Waits until `/readyz` of the service at `address` answers `code`.
async fn readyz_becomes(address: &str, code: u16, what: &str) -> anyhow::Result<()> {
    eventually(what, WAIT, || async {
        Ok(match get_once(address, "/readyz").await {
            Ok((answered, _)) if answered == code => Some(()),
            _ => None,
        })
    })
    .await
}

async fn insert_user(client: &tokio_postgres::Client, n: u64) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ($1, 'Telemetry User', 'member', now(), now())",
            &[&format!("t{n}@example.com")],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_agreed_names_and_labels_and_the_services_report_ready(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("telemetry_names").await?;
    let services = Services::start(&mut bridge, "", None).await?;
    insert_user(bridge.legacy().client(), 1).await?;
    let platform = bridge.platform().client();
    until_count(
        "the user on the platform side",
        WAIT,
        platform,
        "SELECT count(*) FROM identity.identities",
        1,
    )
    .await?;
    readyz_becomes(&services.legacy_address, 200, "capture to be ready").await?;
    readyz_becomes(&services.apply_address, 200, "apply to be ready").await?;
    for address in [&services.legacy_address, &services.apply_address] {
        let (code, body) = get_once(address, "/healthz")
            .await
            .map_err(anyhow::Error::msg)?;
        assert_eq!((code, body.trim()), (200, "ok"));
    }

    let slot = bridge.legacy.slot.clone();
    let capture = eventually("capture's metrics", WAIT, || async {
        let text = scrape(&services.legacy_address).await?;
        let events = sample(
            &text,
            names::CAPTURE_EVENTS,
            &[("source", "legacy"), ("mode", "streaming")],
        );
        let sampled = sample(
            &text,
            names::CAPTURE_SLOT_RETAINED_WAL,
            &[("source", "legacy"), ("slot", &slot)],
        );
        Ok((events >= Some(1.0) && sampled.is_some()).then_some(text))
    })
    .await?;
    assert!(
        sample(
            &capture,
            names::CAPTURE_CONFIRMED_FLUSH_AGE,
            &[("source", "legacy"), ("slot", &slot)]
        )
        .is_some(),
        "{capture}"
    );
    assert_eq!(
        sample(&capture, names::READY, &[("service", "capture")]),
        Some(1.0),
        "{capture}"
    );

    let topic = bridge.legacy.topic.clone();
    let apply = eventually("apply's metrics", WAIT, || async {
        let text = scrape(&services.apply_address).await?;
        let applied = sample(
            &text,
            names::APPLY_EVENTS_APPLIED,
            &[("direction", "legacy_to_platform")],
        );
        let echoes = sample(
            &text,
            names::APPLY_ECHOES_SUPPRESSED,
            &[("direction", "platform_to_legacy")],
        );
        let lag = sample(
            &text,
            names::APPLY_CONSUMER_LAG,
            &[
                ("direction", "legacy_to_platform"),
                ("topic", &topic),
                ("partition", "0"),
            ],
        );
        Ok((applied >= Some(1.0) && echoes >= Some(1.0) && lag == Some(0.0)).then_some(text))
    })
    .await?;
    let direction = [("direction", "legacy_to_platform")];
    for name in [
        names::APPLY_EVENTS_SKIPPED_OLDER,
        names::APPLY_DEAD_LETTERED,
        names::APPLY_END_TO_END_LAG,
    ] {
        assert!(
            sample(&apply, name, &direction).is_some(),
            "{name} missing:\n{apply}"
        );
    }
    for histogram in [
        names::APPLY_COMMIT_LATENCY,
        names::APPLY_BATCH_SIZE,
        names::APPLY_BATCH_COMMIT,
    ] {
        let count = sample(&apply, &format!("{histogram}_count"), &direction);
        assert!(
            count >= Some(1.0),
            "{histogram} has no observation:\n{apply}"
        );
        assert!(
            sample(&apply, &format!("{histogram}_bucket"), &direction).is_some(),
            "{histogram} is a histogram with buckets:\n{apply}"
        );
    }
    assert_eq!(
        sample(&apply, names::READY, &[("service", "apply")]),
        Some(1.0),
        "{apply}"
    );
    // Every series is one of the agreed names (histograms with their suffixes).
    let mut seen = BTreeSet::new();
    for text in [&capture, &apply] {
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let metric = line.split(['{', ' ']).next().unwrap_or_default();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| metric.strip_suffix(suffix))
                .filter(|base| names::all().contains(base))
                .unwrap_or(metric);
            assert!(names::all().contains(&base), "unexpected series {metric}");
            seen.insert(base.to_owned());
        }
    }
    // All of them but the error counters (no error happened), the polling
    // watermark (no table is polled), the lost slots (none was lost) and
    // verification's (no pass is due yet: `verify` tests them).
    let expected: BTreeSet<String> = names::all()
        .iter()
        .filter(|name| {
            ![
                names::CAPTURE_ERRORS,
                names::APPLY_ERRORS,
                names::CAPTURE_POLLING_WATERMARK_AGE,
                names::CAPTURE_SLOT_LOST,
                names::VERIFY_ROWS_COMPARED,
                names::VERIFY_ROWS_DIFFERENT,
                names::VERIFY_LAST_PASS_AGE,
                names::VERIFY_ERRORS,
            ]
            .contains(name)
        })
        .map(|name| (*name).to_owned())
        .collect();
    assert_eq!(seen, expected);
    services.stop().await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dogstatsd_datagrams_arrive_with_the_agreed_names_and_tags() -> anyhow::Result<()> {
    let agent = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let extra = format!("dogstatsd = {:?}\n", agent.local_addr()?.to_string());
    let mut bridge = Bridge::prepare("telemetry_dogstatsd").await?;
    let services = Services::start(&mut bridge, &extra, None).await?;
    insert_user(bridge.legacy().client(), 1).await?;

    let topic = bridge.legacy.topic.clone();
    let expected = [
        ("syncbridge_capture_events_total:", "|c", "source:legacy"),
        ("syncbridge_capture_events_total:", "|c", "mode:streaming"),
        (
            "syncbridge_apply_events_applied_total:",
            "|c",
            "direction:legacy_to_platform",
        ),
        (
            "syncbridge_apply_end_to_end_lag_seconds:",
            "|g",
            "direction:legacy_to_platform",
        ),
        (
            "syncbridge_apply_consumer_lag_messages:",
            "|g",
            &format!("topic:{topic}"),
        ),
        (
            "syncbridge_apply_consumer_lag_messages:",
            "|g",
            "partition:0",
        ),
        (
            "syncbridge_apply_batch_size:",
            "|d",
            "direction:legacy_to_platform",
        ),
        (
            "syncbridge_capture_slot_retained_wal_bytes:",
            "|g",
            "source:legacy",
        ),
        ("syncbridge_ready:", "|g", "service:apply"),
    ];
    let mut lines: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buffer = vec![0u8; 65536];
    let missing = |lines: &[String]| -> Vec<String> {
        expected
            .iter()
            .filter(|(name, kind, tag)| {
                !lines.iter().any(|line| {
                    line.starts_with(name)
                        && line.contains(kind)
                        && line
                            .split("|#")
                            .nth(1)
                            .is_some_and(|tags| tags.split(',').any(|t| t == *tag))
                })
            })
            .map(|(name, _, tag)| format!("{name} #{tag}"))
            .collect()
    };
    while !missing(&lines).is_empty() {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        anyhow::ensure!(
            !remaining.is_zero(),
            "no datagram for {:?} in:\n{}\n{}",
            missing(&lines),
            lines.join("\n"),
            services.logs()
        );
        if let Ok(received) = tokio::time::timeout(remaining, agent.recv(&mut buffer)).await {
            let size = received?;
            lines.extend(
                String::from_utf8_lossy(&buffer[..size])
                    .lines()
                    .map(str::to_owned),
            );
        }
    }
    services.stop().await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_grows_while_apply_is_held_and_returns_to_zero_when_it_resumes(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("telemetry_lag").await?;
    let services = Services::start(&mut bridge, "", None).await?;
    let legacy = bridge.legacy().client();
    insert_user(legacy, 0).await?;
    let platform = bridge.platform().client();
    until_count(
        "the first user on the platform side",
        WAIT,
        platform,
        "SELECT count(*) FROM identity.identities",
        1,
    )
    .await?;
    let address = services.apply_address.clone();
    let direction = [("direction", "legacy_to_platform")];
    let lag = || async {
        let text = scrape(&address).await?;
        Ok::<_, anyhow::Error>(sample(&text, names::APPLY_END_TO_END_LAG, &direction))
    };
    eventually("no lag once caught up", WAIT, || async {
        Ok((lag().await? == Some(0.0)).then_some(()))
    })
    .await?;

    // Hold apply: a transaction of ours locks the table it writes.
    let holder = connect(&bridge.platform().url).await?;
    holder
        .batch_execute("BEGIN; LOCK TABLE identity.identities IN ACCESS EXCLUSIVE MODE")
        .await?;
    let writer = connect(&bridge.legacy().url).await?;
    let writes = tokio::spawn(async move {
        for n in 1..=40u64 {
            insert_user(&writer, n).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    });
    let grown = eventually("the lag to grow past 3 s", WAIT, || async {
        Ok(lag().await?.filter(|seconds| *seconds > 3.0))
    })
    .await?;
    let text = scrape(&address).await?;
    let topic = bridge.legacy.topic.clone();
    let behind = sample(
        &text,
        names::APPLY_CONSUMER_LAG,
        &[
            ("direction", "legacy_to_platform"),
            ("topic", &topic),
            ("partition", "0"),
        ],
    );
    assert!(
        behind > Some(0.0),
        "messages wait while apply is held: {behind:?}"
    );
    let (code, status) = get_once(&address, "/status")
        .await
        .map_err(anyhow::Error::msg)?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    assert_eq!(code, 200);
    assert!(
        status["components"]["legacy_to_platform"]["end_to_end_lag_seconds"].as_f64() > Some(0.0),
        "{status}"
    );

    // Resume: the lag comes back to zero and every row arrives.
    holder.batch_execute("ROLLBACK").await?;
    writes.await??;
    eventually("every user on the platform side", WAIT, || async {
        Ok(
            (count(platform, "SELECT count(*) FROM identity.identities").await? == 41)
                .then_some(()),
        )
    })
    .await?;
    eventually("the lag to return to zero", WAIT, || async {
        Ok((lag().await? == Some(0.0)).then_some(()))
    })
    .await?;
    assert!(grown > 3.0);
    services.stop().await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_broker_is_down_and_returns_with_it() -> anyhow::Result<()> {
    let mut broker = PrivateBroker::start("telemetry_broker").await?;
    let mut bridge = Bridge::prepare("telemetry_ready").await?;
    let services = Services::start(&mut bridge, "", Some(&broker.address())).await?;
    readyz_becomes(&services.legacy_address, 200, "capture to be ready").await?;
    readyz_becomes(&services.apply_address, 200, "apply to be ready").await?;

    broker.kill()?;
    readyz_becomes(&services.legacy_address, 503, "capture to be not ready").await?;
    readyz_becomes(&services.apply_address, 503, "apply to be not ready").await?;
    // A direction may fail its fetch before the broker check runs again:
    // apply is not ready from the first, the broker component says why by
    // its next check.
    let status = eventually("apply's status to blame the broker", WAIT, || async {
        let (_, status) = get_once(&services.apply_address, "/status")
            .await
            .map_err(anyhow::Error::msg)?;
        let status: serde_json::Value = serde_json::from_str(&status)?;
        Ok((status["components"]["broker"]["ok"] == false).then_some(status))
    })
    .await?;
    assert_eq!(status["state"], "not_ready", "{status}");
    assert!(status["last_error"].is_string(), "{status}");

    broker.restart().await?;
    readyz_becomes(&services.legacy_address, 200, "capture to be ready again").await?;
    readyz_becomes(&services.apply_address, 200, "apply to be ready again").await?;
    // And it carries changes again.
    insert_user(bridge.legacy().client(), 1).await?;
    let platform = bridge.platform().client();
    until_count(
        "the user on the platform side",
        WAIT,
        platform,
        "SELECT count(*) FROM identity.identities",
        1,
    )
    .await?;
    services.stop().await?;
    bridge.stop().await
}

/// Runs a service binary's subcommand with a configuration file; returns
/// stdout and stderr.
async fn run_command(
    binary_name: &str,
    toml: &str,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let finished = sync_bridge_tests::run_command(binary_name, toml, args).await?;
    Ok((finished.code == Some(0), finished.stdout, finished.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_commands_report_lags_slots_and_errors_without_secrets() -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("telemetry_status").await?;
    // The services connect as a role with a password, given in the URLs.
    let role = unique("sbrole");
    let password = format!("pw-{}", unique("secret"));
    for db in [&mut bridge.legacy.db, &mut bridge.platform.db] {
        db.execute(&format!(
            "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'"
        ))
        .await?;
        db.url = db.url.replacen(
            "postgres://postgres@",
            &format!("postgres://{role}:{password}@"),
            1,
        );
    }
    let services = Services::start(&mut bridge, "", None).await?;
    insert_user(bridge.legacy().client(), 1).await?;
    let platform = bridge.platform().client();
    until_count(
        "the user on the platform side",
        WAIT,
        platform,
        "SELECT count(*) FROM identity.identities",
        1,
    )
    .await?;
    readyz_becomes(&services.legacy_address, 200, "capture to be ready").await?;
    readyz_becomes(&services.apply_address, 200, "apply to be ready").await?;

    let mut outputs = Vec::new();
    let capture_toml = bridge.legacy.toml();
    let (ok, stdout, stderr) = run_command("capture", &capture_toml, &["status", "--json"]).await?;
    assert!(ok, "{stdout}\n{stderr}");
    let capture: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(capture["service"], "capture");
    assert_eq!(capture["running"]["reachable"], true, "{capture}");
    assert_eq!(capture["running"]["state"], "ready", "{capture}");
    assert_eq!(
        capture["slots"][0]["slot"],
        bridge.legacy.slot.as_str(),
        "{capture}"
    );
    assert_eq!(capture["slots"][0]["active"], true, "{capture}");
    assert!(
        capture["slots"][0]["retained_wal_bytes"].is_i64(),
        "{capture}"
    );
    assert!(
        capture["slots"][0]["confirmed_flush_lsn"].is_string(),
        "{capture}"
    );
    outputs.push(stdout);
    outputs.push(stderr);

    let apply_toml = bridge.apply_toml();
    let apply = eventually(
        "apply status to say the sides are in step",
        WAIT,
        || async {
            let (ok, stdout, stderr) =
                run_command("apply", &apply_toml, &["status", "--json", "--verify"]).await?;
            anyhow::ensure!(ok, "{stdout}\n{stderr}");
            let report: serde_json::Value = serde_json::from_str(&stdout)?;
            // Both topics have their first event (the platform's is the echo
            // of the legacy insert, which may still be on its way).
            let both_topics_written = report["directions"].as_array().is_some_and(|d| {
                d.len() == 2
                    && d.iter().all(|direction| {
                        direction["partitions"][0]["high_watermark"].as_i64() >= Some(1)
                    })
            });
            Ok((report["in_step"] == true && both_topics_written)
                .then_some((report, stdout, stderr)))
        },
    )
    .await?;
    let (report, stdout, stderr) = apply;
    assert_eq!(report["running"]["reachable"], true, "{report}");
    assert_eq!(report["verified"], true, "{report}");
    let directions = report["directions"].as_array().cloned().unwrap_or_default();
    assert_eq!(directions.len(), 2, "{report}");
    for direction in &directions {
        assert_eq!(direction["consumer_lag"], 0, "{report}");
        assert!(direction["end_to_end_lag_seconds"].is_f64(), "{report}");
        assert_eq!(direction["partitions"][0]["partition"], 0, "{report}");
        assert!(
            direction["partitions"][0]["high_watermark"].as_i64() >= Some(1),
            "{report}"
        );
    }
    let slots: Vec<&str> = report["slots"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["slot"].as_str()).collect())
        .unwrap_or_default();
    assert!(slots.contains(&bridge.legacy.slot.as_str()), "{report}");
    assert!(slots.contains(&bridge.platform.slot.as_str()), "{report}");
    outputs.push(stdout);
    outputs.push(stderr);

    // For a person, and with the service unreachable.
    let unreachable = format!("127.0.0.1:{}", free_port()?);
    let (ok, text, stderr) =
        run_command("apply", &apply_toml, &["status", "--address", &unreachable]).await?;
    assert!(ok, "{text}\n{stderr}");
    assert!(
        text.contains(&format!("unreachable at {unreachable}")),
        "{text}"
    );
    assert!(text.contains("last error:  unreachable"), "{text}");
    assert!(
        text.contains("legacy_to_platform: end-to-end lag unknown, consumer lag 0"),
        "{text}"
    );
    assert!(text.contains("in step:     yes"), "{text}");
    outputs.push(text);
    outputs.push(stderr);
    let (_, text, stderr) = run_command("capture", &capture_toml, &["status"]).await?;
    assert!(
        text.contains(&format!("slot {}", bridge.legacy.slot)),
        "{text}"
    );
    outputs.push(text);
    outputs.push(stderr);
    for path in ["/status", "/metrics"] {
        for address in [&services.legacy_address, &services.apply_address] {
            let (_, body) = get_once(address, path).await.map_err(anyhow::Error::msg)?;
            outputs.push(body);
        }
    }

    outputs.push(services.logs());
    services.stop().await?;
    for output in &outputs {
        assert!(
            !output.contains(&password),
            "a password was printed:\n{output}"
        );
    }
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_batches_are_exported_as_spans_over_otlp() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let extra = format!("otlp_endpoint = \"http://{}\"\n", collector.local_addr()?);
    let mut bridge = Bridge::prepare("telemetry_otlp").await?;
    let services = Services::start(&mut bridge, &extra, None).await?;
    insert_user(bridge.legacy().client(), 1).await?;

    // A collector that answers 200 to every export and keeps the bodies.
    let received = tokio::time::timeout(WAIT, async {
        let mut requests = Vec::new();
        loop {
            let (mut stream, _) = collector.accept().await?;
            let mut request = Vec::new();
            let mut buffer = vec![0u8; 65536];
            // Read the head, then as much body as Content-Length says.
            loop {
                let n = stream.read(&mut buffer).await?;
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                .await?;
            let text = String::from_utf8_lossy(&request).into_owned();
            requests.push(text);
            let exported = requests.iter().any(|r| {
                r.starts_with("POST /v1/traces")
                    && r.contains("apply_batch")
                    && r.contains("syncbridge-apply")
                    && r.contains("legacy_to_platform")
            });
            if exported {
                return anyhow::Ok(requests);
            }
        }
    })
    .await;
    match received {
        Ok(requests) => assert!(!requests?.is_empty()),
        Err(_) => anyhow::bail!("no apply_batch span exported\n{}", services.logs()),
    }
    services.stop().await?;
    bridge.stop().await
}
