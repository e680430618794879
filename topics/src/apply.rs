//! `topics apply`: make the cluster and the registry match the catalogue.
//!
//! Every schema is checked for BACKWARD compatibility before anything is changed, so a
//! refused schema leaves the cluster and the registry as they were.

use std::fmt;

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::registry::{Compatibility, Registry};
use crate::spec::{CleanupPolicy, TopicSpec};

/// The compatibility level the platform enforces on every subject: consumers on the new schema
/// can read everything already in the topic, so a read model can always be rebuilt.
pub const COMPATIBILITY: &str = "BACKWARD";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created {
        partitions: i32,
        replication_factor: i32,
    },
    Unchanged,
    /// The topic exists but not as its spec says; apply never repartitions on its own, because
    /// adding partitions moves keys and breaks per-key order.
    Differs(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaOutcome {
    Registered { id: u32 },
    Unchanged { id: u32, version: u32 },
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub topics: Vec<(String, TopicOutcome)>,
    pub schemas: Vec<(String, SchemaOutcome)>,
    pub notes: Vec<String>,
}

impl ApplyReport {
    pub fn changed_nothing(&self) -> bool {
        self.topics
            .iter()
            .all(|(_, o)| *o == TopicOutcome::Unchanged)
            && self
                .schemas
                .iter()
                .all(|(_, o)| matches!(o, SchemaOutcome::Unchanged { .. }))
    }

    pub fn drifted(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.topics
            .iter()
            .filter_map(|(name, outcome)| match outcome {
                TopicOutcome::Differs(problems) => Some((name.as_str(), problems.as_slice())),
                _ => None,
            })
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for note in &self.notes {
            writeln!(f, "note     {note}")?;
        }
        for (name, outcome) in &self.topics {
            match outcome {
                TopicOutcome::Created { partitions, replication_factor } => writeln!(
                    f,
                    "topic    {name}: created ({partitions} partitions, replication factor {replication_factor})"
                )?,
                TopicOutcome::Unchanged => writeln!(f, "topic    {name}: unchanged")?,
                TopicOutcome::Differs(problems) => {
                    writeln!(f, "topic    {name}: DIFFERS from its spec: {}", problems.join("; "))?
                }
            }
        }
        for (subject, outcome) in &self.schemas {
            match outcome {
                SchemaOutcome::Registered { id } => {
                    writeln!(f, "schema   {subject}: registered (id {id})")?
                }
                SchemaOutcome::Unchanged { id, version } => writeln!(
                    f,
                    "schema   {subject}: unchanged (id {id}, version {version})"
                )?,
            }
        }
        Ok(())
    }
}

/// Applies `specs`: refuses incompatible schemas first, then creates missing topics and
/// registers new schema versions.
pub async fn apply(
    cluster: &Cluster,
    registry: &Registry,
    specs: &[TopicSpec],
) -> Result<ApplyReport> {
    let mut report = ApplyReport::default();

    let mut to_register = Vec::new();
    for spec in specs {
        let Some(schema) = spec.value_schema else {
            continue;
        };
        let subject = spec.value_subject();
        match registry.lookup(&subject, schema).await? {
            Some(existing) => report.schemas.push((
                subject,
                SchemaOutcome::Unchanged {
                    id: existing.id,
                    version: existing.version,
                },
            )),
            None => {
                if let Compatibility::Incompatible { reason } =
                    registry.check_compatibility(&subject, schema).await?
                {
                    return Err(Error::IncompatibleSchema { subject, reason });
                }
                to_register.push((subject, schema));
            }
        }
    }

    let brokers = i32::try_from(cluster.broker_count()?).unwrap_or(i32::MAX);
    for spec in specs {
        let outcome = match cluster.topic(spec.name).await? {
            Some(state) => compare(spec, &state),
            None => {
                let replication_factor = spec.replication_factor.min(brokers).max(1);
                if replication_factor < spec.replication_factor {
                    report.notes.push(format!(
                        "{}: replication factor {replication_factor}, not {}: the cluster has {brokers} broker(s)",
                        spec.name, spec.replication_factor
                    ));
                }
                cluster.create(spec, replication_factor).await?;
                TopicOutcome::Created {
                    partitions: spec.partitions,
                    replication_factor,
                }
            }
        };
        report.topics.push((spec.name.to_owned(), outcome));
    }

    for (subject, schema) in to_register {
        // Pinning the level per subject makes enforcement independent of the registry's
        // global default.
        registry.set_compatibility(&subject, COMPATIBILITY).await?;
        let id = registry.register(&subject, schema).await?;
        report
            .schemas
            .push((subject, SchemaOutcome::Registered { id }));
    }
    Ok(report)
}

/// How an existing topic differs from its spec.
pub fn compare(spec: &TopicSpec, state: &crate::cluster::TopicState) -> TopicOutcome {
    let mut problems = Vec::new();
    let partitions = state.partitions.len();
    if partitions != usize::try_from(spec.partitions).unwrap_or(0) {
        problems.push(format!(
            "has {partitions} partitions, spec says {}",
            spec.partitions
        ));
    }
    let policy = state
        .configs
        .get("cleanup.policy")
        .map(String::as_str)
        .unwrap_or("delete");
    if CleanupPolicy::from_config(policy) != Some(spec.cleanup_policy) {
        problems.push(format!(
            "cleanup.policy is {policy}, spec says {}",
            spec.cleanup_policy
        ));
    }
    if problems.is_empty() {
        TopicOutcome::Unchanged
    } else {
        TopicOutcome::Differs(problems)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::cluster::{PartitionState, TopicState};
    use crate::spec::CONNECTION_MANDATES;

    fn state(partitions: i32, policy: &str) -> TopicState {
        TopicState {
            name: CONNECTION_MANDATES.name.to_owned(),
            partitions: (0..partitions)
                .map(|id| PartitionState {
                    id,
                    leader: 1,
                    replicas: vec![1],
                    in_sync: vec![1],
                    low_watermark: 0,
                    high_watermark: 0,
                })
                .collect(),
            configs: HashMap::from([("cleanup.policy".to_owned(), policy.to_owned())]),
        }
    }

    #[test]
    fn a_topic_as_specified_is_unchanged() {
        assert_eq!(
            compare(&CONNECTION_MANDATES, &state(4, "compact")),
            TopicOutcome::Unchanged
        );
    }

    #[test]
    fn partition_and_policy_drift_are_both_reported() {
        let TopicOutcome::Differs(problems) = compare(&CONNECTION_MANDATES, &state(3, "delete"))
        else {
            panic!("drift not seen");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("has 3 partitions, spec says 4"));
    }
}
