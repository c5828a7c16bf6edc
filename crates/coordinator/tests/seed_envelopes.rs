//! An agent written from the source documents writes `header.version` as `"1.0.0"` and
//! nests `priority` and `ttl` in `header.routing`. Such messages are read as they mean:
//! applied while fresh, and refused as `expired` once their nested ttl has passed
//! (docs/protocol.md section 3).

use test_support as common;

use agent::Queue;
use chrono::Utc;
use common::{expect_next, TestEnv};
use protocol::envelope::{Envelope, Routing};
use serde_json::json;

fn seed_shaped(mut e: Envelope, ttl: u64) -> Envelope {
    e.header.version = "1.0.0".into();
    e.header.routing = Some(Routing {
        priority: Some(protocol::envelope::Priority::High),
        ttl: Some(ttl),
        retry_count: Some(0),
        max_retries: Some(3),
    });
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_as_the_source_documents_write_it_is_applied_and_expires_by_its_nested_ttl(
) {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;

    let start = Envelope::from_agent(
        "product-1",
        "product-director",
        "requirements_ready",
        "wf-seed",
        json!({"epic_id": "EPIC-7"}),
        Utc::now(),
    );
    product
        .publish(&seed_shaped(start, 3600))
        .await
        .expect("publish");
    env.wait_state("wf-seed", "requirements_handoff").await;
    assert_eq!(
        expect_next(&mut eng, Queue::Tasks)
            .await
            .header
            .message_type,
        "requirements_handoff"
    );

    // Written two minutes ago with a nested ttl of one: refused as expired, not applied.
    let stale = Envelope::from_agent(
        "eng-1",
        "engineering-director",
        "sprint_initialized",
        "wf-seed",
        json!({}),
        Utc::now() - chrono::Duration::minutes(2),
    );
    let stale = seed_shaped(stale, 60);
    eng.publish(&stale).await.expect("publish");
    env.wait_count(
        &format!(
            "SELECT count(*) FROM dead_letters WHERE message_id = '{}' AND reason = 'expired'",
            stale.header.message_id
        ),
        1,
    )
    .await;
    assert_eq!(
        env.workflow_state("wf-seed").await.as_deref(),
        Some("requirements_handoff")
    );
    app.stop().await;
}
