//! The command line as a user meets it: help everywhere, clear errors, and the manager
//! views (`workflow list`, `workflow show`) on a real database.

use test_support as common;

use std::process::{Command, Output};

use common::{process_directly, TestEnv};
use coordinator::service::runtime::Shared;

fn coordinator(env: Option<&TestEnv>, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.args(args)
        .current_dir(common::repo_root())
        .env("COORDINATOR_ENV", "test")
        .env_remove("RUST_LOG");
    if let Some(env) = env {
        cmd.env("COORDINATOR__DATABASE__URL", &env.db_url)
            .env("COORDINATOR__AMQP__URL", &env.amqp_url);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("coordinator binary runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn version_names_the_build_and_the_contract() {
    let out = coordinator(None, &["--version"], &[]);
    assert!(out.status.success());
    let (stdout, _) = text(&out);
    assert_eq!(
        stdout.trim(),
        format!(
            "coordinator {} (contract {})",
            env!("CARGO_PKG_VERSION"),
            protocol::envelope::VERSION
        )
    );
}

/// Every argument of every command, with its command path, that has no description.
fn undescribed(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id != "help" && id != "version" && arg.get_help().is_none() {
            out.push(format!("{path} {id}"));
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_about().is_none() {
            out.push(format!("{path} {} (the command)", sub.get_name()));
        }
        undescribed(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn every_option_of_every_command_has_a_description() {
    use clap::CommandFactory;
    let mut missing = Vec::new();
    undescribed(
        &coordinator::cli::Cli::command(),
        "coordinator",
        &mut missing,
    );
    assert!(missing.is_empty(), "no description: {missing:?}");

    let o = coordinator(None, &["agent", "add", "--help"], &[]);
    let (out, _) = text(&o);
    for role in ["product-director", "qa-director", "marketing-director"] {
        assert!(
            out.contains(role),
            "agent add --help lists the roles:\n{out}"
        );
    }
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["agent", "--help"],
        vec!["agent", "add", "--help"],
        vec!["agent", "list", "--help"],
        vec!["workflow", "--help"],
        vec!["workflow", "list", "--help"],
        vec!["workflow", "show", "--help"],
        vec!["workflow", "cancel", "--help"],
        vec!["workflow", "fail", "--help"],
        vec!["dead-letter", "--help"],
        vec!["dead-letter", "list", "--help"],
        vec!["dead-letter", "replay", "--help"],
    ] {
        let o = coordinator(None, &args, &[]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(out.contains("Usage: coordinator"), "{args:?}: {out}");
    }
}

#[test]
fn wrong_arguments_and_bad_configuration_say_what_is_wrong() {
    let o = coordinator(None, &["workflow", "list", "--state", "bogus"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(
        err.contains("invalid value 'bogus'") && err.contains("requirements_handoff"),
        "{err}"
    );

    let o = coordinator(None, &["frobnicate"], &[]);
    assert_eq!(o.status.code(), Some(2));

    // An unreachable database is named by its setting and where it was looked for.
    let o = coordinator(
        None,
        &["workflow", "list"],
        &[(
            "COORDINATOR__DATABASE__URL",
            "postgres://postgres@127.0.0.1:1/nowhere",
        )],
    );
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    assert!(
        err.contains("database.url") && err.contains("127.0.0.1:1/nowhere"),
        "{err}"
    );
    // ... and says the cause once, not once per layer of libraries.
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");

    // A bare number for a duration: the error says what to write instead.
    let o = coordinator(
        None,
        &["workflow", "list"],
        &[("COORDINATOR__INBOX__REBALANCE_INTERVAL", "5")],
    );
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(
        err.contains("inbox.rebalance_interval") && err.contains("\"5s\""),
        "{err}"
    );

    // A negative or zero limit is refused by clap, naming the option.
    let o = coordinator(None, &["workflow", "list", "--limit=-3"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(err.contains("--limit") && err.contains("-3"), "{err}");

    // Environment overrides are read, and a bad value names its key.
    let o = coordinator(
        None,
        &["workflow", "list"],
        &[("COORDINATOR__SLA__TIME_SCALE", "0")],
    );
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(err.contains("sla.time_scale"), "{err}");

    let o = coordinator(
        None,
        &["workflow", "list"],
        &[("COORDINATOR__INBOX__PREFETCH", "lots")],
    );
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(err.contains("prefetch"), "{err}");

    // A key the service does not know (misspelt, or moved) is refused by name.
    let o = coordinator(
        None,
        &["workflow", "list"],
        &[("COORDINATOR__AMQP__PREFETCH", "64")],
    );
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(err.contains("unknown field `prefetch`"), "{err}");

    let o = coordinator(
        None,
        &["workflow", "list"],
        &[("COORDINATOR_ENV", "no-such-env")],
    );
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(err.contains("no-such-env"), "{err}");
}

#[test]
fn commands_check_only_the_settings_they_use_and_say_every_problem_at_once() {
    let production = [("COORDINATOR_ENV", "production")];
    // Under production's settings, with plaintext URLs and no signing key: making a key
    // and checking or drawing definitions touch neither the services nor the key.
    for args in [
        &["key", "generate"][..],
        &["key", "generate-encryption"],
        &["workflow", "check"],
        &["workflow", "graph", "feature_delivery"],
    ] {
        let o = coordinator(None, args, &production);
        let (_, err) = text(&o);
        assert!(o.status.success(), "{args:?}: {err}");
    }
    // A command that connects says both problems in one go.
    let o = coordinator(None, &["agent", "list"], &production);
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(
        err.contains("2 configuration values are invalid")
            && err.contains("security.allow_plaintext")
            && err.contains("security.signing_key"),
        "{err}"
    );
    // So do invalid values read from the settings.
    let o = coordinator(
        None,
        &["workflow", "list"],
        &[
            ("COORDINATOR__SLA__TIME_SCALE", "0"),
            ("COORDINATOR__INBOX__PARTITIONS", "0"),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(
        err.contains("sla.time_scale") && err.contains("inbox.partitions"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_see_state_clocks_and_history_and_operators_can_cancel() {
    let env = TestEnv::new().await;
    let shared = Shared::new(
        env.settings(),
        env.pool.clone(),
        coordinator::clock::system(),
    );
    for (a, r, m) in [
        ("product-1", "product-director", "requirements_ready"),
        ("eng-1", "engineering-director", "sprint_initialized"),
        ("eng-1", "engineering-director", "feature_completed"),
        ("qa-1", "qa-director", "testing_started"),
    ] {
        process_directly(&shared, a, r, m, "wf-cli").await;
    }
    // A long id widens its column; the other columns stay aligned.
    let long = "wf-cli-with-an-identifier-much-longer-than-the-usual-ones";
    process_directly(
        &shared,
        "product-1",
        "product-director",
        "requirements_ready",
        long,
    )
    .await;
    let o = coordinator(Some(&env), &["workflow", "list"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let state_at: Vec<Option<usize>> = out
        .lines()
        .map(|l| {
            ["STATE", "testing", "requirements_handoff"]
                .iter()
                .find_map(|w| l.find(w))
        })
        .collect();
    assert_eq!(state_at.len(), 3, "{out}");
    assert!(
        state_at.iter().all(|at| at.is_some() && *at == state_at[0]),
        "the STATE column starts at one place in every line:\n{out}"
    );

    let o = coordinator(Some(&env), &["workflow", "list", "--state", "testing"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("wf-cli") && out.contains("EPIC-wf-cli") && out.contains("in "),
        "{out}"
    );
    let o = coordinator(
        Some(&env),
        &["workflow", "list", "--state", "completed"],
        &[],
    );
    assert!(text(&o).0.contains("(no workflows)"));
    // Incidents' states are states too.
    let o = coordinator(Some(&env), &["workflow", "list", "--state", "active"], &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("(no workflows)"));

    let o = coordinator(Some(&env), &["workflow", "show", "wf-cli"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    eprintln!("{out}");
    for want in [
        "state:     testing (round 1)",
        "EPIC-wf-cli \"Example\"",
        "initial_feedback",
        "testing_completion",
        "armed",
        "met",
        "sprint_planning",
        "requirements_ready",
        "feature_handoff → testing",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }

    let o = coordinator(Some(&env), &["workflow", "show", "wf-nope"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o)
        .1
        .contains("no workflow wf-nope (list them with `coordinator workflow list`)"));

    let o = coordinator(
        Some(&env),
        &["workflow", "cancel", "wf-cli", "--reason", "descoped"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(
        env.workflow_state("wf-cli").await.as_deref(),
        Some("cancelled")
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM sla_clocks WHERE status = 'armed' AND workflow_id = 'wf-cli'"
        )
        .await,
        0
    );
    let reason: String = sqlx::query_scalar(
        "SELECT detail->>'reason' FROM workflow_events WHERE workflow_id = 'wf-cli' AND message_type = 'operator_cancelled'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("event");
    assert_eq!(reason, "descoped");
    let o = coordinator(
        Some(&env),
        &["workflow", "cancel", "wf-cli", "--reason", "again"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("already cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_from_any_directory_on_its_compiled_in_configuration() {
    let env = TestEnv::new().await;
    let elsewhere = std::env::temp_dir();
    let o = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["workflow", "list"])
        .current_dir(&elsewhere)
        .env_remove("COORDINATOR_ENV")
        .env_remove("COORDINATOR_CONFIG_DIR")
        .env("COORDINATOR__DATABASE__URL", &env.db_url)
        .output()
        .expect("coordinator runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "from {}: {err}", elsewhere.display());
    assert!(out.contains("(no workflows)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_add_registers_declares_and_refuses_bad_input() {
    let env = TestEnv::new().await;
    let o = coordinator(Some(&env), &["agent", "add", "qa-9", "qa-director"], &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    // Idempotent.
    let o = coordinator(Some(&env), &["agent", "add", "qa-9", "qa-director"], &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("already registered"));
    // The queues exist: an agent can consume from them.
    let mut qa = env.connect_as("qa-9", "qa-director").await;
    assert!(qa
        .next(agent::Queue::Tasks, std::time::Duration::from_millis(100))
        .await
        .expect("tasks queue exists")
        .is_none());

    let o = coordinator(Some(&env), &["agent", "add", "qa-9", "devops-manager"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("already registered as qa-director"));
    // Wrong values exit 2 and name the argument, as clap's own errors do.
    let o = coordinator(Some(&env), &["agent", "add", "x 1", "qa-director"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("<AGENT_ID>"), "{}", text(&o).1);
    let o = coordinator(Some(&env), &["agent", "add", "x1", "intern"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(
        err.contains("<AGENT_TYPE>") && err.contains("not a configured role"),
        "{err}"
    );

    // Both or neither: with the broker unreachable, the agent is not registered.
    let o = coordinator(
        Some(&env),
        &["agent", "add", "qa-10", "qa-director"],
        &[(
            "COORDINATOR__AMQP__URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        )],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("amqp.url"), "{}", text(&o).1);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM agents WHERE agent_id = 'qa-10'")
            .await,
        0,
        "no half-registered agent"
    );
    // A node that does not answer is passed over for the next of amqp.fallback_urls
    // (a list in one environment variable).
    let o = coordinator(
        Some(&env),
        &["agent", "add", "qa-10", "qa-director"],
        &[
            (
                "COORDINATOR__AMQP__URL",
                "amqp://guest:guest@127.0.0.1:1/%2f",
            ),
            (
                "COORDINATOR__AMQP__FALLBACK_URLS",
                &format!("amqp://guest:guest@127.0.0.1:2/%2f,{}", env.amqp_url),
            ),
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);

    let o = coordinator(Some(&env), &["agent", "list"], &[]);
    assert!(text(&o).0.contains("qa-9"));
}

/// A command closes its PostgreSQL sessions rather than dropping them: PostgreSQL counts
/// a dropped one as abandoned (`pg_stat_database.sessions_abandoned`) and logs
/// "could not receive data from client: Connection reset by peer" for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_close_their_database_sessions() {
    let env = TestEnv::new().await;
    let stats = "SELECT sessions::bigint, sessions_abandoned::bigint FROM pg_stat_database \
                 WHERE datname = current_database()";
    let read = || async {
        sqlx::query_as::<_, (i64, i64)>(stats)
            .fetch_one(&env.pool)
            .await
            .expect("pg_stat_database")
    };
    let (sessions_before, abandoned_before) = read().await;
    let commands: [&[&str]; 3] = [&["workflow", "list"], &["agent", "list"], &["sla", "list"]];
    for args in commands {
        let o = coordinator(Some(&env), args, &[]);
        assert!(o.status.success(), "{:?}", text(&o));
    }
    // Each command opens at least two sessions (the reachability check, the pool);
    // PostgreSQL counts them once they have ended.
    let (sessions, abandoned) =
        common::eventually("the commands' sessions to be counted", || async {
            let (s, a) = read().await;
            (s >= sessions_before + 6).then_some((s, a))
        })
        .await;
    assert_eq!(
        abandoned - abandoned_before,
        0,
        "{} of {} sessions were dropped, not closed",
        abandoned - abandoned_before,
        sessions - sessions_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_sends_a_message_as_an_agent_and_sees_where_it_went() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    for (id, role) in [
        ("product-1", "product-director"),
        ("eng-1", "engineering-director"),
    ] {
        let o = coordinator(Some(&env), &["agent", "add", id, role], &[]);
        assert!(o.status.success(), "{:?}", text(&o));
    }
    let o = coordinator(
        Some(&env),
        &[
            "agent",
            "send",
            "product-1",
            "requirements_ready",
            "wf-try",
            "--data",
            r#"{"epic_id": "E-1", "title": "Try it"}"#,
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("requirements_ready sent as product-1 (product-director) about wf-try"),
        "{out}"
    );
    env.wait_state("wf-try", "requirements_handoff").await;

    // Engineering's task waits in its queue, which `agent show` shows with the rest.
    let shown = common::eventually("the task in eng-1's queue", || async {
        let o = coordinator(Some(&env), &["agent", "show", "eng-1"], &[]);
        let (out, _) = text(&o);
        (o.status.success() && out.contains("agent.eng-1.tasks: 1 ready")).then_some(out)
    })
    .await;
    assert!(
        shown.contains("agent:          eng-1 (engineering-director)")
            && shown.contains("keys:           none")
            && shown.contains("broker user:    none"),
        "{shown}"
    );

    // What is wrong is said.
    let o = coordinator(
        Some(&env),
        &[
            "agent",
            "send",
            "product-1",
            "requirements_ready",
            "wf-x",
            "--data",
            "[1]",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("must be a JSON object"),
        "{:?}",
        text(&o)
    );
    let o = coordinator(
        Some(&env),
        &["agent", "send", "nobody", "requirements_ready", "wf-x"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("nobody"), "{:?}", text(&o));
    app.stop().await;
}

/// A manager's terminal without the configuration folder that defined a custom
/// workflow: `workflow list` filters and shows kinds, and the stored definition gives
/// the workflow's states and its diagram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_workflow_is_listed_by_kind_and_drawn_from_its_stored_definition() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    // As a service with a configuration folder holding code_review.toml left it: the
    // definition stored, one workflow of it, beside a feature delivery.
    let review = coordinator::domain::definition::parse(
        "code_review.toml",
        include_str!("fixtures/code_review.toml"),
        &settings.catalog(),
    )
    .expect("the fixture parses");
    coordinator::db::definitions::register(&env.pool, &[review])
        .await
        .expect("stored");
    sqlx::query(
        "INSERT INTO workflows (id, kind, state, key_name, business_key) VALUES
           ('cr-1', 'code_review', 'reviewing', 'change_id', 'CH-7'),
           ('wf-1', 'feature_delivery', 'testing', 'epic_id', 'E-1')",
    )
    .execute(&env.pool)
    .await
    .expect("workflows");

    let reviews_in = |state: &str| {
        let args = [
            "workflow",
            "list",
            "--kind",
            "code_review",
            "--state",
            state,
        ];
        coordinator(Some(&env), &args, &[])
    };
    let o = reviews_in("reviewing");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.lines().next().is_some_and(|h| h.contains("KIND")),
        "{out}"
    );
    assert!(
        out.contains("cr-1") && out.contains("code_review") && out.contains("change_id=CH-7"),
        "{out}"
    );
    assert!(!out.contains("wf-1"), "{out}");

    // A state of another kind is not one of this kind's.
    let o = reviews_in("testing");
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(
        err.contains("invalid value 'testing' for '--state <STATE>' of code_review")
            && err.contains("reviewing"),
        "{err}"
    );
    let o = coordinator(Some(&env), &["workflow", "list", "--kind", "bogus"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("code_review, emergency"),
        "{}",
        text(&o).1
    );

    let o = coordinator(Some(&env), &["workflow", "graph", "code_review"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.starts_with("stateDiagram-v2") && out.contains("reviewing"),
        "{out}"
    );
}

/// `coordinator tail`: what happened (from --since), filtered, and what happens next,
/// one line per event; a wrong filter says what would be right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_shows_workflow_events_as_they_are_committed_filtered() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let product = env.agent("product-1", "product-director").await;
    let first = env.start_feature(&product).await;
    let second = env.start_feature(&product).await;

    let o = coordinator(Some(&env), &["tail", "--since", "10m", "--limit", "2"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, wf) in lines.iter().zip([&first, &second]) {
        assert!(
            line.contains(&format!(
                "{wf} (feature_delivery)  requirements_ready  product-1 (product-director)"
            )) && line.contains("requirements_handoff")
                && !line.contains('\u{1b}'),
            "{out}"
        );
    }
    let o = coordinator(
        Some(&env),
        &[
            "tail",
            "--since",
            "10m",
            "--workflow",
            &second,
            "--limit",
            "1",
        ],
        &[],
    );
    let (out, _) = text(&o);
    assert!(out.contains(&second) && !out.contains(&first), "{out}");

    // From now on: the next feature delivery's start, and nothing before it.
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args([
            "tail",
            "--kind",
            "feature_delivery",
            "--type",
            "requirements_ready",
            "--limit",
            "1",
            "--every",
            "100ms",
        ])
        .current_dir(common::repo_root())
        .env("COORDINATOR_ENV", "test")
        .env("COORDINATOR__DATABASE__URL", &env.db_url)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tail starts");
    // Once it says it follows, what is committed next is after its start.
    let mut said = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let started = tokio::time::timeout(common::WAIT, said.next_line())
        .await
        .expect("tail says it started")
        .expect("stderr readable")
        .unwrap_or_default();
    assert!(
        started.starts_with("following workflow events from "),
        "{started}"
    );
    let third = env.start_feature(&product).await;
    let out = tokio::time::timeout(common::WAIT, child.wait_with_output())
        .await
        .expect("tail stops after one event")
        .expect("tail's output");
    let out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(&third), "{out}");

    let o = coordinator(Some(&env), &["tail", "--role", "nobody"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("possible values: "), "{}", text(&o).1);
    let o = coordinator(Some(&env), &["tail", "--kind", "nothing"], &[]);
    assert_eq!(o.status.code(), Some(2));
    app.stop().await;
}
