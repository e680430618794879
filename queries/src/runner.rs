//! The engine's life.
//!
//! **Recovery (every start, also after kill -9).** The dataflow keeps its state in memory
//! only, so a start (1) fences any predecessor (`init_transactions` with the same
//! transactional id aborts its open transaction), (2) reads each query's result topic back to
//! its end (committed records only): the last published row per key and the last sequence
//! number, (3) replays the source topics from the beginning up to their ends as of start-up,
//! through the dataflow, and (4) publishes, in one transaction, only the difference between
//! the recomputed answer and what was published, with sequence numbers continuing. A consumer
//! therefore never sees a change lost (the difference includes whatever the predecessor had
//! not published yet) nor a contradictory one (each change's `before` is the row last
//! published for its key, and rounds are atomic: a round is committed whole or aborted whole).
//! What it may see is several source changes folded into one result change.
//!
//! **Following.** Then source changes are applied in batches at the wall-clock time of the
//! batch, the clock advances logical time every `queries_tick_ms` when nothing changes
//! (releasing temporal results, e.g. a Gold order becoming delayed), and each step's result
//! changes are published in one Kafka transaction.
//!
//! **Metrics** (`GET /metrics` on `queries_metrics_addr`): source changes in per table, result
//! changes out per query and op, step latency, source lag per partition, source changes
//! dead-lettered and decode waits (`telemetry::names`).
//!
//! **Bad input.** A source change that can never be read goes to the dead-letter topic with
//! the reason and the engine goes on; one that cannot be decoded *yet* (registry away, schema
//! id unknown to it) is waited for ([`crate::dead_letters`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use telemetry::metrics;
use telemetry::names::{
    QUERIES_RESULT_CHANGES, QUERIES_SOURCE_CHANGES, QUERIES_SOURCE_LAG, QUERIES_STEP_DURATION,
};
use topics::cluster::Cluster;
use topics::registry::Registry;
use topics::spec::TopicSpec;

use crate::avro::Schemas;
use crate::cdc;
use crate::dead_letters::{self, DeadLetters};
use crate::engine::{AnswerUpdate, Engine, Tables, Update};
use crate::error::{Error, Result};
use crate::model::Table;
use crate::query::{Params, Query};
use crate::results::{self, Encoder, ResultChange};
use crate::row::Row;
use crate::settings::Settings;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One query's published and computed state.
struct QueryState {
    query: &'static Query,
    topic: String,
    encoder: Encoder,
    /// The query's non-compacted history topic and its encoder, if it has one.
    history: Option<(String, Encoder)>,
    /// Per key, the row last published.
    published: HashMap<String, Row>,
    /// Per key, the row of the engine's current answer.
    answer: HashMap<String, Row>,
    seq: u64,
    touched: HashSet<String>,
}

impl QueryState {
    fn apply(&mut self, update: AnswerUpdate) {
        if update.diff < 0 {
            if self.answer.get(&update.key) == Some(&update.row) {
                self.answer.remove(&update.key);
            }
        } else {
            self.answer.insert(update.key.clone(), update.row);
        }
        self.touched.insert(update.key);
    }

    /// The changes from what was published to the answer, for the touched keys (or all).
    fn changes(&mut self, all: bool) -> Vec<ResultChange> {
        let keys: Vec<String> = if all {
            self.published
                .keys()
                .chain(self.answer.keys())
                .cloned()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        } else {
            self.touched.drain().collect()
        };
        self.touched.clear();
        let mut keys = keys;
        keys.sort();
        keys.iter()
            .filter_map(|k| ResultChange::between(k, self.published.get(k), self.answer.get(k)))
            .map(|(_, c)| c)
            .collect()
    }
}

/// Where the sources stand: per partition, the next offset, and the end to catch up to.
struct Positions {
    next: BTreeMap<(String, i32), i64>,
    ends: BTreeMap<(String, i32), i64>,
}

impl Positions {
    fn caught_up(&self) -> bool {
        self.ends
            .iter()
            .all(|(tp, end)| self.next.get(tp).copied().unwrap_or(0) >= *end)
    }

    fn snapshot(&self) -> BTreeMap<String, i64> {
        self.next
            .iter()
            .map(|((t, p), o)| (format!("{t}:{p}"), *o))
            .collect()
    }
}

/// Runs the engine until `shutdown` completes (or a non-retryable error).
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<()> {
    let queries = crate::declared::ALL;
    if !settings.queries_metrics_addr.is_empty() {
        let bound = telemetry::serve_metrics(&settings.queries_metrics_addr)
            .await
            .map_err(|e| {
                Error::Config(format!(
                    "metrics listener on {}: {e}",
                    settings.queries_metrics_addr
                ))
            })?;
        tracing::info!(addr = %bound, "engine metrics at /metrics");
    }
    let registry = Registry::new(&settings.kafka.schema_registry_url);
    let schemas = Schemas::new(registry.clone());
    let cluster = Cluster::connect(&settings.kafka)?;

    // Result topics: compacted, one partition (the spec's), created if missing.
    let mut states = Vec::new();
    for query in queries {
        let topic = settings.result_topic(query);
        ensure_topic(&cluster, query.topic, &topic).await?;
        let history = match (query.history, settings.history_topic(query)) {
            (Some(spec), Some(name)) => {
                ensure_topic(&cluster, spec, &name).await?;
                let encoder = Encoder::connect(&registry, query, &name).await?;
                Some((name, encoder))
            }
            _ => None,
        };
        states.push(QueryState {
            query,
            history,
            encoder: Encoder::connect(&registry, query, &topic).await?,
            topic,
            published: HashMap::new(),
            answer: HashMap::new(),
            seq: 0,
            touched: HashSet::new(),
        });
    }

    ensure_topic(
        &cluster,
        &topics::spec::QUERIES_DEAD_LETTERS,
        &settings.queries_dead_letter_topic,
    )
    .await?;
    let dead_letters = DeadLetters::new(
        &settings.kafka,
        &settings.queries_dead_letter_topic,
        &settings.queries_transactional_id,
    )?;

    let producer: FutureProducer = topics::kafka::transactional_producer_config(
        &settings.kafka,
        &settings.queries_transactional_id,
    )
    .create()?;
    tokio::task::block_in_place(|| producer.init_transactions(KAFKA_TIMEOUT))?;

    for state in &mut states {
        let changes =
            results::read_all(&settings.kafka, &schemas, state.query, &state.topic).await?;
        (state.published, state.seq) = results::fold(&changes);
        tracing::info!(
            query = state.query.name,
            results = state.published.len(),
            seq = state.seq,
            "read back what was published"
        );
    }

    // Sources, from the beginning.
    let consumer: StreamConsumer = results::end_reader(&settings.kafka)
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tables_by_topic = HashMap::new();
    let mut positions = Positions {
        next: BTreeMap::new(),
        ends: BTreeMap::new(),
    };
    let mut tpl = TopicPartitionList::new();
    for table in Table::ALL {
        let topic = settings.source_topic(table).to_owned();
        let partitions = await_topic(&cluster, &topic, settings.queries_source_wait_ms).await?;
        for p in partitions {
            tpl.add_partition_offset(&topic, p.id, Offset::Beginning)?;
            positions
                .ends
                .insert((topic.clone(), p.id), p.high_watermark);
            positions
                .next
                .insert((topic.clone(), p.id), p.low_watermark);
        }
        tables_by_topic.insert(topic, table);
    }
    consumer.assign(&tpl)?;

    let params = Params {
        gold_order_delay_ms: settings.queries_gold_order_delay_ms,
    };
    let mut engine = Engine::start(queries, params);
    let mut tables = Tables::default();
    let mut recovered = false;
    let started = Instant::now();
    let tick = Duration::from_millis(settings.queries_tick_ms.max(1));
    let mut last_step = Instant::now();
    let mut last_lag = Instant::now();
    tokio::pin!(shutdown);

    loop {
        let mut updates: Vec<Update> = Vec::new();
        let window = if recovered {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(100)
        };
        let wait = tick.saturating_sub(last_step.elapsed());
        // The batch: the first change (or the tick), then more until the window closes. A
        // shutdown ends it anywhere, also while a change waits for the registry or the
        // dead-letter topic.
        let batch = async {
            let first = tokio::select! {
                msg = consumer.recv() => msg?,
                () = tokio::time::sleep(wait) => return Ok::<_, Error>(()),
            };
            ingest(
                first,
                &schemas,
                &dead_letters,
                &tables_by_topic,
                &mut tables,
                &mut positions,
                &mut updates,
            )
            .await?;
            let mut consumed = 1usize;
            let batch_deadline = Instant::now() + window;
            while consumed < settings.queries_max_batch {
                if !recovered && positions.caught_up() {
                    break;
                }
                let left = batch_deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let Ok(msg) = tokio::time::timeout(left, consumer.recv()).await else {
                    break;
                };
                ingest(
                    msg?,
                    &schemas,
                    &dead_letters,
                    &tables_by_topic,
                    &mut tables,
                    &mut positions,
                    &mut updates,
                )
                .await?;
                consumed += 1;
            }
            Ok(())
        };
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            gathered = batch => gathered?,
        }
        let released = {
            let time = now_ms();
            let stepping = Instant::now();
            let released = tokio::task::block_in_place(|| engine.step(time, updates))?;
            metrics::histogram!(QUERIES_STEP_DURATION).record(stepping.elapsed().as_secs_f64());
            released
        };
        last_step = Instant::now();
        if last_lag.elapsed() >= LAG_EVERY {
            tokio::task::block_in_place(|| record_lag(&consumer, &positions));
            last_lag = Instant::now();
        }
        for update in released {
            let query = update.query;
            states[query].apply(update);
        }
        if !recovered {
            if !positions.caught_up() {
                continue;
            }
            recovered = true;
            let published = publish(&producer, &mut states, &positions, true).await?;
            tracing::info!(
                changes = published,
                secs = started.elapsed().as_secs_f64(),
                "recovered: replayed the sources and published the difference"
            );
            continue;
        }
        publish(&producer, &mut states, &positions, false).await?;
    }
}

/// How often the source lag is measured (a watermark request per source partition).
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Per source partition, records not yet consumed: the high watermark (asked of the broker)
/// minus the next offset. A partition whose watermark is not answered keeps its last value.
fn record_lag(consumer: &StreamConsumer, positions: &Positions) {
    for ((topic, partition), next) in &positions.next {
        match consumer.fetch_watermarks(topic, *partition, Duration::from_millis(500)) {
            Ok((_, high)) => metrics::gauge!(
                QUERIES_SOURCE_LAG,
                "topic" => topic.clone(),
                "partition" => partition.to_string()
            )
            .set((high - next).max(0) as f64),
            Err(e) => tracing::debug!(topic, partition, error = %e, "source lag not measured"),
        }
    }
}

/// Reads one source record into the tables' state and the collection updates; one it can
/// never read goes to the dead-letter topic.
async fn ingest(
    msg: rdkafka::message::BorrowedMessage<'_>,
    schemas: &Schemas,
    dead_letters: &DeadLetters,
    tables_by_topic: &HashMap<String, Table>,
    tables: &mut Tables,
    positions: &mut Positions,
    updates: &mut Vec<Update>,
) -> Result<()> {
    let topic = msg.topic();
    positions
        .next
        .insert((topic.to_owned(), msg.partition()), msg.offset() + 1);
    if let Some(table) = tables_by_topic.get(topic) {
        metrics::counter!(QUERIES_SOURCE_CHANGES, "table" => table.name()).increment(1);
    }
    // Tombstones (after deletes) carry nothing the delete did not.
    if let (Some(payload), Some(&table)) = (msg.payload(), tables_by_topic.get(topic)) {
        let envelope = match dead_letters::decode(schemas, table, &msg, payload).await {
            Ok(envelope) => envelope,
            Err(e) => {
                let reason = format!("not a readable change record: {e}");
                return dead_letters.send(&msg, table, &reason).await;
            }
        };
        match cdc::change(table, &envelope) {
            Ok(Some(change)) => tables.apply(table, change, updates),
            Ok(None) => {}
            Err(e) => {
                let reason = format!("a change the queries cannot read: {e}");
                dead_letters.send(&msg, table, &reason).await?;
            }
        }
    }
    Ok(())
}

/// Publishes the changes of every query in one transaction; what was published and the
/// sequence numbers move only once it committed.
async fn publish(
    producer: &FutureProducer,
    states: &mut [QueryState],
    positions: &Positions,
    all: bool,
) -> Result<usize> {
    let offsets = positions.snapshot();
    let emitted_at = now_ms() as i64;
    let mut batch: Vec<(usize, ResultChange)> = Vec::new();
    for (i, state) in states.iter_mut().enumerate() {
        let mut seq = state.seq;
        for mut change in state.changes(all) {
            seq += 1;
            change.seq = seq;
            change.source_offsets = offsets.clone();
            change.emitted_at_ms = emitted_at;
            batch.push((i, change));
        }
    }
    if batch.is_empty() {
        return Ok(0);
    }
    // Each change goes to the query's compacted topic and, if it has one, to its history
    // topic: in one transaction, so the history is exactly the sequence the compacted topic had.
    let mut encoded: Vec<Outgoing<'_>> = Vec::with_capacity(batch.len());
    for (i, change) in &batch {
        let state = &states[*i];
        encoded.push(Outgoing {
            topic: &state.topic,
            change,
            payload: state.encoder.encode(change)?,
        });
        if let Some((topic, encoder)) = &state.history {
            encoded.push(Outgoing {
                topic,
                change,
                payload: encoder.encode(change)?,
            });
        }
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match send_transaction(producer, &encoded).await {
            Ok(()) => break,
            Err(e) if e.is_retryable() && attempt < 5 => {
                tracing::warn!(error = %e, attempt, "result transaction failed; aborting and retrying");
                let _ = tokio::task::block_in_place(|| producer.abort_transaction(KAFKA_TIMEOUT));
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
    drop(encoded);
    let n = batch.len();
    for (i, change) in batch {
        let state = &mut states[i];
        metrics::counter!(
            QUERIES_RESULT_CHANGES,
            "query" => state.query.name,
            "op" => change.op.label()
        )
        .increment(1);
        state.seq = change.seq;
        match change.after {
            Some(row) => state.published.insert(change.key, row),
            None => state.published.remove(&change.key),
        };
    }
    Ok(n)
}

/// One record of a result transaction.
struct Outgoing<'a> {
    topic: &'a str,
    change: &'a ResultChange,
    payload: Vec<u8>,
}

async fn send_transaction(producer: &FutureProducer, records: &[Outgoing<'_>]) -> Result<()> {
    producer.begin_transaction()?;
    let mut deliveries = Vec::with_capacity(records.len());
    for Outgoing {
        topic,
        change,
        payload,
    } in records
    {
        let seq = change.seq.to_string();
        let mut record = FutureRecord::to(topic)
            .key(&change.key)
            .payload(payload)
            .partition(0)
            .headers(OwnedHeaders::new().insert(Header {
                key: topics::kafka::SEQUENCE_HEADER,
                value: Some(&seq),
            }));
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    tokio::task::block_in_place(|| topics::kafka::commit_transaction(producer, KAFKA_TIMEOUT))?;
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.into()),
            Err(_) => return Err(Error::Kafka(rdkafka::error::KafkaError::Canceled)),
        }
    }
    Ok(())
}

async fn ensure_topic(cluster: &Cluster, spec: &'static TopicSpec, name: &str) -> Result<()> {
    if cluster.partitions(name).await?.is_some() {
        return Ok(());
    }
    let spec = TopicSpec {
        name: Box::leak(name.to_owned().into_boxed_str()),
        ..*spec
    };
    let replication = spec
        .replication_factor
        .min(cluster.broker_count()? as i32)
        .max(1);
    cluster.create(&spec, replication).await?;
    Ok(())
}

async fn await_topic(
    cluster: &Cluster,
    topic: &str,
    wait_ms: u64,
) -> Result<Vec<topics::cluster::PartitionState>> {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    loop {
        match cluster.partitions(topic).await? {
            Some(p) if !p.is_empty() => return Ok(p),
            _ if Instant::now() > deadline => {
                return Err(Error::Timeout {
                    what: format!("source topic {topic} to exist"),
                    secs: wait_ms / 1000,
                })
            }
            _ => {
                tracing::info!(topic, "waiting for the source topic");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
