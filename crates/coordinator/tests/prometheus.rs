//! The coordinator as Prometheus sees it: the alert rules checked and unit-tested by
//! Prometheus' own `promtool`, and a real Prometheus (Debian's `prometheus` package;
//! `make prometheus` installs it) scraping a running coordinator.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use test_support::{eventually, http_get, repo_root, TestEnv};

fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: install Debian's prometheus package (`make prometheus`; make test does)",
        path.display()
    );
    path
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo_root().join("docs/prometheus"))
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let (ok, text) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok && text.contains("SUCCESS: 8 rules found"), "{text}");
    let (ok, text) = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(ok && text.contains("SUCCESS"), "{text}");
}

/// Every alert has a unit test, and every series an alert reads is one the coordinator
/// serves (or Prometheus' own `up`).
#[test]
fn every_alert_is_tested_and_reads_only_series_that_exist() {
    let rules = std::fs::read_to_string(repo_root().join("docs/prometheus/alerts.yml"))
        .expect("alerts.yml");
    let tests = std::fs::read_to_string(repo_root().join("docs/prometheus/alerts.test.yml"))
        .expect("alerts.test.yml");
    // A vector's series appear once they have a child: give every gauge family one.
    let metrics = coordinator::service::runtime::Metrics::new();
    let one = |labels: &[&str]| vec![(labels.iter().map(|l| l.to_string()).collect(), 1)];
    metrics.set_state(&coordinator::db::read::State {
        workflows: one(&["feature_delivery", "testing"]),
        escalations_open: one(&["1"]),
        dead_letters_unresolved: one(&["stale"]),
        agents: one(&["live"]),
        outbox_oldest_age_seconds: 0.0,
        roles: Vec::new(),
    });
    let clock = [("testing_start".to_string(), "qa-director".to_string())];
    metrics.count_sla(&clock, &clock);
    let served = metrics.render();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "{name} has no test in alerts.test.yml"
            );
        }
        if let Some(expr) = line.strip_prefix("expr: ") {
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("coordinator_") {
                    let series = word.trim_end_matches("_count");
                    assert!(
                        served.contains(&format!("# TYPE {series} ")),
                        "{word} (in `{expr}`) is not a metric the coordinator serves"
                    );
                }
            }
        }
    }
}

/// Prometheus' HTTP API path of an instant query.
#[test]
fn docs_metrics_md_lists_every_metric_the_coordinator_serves() {
    let doc = std::fs::read_to_string(repo_root().join("docs/metrics.md")).expect("metrics.md");
    let metrics = coordinator::service::runtime::Metrics::new();
    assert!(metrics.names.len() > 30, "{:?}", metrics.names);
    let missing: Vec<&String> = metrics
        .names
        .iter()
        .filter(|n| !doc.contains(&format!("| `{n}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md has no row for {missing:?}"
    );
}

fn query_path(promql: &str) -> String {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/api/v1/query?query={encoded}")
}

struct Prometheus(Child, PathBuf);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_running_coordinator_and_sees_its_state() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.metrics.refresh_interval = Duration::from_millis(500);
    let running = env.start_with(settings).await;
    let product = env.agent("product-1", "product-director").await;
    // Engineering's queue takes the task the start sends (unroutable, it would wait).
    let _engineering = env.agent("eng-1", "engineering-director").await;
    env.start_feature(&product).await;

    let dir = std::env::temp_dir().join(format!("coordinator-prometheus-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    let config = format!(
        "global:\n  scrape_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: coordinator\n    static_configs:\n      - targets: [\"{}\"]\n",
        repo_root().join("docs/prometheus/alerts.yml").display(),
        running.http
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("config");
    let port = test_support::isolated::free_port();
    let child = Command::new(tool("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
        .spawn()
        .expect("prometheus starts");
    let prometheus = Prometheus(child, dir.clone());
    let api: std::net::SocketAddr = ([127, 0, 0, 1], port).into();

    // The answer's first sample value, once Prometheus has one.
    let value = |promql: &'static str| async move {
        let (status, body) = http_get(api, &query_path(promql)).await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200)
            .then(|| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_string)
            })
            .flatten()
    };
    let live = eventually("Prometheus to see the started feature delivery", || async {
        value("sum(coordinator_workflows{job=\"coordinator\",kind=\"feature_delivery\",state=\"requirements_handoff\"})")
            .await
            .filter(|v| v == "1")
    })
    .await;
    assert_eq!(live, "1");
    let held = eventually("Prometheus to see the partitions held", || async {
        value("coordinator_partitions_held{job=\"coordinator\"}")
            .await
            .filter(|v| v != "0")
    })
    .await;
    let partitions = env.settings().inbox.partitions.to_string();
    assert_eq!(held, partitions);
    // The seeds' own names: the product director's message in, the task out to
    // engineering, and this process's database connections.
    for (what, promql) in [
        (
            "the product director's message counted",
            "agent_messages_sent_total{job=\"coordinator\",agent_type=\"product-director\",destination=\"coordinator\"}",
        ),
        (
            "the task to engineering counted",
            "agent_messages_sent_total{job=\"coordinator\",agent_type=\"coordinator\",destination=\"engineering-director\"}",
        ),
        (
            "its processing time observed",
            "agent_message_duration_seconds_count{job=\"coordinator\"}",
        ),
        (
            "the database connections",
            "agent_active_connections{job=\"coordinator\",protocol=\"postgresql\"}",
        ),
        (
            "the broker connection",
            "agent_active_connections{job=\"coordinator\",protocol=\"amqp\"}",
        ),
    ] {
        eventually(what, || async {
            value(promql).await.filter(|v| v.parse::<f64>().is_ok_and(|n| n >= 1.0))
        })
        .await;
    }
    let up = eventually("the scrape to be up", || async {
        value("up{job=\"coordinator\"}").await
    })
    .await;
    assert_eq!(up, "1");
    // The alert rules loaded, and none fires on a healthy coordinator.
    let (_, rules) = http_get(api, "/api/v1/rules").await.expect("rules");
    assert!(rules.contains("CoordinatorNoPartitionHeld"), "{rules}");
    let (_, alerts) = http_get(api, "/api/v1/alerts").await.expect("alerts");
    assert!(alerts.contains("\"alerts\":[]"), "{alerts}");
    drop(prometheus);
    running.stop().await;
}

/// One feature started: the message and the task it caused went through every stage
/// of `coordinator_stage_seconds`, each observed at least once, none absurd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_a_message_goes_through_is_observed() {
    let env = TestEnv::new().await;
    let running = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let _engineering = env.agent("eng-1", "engineering-director").await;
    env.start_feature(&product).await;
    // (count, sum) of a stage's histogram, from the exposition.
    let read = |body: &str, stage: &str| {
        let value = |suffix: &str| {
            let series = format!("coordinator_stage_seconds_{suffix}{{stage=\"{stage}\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        Some((value("count")?, value("sum")?))
    };
    let body = eventually(
        "every stage to be observed (the confirm comes last)",
        || async {
            let (_, body) = http_get(running.http, "/metrics").await?;
            coordinator::service::runtime::STAGES
                .iter()
                .all(|s| read(&body, s).is_some_and(|(n, _)| n >= 1.0))
                .then_some(body)
        },
    )
    .await;
    for stage in coordinator::service::runtime::STAGES {
        let (n, sum) = read(&body, stage).expect("observed");
        assert!(
            sum >= 0.0 && sum / n < 10.0,
            "{stage}: {n} observations taking {sum} s in all"
        );
    }
    running.stop().await;
}
