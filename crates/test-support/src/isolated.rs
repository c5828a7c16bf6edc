//! A PostgreSQL cluster and a RabbitMQ node of a test's own, on spare ports, in a
//! temporary folder: what the fault tests stop and start, so that no test ever stops a
//! service someone else is using. Both are stopped and their folders deleted on drop.
//!
//! They are made from the machine's own installation (Debian's packages): `initdb` and
//! `pg_ctl` from `/usr/lib/postgresql/<version>/bin`, `rabbitmq-server` and
//! `rabbitmqctl` from the PATH. PostgreSQL refuses to run as root: as root, its
//! commands run as the `postgres` user (`runuser`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; taken soon after by the caller).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn scratch(kind: &str) -> (String, PathBuf) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let dir = std::env::temp_dir().join(format!("coordtest-{kind}-{id}"));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    (id, dir)
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL cluster of its own: `initdb` in a temporary folder, trust
/// authentication for `postgres`, listening on 127.0.0.1 on a spare port.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    pub fn start() -> Postgres {
        let (_, dir) = scratch("pg");
        let bin = pg_bin();
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&dir));
        }
        let pg = Postgres {
            dir,
            bin,
            port: free_port(),
            as_postgres,
        };
        run(pg.command("initdb").args([
            "-D",
            &pg.data(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]));
        pg.start_again();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the cluster at once (`pg_ctl stop -m fast`), as an outage would.
    pub fn stop(&self) {
        run(self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "fast", "-w", "stop"]));
    }

    /// Starts the cluster (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        run(self.command("pg_ctl").args([
            "-D",
            &self.data(),
            "-l",
            &log,
            "-o",
            &options,
            "-w",
            "start",
        ]));
    }

    /// True while the cluster runs.
    pub fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .args(["-D", &self.data(), "status"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed PostgreSQL's programs.
fn pg_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL's programs under /usr/lib/postgresql/<version>/bin (Debian's postgresql package)")
}

/// A RabbitMQ node of its own: its own node name, AMQP and distribution ports, data
/// and logs in a temporary folder, and only the plugins it is given.
pub struct Rabbit {
    node: String,
    dir: PathBuf,
    port: u16,
    dist: u16,
}

impl Rabbit {
    /// Starts a node with these plugins (the coordinator needs
    /// `rabbitmq_consistent_hash_exchange`), waiting until it has booted.
    pub fn start(plugins: &[&str]) -> Rabbit {
        let (id, dir) = scratch("rabbit");
        let (port, dist) = (free_port(), free_port());
        let node = format!("coordtest{id}@localhost");
        std::fs::write(
            dir.join("enabled_plugins"),
            format!("[{}].\n", plugins.join(",")),
        )
        .expect("plugins file");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
        )
        .expect("config");
        // The broker runs as the rabbitmq user: it must write here.
        run(Command::new("chmod").arg("-R").arg("777").arg(&dir));
        let rabbit = Rabbit {
            node,
            dir,
            port,
            dist,
        };
        rabbit.launch();
        rabbit
    }

    /// `n` nodes of their own, clustered: the second and later join the first. Every
    /// node runs as the `rabbitmq` user of the machine's installation, so they share its
    /// Erlang cookie.
    pub fn cluster(n: usize, plugins: &[&str]) -> Vec<Rabbit> {
        let nodes: Vec<Rabbit> = (0..n).map(|_| Rabbit::start(plugins)).collect();
        if let Some((seed, others)) = nodes.split_first() {
            for node in others {
                node.ctl(&["stop_app"]);
                node.ctl(&["join_cluster", seed.node()]);
                node.start_app();
            }
        }
        nodes
    }

    /// Runs `rabbitmq-server` for this node (again, after [`Rabbit::stop_node`]) and
    /// waits until it has booted.
    fn launch(&self) {
        run(Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist.to_string())
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", self.dir.join("pid")));
        self.await_startup();
    }

    /// Stops the whole node (its Erlang VM), as a host that goes down; its data stays.
    pub fn stop_node(&self) {
        self.ctl(&["stop", &self.dir.join("pid").to_string_lossy()]);
    }

    /// Starts a node stopped by [`Rabbit::stop_node`] again; it rejoins its cluster.
    pub fn start_node(&self) {
        self.launch();
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:{port}`, without a vhost.
    pub fn amqp_base(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}", self.port)
    }

    /// `rabbitmqctl -n {node} …`
    pub fn ctl(&self, args: &[&str]) -> Output {
        run(Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args))
    }

    /// Every queue of `vhost` with its type, messages ready and unacknowledged, and
    /// consumers, as `rabbitmqctl list_queues` prints them: for a failing test to say
    /// where messages are. Never fails: says why it could not list them instead.
    pub fn describe_queues(&self, vhost: &str) -> String {
        let listed = Command::new("rabbitmqctl")
            .args([
                "-n",
                &self.node,
                "list_queues",
                "-p",
                vhost,
                "--timeout",
                "10",
            ])
            .args([
                "name",
                "type",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ])
            .output();
        match listed {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => format!(
                "(rabbitmqctl list_queues failed on {}: {})",
                self.node,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("(rabbitmqctl did not run: {e})"),
        }
    }

    /// Stops the RabbitMQ application (the node stays up), as a broker restart does.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.await_startup();
    }

    fn await_startup(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let up = Command::new("rabbitmqctl")
                .args(["-n", &self.node, "await_startup", "--timeout", "10"])
                .output()
                .is_ok_and(|o| o.status.success());
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} did not start; its log is in {}",
                self.node,
                self.dir.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
