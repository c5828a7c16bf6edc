//! Transport security: the service over amqps:// and PostgreSQL with
//! `sslmode=verify-full`, against TLS listeners the test sets up itself
//! (`test_support::tls`: a generated CA, `socat` in front of the local broker and
//! database); production refusing plaintext URLs, naming the setting; and no password
//! in a `Debug` print, an error message, `--help` or a log line of a run.

use std::process::Command;

use coordinator::settings::Settings;
use test_support::tls::TlsFront;
use test_support::{coordinator_bin, repo_root, Serve, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_over_amqps_and_verify_full_postgres() {
    let env = TestEnv::new().await;
    let front = TlsFront::start().await;
    let mut settings = env.settings();
    settings.amqp.url = front.amqps_url(&env.vhost).into();
    settings.amqp.tls_ca_file = Some(front.ca_file.clone());
    settings.database.url = front.pg_url(&env.db_name).into();
    settings.security.allow_plaintext = false;
    settings
        .refuse_plaintext()
        .expect("TLS URLs are not plaintext");
    let app = env.start_with(settings.clone()).await;
    let product = env.agent("product-1", "product-director").await;
    env.start_feature(&product).await;
    app.stop().await;
    let tls = front.pg_tls.load(std::sync::atomic::Ordering::SeqCst);
    let plain = front.pg_plain.load(std::sync::atomic::Ordering::SeqCst);
    assert!(tls > 0, "no database connection asked for TLS");
    assert_eq!(plain, 0, "a database connection went without TLS");

    // verify-full checks the certificate: without the test's CA it is refused.
    let mut unverified = settings.database.clone();
    unverified.url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=verify-full",
        front.pg_port, env.db_name
    )
    .into();
    assert!(coordinator::db::check_reachable(&unverified).await.is_err());
    // And amqps:// without the CA is refused too.
    let mut amqp = settings.amqp.clone();
    amqp.tls_ca_file = None;
    assert!(coordinator::amqp::connect_to(&amqp, "test").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_refuses_plaintext_urls_naming_the_setting() {
    let env = TestEnv::new().await;
    let key = protocol::signing::encode_private(&protocol::signing::generate());
    let serve = Serve::spawn(
        &env,
        &[
            ("COORDINATOR_ENV", "production".to_string()),
            ("COORDINATOR__SECURITY__SIGNING_KEY", key),
        ],
    );
    let (code, log) = serve.wait_exit().await;
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("security.allow_plaintext") && log.contains("amqp.url"),
        "{log}"
    );

    let mut s = Settings::load_from(&repo_root().join("config"), Some("production"))
        .expect("production settings");
    s.amqp.url = "amqps://broker.example/%2f".into();
    let err = s.refuse_plaintext().expect_err("database.url is plaintext");
    assert!(
        err.to_string().contains("security.allow_plaintext")
            && err.to_string().contains("database.url"),
        "{err}"
    );
    s.database.url = "postgres://db.example/coordinator?sslmode=verify-full".into();
    s.refuse_plaintext().expect("both encrypted");
    s.amqp.fallback_urls = vec!["amqp://other.example/%2f".into()];
    assert!(s
        .refuse_plaintext()
        .expect_err("a plaintext fallback")
        .to_string()
        .contains("amqp.fallback_urls"));
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(coordinator_bin())
        .args(args)
        .current_dir(repo_root())
        .envs(envs.iter().copied())
        .output()
        .expect("coordinator runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_appears_in_debug_errors_help_or_the_logs_of_a_run() {
    let env = TestEnv::new().await;
    let amqp_password = format!("amqp-{}", uuid::Uuid::new_v4().simple());
    // Trust authentication ignores it, but it is in the URL all the same.
    let db_password = format!("pg-{}", uuid::Uuid::new_v4().simple());
    let user = format!("coord-{}", uuid::Uuid::new_v4().simple());
    env.delete_user_on_drop(&user);
    for args in [
        vec!["add_user", user.as_str(), amqp_password.as_str()],
        vec!["set_user_tags", user.as_str(), "administrator"],
        vec![
            "set_permissions",
            "-p",
            env.vhost.as_str(),
            user.as_str(),
            ".*",
            ".*",
            ".*",
        ],
    ] {
        let out = Command::new("rabbitmqctl")
            .args(&args)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let amqp_url = env.amqp_url_as(&user, &amqp_password);
    let db_url = env
        .db_url
        .replacen("postgres@", &format!("postgres:{db_password}@"), 1);
    let secrets = [amqp_password.as_str(), db_password.as_str()];
    let leaks = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows a password:\n{text}");
        }
    };

    let mut settings = env.settings();
    settings.amqp.url = amqp_url.clone().into();
    settings.amqp.fallback_urls = vec![amqp_url.clone().into()];
    settings.database.url = db_url.clone().into();
    leaks("Debug of the settings", &format!("{settings:?}"));

    // An error naming the unreachable database, and one from the broker refusing a
    // wrong password.
    let unreachable = db_url.replace(&format!(":{}/", 5432), ":1/");
    let (code, out) = run(
        &["agent", "list"],
        &[
            ("COORDINATOR_ENV", "test"),
            ("COORDINATOR__DATABASE__URL", &unreachable),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    leaks("an unreachable database's error", &out);
    let wrong = env.amqp_url_as(&user, &format!("{amqp_password}-wrong"));
    let (code, out) = run(
        &["agent", "add", "qa-9", "qa-director"],
        &[
            ("COORDINATOR_ENV", "test"),
            ("COORDINATOR__DATABASE__URL", &db_url),
            ("COORDINATOR__AMQP__URL", &wrong),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    leaks("a refused login's error", &out);

    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["agent", "add", "--help"],
    ] {
        let (code, out) = run(
            &args,
            &[
                ("COORDINATOR__DATABASE__URL", &db_url),
                ("COORDINATOR__AMQP__URL", &amqp_url),
            ],
        );
        assert_eq!(code, Some(0), "{out}");
        leaks("--help", &out);
    }

    // A whole run, logging at debug: start, a message applied, SIGTERM.
    let serve = Serve::spawn(
        &env,
        &[
            ("COORDINATOR__DATABASE__URL", db_url.clone()),
            ("COORDINATOR__AMQP__URL", amqp_url.clone()),
            ("RUST_LOG", "debug".to_string()),
            ("COORDINATOR__LOG__FORMAT", "text".to_string()),
        ],
    );
    serve.wait_ready().await;
    let product = env.agent("product-1", "product-director").await;
    env.start_feature(&product).await;
    serve.signal("-TERM");
    let (code, log) = serve.wait_exit().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("DEBUG"),
        "the run logged nothing at debug:\n{log}"
    );
    leaks("the log of a run", &log);
}
