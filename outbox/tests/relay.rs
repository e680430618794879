//! The relay against the real PostgreSQL and Kafka (`scripts/infra up`): every test has a
//! database, topics and a relay role of its own, and reads what the relay wrote with
//! `isolation.level=read_committed`, counting every event id.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use outbox::{BoxError, NewEvent, Outbox, Publisher, Record, Relay, RelayConfig, Row};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use topics::kafka::{consumer_config, EVENT_ID_HEADER, SEQUENCE_HEADER};
use topics::settings::KafkaSettings;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const OUTBOX: Outbox = Outbox::new("outbox_test", 0x6f75_7462_6f78, 0x6f75_7462);

fn kafka() -> KafkaSettings {
    KafkaSettings {
        kafka_bootstrap_servers: testkit::env::kafka_bootstrap(),
        schema_registry_url: testkit::env::registry_url(),
    }
}

/// A database of the test's own with the outbox table; dropped by [`Db::drop_database`].
struct Db {
    name: String,
    options: PgConnectOptions,
    pool: PgPool,
}

impl Db {
    async fn create() -> Self {
        let server: PgConnectOptions = testkit::env::postgres_url().parse().unwrap();
        let name = testkit::unique("outbox_test");
        let mut admin = PgConnection::connect_with(&server).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let options = server.database(&name);
        let pool = PgPool::connect_with(options.clone()).await.unwrap();
        outbox::schema::migrate(&pool).await.unwrap();
        // Idempotent: a service may run it on every start.
        outbox::schema::migrate(&pool).await.unwrap();
        Self {
            name,
            options,
            pool,
        }
    }

    /// Writes one transaction of `(topic, key, payload)` events; returns their event ids.
    async fn write(&self, events: &[(&str, &str, serde_json::Value)]) -> Vec<Uuid> {
        let rows: Vec<NewEvent> = events
            .iter()
            .map(|(topic, key, payload)| {
                NewEvent::new(*topic, *key, Uuid::new_v4(), payload).unwrap()
            })
            .collect();
        let mut tx = self.pool.begin().await.unwrap();
        OUTBOX.enqueue(&mut tx, &rows).await.unwrap();
        tx.commit().await.unwrap();
        rows.iter().map(|r| r.event_id).collect()
    }

    async fn unpublished_keys(&self) -> BTreeMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT key, count(*) FROM outbox WHERE published_at IS NULL GROUP BY key",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
    }

    async fn drop_database(self) {
        self.pool.close().await;
        let server: PgConnectOptions = testkit::env::postgres_url().parse().unwrap();
        let mut admin = PgConnection::connect_with(&server).await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", testkit::env::kafka_bootstrap())
        .create()
        .unwrap()
}

async fn create_topic(name: &str, partitions: i32, config: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in config {
        topic = topic.set(key, value);
    }
    let results = admin()
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    for result in results {
        result.unwrap();
    }
}

async fn delete_topics(names: &[&str]) {
    let _ = admin().delete_topics(names, &AdminOptions::new()).await;
}

/// The relay's encoder in these tests: the payload's JSON text; a row whose payload has
/// `"poison": true` cannot be encoded.
fn json_encoder(row: &Row) -> Result<Vec<u8>, BoxError> {
    if row.payload.get("poison").is_some() {
        return Err("poisoned payload".into());
    }
    Ok(row.payload.to_string().into_bytes())
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn spawn_relay(db: &Db, role: &str) -> Running {
    spawn_relay_on(db.options.clone(), role)
}

fn spawn_relay_on(database: PgConnectOptions, role: &str) -> Running {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("outbox=debug")
            .with_test_writer()
            .try_init();
    }
    let (stop, shutdown) = watch::channel(false);
    let mut config = RelayConfig::new(role, OUTBOX);
    config.batch_size = 50;
    let relay = Relay::new(config, database, kafka(), json_encoder, shutdown);
    Running {
        stop,
        task: tokio::spawn(relay.run()),
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("relay stops")
            .unwrap();
    }
}

/// One record as a read_committed consumer saw it.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    event_id: Uuid,
    seq: i64,
}

/// Reads `topics` from the beginning with read_committed.
struct Reader {
    consumer: BaseConsumer,
    seen: Vec<Seen>,
}

impl Reader {
    fn new(topics: &[(&str, i32)]) -> Self {
        let consumer: BaseConsumer = consumer_config(&kafka(), &testkit::unique("outbox_test"))
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for (topic, partitions) in topics {
            for partition in 0..*partitions {
                assignment
                    .add_partition_offset(topic, partition, Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&assignment).unwrap();
        Self {
            consumer,
            seen: Vec::new(),
        }
    }

    /// Polls what is there now (up to `max` records).
    fn poll(&mut self, max: usize) {
        for _ in 0..max {
            let Some(message) = self.consumer.poll(Duration::from_millis(50)) else {
                return;
            };
            let message = message.expect("consumer error");
            let header = |name: &str| {
                message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8(v.to_vec()).unwrap())
                })
            };
            self.seen.push(Seen {
                key: String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
                event_id: header(EVENT_ID_HEADER)
                    .expect("event-id header")
                    .parse()
                    .unwrap(),
                seq: header(SEQUENCE_HEADER)
                    .expect("event-seq header")
                    .parse()
                    .unwrap(),
            });
        }
    }

    /// Polls until every id of `ids` was seen, or panics after `within`.
    async fn until_seen(&mut self, ids: &[Uuid], within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.poll(500);
            let seen: std::collections::HashSet<Uuid> =
                self.seen.iter().map(|s| s.event_id).collect();
            let missing = ids.iter().filter(|id| !seen.contains(id)).count();
            if missing == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{missing} of {} events not seen within {within:?}",
                ids.len()
            );
            tokio::task::yield_now().await;
        }
    }

    /// Polls until the consumer stands at the end of every assigned partition, so nothing
    /// written so far is left unread.
    fn drain(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.poll(500);
            let position = self.consumer.position().unwrap();
            let at_end = position.elements().iter().all(|e| {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
                    .unwrap();
                match e.offset() {
                    Offset::Offset(at) => at >= high,
                    _ => high == 0,
                }
            });
            if at_end {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "reader did not reach the end"
            );
        }
    }

    /// How often each event id was seen.
    fn counts(&self) -> HashMap<Uuid, usize> {
        let mut counts = HashMap::new();
        for seen in &self.seen {
            *counts.entry(seen.event_id).or_insert(0) += 1;
        }
        counts
    }

    /// The event ids of `key` in the order they were read.
    fn of_key(&self, key: &str) -> Vec<Uuid> {
        self.seen
            .iter()
            .filter(|s| s.key == key)
            .map(|s| s.event_id)
            .collect()
    }

    /// Per key, the sequence only increases.
    fn assert_sequence_increases(&self) {
        let mut last: HashMap<&str, i64> = HashMap::new();
        for seen in &self.seen {
            if let Some(before) = last.insert(&seen.key, seen.seq) {
                assert!(
                    seen.seq > before,
                    "key {}: event-seq {} after {before}",
                    seen.key,
                    seen.seq
                );
            }
        }
    }
}

fn assert_once(reader: &Reader, ids: &[Uuid]) {
    let counts = reader.counts();
    let twice: Vec<_> = ids
        .iter()
        .filter(|id| counts.get(id).copied().unwrap_or(0) > 1)
        .collect();
    let never: Vec<_> = ids.iter().filter(|id| !counts.contains_key(id)).collect();
    assert!(
        twice.is_empty(),
        "{} events delivered more than once",
        twice.len()
    );
    assert!(never.is_empty(), "{} events never delivered", never.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_cannot_be_written_holds_back_only_itself() {
    let db = Db::create().await;
    let good = testkit::unique("outbox_good");
    let missing = testkit::unique("outbox_missing");
    let tiny = testkit::unique("outbox_tiny");
    create_topic(&good, 2, &[]).await;
    // Records of more than 200 bytes do not fit: the broker refuses them inside the
    // transaction, which must then be aborted.
    create_topic(&tiny, 1, &[("max.message.bytes", "200")]).await;
    let relay = spawn_relay(&db, &testkit::unique("outbox-relay"));
    let mut reader = Reader::new(&[(&good, 2), (&tiny, 1)]);

    let big = "x".repeat(1000);
    let good_keys: Vec<String> = (0..6).map(|i| format!("good-{i}")).collect();
    let mut good_ids = Vec::new();
    let mut lost_ids = Vec::new();
    let mut big_ids = Vec::new();
    let mut poison_ids = Vec::new();
    for round in 0..20 {
        let mut events: Vec<(&str, &str, serde_json::Value)> = good_keys
            .iter()
            .map(|key| (good.as_str(), key.as_str(), json!({ "round": round })))
            .collect();
        events.push((missing.as_str(), "lost", json!({ "round": round })));
        events.push((tiny.as_str(), "big", json!({ "round": round, "fill": big })));
        // A row its encoder refuses holds back its key too.
        events.push((
            good.as_str(),
            "poison",
            json!({ "round": round, "poison": true }),
        ));
        let ids = db.write(&events).await;
        good_ids.extend_from_slice(&ids[..good_keys.len()]);
        lost_ids.push(ids[good_keys.len()]);
        big_ids.push(ids[good_keys.len() + 1]);
        poison_ids.push(ids[good_keys.len() + 2]);
    }
    // Once the relay has failed both keys, later events of the good keys still flow.
    let mut late = Vec::new();
    for round in 20..25 {
        let events: Vec<(&str, &str, serde_json::Value)> = good_keys
            .iter()
            .map(|key| (good.as_str(), key.as_str(), json!({ "round": round })))
            .collect();
        late.extend(db.write(&events).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last_write = std::time::Instant::now();
    good_ids.extend(late);
    reader.until_seen(&good_ids, WAIT).await;
    eprintln!(
        "good keys all delivered {:?} after their last write",
        last_write.elapsed()
    );

    // The relay marks a batch published after its Kafka commit: the reader can see the last
    // good batch before its rows are marked.
    let failing = BTreeMap::from([
        ("big".to_owned(), 20),
        ("lost".to_owned(), 20),
        ("poison".to_owned(), 20),
    ]);
    testkit::eventually("only the failing keys wait", WAIT, || async {
        db.unpublished_keys().await == failing
    })
    .await;
    reader.drain();
    assert_once(&reader, &good_ids);
    assert!(
        reader.of_key("big").is_empty(),
        "no aborted record is visible"
    );
    assert!(reader.of_key("poison").is_empty());

    // Fix all three: the topic appears, the record size limit is raised, the rows are mended.
    let fixed = std::time::Instant::now();
    create_topic(&missing, 1, &[]).await;
    admin()
        .alter_configs(
            [&AlterConfig::new(ResourceSpecifier::Topic(&tiny))
                .set("max.message.bytes", "1048588")],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    sqlx::query("UPDATE outbox SET payload = payload - 'poison' WHERE key = 'poison'")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut reader = Reader::new(&[(&good, 2), (&tiny, 1), (&missing, 1)]);
    let mut all: Vec<Uuid> = good_ids.clone();
    all.extend(&lost_ids);
    all.extend(&big_ids);
    all.extend(&poison_ids);
    reader.until_seen(&all, Duration::from_secs(90)).await;
    eprintln!("held keys delivered {:?} after the fix", fixed.elapsed());
    reader.drain();
    assert_once(&reader, &all);
    assert_eq!(
        reader.of_key("lost"),
        lost_ids,
        "the held key's events arrive in order"
    );
    assert_eq!(
        reader.of_key("big"),
        big_ids,
        "the held key's events arrive in order"
    );
    assert_eq!(
        reader.of_key("poison"),
        poison_ids,
        "a mended key's events arrive in order"
    );
    for key in &good_keys {
        let expected: Vec<Uuid> = good_ids
            .iter()
            .copied()
            .filter(|id| {
                reader
                    .seen
                    .iter()
                    .any(|s| s.event_id == *id && s.key == *key)
            })
            .collect();
        assert_eq!(reader.of_key(key), expected);
    }
    reader.assert_sequence_increases();
    testkit::eventually("every row is marked published", WAIT, || async {
        db.unpublished_keys().await.is_empty()
    })
    .await;

    relay.stop().await;
    delete_topics(&[&good, &missing, &tiny]).await;
    db.drop_database().await;
}

fn record(topic: &str, id: i64) -> Record {
    Record {
        id,
        topic: topic.to_owned(),
        key: "k".to_owned(),
        event_id: Uuid::new_v4(),
        value: format!("record {id}").into_bytes(),
        trace: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_publisher_with_the_same_role_fences_the_first() {
    let topic = testkit::unique("outbox_fence");
    create_topic(&topic, 1, &[]).await;
    let role = testkit::unique("outbox-relay");
    let first = Publisher::start(&kafka(), &role).await.unwrap();
    let before = record(&topic, 1);
    let published = first.publish(std::slice::from_ref(&before)).await.unwrap();
    assert_eq!(published.committed, [1]);

    let second = Publisher::start(&kafka(), &role).await.unwrap();
    let stale = record(&topic, 2);
    let error = first
        .publish(std::slice::from_ref(&stale))
        .await
        .expect_err("a fenced publisher cannot commit");
    assert!(error.is_fenced(), "{error}");
    let after = record(&topic, 3);
    assert_eq!(
        second
            .publish(std::slice::from_ref(&after))
            .await
            .unwrap()
            .committed,
        [3]
    );

    let mut reader = Reader::new(&[(&topic, 1)]);
    reader
        .until_seen(&[before.event_id, after.event_id], WAIT)
        .await;
    reader.drain();
    assert_eq!(reader.of_key("k"), [before.event_id, after.event_id]);
    assert_once(&reader, &[before.event_id, after.event_id]);
    delete_topics(&[&topic]).await;
}

/// The relay's lock session: its backend pid and client port, found by its application name.
async fn lock_session(db: &Db, role: &str) -> (i32, i32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = sqlx::query_as::<_, (i32, i32)>(
            "SELECT a.pid, a.client_port FROM pg_stat_activity a
             JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
             WHERE a.application_name = $1 AND a.datname = current_database()",
        )
        .bind(role)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if let Some(found) = found {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not take its lock within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_relay_takes_the_lock_again_and_delivers_every_event_once() {
    let db = Db::create().await;
    let topic = testkit::unique("outbox_refence");
    create_topic(&topic, 2, &[]).await;
    let role = testkit::unique("outbox-relay");
    let relay = spawn_relay(&db, &role);
    let mut reader = Reader::new(&[(&topic, 2)]);
    let keys = ["a", "b", "c"];
    let write = |round: usize| {
        let events: Vec<(&str, &str, serde_json::Value)> = keys
            .iter()
            .map(|key| (topic.as_str(), *key, json!({ "round": round })))
            .collect();
        events
    };
    let mut ids = db.write(&write(0)).await;
    reader.until_seen(&ids, WAIT).await;
    let (pid_before, _) = lock_session(&db, &role).await;

    // Another producer of the role starts, as a successor relay would: the running relay is
    // now stale and must not commit again.
    let intruder = Publisher::start(&kafka(), &role).await.unwrap();
    for round in 1..5 {
        ids.extend(db.write(&write(round)).await);
    }
    reader.until_seen(&ids, WAIT).await;
    let (pid_after, _) = lock_session(&db, &role).await;
    assert_ne!(
        pid_before, pid_after,
        "the fenced relay started over on a new lock session"
    );
    // The relay's new producer fenced the intruder in turn.
    let error = intruder
        .publish(&[record(&topic, i64::MAX)])
        .await
        .expect_err("the intruder is fenced by the restarted relay");
    assert!(error.is_fenced(), "{error}");

    reader.drain();
    assert_once(&reader, &ids);
    assert_eq!(reader.seen.len(), ids.len(), "nothing else is visible");
    reader.assert_sequence_increases();
    relay.stop().await;
    delete_topics(&[&topic]).await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_session_has_keepalives_and_timeouts() {
    // The settings as the server applies them to a session opened with these options.
    let db = Db::create().await;
    let options = outbox::session::lock_session_options(&db.options, "keepalive-check");
    let mut session = PgConnection::connect_with(&options).await.unwrap();
    for (name, expected) in [
        ("tcp_keepalives_idle", "10"),
        ("tcp_keepalives_interval", "5"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "25000"),
        ("statement_timeout", "10s"),
        ("idle_in_transaction_session_timeout", "10s"),
    ] {
        let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
            .fetch_one(&mut session)
            .await
            .unwrap();
        assert_eq!(value, expected, "{name}");
    }
    drop(session);

    // The relay's own lock session: the server's socket for it probes after at most 10 s
    // of silence (the system default would be 2 hours).
    let role = testkit::unique("outbox-relay");
    let relay = spawn_relay(&db, &role);
    let (_, client_port) = lock_session(&db, &role).await;
    let server_port = db.options.get_port();
    let filter = format!("( sport = :{server_port} and dport = :{client_port} )");
    // While the relay's poll is in flight the socket shows its retransmission timer instead:
    // look again until it is idle.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let timer = loop {
        let output = std::process::Command::new("ss")
            .args(["-tnoH", "state", "established", &filter])
            .output()
            .expect("ss (iproute2) runs");
        let line = String::from_utf8_lossy(&output.stdout).into_owned();
        if let Some(timer) = line
            .split("timer:(keepalive,")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
        {
            break timer.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no keepalive timer on the lock session's socket: {line:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seconds: f64 = if let Some(ms) = timer.strip_suffix("ms") {
        ms.parse::<f64>().unwrap() / 1000.0
    } else if let Some(s) = timer.strip_suffix("sec") {
        s.parse().unwrap()
    } else {
        panic!("keepalive timer {timer:?} is not in seconds: the system default applies")
    };
    assert!(seconds <= 10.0, "keepalive timer {timer}");
    relay.stop().await;
    db.drop_database().await;
}

/// A TCP proxy to PostgreSQL that can freeze its open connections (bytes stop flowing both
/// ways, the sockets stay open: a database host that vanished without a reset) and later cut
/// them, as the server does once its keepalives give up. New connections flow normally.
struct FreezingProxy {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<Proxied>>>,
    accept: JoinHandle<()>,
}

struct Proxied {
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: [JoinHandle<()>; 2],
}

impl FreezingProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let connections: Arc<Mutex<Vec<Proxied>>> = Arc::default();
        let accept = tokio::spawn({
            let accepted = accepted.clone();
            let connections = connections.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let frozen = Arc::new(AtomicBool::new(false));
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let tasks = [
                        tokio::spawn(forward(client_read, server_write, frozen.clone())),
                        tokio::spawn(forward(server_read, client_write, frozen.clone())),
                    ];
                    connections.lock().unwrap().push(Proxied { frozen, tasks });
                }
            }
        });
        Self {
            port,
            accepted,
            connections,
            accept,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn freeze_open_connections(&self) {
        for connection in self.connections.lock().unwrap().iter() {
            connection
                .frozen
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn cut_frozen_connections(&self) {
        self.connections.lock().unwrap().retain(|connection| {
            let frozen = connection.frozen.load(std::sync::atomic::Ordering::SeqCst);
            if frozen {
                connection.tasks.iter().for_each(JoinHandle::abort);
            }
            !frozen
        });
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for connection in self.connections.lock().unwrap().iter() {
            connection.tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        // Frozen: hold the bytes (and read no more) until the connection is cut.
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_database_stops_answering_notices_and_starts_over() {
    let db = Db::create().await;
    let topic = testkit::unique("outbox_frozen");
    create_topic(&topic, 1, &[]).await;
    let upstream = format!("{}:{}", db.options.get_host(), db.options.get_port())
        .parse()
        .unwrap();
    let proxy = FreezingProxy::start(upstream).await;
    let role = testkit::unique("outbox-relay");
    let relay = spawn_relay_on(db.options.clone().host("127.0.0.1").port(proxy.port), &role);
    let mut reader = Reader::new(&[(&topic, 1)]);
    let mut ids = db.write(&[(topic.as_str(), "k", json!({ "n": 0 }))]).await;
    reader.until_seen(&ids, WAIT).await;

    let before = proxy.accepted();
    proxy.freeze_open_connections();
    let frozen_at = std::time::Instant::now();
    ids.extend(db.write(&[(topic.as_str(), "k", json!({ "n": 1 }))]).await);
    testkit::eventually(
        "the relay notices and connects again",
        Duration::from_secs(30),
        || async { proxy.accepted() > before },
    )
    .await;
    let noticed = frozen_at.elapsed();
    eprintln!("relay noticed its database stopped answering after {noticed:?}");
    assert!(
        noticed >= Duration::from_secs(5),
        "noticed by the query bound, not by a reset: {noticed:?}"
    );

    // The server still has the frozen session (and its lock) until its keepalives give up;
    // cutting it is that moment. Then the relay takes the lock on its new session.
    proxy.cut_frozen_connections();
    reader.until_seen(&ids, WAIT).await;
    reader.drain();
    assert_once(&reader, &ids);
    relay.stop().await;
    drop(proxy);
    delete_topics(&[&topic]).await;
    db.drop_database().await;
}

/// Whether the relay of `role` holds the outbox's wake lock, i.e. sleeps until notified.
async fn relay_sleeps(db: &Db, role: &str) -> bool {
    let (space, key) = OUTBOX.wake_lock();
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity a
                        JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory'
                        WHERE a.application_name = $1 AND a.datname = current_database()
                          AND l.granted AND l.objsubid = 2
                          AND l.classid::bigint = $2::bigint & 4294967295
                          AND l.objid::bigint = $3::bigint & 4294967295)",
    )
    .bind(role)
    .bind(space)
    .bind(key)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Writers notify only while the relay sleeps (it holds the wake lock), so a lost wake-up
/// would leave rows for the fallback poll, which here is an hour away: every event must
/// arrive anyway, both one at a time to a sleeping relay and from many writers at once whose
/// transactions stay open a while, racing the relay as it goes to sleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_wake_a_sleeping_relay_without_the_fallback_poll() {
    let db = Db::create().await;
    let topic = testkit::unique("outbox_wake");
    create_topic(&topic, 2, &[]).await;
    let role = testkit::unique("outbox-relay");
    let (stop, shutdown) = watch::channel(false);
    let mut config = RelayConfig::new(&role, OUTBOX);
    config.poll_interval = Duration::from_secs(3600);
    let relay = Running {
        stop,
        task: tokio::spawn(
            Relay::new(config, db.options.clone(), kafka(), json_encoder, shutdown).run(),
        ),
    };
    let mut reader = Reader::new(&[(&topic, 2)]);
    let mut ids = Vec::new();

    // One at a time, each to a relay that sleeps.
    let mut slowest = Duration::ZERO;
    for round in 0..5 {
        testkit::eventually("the relay sleeps", WAIT, || relay_sleeps(&db, &role)).await;
        let started = tokio::time::Instant::now();
        let written = db
            .write(&[(&topic, "single", json!({ "round": round }))])
            .await;
        reader.until_seen(&written, Duration::from_secs(10)).await;
        slowest = slowest.max(started.elapsed());
        ids.extend(written);
    }
    eprintln!("slowest wake-up of a sleeping relay to the record read: {slowest:?}");

    // Many writers at once; some transactions stay open after their write.
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let (pool, topic) = (db.pool.clone(), topic.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..40 {
                    let key = format!("k{}", (writer + n) % 7);
                    let event =
                        NewEvent::new(&topic, key, Uuid::new_v4(), &json!({ "n": n })).unwrap();
                    let mut tx = pool.begin().await.unwrap();
                    OUTBOX
                        .enqueue(&mut tx, std::slice::from_ref(&event))
                        .await
                        .unwrap();
                    if n % 3 == 0 {
                        // The rest of a business transaction, after the outbox write.
                        sqlx::query("SELECT pg_sleep(0.005)")
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                    }
                    tx.commit().await.unwrap();
                    ids.push(event.event_id);
                }
                ids
            })
        })
        .collect();
    for writer in writers {
        ids.extend(writer.await.unwrap());
    }
    reader.until_seen(&ids, Duration::from_secs(30)).await;
    reader.drain();
    assert_once(&reader, &ids);
    reader.assert_sequence_increases();
    relay.stop().await;
    delete_topics(&[&topic]).await;
    db.drop_database().await;
}
