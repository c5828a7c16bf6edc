//! A broker that stops confirming: the coordinator's wait for a confirm is bounded by
//! `amqp.confirm_timeout`; then it gives the channel up, reconnects, and the message
//! goes out again (same message id) after its lease. The broker is the real one,
//! reached through a small proxy that can swallow its publisher confirms (AMQP
//! `basic.ack` frames) while everything else passes.

use test_support as common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{metric, TestEnv};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// AMQP 0-9-1: a method frame is type 1; `basic.ack` is class 60, method 80.
fn is_basic_ack(frame: &[u8]) -> bool {
    frame.len() >= 11 && frame[0] == 1 && frame[7..9] == [0, 60] && frame[9..11] == [0, 80]
}

/// Forwards broker → client frame by frame, dropping `basic.ack` while `swallow` is set.
async fn broker_to_client(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    swallow: Arc<AtomicBool>,
    swallowed: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Whole frames: 7-byte header, payload, the 0xCE end byte.
        while buf.len() >= 7 {
            let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
            let total = 7 + size + 1;
            if buf.len() < total {
                break;
            }
            let frame: Vec<u8> = buf.drain(..total).collect();
            if swallow.load(Ordering::SeqCst) && is_basic_ack(&frame) {
                swallowed.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}

struct Proxy {
    port: u16,
    credentials: String,
    swallow: Arc<AtomicBool>,
    swallowed: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    /// A proxy to the broker of the tests (`COORDINATOR_TEST_AMQP_URL`).
    async fn start() -> Proxy {
        let base = common::amqp_base();
        let upstream = base
            .rsplit_once('@')
            .map_or(base.as_str(), |(_, host)| host)
            .trim_start_matches("amqp://")
            .to_string();
        let credentials = base
            .trim_start_matches("amqp://")
            .split_once('@')
            .map_or("guest:guest".to_string(), |(c, _)| c.to_string());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let swallow = Arc::new(AtomicBool::new(false));
        let swallowed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, n) = (swallow.clone(), swallowed.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let Ok(broker) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (broker_read, broker_write) = broker.into_split();
                tokio::spawn(async move {
                    let (mut r, mut w) = (client_read, broker_write);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
                tokio::spawn(broker_to_client(
                    broker_read,
                    client_write,
                    s.clone(),
                    n.clone(),
                ));
            }
        });
        Proxy {
            port,
            credentials,
            swallow,
            swallowed,
        }
    }

    fn url(&self, vhost: &str) -> String {
        format!(
            "amqp://{}@127.0.0.1:{}/{vhost}",
            self.credentials, self.port
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_that_never_comes_is_given_up_after_the_timeout_and_the_message_sent_again() {
    let env = TestEnv::new().await;
    let proxy = Proxy::start().await;
    let mut settings = env.settings();
    settings.amqp.url = proxy.url(&env.vhost).into();
    settings.amqp.confirm_timeout = Duration::from_secs(1);
    settings.outbox.lease = Duration::from_secs(1);
    let app = env.start_with(settings).await;
    app.wait_ready().await;
    let product = env.agent("product-1", "product-director").await;
    let mut eng = env.agent("eng-1", "engineering-director").await;
    let connects = metric(app.http, "coordinator_broker_connects_total ").await;

    proxy.swallow.store(true, Ordering::SeqCst);
    product
        .send("requirements_ready", "wf-unconfirmed", json!({}))
        .await
        .expect("publish");
    // The broker delivered the task; its confirm never reached the coordinator.
    let first = common::expect_next(&mut eng, agent::Queue::Tasks).await;
    assert_eq!(first.header.message_type, "requirements_handoff");
    common::eventually(
        "the coordinator to give the channel up and reconnect",
        || async {
            (metric(app.http, "coordinator_broker_connects_total ").await > connects).then_some(())
        },
    )
    .await;
    assert!(proxy.swallowed.load(Ordering::SeqCst) >= 1);

    // Confirms flow again: the unconfirmed task goes out once more, same id, and is
    // marked sent.
    proxy.swallow.store(false, Ordering::SeqCst);
    let again = common::expect_next(&mut eng, agent::Queue::Tasks).await;
    assert_eq!(again.header.message_id, first.header.message_id);
    env.wait_count("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0)
        .await;
    app.stop().await;
}
