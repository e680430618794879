//! `bench connector`: the CDC connector (`target/release/connector`) against the physical
//! limits measured in the same run on the same PostgreSQL, table and WAL:
//!
//! - streaming: PostgreSQL's own `pg_recvlogical` (pgoutput, the same publication) reading
//!   the same backlog of committed changes into a discarding pipe, vs the connector reading
//!   that backlog into Kafka;
//! - snapshot: a bare `COPY (SELECT ...) TO STDOUT` of the table, vs the connector's
//!   snapshot into Kafka;
//! - and, with `--debezium-home` (filled by `connector/bench/run.sh` from Maven Central),
//!   Debezium's PostgreSQL connector in Kafka Connect standalone with the settings its
//!   documentation recommends for throughput (stated in the output).
//!
//! Rounds alternate the order of the systems, after one discarded warm-up round; the table
//! shows the median and the range. Kafka-side windows are broker append times (the table's
//! topic is created with `message.timestamp.type=LogAppendTime` before the system starts);
//! commit-to-Kafka latency is append time minus `source.ts_ms` of paced one-row
//! transactions committed with `synchronous_commit=on`. Both streaming sides read a backlog
//! (the writes happen while the reader is stopped), so the writer's speed is not measured.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_postgres::{Client, NoTls};

#[derive(clap::Args)]
pub struct Options {
    /// Rows in the table the snapshots read.
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    /// Changes in the streamed backlog (transactions of 100 inserts + 100 updates).
    #[arg(long, default_value_t = 100_000)]
    changes: u64,
    /// Paced one-row transactions per second for the latency measurement.
    #[arg(long, default_value_t = 100)]
    latency_rate: u64,
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Measured rounds (after one discarded warm-up round), alternating the order.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// The connector binary.
    #[arg(long, default_value = "target/release/connector")]
    connector_bin: PathBuf,
    /// Directory with `connect-lib/` and `plugins/` (`connector/bench/run.sh` fills it):
    /// also run Debezium. Without it the Debezium column says "not run".
    #[arg(long)]
    debezium_home: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum System {
    Connector,
    Baseline,
    Debezium,
}

/// One round's figures of one system; `NAN` where it does not apply.
#[derive(Debug, Clone, Copy)]
struct Figures {
    snapshot_rows_per_s: f64,
    changes_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_mib: f64,
    cpu_s_per_100k: f64,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            snapshot_rows_per_s: f64::NAN,
            changes_per_s: f64::NAN,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            peak_rss_mib: f64::NAN,
            cpu_s_per_100k: f64::NAN,
        }
    }
}

const DB: &str = "connector_bench";

/// Debezium's throughput settings, as its documentation recommends them.
const DEBEZIUM_TUNING: &[(&str, &str)] = &[
    ("poll.interval.ms", "10"),
    ("max.batch.size", "8192"),
    ("max.queue.size", "32768"),
];
const DEBEZIUM_PRODUCER: &[(&str, &str)] = &[
    ("producer.batch.size", "262144"),
    ("producer.linger.ms", "5"),
    ("producer.max.in.flight.requests.per.connection", "5"),
    ("producer.enable.idempotence", "true"),
    ("producer.acks", "all"),
];
const DEBEZIUM_HEAP: &str = "1g";

struct Ctx {
    o: Options,
    kafka: String,
    admin_url: String,
    url: String,
}

pub async fn run(mut o: Options) -> Result<()> {
    let kafka: topics::settings::KafkaSettings = topics::settings::load("bench")?;
    let admin_url = std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://platform:platform@127.0.0.1:5432/platform".into());
    if !o.connector_bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p connector`",
            o.connector_bin.display()
        );
    }
    // The processes run in directories of their own.
    o.connector_bin = o.connector_bin.canonicalize()?;
    if let Some(home) = &o.debezium_home {
        o.debezium_home = Some(home.canonicalize()?);
    }
    let admin = connect(&admin_url).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .await?;
    let url = with_database(&admin_url, DB);
    let ctx = Ctx {
        o,
        kafka: kafka.kafka_bootstrap_servers,
        admin_url,
        url,
    };
    let mut systems = vec![System::Connector, System::Baseline];
    if ctx.o.debezium_home.is_some() {
        systems.push(System::Debezium);
    }
    let mut results: Vec<(System, Vec<Figures>)> =
        systems.iter().map(|s| (*s, Vec::new())).collect();
    let outcome = async {
        for round in 0..=ctx.o.rounds {
            let mut order = systems.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for system in order {
                let f = measure(&ctx, system).await?;
                let label = if round == 0 {
                    "warm-up (discarded)".to_string()
                } else {
                    format!("round {round}/{}", ctx.o.rounds)
                };
                eprintln!("{label} {system:?}: {f:?}");
                if round > 0 {
                    let slot = results.iter_mut().find(|(s, _)| *s == system);
                    slot.expect("a listed system").1.push(f);
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let admin = connect(&ctx.admin_url).await?;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await;
    outcome?;
    print!("{}", table(&ctx.o, &results));
    Ok(())
}

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((_, host)) => format!("postgres://…@{host}"),
        None => url.to_string(),
    }
}

/// `postgres://u:p@h:port/db?x` with the database replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let cut = base.rfind('/').unwrap_or(base.len());
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{db}{q}", &base[..cut])
}

/// `median (min–max)` of the finite values.
fn summary(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

fn cell(values: &[f64]) -> String {
    match summary(values) {
        None => "-".into(),
        Some((m, lo, hi)) if m >= 100.0 => format!("{m:.0} ({lo:.0}–{hi:.0})"),
        Some((m, lo, hi)) => format!("{m:.1} ({lo:.1}–{hi:.1})"),
    }
}

fn table(o: &Options, results: &[(System, Vec<Figures>)]) -> String {
    let get = |s: System, f: fn(&Figures) -> f64| -> Vec<f64> {
        results
            .iter()
            .find(|(x, _)| *x == s)
            .map(|(_, v)| v.iter().map(f).collect())
            .unwrap_or_default()
    };
    let median = |v: &[f64]| summary(v).map(|s| s.0);
    let mut out = format!(
        "workload: snapshot of {} rows; a backlog of {} changes (transactions of 100 inserts + \
         100 updates) read by each streaming side; latency: {} one-row transactions/s for {} s; \
         {} rounds after one discarded warm-up, alternating order; median (min–max)\n\
         baselines: streaming = pg_recvlogical -P pgoutput (same publication) into a discarding \
         pipe; snapshot = COPY (SELECT ...) TO STDOUT read by a client\n\
         CDC rates: first to last broker append time (LogAppendTime) of the records, which the \
         harness reads only once all are appended (it does not consume alongside)\n",
        o.rows, o.changes, o.latency_rate, o.latency_secs, o.rounds
    );
    let debezium = o.debezium_home.is_some();
    if debezium {
        let tuning: Vec<String> = DEBEZIUM_TUNING
            .iter()
            .chain(DEBEZIUM_PRODUCER)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!(
            "Debezium 3.6.1 (Connect standalone, JsonConverter schemas off): {}, -Xms{DEBEZIUM_HEAP} -Xmx{DEBEZIUM_HEAP}\n",
            tuning.join(", ")
        ));
    }
    out.push_str("\n| metric | connector | baseline | connector / baseline | goal | Debezium |\n|---|---|---|---|---|---|\n");
    type Row = (&'static str, fn(&Figures) -> f64, &'static str, bool);
    let rows: [Row; 6] = [
        (
            "streaming changes/s",
            |f| f.changes_per_s,
            "≥ 0.8× pg_recvlogical",
            true,
        ),
        (
            "snapshot rows/s",
            |f| f.snapshot_rows_per_s,
            "≥ 0.5× COPY",
            true,
        ),
        ("commit→Kafka p50 (ms)", |f| f.p50_ms, "", false),
        ("commit→Kafka p99 (ms)", |f| f.p99_ms, "≤ 20 ms", false),
        ("peak RSS (MiB)", |f| f.peak_rss_mib, "", false),
        (
            "CPU-seconds per 100k changes",
            |f| f.cpu_s_per_100k,
            "",
            false,
        ),
    ];
    for (name, f, goal, ratio) in rows {
        let ours = get(System::Connector, f);
        let base = get(System::Baseline, f);
        let r = match (ratio, median(&ours), median(&base)) {
            (true, Some(a), Some(b)) => format!("{:.2}×", a / b),
            _ => "-".into(),
        };
        let met = match (name, median(&ours), median(&base)) {
            ("streaming changes/s", Some(a), Some(b)) => mark(a >= 0.8 * b),
            ("snapshot rows/s", Some(a), Some(b)) => mark(a >= 0.5 * b),
            ("commit→Kafka p99 (ms)", Some(a), _) => mark(a <= 20.0),
            _ => "",
        };
        let dbz = if debezium {
            cell(&get(System::Debezium, f))
        } else {
            "not run".into()
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {r} | {goal}{met} | {dbz} |\n",
            cell(&ours),
            cell(&base),
        ));
    }
    out
}

fn mark(ok: bool) -> &'static str {
    if ok {
        " (met)"
    } else {
        " (missed)"
    }
}

async fn seed(client: &Client, rows: u64) -> Result<()> {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS bench;
             CREATE TABLE bench (id bigint PRIMARY KEY, v int NOT NULL, s text, n numeric(12,2), ts timestamptz);
             INSERT INTO bench SELECT g, g, 'row ' || g, g / 100.0, now() FROM generate_series(1, {rows}) g;"
        ))
        .await?;
    // A statement of its own: VACUUM cannot run inside the batch's implicit transaction.
    client.batch_execute("VACUUM ANALYZE bench").await?;
    Ok(())
}

/// Commits the streaming backlog: `changes` changes in transactions of 100 inserts (ids past
/// `rows`) and 100 updates.
async fn write_backlog(client: &Client, rows: u64, changes: u64) -> Result<u64> {
    let txns = changes.div_ceil(200);
    for t in 0..txns {
        let lo = rows + 1 + t * 100;
        client
            .batch_execute(&format!(
                "BEGIN;
                 INSERT INTO bench SELECT g, g, 'new ' || g, g / 7.0, now() FROM generate_series({lo}, {}) g;
                 UPDATE bench SET v = v + 1 WHERE id BETWEEN {} AND {};
                 COMMIT;",
                lo + 99,
                1 + t * 100,
                t * 100 + 100
            ))
            .await?;
    }
    Ok(txns * 200)
}

struct Names {
    prefix: String,
    slot: String,
    publication: String,
    dir: PathBuf,
}

fn names(system: System) -> Result<Names> {
    let id = format!("{:x}", uuid::Uuid::new_v4().as_u64_pair().0 & 0xff_ffff);
    let kind = format!("{system:?}").to_lowercase();
    let prefix = format!("bench{kind}{id}");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir)?;
    Ok(Names {
        slot: format!("bench_{id}"),
        publication: format!("bench_{id}"),
        prefix,
        dir,
    })
}

async fn measure(ctx: &Ctx, system: System) -> Result<Figures> {
    let client = connect(&ctx.url).await?;
    seed(&client, ctx.o.rows).await?;
    let n = names(system)?;
    let result = match system {
        System::Baseline => baseline(ctx, &client, &n).await,
        System::Connector | System::Debezium => cdc(ctx, &client, &n, system).await,
    };
    // Whatever happened: no slot left holding WAL, no topics left on the shared broker.
    let _ = client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = $1 AND NOT active",
            &[&n.slot],
        )
        .await;
    let _ = client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", n.publication))
        .await;
    delete_topics(&ctx.kafka, &n.prefix).await;
    let _ = std::fs::remove_dir_all(&n.dir);
    result
}

/// The limits: COPY of the table, and pg_recvlogical reading the backlog.
async fn baseline(ctx: &Ctx, client: &Client, n: &Names) -> Result<Figures> {
    let started = Instant::now();
    let copy = client
        .copy_out("COPY (SELECT id, v, s, n, ts FROM bench) TO STDOUT")
        .await?;
    futures::pin_mut!(copy);
    let mut bytes = 0usize;
    while let Some(chunk) = copy.next().await {
        bytes += chunk?.len();
    }
    let copy_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(bytes > 0, "COPY returned nothing");

    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE bench",
            n.publication
        ))
        .await?;
    // A slot cannot be created in a transaction that wrote: a statement of its own.
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&n.slot],
        )
        .await?;
    let changes = write_backlog(client, ctx.o.rows, ctx.o.changes).await?;
    let target: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let mut child = Command::new("pg_recvlogical")
        .args(["-d", &ctx.url, "-S", &n.slot, "-P", "pgoutput"])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={}", n.publication))
        .args(["--start", "--no-loop", "-s", "1", "-f", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pg_recvlogical")?;
    let mut stdout = child.stdout.take().expect("piped");
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let seen2 = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = stdout.read(&mut buf) {
            if k == 0 {
                break;
            }
            let now = Instant::now();
            let mut s = seen2.lock().expect("poisoned");
            s.0.get_or_insert(now);
            s.1 = Some(now);
            s.2 += k;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let reached = loop {
        let row = client
            .query_opt(
                "SELECT r.sent_lsn >= $2::text::pg_lsn FROM pg_replication_slots s
                   JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1",
                &[&n.slot, &target],
            )
            .await?;
        if row.is_some_and(|r| r.get::<_, Option<bool>>(0) == Some(true)) {
            break true;
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The last messages are in the pipe by now or a moment later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    anyhow::ensure!(reached, "pg_recvlogical did not reach {target}");
    let (first, last, _) = *seen.lock().expect("poisoned");
    let (Some(first), Some(last)) = (first, last) else {
        bail!("pg_recvlogical received nothing");
    };
    Ok(Figures {
        snapshot_rows_per_s: ctx.o.rows as f64 / copy_s,
        changes_per_s: changes as f64 / (last - first).as_secs_f64().max(1e-3),
        ..Figures::default()
    })
}

/// (first byte, last byte, bytes) as the discarding reader of pg_recvlogical saw them.
type Seen = (Option<Instant>, Option<Instant>, usize);

/// A running connector or Kafka Connect worker.
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then at most 30 s for a clean exit, then SIGKILL.
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(ctx: &Ctx, n: &Names, system: System) -> Result<Proc> {
    let child = match system {
        System::Connector => Command::new(&ctx.o.connector_bin)
            .current_dir(&n.dir)
            .env_remove("CONNECTOR_CONFIG")
            .env(
                "RUST_LOG",
                std::env::var("CONNECTOR_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("POSTGRES_URL", &ctx.url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &ctx.kafka)
            .env("CONNECTOR_NAME", &n.prefix)
            .env("CONNECTOR_SLOT_NAME", &n.slot)
            .env("CONNECTOR_PUBLICATION_NAME", &n.publication)
            .env("CONNECTOR_TABLES", "public.bench")
            .env("CONNECTOR_FORMAT", "json")
            .env("CONNECTOR_DECIMAL_HANDLING", "string")
            .env("CONNECTOR_OFFSETS_TOPIC", format!("{}.offsets", n.prefix))
            .arg("run")
            .stdout(Stdio::null())
            .spawn(),
        System::Debezium => {
            let home = ctx
                .o
                .debezium_home
                .as_ref()
                .expect("Debezium runs with a home");
            debezium_files(ctx, n, home)?;
            Command::new("java")
                .current_dir(&n.dir)
                .arg(format!("-Xms{DEBEZIUM_HEAP}"))
                .arg(format!("-Xmx{DEBEZIUM_HEAP}"))
                .arg(format!(
                    "-Dlog4j2.configurationFile={}/log4j2.properties",
                    n.dir.display()
                ))
                .arg(format!(
                    "-Dlog4j.configuration=file:{}/log4j.properties",
                    n.dir.display()
                ))
                .arg("-cp")
                .arg(format!("{}/connect-lib/*", home.display()))
                .arg("org.apache.kafka.connect.cli.ConnectStandalone")
                .arg(n.dir.join("worker.properties"))
                .arg(n.dir.join("connector.properties"))
                .stdout(Stdio::null())
                .spawn()
        }
        System::Baseline => unreachable!("the baseline is not a process of its own"),
    }
    .with_context(|| format!("starting {system:?}"))?;
    Ok(Proc { child })
}

fn debezium_files(ctx: &Ctx, n: &Names, home: &Path) -> Result<()> {
    let pg: tokio_postgres::Config = ctx.url.parse()?;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).to_string())
        .unwrap_or_default();
    let producer: String = DEBEZIUM_PRODUCER
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    std::fs::write(
        n.dir.join("worker.properties"),
        format!(
            "bootstrap.servers={}\nkey.converter=org.apache.kafka.connect.json.JsonConverter\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\n\
             key.converter.schemas.enable=false\nvalue.converter.schemas.enable=false\n\
             offset.storage.file.filename={}/offsets\noffset.flush.interval.ms=1000\n\
             plugin.path={}\nlisteners=http://127.0.0.1:0\n{producer}",
            ctx.kafka,
            n.dir.display(),
            home.join("plugins").display()
        ),
    )?;
    let tuning: String = DEBEZIUM_TUNING
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    std::fs::write(
        n.dir.join("connector.properties"),
        format!(
            "name={}\nconnector.class=io.debezium.connector.postgresql.PostgresConnector\n\
             tasks.max=1\nplugin.name=pgoutput\ndatabase.hostname={host}\ndatabase.port={port}\n\
             database.user={}\ndatabase.password={password}\ndatabase.dbname={DB}\n\
             topic.prefix={}\ntable.include.list=public.bench\nslot.name={}\n\
             publication.name={}\npublication.autocreate.mode=filtered\nsnapshot.mode=initial\n\
             decimal.handling.mode=string\n{tuning}",
            n.prefix,
            pg.get_user().unwrap_or("postgres"),
            n.prefix,
            n.slot,
            n.publication
        ),
    )?;
    std::fs::write(
        n.dir.join("log4j2.properties"),
        "rootLogger.level=WARN\nrootLogger.appenderRef.stderr.ref=STDERR\n\
         appender.stderr.type=Console\nappender.stderr.name=STDERR\nappender.stderr.target=SYSTEM_ERR\n\
         appender.stderr.layout.type=PatternLayout\nappender.stderr.layout.pattern=[%d] %p %m (%c)%n\n",
    )?;
    std::fs::write(
        n.dir.join("log4j.properties"),
        "log4j.rootLogger=WARN, stderr\nlog4j.appender.stderr=org.apache.log4j.ConsoleAppender\n\
         log4j.appender.stderr.Target=System.err\nlog4j.appender.stderr.layout=org.apache.log4j.PatternLayout\n\
         log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n\n",
    )?;
    Ok(())
}

/// The connector or Debezium: snapshot, then (stopped) a backlog written, then restarted to
/// read it, then paced latency.
async fn cdc(ctx: &Ctx, client: &Client, n: &Names, system: System) -> Result<Figures> {
    let topic = format!("{}.public.bench", n.prefix);
    create_topic(&ctx.kafka, &topic).await?;
    let consumer = consumer(&ctx.kafka, &topic)?;
    let long = Duration::from_secs(1800);
    let mut f = Figures::default();

    let first = start(ctx, n, system)?;
    let snap = tokio::task::block_in_place(|| {
        appended(&consumer, &topic, 0, ctx.o.rows, long)?;
        collect(&consumer, ctx.o.rows, long, "r", None)
    })?;
    f.snapshot_rows_per_s = ctx.o.rows as f64 / window_s(&snap);
    // Streaming from the slot (Debezium streams only once its snapshot is committed).
    wait_streaming(client, &n.slot).await?;
    let mut rss = peak_rss_mib(first.pid());
    first.stop().await;
    wait_inactive(client, &n.slot).await?;

    let changes = write_backlog(client, ctx.o.rows, ctx.o.changes).await?;
    let before = tokio::task::block_in_place(|| high_watermark(&consumer, &topic))?;
    let second = start(ctx, n, system)?;
    let burst = tokio::task::block_in_place(|| {
        appended(&consumer, &topic, before, changes, long)?;
        collect(&consumer, changes, long, "c", Some("u"))
    })?;
    f.changes_per_s = changes as f64 / window_s(&burst);
    f.cpu_s_per_100k = cpu_seconds(second.pid()) * 100_000.0 / changes as f64;

    let lat_client = connect(&ctx.url).await?;
    // The dev server runs with synchronous_commit=off, which leaves a commit invisible to
    // walsenders until the WAL writer's next round; production-like sessions flush at commit.
    lat_client
        .batch_execute("SET synchronous_commit = on")
        .await?;
    let count = ctx.o.latency_rate * ctx.o.latency_secs;
    let lo = ctx.o.rows + changes + 1_000_000;
    let rate = ctx.o.latency_rate.max(1);
    let pacer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        for i in 0..count {
            tick.tick().await;
            lat_client
                .batch_execute(&format!(
                    "INSERT INTO bench VALUES ({}, 0, 'lat', 0, now())",
                    lo + i
                ))
                .await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    });
    let lat =
        tokio::task::block_in_place(|| collect_values(&consumer, count, long, "\"s\":\"lat\""))?;
    pacer.await??;
    let mut ms: Vec<f64> = lat
        .iter()
        .filter_map(|(append, v)| {
            let commit = v["source"]["ts_ms"].as_i64()?;
            Some((append - commit) as f64)
        })
        .collect();
    anyhow::ensure!(!ms.is_empty(), "no latency sample");
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    f.p50_ms = pct(0.50);
    f.p99_ms = pct(0.99);
    rss = rss.max(peak_rss_mib(second.pid()));
    f.peak_rss_mib = rss;
    second.stop().await;
    wait_inactive(client, &n.slot).await?;
    Ok(f)
}

/// Seconds between the first and the last broker append time.
fn window_s(appends: &[i64]) -> f64 {
    let (lo, hi) = appends
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    ((hi - lo) as f64 / 1000.0).max(1e-3)
}

/// The topic, created before the system starts, with broker append times.
async fn create_topic(bootstrap: &str, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create()?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1))
        .set("message.timestamp.type", "LogAppendTime");
    for r in admin.create_topics([&new], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
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

fn high_watermark(c: &BaseConsumer, topic: &str) -> Result<i64> {
    Ok(c.fetch_watermarks(topic, 0, Duration::from_secs(10))?.1)
}

/// Waits (asking the broker for the high watermark every 20 ms) until `want` records were
/// appended after offset `from`. The records are read only afterwards: a consumer reading
/// them as they come would take CPU from the system under test on the two shared cores, and
/// the window is taken from the broker's append times anyway.
fn appended(c: &BaseConsumer, topic: &str, from: i64, want: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let high = high_watermark(c, topic)?;
        if high - from >= want as i64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {want} records were appended",
            high - from
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn has(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Polls until `want` records with op `op` (or `or_op`) arrived; returns their broker append
/// times. Matched on bytes: the harness shares the two cores with the systems under test.
fn collect(
    c: &BaseConsumer,
    want: u64,
    timeout: Duration,
    op: &str,
    or_op: Option<&str>,
) -> Result<Vec<i64>> {
    let a = format!("\"op\":\"{op}\"").into_bytes();
    let b = or_op.map(|o| format!("\"op\":\"{o}\"").into_bytes());
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(want as usize);
    while (out.len() as u64) < want {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {want} records arrived",
            out.len()
        );
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Some(p) = m.payload() else { continue };
        if has(p, &a) || b.as_ref().is_some_and(|b| has(p, b)) {
            out.push(m.timestamp().to_millis().unwrap_or(0));
        }
    }
    Ok(out)
}

/// Like [`collect`] for `c` records containing `marker`, with their parsed value.
fn collect_values(
    c: &BaseConsumer,
    want: u64,
    timeout: Duration,
    marker: &str,
) -> Result<Vec<(i64, serde_json::Value)>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(want as usize);
    while (out.len() as u64) < want {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {want} latency records arrived",
            out.len()
        );
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Some(p) = m.payload() else { continue };
        if !has(p, b"\"op\":\"c\"") || !has(p, marker.as_bytes()) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(p)?;
        // Debezium's JsonConverter wraps as {schema, payload} when schemas are on.
        let v = if v.get("payload").is_some() {
            v["payload"].clone()
        } else {
            v
        };
        out.push((m.timestamp().to_millis().unwrap_or(0), v));
    }
    Ok(out)
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User + system CPU seconds the process used so far (children included).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime, stime are fields 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12, 13, 14]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0 // USER_HZ
}

async fn wait_streaming(client: &Client, slot: &str) -> Result<()> {
    wait_slot(client, slot, true).await
}

async fn wait_inactive(client: &Client, slot: &str) -> Result<()> {
    wait_slot(client, slot, false).await
}

async fn wait_slot(client: &Client, slot: &str, streaming: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let row = client
            .query_opt(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_replication r WHERE r.pid = s.active_pid
                                   AND r.state IN ('catchup', 'streaming'))
                   FROM pg_replication_slots s WHERE s.slot_name = $1",
                &[&slot],
            )
            .await?;
        if row.map_or(!streaming, |r| r.get::<_, bool>(0) == streaming) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "slot {slot} never became {}",
            if streaming { "streamed" } else { "idle" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The broker is shared: remove every topic this run created.
async fn delete_topics(bootstrap: &str, prefix: &str) {
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let Ok(md) = admin.inner().fetch_metadata(None, Duration::from_secs(5)) else {
        return;
    };
    let topics: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|t| t.starts_with(prefix))
        .collect();
    if !topics.is_empty() {
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&refs, &AdminOptions::new()).await;
    }
}
