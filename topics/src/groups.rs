//! Consumer groups as an operator sees them: how far behind a group is, and moving its committed
//! offsets (`topics lag`, `topics reset`).
//!
//! Everything goes through one consumer handle that carries the group's id but never subscribes:
//! it can read and write the group's offsets without becoming a member, so looking never
//! triggers a rebalance of the services that consume.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use backon::{BlockingRetryable, ExponentialBuilder};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::kafka;
use crate::settings::KafkaSettings;

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request is asked again while the group's coordinator is busy.
const COORDINATOR_PATIENCE: Duration = Duration::from_secs(60);

/// The metadata projectors commit their offsets with: their read model's store owns the
/// offsets (a projector starts where its store stands), and Kafka's are there for lag only.
pub const STORE_OWNED_METADATA: &str = "projectors:store-owned";

/// Where a group stands on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The next offset the group will read; `None` when it never committed on this partition.
    pub committed: Option<i64>,
    pub low_watermark: i64,
    /// One past the last record (the log end offset).
    pub high_watermark: i64,
    /// Records still to read.
    pub lag: i64,
}

/// One partition's committed offset before and after a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetChange {
    pub topic: String,
    pub partition: i32,
    pub old: Option<i64>,
    pub new: i64,
}

/// The group as the coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// The coordinator's name for it: `Stable`, `PreparingRebalance`, `Empty`, `Dead`, …
    pub state: String,
    /// Client ids of the current members.
    pub members: Vec<String>,
}

impl GroupState {
    /// No member can be reading or committing, so its offsets may be moved.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && matches!(self.state.as_str(), "Empty" | "Dead")
    }
}

/// Where `reset` moves a group's offsets to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The low watermark: re-read everything the log still holds.
    Earliest,
    /// The high watermark: skip everything written so far.
    Latest,
    /// The first record whose timestamp is at or after this many ms since the epoch; the high
    /// watermark where there is none.
    Timestamp(i64),
}

impl FromStr for ResetTarget {
    type Err = Error;

    /// `earliest`, `latest`, an RFC 3339 time (`2026-11-21T10:00:00Z`) or epoch milliseconds.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("earliest") {
            return Ok(ResetTarget::Earliest);
        }
        if s.eq_ignore_ascii_case("latest") {
            return Ok(ResetTarget::Latest);
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(ResetTarget::Timestamp)
                .map_err(|_| Error::BadResetTarget(s.to_owned()));
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|time| ResetTarget::Timestamp(time.timestamp_millis()))
            .map_err(|_| Error::BadResetTarget(s.to_owned()))
    }
}

impl fmt::Display for ResetTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetTarget::Earliest => f.write_str("earliest"),
            ResetTarget::Latest => f.write_str("latest"),
            ResetTarget::Timestamp(ms) => match chrono::DateTime::from_timestamp_millis(*ms) {
                Some(time) => write!(
                    f,
                    "{}",
                    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
                None => write!(f, "{ms} ms"),
            },
        }
    }
}

/// How the coordinator describes `group`; a group it does not know is `Dead` without members.
pub fn state(settings: &KafkaSettings, group: &str) -> Result<GroupState> {
    GroupClient::connect(settings, group)?.state()
}

/// The group's position and lag on every partition of `topic`, or of every topic it has
/// committed offsets on. Fails with [`Error::NoCommittedOffsets`] when there is nothing to
/// show: no offsets, and (for a named topic) no members that might be about to commit.
pub fn lag(
    settings: &KafkaSettings,
    group: &str,
    topic: Option<&str>,
) -> Result<Vec<PartitionLag>> {
    let client = GroupClient::connect(settings, group)?;
    let Standing {
        partitions,
        committed,
        ..
    } = client.positions(topic)?;
    if committed.is_empty() && (topic.is_none() || client.state()?.is_idle()) {
        return Err(Error::NoCommittedOffsets {
            group: group.to_owned(),
            topic: topic.map(str::to_owned),
        });
    }
    let mut lags = Vec::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        let (low, high) = client.watermarks(&topic, partition)?;
        let committed = committed.get(&(topic.clone(), partition)).copied();
        // A commit below the low watermark points at records retention already removed; the
        // group will read from the low watermark, so that is what is left. Not `clamp`: it
        // panics on a broker answer with low > high.
        let next = committed.unwrap_or(low).max(low).min(high);
        lags.push(PartitionLag {
            topic,
            partition,
            committed,
            low_watermark: low,
            high_watermark: high,
            lag: high - next,
        });
    }
    Ok(lags)
}

/// Commits `target` for the group on every partition of `topic`, or of every topic it has
/// committed offsets on, and returns what changed, as read back from the coordinator.
///
/// Refuses with [`Error::GroupActive`] while the group has members: they would overwrite the
/// reset with their next commit, and the broker would reject ours anyway.
pub fn reset(
    settings: &KafkaSettings,
    group: &str,
    topic: Option<&str>,
    target: ResetTarget,
) -> Result<Vec<OffsetChange>> {
    let client = GroupClient::connect(settings, group)?;
    let state = client.state()?;
    if !state.is_idle() {
        return Err(Error::GroupActive {
            group: group.to_owned(),
            state: state.state,
            members: state.members.len(),
        });
    }
    let Standing {
        partitions,
        committed: old,
        store_owned,
    } = client.positions(topic)?;
    if store_owned {
        return Err(Error::StoreOwnedOffsets {
            group: group.to_owned(),
        });
    }
    if partitions.is_empty() || (topic.is_none() && old.is_empty()) {
        return Err(Error::NoCommittedOffsets {
            group: group.to_owned(),
            topic: topic.map(str::to_owned),
        });
    }

    let mut wanted = BTreeMap::new();
    match target {
        ResetTarget::Earliest | ResetTarget::Latest => {
            for (topic, partition) in &partitions {
                let (low, high) = client.watermarks(topic, *partition)?;
                let offset = if target == ResetTarget::Earliest {
                    low
                } else {
                    high
                };
                wanted.insert((topic.clone(), *partition), offset);
            }
        }
        ResetTarget::Timestamp(ms) => {
            let mut query = TopicPartitionList::with_capacity(partitions.len());
            for (topic, partition) in &partitions {
                query.add_partition_offset(topic, *partition, Offset::Offset(ms))?;
            }
            let found = client.ask(|| client.consumer.offsets_for_times(query.clone(), TIMEOUT))?;
            for element in found.elements() {
                element.error()?;
                let offset = match element.offset() {
                    Offset::Offset(offset) => offset,
                    // No record at or after the time yet: the group starts with the next one
                    // written.
                    _ => client.watermarks(element.topic(), element.partition())?.1,
                };
                wanted.insert((element.topic().to_owned(), element.partition()), offset);
            }
        }
    }

    let mut commit = TopicPartitionList::with_capacity(wanted.len());
    for ((topic, partition), offset) in &wanted {
        commit.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    // Not a member, so the commit carries no generation: the coordinator accepts it only while
    // the group is empty, which closes the gap between the state check above and this commit.
    client.ask(|| client.consumer.commit(&commit, CommitMode::Sync))?;

    // Report what the coordinator now holds, not what was asked, so a partial commit shows.
    let now = client.positions(topic)?.committed;
    let mut changes = Vec::with_capacity(partitions.len());
    for key in partitions {
        let new = now.get(&key).copied();
        if new != wanted.get(&key).copied() {
            return Err(Error::ResetNotApplied {
                group: client.group,
                topic: key.0,
                partition: key.1,
            });
        }
        let old = old.get(&key).copied();
        let (topic, partition) = key;
        changes.push(OffsetChange {
            topic,
            partition,
            old,
            new: new.unwrap_or_default(),
        });
    }
    Ok(changes)
}

/// (topic, partition) pairs, sorted.
type Partitions = Vec<(String, i32)>;

/// Where the group stands, from one committed-offsets request.
struct Standing {
    partitions: Partitions,
    committed: Committed,
    /// A projector committed these offsets ([`STORE_OWNED_METADATA`]): its read model's store,
    /// not Kafka, decides where it starts.
    store_owned: bool,
}
/// The next offset to read, by (topic, partition).
type Committed = BTreeMap<(String, i32), i64>;

struct GroupClient {
    consumer: BaseConsumer,
    group: String,
    bootstrap: String,
}

impl GroupClient {
    fn connect(settings: &KafkaSettings, group: &str) -> Result<Self> {
        Ok(Self {
            consumer: kafka::consumer_config(settings, group).create()?,
            group: group.to_owned(),
            bootstrap: settings.kafka_bootstrap_servers.clone(),
        })
    }

    fn state(&self) -> Result<GroupState> {
        let list = self.ask(|| self.consumer.fetch_group_list(Some(&self.group), TIMEOUT))?;
        Ok(list
            .groups()
            .iter()
            .find(|g| g.name() == self.group)
            .map_or_else(
                || GroupState {
                    state: "Dead".to_owned(),
                    members: Vec::new(),
                },
                |g| GroupState {
                    state: g.state().to_owned(),
                    members: g
                        .members()
                        .iter()
                        .map(|m| m.client_id().to_owned())
                        .collect(),
                },
            ))
    }

    /// The partitions to look at and the group's committed offsets on them: every partition of
    /// `topic`, or of every topic the group has committed on.
    fn positions(&self, topic: Option<&str>) -> Result<Standing> {
        let mut all = self.partitions(topic)?;
        all.sort();
        if let Some(name) = topic {
            if all.is_empty() {
                return Err(Error::UnknownTopic(name.to_owned()));
            }
        }

        let mut query = TopicPartitionList::with_capacity(all.len());
        for (topic, partition) in &all {
            query.add_partition(topic, *partition);
        }
        let mut committed = Committed::new();
        let mut store_owned = false;
        if query.count() > 0 {
            let answer = self.ask(|| {
                let answer = self.consumer.committed_offsets(query.clone(), TIMEOUT)?;
                // A partition's own error, e.g. its coordinator still loading the offsets.
                for element in answer.elements() {
                    element.error()?;
                }
                Ok(answer)
            })?;
            for element in answer.elements() {
                store_owned |= element.metadata() == STORE_OWNED_METADATA;
                if let Offset::Offset(offset) = element.offset() {
                    committed.insert((element.topic().to_owned(), element.partition()), offset);
                }
            }
        }
        if topic.is_none() {
            all.retain(|(topic, _)| committed.keys().any(|(t, _)| t == topic));
        }
        Ok(Standing {
            partitions: all,
            committed,
            store_owned,
        })
    }

    /// Every partition of `topic`, or of every topic.
    fn partitions(&self, topic: Option<&str>) -> Result<Partitions> {
        // A topic just created or losing its leader reports an error for a moment; skipping it
        // would leave it out of a lag or a reset, so ask again for a while, then fail.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // All topics in one request, and a named one looked up in it: asking for a topic
            // by name could create it on a broker that auto-creates topics.
            let metadata = self
                .consumer
                .fetch_metadata(None, TIMEOUT)
                .map_err(|source| Error::KafkaUnreachable {
                    bootstrap: self.bootstrap.clone(),
                    source,
                })?;
            let mut all = Partitions::new();
            let mut failed = None;
            for t in metadata.topics() {
                if t.name().starts_with("__") || topic.is_some_and(|name| t.name() != name) {
                    continue;
                }
                match t.error().map(RDKafkaErrorCode::from) {
                    None => {
                        all.extend(t.partitions().iter().map(|p| (t.name().to_owned(), p.id())))
                    }
                    Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {}
                    Some(code) => failed = Some(code),
                }
            }
            match failed {
                None => return Ok(all),
                Some(code) if Instant::now() >= deadline => {
                    return Err(KafkaError::MetadataFetch(code).into())
                }
                Some(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Asks `request` again, with backoff, while the group's coordinator is busy: not elected
    /// yet (a fresh cluster creates `__consumer_offsets` on the first group request), moving to
    /// another broker, or loading the group's offsets. Any other answer is final.
    fn ask<T>(&self, request: impl FnMut() -> KafkaResult<T>) -> Result<T> {
        let answer = request
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_total_delay(Some(COORDINATOR_PATIENCE))
                    .without_max_times(),
            )
            .sleep(std::thread::sleep)
            .when(coordinator_busy)
            .notify(|err, wait| {
                tracing::debug!(group = %self.group, %err, ?wait, "group coordinator busy; asking again")
            })
            .call();
        Ok(answer?)
    }

    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        Ok(self.consumer.fetch_watermarks(topic, partition, TIMEOUT)?)
    }
}

/// The coordinator's answers that mean "ask again shortly".
fn coordinator_busy(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_targets_parse() {
        assert_eq!(
            "earliest".parse::<ResetTarget>().unwrap(),
            ResetTarget::Earliest
        );
        assert_eq!(
            "LATEST".parse::<ResetTarget>().unwrap(),
            ResetTarget::Latest
        );
        assert_eq!(
            "1763719200000".parse::<ResetTarget>().unwrap(),
            ResetTarget::Timestamp(1_763_719_200_000)
        );
        assert_eq!(
            "2025-11-21T10:00:00Z".parse::<ResetTarget>().unwrap(),
            ResetTarget::Timestamp(1_763_719_200_000)
        );
        assert_eq!(
            "2025-11-21T11:00:00+01:00".parse::<ResetTarget>().unwrap(),
            ResetTarget::Timestamp(1_763_719_200_000)
        );
        for bad in ["", "yesterday", "-5", "2025-11-21", "99999999999999999999"] {
            let err = bad.parse::<ResetTarget>().unwrap_err();
            assert!(matches!(err, Error::BadResetTarget(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn a_timestamp_target_shows_as_rfc_3339() {
        assert_eq!(
            ResetTarget::Timestamp(1_763_719_200_000).to_string(),
            "2025-11-21T10:00:00.000Z"
        );
    }
}
