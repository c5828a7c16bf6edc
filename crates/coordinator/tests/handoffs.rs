//! The creative and marketing handoffs that ship as definitions
//! (`config/workflows/`), each driven by agents over the real broker: the tasks they
//! send, the clocks they arm and meet, a breach escalated on the same ladder as feature
//! delivery's, and the rows managers' SQL reads. Their messages were events the
//! coordinator only observed before (contract 1.4); sent as before, under another
//! workflow's correlation_id, they still are.

use test_support as common;

use std::time::Duration;

use agent::{AgentClient, Queue};
use common::{expect_next, expect_no_more, TestEnv, WAIT};
use protocol::envelope::Envelope;
use serde_json::json;

const ONCALL: &str = "oncall.escalations";

/// The next message on an agent's tasks queue, checked to be `task` about `wf`.
async fn task(agent: &mut AgentClient, task: &str, wf: &str) -> Envelope {
    let env = expect_next(agent, Queue::Tasks).await;
    assert_eq!(
        (
            env.header.message_type.as_str(),
            env.header.correlation_id.as_str()
        ),
        (task, wf),
        "{} expected {task} about {wf}",
        agent.agent_id
    );
    assert_eq!(env.payload.metadata["workflow_id"], wf, "task metadata");
    env
}

async fn clocks(env: &TestEnv, wf: &str, clock_status: &[(&str, &str)]) {
    for (clock, status) in clock_status {
        env.wait_count(
            &format!(
                "SELECT count(*) FROM sla_clocks WHERE workflow_id = '{wf}' AND clock = '{clock}' AND status = '{status}'"
            ),
            1,
        )
        .await;
    }
}

/// The `version` of the shipped definition of `kind`.
fn shipped_version(kind: &str) -> i32 {
    let path = format!(
        "{}/../../config/workflows/{kind}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix("version = ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{path} has no version line"))
}

async fn finished(env: &TestEnv, wf: &str, kind: &str, state: &str, key: Option<&str>) {
    let key = key.map_or("business_key IS NULL".into(), |k| {
        format!("business_key = '{k}'")
    });
    let version = shipped_version(kind);
    env.wait_count(
        &format!(
            "SELECT count(*) FROM workflows WHERE id = '{wf}' AND kind = '{kind}' AND state = '{state}'
               AND completed_at IS NOT NULL AND definition_version = {version} AND {key}"
        ),
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_design_handoff_asks_creative_and_brings_the_design_back_to_product_and_engineering() {
    let env = TestEnv::new().await;
    let _app = env.start().await;
    let mut product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let mut creative = env.agent("creative-1", "creative-director").await;
    let wf = "dh-1";

    product
        .send(
            "design_requirements",
            wf,
            json!({"epic_id": "EPIC-9", "screens": ["checkout"]}),
        )
        .await
        .expect("publish");
    let request = task(&mut creative, "design_request", wf).await;
    assert_eq!(
        request.payload.data["screens"][0], "checkout",
        "the requirements travel"
    );
    creative
        .send("handoff_acknowledged", wf, json!({}))
        .await
        .expect("publish");

    eng.send("technical_constraints", wf, json!({"max_bundle_kb": 200}))
        .await
        .expect("publish");
    let constraints = task(&mut creative, "design_constraints", wf).await;
    assert_eq!(constraints.payload.data["max_bundle_kb"], 200);

    creative
        .send("assets_ready", wf, json!({"icons": "v1"}))
        .await
        .expect("publish");
    task(&mut eng, "design_assets", wf).await;
    clocks(&env, wf, &[("design_assets", "met")]).await;

    creative
        .send(
            "design_ready",
            wf,
            json!({"figma": "https://example.invalid/d/1"}),
        )
        .await
        .expect("publish");
    for agent in [&mut product, &mut eng] {
        task(agent, "design_delivered", wf).await;
    }
    finished(&env, wf, "design_handoff", "delivered", Some("EPIC-9")).await;
    clocks(&env, wf, &[("design_delivery", "met")]).await;
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM sla_clocks WHERE workflow_id = '{wf}' AND owner_agent_id = 'creative-1'"
        ))
        .await,
        2,
        "the acknowledgement made creative-1 the owner of both clocks"
    );
    expect_no_more(&env, &mut creative, Queue::Tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brand_handoff_breaches_on_creatives_ladder_and_hands_the_assets_to_marketing() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    let second: humantime_serde::Serde<Duration> = Duration::from_secs(1).into();
    settings
        .sla
        .durations
        .insert("brand_assets_delivery".into(), second);
    let hour: humantime_serde::Serde<Duration> = Duration::from_secs(3600).into();
    settings.escalation.waits = vec![hour; 3];
    settings.escalation.severity.clear();
    let _app = env.start_with(settings).await;
    let mut marketing = env.agent("marketing-1", "marketing-director").await;
    let mut creative = env.agent("creative-1", "creative-director").await;
    let mut oncall = env.connect_as("pager", "creative-director").await;
    let wf = "bh-1";

    marketing
        .send("brand_requirements", wf, json!({"campaign_id": "CMP-3"}))
        .await
        .expect("publish");
    task(&mut creative, "brand_request", wf).await;

    let (key, breach) = oncall
        .next_with_key(ONCALL, WAIT)
        .await
        .expect("read on-call")
        .unwrap_or_else(|| panic!("no breach reached {ONCALL} within {WAIT:?}"));
    assert_eq!(key, "escalation.high.creative-director");
    assert_eq!(breach.header.message_type, "sla_breached");
    assert_eq!(breach.payload.data["clock"], "brand_assets_delivery");
    assert_eq!(breach.payload.data["workflow_id"], wf);
    assert_eq!(breach.payload.data["level"], 1);

    // Late, but the rule still takes the assets to marketing.
    creative
        .send("brand_assets_ready", wf, json!({"logo": "v2"}))
        .await
        .expect("publish");
    let delivered = task(&mut marketing, "brand_assets_delivered", wf).await;
    assert_eq!(delivered.payload.data["logo"], "v2");
    finished(&env, wf, "brand_handoff", "delivered", Some("CMP-3")).await;
    clocks(&env, wf, &[("brand_assets_delivery", "breached")]).await;
    env.wait_count(
        &format!(
            "SELECT count(*) FROM escalations WHERE workflow_id = '{wf}' AND clock = 'brand_assets_delivery'
               AND owner_role = 'creative-director' AND level = 1"
        ),
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launch_handoff_asks_marketing_and_ends_with_the_campaign() {
    let env = TestEnv::new().await;
    let _app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let mut marketing = env.agent("marketing-1", "marketing-director").await;
    let wf = "lh-1";

    product
        .send("feature_announced", wf, json!({"epic_id": "EPIC-4"}))
        .await
        .expect("publish");
    task(&mut marketing, "launch_request", wf).await;
    clocks(&env, wf, &[("campaign_launch", "armed")]).await;
    marketing
        .send("campaign_launched", wf, json!({"channels": ["blog"]}))
        .await
        .expect("publish");
    finished(&env, wf, "launch_handoff", "launched", Some("EPIC-4")).await;
    clocks(&env, wf, &[("campaign_launch", "met")]).await;
}

/// Feature delivery's messages after requirements_ready, by role, to `completed`.
const FEATURE_DELIVERY: [(usize, &[&str]); 3] = [
    (
        0,
        &[
            "handoff_acknowledged",
            "feasibility_assessed",
            "effort_estimated",
            "sprint_initialized",
            "feature_completed",
        ],
    ),
    (
        1,
        &[
            "handoff_acknowledged",
            "testing_started",
            "testing_completed",
            "release_approved",
        ],
    ),
    (
        2,
        &[
            "handoff_acknowledged",
            "deployment_started",
            "deployment_completed",
            "validation_completed",
        ],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_feature_is_a_task_for_marketing_with_a_clock_met_by_its_campaign() {
    let env = TestEnv::new().await;
    let _app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let mut marketing = env.agent("marketing-1", "marketing-director").await;
    let team = [
        env.agent("eng-1", "engineering-director").await,
        env.agent("qa-1", "qa-director").await,
        env.agent("devops-1", "devops-manager").await,
    ];
    // The second feature's campaign is reported under the launch handoff's own id.
    for (wf, reply_under) in [("wf-31", "wf-31"), ("wf-32", "wf-32.launch_handoff")] {
        let epic = format!("EPIC-{wf}");
        product
            .send("requirements_ready", wf, json!({"epic_id": epic}))
            .await
            .expect("publish");
        for (role, messages) in FEATURE_DELIVERY {
            let handoff = ["requirements_handoff", "feature_handoff", "release_handoff"][role];
            env.wait_state(wf, handoff).await;
            for m in messages {
                team[role].send(m, wf, json!({})).await.expect("publish");
            }
        }
        // As before: feature_deployed under the feature's id, now with a clock behind it.
        let deployed = task(&mut marketing, "feature_deployed", wf).await;
        assert_eq!(deployed.payload.metadata["state"], "completed");
        env.wait_state(wf, "completed").await;
        let launch = format!("{wf}.launch_handoff");
        env.wait_count(
            &format!(
                "SELECT count(*) FROM workflows WHERE id = '{launch}' AND kind = 'launch_handoff'
                   AND state = 'deployed' AND business_key = '{epic}' AND epic_id = '{epic}'
                   AND definition_version = {}",
                shipped_version("launch_handoff")
            ),
            1,
        )
        .await;
        env.wait_count(
            &format!(
                "SELECT count(*) FROM sla_clocks WHERE workflow_id = '{launch}' AND clock = 'campaign_launch'
                   AND owner_role = 'marketing-director' AND owner_agent_id = 'marketing-1'
                   AND status = 'armed' AND due_at > armed_at + interval '71 hours'"
            ),
            1,
        )
        .await;
        // Nothing more reaches marketing: the follow-on sends no task of its own.
        expect_no_more(&env, &mut marketing, Queue::Tasks).await;

        let launched = marketing
            .send(
                "campaign_launched",
                reply_under,
                json!({"channels": ["email"]}),
            )
            .await
            .expect("publish");
        outcome(&env, &launched, "accepted").await;
        finished(&env, &launch, "launch_handoff", "launched", Some(&epic)).await;
        clocks(&env, &launch, &[("campaign_launch", "met")]).await;
        assert_eq!(
            env.workflow_state(wf).await.as_deref(),
            Some("completed"),
            "the feature delivery is untouched"
        );
    }
    // A later campaign_launched under the feature's id finds the handoff launched.
    let late = marketing
        .send("campaign_launched", "wf-31", json!({}))
        .await
        .expect("publish");
    outcome(&env, &late, "rejected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_insights_reach_product_and_end_with_its_acknowledgement() {
    let env = TestEnv::new().await;
    let _app = env.start().await;
    let marketing = env.agent("marketing-1", "marketing-director").await;
    let mut product = env.agent("product-1", "product-director").await;
    let wf = "ih-1";

    marketing
        .send(
            "market_insights",
            wf,
            json!({"insight_id": "MI-12", "churn": "up"}),
        )
        .await
        .expect("publish");
    let review = task(&mut product, "insights_review", wf).await;
    assert_eq!(review.payload.data["churn"], "up");
    product
        .send("handoff_acknowledged", wf, json!({}))
        .await
        .expect("publish");
    finished(&env, wf, "insights_handoff", "acknowledged", Some("MI-12")).await;
    clocks(&env, wf, &[("insights_acknowledgement", "met")]).await;
}

async fn outcome(env: &TestEnv, sent: &Envelope, outcome: &str) {
    env.wait_count(
        &format!(
            "SELECT count(*) FROM processed_messages WHERE message_id = '{}' AND outcome = '{outcome}'",
            sent.header.message_id
        ),
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_messages_sent_as_before_under_another_workflow_are_still_only_observed() {
    let env = TestEnv::new().await;
    let _app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let mut creative = env.agent("creative-1", "creative-director").await;
    let marketing = env.agent("marketing-1", "marketing-director").await;
    let feature = env.start_feature(&product).await;
    task(&mut eng, "requirements_handoff", &feature).await;

    // Under the feature's correlation_id, as a 1.4 agent would send them; and under an
    // id that names no workflow, the handoffs' messages that do not start one.
    let nowhere = "nowhere";
    for (agent, message, id) in [
        (&product, "design_requirements", feature.as_str()),
        (&eng, "technical_constraints", &feature),
        (&creative, "assets_ready", &feature),
        (&creative, "design_ready", &feature),
        (&marketing, "brand_requirements", &feature),
        (&product, "feature_announced", &feature),
        (&marketing, "market_insights", &feature),
        (&eng, "technical_constraints", nowhere),
        (&creative, "brand_assets_ready", nowhere),
        (&marketing, "campaign_launched", nowhere),
    ] {
        let sent = agent.send(message, id, json!({})).await.expect("publish");
        outcome(&env, &sent, "observed").await;
    }
    assert_eq!(
        env.workflow_state(&feature).await.as_deref(),
        Some("requirements_handoff")
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM workflows WHERE kind <> 'feature_delivery'")
            .await,
        0,
        "no handoff started under the feature's id"
    );
    expect_no_more(&env, &mut creative, Queue::Tasks).await;

    // What feature delivery also consumes is refused as before; a second start of one
    // handoff is refused as for any workflow.
    let sent = creative
        .send("handoff_acknowledged", "nowhere", json!({}))
        .await
        .expect("publish");
    outcome(&env, &sent, "rejected").await;
    product
        .send("design_requirements", "dh-2", json!({}))
        .await
        .expect("publish");
    task(&mut creative, "design_request", "dh-2").await;
    let again = product
        .send("design_requirements", "dh-2", json!({}))
        .await
        .expect("publish");
    outcome(&env, &again, "rejected").await;
    for (message_id, reason) in [(&sent, "unknown_workflow"), (&again, "workflow_exists")] {
        env.wait_count(
            &format!(
                "SELECT count(*) FROM dead_letters WHERE message_id = '{}' AND reason = '{reason}'",
                message_id.header.message_id
            ),
            1,
        )
        .await;
    }
}
