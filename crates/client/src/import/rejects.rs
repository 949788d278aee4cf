//! The rejects file: one JSON object per rejected row,
//! `{"file","line","event_log_id","code","reason"}` (`event_log_id` null
//! for profiles and for rows without one; `code` the server's result code
//! such as `"40001"`, or null when the row could not even be read).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::Serialize;

use super::Origin;

/// One rejected row and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reject {
    pub file: String,
    pub line: u64,
    pub event_log_id: Option<String>,
    /// The server's result code, or `None` for a row the client could not read.
    pub code: Option<String>,
    pub reason: String,
}

impl Reject {
    pub fn new(origin: &Origin, event_log_id: Option<String>, code: Option<&str>, reason: impl Into<String>) -> Reject {
        Reject {
            file: origin.file.to_string(),
            line: origin.line,
            event_log_id,
            code: code.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

/// The open report, shared by the reader and every sender.
pub(crate) struct RejectsFile {
    path: PathBuf,
    out: Mutex<Option<BufWriter<std::fs::File>>>,
}

impl RejectsFile {
    /// Creates (or empties) the file now, so an unwritable path fails
    /// before anything is sent and an old report never outlives its run.
    pub(crate) fn create(path: &Path) -> anyhow::Result<RejectsFile> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create the rejects file {}", path.display()))?;
        Ok(RejectsFile {
            path: path.to_owned(),
            out: Mutex::new(Some(BufWriter::new(file))),
        })
    }

    /// Appends one line.
    pub(crate) fn write(&self, reject: &Reject) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(reject).context("cannot encode a reject")?;
        line.push(b'\n');
        let mut out = self
            .out
            .lock()
            .map_err(|_| anyhow::anyhow!("the rejects file is poisoned"))?;
        if let Some(out) = out.as_mut() {
            out.write_all(&line)
                .with_context(|| format!("cannot write the rejects file {}", self.path.display()))?;
        }
        Ok(())
    }

    /// Flushes and closes; keeps the file (and names it) when `keep`, else
    /// removes it.
    pub(crate) fn finish(&self, keep: bool) -> anyhow::Result<Option<PathBuf>> {
        let out = self
            .out
            .lock()
            .map_err(|_| anyhow::anyhow!("the rejects file is poisoned"))?
            .take();
        if let Some(mut out) = out {
            out.flush()
                .with_context(|| format!("cannot write the rejects file {}", self.path.display()))?;
        }
        if keep {
            return Ok(Some(self.path.clone()));
        }
        let _ = std::fs::remove_file(&self.path);
        Ok(None)
    }
}
