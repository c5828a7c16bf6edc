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

use agent::connect;
use coordinator::settings::QueueType;

const QUEUE: &str = "bench.ceiling";

/// The broker alone: its throughput ceiling, and the latency of one hop (publish with
/// confirm → delivery to a consumer) at a moderate rate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ceiling {
    pub msg_per_s: f64,
    pub hop: super::stats::Percentiles,
}
/// Publishes awaiting their confirm at once.
const WINDOW: usize = 512;

/// The ceiling and the hop latency at `hop_rate` messages per second.
pub async fn measure_all(
    url: &str,
    queue_type: QueueType,
    body_len: usize,
    duration: Duration,
    hop_rate: f64,
) -> Result<Ceiling, lapin::Error> {
    Ok(Ceiling {
        msg_per_s: measure(url, queue_type, body_len, duration).await?,
        hop: hop_latency(
            url,
            queue_type,
            body_len,
            hop_rate,
            duration.min(Duration::from_secs(10)),
        )
        .await?,
    })
}

/// The latency of publish (persistent, confirmed) → delivery through one queue, at a
/// steady `rate` well below the ceiling: what one broker hop costs a message.
pub async fn hop_latency(
    url: &str,
    queue_type: QueueType,
    body_len: usize,
    rate: f64,
    duration: Duration,
) -> Result<super::stats::Percentiles, lapin::Error> {
    use super::stats::{now_ns, Samples};
    let conn = connect(url, "bench-hop").await?;
    let pub_ch = conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = format!("{QUEUE}.hop");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.as_str().into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    pub_ch.queue_declare(&queue, durable, args).await?;
    let con_ch = conn.create_channel().await?;
    con_ch.basic_qos(100, BasicQosOptions::default()).await?;
    let mut consumer = con_ch
        .basic_consume(
            &queue,
            "bench-hop",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let samples = Arc::new(Samples::default());
    let recorded = samples.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            if let Some(sent) = d.data.get(..8).and_then(|b| b.try_into().ok()) {
                recorded.record_since(u64::from_le_bytes(sent));
            }
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
    });
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let mut pending = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    let end = Instant::now() + duration;
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {
                let mut body = vec![b'x'; body_len.max(8)];
                body[..8].copy_from_slice(&now_ns().to_le_bytes());
                pending.push(pub_ch.basic_publish("", &queue, BasicPublishOptions::default(), &body, props.clone()).await?);
            }
            Some(r) = pending.next() => { r?; }
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    let _ = pub_ch
        .queue_delete(&queue, lapin::options::QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "hop measured").await;
    Ok(samples.take())
}

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
