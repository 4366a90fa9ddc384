//! One writer per database: an exclusive lock on `PATH.lock`, held for the
//! life of the [`SqliteStore`](super::SqliteStore).
//!
//! The lock is `flock(2)` through [`std::fs::File::try_lock`]: the kernel
//! drops it when the process dies, however it dies, so a `kill -9` never
//! leaves a stale lock behind. The file holds the holder's pid, so that the
//! refusal can name it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::StoreError;

/// Takes the lock of the database at `db`, or says who holds it.
pub(super) fn take(db: &Path) -> Result<File, StoreError> {
    let mut name = db.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    let path = db.with_file_name(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let dir = match db.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(d) => d.display().to_string(),
                None => ".".to_owned(),
            };
            Err(StoreError::Locked {
                dir,
                lock_file: path.display().to_string(),
                pid: text.trim().parse().ok(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}
