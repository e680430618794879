//! The audit log: every order event as one JSON line in an append-only file per hour
//! (`audit-YYYY-MM-DDTHH.jsonl`, UTC, the hour of writing), fsynced before the batch's
//! offsets are committed, so a crash loses nothing. What a crash can repeat are the records
//! written after the last commit, all in the newest file (or the one before it, across an
//! hour): on start the log reads those two files' event ids and skips them, and cuts a line
//! torn by the crash. So each event is in the log exactly once.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use topics::settings::KafkaSettings;
use uuid::Uuid;

use crate::consumer::{self, ConsumerConfig, Delivered};
use crate::error::{Error, Result};

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    pub event_id: Uuid,
    pub kind: String,
    pub order_id: Uuid,
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub status: String,
    pub previous_status: Option<String>,
    pub occurred_at: i64,
    pub partition: i32,
    pub offset: i64,
}

impl Line {
    fn of(delivered: &Delivered) -> Self {
        let event = &delivered.event;
        Self {
            event_id: event.event_id,
            kind: name(&event.kind),
            order_id: event.order_id,
            customer_id: event.customer_id,
            product_id: event.product_id,
            quantity: event.quantity,
            status: name(&event.status),
            previous_status: event.previous_status.as_ref().map(name),
            occurred_at: event.occurred_at,
            partition: delivered.partition,
            offset: delivered.offset,
        }
    }
}

/// The serialized name of an enum value (`PLACED`, `PROCESSING`).
fn name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub struct AuditLog {
    dir: PathBuf,
    /// The file being appended to, and its name.
    current: Option<(String, File)>,
    /// Event ids in the newest two files.
    seen: HashSet<Uuid>,
    previous_seen: HashSet<Uuid>,
}

fn file_name(now: chrono::DateTime<chrono::Utc>) -> String {
    format!("audit-{}.jsonl", now.format("%Y-%m-%dT%H"))
}

/// The log's files, oldest first.
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// Every line of the log, oldest first (for checks and tests).
pub fn read_all(dir: &Path) -> std::io::Result<Vec<Line>> {
    let mut lines = Vec::new();
    for file in files(dir)? {
        for line in std::fs::read_to_string(&file)?.lines() {
            if let Ok(line) = serde_json::from_str(line) {
                lines.push(line);
            }
        }
    }
    Ok(lines)
}

/// The event ids of `file`, after cutting a torn last line off it.
fn recover(file: &Path) -> std::io::Result<HashSet<Uuid>> {
    let bytes = std::fs::read(file)?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(file = %file.display(), bytes = bytes.len() - complete, "cutting a torn line off the audit log");
        let handle = OpenOptions::new().write(true).open(file)?;
        handle.set_len(complete as u64)?;
        handle.sync_all()?;
    }
    Ok(bytes[..complete]
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Line>(line).ok())
        .map(|line| line.event_id)
        .collect())
}

impl AuditLog {
    /// Opens the log in `dir`, reading the newest two files' event ids.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let files = files(&dir)?;
        let mut newest = files.iter().rev();
        let seen = newest
            .next()
            .map(|f| recover(f))
            .transpose()?
            .unwrap_or_default();
        let previous_seen = newest
            .next()
            .map(|f| recover(f))
            .transpose()?
            .unwrap_or_default();
        tracing::info!(dir = %dir.display(), recent = seen.len() + previous_seen.len(), "audit log opened");
        Ok(Self {
            dir,
            current: None,
            seen,
            previous_seen,
        })
    }

    /// Appends the batch's events not in the log yet, then fsyncs; returns how many. A file
    /// error is permanent: the process stops, and the next start recovers the log (a torn
    /// line is cut, what was fsynced is kept) before consuming from the committed offsets.
    pub fn append(&mut self, batch: &[Delivered]) -> Result<usize> {
        self.try_append(batch)
            .map_err(|e| Error::Permanent(format!("audit log in {}: {e}", self.dir.display())))
    }

    fn try_append(&mut self, batch: &[Delivered]) -> std::io::Result<usize> {
        let name = file_name(chrono::Utc::now());
        if self
            .current
            .as_ref()
            .is_none_or(|(current, _)| *current != name)
        {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(&name))?;
            if let Some((old, _)) = &self.current {
                if *old != name {
                    self.previous_seen = std::mem::take(&mut self.seen);
                }
            }
            // A new file's directory entry must survive a crash as well.
            File::open(&self.dir)?.sync_all()?;
            self.current = Some((name, file));
        }
        let (_, file) = self.current.as_mut().expect("opened above");
        let mut buffer = Vec::new();
        let mut written = HashSet::new();
        for delivered in batch {
            let id = delivered.event.event_id;
            if self.seen.contains(&id) || self.previous_seen.contains(&id) || !written.insert(id) {
                continue;
            }
            serde_json::to_writer(&mut buffer, &Line::of(delivered))?;
            buffer.push(b'\n');
        }
        if !written.is_empty() {
            file.write_all(&buffer)?;
            file.sync_data()?;
        }
        let count = written.len();
        telemetry::metrics::counter!(crate::telemetry::names::AUDIT_LINES).increment(count as u64);
        self.seen.extend(written);
        Ok(count)
    }

    pub async fn run(
        self,
        kafka: &KafkaSettings,
        config: ConsumerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        let log = std::sync::Arc::new(std::sync::Mutex::new(self));
        consumer::run(kafka, config, shutdown, |batch| {
            let log = log.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    log.lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .append(&batch)
                })
                .await
                .map_err(|e| Error::Permanent(e.to_string()))??;
                Ok(())
            }
        })
        .await
    }
}
