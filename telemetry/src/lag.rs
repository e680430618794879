//! A consumer group's lag per partition as the [`crate::names::CONSUMER_LAG`] gauge, polled
//! from the group's committed offsets and the high watermarks (what `topics lag` prints).

use std::time::Duration;

use tokio::task::JoinHandle;
use topics::settings::KafkaSettings;

use crate::names::CONSUMER_LAG;

/// Polls `group`'s lag on `topic` every `every` until dropped.
pub struct LagWatch(JoinHandle<()>);

impl Drop for LagWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts polling. Failures (Kafka unreachable, nothing committed yet) are logged at debug
/// and the next poll tries again; the gauges keep their last value meanwhile.
pub fn watch(kafka: KafkaSettings, group: String, topic: String, every: Duration) -> LagWatch {
    LagWatch(tokio::spawn(async move {
        loop {
            let (kafka, group_name, topic_name) = (kafka.clone(), group.clone(), topic.clone());
            let lags = tokio::task::spawn_blocking(move || {
                topics::groups::lag(&kafka, &group_name, Some(&topic_name))
            })
            .await;
            match lags {
                Ok(Ok(lags)) => {
                    for lag in lags {
                        metrics::gauge!(
                            CONSUMER_LAG,
                            "group" => group.clone(),
                            "topic" => lag.topic,
                            "partition" => lag.partition.to_string()
                        )
                        .set(lag.lag as f64);
                    }
                }
                Ok(Err(e)) => tracing::debug!(%group, error = %e, "consumer lag not read"),
                Err(e) => tracing::debug!(%group, error = %e, "consumer lag task failed"),
            }
            tokio::time::sleep(every).await;
        }
    }))
}
