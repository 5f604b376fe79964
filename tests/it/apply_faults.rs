//! apply's links to its databases failing while changes flow: whatever
//! happens to a link, every change lands exactly once (checked against the
//! change ledger) and apply goes on by itself.

use std::time::Duration;

use sync_bridge_tests::{
    count, eventually, install_audit, server_of, Bridge, ChangeLedger, Proxy, ServiceProcess,
};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_to_the_target_that_stops_answering_is_dropped_and_every_change_lands_once(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("apply_hung_link").await?;
    install_audit(bridge.platform()).await?;
    // apply reaches the platform database, the target of the legacy
    // changes and the home of its lock there, through a proxy.
    let url = bridge.platform().url.clone();
    let proxy = Proxy::start(&server_of(&url)).await?;
    bridge.start_captures().await?;
    let toml = bridge.apply_toml().replace(
        &format!("[platform]\nurl = {url:?}\n"),
        &format!(
            "[platform]\nurl = {:?}\nresponse_timeout = \"3s\"\n",
            proxy.url_through(&url)
        ),
    );
    anyhow::ensure!(toml.contains("response_timeout"), "{toml}");
    let apply = ServiceProcess::spawn("apply", &toml, "apply_hung_link_apply")?;

    // Changes before the link stops answering, then changes while it does.
    let legacy_url = bridge.legacy().url.clone();
    let mut ledger = ChangeLedger::write_legacy_users(&legacy_url, 300, 11).await?;
    let platform = bridge.platform().client();
    eventually("the first changes to cross", WAIT, || async {
        let audited = count(platform, "SELECT count(*) FROM public.change_audit").await?;
        Ok((audited > 50).then_some(()))
    })
    .await?;
    // Every connection apply holds to the platform stops answering for good,
    // its lock connection's server end kept open; the kernel still
    // acknowledges what apply sends.
    let connections_before = proxy.accepted();
    proxy.blackhole();
    ledger.extend(ChangeLedger::write_legacy_users(&legacy_url, 1000, 12).await?);

    if let Err(error) = bridge.converged(WAIT).await {
        anyhow::bail!("{error}\n{}", apply.output());
    }
    ledger.check_applied_once(bridge.platform()).await?;
    assert!(
        proxy.accepted() > connections_before,
        "apply connected again"
    );
    drop(apply);
    bridge.stop().await
}

/// Without a response deadline (`response_timeout = "0s"`), a direction
/// waiting on a link that stopped answering cannot stop when the lease is
/// lost: apply says so, naming the direction, rather than going quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direction_that_cannot_stop_is_reported() -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("apply_stuck_direction").await?;
    install_audit(bridge.platform()).await?;
    let url = bridge.platform().url.clone();
    let proxy = Proxy::start(&server_of(&url)).await?;
    bridge.start_captures().await?;
    let toml = bridge.apply_toml().replace(
        &format!("[platform]\nurl = {url:?}\n"),
        &format!(
            "[platform]\nurl = {:?}\nresponse_timeout = \"0s\"\n",
            proxy.url_through(&url)
        ),
    );
    anyhow::ensure!(toml.contains("response_timeout"), "{toml}");
    let apply = ServiceProcess::spawn("apply", &toml, "apply_stuck_direction_apply")?;
    let legacy_url = bridge.legacy().url.clone();
    ChangeLedger::write_legacy_users(&legacy_url, 300, 21).await?;
    let platform = bridge.platform().client();
    eventually("the first changes to cross", WAIT, || async {
        let audited = count(platform, "SELECT count(*) FROM public.change_audit").await?;
        Ok((audited > 50).then_some(()))
    })
    .await?;
    proxy.blackhole();
    // Writes keep coming, so a direction is inside a call when the link stops.
    ChangeLedger::write_legacy_users(&legacy_url, 1000, 22).await?;
    apply
        .wait_for_output("a direction has not stopped since it was asked to", WAIT)
        .await?;
    drop(apply);
    bridge.stop().await
}
