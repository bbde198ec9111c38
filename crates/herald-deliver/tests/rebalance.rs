//! A rebalance that hands a worker its own partitions back. With the
//! classic (eager) protocol every rebalance revokes all of a member's
//! partitions and assigns them again, here because another member joins
//! the group for an unrelated topic and then leaves. Meanwhile the worker's
//! messages wait in a retry tier for their next attempt; a retry waiting
//! when its partition is revoked is left for the partition's next owner,
//! which reads it again from the committed offset.
//!
//! What the tenant sees: every message is delivered. Before, the first
//! record of a new assignment reached the task of the revoked one (the
//! revoke, the assignment and that record all arrive while the loop waits
//! for the next record), which left its waiting copy and dropped the new
//! one as unstarted, while the new task went on from the record after it:
//! a notification lost without a status at each such rebalance (1 email of
//! 40,000 in a chaos run at 1,000 events/s).

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{setup, start, stop, WAIT};
use herald_model::Priority;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_that_gives_the_partitions_back_loses_nothing() {
    let s = setup("deliver-rebalance").await;
    let mut config = s.config();
    // Retries wait 4 s in their tier: long enough for two rebalances.
    config.deliver.retry.base_delay = Duration::from_secs(4);
    config.deliver.retry.max_delay = Duration::from_secs(4);
    let group = config.deliver.group.clone().unwrap();
    let producer = s.producer();
    // Every first attempt fails: each message waits in a retry tier.
    s.fail_every_request();
    let messages: Vec<_> = (0..8)
        .map(|n| {
            let mut m = s.message(n);
            m.priority = Priority::Normal;
            m.user_id = format!("user-{n}");
            m
        })
        .collect();
    for m in &messages {
        s.produce(&producer, m).await;
    }
    let (stopper, task) = start(config);
    let deadline = Instant::now() + WAIT;
    while s
        .sandbox
        .counts()
        .get("webhook")
        .and_then(|c| c.get("503 injected"))
        .copied()
        .unwrap_or(0)
        < messages.len() as u64
    {
        assert!(Instant::now() < deadline, "the first attempts did not fail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.sandbox.clear_fault("webhook");
    // While the retries wait: another member joins for an unrelated topic
    // and leaves, twice.
    let elsewhere = s.topology.named("status");
    s.broker.join_and_leave(&group, &elsewhere).await;
    s.broker.join_and_leave(&group, &elsewhere).await;

    let seen = s.wait_delivered(messages.len()).await;
    stop(stopper, task).await;
    let missing: Vec<&str> = messages
        .iter()
        .map(|m| m.notification_id.as_str())
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
}
