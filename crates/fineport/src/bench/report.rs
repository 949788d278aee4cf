//! The bench's results and their Markdown table (the form docs/benchmarks.md
//! keeps them in).

use std::fmt::Write as _;
use std::time::Duration;

use super::http::ExportRun;
use super::native::NativeRun;
use super::secs;
use fineport_client::progress::thousands;

pub struct Case {
    pub label: &'static str,
    pub run: ExportRun,
    pub native_ordered: Option<NativeRun>,
    pub native_unordered: Option<NativeRun>,
    /// chdb's `SELECT … INTO OUTFILE … FORMAT CSVWithNames`, on the DuckDB run.
    pub chdb_ordered: Option<NativeRun>,
    pub chdb_unordered: Option<NativeRun>,
}

impl Case {
    pub fn new(label: &'static str, run: ExportRun) -> Case {
        Case {
            label,
            run,
            native_ordered: None,
            native_unordered: None,
            chdb_ordered: None,
            chdb_unordered: None,
        }
    }
}

/// `fineport export` over the 30 days (see `best_client`).
#[derive(Debug, Clone, Copy)]
pub struct ClientRun {
    pub total: Duration,
    /// The output file's bytes.
    pub bytes: u64,
    /// The same one-day requests, bodies dropped (see `raw_days`).
    pub raw_days: Duration,
}

pub struct Report {
    /// The store under test, and its own export the ratios compare with.
    pub store: &'static str,
    pub reference: &'static str,
    /// What an import's `20000` waited for, on this store.
    pub durable: &'static str,
    pub events: u64,
    pub seed: u64,
    pub arrival: String,
    /// The generator's event profile (`standard`, `heavy`).
    pub event_size: String,
    pub clients: usize,
    pub requests: usize,
    pub items: u64,
    pub generate_time: Duration,
    pub body_bytes: u64,
    pub import_time: Duration,
    /// From the start of the import until every event is in the tables
    /// (the last answer, then an export that waits for the writer).
    pub import_stored_time: Duration,
    pub rss_after_import: u64,
    pub rss_after_restart: u64,
    pub rss_peak_lifetime: u64,
    pub cases: Vec<Case>,
    pub client: Option<ClientRun>,
    /// On the DuckDB run: the ClickHouse (and chdb) version of the chdb
    /// reference, or why it did not run.
    pub chdb: Option<String>,
    /// On the DuckDB run: DuckDB's threads on each side.
    pub threads: Option<Threads>,
}

/// DuckDB's threads in the server (its default, as the bench starts it)
/// and in the COPYs (DuckDB's default).
#[derive(Debug, Clone, Copy)]
pub struct Threads {
    pub server: usize,
    pub copy: i64,
}

impl Report {
    pub fn new(events: u64, seed: u64, clients: usize, requests: usize, items: u64) -> Report {
        Report {
            store: "DuckDB",
            reference: "DuckDB COPY",
            durable: "in the import log, synced",
            events,
            seed,
            arrival: String::new(),
            event_size: String::new(),
            clients,
            requests,
            items,
            generate_time: Duration::ZERO,
            body_bytes: 0,
            import_time: Duration::ZERO,
            import_stored_time: Duration::ZERO,
            rss_after_import: 0,
            rss_after_restart: 0,
            rss_peak_lifetime: 0,
            cases: Vec::new(),
            client: None,
            chdb: None,
            threads: None,
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## fineport bench ({}): {} {} events, seed {}, {} arrival\n\nmachine: {}\n",
            self.store,
            thousands(self.events),
            self.event_size,
            self.seed,
            self.arrival,
            machine()
        );
        self.render_exports(&mut s);
        self.render_client(&mut s);
        self.render_latency_memory(&mut s);
        self.render_import(&mut s);
        s
    }

    fn render_exports(&self, s: &mut String) {
        let r = self.reference;
        let chdb = self.cases.iter().any(|c| c.chdb_ordered.is_some());
        let _ = write!(
            s,
            "### Export (best of the runs; ratio = {r}'s time / fineport's time, so ≥ 1.0× means fineport is as fast or faster)\n\n\
             | export | rows | fineport: time | rows/s | MB/s | {r} with ORDER BY: time | MB/s | ratio | {r} without ORDER BY: time | ratio |",
        );
        if chdb {
            s.push_str(" chdb with ORDER BY: time | MB/s | ratio | chdb without ORDER BY: ratio |");
        }
        s.push_str("\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        if chdb {
            s.push_str("---:|---:|---:|---:|");
        }
        s.push('\n');
        for c in &self.cases {
            let t = secs(c.run.total);
            let _ = write!(
                s,
                "| {} | {} | {:.2} s | {} | {:.1} |",
                c.label,
                thousands(c.run.rows),
                t,
                thousands((c.run.rows as f64 / t) as u64),
                c.run.bytes as f64 / 1e6 / t
            );
            ordered_cells(s, c.native_ordered.as_ref(), t);
            match &c.native_unordered {
                Some(n) => {
                    let _ = write!(s, " {:.2} s | {:.2}× |", secs(n.total), secs(n.total) / t);
                }
                None => s.push_str(" – | – |"),
            }
            if chdb {
                ordered_cells(s, c.chdb_ordered.as_ref(), t);
                match &c.chdb_unordered {
                    Some(n) => {
                        let _ = write!(s, " {:.2}× |", secs(n.total) / t);
                    }
                    None => s.push_str(" – |"),
                }
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\nCSV sizes: {}\n",
            self.cases
                .iter()
                .map(|c| {
                    let native = c.native_ordered.as_ref().map_or(0, |n| n.bytes);
                    let mut sizes = format!(
                        "{}: fineport {:.1} MB, {} {:.1} MB",
                        c.label,
                        c.run.bytes as f64 / 1e6,
                        self.reference,
                        native as f64 / 1e6
                    );
                    if let Some(n) = &c.chdb_ordered {
                        let _ = write!(sizes, ", chdb {:.1} MB", n.bytes as f64 / 1e6);
                    }
                    sizes
                })
                .collect::<Vec<_>>()
                .join("; ")
        );
        if let Some(Threads { server, copy }) = self.threads {
            let _ = writeln!(
                s,
                "DuckDB's threads: the server's {server} (its default, the cores less one, beside the export's \
                 encoder thread); DuckDB COPY's {copy} (DuckDB's default, the cores).\n"
            );
        }
        match (&self.chdb, chdb) {
            (Some(version), true) => {
                let _ = writeln!(
                    s,
                    "chdb: {version}, `SELECT … INTO OUTFILE … FORMAT CSVWithNames` from a session table \
                     `ENGINE = Memory` loaded (untimed) from a CSV file DuckDB wrote of the same table, DuckDB's types mapped to ClickHouse's \
                     (TIMESTAMP as DateTime64(6)); ratio = chdb's time / fineport's time. DuckDB and chdb write their own \
                     spellings (chdb: 6-digit fractions of seconds, `\\N` for NULL, quoted timestamps and lists), so \
                     the sizes differ; rows, columns and order do not.\n"
                );
            }
            (Some(why), false) => {
                let _ = writeln!(s, "chdb: {why}\n");
            }
            (None, _) => {}
        }
    }

    fn render_client(&self, s: &mut String) {
        let (Some(client), Some(one)) = (self.client, self.cases.get(1)) else {
            return;
        };
        let (c, o, r) = (secs(client.total), secs(one.run.total), secs(client.raw_days));
        let _ = writeln!(
            s,
            "### The client (`fineport export`: 30 one-day requests, 5 at a time, each checked whole, then one file with one header)\n\n\
             | export | client: time | MB/s | the same 30 requests, bodies dropped | ratio (raw / client) | one 30-day request | ratio (one / client) |\n\
             |---|---:|---:|---:|---:|---:|---:|\n\
             | {} | {c:.2} s | {:.1} | {r:.2} s | {:.2}× | {o:.2} s | {:.2}× |\n",
            one.label,
            client.bytes as f64 / 1e6 / c,
            r / c,
            o / c
        );
    }

    fn render_latency_memory(&self, s: &mut String) {
        s.push_str("### Latency and server memory\n\n| measure | value |\n|---|---:|\n");
        if let Some(c) = self.cases.first() {
            let _ = writeln!(
                s,
                "| first byte, {}: best of the runs / the first export after the restart | {:.1} / {:.1} ms |",
                c.label,
                c.run.first_byte.as_secs_f64() * 1e3,
                c.run.first_byte_first_run.as_secs_f64() * 1e3
            );
        }
        for c in &self.cases {
            let _ = writeln!(
                s,
                "| server RSS before → peak during: {} ({} rows) | {} → {} MiB (+{} MiB) |",
                c.label,
                thousands(c.run.rows),
                mib(c.run.rss_before),
                mib(c.run.rss_peak),
                mib(c.run.rss_growth())
            );
            if c.run.cache_after > 0 {
                // From the printed MiB, so that the line adds up as read.
                let (before, after) = (mib(c.run.cache_before), mib(c.run.cache_after));
                let cache = after.saturating_sub(before);
                let _ = writeln!(
                    s,
                    "| … of which DuckDB's block cache (grew {before} → {after} MiB) / the export's own | +{cache} / **+{} MiB** |",
                    mib(c.run.rss_growth()).saturating_sub(cache)
                );
            }
        }
        let _ = writeln!(
            s,
            "| server RSS after the import / after the restart / lifetime peak after the restart (VmHWM) | {} / {} / {} MiB |\n",
            mib(self.rss_after_import),
            mib(self.rss_after_restart),
            mib(self.rss_peak_lifetime)
        );
    }

    fn render_import(&self, s: &mut String) {
        let t = secs(self.import_time);
        let stored = secs(self.import_stored_time);
        let _ = writeln!(
            s,
            "### Import (POST /api/v1/events, every answer 20000 = durable: {})\n\n\
             | measure | value |\n|---|---:|\n\
             | events (items) | {} ({}) |\n\
             | requests of ≤ 100 events / clients | {} / {} |\n\
             | request bodies | {:.1} MB, generated in {:.1} s (before timing) |\n\
             | time to the last answer | {:.2} s |\n\
             | throughput (answered) | {} events/s |\n\
             | time until every event is in the tables | {:.2} s |\n\
             | throughput (stored) | {} events/s |",
            self.durable,
            thousands(self.events),
            thousands(self.items),
            thousands(self.requests as u64),
            self.clients,
            self.body_bytes as f64 / 1e6,
            secs(self.generate_time),
            t,
            thousands((self.events as f64 / t) as u64),
            stored,
            thousands((self.events as f64 / stored) as u64)
        );
    }
}

/// A reference's "with ORDER BY" cells: time, MB/s, ratio to fineport's `t`.
fn ordered_cells(s: &mut String, n: Option<&NativeRun>, t: f64) {
    match n {
        Some(n) => {
            let _ = write!(
                s,
                " {:.2} s | {:.1} | {:.2}× |",
                secs(n.total),
                n.bytes as f64 / 1e6 / secs(n.total),
                secs(n.total) / t
            );
        }
        None => s.push_str(" – | – | – |"),
    }
}

fn mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

/// CPU model, cores and memory, from /proc.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0.0, |kb| kb as f64 / 1024.0 / 1024.0);
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM")
}
