//! The import log: where an event batch is durable before it is in the
//! tables.
//!
//! A DuckDB transaction on the wide event table costs ~5 ms however few
//! rows it holds, so committing every small group of requests caps imports
//! far below what the disk can take. Instead the writer appends each batch
//! to this file, syncs it (one `fdatasync` per group), acknowledges, and
//! moves the batches into the tables later in large transactions. After a
//! move commits, what it moved is freed: whole segment files are deleted,
//! and the newest is emptied once everything is moved. On start, whatever
//! the log still holds
//! is moved again: the in-memory event-id set makes that idempotent, so a
//! crash between a move's commit and the log's truncation stores nothing
//! twice.
//!
//! A record is `[length u32][crc32 u32][payload]`, little-endian; the
//! payload is the validated batch in the compact encoding below; an
//! identity's `df_unified_id` follows the events as `[1][16 bytes]`, and
//! is absent (no byte at all) when the identity has none, so records
//! without one are the bytes earlier versions wrote and read. A record
//! cut short by a crash fails its length or checksum, and it and anything
//! after it are dropped: it was never acknowledged.

pub(crate) mod acker;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fineport_contract::import::{EventBatch, EventInput, Identity};
use fineport_contract::types::Value;
use fineport_contract::ServiceId;
use fineport_contract::Uuid;

use crate::StoreError;

/// One logged batch: what the writer needs to store it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoggedBatch {
    pub service_id: ServiceId,
    pub received_at_ms: i64,
    pub batch: EventBatch,
}

/// Bytes at which the log starts a new segment file: segments whose
/// batches are all in the tables are deleted while the newest is still
/// being written, so a log under a load that never pauses neither grows
/// nor has to wait for the writer to catch up before it can be emptied.
const SEGMENT_BYTES: u64 = 32 << 20;

/// The log: segment files `<path>`, `<path>.1`, `<path>.2`, … (the number
/// only grows; `<path>` alone is segment 0, the file earlier versions
/// wrote), read in order on start and appended to in the newest.
///
/// Positions (`end`, [`ImportLog::release`]) count the bytes appended since
/// the log was opened, starting from the bytes it held then: they only
/// grow, whatever is deleted.
pub(crate) struct ImportLog {
    path: PathBuf,
    /// [`SEGMENT_BYTES`], but in tests.
    segment_bytes: u64,
    /// The segment appended to: its number and file.
    seq: u64,
    file: File,
    /// Bytes of whole, synced records in `file`.
    len: u64,
    /// Older segments still held: number and position of their end.
    older: VecDeque<(u64, u64)>,
    /// Position after the last synced record.
    end: u64,
    /// Position where the oldest segment held starts.
    held_from: u64,
}

impl ImportLog {
    /// Opens (creating) the log at `path` and returns it with the batches
    /// it holds, oldest first; a torn record at the end of the newest
    /// segment is cut off. A damaged record anywhere else is an error: the
    /// records after it were acknowledged, so nothing is dropped silently.
    pub fn open(path: &Path) -> Result<(ImportLog, Vec<LoggedBatch>), StoreError> {
        Self::open_with(path, SEGMENT_BYTES)
    }

    fn open_with(path: &Path, segment_bytes: u64) -> Result<(ImportLog, Vec<LoggedBatch>), StoreError> {
        let mut seqs = segments(path).map_err(|e| failed(path, e))?;
        if seqs.is_empty() {
            seqs.push(0);
        }
        let last = seqs.len() - 1;
        let mut batches = Vec::new();
        let mut older = VecDeque::new();
        let mut end = 0;
        for (i, &seq) in seqs.iter().enumerate() {
            let at = segment_path(path, seq);
            let (mut file, created) = open_segment(&at).map_err(|e| failed(&at, e))?;
            if created {
                sync_dir(&at).map_err(|e| failed(&at, e))?;
            }
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(|e| failed(&at, e))?;
            let (found, good) = read_records(&bytes).map_err(|e| failed(&at, e.message))?;
            batches.extend(found);
            end += good as u64;
            if i < last {
                if good < bytes.len() {
                    return Err(failed(
                        &at,
                        format!(
                            "a damaged record at byte {good}, with acknowledged batches after it \
                             (in later segments); move the file away to start without what it holds"
                        ),
                    ));
                }
                older.push_back((seq, end));
                continue;
            }
            if good < bytes.len() {
                tracing::warn!(
                    path = %at.display(),
                    dropped_bytes = bytes.len() - good,
                    "the import log ends with an incomplete record (never acknowledged); dropping it"
                );
                file.set_len(good as u64).map_err(|e| failed(&at, e))?;
            }
            file.seek(SeekFrom::Start(good as u64)).map_err(|e| failed(&at, e))?;
            let log = ImportLog {
                path: path.to_owned(),
                segment_bytes,
                seq,
                file,
                len: good as u64,
                older,
                end,
                held_from: 0,
            };
            return Ok((log, batches));
        }
        Err(StoreError::internal("import log: no segment to open"))
    }

    /// Bytes held in every segment.
    pub fn len(&self) -> u64 {
        self.end - self.held_from
    }

    /// Position after the last synced record.
    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn is_empty(&self) -> bool {
        self.older.is_empty() && self.len == 0
    }

    /// Appends `records` (made by [`record`]) and syncs them to disk, in a
    /// new segment when the newest is full. On failure the log is cut back
    /// to what it held before.
    pub fn append(&mut self, records: &[u8]) -> Result<(), StoreError> {
        if self.len >= self.segment_bytes {
            self.next_segment()?;
        }
        let written = self.file.write_all(records).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += records.len() as u64;
                self.end += records.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.truncate_to(self.len);
                Err(self.error(e))
            }
        }
    }

    /// Starts the next segment; the full one is kept until
    /// [`ImportLog::release`] passes its end.
    fn next_segment(&mut self) -> Result<(), StoreError> {
        let seq = self.seq + 1;
        let at = segment_path(&self.path, seq);
        let io = |e: std::io::Error| failed(&at, e);
        let (mut file, _) = open_segment(&at).map_err(io)?;
        // Left over from a failed start: nothing in it was acknowledged.
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .map_err(io)?;
        sync_dir(&at).map_err(io)?;
        self.older.push_back((self.seq, self.end));
        self.seq = seq;
        self.file = file;
        self.len = 0;
        Ok(())
    }

    /// Frees what is in the tables up to position `moved`: deletes the
    /// older segments that end there or before, and empties the newest
    /// once everything is. Not synced: if a deletion or the truncation is
    /// lost in a crash, a restart moves the same batches again, which
    /// stores nothing twice.
    pub fn release(&mut self, moved: u64) -> Result<(), StoreError> {
        while let Some(&(seq, end)) = self.older.front() {
            if end > moved {
                return Ok(());
            }
            let at = segment_path(&self.path, seq);
            match std::fs::remove_file(&at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(&at, e)),
            }
            self.older.pop_front();
            self.held_from = end;
        }
        if moved >= self.end && self.len > 0 {
            self.truncate_to(0).map_err(|e| self.error(e))?;
            self.len = 0;
            self.held_from = self.end;
        }
        Ok(())
    }

    fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.file.seek(SeekFrom::Start(len)).map(drop)
    }

    fn error(&self, e: std::io::Error) -> StoreError {
        failed(&segment_path(&self.path, self.seq), e)
    }
}

/// The error of an operation on segment file `at`.
fn failed(at: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("import log {}: {e}", at.display()))
}

/// The file of segment `seq`.
fn segment_path(path: &Path, seq: u64) -> PathBuf {
    if seq == 0 {
        return path.to_owned();
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{seq}"));
    PathBuf::from(name)
}

/// The numbers of the segments that exist at `path`, in order.
fn segments(path: &Path) -> std::io::Result<Vec<u64>> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_owned(),
        None => PathBuf::from("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == base {
            seqs.push(0);
        } else if let Some(n) = name.strip_prefix(base).and_then(|r| r.strip_prefix('.')) {
            // Only `<path>.<digits>`: never another file that shares the prefix.
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(seq) = n.parse::<u64>() {
                    seqs.push(seq);
                }
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Opens (creating) a segment file for reading and appending; whether it
/// was created.
fn open_segment(at: &Path) -> std::io::Result<(File, bool)> {
    let existed = at.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(at)?;
    Ok((file, !existed))
}

/// Makes a new file's directory entry durable.
fn sync_dir(at: &Path) -> std::io::Result<()> {
    match at.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()),
        None => Ok(()),
    }
}

/// The log record of one batch, appended to `out`.
pub(crate) fn record(out: &mut Vec<u8>, service_id: &str, received_at_ms: i64, batch: &EventBatch) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    let mut w = Writer(out);
    w.str(service_id);
    w.i64(received_at_ms);
    let id = &batch.identity;
    for field in [
        &id.external_id,
        &id.email,
        &id.phone_no,
        &id.kakao_user_id,
        &id.line_user_id,
    ] {
        w.opt_str(field.as_deref());
    }
    w.len(batch.events.len());
    for event in &batch.events {
        w.0.extend_from_slice(event.event_log_id.as_bytes());
        w.str(&event.event_name);
        w.i64(event.event_datetime_ms);
        w.map(&event.properties);
        w.len(event.items.len());
        for item in &event.items {
            w.map(item);
        }
    }
    if let Some(uid) = &id.df_unified_id {
        w.0.push(1);
        w.0.extend_from_slice(uid.as_bytes());
    }
    let payload_len = out.len() - start - 8;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The whole records at the start of `bytes`, and how many bytes they span.
fn read_records(bytes: &[u8]) -> Result<(Vec<LoggedBatch>, usize), StoreError> {
    let mut batches = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        // A record that passed its checksum but does not decode is not a
        // torn write: refuse to start rather than drop acknowledged data.
        let batch = decode(payload)
            .ok_or_else(|| StoreError::internal(format!("the import log has an undecodable record at byte {at}")))?;
        batches.push(batch);
        at += 8 + len;
    }
    Ok((batches, at))
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn len(&mut self, n: usize) {
        self.0.extend_from_slice(&(n as u32).to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.str(s);
            }
        }
    }
    fn map(&mut self, map: &BTreeMap<String, Value>) {
        self.len(map.len());
        for (name, value) in map {
            self.str(name);
            self.value(value);
        }
    }
    fn value(&mut self, v: &Value) {
        match v {
            Value::String(s) => {
                self.0.push(0);
                self.str(s);
            }
            Value::Long(x) => {
                self.0.push(1);
                self.i64(*x);
            }
            Value::Double(x) => {
                self.0.push(2);
                self.i64(x.to_bits() as i64);
            }
            Value::Boolean(x) => self.0.extend_from_slice(&[3, u8::from(*x)]),
            Value::Datetime(x) => {
                self.0.push(4);
                self.i64(*x);
            }
            Value::Date(x) => {
                self.0.push(5);
                self.i64(i64::from(*x));
            }
            Value::StringArray(xs) => {
                self.0.push(6);
                self.len(xs.len());
                xs.iter().for_each(|s| self.str(s));
            }
            Value::LongArray(xs) => {
                self.0.push(7);
                self.len(xs.len());
                xs.iter().for_each(|x| self.i64(*x));
            }
            Value::DoubleArray(xs) => {
                self.0.push(8);
                self.len(xs.len());
                xs.iter().for_each(|x| self.i64(x.to_bits() as i64));
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn len(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let n = self.len()?;
        // Never trust a count for more than the bytes left could hold.
        let mut out = Vec::with_capacity(n.min(self.0.len()));
        for _ in 0..n {
            out.push(item(self)?);
        }
        Some(out)
    }
    fn map(&mut self) -> Option<BTreeMap<String, Value>> {
        Some(self.list(|r| Some((r.str()?, r.value()?)))?.into_iter().collect())
    }
    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_bits(self.i64()? as u64))
    }
    fn value(&mut self) -> Option<Value> {
        Some(match self.u8()? {
            0 => Value::String(self.str()?),
            1 => Value::Long(self.i64()?),
            2 => Value::Double(self.f64()?),
            3 => Value::Boolean(self.u8()? != 0),
            4 => Value::Datetime(self.i64()?),
            5 => Value::Date(i32::try_from(self.i64()?).ok()?),
            6 => Value::StringArray(self.list(Self::str)?),
            7 => Value::LongArray(self.list(Self::i64)?),
            8 => Value::DoubleArray(self.list(Self::f64)?),
            _ => return None,
        })
    }
}

fn decode(payload: &[u8]) -> Option<LoggedBatch> {
    let mut r = Reader(payload);
    let service_id = ServiceId::parse(&r.str()?).ok()?;
    let received_at_ms = r.i64()?;
    let mut identity = Identity {
        df_unified_id: None,
        external_id: r.opt_str()?,
        email: r.opt_str()?,
        phone_no: r.opt_str()?,
        kakao_user_id: r.opt_str()?,
        line_user_id: r.opt_str()?,
    };
    let events = r.list(|r| {
        Some(EventInput {
            event_log_id: Uuid::from_slice(r.take(16)?).ok()?,
            event_name: r.str()?,
            event_datetime_ms: r.i64()?,
            properties: r.map()?,
            items: r.list(Reader::map)?,
        })
    })?;
    if !r.0.is_empty() {
        match r.u8()? {
            1 => identity.df_unified_id = Some(Uuid::from_slice(r.take(16)?).ok()?),
            _ => return None,
        }
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(LoggedBatch {
        service_id,
        received_at_ms,
        batch: EventBatch {
            identity,
            events,
            registrations: Default::default(),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(n: u128) -> LoggedBatch {
        let props: BTreeMap<String, Value> = [
            ("s", Value::String("한글, \"quoted\"".into())),
            ("l", Value::Long(-42)),
            ("d", Value::Double(0.1 + 0.2)),
            ("b", Value::Boolean(true)),
            ("t", Value::Datetime(1_764_000_000_123)),
            ("day", Value::Date(-3)),
            ("sa", Value::StringArray(vec!["a".into(), String::new()])),
            ("la", Value::LongArray(vec![i64::MIN, i64::MAX])),
            ("da", Value::DoubleArray(vec![f64::MIN_POSITIVE, -0.0])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        LoggedBatch {
            service_id: ServiceId::parse("shop").unwrap(),
            received_at_ms: 1_764_000_000_000 + n as i64,
            batch: EventBatch {
                identity: Identity {
                    df_unified_id: None,
                    external_id: Some(format!("user{n}")),
                    email: None,
                    phone_no: Some("010".into()),
                    kakao_user_id: None,
                    line_user_id: Some(String::new()),
                },
                events: vec![
                    EventInput {
                        event_log_id: Uuid::from_u128(n),
                        event_name: "df_purchase".into(),
                        event_datetime_ms: 5,
                        properties: props.clone(),
                        items: vec![props, BTreeMap::new()],
                    },
                    EventInput {
                        event_log_id: Uuid::from_u128(n + 1),
                        event_name: "login".into(),
                        event_datetime_ms: -5,
                        properties: BTreeMap::new(),
                        items: Vec::new(),
                    },
                ],
                registrations: Default::default(),
            },
        }
    }

    fn records(batches: &[LoggedBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in batches {
            record(&mut out, &b.service_id, b.received_at_ms, &b.batch);
        }
        out
    }

    #[test]
    fn every_value_type_survives_the_round_trip() {
        let mut by_uid = sample(20);
        by_uid.batch.identity = Identity {
            df_unified_id: Some(Uuid::from_u128(0x0b4e_6f0c_1f3a_4c33_9a53_5c8f_1b2d_3e4f)),
            ..Identity::default()
        };
        let batches = vec![sample(1), sample(10), by_uid];
        let bytes = records(&batches);
        let (read, used) = read_records(&bytes).expect("read");
        assert_eq!(used, bytes.len());
        assert_eq!(read, batches);
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("log");
        let (mut log, found) = ImportLog::open(&path).expect("open");
        assert!(found.is_empty());
        log.append(&records(&[sample(1)])).expect("append");
        log.append(&records(&[sample(2)])).expect("append");
        drop(log);
        // A crash in the middle of a third record.
        let third = records(&[sample(3)]);
        let mut file = OpenOptions::new().append(true).open(&path).expect("reopen");
        file.write_all(&third[..third.len() / 2]).expect("write");
        drop(file);
        let (mut log, found) = ImportLog::open(&path).expect("open after crash");
        assert_eq!(found, vec![sample(1), sample(2)]);
        // What comes after the cut is appended where the torn record was.
        log.append(&records(&[sample(4)])).expect("append");
        drop(log);
        let (mut log, found) = ImportLog::open(&path).expect("open");
        assert_eq!(found, vec![sample(1), sample(2), sample(4)]);

        // A flipped byte fails the checksum: that record and the rest go.
        log.release(log.end()).expect("empty");
        assert!(log.is_empty());
        log.append(&records(&[sample(5), sample(6)])).expect("append");
        drop(log);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let (log, found) = ImportLog::open(&path).expect("open");
        assert_eq!(found, vec![sample(5)]);
        assert_eq!(log.len(), std::fs::metadata(&path).expect("meta").len());
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn full_segments_are_freed_once_moved_while_the_newest_is_written() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("log");
        // A new segment after every record.
        let (mut log, _) = ImportLog::open_with(&path, 1).expect("open");
        let mut ends = Vec::new();
        for n in 1..=4 {
            log.append(&records(&[sample(n * 10)])).expect("append");
            ends.push(log.end());
        }
        assert_eq!(files(dir.path()), ["log", "log.1", "log.2", "log.3"]);
        // Segment `log` ends at ends[0]: moved up to ends[1] frees it and `log.1`.
        log.release(ends[1]).expect("release");
        assert_eq!(files(dir.path()), ["log.2", "log.3"]);
        assert_eq!(log.len(), ends[3] - ends[1]);
        // Part of a segment moved frees nothing more.
        log.release(ends[2] - 1).expect("release");
        assert_eq!(files(dir.path()), ["log.2", "log.3"]);
        drop(log);
        // A restart reads the segments left, in order, and goes on after them.
        let (mut log, found) = ImportLog::open_with(&path, 1).expect("reopen");
        assert_eq!(found, vec![sample(30), sample(40)]);
        assert_eq!(log.end(), ends[3] - ends[1]);
        log.append(&records(&[sample(50)])).expect("append");
        assert_eq!(files(dir.path()), ["log.2", "log.3", "log.4"]);
        // Everything moved: the older segments go and the newest is emptied.
        log.release(log.end()).expect("release");
        assert_eq!(files(dir.path()), ["log.4"]);
        assert!(log.is_empty());
        drop(log);
        let (_, found) = ImportLog::open_with(&path, 1).expect("reopen");
        assert!(found.is_empty());
        // Files that only share the name's prefix are not segments.
        std::fs::write(dir.path().join("log.4.tmp"), b"x").expect("write");
        std::fs::write(dir.path().join("logx"), b"x").expect("write");
        assert_eq!(segments(&path).expect("list"), [4]);
    }

    #[test]
    fn a_torn_newest_segment_is_cut_but_damage_before_it_refuses_to_start() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("log");
        let (mut log, _) = ImportLog::open_with(&path, 1).expect("open");
        for n in 1..=3 {
            log.append(&records(&[sample(n * 10)])).expect("append");
        }
        drop(log);
        // A crash in the middle of a record of the newest segment.
        let newest = dir.path().join("log.2");
        let bytes = std::fs::read(&newest).expect("read");
        std::fs::write(&newest, &bytes[..bytes.len() / 2]).expect("write");
        let (log, found) = ImportLog::open_with(&path, 1).expect("open after crash");
        assert_eq!(found, vec![sample(10), sample(20)]);
        assert_eq!(std::fs::metadata(&newest).expect("meta").len(), 0);
        drop(log);
        // A damaged record in an older segment: later segments hold
        // acknowledged batches, so the log refuses to open.
        let older = dir.path().join("log.1");
        let mut bytes = std::fs::read(&older).expect("read");
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        std::fs::write(&older, &bytes).expect("write");
        let error = ImportLog::open_with(&path, 1).err().expect("refused");
        assert!(error.message.contains("log.1"), "{}", error.message);
        assert!(error.message.contains("damaged record"), "{}", error.message);
    }
}
