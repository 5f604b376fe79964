//! apply's links to its databases failing while changes flow: whatever
//! happens to a link, every change lands exactly once (checked against the
//! change ledger) and apply goes on by itself.

use std::time::Duration;

use sync_bridge_tests::{
    count, eventually, install_audit, server_of, Bridge, ChangeLedger, Proxy, ServiceProcess,
};

const WAIT: Duration = Duration::from_secs(120);

/// A bridge whose apply reaches the platform database (the target of the
/// legacy changes and the home of its lock there) through a proxy, with
/// `response_timeout`; legacy users written (ledger `seed`) until the first
/// changes crossed.
struct ThroughProxy {
    bridge: Bridge,
    proxy: Proxy,
    apply: ServiceProcess,
    ledger: ChangeLedger,
}

impl ThroughProxy {
    async fn start(hint: &str, response_timeout: &str, seed: u64) -> anyhow::Result<ThroughProxy> {
        let mut bridge = Bridge::prepare(hint).await?;
        install_audit(bridge.platform()).await?;
        let url = bridge.platform().url.clone();
        let proxy = Proxy::start(&server_of(&url)).await?;
        bridge.start_captures().await?;
        let toml = bridge.apply_toml().replace(
            &format!("[platform]\nurl = {url:?}\n"),
            &format!(
                "[platform]\nurl = {:?}\nresponse_timeout = {response_timeout:?}\n",
                proxy.url_through(&url)
            ),
        );
        anyhow::ensure!(toml.contains("response_timeout"), "{toml}");
        let apply = ServiceProcess::spawn("apply", &toml, &format!("{hint}_apply"))?;
        let ledger = ChangeLedger::write_legacy_users(&bridge.legacy().url, 300, seed).await?;
        let platform = bridge.platform().client();
        eventually("the first changes to cross", WAIT, || async {
            let audited = count(platform, "SELECT count(*) FROM public.change_audit").await?;
            Ok((audited > 50).then_some(()))
        })
        .await?;
        Ok(ThroughProxy {
            bridge,
            proxy,
            apply,
            ledger,
        })
    }

    /// Every connection apply holds to the platform stops answering for
    /// good, its server end kept open (the kernel still acknowledges what
    /// apply sends), while more legacy users are written (ledger `seed`): a
    /// direction is inside a call when the link stops.
    async fn blackhole_during_writes(&mut self, seed: u64) -> anyhow::Result<()> {
        self.proxy.blackhole();
        let url = self.bridge.legacy().url.clone();
        self.ledger
            .extend(ChangeLedger::write_legacy_users(&url, 1000, seed).await?);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_to_the_target_that_stops_answering_is_dropped_and_every_change_lands_once(
) -> anyhow::Result<()> {
    let mut run = ThroughProxy::start("apply_hung_link", "3s", 11).await?;
    let connections_before = run.proxy.accepted();
    run.blackhole_during_writes(12).await?;

    if let Err(error) = run.bridge.converged(WAIT).await {
        anyhow::bail!("{error}\n{}", run.apply.output());
    }
    run.ledger.check_applied_once(run.bridge.platform()).await?;
    assert!(
        run.proxy.accepted() > connections_before,
        "apply connected again"
    );
    drop(run.apply);
    run.bridge.stop().await
}

/// Without a response deadline (`response_timeout = "0s"`), a direction
/// waiting on a link that stopped answering cannot stop when the lease is
/// lost: apply says so, naming the direction, rather than going quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direction_that_cannot_stop_is_reported() -> anyhow::Result<()> {
    let mut run = ThroughProxy::start("apply_stuck_direction", "0s", 21).await?;
    run.blackhole_during_writes(22).await?;
    run.apply
        .wait_for_output("a direction has not stopped since it was asked to", WAIT)
        .await?;
    drop(run.apply);
    run.bridge.stop().await
}
