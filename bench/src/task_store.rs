//! `taskgate-bench task-store`: the engine candidates for the shared store of detached
//! tasks (issue 14 phase 2), on the task-chunk workload, each as this machine runs it:
//!
//! - **redis**: the host's own `RedisTaskStore` (one Lua call per chunk: `XADD` into the
//!   task's stream within its byte bound, and `PUBLISH` for live readers);
//! - **rabbitmq-stream**: one shared stream queue (`x-queue-type=stream`; one per task is too
//!   many queues), a publish per chunk with a publisher confirm (the at-least-once a reply
//!   needs), a consumer at `x-stream-offset=next` as the live reader.
//!
//! Two numbers each: **appends/s** with `--tasks` tasks appending `--chunks` chunks of
//! `--chunk-bytes` each at once, every append awaited (a reply is acked only once it is
//! kept); and the **latency** from an append to a live reader of that task, over
//! `--samples` chunks appended one every `--interval-ms`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde::Serialize;
use serde_json::value::RawValue;
use taskgate_host::tasks::{
    Attachment, Entry, NewTask, Outcome, OwnerKey, RedisTaskStore, StoreLimits, TaskState,
    TaskStore,
};
use uuid::Uuid;

use crate::direct_load::connect_lapin;

#[derive(Debug, Clone, clap::Args)]
pub struct TaskStoreArgs {
    /// Redis to measure (keys under a unique prefix, deleted afterwards).
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// Tasks appending at once in the throughput run.
    #[arg(long, default_value_t = 50)]
    pub tasks: u32,
    /// Chunks per task in the throughput run.
    #[arg(long, default_value_t = 200)]
    pub chunks: u32,
    /// Bytes per chunk (JSON).
    #[arg(long, default_value_t = 100)]
    pub chunk_bytes: usize,
    /// Chunks timed from append to live reader.
    #[arg(long, default_value_t = 2000)]
    pub samples: u32,
    /// Milliseconds between two timed chunks.
    #[arg(long, default_value_t = 2)]
    pub interval_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct EngineReport {
    pub engine: &'static str,
    pub appends_per_s: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
}

/// A chunk of about `bytes` bytes carrying when it was appended (µs since `base`).
fn chunk(base: Instant, bytes: usize) -> String {
    let t = base.elapsed().as_micros();
    let head = format!("{{\"t\":{t},\"p\":\"\"}}");
    let pad = "x".repeat(bytes.saturating_sub(head.len()));
    format!("{{\"t\":{t},\"p\":\"{pad}\"}}")
}

fn sent_at(data: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    value.get("t")?.as_u64()
}

fn limits() -> StoreLimits {
    StoreLimits {
        task_bytes: 1 << 20,
        result_ttl: Duration::from_secs(60),
        max_tasks: 1_000_000,
    }
}

fn new_task(owner: &OwnerKey, n: u32) -> NewTask {
    NewTask {
        owner: owner.clone(),
        client_id: format!("bench-{n}").into(),
        correlation_id: Uuid::new_v4(),
        request_type: "bench".into(),
        started_at_ms: 0,
        timeout: Duration::from_secs(600),
    }
}

async fn redis(args: &TaskStoreArgs) -> anyhow::Result<EngineReport> {
    let prefix = format!("taskgate-bench:{}:", Uuid::new_v4().simple());
    let store = Arc::new(
        RedisTaskStore::connect(&args.redis_url, &prefix, limits())
            .await
            .context("connecting to Redis")?,
    );
    let result = redis_runs(args, store.clone()).await;
    store.delete_all().await?;
    result
}

async fn redis_runs(
    args: &TaskStoreArgs,
    store: Arc<RedisTaskStore>,
) -> anyhow::Result<EngineReport> {
    let owner = OwnerKey::of(&taskgate_host::resume::Owner::Subject("bench".into()));
    let base = Instant::now();
    let started = Instant::now();
    let mut writers = Vec::new();
    for n in 0..args.tasks {
        let store = store.clone();
        let task = new_task(&owner, n);
        let (chunks, bytes) = (args.chunks, args.chunk_bytes);
        writers.push(tokio::spawn(async move {
            store.create(&task).await?;
            for seq in 0..u64::from(chunks) {
                let data = RawValue::from_string(chunk(base, bytes))?;
                store.append(task.correlation_id, seq, &data).await?;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let appends = f64::from(args.tasks) * f64::from(args.chunks);
    let appends_per_s = appends / started.elapsed().as_secs_f64();

    let dyn_store: Arc<dyn TaskStore> = store.clone();
    let task = new_task(&owner, args.tasks);
    store.create(&task).await?;
    let mut attachment = Attachment::open(dyn_store, task.correlation_id, -1)
        .await?
        .ok_or_else(|| anyhow!("the task just made is not there"))?;
    let samples = args.samples;
    let reader = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        while let Some(entry) = attachment.next().await? {
            match entry {
                Entry::Chunk { data, .. } => {
                    let now = base.elapsed().as_micros() as u64;
                    if let Some(t) = sent_at(data.get().as_bytes()) {
                        histogram.record(now.saturating_sub(t).max(1))?;
                    }
                }
                Entry::End(_) => break,
            }
        }
        anyhow::Ok(histogram)
    });
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    for seq in 0..u64::from(samples) {
        ticker.tick().await;
        let data = RawValue::from_string(chunk(base, args.chunk_bytes))?;
        store.append(task.correlation_id, seq, &data).await?;
    }
    let end = Outcome {
        state: TaskState::Succeeded,
        response: Arc::from(RawValue::from_string("{}".to_owned())?),
    };
    store.finish(task.correlation_id, &end).await?;
    let histogram = reader.await??;
    Ok(report("redis", appends_per_s, &histogram))
}

fn report(engine: &'static str, appends_per_s: f64, h: &Histogram<u64>) -> EngineReport {
    EngineReport {
        engine,
        appends_per_s,
        latency_p50_us: h.value_at_quantile(0.5),
        latency_p99_us: h.value_at_quantile(0.99),
        latency_max_us: h.max(),
    }
}

async fn rabbitmq_stream(amqp_url: &str, args: &TaskStoreArgs) -> anyhow::Result<EngineReport> {
    let connection = connect_lapin(amqp_url).await?;
    let queue = format!("taskgate-bench.task-chunks.{}", Uuid::new_v4().simple());
    let setup = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("stream".into()),
    );
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .context("declaring a stream queue")?;
    let result = rabbitmq_runs(&connection, &queue, args).await;
    let _ = setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "benchmark done".into()).await;
    result
}

async fn rabbitmq_runs(
    connection: &lapin::Connection,
    queue: &str,
    args: &TaskStoreArgs,
) -> anyhow::Result<EngineReport> {
    let base = Instant::now();
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    let mut writers = Vec::new();
    for n in 0..args.tasks {
        let channel = publisher.clone();
        let queue = queue.to_owned();
        let (chunks, bytes) = (args.chunks, args.chunk_bytes);
        writers.push(tokio::spawn(async move {
            for seq in 0..chunks {
                publish(&channel, &queue, n, seq, &chunk(base, bytes)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let appends = f64::from(args.tasks) * f64::from(args.chunks);
    let appends_per_s = appends / started.elapsed().as_secs_f64();

    // The live reader: from the next message on; a stream consumer must ack within its
    // prefetch. Every task's chunks pass through it (3.10 has no stream filter).
    let reading = connection.create_channel().await?;
    reading.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-stream-offset"),
        AMQPValue::LongString("next".into()),
    );
    let mut consumer = reading
        .basic_consume(
            queue.into(),
            "taskgate-bench-live".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await?;
    let samples = u64::from(args.samples);
    let reader = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut seen = 0;
        while seen < samples {
            let Some(delivery) = consumer.next().await else {
                break;
            };
            let delivery = delivery?;
            let now = base.elapsed().as_micros() as u64;
            if let Some(t) = sent_at(&delivery.data) {
                histogram.record(now.saturating_sub(t).max(1))?;
            }
            seen += 1;
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        anyhow::Ok(histogram)
    });
    // Let the consumer attach before the first timed chunk ("next" starts at attach time).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    for seq in 0..args.samples {
        ticker.tick().await;
        publish(
            &publisher,
            queue,
            args.tasks,
            seq,
            &chunk(base, args.chunk_bytes),
        )
        .await?;
    }
    let histogram = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .context("the stream consumer stalled")???;
    Ok(report("rabbitmq-stream", appends_per_s, &histogram))
}

async fn publish(
    channel: &lapin::Channel,
    queue: &str,
    task: u32,
    seq: u32,
    body: &str,
) -> anyhow::Result<()> {
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-task"), AMQPValue::LongUInt(task));
    headers.insert(ShortString::from("x-seq"), AMQPValue::LongUInt(seq));
    let properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            properties,
        )
        .await?
        .await?;
    if !confirm.is_ack() {
        anyhow::bail!("the broker refused a chunk");
    }
    Ok(())
}

pub async fn run(amqp_url: &str, args: &TaskStoreArgs) -> anyhow::Result<Vec<EngineReport>> {
    crate::check_local_amqp(amqp_url)?;
    let mut reports = Vec::new();
    for engine in ["redis", "rabbitmq-stream"] {
        let report = match engine {
            "redis" => redis(args).await?,
            _ => rabbitmq_stream(amqp_url, args).await?,
        };
        println!(
            "{:<16} {:>10.0} appends/s   append → live reader: p50 {} µs, p99 {} µs, max {} µs",
            report.engine,
            report.appends_per_s,
            report.latency_p50_us,
            report.latency_p99_us,
            report.latency_max_us
        );
        reports.push(report);
    }
    Ok(reports)
}
