//! Where an export's pieces live until it is whole, and how they become the
//! output.
//!
//! Each unit (a day, or the one profile export) streams into
//! `<work>/<unit>.csv.partial` and is renamed to `<work>/<unit>.csv` once
//! its body proved whole. `<work>/state.json` records the finished units
//! (rows, bytes, header) and the request they belong to; it is rewritten
//! atomically after each unit, so a killed run loses at most the units in
//! flight, and a second run with the same arguments fetches only what is
//! missing.
//!
//! The work directory is `<output>.parts/` for one output file (removed
//! once the output is written), the output directory itself for
//! `--split daily` (its state stays, so a daily cron fetches only new
//! days), and a temporary directory for stdout (no resume).
//! Every output file is written under a temporary name and renamed, so an
//! interrupted run never leaves a half-written output.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Output compression (`--gzip`, `--zstd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The file name suffix: `.csv`, `.csv.gz`, `.csv.zst`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => ".csv",
            Compression::Gzip => ".csv.gz",
            Compression::Zstd => ".csv.zst",
        }
    }

    /// Wraps `out` in the encoder; `finish` the result to flush the trailer.
    pub fn writer<W: Write>(self, out: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::default())),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
        })
    }
}

/// A writer, compressed or not.
pub enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

impl<W: Write> Encoder<W> {
    /// Writes the compression trailer and flushes; the inner writer back.
    pub fn finish(self) -> io::Result<W> {
        let mut inner = match self {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w.finish()?,
            Encoder::Zstd(w) => w.finish()?,
        };
        inner.flush()?;
        Ok(inner)
    }
}

/// What is known of a finished unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneUnit {
    pub rows: u64,
    pub bytes: u64,
    /// The header line, without its line end.
    pub header: String,
}

/// `state.json`: the request's fingerprint and the finished units.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Everything about the request except the dates (URL, service, kind,
    /// filters): a resume with other filters would mix two exports.
    pub request: Value,
    /// Finished units by label (`2026-11-01`, `profiles`), in order.
    pub done: BTreeMap<String, DoneUnit>,
}

/// The directory of one export's pieces and its state.
pub struct WorkDir {
    pub dir: PathBuf,
    state: Mutex<State>,
    split: bool,
    /// A temporary directory's guard (stdout mode), removed on drop.
    _temp: Option<tempfile::TempDir>,
}

const STATE: &str = "state.json";
const SPLIT_STATE: &str = ".fineport-export-state.json";

impl WorkDir {
    /// Opens (creating) `dir`, reads its state and removes pieces a killed
    /// run left half-written. `split` names the state file of an output
    /// directory.
    ///
    /// Errors: the state belongs to another request (`request` differs).
    pub fn open(dir: PathBuf, request: &Value, split: bool) -> anyhow::Result<WorkDir> {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut work = WorkDir {
            dir,
            state: Mutex::new(State::default()),
            split,
            _temp: None,
        };
        let path = work.state_path();
        match fs::read(&path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a fineport export state", path.display()))?;
                if state.request != *request {
                    bail!(
                        "{} belongs to another export (different URL, service or filters):\n  there: {}\n  now:   {}\nremove it, or write this export elsewhere",
                        path.display(),
                        state.request,
                        request
                    );
                }
                work.state = Mutex::new(state);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                work.state = Mutex::new(State {
                    version: 1,
                    request: request.clone(),
                    done: BTreeMap::new(),
                });
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        if let Ok(entries) = fs::read_dir(&work.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".partial") || name.contains(".tmp-") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(work)
    }

    /// A work directory in the system's temporary directory (stdout mode).
    pub fn temporary(request: &Value) -> anyhow::Result<WorkDir> {
        let temp = tempfile::Builder::new()
            .prefix("fineport-export-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let mut work = WorkDir::open(temp.path().to_owned(), request, false)?;
        work._temp = Some(temp);
        Ok(work)
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(if self.split { SPLIT_STATE } else { STATE })
    }

    /// Removes a `<output>.parts` directory that holds nothing worth
    /// resuming (a run refused at its first request), so a failed run
    /// leaves no clutter. An output directory (`--split daily`) stays.
    pub fn remove_if_empty(&self) {
        let empty = self.state.lock().map(|s| s.done.is_empty()).unwrap_or(false);
        if empty && !self.split && self._temp.is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// What an earlier run recorded of unit `label`.
    pub fn done(&self, label: &str) -> Option<DoneUnit> {
        self.state.lock().ok()?.done.get(label).cloned()
    }

    /// `<dir>/<label>.csv.partial`: where a unit streams to.
    pub fn partial(&self, label: &str) -> PathBuf {
        self.dir.join(format!("{label}.csv.partial"))
    }

    /// `<dir>/<label>.csv`: a finished unit's plain CSV.
    pub fn part(&self, label: &str) -> PathBuf {
        self.dir.join(format!("{label}.csv"))
    }

    /// Records a finished unit and rewrites the state atomically (under
    /// the lock, so concurrent units never interleave their writes).
    pub fn record(&self, label: &str, unit: DoneUnit) -> anyhow::Result<()> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("the export state lock is poisoned"))?;
        state.done.insert(label.to_owned(), unit);
        let path = self.state_path();
        write_atomically(&path, |out| {
            serde_json::to_writer_pretty(&mut *out, &*state)?;
            out.write_all(b"\n")
        })
    }
}

/// Writes `path` through `fill` into a temporary file beside it, syncs it
/// and renames it over `path`.
pub fn write_atomically(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> anyhow::Result<()> {
    let tmp = temp_name(path);
    let result = (|| -> io::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        fill(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// `<name>.tmp-<pid>` beside `path`.
fn temp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `parts` as one CSV to `out` through `compression` (see
/// [`concatenate`]). Uncompressed, the rows go file to file through
/// `io::copy`, which on Linux lets the kernel copy them
/// (`copy_file_range`) when `out` is a file.
pub fn write_parts<W: Write>(parts: &[PathBuf], compression: Compression, mut out: W) -> io::Result<u64> {
    if compression == Compression::None {
        let n = concatenate(parts, &mut out)?;
        out.flush()?;
        return Ok(n);
    }
    let mut enc = compression.writer(out)?;
    let n = concatenate(parts, &mut enc)?;
    enc.finish()?;
    Ok(n)
}

/// Writes the parts `labels` (in this order) as one CSV to `out`: the
/// first part's header once, then every part's rows. Returns the CSV bytes
/// written (before compression).
///
/// Errors: a part missing or without a header line; I/O.
pub fn concatenate(parts: &[PathBuf], out: &mut impl Write) -> io::Result<u64> {
    let mut written = 0;
    for (i, part) in parts.iter().enumerate() {
        let mut reader = BufReader::with_capacity(1 << 20, File::open(part)?);
        let mut header = Vec::new();
        reader.read_until(b'\n', &mut header)?;
        if !header.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has no header line", part.display()),
            ));
        }
        if i == 0 {
            out.write_all(&header)?;
            written += header.len() as u64;
        }
        written += io::copy(&mut reader, out)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn parts_concatenate_under_one_header_in_every_compression() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        fs::write(&a, "h1,h2\n1,2\n").unwrap();
        fs::write(&b, "h1,h2\n3,4\n5,6\n").unwrap();
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let path = dir.path().join(format!("out{}", compression.suffix()));
            write_atomically(&path, |out| {
                write_parts(&[a.clone(), b.clone()], compression, &mut *out).map(drop)
            })
            .unwrap();
            let raw = fs::read(&path).unwrap();
            let mut text = String::new();
            match compression {
                Compression::None => text = String::from_utf8(raw).unwrap(),
                Compression::Gzip => {
                    flate2::read::GzDecoder::new(&raw[..])
                        .read_to_string(&mut text)
                        .unwrap();
                }
                Compression::Zstd => text = String::from_utf8(zstd::decode_all(&raw[..]).unwrap()).unwrap(),
            }
            assert_eq!(text, "h1,h2\n1,2\n3,4\n5,6\n", "{compression:?}");
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 5, "no temporary file left");
    }

    #[test]
    fn state_survives_a_reopen_and_refuses_another_request() {
        let dir = tempfile::tempdir().unwrap();
        let request = serde_json::json!({"service":"s"});
        let work = WorkDir::open(dir.path().join("w"), &request, false).unwrap();
        fs::write(work.partial("2026-01-02"), "half").unwrap();
        let unit = DoneUnit {
            rows: 3,
            bytes: 40,
            header: "df_unified_id".into(),
        };
        work.record("2026-01-01", unit.clone()).unwrap();
        let again = WorkDir::open(dir.path().join("w"), &request, false).unwrap();
        assert_eq!(again.done("2026-01-01"), Some(unit));
        assert!(!again.partial("2026-01-02").exists(), "a half-written part is removed");
        let other = WorkDir::open(dir.path().join("w"), &serde_json::json!({"service":"t"}), false);
        assert!(other.err().unwrap().to_string().contains("belongs to another export"));
    }
}
