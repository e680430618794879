//! `iot-platform rebuild`: build the next generation of the read model from the start of the
//! topic while the current one keeps answering, switch reads to it once it has caught up,
//! then drop the old generation.
//!
//! A rebuild interrupted before the switch resumes where it stopped: the new generation's
//! store and consumer group keep their offsets, and the store skips what it already applied.
//! One interrupted between the switch and the drop leaves the old generation's data behind.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use projectors::dead_letters::{self, DeadLetter};
use projectors::Store;
use tokio::sync::oneshot;
use topics::cluster::Cluster;
use tracing::info;

use crate::configuration::Settings;
use crate::generations::{self, ReadStore};
use crate::startup::GENERATION_POLL;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Projector(#[from] projectors::Error),
    #[error(transparent)]
    Contract(#[from] topics::Error),
    #[error("topic {0} does not exist")]
    NoTopic(String),
    #[error("the rebuild's projector stopped: {0}")]
    Stopped(String),
    #[error("consumer group {group} has active members ({state}); is another rebuild running?")]
    GroupActive { group: String, state: String },
    #[error(
        "generation {generation} dead-lettered {} record(s) ({}); reads stay on the current generation and generation {generation} was dropped. Look at {topic}, fix the cause and rerun, or rerun with --accept-dead-letters to switch anyway",
        .dead.len(), locations(.dead)
    )]
    DeadLetters {
        generation: u32,
        topic: String,
        dead: Vec<DeadLetter>,
    },
}

/// The first few dead letters as `topic partition@offset: reason`.
fn locations(dead: &[DeadLetter]) -> String {
    let mut shown: Vec<String> = dead
        .iter()
        .take(3)
        .map(|d| format!("{} {}@{}: {}", d.topic, d.partition, d.offset, d.reason))
        .collect();
    if dead.len() > shown.len() {
        shown.push(format!("and {} more", dead.len() - shown.len()));
    }
    shown.join("; ")
}

async fn cluster_partitions(settings: &Settings) -> Result<Vec<i32>, RebuildError> {
    Ok(Cluster::connect(&settings.kafka)?
        .partitions(&settings.iot_topic)
        .await?
        .ok_or_else(|| RebuildError::NoTopic(settings.iot_topic.clone()))?
        .iter()
        .map(|p| p.id)
        .collect())
}

async fn recorded_nothing(
    partitions: &[i32],
    store: &ReadStore,
    topic: &str,
) -> Result<bool, RebuildError> {
    for partition in partitions {
        if store.applied_offset(topic, *partition).await?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub from: u32,
    pub to: u32,
    /// Events the new generation applied before the switch.
    pub applied: u64,
    /// From the start of the rebuild until reads were switched.
    pub time_to_switch: Duration,
}

/// How far generation `store` is behind the topic, in records. A partition's next record is
/// the one after the store's last offset, or where the projector stood when it last ran out of
/// records: past the transaction markers a transactional producer (the outbox relay) leaves
/// after its last record, which the store's offset never covers.
async fn lag(
    cluster: &Cluster,
    store: &ReadStore,
    topic: &str,
    idle: &BTreeMap<i32, i64>,
) -> Result<(i64, i64), RebuildError> {
    let partitions = cluster
        .partitions(topic)
        .await?
        .ok_or_else(|| RebuildError::NoTopic(topic.to_owned()))?;
    let (mut total, mut behind) = (0, 0);
    for partition in &partitions {
        total += partition.high_watermark - partition.low_watermark;
        let stored = match store.applied_offset(topic, partition.id).await? {
            Some(applied) => applied + 1,
            None => partition.low_watermark,
        };
        let next = idle
            .get(&partition.id)
            .map_or(stored, |idle| stored.max(*idle));
        behind += (partition.high_watermark - next).max(0);
    }
    Ok((total, behind))
}

/// The new generation's group must have no members: a second rebuild would split the
/// partitions with the first. Where it starts is the store's business: a projector starts
/// every partition where its store stands, so a store that recorded nothing is read from the
/// start whatever the group committed before.
async fn check_group(settings: &Settings, generation: u32) -> Result<(), RebuildError> {
    let group = generations::group(settings, generation);
    let kafka = settings.kafka.clone();
    tokio::task::spawn_blocking(move || {
        let state = topics::groups::state(&kafka, &group)?;
        if !state.is_idle() {
            return Err(RebuildError::GroupActive {
                group,
                state: state.state,
            });
        }
        Ok(())
    })
    .await
    .map_err(|e| RebuildError::Stopped(e.to_string()))?
}

/// Rebuilds into the next generation and switches reads to it, unless it dead-lettered
/// records and `accept_dead_letters` is false: a generation missing events is not served.
pub async fn rebuild(
    settings: &Settings,
    show_progress: bool,
    accept_dead_letters: bool,
) -> Result<RebuildReport, RebuildError> {
    let started = Instant::now();
    let catalog = generations::open_store(settings, generations::FIRST).await?;
    let from = generations::current(&catalog, settings).await?;
    let to = from + 1;
    let store = generations::open_store(settings, to).await?;
    check_group(settings, to).await?;
    // A rebuild that starts on an empty generation counts the dead letters of this run only;
    // one that resumes counts those of the generation's earlier runs too.
    let fresh = recorded_nothing(
        &cluster_partitions(settings).await?,
        &store,
        &settings.iot_topic,
    )
    .await?;
    let since = fresh.then(now_ms);
    let rebuilding = Settings {
        iot_max_batch: settings.iot_rebuild_max_batch,
        ..settings.clone()
    };
    let projector = generations::projector(&rebuilding, to, store.clone())?;
    let status = projector.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let mut task = tokio::spawn(projector.run(async move {
        let _ = stopped.await;
    }));
    info!(from, to, group = %generations::group(settings, to), "rebuilding the read model");

    let cluster = Cluster::connect(&settings.kafka)?;
    let progress = ProgressBar::with_draw_target(
        None,
        if show_progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    progress.set_style(
        ProgressStyle::with_template(
            "generation {prefix} [{bar:40}] {pos}/{len} records, {per_sec}, lag {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    progress.set_prefix(to.to_string());
    loop {
        let idle = status.idle_positions();
        let (total, behind) = lag(&cluster, &store, &settings.iot_topic, &idle).await?;
        progress.set_length(u64::try_from(total).unwrap_or_default());
        progress.set_position(u64::try_from(total - behind).unwrap_or_default());
        progress.set_message(behind.to_string());
        if behind == 0 {
            break;
        }
        tokio::select! {
            finished = &mut task => {
                let reason = match finished {
                    Ok(Ok(())) => "it returned early".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(RebuildError::Stopped(reason));
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let group = generations::group(settings, to);
    let (kafka, topic) = (
        settings.kafka.clone(),
        settings.iot_dead_letter_topic.clone(),
    );
    let dead =
        tokio::task::spawn_blocking(move || dead_letters::of_group(&kafka, &topic, &group, since))
            .await
            .map_err(|e| RebuildError::Stopped(e.to_string()))??;
    if !dead.is_empty() {
        if !accept_dead_letters {
            progress.abandon_with_message("0, not switched");
            let _ = stop.send(());
            let _ = task.await;
            // Not served and not resumed: a rerun after the cause is fixed starts it afresh.
            store.clear().await?;
            return Err(RebuildError::DeadLetters {
                generation: to,
                topic: settings.iot_dead_letter_topic.clone(),
                dead,
            });
        }
        tracing::warn!(
            generation = to,
            count = dead.len(),
            "switching to a generation with dead letters, as asked"
        );
    }
    catalog
        .set_current_generation(&settings.iot_namespace, to)
        .await?;
    let time_to_switch = started.elapsed();
    progress.finish_with_message("0, switched");
    info!(
        from,
        to,
        seconds = time_to_switch.as_secs_f64(),
        "reads switched"
    );

    // Serving instances move their projectors to the new group, which carries on from here.
    let _ = stop.send(());
    task.await
        .map_err(|e| RebuildError::Stopped(e.to_string()))??;
    // Instances notice the switch within one poll; only then is the old generation unread.
    tokio::time::sleep(GENERATION_POLL * 3).await;
    generations::open_store(settings, from)
        .await?
        .clear()
        .await?;
    info!(generation = from, "old generation dropped");
    Ok(RebuildReport {
        from,
        to,
        applied: status.applied.load(Ordering::Relaxed),
        time_to_switch,
    })
}
