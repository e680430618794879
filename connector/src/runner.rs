//! Wires the pieces together: pre-flight checks, deciding between snapshot
//! and resume, streaming, and the `status` and `reset` commands.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use pg_walstream::{
    LogicalReplicationStream, ReplicationSlotOptions, ReplicationStreamConfig, SharedLsnFeedback,
};
use tokio::sync::watch;

use crate::config::{Config, SnapshotMode};
use crate::error::{Error, Result};
use crate::offsets::{self, StoredOffset, Tracker};
use crate::pg::{self, format_lsn, ServerIdentity};
use crate::publisher::Publisher;
use crate::stream::{self, Emitter};

fn replication_config(cfg: &Config, export_snapshot: bool) -> ReplicationStreamConfig {
    ReplicationStreamConfig::builder(cfg.slot_name.clone(), cfg.publication_name.clone())
        .with_protocol_version(1)
        .with_messages(true)
        .with_feedback_interval(Duration::from_secs(1))
        .with_connection_timeout(Duration::from_secs(30))
        .with_slot_options(ReplicationSlotOptions {
            snapshot: Some(if export_snapshot { "export" } else { "nothing" }.to_string()),
            ..Default::default()
        })
}

fn check_slot(cfg: &Config, slot: &Option<pg::SlotInfo>) -> Result<()> {
    if let Some(s) = slot {
        if s.wal_status.as_deref() == Some("lost") {
            return Err(Error::SlotInvalidated {
                slot: cfg.slot_name.clone(),
                reason: "wal_status=lost".into(),
                lsn: s
                    .confirmed_flush_lsn
                    .map(format_lsn)
                    .unwrap_or_else(|| "?".into()),
            });
        }
    }
    Ok(())
}

/// Opens the replication stream on the existing slot and starts it at
/// `from` (0: the slot's own position).
///
/// pg_walstream creates a slot that is missing. A slot that disappeared
/// (dropped by an operator, or a failover to a server without it) must stop
/// the connector instead: a new slot starts at the current WAL position, and
/// everything committed in between would be skipped without a trace. So the
/// server and the slot are checked first, and right after START_REPLICATION
/// (before anything is read) the slot must still be the one the connector
/// confirmed: a slot created in between starts past every position the
/// connector confirmed.
async fn open_stream(
    cfg: &Config,
    pg_client: &tokio_postgres::Client,
    identity: &ServerIdentity,
    from: u64,
    feedback: Option<&Arc<SharedLsnFeedback>>,
) -> Result<LogicalReplicationStream> {
    let now = pg::identify_system(cfg).await?;
    if let Some(change) = identity.changed(&now) {
        return Err(Error::ServerChanged(change));
    }
    let slot = pg::slot_info(pg_client, &cfg.slot_name).await?;
    check_slot(cfg, &slot)?;
    let Some(slot) = slot else {
        return Err(Error::SlotLost(cfg.slot_name.clone()));
    };
    let confirmed = from.max(slot.confirmed_flush_lsn.unwrap_or(0));
    let mut stream =
        LogicalReplicationStream::new(&cfg.replication_url()?, replication_config(cfg, false))
            .await
            .map_err(|e| stream::classify(e, &cfg.slot_name))?;
    if let Some(f) = feedback {
        // Keep acknowledging through the tracker's handle.
        stream.shared_lsn_feedback = f.clone();
    }
    stream
        .start((from > 0).then_some(from))
        .await
        .map_err(|e| stream::classify(e, &cfg.slot_name))?;
    match pg::slot_info(pg_client, &cfg.slot_name).await? {
        Some(s) if s.confirmed_flush_lsn.unwrap_or(0) <= confirmed => Ok(stream),
        Some(s) => {
            tracing::error!(
                slot = %cfg.slot_name,
                confirmed_by_connector = %format_lsn(confirmed),
                slot_now_at = %s.confirmed_flush_lsn.map(format_lsn).unwrap_or_default(),
                "the slot was dropped and created again while the connector was disconnected"
            );
            Err(Error::SlotLost(cfg.slot_name.clone()))
        }
        None => Err(Error::SlotLost(cfg.slot_name.clone())),
    }
}

/// How often the slot's lag is read for the `connector_slot_lag_bytes` gauge.
const SLOT_LAG_EVERY: Duration = Duration::from_secs(2);

/// Sets the slot-lag gauge (WAL written since the slot's confirmed position,
/// in bytes) every [`SLOT_LAG_EVERY`] until `shutdown`; reconnects after a
/// lost connection. The gauge is left as it was while the server is away.
async fn watch_slot_lag(cfg: Config, mut shutdown: watch::Receiver<bool>) {
    let gauge = telemetry::metrics::gauge!(
        telemetry::names::CONNECTOR_SLOT_LAG, "slot" => cfg.slot_name.clone()
    );
    let mut client = None;
    while !*shutdown.borrow() {
        if client
            .as_ref()
            .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
        {
            client = pg::connect(&cfg).await.ok();
        }
        if let Some(c) = &client {
            let lag = c
                .query_opt(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8
                       FROM pg_replication_slots WHERE slot_name = $1",
                    &[&cfg.slot_name],
                )
                .await;
            match lag {
                Ok(Some(row)) => {
                    if let Some(bytes) = row.get::<_, Option<f64>>(0) {
                        gauge.set(bytes.max(0.0));
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "reading the slot lag"),
            }
        }
        let _ = tokio::time::timeout(SLOT_LAG_EVERY, shutdown.changed()).await;
    }
}

/// Runs the connector until `shutdown` flips (or, for `initial_only`, until
/// the snapshot is published).
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<()> {
    if !cfg.metrics_listen_addr.is_empty() {
        let addr = telemetry::serve_metrics(&cfg.metrics_listen_addr)
            .await
            .map_err(|e| {
                Error::Config(format!(
                    "metrics_listen_addr {}: {e}",
                    cfg.metrics_listen_addr
                ))
            })?;
        tracing::info!(%addr, "metrics on GET /metrics");
    }
    let pg_client = pg::connect(&cfg).await?;
    pg::preflight(&pg_client, &cfg).await?;
    // Every later connection must reach this cluster on this timeline.
    let identity = pg::identify_system(&cfg).await?;
    tracing::info!(system_id = %identity.system_id, timeline = identity.timeline, "PostgreSQL identified");
    let publisher = Arc::new(Publisher::connect(&cfg).await?);
    pg::ensure_publication(&pg_client, &cfg).await?;
    publisher.ensure_topic(&cfg.offsets_topic, true).await?;

    // The topic exists now: an unreadable offset is an error, never "none".
    let stored = offsets::load(&cfg, true).await?;
    let mut slot = pg::slot_info(&pg_client, &cfg.slot_name).await?;
    check_slot(&cfg, &slot)?;
    // After a crash the old walsender may hold the slot for a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while slot.as_ref().is_some_and(|s| s.active) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        slot = pg::slot_info(&pg_client, &cfg.slot_name).await?;
    }

    let snapshot = stored.is_none() && cfg.snapshot_mode != SnapshotMode::Never;
    match (&stored, &slot) {
        (Some(_), None) => return Err(Error::SlotLost(cfg.slot_name.clone())),
        // A slot without a recorded offset comes from a run that died before
        // its snapshot was published: the snapshot must be consistent with
        // the slot, so both start over.
        (None, Some(_)) if snapshot => {
            tracing::warn!(slot = %cfg.slot_name, "dropping slot left by an unfinished snapshot");
            pg::drop_slot(&pg_client, &cfg.slot_name).await?;
        }
        _ => {}
    }

    let emitter = Emitter::new(cfg.clone(), cfg.database()?, publisher.clone());
    let slot_lag = tokio::spawn(watch_slot_lag(cfg.clone(), shutdown.clone()));
    let mut start_lsn = stored.as_ref().map(|o| o.lsn);
    let progress = stored.as_ref().and_then(|o| o.incremental.clone());
    let mut incremental = crate::incremental::Incremental::new(&cfg, progress.clone());
    let (mut stream, tracker, tracker_task) = if stored.is_some() {
        // Resuming: the slot exists and must stay the same one.
        let mut stream =
            open_stream(&cfg, &pg_client, &identity, start_lsn.unwrap_or(0), None).await?;
        let _ = &mut stream;
        let (tracker, task) = Tracker::spawn(
            publisher.clone(),
            cfg.clone(),
            Some(stream.shared_lsn_feedback.clone()),
            true,
            progress,
        );
        (stream, tracker, task)
    } else {
        let mut stream = LogicalReplicationStream::new(
            &cfg.replication_url()?,
            replication_config(&cfg, snapshot),
        )
        .await
        .map_err(|e| stream::classify(e, &cfg.slot_name))?;
        let (tracker, task) = Tracker::spawn(
            publisher.clone(),
            cfg.clone(),
            Some(stream.shared_lsn_feedback.clone()),
            true,
            None,
        );
        if snapshot {
            stream.ensure_replication_slot().await?;
            let name = stream
                .exported_snapshot_name()
                .ok_or_else(|| Error::Replication("the new slot exported no snapshot".into()))?
                .to_string();
            let lsn = pg::slot_info(&pg_client, &cfg.slot_name)
                .await?
                .and_then(|s| s.confirmed_flush_lsn)
                .ok_or_else(|| Error::Replication("the new slot has no consistent point".into()))?;
            let tables = pg::published_tables(&pg_client, &cfg).await?;
            tracing::info!(snapshot = %name, lsn = %format_lsn(lsn), tables = tables.len(), "taking initial snapshot");
            let started = std::time::Instant::now();
            let rows = crate::snapshot::run(&emitter, &name, lsn, &tables, &tracker).await?;
            tracker.drain().await?;
            let record = StoredOffset {
                lsn,
                snapshot_completed: true,
                ts_ms: chrono::Utc::now().timestamp_millis(),
                incremental: None,
            };
            offsets::store(&publisher, &cfg, Some(record)).await?;
            tracing::info!(
                rows,
                secs = started.elapsed().as_secs_f64(),
                "snapshot published"
            );
            if cfg.snapshot_mode == SnapshotMode::InitialOnly {
                drop(stream);
                // Nothing will read the slot; keeping it would hold WAL forever.
                pg::drop_slot(&pg_client, &cfg.slot_name).await?;
                return Ok(());
            }
            start_lsn = Some(lsn);
        } else {
            // Streaming without snapshot from a fresh slot.
            stream.ensure_replication_slot().await?;
            start_lsn = pg::slot_info(&pg_client, &cfg.slot_name)
                .await?
                .and_then(|s| s.confirmed_flush_lsn);
        }
        stream
            .start(start_lsn)
            .await
            .map_err(|e| stream::classify(e, &cfg.slot_name))?;
        (stream, tracker, task)
    };
    // A reconnect before the first acknowledgement resumes from here.
    tracker
        .acked
        .fetch_max(start_lsn.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
    tracing::info!(slot = %cfg.slot_name, from = %start_lsn.map(format_lsn).unwrap_or_else(|| "slot".into()), "streaming");

    let heartbeat = (cfg.heartbeat_interval_ms > 0).then(|| {
        let hb_cfg = cfg.clone();
        let interval = Duration::from_millis(hb_cfg.heartbeat_interval_ms);
        tokio::spawn(async move {
            // Reconnects after a server restart; a missed beat only delays the slot.
            loop {
                match pg::connect(&hb_cfg).await {
                    Ok(c) => stream::heartbeat(c, interval).await,
                    Err(e) => tracing::warn!(error = %e, "heartbeat connection failed"),
                }
                tokio::time::sleep(interval).await;
            }
        })
    });

    let feedback = stream.shared_lsn_feedback.clone();
    let mut pg_client = pg_client;
    let result = loop {
        let result = stream::run(
            &emitter,
            &pg_client,
            &mut stream,
            &tracker,
            &mut incremental,
            shutdown.clone(),
        )
        .await;
        // A dropped catalog connection is as recoverable as a dropped stream.
        let reason = match &result {
            Err(Error::Replication(r)) => r.clone(),
            Err(Error::ReplicationClient(e)) => crate::error::one_line(e),
            Err(Error::Postgres(r)) if pg_client.is_closed() => r.clone(),
            Err(Error::PostgresClient(e)) if pg_client.is_closed() => crate::error::pg_message(e),
            _ => break result,
        };
        if *shutdown.borrow() {
            break result;
        }
        // The replication connection dropped (server restart, network, or
        // wal_sender_timeout while Kafka was down and the queue full). Publish
        // what is in flight, then resume right after the last acknowledged
        // commit; only a transaction cut in the middle is sent again.
        tracing::warn!(%reason, "replication stream lost; reconnecting");
        tracker.drain().await?;
        incremental.reset_window();
        let from = tracker.acked.load(std::sync::atomic::Ordering::SeqCst);
        match reconnect(&cfg, &identity, from, &feedback, shutdown.clone()).await {
            Ok((new_client, new_stream)) => {
                pg_client = new_client;
                stream = new_stream;
            }
            Err(e) => break Err(e),
        }
    };
    if let Some(h) = heartbeat {
        h.abort();
    }
    slot_lag.abort();
    if result.is_ok() {
        // Clean stop: publish what is in flight and confirm it to the slot,
        // unless Kafka does not answer in time (an outage): then what it did
        // not acknowledge is sent again at the next start.
        let limit = Duration::from_millis(cfg.shutdown_timeout_ms);
        match tokio::time::timeout(limit, tracker.drain()).await {
            Ok(drained) => {
                drained?;
                stream.send_feedback().await?;
                if let Err(e) = publisher.flush(Duration::from_secs(5)) {
                    tracing::warn!(error = %e, "flushing the producer");
                }
                tracing::info!(lsn = %format_lsn(tracker.acked.load(std::sync::atomic::Ordering::SeqCst)), "stopped");
            }
            Err(_) => {
                let _ = stream.send_feedback().await;
                tracing::warn!(
                    timeout_ms = cfg.shutdown_timeout_ms,
                    acked = %format_lsn(tracker.acked.load(std::sync::atomic::Ordering::SeqCst)),
                    "Kafka did not acknowledge everything in time; stopping anyway: \
                     the unacknowledged changes are sent again at the next start"
                );
                tracker_task.abort();
            }
        }
    } else if result.as_ref().is_err_and(|e| !e.is_retryable()) {
        // Nothing more will be acknowledged; do not wait for Kafka.
        tracker_task.abort();
    }
    drop(tracker);
    let _ = tracker_task.await;
    result
}

/// Reopens the catalog connection and the replication stream, retrying
/// with back-off while PostgreSQL is unreachable (or until shutdown). A lost
/// or recreated slot, or another server, is final.
async fn reconnect(
    cfg: &Config,
    identity: &ServerIdentity,
    from: u64,
    feedback: &Arc<SharedLsnFeedback>,
    shutdown: watch::Receiver<bool>,
) -> Result<(tokio_postgres::Client, LogicalReplicationStream)> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    let attempt = || async {
        let client = pg::connect(cfg).await?;
        let stream = open_stream(cfg, &client, identity, from, Some(feedback)).await?;
        Ok::<_, Error>((client, stream))
    };
    attempt
        .retry(backoff)
        .when(|e| e.is_retryable() && !*shutdown.borrow())
        .notify(|e, wait| {
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "reconnect failed");
        })
        .await
}

/// Prints the slot and offset state, including slot lag in bytes.
pub async fn status(cfg: &Config) -> Result<String> {
    let pg_client = pg::connect(cfg).await?;
    let mut out = String::new();
    match pg::slot_info(&pg_client, &cfg.slot_name).await? {
        None => out.push_str(&format!("slot {}: absent\n", cfg.slot_name)),
        Some(s) => out.push_str(&format!(
            "slot {}: active={} wal_status={} confirmed_flush_lsn={} lag_bytes={}\n",
            cfg.slot_name,
            s.active,
            s.wal_status.as_deref().unwrap_or("?"),
            s.confirmed_flush_lsn
                .map(format_lsn)
                .unwrap_or_else(|| "?".into()),
            s.lag_bytes
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into()),
        )),
    }
    if cfg.format == crate::config::Format::Avro {
        let registry = crate::publisher::Registry::new(&cfg.schema_registry_url);
        match registry.check().await {
            Ok(()) => out.push_str(&format!("registry {}: reachable\n", registry.url())),
            // The stream waits for it (lag_bytes grows) until it answers again.
            Err(e) => out.push_str(&format!(
                "registry {}: unavailable, streaming waits for it ({e})\n",
                registry.url()
            )),
        }
    }
    // The slot line is the one that matters during a Kafka outage; still show it.
    match offsets::load(cfg, false).await {
        Err(e) => out.push_str(&format!("offset {}: unavailable ({e})\n", cfg.name)),
        Ok(None) => out.push_str(&format!("offset {}: none\n", cfg.name)),
        Ok(Some(o)) => {
            out.push_str(&format!(
                "offset {}: lsn={} snapshot_completed={} stored_at_ms={}\n",
                cfg.name,
                format_lsn(o.lsn),
                o.snapshot_completed,
                o.ts_ms
            ));
            if let Some(p) = &o.incremental {
                out.push_str(&format!(
                    "incremental snapshot {}: tables left {:?}, after key {:?}\n",
                    p.signal_id, p.tables, p.last_key
                ));
            }
        }
    }
    Ok(out)
}

/// The way out of an invalidated slot: drop it and forget the offset, so the
/// next start takes a new snapshot.
pub async fn reset(cfg: &Config) -> Result<()> {
    let pg_client = pg::connect(cfg).await?;
    pg::drop_slot(&pg_client, &cfg.slot_name).await?;
    let publisher = Publisher::connect(cfg).await?;
    offsets::store(&publisher, cfg, None).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_slot_is_refused_with_reset_hint() {
        let cfg = Config::load(None).unwrap();
        let slot = Some(pg::SlotInfo {
            confirmed_flush_lsn: Some(0x1_0000_0010),
            wal_status: Some("lost".into()),
            active: false,
            lag_bytes: None,
        });
        let msg = check_slot(&cfg, &slot).unwrap_err().to_string();
        assert!(
            msg.contains("1/10") && msg.contains("connector reset"),
            "{msg}"
        );
        check_slot(&cfg, &None).unwrap();
    }
}
