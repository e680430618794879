//! `connector bench`: this connector and Debezium's PostgreSQL connector (in
//! Kafka Connect standalone) side by side, one after the other, on the same
//! PostgreSQL, broker and workload. Both publish JSON without embedded
//! schemas (Debezium's JsonConverter with `schemas.enable=false`), so the
//! work per record is comparable.
//!
//! Measured per system: snapshot rows/s (first to last snapshot record seen
//! by a consumer), streaming changes/s (a burst of large transactions,
//! first to last change seen), commit-to-Kafka latency (paced one-row
//! transactions, consumer receive time minus `source.ts_ms`), peak RSS
//! (`VmHWM` of the process).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value as Json;
use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::pg;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub rows: u64,
    pub changes: u64,
    pub latency_rate: u64,
    pub latency_secs: u64,
    /// Rounds per system; the table shows medians.
    pub rounds: u32,
    /// Directory with `connect-lib/` and `plugins/` (see `bench/run.sh`);
    /// `None` benchmarks only this connector.
    pub debezium_home: Option<PathBuf>,
}

#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub snapshot_rows_per_s: f64,
    pub snapshot_wall_s: f64,
    pub changes_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub peak_rss_mib: f64,
}

enum System {
    Ours,
    Debezium(PathBuf),
}

struct Run {
    child: Child,
    prefix: String,
    slot: String,
    publication: String,
    _dir: PathBuf,
}

const DB: &str = "connector_bench";

pub async fn run(cfg: &Config, args: &BenchArgs) -> Result<String> {
    let admin = pg::connect(cfg).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .await?;
    let mut bench_cfg = cfg.clone();
    bench_cfg.postgres_url = replace_db(&cfg.postgres_url, DB);
    // Alternate the systems round by round so that background load on the
    // shared machine hits both alike; report the median of each metric.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut failure = None;
    for round in 1..=args.rounds.max(1) {
        eprintln!("round {round}/{}", args.rounds.max(1));
        match measure(&bench_cfg, args, System::Ours).await {
            Ok(f) => {
                eprintln!("round {round} connector: {f:?}");
                ours.push(f)
            }
            Err(e) => failure = Some(e),
        }
        if let Some(home) = &args.debezium_home {
            match measure(&bench_cfg, args, System::Debezium(home.clone())).await {
                Ok(f) => {
                    eprintln!("round {round} debezium: {f:?}");
                    theirs.push(f)
                }
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_some() {
            break;
        }
    }
    drop(admin);
    let admin = pg::connect(cfg).await?;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await;
    if let Some(e) = failure {
        return Err(e);
    }
    let theirs = (!theirs.is_empty()).then(|| median(&theirs));
    Ok(table(args, &median(&ours), theirs.as_ref()))
}

fn median(runs: &[Figures]) -> Figures {
    let m = |get: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(get).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Figures {
        snapshot_rows_per_s: m(|f| f.snapshot_rows_per_s),
        snapshot_wall_s: m(|f| f.snapshot_wall_s),
        changes_per_s: m(|f| f.changes_per_s),
        latency_p50_ms: m(|f| f.latency_p50_ms),
        latency_p99_ms: m(|f| f.latency_p99_ms),
        peak_rss_mib: m(|f| f.peak_rss_mib),
    }
}

fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let cut = base.rfind('/').unwrap_or(base.len());
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{db}{q}", &base[..cut])
}

fn table(args: &BenchArgs, ours: &Figures, theirs: Option<&Figures>) -> String {
    let mut out = format!(
        "workload: snapshot {} rows; streaming {} changes (txns of 200); latency {} txn/s for {} s; \
         median of {} round(s)\n\n",
        args.rows,
        args.changes,
        args.latency_rate,
        args.latency_secs,
        args.rounds.max(1)
    );
    out.push_str(
        "| metric | connector | Debezium 2.7 (Connect standalone) | ratio |\n|---|---|---|---|\n",
    );
    let rows: [(&str, f64, Option<f64>, bool); 6] = [
        (
            "snapshot rows/s",
            ours.snapshot_rows_per_s,
            theirs.map(|t| t.snapshot_rows_per_s),
            true,
        ),
        (
            "snapshot wall time incl. startup (s)",
            ours.snapshot_wall_s,
            theirs.map(|t| t.snapshot_wall_s),
            false,
        ),
        (
            "streaming changes/s",
            ours.changes_per_s,
            theirs.map(|t| t.changes_per_s),
            true,
        ),
        (
            "commit→Kafka latency p50 (ms)",
            ours.latency_p50_ms,
            theirs.map(|t| t.latency_p50_ms),
            false,
        ),
        (
            "commit→Kafka latency p99 (ms)",
            ours.latency_p99_ms,
            theirs.map(|t| t.latency_p99_ms),
            false,
        ),
        (
            "peak RSS (MiB)",
            ours.peak_rss_mib,
            theirs.map(|t| t.peak_rss_mib),
            false,
        ),
    ];
    for (name, a, b, higher_better) in rows {
        let (b_s, ratio) = match b {
            Some(b) => {
                let r = if higher_better { a / b } else { b / a };
                (
                    format!("{b:.1}"),
                    format!("{r:.2}× {}", if r >= 1.0 { "better" } else { "worse" }),
                )
            }
            None => ("not run".into(), "-".into()),
        };
        out.push_str(&format!("| {name} | {a:.1} | {b_s} | {ratio} |\n"));
    }
    out
}

async fn seed(client: &Client, rows: u64) -> Result<()> {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS bench;
             CREATE TABLE bench (id bigint PRIMARY KEY, v int NOT NULL, s text, n numeric(12,2), ts timestamptz);
             INSERT INTO bench SELECT g, g, 'row ' || g, g / 100.0, now() FROM generate_series(1, {rows}) g;"
        ))
        .await?;
    client.batch_execute("VACUUM ANALYZE bench").await?;
    Ok(())
}

fn consumer(bootstrap: &str, topic: &str) -> Result<BaseConsumer> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("log_level", "0")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    c.assign(&tpl)?;
    Ok(c)
}

/// Polls until `want` records with one of `ops` (and containing `marker`)
/// arrived; returns their receive instants (monotonic and wall-clock ms)
/// and, with `keep`, the parsed value. Records are matched on their bytes so
/// that the harness, which shares the machine's two cores with the systems
/// under test, spends as little CPU as possible.
fn collect(
    c: &BaseConsumer,
    want: u64,
    timeout: Duration,
    ops: &[&str],
    marker: Option<&str>,
    keep: bool,
) -> Result<Vec<(Instant, i64, Option<Json>)>> {
    let deadline = Instant::now() + timeout;
    let patterns: Vec<Vec<u8>> = ops
        .iter()
        .map(|o| format!("\"op\":\"{o}\"").into_bytes())
        .collect();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let mut out = Vec::with_capacity(want as usize);
    while (out.len() as u64) < want {
        if Instant::now() > deadline {
            return Err(Error::Kafka(format!(
                "bench: only {} of {want} records arrived",
                out.len()
            )));
        }
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(m) = m else { continue };
        let Some(p) = m.payload() else { continue };
        let now = Instant::now();
        let wall = chrono::Utc::now().timestamp_millis();
        if !patterns.iter().any(|pat| contains(p, pat)) {
            continue;
        }
        if marker.is_some_and(|mk| !contains(p, mk.as_bytes())) {
            continue;
        }
        let v = keep.then(|| {
            let v: Json = serde_json::from_slice(p).unwrap_or(Json::Null);
            // Debezium's JsonConverter wraps as {schema, payload} when schemas are on.
            if v.get("payload").is_some() {
                v["payload"].clone()
            } else {
                v
            }
        });
        out.push((now, wall, v));
    }
    Ok(out)
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn spawn(cfg: &Config, system: &System) -> Result<Run> {
    let id = format!("{:x}", uuid::Uuid::new_v4().as_u64_pair().0 & 0xffffff);
    let prefix = format!("bench{id}");
    let slot = format!("bench_{id}");
    let publication = format!("bench_{id}");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Config(e.to_string()))?;
    let child = match system {
        System::Ours => Command::new(std::env::current_exe().map_err(|e| Error::Config(e.to_string()))?)
            .current_dir(&dir)
            .env_remove("CONNECTOR_CONFIG")
            .env("RUST_LOG", std::env::var("CONNECTOR_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .env("POSTGRES_URL", &cfg.postgres_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &cfg.kafka_bootstrap_servers)
            .env("CONNECTOR_NAME", &prefix)
            .env("CONNECTOR_SLOT_NAME", &slot)
            .env("CONNECTOR_PUBLICATION_NAME", &publication)
            .env("CONNECTOR_TABLES", "public.bench")
            .env("CONNECTOR_FORMAT", "json")
            .env("CONNECTOR_OFFSETS_TOPIC", format!("{prefix}.offsets"))
            .arg("run")
            .stdout(Stdio::null())
            .spawn(),
        System::Debezium(home) => {
            let pg: tokio_postgres::Config = cfg
                .postgres_url
                .parse()
                .map_err(|e| Error::Config(format!("{e}")))?;
            let host = match pg.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => "127.0.0.1".into(),
            };
            let port = pg.get_ports().first().copied().unwrap_or(5432);
            let password = pg.get_password().map(|p| String::from_utf8_lossy(p).to_string()).unwrap_or_default();
            write(&dir.join("worker.properties"), &format!(
                "bootstrap.servers={}\nkey.converter=org.apache.kafka.connect.json.JsonConverter\n\
                 value.converter=org.apache.kafka.connect.json.JsonConverter\nkey.converter.schemas.enable=false\n\
                 value.converter.schemas.enable=false\noffset.storage.file.filename={}/offsets\n\
                 offset.flush.interval.ms=1000\nplugin.path={}\nlisteners=http://127.0.0.1:0\n\
                 producer.enable.idempotence=true\nproducer.acks=all\nproducer.linger.ms={}\n\
                 producer.compression.type=lz4\n",
                cfg.kafka_bootstrap_servers, dir.display(), home.join("plugins").display(), cfg.linger_ms
            ))?;
            write(&dir.join("connector.properties"), &format!(
                "name={prefix}\nconnector.class=io.debezium.connector.postgresql.PostgresConnector\ntasks.max=1\n\
                 plugin.name=pgoutput\ndatabase.hostname={host}\ndatabase.port={port}\ndatabase.user={}\n\
                 database.password={password}\ndatabase.dbname={DB}\ntopic.prefix={prefix}\n\
                 table.include.list=public.bench\nslot.name={slot}\npublication.name={publication}\n\
                 publication.autocreate.mode=filtered\nsnapshot.mode=initial\ndecimal.handling.mode=string\n\
                 topic.creation.default.replication.factor=1\ntopic.creation.default.partitions=1\n",
                pg.get_user().unwrap_or("postgres")
            ))?;
            write(&dir.join("log4j.properties"),
                "log4j.rootLogger=WARN, stderr\nlog4j.appender.stderr=org.apache.log4j.ConsoleAppender\n\
                 log4j.appender.stderr.Target=System.err\nlog4j.appender.stderr.layout=org.apache.log4j.PatternLayout\n\
                 log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n\n")?;
            Command::new("java")
                .current_dir(&dir)
                .arg(format!("-Dlog4j.configuration=file:{}/log4j.properties", dir.display()))
                .arg("-cp")
                .arg(format!("{}/connect-lib/*", home.display()))
                .arg("org.apache.kafka.connect.cli.ConnectStandalone")
                .arg(dir.join("worker.properties"))
                .arg(dir.join("connector.properties"))
                .stdout(Stdio::null())
                .spawn()
        }
    }
    .map_err(|e| Error::Config(format!("cannot start benchmark process: {e}")))?;
    Ok(Run {
        child,
        prefix,
        slot,
        publication,
        _dir: dir,
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

async fn wait_topic(bootstrap: &str, topic: &str, timeout: Duration) -> Result<()> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(2)) {
            if md
                .topics()
                .iter()
                .any(|t| t.error().is_none() && !t.partitions().is_empty())
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Kafka(format!("bench: topic {topic} never appeared")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn measure(cfg: &Config, args: &BenchArgs, system: System) -> Result<Figures> {
    let client = pg::connect(cfg).await?;
    seed(&client, args.rows).await?;
    let started = Instant::now();
    let mut run = spawn(cfg, &system)?;
    let name = match &system {
        System::Ours => "connector",
        System::Debezium(_) => "debezium",
    };
    let result = async {
        let topic = format!("{}.public.bench", run.prefix);
        wait_topic(&cfg.kafka_bootstrap_servers, &topic, Duration::from_secs(300)).await?;
        let c = consumer(&cfg.kafka_bootstrap_servers, &topic)?;
        let long = Duration::from_secs(1800);
        let snap = tokio::task::block_in_place(|| collect(&c, args.rows, long, &["r"], None, false))?;
        let (first, last) = (snap.first().expect("rows").0, snap.last().expect("rows").0);
        let mut f = Figures {
            snapshot_rows_per_s: args.rows as f64 / (last - first).as_secs_f64().max(1e-3),
            snapshot_wall_s: (last - started).as_secs_f64(),
            ..Default::default()
        };
        eprintln!("{name}: snapshot done");
        // Debezium only streams once its snapshot is committed; let it settle.
        wait_streaming(&client, &run.slot).await?;

        // Streaming burst: transactions of 100 inserts + 100 updates.
        let txns = args.changes.div_ceil(200);
        let base = args.rows + 1;
        let writer_client = pg::connect(cfg).await?;
        let writer = tokio::spawn(async move {
            for t in 0..txns {
                let lo = base + t * 100;
                let sql = format!(
                    "BEGIN; INSERT INTO bench SELECT g, g, 'new ' || g, g / 7.0, now() FROM generate_series({lo}, {}) g;
                     UPDATE bench SET v = v + 1 WHERE id BETWEEN {} AND {}; COMMIT;",
                    lo + 99, 1 + t * 100, t * 100 + 100
                );
                writer_client.batch_execute(&sql).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        });
        let want = txns * 200;
        let changes = tokio::task::block_in_place(|| collect(&c, want, long, &["c", "u"], None, false))?;
        writer.await.map_err(|e| Error::Config(e.to_string()))??;
        let (first, last) = (changes.first().expect("changes").0, changes.last().expect("changes").0);
        f.changes_per_s = want as f64 / (last - first).as_secs_f64().max(1e-3);
        eprintln!("{name}: streaming burst done");

        // Latency: paced single-row transactions.
        let n = args.latency_rate * args.latency_secs;
        let lat_client = pg::connect(cfg).await?;
        // The dev server runs with synchronous_commit=off, which leaves a commit
        // invisible to walsenders until the WAL writer's next round (up to
        // wal_writer_delay); a production-like session flushes at commit.
        lat_client.batch_execute("SET synchronous_commit = on").await?;
        let lo = base + txns * 100 + 1;
        let rate = args.latency_rate;
        let pacer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            for i in 0..n {
                tick.tick().await;
                lat_client
                    .batch_execute(&format!("INSERT INTO bench VALUES ({}, 0, 'lat', 0, now())", lo + i))
                    .await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        });
        let lat = tokio::task::block_in_place(|| {
            collect(&c, n, long, &["c"], Some("\"s\":\"lat\""), true)
        })?;
        pacer.await.map_err(|e| Error::Config(e.to_string()))??;
        let mut ms: Vec<f64> = lat
            .iter()
            .map(|(_, wall, v)| {
                let commit = v.as_ref().and_then(|v| v["source"]["ts_ms"].as_i64());
                (*wall - commit.unwrap_or(*wall)) as f64
            })
            .collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
        f.latency_p50_ms = pct(0.50);
        f.latency_p99_ms = pct(0.99);
        f.peak_rss_mib = peak_rss_mib(run.child.id());
        eprintln!("{name}: latency done");
        Ok::<_, Error>(f)
    }
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &run.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while run.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = run.child.kill();
    let _ = run.child.wait();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = pg::drop_slot(&client, &run.slot).await;
    let _ = client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            pg::quote_ident(&run.publication)
        ))
        .await;
    delete_topics(
        &cfg.kafka_bootstrap_servers,
        &[
            format!("{}.public.bench", run.prefix),
            format!("{}.offsets", run.prefix),
        ],
    )
    .await;
    result
}

/// The broker is shared: do not leave benchmark topics behind.
async fn delete_topics(bootstrap: &str, topics: &[String]) {
    let admin: std::result::Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create();
    if let Ok(admin) = admin {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
    }
}

/// Waits until the slot is being streamed from (Debezium snapshots first).
async fn wait_streaming(client: &Client, slot: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(s) = pg::slot_info(client, slot).await? {
            if s.active {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Replication(format!(
                "bench: slot {slot} never became active"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
