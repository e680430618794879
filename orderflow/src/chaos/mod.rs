//! `orderflow chaos --orders N` (run through `scripts/chaos`): the whole order flow as
//! processes on 127.0.0.1 — commerce's products, customers and orders (API and a separate
//! outbox relay instance), the payment provider, saga, restock, loyalty, audit, and the
//! tracking read model (a projector) — against an ISOLATED Kafka (its own INFRA_HOME and
//! ports; the shared PostgreSQL, MySQL and registry with databases of this run). N orders
//! are placed at a steady rate (each retried with its idempotency key until it has a
//! definitive answer) while a random process is killed with SIGKILL and started again (Kafka
//! too). Then, once quiet, it checks:
//!
//! orders accepted = orders in the database = distinct PLACED audit lines = loyalty ledger
//! entries; no audit line twice; points = the expected sum; every saga finished; per product
//! initial − sold + restocked = current, sold = what live orders hold; nothing oversold;
//! the tracking read model has every order with the database's status, and per customer the
//! same orders, events and hash chain as the order events topic holds. It prints the figures
//! and fails on any mismatch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::configuration::Settings;

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 200)]
    pub orders: usize,
    /// Orders per second.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 8)]
    pub products: usize,
    /// Initial stock of each product.
    #[arg(long, default_value_t = 40)]
    pub stock: i64,
    /// Restock delay (ms) after a product's last sale.
    #[arg(long, default_value_t = 3_000)]
    pub restock_ms: u64,
    /// Items a restock adds.
    #[arg(long, default_value_t = 20)]
    pub restock_quantity: i32,
    /// Mean time between kills (ms).
    #[arg(long, default_value_t = 2_500)]
    pub kill_every_ms: u64,
    /// How long quiescence may take (s).
    #[arg(long, default_value_t = 300)]
    pub settle_secs: u64,
}

fn random_below(n: u64) -> u64 {
    (Uuid::new_v4().as_u128() % u128::from(n.max(1))) as u64
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The isolated Kafka of this run.
struct Kafka {
    home: PathBuf,
    port: u16,
    controller: u16,
}

impl Kafka {
    fn infra(&self, action: &str) -> anyhow::Result<()> {
        let output = std::process::Command::new(repo_root().join("scripts/infra"))
            .args([action, "kafka"])
            .env("INFRA_HOME", &self.home)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller.to_string())
            .output()?;
        if !output.status.success() {
            bail!(
                "scripts/infra {action} kafka: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn kill(&self) -> anyhow::Result<()> {
        let pid = std::fs::read_to_string(self.home.join("run/kafka.pid"))?;
        std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status()?;
        Ok(())
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = self.infra("down");
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// How to start one process of the run.
#[derive(Clone)]
struct Spec {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// `/health` to wait for, if it serves HTTP.
    health: Option<String>,
}

struct Proc {
    spec: Spec,
    child: Option<Child>,
}

impl Proc {
    async fn start(spec: Spec, logs: &Path) -> anyhow::Result<Self> {
        let mut proc = Self { spec, child: None };
        proc.spawn(logs).await?;
        Ok(proc)
    }

    async fn spawn(&mut self, logs: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{}.log", self.spec.name)))?;
        let child = Command::new(&self.spec.program)
            .args(&self.spec.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .envs(self.spec.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.spec.name))?;
        self.child = Some(child);
        if let Some(url) = &self.spec.health {
            let client = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if client
                    .get(url)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} did not answer {url}", self.spec.name);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// One placed order as the client saw it.
#[derive(Debug, Clone)]
struct Placed {
    order_id: Uuid,
    customer: i64,
    product: i64,
    quantity: i64,
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let run = crate::chaos_id();
    let home = std::env::temp_dir().join(format!("orderflow-chaos-{run}"));
    let logs = home.join("logs");
    std::fs::create_dir_all(&logs)?;
    println!(
        "chaos {run}: {} orders at {}/s, logs in {}",
        args.orders,
        args.rate,
        logs.display()
    );

    let kafka = Kafka {
        home: home.join("kafka"),
        port: free_port()?,
        controller: free_port()?,
    };
    kafka.infra("up")?;
    let bootstrap = format!("127.0.0.1:{}", kafka.port);
    let base = crate::configuration::load()?;
    let registry = base.kafka.schema_registry_url.clone();
    let postgres = base.postgres_url.clone();
    let bin = std::env::current_exe()?
        .parent()
        .context("the binary's directory")?
        .to_path_buf();
    let status = std::process::Command::new(bin.join("topics"))
        .arg("apply")
        .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("SCHEMA_REGISTRY_URL", &registry)
        .stdout(Stdio::null())
        .status()
        .context("topics apply (build it: cargo build -p topics)")?;
    anyhow::ensure!(status.success(), "topics apply failed");

    let db = |name: &str| format!("chaos_{run}_{name}");
    let port = |_: &str| free_port();
    let (products_port, customers_port, orders_port, relay_port, payments_port) = (
        port("products")?,
        port("customers")?,
        port("orders")?,
        port("relay")?,
        port("payments")?,
    );
    let tracking_port = port("tracking")?;
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let common = vec![
        ("POSTGRES_URL".to_owned(), postgres.clone()),
        ("KAFKA_BOOTSTRAP_SERVERS".to_owned(), bootstrap.clone()),
        ("SCHEMA_REGISTRY_URL".to_owned(), registry.clone()),
    ];
    let commerce_env = |listen: &[(&str, u16)], relay: bool| {
        let mut env = common.clone();
        env.extend([
            ("PRODUCTS_DATABASE".to_owned(), db("products")),
            ("CUSTOMERS_DATABASE".to_owned(), db("customers")),
            ("ORDERS_DATABASE".to_owned(), db("orders")),
            ("ORDERS_PRODUCTS_URL".to_owned(), url(products_port)),
            ("ORDERS_PRODUCTS_TIMEOUT_MS".to_owned(), "2000".to_owned()),
            ("ORDERS_PENDING_TIMEOUT_MS".to_owned(), "4000".to_owned()),
            ("COMMERCE_SEED".to_owned(), "false".to_owned()),
            ("COMMERCE_POOL_SIZE".to_owned(), "8".to_owned()),
            ("COMMERCE_OUTBOX_RELAY".to_owned(), relay.to_string()),
        ]);
        for (name, p) in listen {
            env.push((format!("{name}_LISTEN_ADDR"), format!("127.0.0.1:{p}")));
        }
        env
    };
    let mut settings = base.clone();
    settings.kafka.kafka_bootstrap_servers = bootstrap.clone();
    settings.orderflow_database = db("flow");
    settings.payments_database = db("payments");
    settings.loyalty_database = db("loyalty");
    settings.customers_url = url(customers_port);
    settings.products_url = url(products_port);
    settings.orders_url = url(orders_port);
    settings.payments_url = url(payments_port);
    settings.payments_listen_addr = format!("127.0.0.1:{payments_port}");
    settings.payments_decline_rate = 0.1;
    settings.payments_error_rate = 0.05;
    settings.payments_latency_ms = 10;
    settings.mail_log = home.join("mail.log");
    settings.audit_dir = home.join("audit");
    settings.restock_delay_ms = args.restock_ms;
    settings.restock_poll_ms = 200;
    settings.restock_quantity = args.restock_quantity;
    settings.orderflow_pool_size = 8;
    settings.saga_group = format!("chaos-{run}-saga");
    settings.loyalty_group = format!("chaos-{run}-loyalty");
    settings.audit_group = format!("chaos-{run}-audit");
    settings.retry_max_backoff_ms = 1_000;
    settings.tracking_listen_addr = format!("127.0.0.1:{tracking_port}");
    settings.tracking_group = format!("chaos-{run}-tracking");
    settings.tracking_namespace = format!("chaos_{run}_tracking");
    let flow_env = settings.environment();
    let commerce = bin.join("commerce");
    let orderflow = bin.join("orderflow");
    let spec = |name: &'static str,
                program: &Path,
                arg: &str,
                env: Vec<(String, String)>,
                health: Option<u16>| Spec {
        name,
        program: program.to_path_buf(),
        args: vec![arg.to_owned()],
        env,
        health: health.map(|p| format!("{}/health", url(p))),
    };
    let specs = vec![
        spec(
            "products",
            &commerce,
            "products",
            commerce_env(&[("PRODUCTS", products_port)], true),
            Some(products_port),
        ),
        spec(
            "customers",
            &commerce,
            "customers",
            commerce_env(&[("CUSTOMERS", customers_port)], false),
            Some(customers_port),
        ),
        spec(
            "orders",
            &commerce,
            "orders",
            commerce_env(&[("ORDERS", orders_port)], false),
            Some(orders_port),
        ),
        spec(
            "relay",
            &commerce,
            "orders",
            commerce_env(&[("ORDERS", relay_port)], true),
            Some(relay_port),
        ),
        spec(
            "payments",
            &orderflow,
            "payments",
            flow_env.clone(),
            Some(payments_port),
        ),
        spec("saga", &orderflow, "saga", flow_env.clone(), None),
        spec("restock", &orderflow, "restock", flow_env.clone(), None),
        spec("loyalty", &orderflow, "loyalty", flow_env.clone(), None),
        spec("audit", &orderflow, "audit", flow_env.clone(), None),
        spec(
            "tracking",
            &orderflow,
            "tracking",
            flow_env.clone(),
            Some(tracking_port),
        ),
    ];
    let mut procs: Vec<Proc> = Vec::new();
    for spec in specs {
        procs.push(Proc::start(spec, &logs).await?);
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    // Products and customers.
    let mut initial: BTreeMap<i64, i64> = BTreeMap::new();
    for i in 0..args.products {
        let body: Value = http
            .post(format!("{}/products", url(products_port)))
            .json(&json!({ "name": format!("Product {i}"), "description": "", "price": 5 + i, "stock": args.stock }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        initial.insert(body["id"].as_i64().context("product id")?, args.stock);
    }
    let mut customers = Vec::new();
    for i in 0..5 {
        let body: Value = http
            .post(format!("{}/customers", url(customers_port)))
            .json(&json!({ "name": format!("Customer {i}"), "email": format!("c{i}@example.com"), "tier": "Gold" }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        customers.push(body["id"].as_i64().context("customer id")?);
    }
    let product_ids: Vec<i64> = initial.keys().copied().collect();

    // The load, and the chaos beside it.
    let accepted: Arc<Mutex<Vec<Placed>>> = Arc::default();
    let refused: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let unanswered = Arc::new(Mutex::new(0usize));
    let loading = Arc::new(AtomicBool::new(true));
    let procs = Arc::new(tokio::sync::Mutex::new(procs));
    let kafka = Arc::new(kafka);
    let kills: Arc<Mutex<BTreeMap<&'static str, usize>>> = Arc::default();
    let kafka_restarting = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (procs, loading, kills, kafka, logs) = (
            procs.clone(),
            loading.clone(),
            kills.clone(),
            kafka.clone(),
            logs.clone(),
        );
        let every = args.kill_every_ms.max(200);
        let kafka_restarting = kafka_restarting.clone();
        tokio::spawn(async move {
            while loading.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(every / 2 + random_below(every))).await;
                if !loading.load(Ordering::SeqCst) {
                    break;
                }
                let mut procs = procs.lock().await;
                let victim = random_below(procs.len() as u64 + 1) as usize;
                let name = if victim == procs.len() {
                    if kafka_restarting.swap(true, Ordering::SeqCst) {
                        continue;
                    }
                    if let Err(e) = kafka.kill() {
                        eprintln!("chaos: kill kafka: {e}");
                    }
                    // Kafka's restart (log recovery) takes a while: the other kills go on.
                    let (kafka, restarting) = (kafka.clone(), kafka_restarting.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(500 + random_below(1500))).await;
                        let restarted =
                            tokio::task::spawn_blocking(move || kafka.infra("up")).await;
                        if let Ok(Err(e)) = restarted {
                            eprintln!("chaos: restart kafka: {e}");
                        }
                        restarting.store(false, Ordering::SeqCst);
                    });
                    "kafka"
                } else {
                    let proc = &mut procs[victim];
                    proc.kill().await;
                    tokio::time::sleep(Duration::from_millis(200 + random_below(1500))).await;
                    if let Err(e) = proc.spawn(&logs).await {
                        eprintln!("chaos: restart {}: {e}", proc.spec.name);
                    }
                    proc.spec.name
                };
                *kills.lock().unwrap().entry(name).or_default() += 1;
            }
        })
    };
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let mut clients = Vec::new();
    for i in 0..args.orders {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let placed = Placed {
            order_id: Uuid::nil(),
            customer: customers[random_below(customers.len() as u64) as usize],
            product: product_ids[random_below(product_ids.len() as u64) as usize],
            // Mostly one item, so products sell out exactly and restock timers fire.
            quantity: if random_below(4) == 0 { 2 } else { 1 },
        };
        let (http, accepted, refused, unanswered) = (
            http.clone(),
            accepted.clone(),
            refused.clone(),
            unanswered.clone(),
        );
        let orders_url = format!("{}/orders", url(orders_port));
        clients.push(tokio::spawn(async move {
            let key = Uuid::new_v4().to_string();
            let body = json!({ "customerId": placed.customer, "productId": placed.product, "quantity": placed.quantity });
            // Until a definitive answer, with the same idempotency key (bounded).
            for attempt in 0..120u32 {
                let answer = http
                    .post(&orders_url)
                    .header("idempotency-key", &key)
                    .json(&body)
                    .send()
                    .await;
                if let Ok(response) = answer {
                    let status = response.status().as_u16();
                    let value: Value = response.json().await.unwrap_or(Value::Null);
                    match status {
                        200 | 201 => {
                            if let Some(id) = value["id"].as_str().and_then(|s| s.parse().ok()) {
                                accepted.lock().unwrap().push(Placed { order_id: id, ..placed });
                                return;
                            }
                        }
                        409 | 404 | 400 => {
                            let reason = value["error"].as_str().unwrap_or("?");
                            let reason = if reason.contains("insufficient stock") {
                                "stock short".to_owned()
                            } else if reason.contains("products service unavailable") {
                                "failed while products was unreachable".to_owned()
                            } else {
                                reason.chars().take(60).collect()
                            };
                            *refused.lock().unwrap().entry(reason).or_default() += 1;
                            return;
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(250 + 50 * u64::from(attempt.min(10)))).await;
            }
            *unanswered.lock().unwrap() += 1;
        }));
    }
    for client in clients {
        let _ = client.await;
    }
    loading.store(false, Ordering::SeqCst);
    let _ = chaos.await;
    let restart_deadline = Instant::now() + Duration::from_secs(180);
    while kafka_restarting.load(Ordering::SeqCst) && Instant::now() < restart_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let load_time = started.elapsed();
    // Everything up again.
    kafka.infra("up")?;
    {
        let mut procs = procs.lock().await;
        for proc in procs.iter_mut() {
            if proc
                .child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some())
            {
                proc.spawn(&logs).await?;
            }
        }
    }
    let accepted = accepted.lock().unwrap().clone();
    println!(
        "load: {} placed in {:.1}s, refused {:?}, {} unanswered; kills: {:?}",
        accepted.len(),
        load_time.as_secs_f64(),
        *refused.lock().unwrap(),
        *unanswered.lock().unwrap(),
        kills.lock().unwrap()
    );

    let tracking = Tracking {
        http: http.clone(),
        url: url(tracking_port),
        customers: customers.clone(),
    };
    let result = check(
        &args, &settings, &postgres, &db, &initial, &accepted, &tracking,
    )
    .await;
    let mut procs = procs.lock().await;
    for proc in procs.iter_mut() {
        proc.kill().await;
    }
    drop(procs);
    match crate::tracking::TrackingStore::connect(&settings).await {
        Ok(store) => {
            use projectors::Store as _;
            if let Err(e) = store.clear().await {
                eprintln!("chaos: the tracking tables stay: {e}");
            }
        }
        Err(e) => eprintln!("chaos: the tracking tables stay: {e}"),
    }
    for name in [
        "products",
        "customers",
        "orders",
        "flow",
        "payments",
        "loyalty",
    ] {
        if let Ok(mut server) = sqlx::PgConnection::connect_with(&postgres.parse()?).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                db(name)
            ))
            .execute(&mut server)
            .await;
        }
    }
    result
}

use sqlx::Connection;

async fn connect(postgres: &str, database: &str) -> anyhow::Result<PgPool> {
    let options: sqlx::postgres::PgConnectOptions = postgres.parse()?;
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.database(database))
        .await?)
}

async fn scalar(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await?)
}

/// The tracking read model as a user reads it: over HTTP, per customer.
struct Tracking {
    http: reqwest::Client,
    url: String,
    customers: Vec<i64>,
}

impl Tracking {
    /// Every customer's answer; `None` while the service does not answer.
    async fn read(&self) -> Option<Vec<crate::tracking::CustomerOrders>> {
        let mut all = Vec::new();
        for customer in &self.customers {
            let response = self
                .http
                .get(format!("{}/customers/{customer}/orders", self.url))
                .send()
                .await
                .ok()?;
            if !response.status().is_success() {
                return None;
            }
            all.push(response.json().await.ok()?);
        }
        Some(all)
    }
}

/// What the read model should say per customer, from the log's fold.
fn expected_summaries(
    log: &HashMap<Uuid, (i64, Vec<Uuid>)>,
) -> BTreeMap<i64, crate::tracking::Summary> {
    let mut histories: BTreeMap<i64, Vec<(Uuid, projectors::digest::Digest)>> = BTreeMap::new();
    for (order, (customer, events)) in log {
        let ids: Vec<String> = events.iter().map(Uuid::to_string).collect();
        histories.entry(*customer).or_default().push((
            *order,
            projectors::digest::Digest::of(ids.iter().map(String::as_str)),
        ));
    }
    histories
        .into_iter()
        .map(|(customer, orders)| {
            (
                customer,
                crate::tracking::Summary::of(orders.iter().map(|(o, d)| (*o, d))),
            )
        })
        .collect()
}

/// Orders whose read model status is the database's, of `orders`.
fn statuses_matching<'a>(
    read: &[crate::tracking::CustomerOrders],
    database: &HashMap<Uuid, String>,
    orders: impl IntoIterator<Item = &'a Uuid>,
) -> usize {
    let views: HashMap<Uuid, &str> = read
        .iter()
        .flat_map(|c| c.orders.iter().map(|o| (o.order_id, o.status.as_str())))
        .collect();
    orders
        .into_iter()
        .filter(|id| {
            views
                .get(id)
                .is_some_and(|s| database.get(id).is_some_and(|d| d == s))
        })
        .count()
}

async fn order_statuses(orders: &PgPool) -> anyhow::Result<HashMap<Uuid, String>> {
    Ok(
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, status FROM orders")
            .fetch_all(orders)
            .await?
            .into_iter()
            .collect(),
    )
}

async fn check(
    args: &ChaosArgs,
    settings: &Settings,
    postgres: &str,
    db: &dyn Fn(&str) -> String,
    initial: &BTreeMap<i64, i64>,
    accepted: &[Placed],
    tracking: &Tracking,
) -> anyhow::Result<()> {
    let orders = connect(postgres, &db("orders")).await?;
    let products = connect(postgres, &db("products")).await?;
    let flow = connect(postgres, &db("flow")).await?;
    let loyalty = connect(postgres, &db("loyalty")).await?;
    let n = accepted.len() as i64;
    let accepted_ids: HashSet<Uuid> = accepted.iter().map(|p| p.order_id).collect();

    // Quiescence: every saga finished, every order accounted for, no timer or restock pending.
    let deadline = Instant::now() + Duration::from_secs(args.settle_secs);
    let audit_placed = || -> anyhow::Result<(usize, usize, usize)> {
        let lines = crate::audit::read_all(&settings.audit_dir)?;
        let distinct: HashSet<Uuid> = lines.iter().map(|l| l.event_id).collect();
        let placed: HashSet<Uuid> = lines
            .iter()
            .filter(|l| l.kind == "PLACED")
            .map(|l| l.order_id)
            .collect();
        Ok((lines.len(), distinct.len(), placed.len()))
    };
    loop {
        let finished = scalar(&flow, "SELECT count(*) FROM sagas WHERE status IN ('completed', 'compensated', 'skipped', 'failed')").await.unwrap_or(-1);
        let ledger = scalar(&loyalty, "SELECT count(*) FROM loyalty_ledger")
            .await
            .unwrap_or(-1);
        let pending = scalar(
            &orders,
            "SELECT count(*) FROM orders WHERE status = 'Pending' OR release_pending",
        )
        .await
        .unwrap_or(-1);
        let timers = scalar(&flow, "SELECT (SELECT count(*) FROM restock_timers) + (SELECT count(*) FROM restocks WHERE done_at IS NULL)").await.unwrap_or(-1);
        let (_, _, placed) = audit_placed()?;
        let quiet =
            finished == n && ledger == n && pending == 0 && timers == 0 && placed as i64 == n;
        // The read model: every accepted order with the database's status, and the
        // customers' histories those of the log (read only once the rest is quiet).
        let mut tracked = -1;
        let mut tracking_quiet = false;
        if quiet {
            if let (Some(read), Ok(database)) =
                (tracking.read().await, order_statuses(&orders).await)
            {
                tracked = statuses_matching(&read, &database, &accepted_ids) as i64;
                if tracked == n {
                    let log = crate::tracking::log_fold(
                        &settings.kafka,
                        &HashMap::new(),
                        Duration::from_secs(60),
                    )
                    .await?;
                    let expected = expected_summaries(&log);
                    tracking_quiet = read.iter().all(|c| {
                        expected.get(&c.customer_id).cloned().unwrap_or_default() == c.summary
                    });
                }
            }
        }
        if quiet && tracking_quiet {
            break;
        }
        if Instant::now() > deadline {
            println!("not quiet after {}s: sagas finished {finished}/{n}, ledger {ledger}, pending orders {pending}, timers+restocks pending {timers}, audit PLACED {placed}, tracked with the database's status {tracked}", args.settle_secs);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut failures = Vec::new();
    let mut expect = |what: &str, left: i64, right: i64| {
        let ok = left == right;
        println!(
            "{} {what}: {left} = {right}",
            if ok { "ok  " } else { "FAIL" }
        );
        if !ok {
            failures.push(what.to_owned());
        }
    };
    let in_db = scalar(&orders, "SELECT count(*) FROM orders WHERE status IN ('Processing', 'Shipped', 'Delivered', 'Cancelled')").await?;
    let db_ids: HashSet<Uuid> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE status IN ('Processing', 'Shipped', 'Delivered', 'Cancelled')",
    )
    .fetch_all(&orders)
    .await?
    .into_iter()
    .collect();
    let (lines, distinct, placed) = audit_placed()?;
    let ledger = scalar(&loyalty, "SELECT count(*) FROM loyalty_ledger").await?;
    expect("orders accepted = orders in the database", n, in_db);
    expect(
        "accepted ids = database ids",
        accepted_ids.len() as i64,
        db_ids.intersection(&accepted_ids).count() as i64,
    );
    expect(
        "orders accepted = distinct PLACED audit lines",
        n,
        placed as i64,
    );
    expect(
        "audit lines = distinct audit event ids",
        lines as i64,
        distinct as i64,
    );
    expect("orders accepted = loyalty ledger entries", n, ledger);
    let points = scalar(
        &loyalty,
        "SELECT COALESCE(sum(points), 0)::bigint FROM loyalty_accounts",
    )
    .await?;
    let expected_points: i64 = accepted
        .iter()
        .map(|p| p.quantity * settings.loyalty_points_per_item)
        .sum();
    expect("loyalty points = expected sum", points, expected_points);
    let per_customer: HashMap<i64, i64> =
        sqlx::query_as::<_, (i64, i64)>("SELECT customer_id, points FROM loyalty_accounts")
            .fetch_all(&loyalty)
            .await?
            .into_iter()
            .collect();
    let mut expected_per_customer: HashMap<i64, i64> = HashMap::new();
    for p in accepted {
        *expected_per_customer.entry(p.customer).or_default() +=
            p.quantity * settings.loyalty_points_per_item;
    }
    expect(
        "customers with the expected points",
        expected_per_customer
            .iter()
            .filter(|(c, p)| per_customer.get(c) == Some(p))
            .count() as i64,
        expected_per_customer.len() as i64,
    );
    let sagas: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM sagas GROUP BY status ORDER BY status")
            .fetch_all(&flow)
            .await?;
    println!("sagas: {sagas:?}");
    let done = scalar(
        &flow,
        "SELECT count(*) FROM sagas WHERE status IN ('completed', 'compensated')",
    )
    .await?;
    expect("sagas completed or compensated = orders accepted", done, n);
    let completed = scalar(
        &flow,
        "SELECT count(*) FROM sagas WHERE status = 'completed'",
    )
    .await?;
    let mails = crate::saga::mail::MailLog::read_all(&settings.mail_log)?;
    let distinct_mails: HashSet<Uuid> = mails.iter().map(|m| m.order_id).collect();
    expect("emails = completed sagas", mails.len() as i64, completed);
    expect(
        "distinct emails = emails",
        distinct_mails.len() as i64,
        mails.len() as i64,
    );
    let cancelled = scalar(
        &orders,
        "SELECT count(*) FROM orders WHERE status = 'Cancelled'",
    )
    .await?;
    let compensated = scalar(
        &flow,
        "SELECT count(*) FROM sagas WHERE status = 'compensated'",
    )
    .await?;
    expect(
        "cancelled orders = compensated sagas",
        cancelled,
        compensated,
    );

    let mut oversold = 0;
    println!("product  initial  sold  restocked  current  held");
    for (product, initial) in initial {
        let sold: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(quantity), 0)::bigint FROM sales WHERE product_id = $1",
        )
        .bind(product)
        .fetch_one(&flow)
        .await?;
        let restocked: i64 = sqlx::query_scalar("SELECT COALESCE(sum(quantity), 0)::bigint FROM restocks WHERE product_id = $1 AND done_at IS NOT NULL").bind(product).fetch_one(&flow).await?;
        let restocked_there: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(quantity), 0)::bigint FROM restocks WHERE product_id = $1",
        )
        .bind(product)
        .fetch_one(&products)
        .await?;
        let current: i64 = sqlx::query_scalar::<_, i32>("SELECT stock FROM products WHERE id = $1")
            .bind(product)
            .fetch_one(&products)
            .await?
            .into();
        let held: i64 = sqlx::query_scalar("SELECT COALESCE(sum(quantity), 0)::bigint FROM reservations WHERE product_id = $1 AND status = 'held'").bind(product).fetch_one(&products).await?;
        println!("{product:>7}  {initial:>7}  {sold:>4}  {restocked:>9}  {current:>7}  {held:>4}");
        expect(
            &format!("product {product}: initial - sold + restocked = current"),
            initial - sold + restocked,
            current,
        );
        expect(
            &format!("product {product}: sold = held by live orders"),
            sold,
            held,
        );
        expect(
            &format!("product {product}: restocked here = restocked there"),
            restocked,
            restocked_there,
        );
        if current < 0 || sold > initial + restocked {
            oversold += 1;
        }
    }
    expect("products oversold", oversold, 0);

    // The tracking read model against the database and the log.
    let read = tracking
        .read()
        .await
        .context("the tracking read model does not answer")?;
    let database = order_statuses(&orders).await?;
    let log = crate::tracking::log_fold(&settings.kafka, &HashMap::new(), Duration::from_secs(60))
        .await?;
    let tracked: HashSet<Uuid> = read
        .iter()
        .flat_map(|c| c.orders.iter().map(|o| o.order_id))
        .collect();
    expect(
        "accepted orders tracked with the database's status",
        statuses_matching(&read, &database, &accepted_ids) as i64,
        n,
    );
    expect(
        "tracked orders = orders in the log",
        tracked.len() as i64,
        log.len() as i64,
    );
    expect(
        "tracked orders with the database's status = tracked orders",
        statuses_matching(&read, &database, &tracked) as i64,
        tracked.len() as i64,
    );
    let expected = expected_summaries(&log);
    let events: u64 = read.iter().map(|c| c.summary.events).sum();
    let log_events: usize = log.values().map(|(_, e)| e.len()).sum();
    expect(
        "tracked events = distinct events in the log",
        events as i64,
        log_events as i64,
    );
    let matching = read
        .iter()
        .filter(|c| expected.get(&c.customer_id).cloned().unwrap_or_default() == c.summary)
        .count();
    expect(
        "customers whose orders, events and hash chain match the log",
        matching as i64,
        expected.len().max(read.len()) as i64,
    );
    if failures.is_empty() {
        println!("chaos: all checks passed");
        Ok(())
    } else {
        bail!(
            "chaos: {} check(s) failed: {}",
            failures.len(),
            failures.join("; ")
        )
    }
}
