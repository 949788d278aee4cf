//! The server under test: `fineport serve` run as a child process of the
//! bench (this same executable), so its memory can be read from
//! `/proc/<pid>/status` apart from the bench client's.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// The admin token the bench gives its server.
pub const ADMIN_TOKEN: &str = "fineport-bench-admin-token";

pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// Starts `fineport serve` on a free port over `data` (and the store
    /// flags `store_args`, e.g. the cluster's) and waits until it listens.
    pub fn start(data: &Path, store_args: &[String]) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("cannot find the fineport executable")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(store_args)
            .env("FINEPORT_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .env_remove("FINEPORT_DEMO")
            .env_remove("FINEPORT_LISTEN")
            .env_remove("FINEPORT_DATA")
            // The store is what `store_args` says, not the caller's environment.
            .env_remove("FINEPORT_CLICKHOUSE_URL")
            .env_remove("FINEPORT_POSTGRES_URL")
            .env_remove("FINEPORT_CLICKHOUSE_DATABASE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start fineport serve")?;
        let stdout = child.stdout.take().context("no stdout of the server")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        break url.trim().to_string();
                    }
                }
                _ => {
                    let status = child.wait().ok();
                    bail!("fineport serve exited before listening ({status:?})");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Server { child, base })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the server to stop (SIGTERM, as a service manager would) and
    /// waits for it, so the DuckDB file is closed and checkpointed.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while sent.as_ref().is_ok_and(|s| s.success()) && Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill().ok();
        self.child.wait()?;
        Err(anyhow!("the server did not stop on SIGTERM; killed it"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// Resident memory of a process in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Samples a process's RSS every 5 ms on a thread until dropped; keeps the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_bytes(pid).unwrap_or(0)));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_bytes(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns the peak RSS seen.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
        self.peak.load(Ordering::Relaxed)
    }
}
