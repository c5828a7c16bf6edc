//! The machine's own ceiling, without the coordinator: persistent messages of the size
//! agents send, published with confirms into one durable queue, consumed and acked one
//! by one. Every coordinator result is also printed as a fraction of this.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use crate::amqp::connect;
use crate::settings::QueueType;

const QUEUE: &str = "bench.ceiling";
/// Publishes awaiting their confirm at once.
const WINDOW: usize = 512;

/// Messages per second through one queue of `queue_type`, measured over `duration`
/// after a short warm-up.
pub async fn measure(
    url: &str,
    queue_type: QueueType,
    body_len: usize,
    duration: Duration,
) -> Result<f64, lapin::Error> {
    let conn = connect(url, "bench-ceiling").await?;
    let pub_ch = conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.as_str().into()),
    );
    pub_ch
        .queue_declare(
            QUEUE,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let con_ch = conn.create_channel().await?;
    con_ch
        .basic_qos(WINDOW as u16, BasicQosOptions::default())
        .await?;
    let mut consumer = con_ch
        .basic_consume(
            QUEUE,
            "bench-ceiling",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = Arc::new(AtomicU64::new(0));
    let counter = consumed.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });

    let body = vec![b'x'; body_len];
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let warmup = Duration::from_secs(2);
    let start = Instant::now();
    let mut window_start = None;
    let mut pending = FuturesUnordered::new();
    let mut at_window = 0;
    while start.elapsed() < warmup + duration {
        if window_start.is_none() && start.elapsed() >= warmup {
            window_start = Some(Instant::now());
            at_window = consumed.load(Ordering::Relaxed);
        }
        while pending.len() < WINDOW {
            let confirm = pub_ch
                .basic_publish(
                    "",
                    QUEUE,
                    BasicPublishOptions::default(),
                    &body,
                    props.clone(),
                )
                .await?;
            pending.push(confirm);
        }
        if let Some(res) = pending.next().await {
            res?;
        }
    }
    let elapsed = window_start.map_or(duration, |t| t.elapsed());
    let n = consumed.load(Ordering::Relaxed) - at_window;
    reader.abort();
    let _ = pub_ch
        .queue_delete(QUEUE, lapin::options::QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "ceiling measured").await;
    Ok(n as f64 / elapsed.as_secs_f64())
}
