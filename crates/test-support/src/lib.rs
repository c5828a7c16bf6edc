//! # coordinator-test-support
//!
//! The shared integration-test helper: every test gets its own PostgreSQL database
//! (cloned from a migrated template, so migrations run once per migration set) and its
//! own RabbitMQ vhost, both dropped when the [`TestEnv`] is dropped. Waits poll with a
//! deadline; nothing sleeps and hopes.
use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::{AgentClient, Queue};
use coordinator::app::App;
use coordinator::service::runtime::Shared;
use coordinator::settings::{percent_encode, with_login, Settings};
use protocol::envelope::Envelope;
use protocol::names::exchanges;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// Where test databases are created: `COORDINATOR_TEST_PG_URL` (a superuser's URL to an
/// existing database), by default the local PostgreSQL.
const PG_ADMIN_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The broker, without a vhost: `COORDINATOR_TEST_AMQP_URL`, by default the local one.
const AMQP_DEFAULT: &str = "amqp://guest:guest@127.0.0.1:5672";
/// RabbitMQ's management API (`http://user:password@host:15672`): when
/// `COORDINATOR_TEST_RABBITMQ_API` is set, test vhosts are made and dropped through it
/// (a broker on another host); otherwise with `rabbitmqctl` on this machine.
const RABBITMQ_API_VAR: &str = "COORDINATOR_TEST_RABBITMQ_API";

/// The repository's top folder (config/, docs/, migrations/, rabbitmq/ are there).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `coordinator` binary cargo built beside the running test (a test of the
/// coordinator crate: cargo builds its binary before its integration tests).
pub fn coordinator_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/{profile}/deps/{test}-{hash} → target/{profile}/coordinator
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("coordinator"))
        .expect("the test runs from target/{profile}/deps");
    assert!(
        bin.is_file(),
        "{} is missing: run the test with `cargo test -p coordinator`",
        bin.display()
    );
    bin
}

/// Registers an agent and declares its queues, as `coordinator agent add` does.
pub async fn add_agent(settings: &Settings, pool: &sqlx::PgPool, agent_id: &str, agent_type: &str) {
    coordinator::service::ops::Ops::new(settings, pool, &coordinator::clock::SystemClock)
        .add_agent(agent_id, agent_type, "test")
        .await
        .unwrap_or_else(|e| panic!("agent add {agent_id}: {e:#}"));
}

pub fn pg_admin_url() -> String {
    std::env::var("COORDINATOR_TEST_PG_URL").unwrap_or_else(|_| PG_ADMIN_DEFAULT.into())
}

/// A PostgreSQL URL with another database.
pub fn url_with_database(admin: &str, database: &str) -> String {
    let (base, query) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

pub fn amqp_base() -> String {
    std::env::var("COORDINATOR_TEST_AMQP_URL")
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|_| AMQP_DEFAULT.into())
}
/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestEnv {
    pub db_name: String,
    pub vhost: String,
    pub db_url: String,
    pub amqp_url: String,
    pub pool: PgPool,
    /// Where the database was made (and is dropped).
    admin_url: String,
    broker: BrokerCtl,
    /// Broker users made by [`TestEnv::agent_user`], deleted on drop.
    users: std::sync::Mutex<Vec<String>>,
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The user of the broker URL, who gets every permission on a test vhost.
fn amqp_user() -> String {
    let base = amqp_base();
    let rest = base.split_once("://").map_or(base.as_str(), |(_, r)| r);
    rest.split_once('@')
        .and_then(|(creds, _)| creds.split(':').next())
        .unwrap_or("guest")
        .to_string()
}

/// Which RabbitMQ a test's vhost lives on: the shared one (through `rabbitmqctl` or,
/// with `COORDINATOR_TEST_RABBITMQ_API`, its management API), or a node of the test's
/// own ([`isolated::Rabbit`]).
#[derive(Debug, Clone)]
enum BrokerCtl {
    Shared,
    Node(String),
}

fn create_vhost(ctl: &BrokerCtl, vhost: &str) {
    if let BrokerCtl::Node(node) = ctl {
        rabbitmqctl(&["-n", node, "add_vhost", vhost]);
        rabbitmqctl(&[
            "-n",
            node,
            "set_permissions",
            "-p",
            vhost,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        return;
    }
    let user = amqp_user();
    match std::env::var(RABBITMQ_API_VAR) {
        Ok(api) => {
            management(
                &api,
                "PUT",
                &format!("/api/vhosts/{}", percent_encode(vhost)),
                "",
            );
            management(
                &api,
                "PUT",
                &format!(
                    "/api/permissions/{}/{}",
                    percent_encode(vhost),
                    percent_encode(&user)
                ),
                r#"{"configure":".*","write":".*","read":".*"}"#,
            );
        }
        Err(_) => {
            rabbitmqctl(&["add_vhost", vhost]);
            rabbitmqctl(&["set_permissions", "-p", vhost, &user, ".*", ".*", ".*"]);
        }
    }
}

fn delete_vhost(ctl: &BrokerCtl, vhost: &str) {
    if let BrokerCtl::Node(node) = ctl {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", node, "delete_vhost", vhost])
            .output();
        return;
    }
    match std::env::var(RABBITMQ_API_VAR) {
        Ok(api) => {
            management(
                &api,
                "DELETE",
                &format!("/api/vhosts/{}", percent_encode(vhost)),
                "",
            );
        }
        Err(_) => {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_vhost", vhost])
                .output();
        }
    }
}

/// One call to RabbitMQ's management API (basic auth from the URL); the answer's body.
/// Fails the test on anything but a 2xx answer. HTTP/1.0, so the body is never chunked.
fn management(api: &str, method: &str, path: &str, body: &str) -> String {
    use base64::Engine;
    use std::io::{Read, Write};
    let rest = api.trim_end_matches('/').trim_start_matches("http://");
    let (creds, host) = rest.split_once('@').unwrap_or(("guest:guest", rest));
    let auth = base64::engine::general_purpose::STANDARD.encode(creds);
    let mut s = std::net::TcpStream::connect(host)
        .unwrap_or_else(|e| panic!("{RABBITMQ_API_VAR}: cannot reach {host}: {e}"));
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    assert!(
        status.starts_with('2'),
        "{method} {path} on the management API: {}",
        answer.lines().next().unwrap_or("no answer")
    );
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The broker's own view of a test's vhost: through the management API when
/// `COORDINATOR_TEST_RABBITMQ_API` is set, else `rabbitmqctl` on this machine.
pub mod clock;
pub mod isolated;
pub mod tls;

pub use clock::ManualClock;

pub mod broker {
    use super::*;

    /// One queue: its name, its type (`classic`, `quorum`) and how many messages it
    /// holds, ready or unacknowledged.
    #[derive(Debug, Clone)]
    pub struct QueueInfo {
        pub name: String,
        pub kind: String,
        pub messages: i64,
    }

    pub fn queues(vhost: &str) -> Vec<QueueInfo> {
        match std::env::var(RABBITMQ_API_VAR) {
            Ok(api) => {
                let body = management(
                    &api,
                    "GET",
                    &format!("/api/queues/{}", percent_encode(vhost)),
                    "",
                );
                let list: Vec<serde_json::Value> =
                    serde_json::from_str(&body).expect("queues as JSON");
                list.iter()
                    .map(|q| QueueInfo {
                        name: q["name"].as_str().unwrap_or("").to_string(),
                        kind: q["type"].as_str().unwrap_or("").to_string(),
                        messages: q["messages"].as_i64().unwrap_or(0),
                    })
                    .collect()
            }
            Err(_) => {
                let out = Command::new("rabbitmqctl")
                    .args(["list_queues", "-q", "--no-table-headers", "-p", vhost])
                    .args(["name", "type", "messages"])
                    .output()
                    .expect("rabbitmqctl runs");
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        (f.len() == 3).then(|| QueueInfo {
                            name: f[0].to_string(),
                            kind: f[1].to_string(),
                            messages: f[2].parse().unwrap_or(0),
                        })
                    })
                    .collect()
            }
        }
    }

    /// Loads RabbitMQ definitions (exchanges, queues, bindings) into the broker.
    pub fn import_definitions(definitions: &serde_json::Value) {
        match std::env::var(RABBITMQ_API_VAR) {
            Ok(api) => {
                management(&api, "POST", "/api/definitions", &definitions.to_string());
            }
            Err(_) => {
                let path = std::env::temp_dir().join(format!(
                    "definitions-{}.json",
                    uuid::Uuid::new_v4().simple()
                ));
                std::fs::write(&path, definitions.to_string()).expect("write");
                let out = Command::new("rabbitmqctl")
                    .arg("import_definitions")
                    .arg(&path)
                    .output()
                    .expect("rabbitmqctl runs");
                let _ = std::fs::remove_file(&path);
                assert!(
                    out.status.success(),
                    "import_definitions: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// Deletes a queue of the vhost, as an operator following a procedure would.
    pub fn delete_queue(vhost: &str, queue: &str) {
        match std::env::var(RABBITMQ_API_VAR) {
            Ok(api) => {
                management(
                    &api,
                    "DELETE",
                    &format!(
                        "/api/queues/{}/{}",
                        percent_encode(vhost),
                        percent_encode(queue)
                    ),
                    "",
                );
            }
            Err(_) => rabbitmqctl(&["delete_queue", "-p", vhost, queue]),
        }
    }

    /// Closes every client connection to the vhost, as a broker going away would.
    pub fn close_connections(vhost: &str) {
        match std::env::var(RABBITMQ_API_VAR) {
            Ok(api) => {
                // The API lists a connection once its statistics are in (every few
                // seconds): poll until the vhost's connections appear.
                let deadline = Instant::now() + WAIT;
                let names: Vec<String> = loop {
                    let body = management(
                        &api,
                        "GET",
                        &format!("/api/vhosts/{}/connections", percent_encode(vhost)),
                        "",
                    );
                    let list: Vec<serde_json::Value> =
                        serde_json::from_str(&body).expect("connections as JSON");
                    let names: Vec<String> = list
                        .iter()
                        .filter_map(|c| c["name"].as_str().map(str::to_string))
                        .collect();
                    if !names.is_empty() {
                        break names;
                    }
                    assert!(Instant::now() < deadline, "no connection to {vhost} listed");
                    std::thread::sleep(Duration::from_millis(250));
                };
                for name in names {
                    management(
                        &api,
                        "DELETE",
                        &format!("/api/connections/{}", percent_encode(&name)),
                        "",
                    );
                }
            }
            Err(_) => rabbitmqctl(&[
                "close_all_connections",
                "-p",
                vhost,
                "test: broker went away",
            ]),
        }
    }
}

/// Creates a database and applies the migrations to it, or those up to and including
/// `up_to` only. (Cloning a migrated template saved next to nothing, and the template
/// outlived the test run.)
async fn create_database(admin_url: &str, name: &str, up_to: Option<i64>) {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin_url}: {e}"));
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let _ = admin.close().await;
    let mut conn = PgConnection::connect(&url_with_database(admin_url, name))
        .await
        .expect("connect to the test database");
    match up_to {
        None => coordinator::db::MIGRATOR.run(&mut conn).await,
        Some(version) => {
            // The migrations as files, the earlier ones only: what a database that was
            // last migrated by an older coordinator holds.
            let dir = std::env::temp_dir().join(format!("{name}-migrations"));
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            for entry in std::fs::read_dir(repo_root().join("migrations")).expect("migrations") {
                let path = entry.expect("a migration").path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let v: i64 = name
                    .split('_')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(i64::MAX);
                if v <= version {
                    std::fs::copy(&path, dir.join(name)).expect("copy a migration");
                }
            }
            let earlier = sqlx::migrate::Migrator::new(dir.as_path())
                .await
                .expect("the earlier migrations");
            let applied = earlier.run(&mut conn).await;
            let _ = std::fs::remove_dir_all(&dir);
            applied
        }
    }
    .expect("migrate the test database");
    let _ = conn.close().await;
}

impl TestEnv {
    /// A database and a vhost of its own on the shared PostgreSQL and RabbitMQ.
    pub async fn new() -> TestEnv {
        TestEnv::on(pg_admin_url(), amqp_base(), BrokerCtl::Shared).await
    }

    /// A database and a vhost of its own on a PostgreSQL cluster and a RabbitMQ node of
    /// the test's own, which it may stop and start without disturbing anyone.
    pub async fn isolated(pg: &isolated::Postgres, rabbit: &isolated::Rabbit) -> TestEnv {
        TestEnv::on(
            pg.admin_url(),
            rabbit.amqp_base(),
            BrokerCtl::Node(rabbit.node().to_string()),
        )
        .await
    }

    /// A database of its own on the shared PostgreSQL and a vhost of its own on a
    /// RabbitMQ node (or cluster) of the test's own; `amqp_url` points at that node.
    pub async fn on_broker(rabbit: &isolated::Rabbit) -> TestEnv {
        TestEnv::on(
            pg_admin_url(),
            rabbit.amqp_base(),
            BrokerCtl::Node(rabbit.node().to_string()),
        )
        .await
    }

    /// A database of its own migrated only up to and including `version` (the number a
    /// migration's file name starts with), as an older coordinator left it; the test
    /// runs `coordinator::db::MIGRATOR` itself to upgrade it.
    pub async fn migrated_up_to(version: i64) -> TestEnv {
        TestEnv::on_migrated(
            pg_admin_url(),
            amqp_base(),
            BrokerCtl::Shared,
            Some(version),
        )
        .await
    }

    async fn on(admin_url: String, amqp_base: String, broker: BrokerCtl) -> TestEnv {
        TestEnv::on_migrated(admin_url, amqp_base, broker, None).await
    }

    async fn on_migrated(
        admin_url: String,
        amqp_base: String,
        broker: BrokerCtl,
        up_to: Option<i64>,
    ) -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("coord_test_{id}");
        let vhost = format!("coord_test_{id}");
        create_database(&admin_url, &db_name, up_to).await;
        let (ctl, vh) = (broker.clone(), vhost.clone());
        tokio::task::spawn_blocking(move || create_vhost(&ctl, &vh))
            .await
            .expect("vhost created");
        let db_url = url_with_database(&admin_url, &db_name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await
            .expect("connect to test database");
        TestEnv {
            amqp_url: format!("{amqp_base}/{vhost}"),
            db_name,
            vhost,
            db_url,
            pool,
            admin_url,
            broker,
            users: Default::default(),
        }
    }

    /// `config/default.toml` + `config/test.toml`, pointed at this test's database and vhost.
    pub fn settings(&self) -> Settings {
        self.settings_from(&repo_root().join("config"))
    }

    /// The test profile read from the configuration folder `dir` (its files and its
    /// `workflows/` over the compiled-in ones), pointed at this test's database and vhost.
    pub fn settings_from(&self, dir: &std::path::Path) -> Settings {
        let mut s = Settings::load_from(dir, Some("test")).expect("test settings load");
        s.database.url = self.db_url.clone().into();
        s.amqp.url = self.amqp_url.clone().into();
        s.http.addr = "127.0.0.1:0".into();
        s
    }

    pub async fn start(&self) -> Running {
        self.start_with(self.settings()).await
    }

    pub async fn start_with(&self, settings: Settings) -> Running {
        init_logs();
        let app = App::build(settings).await.expect("app builds");
        run_app(app).await
    }
}

/// Runs an app built by the test (e.g. exporting its spans somewhere of the test's)
/// and waits until it is ready.
pub async fn run_app(app: App) -> Running {
    init_logs();
    let http = app.http_addr();
    let shared = app.shared();
    let token = CancellationToken::new();
    let handle = tokio::spawn(app.run(token.clone()));
    let running = Running {
        token,
        handle,
        http,
        shared,
    };
    running.wait_ready().await;
    running
}

impl TestEnv {
    /// Registers an agent with the CLI code path and connects as it.
    pub async fn agent(&self, agent_id: &str, agent_type: &str) -> AgentClient {
        self.agent_with(&self.settings(), agent_id, agent_type)
            .await
    }

    /// Registers an agent with given settings (e.g. another queue type) and connects.
    pub async fn agent_with(
        &self,
        settings: &Settings,
        agent_id: &str,
        agent_type: &str,
    ) -> AgentClient {
        add_agent(settings, &self.pool, agent_id, agent_type).await;
        self.connect_as(agent_id, agent_type).await
    }

    /// Connects as an agent without registering it.
    pub async fn connect_as(&self, agent_id: &str, agent_type: &str) -> AgentClient {
        AgentClient::connect(&self.amqp_url, agent_id, agent_type)
            .await
            .expect("agent connects")
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn workflow_state(&self, id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT state FROM workflows WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .expect("query state")
    }

    /// Waits until the workflow is in `state`.
    pub async fn wait_state(&self, id: &str, state: &str) {
        eventually(&format!("workflow {id} to reach {state}"), || async {
            (self.workflow_state(id).await.as_deref() == Some(state)).then_some(())
        })
        .await
    }

    /// Waits until `sql` (a count) returns `n`.
    /// Starts a feature workflow with a new id from `product` (a product director) and
    /// waits until the coordinator has it in `requirements_handoff`: its id.
    pub async fn start_feature(&self, product: &AgentClient) -> String {
        let wf = format!("wf-{}", uuid::Uuid::new_v4());
        product
            .send("requirements_ready", &wf, serde_json::json!({}))
            .await
            .expect("publish");
        self.wait_state(&wf, "requirements_handoff").await;
        wf
    }

    /// The id of the dead letter kept for `message_id`, once there is one.
    pub async fn dead_letter_id(&self, message_id: &str) -> i64 {
        self.wait_count(
            &format!("SELECT count(*) FROM dead_letters WHERE message_id = '{message_id}'"),
            1,
        )
        .await;
        sqlx::query_scalar("SELECT id FROM dead_letters WHERE message_id = $1")
            .bind(message_id)
            .fetch_one(&self.pool)
            .await
            .expect("dead letter")
    }

    pub async fn wait_count(&self, sql: &str, n: i64) {
        eventually(&format!("{sql} = {n}"), || async {
            (self.scalar_i64(sql).await == n).then_some(())
        })
        .await
    }

    /// Waits until every outbox row committed so far is confirmed by the broker (or
    /// given up): what the coordinator decided to send is on its queues.
    pub async fn wait_outbox_flushed(&self) {
        self.wait_outbox_flushed_where("true").await
    }

    /// Like [`TestEnv::wait_outbox_flushed`], for the rows matching `predicate` (SQL
    /// on the outbox's columns): those that can reach one queue. Rows no queue takes
    /// (to agents a test never registered) stay pending, so a test waits for its own.
    pub async fn wait_outbox_flushed_where(&self, predicate: &str) {
        self.wait_count(
            &format!(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND undeliverable_at IS NULL
                   AND ({predicate})"
            ),
            0,
        )
        .await
    }

    /// Asserts that `queue` holds nothing more, once every coordinator in `apps` has
    /// fired each deadline due by `until` and the outbox is flushed: whatever the
    /// coordinator would have sent by then is on the queue, so no wait is guessed.
    pub async fn assert_nothing_more(
        &self,
        apps: &[&Running],
        until: chrono::DateTime<chrono::Utc>,
        reader: &mut AgentClient,
        queue: &str,
    ) {
        for app in apps {
            app.wait_timer_caught_up(until).await;
        }
        self.wait_outbox_flushed_where(&format!(
            "routing_key LIKE 'escalation.%' OR exchange = '{}'",
            exchanges::FANOUT
        ))
        .await;
        let more = reader.drain(queue).await.expect("drain the queue");
        assert!(
            more.is_empty(),
            "unexpected on {queue}: {:?}",
            more.iter()
                .map(|(key, e)| format!("{} ({key}) {}", e.header.message_type, e.payload.data))
                .collect::<Vec<_>>()
        );
    }
}

impl TestEnv {
    /// Publishes to `task.{role}` a message that expires at once, so that the broker
    /// dead-letters it from every tasks queue of that role nobody consumes.
    pub async fn publish_expiring_task(&self, role: &str, message_id: &str) {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        let conn = agent::connect(&self.amqp_url, "test")
            .await
            .expect("connect");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        channel
            .basic_publish(
                exchanges::DIRECT,
                &format!("task.{role}"),
                BasicPublishOptions::default(),
                br#"{"hello":"qa"}"#,
                lapin::BasicProperties::default()
                    .with_message_id(message_id.into())
                    .with_app_id("coordinator".into())
                    .with_expiration("1".into()),
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
        let _ = conn.close(200, "done").await;
    }

    /// Waits until `queue` holds nothing, ready or unacknowledged.
    pub async fn wait_queue_empty(&self, queue: &str) {
        let vhost = self.vhost.clone();
        eventually(&format!("{queue} to be empty and acked"), || {
            let vhost = vhost.clone();
            async move {
                tokio::task::spawn_blocking(move || broker::queues(&vhost))
                    .await
                    .ok()?
                    .iter()
                    .any(|q| q.name == queue && q.messages == 0)
                    .then_some(())
            }
        })
        .await;
    }
}

impl TestEnv {
    /// Deletes this broker user when the test ends (users are global to the broker,
    /// not part of the test's vhost).
    pub fn delete_user_on_drop(&self, user: &str) {
        self.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(user.to_string());
    }

    /// The AMQP URL of this test's vhost as another broker user.
    pub fn amqp_url_as(&self, user: &str, password: &str) -> String {
        with_login(&self.amqp_url, user, password)
    }

    /// Registers an agent with a broker user of its own, as `coordinator agent add
    /// --credentials` does (the user is deleted when the test ends), and connects as it,
    /// publishing with `user_id` set to its id.
    pub async fn provisioned(
        &self,
        settings: &Settings,
        agent_id: &str,
        agent_type: &str,
    ) -> AgentClient {
        use coordinator::cli::{self, AgentCommand, Command};
        self.delete_user_on_drop(agent_id);
        let out = cli::run(
            settings,
            Command::Agent {
                command: AgentCommand::Add {
                    agent_id: agent_id.into(),
                    agent_type: agent_type.into(),
                    credentials: true,
                    public_key: None,
                    key_id: None,
                    by: "test".into(),
                },
            },
        )
        .await
        .unwrap_or_else(|e| panic!("agent add --credentials {agent_id}: {e:#}"));
        let password = out.lines().last().unwrap_or_default().trim();
        AgentClient::connect(&self.amqp_url_as(agent_id, password), agent_id, agent_type)
            .await
            .unwrap_or_else(|e| panic!("{agent_id} connects as its own broker user: {e}"))
            .authenticated()
    }
}

/// An agent id no other test uses (broker users are global to the broker, not per
/// vhost).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for user in self
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_user", &user])
                .output();
        }
        let pool = self.pool.clone();
        let db = self.db_name.clone();
        let vhost = self.vhost.clone();
        let (admin, broker) = (self.admin_url.clone(), self.broker.clone());
        // Drop may run inside the runtime; do the blocking clean-up on a plain thread.
        let _ = std::thread::spawn(move || {
            drop(pool);
            let _ = Command::new("psql")
                .arg(admin)
                .arg("-qc")
                .arg(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .output();
            delete_vhost(&broker, &vhost);
        })
        .join();
    }
}

pub struct Running {
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: SocketAddr,
    pub shared: Arc<Shared>,
}

impl Running {
    pub async fn wait_ready(&self) {
        eventually("the coordinator to be ready", || async {
            (http_get(self.http, "/readyz").await.map(|(s, _)| s) == Some(200)).then_some(())
        })
        .await
    }

    /// Waits until this coordinator's timer has fired every deadline it holds that was
    /// due by `t` (waking it, in case it sleeps until its next reload).
    pub async fn wait_timer_caught_up(&self, t: chrono::DateTime<chrono::Utc>) {
        let want = t.timestamp_micros() as f64 / 1e6;
        eventually(&format!("the timer to catch up to {t}"), || async {
            self.shared.signals.wake_timer.notify_one();
            (self.shared.metrics.timer_caught_up.get() >= want).then_some(())
        })
        .await
    }

    /// Graceful shutdown, as on SIGTERM; fails the test if it errs or hangs.
    pub async fn stop(self) {
        self.token.cancel();
        let res = tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("coordinator stops within the deadline")
            .expect("coordinator task did not panic");
        res.expect("coordinator run returned Ok");
    }
}

/// Applies one message straight through the batch pipeline (no broker), for tests that
/// only need database state.
pub async fn process_directly(
    shared: &Shared,
    agent_id: &str,
    agent_type: &str,
    message_type: &str,
    wf: &str,
) -> coordinator::engine::Outcome {
    let data = serde_json::json!({"epic_id": format!("EPIC-{wf}"), "title": "Example"});
    let e = Envelope::from_agent(
        agent_id,
        agent_type,
        message_type,
        wf,
        data,
        chrono::Utc::now(),
    );
    let body = serde_json::to_vec(&e).expect("json");
    let meta = e.meta(&e.agent_routing_key());
    let inbound = coordinator::engine::Inbound {
        body: &body,
        meta: &meta,
    };
    let out =
        coordinator::service::pipeline::apply_shared(shared, 0, &[inbound], chrono::Utc::now())
            .await
            .expect("processed");
    out.results[0].outcome.clone()
}

/// A minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    agent::probe(&addr.to_string(), path).await
}

/// A sample's value from a coordinator's /metrics (`line_start` names the series and
/// ends with a space); 0 when absent.
pub async fn metric(http: SocketAddr, line_start: &str) -> f64 {
    let body = http_get(http, "/metrics")
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `f` until it returns `Some`, failing the test after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The next message on an agent's queue, failing the test if none arrives in time.
pub async fn expect_next(agent: &mut AgentClient, queue: Queue) -> Envelope {
    agent
        .next(queue, WAIT)
        .await
        .expect("agent reads its queue")
        .unwrap_or_else(|| {
            panic!(
                "{} got nothing on {queue:?} within {WAIT:?}",
                agent.agent_id
            )
        })
}

/// Asserts an agent's queue holds nothing more. Call it after waiting for the event
/// that shows the coordinator has handled everything that could send more (a state, a
/// count of duplicates, the dead letters); it then waits for the outbox to be flushed
/// and drains the queue, so nothing passes merely because a message was late.
pub async fn expect_no_more(env: &TestEnv, agent: &mut AgentClient, queue: Queue) {
    let routed_here = match queue {
        Queue::Tasks => format!("routing_key = 'task.{}'", agent.agent_type),
        Queue::Commands => format!(
            "routing_key = 'command.{}' OR exchange = '{}'",
            agent.agent_id,
            exchanges::FANOUT
        ),
        Queue::Events => "true".to_string(),
    };
    env.wait_outbox_flushed_where(&routed_here).await;
    let name = queue.name(&agent.agent_id);
    let more = agent.drain(&name).await.expect("drain the queue");
    assert!(
        more.is_empty(),
        "{} got unexpected messages on {name}: {:?}",
        agent.agent_id,
        more.iter()
            .map(|(_, e)| e.header.message_type.as_str())
            .collect::<Vec<_>>()
    );
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The inbox partition the broker routes `correlation_id` to, found by publishing a
/// probe to the inbox exchange and reading it back. Call it before any coordinator
/// consumes; the topology for `settings` must be declared (e.g. by registering an
/// agent with them).
pub async fn partition_of(env: &TestEnv, settings: &Settings, correlation_id: &str) -> u32 {
    use lapin::options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    };
    let conn = agent::connect(&env.amqp_url, "probe")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let props = lapin::BasicProperties::default().with_correlation_id(correlation_id.into());
    ch.basic_publish(
        &settings.inbox.exchange,
        "probe.probe",
        BasicPublishOptions::default(),
        b"probe",
        props,
    )
    .await
    .expect("publish")
    .await
    .expect("confirmed");
    let found = eventually("the probe to reach a partition", || async {
        for p in 0..settings.inbox.partitions {
            if let Some(m) = ch
                .basic_get(&settings.inbox.queue(p), BasicGetOptions::default())
                .await
                .expect("get")
            {
                m.delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                return Some(p);
            }
        }
        None
    })
    .await;
    let _ = conn.close(200, "probed").await;
    found
}

/// `coordinator serve` as a child process of its own, on this test's database and
/// vhost, with `COORDINATOR_ENV=test` and the given environment on top.
pub struct Serve {
    pub child: std::process::Child,
    pub http: SocketAddr,
    /// What it wrote to stderr, read as it comes (a full pipe would block its logging).
    stderr: Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Serve {
    pub fn spawn(env: &TestEnv, extra: &[(&str, String)]) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cmd = Command::new(coordinator_bin());
        cmd.arg("serve")
            .current_dir(repo_root())
            .env("COORDINATOR_ENV", "test")
            .env("COORDINATOR__DATABASE__URL", &env.db_url)
            .env("COORDINATOR__AMQP__URL", &env.amqp_url)
            .env("COORDINATOR__HTTP__ADDR", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("serve starts");
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let reader = child.stderr.take().map(|pipe| {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            })
        });
        Serve {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], port)),
            stderr,
            reader,
        }
    }

    /// Waits until `/readyz` is 200; fails with what it logged if it exits first or
    /// is not ready within [`WAIT`].
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if http_get(self.http, "/readyz").await.map(|r| r.0) == Some(200) {
                return;
            }
            let exited = self
                .has_exited()
                .then(|| "serve exited before it was ready".to_string());
            let late =
                (Instant::now() > deadline).then(|| format!("serve was not ready within {WAIT:?}"));
            if let Some(why) = exited.or(late) {
                let log = self.log();
                let lines: Vec<&str> = log.lines().collect();
                panic!(
                    "{why}; its last lines:\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it has exited, without waiting (`try_wait` needs `&mut`): a process that
    /// has exited and not been reaped is a zombie (`Z` in /proc/{pid}/stat).
    fn has_exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .rsplit(')')
                    .next()?
                    .split_whitespace()
                    .next()?
                    .to_string();
                Some(state == "Z")
            })
            .unwrap_or(true)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has written to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether it has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code and what it wrote to stderr.
    pub async fn wait_exit(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "serve did not exit");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        // The pipe closes when the process exits: the reader ends.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        (status.code(), stderr)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
