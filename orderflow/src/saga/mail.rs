//! The confirmation emails: one JSON line per order in an append-only mail log, at most once
//! per order id, across crashes and across processes sharing the log.
//!
//! The log itself is the idempotency store: under an exclusive lock on the file, a sender
//! reads what other senders appended since it last looked, skips an order already mailed,
//! otherwise appends its line and fsyncs before the lock is released. A line torn by a crash
//! (no trailing newline) is cut off first.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mail {
    pub order_id: Uuid,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub sent_at: i64,
}

#[derive(Default)]
struct Index {
    sent: HashSet<Uuid>,
    read_up_to: u64,
}

#[derive(Clone)]
pub struct MailLog {
    path: PathBuf,
    index: Arc<Mutex<Index>>,
}

impl MailLog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            index: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `mail` unless its order was mailed before; returns whether it was appended.
    pub async fn send(&self, mail: Mail) -> std::io::Result<bool> {
        let mut index = self.index.clone().lock_owned().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || append_once(&path, &mut index, &mail))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Every mail in the log (for checks and tests).
    pub fn read_all(path: &Path) -> std::io::Result<Vec<Mail>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }
}

fn append_once(path: &Path, index: &mut Index, mail: &Mail) -> std::io::Result<bool> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    file.lock()?;
    let appended = catch_up(&mut file, index).and_then(|()| {
        if index.sent.contains(&mail.order_id) {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(mail)?;
        line.push(b'\n');
        file.write_all(&line)?;
        file.sync_data()?;
        index.sent.insert(mail.order_id);
        index.read_up_to = file.metadata()?.len();
        Ok(true)
    });
    file.unlock()?;
    appended
}

/// Reads the lines appended since `index.read_up_to`, cutting off a torn last line.
fn catch_up(file: &mut File, index: &mut Index) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len < index.read_up_to {
        // The log was replaced: read it from the start.
        *index = Index::default();
    }
    if len == index.read_up_to {
        return Ok(());
    }
    file.seek(SeekFrom::Start(index.read_up_to))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < tail.len() {
        tracing::warn!(
            bytes = tail.len() - complete,
            "cutting a torn line off the mail log"
        );
        file.set_len(index.read_up_to + complete as u64)?;
    }
    for line in tail[..complete].split(|b| *b == b'\n') {
        if let Ok(mail) = serde_json::from_slice::<Mail>(line) {
            index.sent.insert(mail.order_id);
        }
    }
    index.read_up_to += complete as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(order_id: Uuid) -> Mail {
        Mail {
            order_id,
            to: "a@b.example".to_owned(),
            subject: "s".to_owned(),
            body: "b".to_owned(),
            sent_at: 0,
        }
    }

    #[tokio::test]
    async fn each_order_is_mailed_once_across_two_senders_and_a_torn_line() {
        let path = std::env::temp_dir().join(format!("{}.mail.log", testkit_name()));
        let (a, b) = (MailLog::new(&path), MailLog::new(&path));
        let order = Uuid::new_v4();
        assert!(a.send(mail(order)).await.unwrap());
        assert!(
            !b.send(mail(order)).await.unwrap(),
            "the other sender sees it"
        );
        // A crash in the middle of a line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"orderId\":\"torn")
            .unwrap();
        let other = Uuid::new_v4();
        assert!(MailLog::new(&path).send(mail(other)).await.unwrap());
        let all = MailLog::read_all(&path).unwrap();
        assert_eq!(
            all.iter().map(|m| m.order_id).collect::<Vec<_>>(),
            [order, other]
        );
        std::fs::remove_file(&path).unwrap();
    }

    fn testkit_name() -> String {
        format!("orderflow_{}", Uuid::new_v4().simple())
    }
}
