//! What the binary's end-to-end tests share: a free loopback port, and
//! waiting for a `fineport serve` child to listen.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::Child;

/// A loopback port free right now (the kernel's pick for port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Reads the stdout (piped) of a `fineport serve` child until it prints
/// `listening on`, and returns all it printed; from then on a thread keeps
/// draining it, so the server never blocks on a full pipe. `Err` with what
/// it printed if its stdout ended first (it stopped).
pub fn wait_until_listening(child: &mut Child) -> Result<String, String> {
    let stdout = child.stdout.take().expect("a piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = String::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("listening on") {
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(printed);
        }
    }
    Err(printed)
}
