//! provider-sim's durable state: its ledger as an append-only JSON-lines file, one entry per
//! line, fsync'd before the call answers. Replaying it rebuilds the cloud
//! ([`Clouds::restore`](crate::provider::simulated::Clouds::restore)), so instances, keys and fences survive a kill -9.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::warn;

use crate::provider::simulated::{LedgerEntry, LedgerSink};

pub const JOURNAL_FILE: &str = "ledger.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("state dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line} is not a ledger entry: {source}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// The open journal; appends go through [`LedgerSink`].
#[derive(Debug)]
pub struct Journal {
    file: Mutex<File>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and reads back its entries. A torn last line (a
    /// write cut short by a crash, never acknowledged to a caller) is cut off; a bad line
    /// before the end is corruption and an error.
    pub fn open(dir: &Path) -> Result<(Self, Vec<LedgerEntry>), JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let io = |source| JournalError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io)?;
        // Make the file's creation itself durable.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;

        let mut entries = Vec::new();
        let mut good_len = 0u64;
        let mut torn = None;
        let mut reader = BufReader::new(&file);
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            let read = reader.read_line(&mut line).map_err(io)?;
            if read == 0 {
                break;
            }
            number += 1;
            if let Some((at, source)) = torn.take() {
                // Something follows the bad line, so it was not a torn tail.
                return Err(JournalError::Corrupt { path, line: at, source });
            }
            match serde_json::from_str::<LedgerEntry>(line.trim_end()) {
                Ok(e) if line.ends_with('\n') => {
                    entries.push(e);
                    good_len += read as u64;
                }
                // Whole but unterminated: cut before its newline, so never acknowledged either.
                Ok(_) => torn = Some((number, eof())),
                Err(e) => torn = Some((number, e)),
            }
        }
        if let Some((at, source)) = torn {
            warn!(path = %path.display(), line = at, error = %source, "cutting off a torn last journal line");
            file.set_len(good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        Ok((Self { file: Mutex::new(file) }, entries))
    }
}

fn eof() -> serde_json::Error {
    serde_json::Error::io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
}

impl LedgerSink for Journal {
    fn append(&self, entry: &LedgerEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::simulated::{Call, Outcome};
    use std::time::SystemTime;

    fn entry(seq: u64) -> LedgerEntry {
        LedgerEntry {
            seq,
            at: SystemTime::now(),
            provider: "p".into(),
            caller: "c".into(),
            operation_id: "op".into(),
            cluster: "c1".into(),
            call: Call::Lookup,
            workspace_uid: "u".into(),
            namespace: "ns".into(),
            name: "w".into(),
            epoch: 1,
            key: Some("k".into()),
            instance: None,
            outcome: Outcome::NotFound,
        }
    }

    #[test]
    fn appends_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (j, read) = Journal::open(dir.path()).unwrap();
        assert!(read.is_empty());
        j.append(&entry(1)).unwrap();
        j.append(&entry(2)).unwrap();
        drop(j);
        let (j, read) = Journal::open(dir.path()).unwrap();
        assert_eq!(read.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        j.append(&entry(3)).unwrap();
        let (_, read) = Journal::open(dir.path()).unwrap();
        assert_eq!(read.len(), 3);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_corruption_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.append(&entry(1)).unwrap();
        drop(j);
        let path = dir.path().join(JOURNAL_FILE);
        let whole = serde_json::to_string(&entry(2)).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&whole.as_bytes()[..20]).unwrap();
        drop(f);
        let (j, read) = Journal::open(dir.path()).unwrap();
        assert_eq!(read.len(), 1);
        j.append(&entry(2)).unwrap();
        let (_, read) = Journal::open(dir.path()).unwrap();
        assert_eq!(read.len(), 2, "the next append starts on a clean line");

        std::fs::write(&path, format!("garbage\n{whole}\n")).unwrap();
        assert!(matches!(Journal::open(dir.path()), Err(JournalError::Corrupt { line: 1, .. })));
    }
}
