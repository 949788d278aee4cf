//! Progress for long commands: an `indicatif` bar on a terminal (units
//! done, rows, bytes, rate, ETA), plain log lines on stderr when not (CI,
//! cron, a pipe), so a log keeps every event and a terminal stays tidy.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress over `total` units (days, batches) with running row and byte
/// counts. Cheap to share (`&Progress` across tasks); every method may be
/// called from any task.
pub struct Progress {
    bar: Option<ProgressBar>,
    unit: &'static str,
    started: Instant,
    rows: AtomicU64,
    bytes: AtomicU64,
    /// The last status line printed in plain mode (printed again only when
    /// it changes, so a wait loop does not flood a log).
    last_status: Mutex<String>,
}

impl Progress {
    /// A bar when stderr is a terminal and `plain` is false, else lines.
    pub fn new(total: u64, unit: &'static str, plain: bool) -> Progress {
        let bar = (!plain && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(&format!(
                "{{elapsed_precise}} [{{bar:28.cyan/blue}}] {{pos}}/{{len}} {unit}  {{msg}}  ETA {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress {
            bar,
            unit,
            started: Instant::now(),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_status: Mutex::new(String::new()),
        }
    }

    /// Seconds since the start, as the prefix of plain lines.
    fn stamp(&self) -> String {
        format!("[{:>6.1}s]", self.started.elapsed().as_secs_f64())
    }

    /// A line for the record: above the bar, or on stderr.
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{} {text}", self.stamp()),
        }
    }

    /// What is happening now ("waiting for the hourly quota until …"); empty
    /// when nothing special. On the bar it replaces the counters until
    /// cleared; in plain mode it is printed when it changes.
    pub fn status(&self, text: &str) {
        if let Ok(mut last) = self.last_status.lock() {
            if *last == text {
                return;
            }
            *last = text.to_owned();
        }
        match &self.bar {
            Some(_) => self.refresh(),
            None if !text.is_empty() => eprintln!("{} {text}", self.stamp()),
            None => {}
        }
    }

    /// Adds rows and bytes received (may be called per chunk).
    pub fn add(&self, rows: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if self.bar.is_some() {
            self.refresh();
        }
    }

    /// Takes back what a failed attempt had added.
    pub fn sub(&self, rows: u64, bytes: u64) {
        self.rows.fetch_sub(rows, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// One more unit done.
    pub fn unit_done(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Sets how many units are done (for progress measured rather than
    /// counted, such as input bytes read).
    pub fn set_position(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// Rows and bytes so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.rows.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    /// `12,345 rows, 3.2 MB, 1.1 MB/s`.
    pub fn counters(&self) -> String {
        let (rows, bytes) = self.totals();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        format!(
            "{} rows, {}, {}/s",
            thousands(rows),
            human_bytes(bytes),
            human_bytes((bytes as f64 / secs) as u64)
        )
    }

    fn refresh(&self) {
        let Some(bar) = &self.bar else { return };
        let status = self.last_status.lock().map(|s| s.clone()).unwrap_or_default();
        if status.is_empty() {
            bar.set_message(self.counters());
        } else {
            bar.set_message(format!("{} | {status}", self.counters()));
        }
    }

    /// Removes the bar (the summary follows as plain text).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// The unit's name, as given.
    pub fn unit(&self) -> &'static str {
        self.unit
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in decimal units: `512 B`, `3.2 kB`, `45.0 MB`, `1.2 GB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_plainly() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3_200), "3.2 kB");
        assert_eq!(human_bytes(45_000_000), "45.0 MB");
    }

    #[test]
    fn counters_add_up_and_plain_mode_prints_without_a_terminal() {
        let p = Progress::new(3, "days", true);
        p.add(10, 1000);
        p.add(5, 500);
        p.sub(5, 500);
        assert_eq!(p.totals(), (10, 1000));
        p.status("waiting");
        p.status("waiting");
        p.unit_done();
        assert!(p.counters().starts_with("10 rows, 1.0 kB"));
    }
}
