//! A healthy start logs nothing above INFO: a WARN or ERROR line is for something an
//! operator must look at, and a newcomer's first `make run` must not greet them with
//! one. `coordinator serve` is started as `make run` starts it (the shipped default
//! settings and log filter), and again as production is (quorum queues, TLS to the
//! broker and the database), each on a fresh database and vhost, then restarted on
//! the same ones; stopped with SIGTERM.

use test_support::tls::TlsFront;
use test_support::{repo_root, Serve, TestEnv};

/// Lines of a text log above INFO.
fn above_info(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

/// Starts serve with `profile`'s settings and log filter, waits until it is ready,
/// stops it; what it logged.
async fn start_and_stop(env: &TestEnv, profile: Option<&str>, tls: Option<&TlsFront>) -> String {
    let settings = coordinator::settings::Settings::load_from(&repo_root().join("config"), profile)
        .expect("settings");
    let mut extra = vec![
        ("RUST_LOG", settings.log.filter.clone()),
        ("COORDINATOR_ENV", profile.unwrap_or_default().to_string()),
    ];
    // The shipped profiles log as text (colourless, since stderr is a pipe).
    extra.push(("COORDINATOR__LOG__FORMAT", "text".to_string()));
    if let Some(front) = tls {
        extra.push(("COORDINATOR__AMQP__URL", front.amqps_url(&env.vhost)));
        extra.push((
            "COORDINATOR__AMQP__TLS_CA_FILE",
            front.ca_file.display().to_string(),
        ));
        extra.push(("COORDINATOR__DATABASE__URL", front.pg_url(&env.db_name)));
        // Production checks signatures, so it signs too: it needs its key.
        extra.push((
            "COORDINATOR__SECURITY__SIGNING_KEY",
            protocol::signing::encode_private(&protocol::signing::generate()),
        ));
    }
    let serve = Serve::spawn(env, &extra);
    serve.wait_ready().await;
    serve.signal("-TERM");
    let (code, log) = serve.wait_exit().await;
    assert_eq!(code, Some(0), "{log}");
    log
}

async fn assert_clean(profile: Option<&str>, tls: Option<&TlsFront>) {
    let env = TestEnv::new().await;
    for start in ["first start", "restart"] {
        let log = start_and_stop(&env, profile, tls).await;
        assert!(
            log.contains("topology declared") && log.contains("consuming an inbox partition"),
            "{start} ({profile:?}) logged no INFO lines to judge by:\n{log}"
        );
        let loud = above_info(&log);
        assert!(
            loud.is_empty(),
            "{start} ({profile:?}) logged above INFO:\n{}",
            loud.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_start_with_the_default_settings_logs_nothing_above_info() {
    assert_clean(None, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_start_with_the_production_settings_logs_nothing_above_info() {
    // Production refuses plaintext: TLS in front of the local broker and database.
    let front = TlsFront::start().await;
    assert_clean(Some("production"), Some(&front)).await;
    assert_eq!(
        front.pg_plain.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a database connection went without TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_told_to_allow_plaintext_says_so_once() {
    let env = TestEnv::new().await;
    let extra = vec![
        ("COORDINATOR_ENV", "production".to_string()),
        ("COORDINATOR__LOG__FORMAT", "text".to_string()),
        ("COORDINATOR__SECURITY__ALLOW_PLAINTEXT", "true".to_string()),
        (
            "COORDINATOR__SECURITY__SIGNING_KEY",
            protocol::signing::encode_private(&protocol::signing::generate()),
        ),
    ];
    let serve = Serve::spawn(&env, &extra);
    serve.wait_ready().await;
    serve.signal("-TERM");
    let (code, log) = serve.wait_exit().await;
    assert_eq!(code, Some(0), "{log}");
    let loud = above_info(&log);
    assert_eq!(loud.len(), 1, "{log}");
    assert!(
        loud[0].contains("security.allow_plaintext is true in production")
            && loud[0].contains("to RabbitMQ and to PostgreSQL"),
        "{}",
        loud[0]
    );
}

#[test]
fn the_judge_sees_warnings_and_errors() {
    let log = "2026-12-02T10:00:00Z  INFO coordinator: ok\n2026-12-02T10:00:00Z  WARN x: y\n2026-12-02T10:00:00Z ERROR lapin::channel: z";
    assert_eq!(above_info(log).len(), 2);
}
