//! TLS in front of the local broker and database, set up by the test itself: a CA and
//! a server certificate for 127.0.0.1 made with `openssl`, and `socat` terminating
//! TLS on loopback ports and forwarding to RabbitMQ (5672) and PostgreSQL (5432).
//! PostgreSQL's clients ask for TLS inside its own protocol (an `SSLRequest`, answered
//! `S`, then the handshake), so a task here answers that and hands the connection to
//! its `socat`; a client that starts without asking is turned away, so a test passes
//! only if TLS was used. Everything is stopped when the `TlsFront` is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// PostgreSQL's `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

pub struct TlsFront {
    dir: PathBuf,
    /// The CA that signed the server certificate (PEM).
    pub ca_file: PathBuf,
    /// amqps:// here reaches the local broker.
    pub amqps_port: u16,
    /// PostgreSQL with `sslmode` here reaches the local database.
    pub pg_port: u16,
    /// How many connections asked for TLS the PostgreSQL way, and how many did not.
    pub pg_tls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub pg_plain: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    socats: Vec<Child>,
    accept: tokio::task::JoinHandle<()>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian's openssl package) must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn socat(pem: &Path, port: u16, to: &str) -> Child {
    let child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={}",
            pem.display()
        ))
        .arg(format!("TCP:{to}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("socat (Debian's socat package) must be installed");
    // Listening once a connection is taken.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "socat did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

impl TlsFront {
    pub async fn start() -> TlsFront {
        let dir = std::env::temp_dir().join(format!("coordinator-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=coordinator test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        std::fs::write(
            dir.join("san.cnf"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n",
        )
        .expect("san.cnf");
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.cnf",
                "-out",
                "server.crt",
            ],
        );
        let pem = dir.join("server.pem");
        let mut both = std::fs::read(dir.join("server.crt")).expect("server.crt");
        both.extend(std::fs::read(dir.join("server.key")).expect("server.key"));
        std::fs::write(&pem, both).expect("server.pem");

        let amqps_port = free_port();
        let pg_tls_port = free_port();
        let socats = vec![
            socat(&pem, amqps_port, "127.0.0.1:5672").await,
            socat(&pem, pg_tls_port, "127.0.0.1:5432").await,
        ];
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let pg_port = listener.local_addr().expect("addr").port();
        let pg_tls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pg_plain = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tls, plain) = (pg_tls.clone(), pg_plain.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (tls, plain) = (tls.clone(), plain.clone());
                tokio::spawn(async move {
                    let mut first = [0u8; 8];
                    if client.read_exact(&mut first).await.is_err() {
                        return;
                    }
                    if first != SSL_REQUEST {
                        plain.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    tls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", pg_tls_port)).await
                    else {
                        return;
                    };
                    if client.write_all(b"S").await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        TlsFront {
            ca_file: dir.join("ca.pem"),
            dir,
            amqps_port,
            pg_port,
            pg_tls,
            pg_plain,
            socats,
            accept,
        }
    }

    /// An amqps:// URL for `vhost` as guest, through the TLS front.
    pub fn amqps_url(&self, vhost: &str) -> String {
        format!(
            "amqps://guest:guest@127.0.0.1:{}/{}",
            self.amqps_port,
            coordinator::settings::percent_encode(vhost)
        )
    }

    /// A PostgreSQL URL for `database` that insists on TLS and checks the server's
    /// certificate and name against the test's CA.
    pub fn pg_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=verify-full&sslrootcert={}",
            self.pg_port,
            self.ca_file.display()
        )
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.accept.abort();
        for s in &mut self.socats {
            let _ = s.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
