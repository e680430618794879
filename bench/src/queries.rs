//! `bench queries`: the continuous-query engine.
//!
//! (a) A review posted to the commerce reviews service until the catalogue serves the new
//! review count: reviews service → PostgreSQL → connector (`target/release/connector`) →
//! Kafka → engine (`queries::runner`) → result topic → catalogue projector → Redis →
//! `GET /catalogue/{productId}`, closed loop, one review at a time. The baseline in the same
//! run is the `POST /reviews` alone (the write the pipeline starts from).
//!
//! (b) Review changes (inserts, rating updates, deletes) applied incrementally by the engine's
//! dataflow (`queries::engine`: the same [`Tables`] + [`Engine`] code and the same declared
//! queries the service runs, fed from generated change records instead of the connector's
//! topic), next to PostgreSQL applying the same change and recomputing the product's
//! aggregate with SQL. The change stream is cut into rounds; each round runs on every side,
//! alternating which goes first, and the table shows the median and range over rounds.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use commerce::Service;
use hdrhistogram::Histogram;
use projectors::store::any::{AnyStore, StoreKind};
use queries::cdc::SourceChange;
use queries::engine::{Engine, Tables, Update};
use queries::model::{Pk, Product, Review, SourceRow, Table};
use queries::query::Params;
use queries::row::Cell;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;
use topics::settings::KafkaSettings;
use uuid::Uuid;

use crate::service::Running;

#[derive(clap::Args)]
pub struct Options {
    /// Reviews posted in part (a), one at a time.
    #[arg(long, default_value_t = 300)]
    reviews: usize,
    /// Review changes in part (b).
    #[arg(long, default_value_t = 1_000_000)]
    changes: usize,
    /// Reviews loaded before part (b)'s changes (both sides, in one step / one INSERT).
    #[arg(long, default_value_t = 100_000)]
    initial_reviews: usize,
    /// Products the reviews of part (b) are spread over (uniformly).
    #[arg(long, default_value_t = 1_000)]
    products: usize,
    /// Rounds part (b)'s change stream is cut into (each side runs each round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Changes per dataflow step of part (b)'s batched engine side.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// The connector binary.
    #[arg(long, default_value = "target/release/connector")]
    connector_bin: std::path::PathBuf,
    /// Skip part (a) (the whole pipeline) or part (b).
    #[arg(long)]
    no_pipeline: bool,
    #[arg(long)]
    no_incremental: bool,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    if !options.no_pipeline {
        println!("(a) review posted to the reviews service → visible in the catalogue read model");
        pipeline(&options).await?;
    }
    if !options.no_incremental {
        if !options.no_pipeline {
            println!();
        }
        incremental(&options).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (a) the whole pipeline

/// A connector child process, killed when dropped.
struct Connector(Child);

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

async fn pipeline(options: &Options) -> anyhow::Result<()> {
    ensure!(
        options.connector_bin.exists(),
        "{} not found: build it with `cargo build --release -p connector`",
        options.connector_bin.display()
    );
    // Absolute: the connectors run in the temporary directory.
    let connector_bin = options.connector_bin.canonicalize()?;
    let run = format!("bench_q_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let kafka: KafkaSettings = topics::settings::load("bench")?;
    let mut commerce = commerce::configuration::load()?;
    commerce.products_database = format!("{run}_products");
    commerce.reviews_database = format!("{run}_reviews");
    commerce.products_listen_addr = "127.0.0.1:0".to_owned();
    commerce.reviews_listen_addr = "127.0.0.1:0".to_owned();
    commerce.commerce_seed = false;
    commerce.commerce_outbox_relay = false;
    commerce.commerce_pool_size = 4;
    let products = Running::start(&commerce, Service::Products).await?;
    let reviews = Running::start(&commerce, Service::Reviews).await?;

    // The engine waits for all four source topics: the two this run does not write are
    // created empty; the result contracts are registered under this run's topics.
    let source = |table: &str| format!("{run}.{table}.public.{table}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.kafka_bootstrap_servers)
        .create()?;
    let empty = [source("customers"), source("orders")];
    let dead_letters = format!("{run}.queries.catalogue.dead-letter");
    let mut created: Vec<String> = empty.to_vec();
    created.push(dead_letters.clone());
    let new_topics: Vec<_> = created
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        result.map_err(|(topic, e)| anyhow::anyhow!("creating {topic}: {e}"))?;
    }
    let registry = topics::registry::Registry::new(&kafka.schema_registry_url);
    for q in queries::declared::ALL {
        let topic = format!("{run}.queries.{}", q.name);
        let history = q.history.map(|_| format!("{topic}.history"));
        for topic in std::iter::once(topic).chain(history) {
            registry
                .register(
                    &topics::spec::value_subject(&topic),
                    q.topic.value_schema.unwrap_or_default(),
                )
                .await?;
            created.push(topic);
        }
    }

    let mut connectors = Vec::new();
    for service in ["products", "reviews"] {
        let database = format!("{run}_{service}");
        let url = format!(
            "{}/{database}",
            commerce
                .postgres_url
                .rsplit_once('/')
                .map_or(commerce.postgres_url.as_str(), |(server, _)| server)
        );
        let child = Command::new(&connector_bin)
            .args([
                "-c",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../commerce/connector/products.toml"
                ),
            ])
            .current_dir(std::env::temp_dir())
            .env("POSTGRES_URL", &url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.kafka_bootstrap_servers)
            .env("SCHEMA_REGISTRY_URL", &kafka.schema_registry_url)
            .env("CONNECTOR_NAME", format!("{run}.{service}"))
            .env("CONNECTOR_SLOT_NAME", format!("{database}_slot"))
            .env("CONNECTOR_PUBLICATION_NAME", format!("{database}_pub"))
            .env("CONNECTOR_TABLES", format!("public.{service}"))
            .env(
                "CONNECTOR_OFFSETS_TOPIC",
                format!("{run}.connector-offsets"),
            )
            .env("CONNECTOR_LINGER_MS", "1")
            .env("RUST_LOG", "warn")
            .env_remove("CONNECTOR_CONFIG")
            .stdout(Stdio::null())
            .spawn()
            .context("start the connector")?;
        connectors.push(Connector(child));
        created.push(source(service));
    }
    created.push(format!("{run}.connector-offsets"));

    let engine_settings = queries::settings::Settings {
        kafka: kafka.clone(),
        queries_products_topic: source("products"),
        queries_customers_topic: source("customers"),
        queries_orders_topic: source("orders"),
        queries_reviews_topic: source("reviews"),
        queries_topic_prefix: format!("{run}.queries"),
        queries_transactional_id: format!("{run}-engine"),
        queries_metrics_addr: String::new(),
        ..queries::settings::Settings::default()
    };
    let (stop_engine, engine_stopped) = oneshot::channel::<()>();
    let engine = tokio::spawn(queries::runner::run(engine_settings, async move {
        let _ = engine_stopped.await;
    }));
    let catalogue_addr = free_addr()?;
    let catalogue_settings = queries::catalogue::Settings {
        kafka: kafka.clone(),
        catalogue_listen_addr: catalogue_addr.clone(),
        queries_topic_prefix: format!("{run}.queries"),
        catalogue_store: StoreKind::Redis,
        catalogue_namespace: format!("{run}.catalogue"),
        ..queries::catalogue::Settings::default()
    };
    let redis_url = catalogue_settings.redis_url.clone();
    let (stop_catalogue, catalogue_stopped) = oneshot::channel::<()>();
    let catalogue = tokio::spawn(queries::catalogue::serve(catalogue_settings, async move {
        let _ = catalogue_stopped.await;
    }));
    let catalogue_url = format!("http://{catalogue_addr}");

    let client = reqwest::Client::new();
    let result = measure_pipeline(
        &client,
        &products.base_url,
        &reviews.base_url,
        &catalogue_url,
        options,
    )
    .await;

    let _ = stop_catalogue.send(());
    let _ = stop_engine.send(());
    let catalogue_result = catalogue.await?;
    let engine_result = engine.await?;
    drop(connectors);
    reviews.stop().await?;
    products.stop().await?;
    // Clean up whatever happened above: databases, slots, topics, read models.
    let mut pg = PgConnection::connect(&commerce.postgres_url).await?;
    for service in ["products", "reviews"] {
        let database = format!("{run}_{service}");
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
        )
        .bind(format!("{database}_slot"))
        .execute(&mut pg)
        .await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
        ))
        .execute(&mut pg)
        .await?;
    }
    let names: Vec<&str> = created.iter().map(String::as_str).collect();
    admin.delete_topics(&names, &AdminOptions::new()).await?;
    for model in ["products", "index"] {
        let store = AnyStore::connect(
            StoreKind::Redis,
            &redis_url,
            "",
            &format!("{run}.catalogue.{model}"),
        )
        .await?;
        projectors::Store::clear(&store).await?;
    }
    result?;
    catalogue_result?;
    engine_result?;
    Ok(())
}

async fn measure_pipeline(
    client: &reqwest::Client,
    products: &str,
    reviews: &str,
    catalogue: &str,
    options: &Options,
) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    for i in 0..10 {
        let created: Value = client
            .post(format!("{products}/products"))
            .json(&json!({ "name": format!("bench {i}"), "price": 10, "stock": 100 }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(
            created["id"]
                .as_i64()
                .context("a created product has no id")?,
        );
    }
    // The pipeline warms up (connector snapshots, engine recovery, projector assignment).
    for id in &ids {
        await_review_count(client, catalogue, *id, 0, Duration::from_secs(120)).await?;
    }
    let per_round = options.reviews.div_ceil(options.rounds).max(1);
    let mut counts: HashMap<i64, i64> = HashMap::new();
    let mut all_post = Histogram::<u64>::new(3)?;
    let mut all_visible = Histogram::<u64>::new(3)?;
    println!(
        "{} reviews, one at a time (closed loop), over {} products, {} rounds; visible = GET /catalogue/{{id}} shows the new reviewCount (polled every 2 ms)",
        options.reviews,
        ids.len(),
        options.rounds
    );
    println!("| round | reviews | POST /reviews p50 ms | p99 ms | POST → catalogue p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut posted = 0;
    for round in 0..options.rounds {
        let mut post = Histogram::<u64>::new(3)?;
        let mut visible = Histogram::<u64>::new(3)?;
        let n = per_round.min(options.reviews - posted);
        for i in 0..n {
            let product = ids[(posted + i) % ids.len()];
            let expected = {
                let c = counts.entry(product).or_default();
                *c += 1;
                *c
            };
            let sent = Instant::now();
            client
                .post(format!("{reviews}/reviews"))
                .json(&json!({
                    "productId": product,
                    "customerId": 1,
                    "rating": 1 + (posted + i) % 5,
                    "text": "bench"
                }))
                .send()
                .await?
                .error_for_status()?;
            post.record(sent.elapsed().as_micros() as u64)?;
            await_review_count(
                client,
                catalogue,
                product,
                expected,
                Duration::from_secs(30),
            )
            .await?;
            visible.record(sent.elapsed().as_micros() as u64)?;
        }
        posted += n;
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {} | {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            round + 1,
            ms(&post, 0.5),
            ms(&post, 0.99),
            ms(&visible, 0.5),
            ms(&visible, 0.99),
            visible.max() as f64 / 1000.0
        );
        p50s.push(ms(&visible, 0.5));
        p99s.push(ms(&visible, 0.99));
        all_post.add(&post)?;
        all_visible.add(&visible)?;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let (m50, lo50, hi50) = summary(&mut p50s);
    let (m99, lo99, hi99) = summary(&mut p99s);
    println!(
        "all {} reviews: POST p50 {:.1} ms, p99 {:.1} ms (baseline: the write alone); POST → catalogue p50 {:.1} ms, p99 {:.1} ms; per round median p50 {m50:.1} [{lo50:.1}–{hi50:.1}] ms, p99 {m99:.1} [{lo99:.1}–{hi99:.1}] ms",
        options.reviews,
        ms(&all_post, 0.5),
        ms(&all_post, 0.99),
        ms(&all_visible, 0.5),
        ms(&all_visible, 0.99),
    );
    Ok(())
}

/// Polls the catalogue every 2 ms until product `id` shows `count` reviews.
async fn await_review_count(
    client: &reqwest::Client,
    catalogue: &str,
    id: i64,
    count: i64,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let url = format!("{catalogue}/catalogue/{id}");
    loop {
        if let Ok(response) = client.get(&url).send().await {
            if response.status().is_success() {
                let doc: Value = response.json().await?;
                if doc["reviewCount"].as_i64() == Some(count) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("product {id} did not show {count} reviews in the catalogue within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------------------
// (b) incremental vs recomputed

/// One generated change of the reviews table.
#[derive(Debug, Clone, Copy)]
enum Change {
    Insert { id: i64, product: i64, rating: i64 },
    Rate { id: i64, product: i64, rating: i64 },
    Delete { id: i64, product: i64 },
}

impl Change {
    fn product(self) -> i64 {
        match self {
            Change::Insert { product, .. }
            | Change::Rate { product, .. }
            | Change::Delete { product, .. } => product,
        }
    }

    fn source(self) -> SourceChange {
        match self {
            Change::Insert {
                id,
                product,
                rating,
            }
            | Change::Rate {
                id,
                product,
                rating,
            } => SourceChange::Upsert(SourceRow::Review(Review {
                id,
                product_id: product,
                rating,
            })),
            Change::Delete { id, .. } => SourceChange::Delete(Pk::Id(id)),
        }
    }
}

/// The change stream: 50 % rating updates, 30 % inserts, 20 % deletes of random live reviews
/// (uniform over products), from a fixed seed.
fn generate(options: &Options) -> (Vec<(i64, i64, i64)>, Vec<Change>) {
    let mut rng = StdRng::seed_from_u64(11);
    let products = options.products as i64;
    let initial: Vec<(i64, i64, i64)> = (1..=options.initial_reviews as i64)
        .map(|id| (id, 1 + (id - 1) % products, 1 + id % 5))
        .collect();
    let mut live: Vec<(i64, i64)> = initial.iter().map(|(id, p, _)| (*id, *p)).collect();
    let mut next_id = options.initial_reviews as i64 + 1;
    let mut changes = Vec::with_capacity(options.changes);
    for _ in 0..options.changes {
        let roll = rng.random_range(0..10);
        let change = if live.is_empty() || (5..8).contains(&roll) {
            let id = next_id;
            next_id += 1;
            let product = rng.random_range(1..=products);
            live.push((id, product));
            Change::Insert {
                id,
                product,
                rating: rng.random_range(1..=5),
            }
        } else if roll < 5 {
            let (id, product) = live[rng.random_range(0..live.len())];
            Change::Rate {
                id,
                product,
                rating: rng.random_range(1..=5),
            }
        } else {
            let (id, product) = live.swap_remove(rng.random_range(0..live.len()));
            Change::Delete { id, product }
        };
        changes.push(change);
    }
    (initial, changes)
}

/// The engine as the service runs it: per-table state turning upserts into collection
/// updates, the dataflow of every declared query, one step per batch at wall-clock time.
struct EngineSide {
    engine: Engine,
    tables: Tables,
    /// The catalogue's answer, from the answer updates (the runner keeps the same per query).
    catalogue: HashMap<String, Vec<Cell>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EngineSide {
    fn start(options: &Options, initial: &[(i64, i64, i64)]) -> anyhow::Result<Self> {
        let mut side = Self {
            engine: Engine::start(
                queries::declared::ALL,
                Params {
                    gold_order_delay_ms: 30 * 60 * 1000,
                },
            ),
            tables: Tables::default(),
            catalogue: HashMap::new(),
        };
        let mut updates = Vec::new();
        for id in 1..=options.products as i64 {
            side.tables.apply(
                Table::Products,
                SourceChange::Upsert(SourceRow::Product(Product {
                    id,
                    name: format!("product {id}"),
                    price: "10.00".to_owned(),
                    stock: 100,
                })),
                &mut updates,
            );
        }
        for (id, product, rating) in initial {
            side.tables.apply(
                Table::Reviews,
                SourceChange::Upsert(SourceRow::Review(Review {
                    id: *id,
                    product_id: *product,
                    rating: *rating,
                })),
                &mut updates,
            );
        }
        side.step(updates)?;
        Ok(side)
    }

    fn step(&mut self, updates: Vec<Update>) -> anyhow::Result<usize> {
        let released = self.engine.step(now_ms(), updates)?;
        let n = released.len();
        for u in released {
            if u.query != 0 {
                continue;
            }
            if u.diff < 0 {
                if self.catalogue.get(&u.key) == Some(&u.row) {
                    self.catalogue.remove(&u.key);
                }
            } else {
                self.catalogue.insert(u.key, u.row);
            }
        }
        Ok(n)
    }

    /// Applies `changes` in steps of `batch`; per-step latencies (µs) into `latency`.
    fn run(
        &mut self,
        changes: &[Change],
        batch: usize,
        latency: &mut Histogram<u64>,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        for chunk in changes.chunks(batch.max(1)) {
            let t = Instant::now();
            let mut updates = Vec::with_capacity(chunk.len() * 2);
            for change in chunk {
                self.tables
                    .apply(Table::Reviews, change.source(), &mut updates);
            }
            self.step(updates)?;
            latency.record(t.elapsed().as_micros() as u64)?;
        }
        Ok(started.elapsed())
    }
}

/// PostgreSQL applying each change and recomputing its product's aggregate.
struct SqlSide {
    conn: PgConnection,
}

const SQL_SETTINGS: &str = "table bench_reviews(id bigint primary key, product_id bigint, rating smallint); index (product_id) INCLUDE (rating) for index-only scans of a product's group; VACUUM ANALYZE after the initial load; one connection, prepared statements, each change its own autocommit statement, then SELECT count(*), avg(rating) WHERE product_id = $1; server: fsync=off, synchronous_commit=off (scripts/infra)";

impl SqlSide {
    async fn start(url: &str, initial: &[(i64, i64, i64)]) -> anyhow::Result<Self> {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::query("CREATE TABLE bench_reviews (id bigint PRIMARY KEY, product_id bigint NOT NULL, rating smallint NOT NULL)")
            .execute(&mut conn)
            .await?;
        for chunk in initial.chunks(10_000) {
            let ids: Vec<i64> = chunk.iter().map(|r| r.0).collect();
            let products: Vec<i64> = chunk.iter().map(|r| r.1).collect();
            let ratings: Vec<i16> = chunk.iter().map(|r| r.2 as i16).collect();
            sqlx::query("INSERT INTO bench_reviews SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::smallint[])")
                .bind(ids)
                .bind(products)
                .bind(ratings)
                .execute(&mut conn)
                .await?;
        }
        sqlx::query(
            "CREATE INDEX bench_reviews_by_product ON bench_reviews (product_id) INCLUDE (rating)",
        )
        .execute(&mut conn)
        .await?;
        sqlx::query("VACUUM ANALYZE bench_reviews")
            .execute(&mut conn)
            .await?;
        Ok(Self { conn })
    }

    /// Applies `changes`, recomputing after each; per-change latencies (µs) of the recompute
    /// and of the change + recompute.
    async fn run(
        &mut self,
        changes: &[Change],
        recompute: &mut Histogram<u64>,
        both: &mut Histogram<u64>,
    ) -> anyhow::Result<(Duration, Duration)> {
        let started = Instant::now();
        let mut recomputing = Duration::ZERO;
        for change in changes {
            let t = Instant::now();
            match *change {
                Change::Insert {
                    id,
                    product,
                    rating,
                } => {
                    sqlx::query("INSERT INTO bench_reviews VALUES ($1, $2, $3)")
                        .bind(id)
                        .bind(product)
                        .bind(rating as i16)
                        .execute(&mut self.conn)
                        .await?;
                }
                Change::Rate { id, rating, .. } => {
                    sqlx::query("UPDATE bench_reviews SET rating = $2 WHERE id = $1")
                        .bind(id)
                        .bind(rating as i16)
                        .execute(&mut self.conn)
                        .await?;
                }
                Change::Delete { id, .. } => {
                    sqlx::query("DELETE FROM bench_reviews WHERE id = $1")
                        .bind(id)
                        .execute(&mut self.conn)
                        .await?;
                }
            }
            let r = Instant::now();
            let _: (i64, Option<f64>) = sqlx::query_as(
                "SELECT count(*), avg(rating)::float8 FROM bench_reviews WHERE product_id = $1",
            )
            .bind(change.product())
            .fetch_one(&mut self.conn)
            .await?;
            let done = r.elapsed();
            recomputing += done;
            recompute.record(done.as_micros() as u64)?;
            both.record(t.elapsed().as_micros() as u64)?;
        }
        Ok((started.elapsed(), recomputing))
    }

    async fn aggregates(&mut self) -> anyhow::Result<HashMap<i64, (i64, f64)>> {
        let rows: Vec<(i64, i64, f64)> = sqlx::query_as(
            "SELECT product_id, count(*), avg(rating)::float8 FROM bench_reviews GROUP BY product_id",
        )
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(|(p, n, a)| (p, (n, a))).collect())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    EngineEach,
    EngineBatched,
    Sql,
}

async fn incremental(options: &Options) -> anyhow::Result<()> {
    println!(
        "(b) {} review changes (50 % rating updates, 30 % inserts, 20 % deletes) over {} products after {} initial reviews, {} rounds alternating the order",
        options.changes, options.products, options.initial_reviews, options.rounds
    );
    println!("engine: queries::engine (Tables + the differential-dataflow worker with every declared query), driven directly from generated change records (not through Kafka), one step per change, and one step per {} changes", options.batch);
    println!("SQL: {SQL_SETTINGS}");
    let (initial, changes) = generate(options);
    let run = format!("bench_q_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let server: String = std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://platform:platform@127.0.0.1:5432/platform".into());
    let mut admin = PgConnection::connect(&server).await?;
    sqlx::query(&format!("CREATE DATABASE \"{run}\""))
        .execute(&mut admin)
        .await?;
    let url = format!(
        "{}/{run}",
        server.rsplit_once('/').map_or(server.as_str(), |(s, _)| s)
    );
    let outcome = compare(options, &initial, &changes, &url).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{run}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    outcome
}

async fn compare(
    options: &Options,
    initial: &[(i64, i64, i64)],
    changes: &[Change],
    url: &str,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut each = EngineSide::start(options, initial)?;
    let mut batched = EngineSide::start(options, initial)?;
    let engine_load = t.elapsed() / 2;
    let t = Instant::now();
    let mut sql = SqlSide::start(url, initial).await?;
    println!(
        "initial load: engine {:.2} s (one step), PostgreSQL {:.2} s (INSERT + index + VACUUM ANALYZE)",
        engine_load.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    let per_round = changes.len().div_ceil(options.rounds).max(1);
    let mut rates: HashMap<u8, Vec<f64>> = HashMap::new();
    let mut each_latency = Histogram::<u64>::new(3)?;
    let mut batch_latency = Histogram::<u64>::new(3)?;
    let mut recompute_latency = Histogram::<u64>::new(3)?;
    let mut sql_latency = Histogram::<u64>::new(3)?;
    println!("| round | side | changes | s | changes/s |");
    println!("|---|---|---|---|---|");
    for (round, chunk) in changes.chunks(per_round).enumerate() {
        let mut order = [Side::EngineEach, Side::Sql, Side::EngineBatched];
        order.rotate_left(round % 3);
        for side in order {
            let (name, elapsed) = match side {
                Side::EngineEach => (
                    "engine, a step per change",
                    each.run(chunk, 1, &mut each_latency)?,
                ),
                Side::EngineBatched => (
                    "engine, batched",
                    batched.run(chunk, options.batch, &mut batch_latency)?,
                ),
                Side::Sql => {
                    let (all, recomputing) = sql
                        .run(chunk, &mut recompute_latency, &mut sql_latency)
                        .await?;
                    rates
                        .entry(3)
                        .or_default()
                        .push(chunk.len() as f64 / recomputing.as_secs_f64());
                    ("SQL, change + recompute", all)
                }
            };
            let rate = chunk.len() as f64 / elapsed.as_secs_f64();
            rates.entry(side as u8).or_default().push(rate);
            println!(
                "| {} | {name} | {} | {:.2} | {rate:.0} |",
                round + 1,
                chunk.len(),
                elapsed.as_secs_f64()
            );
        }
    }

    // Both must agree: the engine's catalogue against SQL's GROUP BY, product by product.
    let expected = sql.aggregates().await?;
    for side in [&each, &batched] {
        ensure!(
            side.catalogue.len() == options.products,
            "the engine's catalogue has {} products, not {}",
            side.catalogue.len(),
            options.products
        );
        for (key, row) in &side.catalogue {
            let id: i64 = key.parse()?;
            let (count, average) = match expected.get(&id) {
                Some((n, a)) => (*n, Some(*a)),
                None => (0, None),
            };
            let engine_average = match row[5] {
                Cell::Double(a) => Some(a),
                _ => None,
            };
            ensure!(
                row[4] == Cell::Long(count)
                    && match (engine_average, average) {
                        (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                        (None, None) => true,
                        _ => false,
                    },
                "product {id}: engine {:?}, SQL ({count}, {average:?})",
                &row[4..]
            );
        }
    }
    println!("check: the engine's catalogue (both engine sides) equals SQL's GROUP BY for all {} products", options.products);

    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    let mut summary_of = |key: u8| summary(rates.entry(key).or_default());
    let (each_m, each_lo, each_hi) = summary_of(Side::EngineEach as u8);
    let (batch_m, batch_lo, batch_hi) = summary_of(Side::EngineBatched as u8);
    let (sql_m, sql_lo, sql_hi) = summary_of(Side::Sql as u8);
    let (rec_m, rec_lo, rec_hi) = summary_of(3);
    println!();
    println!("| side | changes/s median [range] | per change p50 µs | p99 µs | vs SQL recompute (median) |");
    println!("|---|---|---|---|---|");
    println!(
        "| engine, a step per change (incremental) | {each_m:.0} [{each_lo:.0}–{each_hi:.0}] | {} | {} | {:.1}× |",
        us(&each_latency, 0.5),
        us(&each_latency, 0.99),
        each_m / rec_m
    );
    println!(
        "| engine, {} changes per step (per change = step ÷ batch) | {batch_m:.0} [{batch_lo:.0}–{batch_hi:.0}] | {:.2} | {:.2} | {:.1}× |",
        options.batch,
        us(&batch_latency, 0.5) as f64 / options.batch as f64,
        us(&batch_latency, 0.99) as f64 / options.batch as f64,
        batch_m / rec_m
    );
    println!(
        "| SQL recompute only (SELECT per change) | {rec_m:.0} [{rec_lo:.0}–{rec_hi:.0}] | {} | {} | 1.0× |",
        us(&recompute_latency, 0.5),
        us(&recompute_latency, 0.99)
    );
    println!(
        "| SQL change + recompute | {sql_m:.0} [{sql_lo:.0}–{sql_hi:.0}] | {} | {} | {:.1}× |",
        us(&sql_latency, 0.5),
        us(&sql_latency, 0.99),
        sql_m / rec_m
    );
    Ok(())
}

/// (median, lowest, highest).
fn summary(values: &mut [f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}
