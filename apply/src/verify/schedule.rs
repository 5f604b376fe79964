//! Verification on a schedule inside apply: while this instance holds the
//! single-writer lease, a pass runs whenever the last complete one is older
//! than `verify.interval` (or one was interrupted), and the age of the last
//! complete pass is exported every minute, whoever ran it (apply's
//! schedule or a one-shot `apply verify`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::Result;
use crate::mapping::{Mapping, Side};
use crate::metrics::{VERIFY_ERRORS, VERIFY_LAST_PASS_AGE};

/// How often the schedule looks at what is due.
const LOOK_EVERY: Duration = Duration::from_secs(60);

/// Runs until `shutdown`; returns at once when `verify.interval` is 0.
pub async fn run(config: Config, mapping: Arc<Mapping>, shutdown: CancellationToken) {
    if config.verify.interval.is_zero() {
        return;
    }
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = tokio::time::sleep(config.verify.first_delay) => {}
    }
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = look(&config, &mapping) => outcome,
        };
        if let Err(error) = outcome {
            metrics::counter!(VERIFY_ERRORS).increment(1);
            warn!(error = %runtime::error_chain(&error), "scheduled verification interrupted; trying again later");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}

/// Exports the age of the last complete pass, and runs a pass when one is due.
async fn look(config: &Config, mapping: &Mapping) -> Result<()> {
    let platform = config.connect(Side::Platform).await?;
    let passes = super::last_passes(&platform).await?;
    let age = oldest_pass(mapping, &passes);
    if let Some(age) = age {
        metrics::gauge!(VERIFY_LAST_PASS_AGE).set(age.as_secs_f64());
    }
    let due =
        age.is_none_or(|age| age >= config.verify.interval) || passes.iter().any(|p| p.in_progress);
    if due {
        info!("verification pass starting");
        let report = super::verify(config, mapping, false).await?;
        if !report.corresponds() {
            warn!(
                rows = report
                    .entities
                    .iter()
                    .map(|e| e.different_rows())
                    .sum::<usize>(),
                "the two databases differ; `apply verify --json` lists the keys"
            );
        }
        metrics::gauge!(VERIFY_LAST_PASS_AGE).set(0.0);
    }
    Ok(())
}

/// The age of the oldest entity's last complete pass; `None` when some
/// entity of the mapping has none.
fn oldest_pass(mapping: &Mapping, passes: &[super::LastPass]) -> Option<Duration> {
    mapping
        .entities()
        .iter()
        .map(|entity| {
            passes
                .iter()
                .find(|p| p.entity == entity.name())
                .and_then(|p| p.age)
        })
        .try_fold(Duration::ZERO, |oldest, age| Some(oldest.max(age?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(entity: &str, age: Option<u64>) -> super::super::LastPass {
        super::super::LastPass {
            entity: entity.to_owned(),
            age: age.map(Duration::from_secs),
            different: Some(0),
            in_progress: false,
        }
    }

    #[test]
    fn the_oldest_pass_is_none_until_every_entity_has_completed_one() {
        let mapping = Mapping::from_str(
            include_str!("../../../schemas/mapping/reference.toml"),
            "reference.toml",
        )
        .expect("the reference mapping loads");
        let names: Vec<&str> = mapping.entities().iter().map(|e| e.name()).collect();
        let all: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| pass(name, Some(10 + i as u64)))
            .collect();
        assert_eq!(
            oldest_pass(&mapping, &all),
            Some(Duration::from_secs(9 + names.len() as u64))
        );
        let mut missing_one = all.clone();
        missing_one.pop();
        assert_eq!(oldest_pass(&mapping, &missing_one), None);
        let mut never_completed = all;
        never_completed[0].age = None;
        assert_eq!(oldest_pass(&mapping, &never_completed), None);
    }
}
