//! Read model generations. A rebuild fills generation n+1 from the start of the topic under a
//! consumer group of its own while generation n keeps answering, then switches reads with one
//! write in the store; serving instances follow the switch.
//!
//! Generation 1 keeps the plain names (group `iot-platform`, namespace `iot:mandates`), so a
//! platform that never rebuilt looks exactly as configured; generation n of a store is group
//! `iot-platform.<store>.g<n>`, namespace `iot:mandates:g<n>`.

use projectors::store::any::AnyStore;
use projectors::{Projector, ProjectorSettings, Store};

use crate::configuration::Settings;
use crate::mandates::MandatesProjection;

pub const FIRST: u32 = 1;

/// The store backend the read model lives in, chosen by configuration.
pub type ReadStore = AnyStore;

pub type MandatesProjector = Projector<MandatesProjection, ReadStore>;

/// The consumer group that folds generation `generation`. Later generations name their store,
/// because each store keeps its own generation count: moving the read model to MySQL must not
/// join the group of the Redis generation with the same number.
pub fn group(settings: &Settings, generation: u32) -> String {
    match generation {
        FIRST => settings.iot_group.clone(),
        n => format!("{}.{}.g{n}", settings.iot_group, settings.iot_store),
    }
}

/// The store namespace holding generation `generation`.
pub fn namespace(settings: &Settings, generation: u32) -> String {
    match generation {
        FIRST => settings.iot_namespace.clone(),
        n => format!("{}:g{n}", settings.iot_namespace),
    }
}

pub async fn open_store(settings: &Settings, generation: u32) -> projectors::Result<ReadStore> {
    AnyStore::connect(
        settings.iot_store,
        &settings.redis_url,
        &settings.mysql_url,
        &namespace(settings, generation),
    )
    .await
}

/// The generation reads are served from.
pub async fn current(store: &impl Store, settings: &Settings) -> projectors::Result<u32> {
    Ok(store
        .current_generation(&settings.iot_namespace)
        .await?
        .unwrap_or(FIRST))
}

/// A projector folding the topic into generation `generation`.
pub fn projector(
    settings: &Settings,
    generation: u32,
    store: ReadStore,
) -> projectors::Result<MandatesProjector> {
    Projector::new(
        MandatesProjection,
        store,
        ProjectorSettings {
            kafka: settings.kafka.clone(),
            group_id: group(settings, generation),
            topic: settings.iot_topic.clone(),
            dead_letter_topic: settings.iot_dead_letter_topic.clone(),
            max_batch: settings.iot_max_batch,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_generation_keeps_the_configured_names() {
        let settings = Settings::default();
        assert_eq!(group(&settings, FIRST), "iot-platform");
        assert_eq!(namespace(&settings, FIRST), "iot:mandates");
        assert_eq!(group(&settings, 3), "iot-platform.redis.g3");
        assert_eq!(namespace(&settings, 3), "iot:mandates:g3");
    }
}
