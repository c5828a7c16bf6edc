//! The read API against the real services: its OpenAPI document passes the OpenAPI
//! Initiative's validator (openapi-spec-validator, from PyPI); workflows are listed,
//! filtered and paged, shown whole; escalations are acknowledged only with the operator
//! token, which records who; agents, dead letters, emergencies and the report answer;
//! the event stream delivers a workflow's events as they commit.

use test_support as common;

use std::time::Duration;

use common::{TestEnv, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TOKEN: &str = "op-token-for-tests";

async fn get(http: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{http}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    let body = r
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"));
    (status, body)
}

async fn acknowledge(
    http: std::net::SocketAddr,
    id: i64,
    token: Option<&str>,
    by: &str,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/escalations/{id}/acknowledge"))
        .json(&json!({ "by": by }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("POST acknowledge");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_passes_the_reference_validator_and_names_every_route() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let (status, doc) = get(app.http, "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/api/v1/workflows",
        "/api/v1/workflows/{id}",
        "/api/v1/escalations",
        "/api/v1/escalations/{id}/acknowledge",
        "/api/v1/emergencies",
        "/api/v1/agents",
        "/api/v1/dead-letters",
        "/api/v1/report",
        "/api/v1/events",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} is not in the document"
        );
    }
    let file =
        std::env::temp_dir().join(format!("coordinator-openapi-{}.json", std::process::id()));
    std::fs::write(&file, doc.to_string()).expect("write the document");
    let python = common::repo_root().join("target/python-venv/bin/python");
    assert!(
        python.exists(),
        "the Python virtualenv is missing: run `make python-venv` (make test does)"
    );
    let out = std::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("openapi-spec-validator runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success() && said.contains("OK"),
        "openapi-spec-validator: {said}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_listed_filtered_paged_and_shown_whole() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.sla.durations.insert(
        "technical_feasibility_assessment".into(),
        Duration::from_millis(300).into(),
    );
    let app = env.start_with(settings).await;
    let product = env.agent("product-1", "product-director").await;
    for wf in ["wf-a", "wf-b", "wf-c"] {
        product
            .send(
                "requirements_ready",
                wf,
                json!({"epic_id": format!("EPIC-{wf}")}),
            )
            .await
            .expect("publish");
        env.wait_state(wf, "requirements_handoff").await;
    }
    // Past the engineering director's deadline: overdue until the timer breaches it,
    // and still its move.
    env.wait_count(
        "SELECT count(*) FROM sla_clocks WHERE status = 'breached'",
        3,
    )
    .await;

    let (status, page) = get(app.http, "/api/v1/workflows?kind=feature_delivery&limit=2").await;
    assert_eq!(status, 200, "{page}");
    let ids = |p: &Value| -> Vec<String> {
        p["workflows"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|w| w["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = ids(&page);
    assert_eq!(first.len(), 2, "{page}");
    let next = page["next"].as_str().expect("a next page");
    let (_, rest) = get(
        app.http,
        &format!("/api/v1/workflows?kind=feature_delivery&limit=2&after={next}"),
    )
    .await;
    let mut all: Vec<String> = first.into_iter().chain(ids(&rest)).collect();
    assert!(rest["next"].is_null(), "{rest}");
    all.sort();
    assert_eq!(all, ["wf-a", "wf-b", "wf-c"]);

    let (_, none) = get(app.http, "/api/v1/workflows?state=testing").await;
    assert_eq!(ids(&none), Vec::<String>::new());
    let (_, eng) = get(
        app.http,
        "/api/v1/workflows?role=engineering-director&limit=10",
    )
    .await;
    assert_eq!(ids(&eng).len(), 3, "{eng}");
    let (_, qa) = get(app.http, "/api/v1/workflows?role=qa-director").await;
    assert_eq!(ids(&qa).len(), 0, "{qa}");
    let (status, bad) = get(app.http, "/api/v1/workflows?limit=0").await;
    assert_eq!(status, 400);
    assert!(
        bad["error"].as_str().is_some_and(|e| e.contains("limit")),
        "{bad}"
    );
    let (status, bad) = get(app.http, "/api/v1/workflows?after=nonsense").await;
    assert_eq!(status, 400, "{bad}");

    let (status, one) = get(app.http, "/api/v1/workflows/wf-a").await;
    assert_eq!(status, 200);
    assert_eq!(one["workflow"]["business_key"], "EPIC-wf-a");
    assert_eq!(one["workflow"]["kind"], "feature_delivery");
    assert_eq!(one["history"][0]["message_type"], "requirements_ready");
    let clocks = one["clocks"].as_array().expect("clocks");
    assert!(
        clocks
            .iter()
            .any(|c| c["clock"] == "technical_feasibility_assessment" && c["status"] == "breached"),
        "{one:#}"
    );
    assert_eq!(
        one["escalations"].as_array().map(Vec::len),
        Some(1),
        "{one:#}"
    );
    assert!(one["follow_ons"].as_array().is_some_and(Vec::is_empty));
    let (status, missing) = get(app.http, "/api/v1/workflows/wf-nope").await;
    assert_eq!(status, 404);
    assert!(missing["error"]
        .as_str()
        .is_some_and(|e| e.contains("wf-nope")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_is_acknowledged_only_with_the_operator_token_and_records_who() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.sla.durations.insert(
        "technical_feasibility_assessment".into(),
        Duration::from_millis(300).into(),
    );
    settings.http.operator_token = Some(TOKEN.to_string().into());
    let app = env.start_with(settings.clone()).await;
    let product = env.agent("product-1", "product-director").await;
    product
        .send("requirements_ready", "wf-late", json!({}))
        .await
        .expect("publish");
    env.wait_count("SELECT count(*) FROM escalations", 1).await;
    let (_, open) = get(app.http, "/api/v1/escalations?open=true").await;
    let id = open[0]["id"].as_i64().expect("an open escalation");
    assert_eq!(open[0]["workflow_id"], "wf-late");

    assert_eq!(acknowledge(app.http, id, None, "alice").await.0, 401);
    assert_eq!(
        acknowledge(app.http, id, Some("wrong"), "alice").await.0,
        401
    );
    assert_eq!(acknowledge(app.http, id, Some(TOKEN), " ").await.0, 400);
    assert_eq!(
        acknowledge(app.http, 999_999, Some(TOKEN), "alice").await.0,
        404
    );
    let (status, done) = acknowledge(app.http, id, Some(TOKEN), "alice").await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["acknowledged"], json!([id]));
    assert_eq!(done["already"], false);
    let by: Option<String> =
        sqlx::query_scalar("SELECT acknowledged_by FROM escalations WHERE id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .expect("escalation");
    assert_eq!(by.as_deref(), Some("alice"));
    let (_, again) = acknowledge(app.http, id, Some(TOKEN), "alice").await;
    assert_eq!(again["already"], true);
    let (_, open) = get(app.http, "/api/v1/escalations?open=true").await;
    assert_eq!(open, json!([]));
    app.stop().await;

    // Without a configured token the API is read-only.
    settings.http.operator_token = None;
    let app = env.start_with(settings).await;
    let (status, said) = acknowledge(app.http, id, Some(TOKEN), "alice").await;
    assert_eq!(status, 403);
    assert!(
        said["error"]
            .as_str()
            .is_some_and(|e| e.contains("http.operator_token")),
        "{said}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_dead_letters_emergencies_and_the_report_answer() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let qa = env.agent("qa-1", "qa-director").await;
    let _eng = env.agent("eng-1", "engineering-director").await;
    qa.send(
        "heartbeat",
        "qa-1",
        json!({"agent_status": "healthy", "load": 0.5}),
    )
    .await
    .expect("publish");
    env.wait_count("SELECT count(*) FROM agents WHERE status = 'healthy'", 1)
        .await;
    qa.send("testing_started", "wf-nowhere", json!({}))
        .await
        .expect("publish");
    env.wait_count("SELECT count(*) FROM dead_letters", 1).await;
    qa.send(
        "emergency_alert",
        "inc-1",
        json!({"severity": "high", "description": "prod down"}),
    )
    .await
    .expect("publish");
    env.wait_state("inc-1", "active").await;

    let (_, agents) = get(app.http, "/api/v1/agents?role=qa-director").await;
    assert_eq!(agents[0]["agent_id"], "qa-1");
    assert_eq!(agents[0]["health"], "live");
    assert_eq!(agents[0]["load"], 0.5);
    let (_, letters) = get(app.http, "/api/v1/dead-letters?unresolved=true").await;
    assert_eq!(letters[0]["reason"], "unknown_workflow");
    let (_, emergencies) = get(app.http, "/api/v1/emergencies").await;
    assert_eq!(emergencies[0]["incident"]["id"], "inc-1");
    // Everyone but who raised it owes an acknowledgment.
    assert_eq!(emergencies[0]["not_acknowledged"], json!(["eng-1"]));
    let (status, report) = get(app.http, "/api/v1/report?since=1h").await;
    assert_eq!(status, 200);
    assert!(
        ["healthy", "degraded", "critical"]
            .contains(&report["overall_health"].as_str().unwrap_or("")),
        "{report}"
    );
    assert_eq!(report["rules"].as_array().map(Vec::len), Some(6));
    let (status, bad) = get(app.http, "/api/v1/report?since=forever").await;
    assert_eq!(status, 400, "{bad}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_delivers_workflow_events_as_they_commit() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let mut s = tokio::net::TcpStream::connect(app.http)
        .await
        .expect("connect");
    s.write_all(
        format!("GET /api/v1/events?kind=feature_delivery HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n", app.http).as_bytes(),
    )
    .await
    .expect("request");
    let mut lines = BufReader::new(s).lines();
    let status = lines
        .next_line()
        .await
        .expect("read")
        .expect("a status line");
    assert!(status.contains(" 200 "), "{status}");
    product
        .send("requirements_ready", "wf-streamed", json!({}))
        .await
        .expect("publish");
    let data = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read")
                .expect("the stream stays open");
            if let Some(d) = line.strip_prefix("data: ") {
                break d.to_string();
            }
        }
    })
    .await
    .expect("an event within the wait");
    let event: Value = serde_json::from_str(&data).expect("JSON data");
    assert_eq!(event["workflow_id"], "wf-streamed");
    assert_eq!(event["message_type"], "requirements_ready");
    assert_eq!(event["to_state"], "requirements_handoff");
    assert_eq!(event["source_role"], "product-director");
    app.stop().await;
}

/// `overdue` (an armed clock past its deadline) and `role` (an armed clock that role
/// owns): the workflows found from their clocks (not by walking every workflow), in id
/// order and paged like any other list. Read straight from the database, with no
/// coordinator whose timer would fire the overdue clocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_overdue_or_of_a_role_are_found_from_their_armed_clocks_in_id_order() {
    use coordinator::db::read::{workflow_page, WorkflowFilter};
    let env = TestEnv::new().await;
    for statement in [
        "INSERT INTO workflows (id, kind, state) VALUES
           ('wf-1', 'feature_delivery', 'testing'), ('wf-2', 'feature_delivery', 'testing'),
           ('wf-3', 'feature_delivery', 'testing'), ('wf-4', 'emergency', 'active'),
           ('wf-5', 'feature_delivery', 'testing'), ('wf-6', 'feature_delivery', 'testing')",
        // wf-2 twice overdue, wf-4 and wf-6 once; wf-1 due tomorrow; wf-3 past its
        // deadline but breached (closed); wf-5 none. The QA director owns wf-1's,
        // wf-2's and wf-3's (closed) clocks.
        "INSERT INTO sla_clocks (workflow_id, clock, round, owner_role, severity, armed_at, due_at, status, closed_at) VALUES
           ('wf-1', 'testing_completion', 1, 'qa-director', 'high', now(), now() + interval '1 day', 'armed', NULL),
           ('wf-2', 'testing_completion', 1, 'qa-director', 'high', now(), now() - interval '1 hour', 'armed', NULL),
           ('wf-2', 'testing_completion', 2, 'qa-director', 'high', now(), now() - interval '1 minute', 'armed', NULL),
           ('wf-3', 'testing_completion', 1, 'qa-director', 'high', now(), now() - interval '1 hour', 'breached', now()),
           ('wf-4', 'acknowledgment', 1, 'product-director', 'high', now(), now() - interval '1 hour', 'armed', NULL),
           ('wf-6', 'deployment_start', 1, 'devops-director', 'high', now(), now() - interval '1 hour', 'armed', NULL)",
    ] {
        sqlx::query(statement)
            .execute(&env.pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    // Every page of `filter`, `per_page` at a time, following `next`.
    let all_pages = async |filter: WorkflowFilter<'_>, per_page: i64| -> Vec<String> {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (rows, next) = workflow_page(&env.pool, &filter, after.as_ref(), per_page)
                .await
                .unwrap_or_else(|e| panic!("{filter:?}: {e}"));
            seen.extend(rows.into_iter().map(|w| w.id));
            match next {
                Some(n) => after = Some(n),
                None => return seen,
            }
        }
    };
    let overdue = WorkflowFilter {
        overdue: true,
        ..Default::default()
    };
    let qa = WorkflowFilter {
        role: Some("qa-director"),
        ..Default::default()
    };
    assert_eq!(
        all_pages(overdue.clone(), 2).await,
        ["wf-2", "wf-4", "wf-6"]
    );
    assert_eq!(
        all_pages(
            WorkflowFilter {
                kind: Some("feature_delivery"),
                ..overdue.clone()
            },
            10
        )
        .await,
        ["wf-2", "wf-6"]
    );
    assert_eq!(all_pages(qa.clone(), 1).await, ["wf-1", "wf-2"]);
    assert_eq!(
        all_pages(
            WorkflowFilter {
                overdue: true,
                ..qa.clone()
            },
            10
        )
        .await,
        ["wf-2"]
    );
    assert_eq!(
        all_pages(
            WorkflowFilter {
                role: Some("devops-director"),
                ..Default::default()
            },
            10
        )
        .await,
        ["wf-6"]
    );
    assert_eq!(
        all_pages(WorkflowFilter::default(), 4).await.len(),
        6,
        "without a filter, every live workflow"
    );
}
