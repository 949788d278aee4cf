//! A TCP relay on loopback that tests put between fineport and a real
//! service (Redis, PostgreSQL) to make that service unreachable and back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

/// A loopback TCP relay to a service that can be cut (every connection
/// closed, new ones closed at once) and restored: the service going away and
/// coming back, as fineport sees it, without stopping what other tests use
/// (failure injection as a wrapper around the real service).
pub struct Relay {
    pub addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Relay {
    /// `host:port` of a URL such as `redis://127.0.0.1:56379/0` or
    /// `postgres://user@127.0.0.1:55432/db`.
    pub fn host_port(url: &str) -> String {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host)
            .to_owned()
    }

    /// `url` with its `host:port` replaced by the relay's.
    pub fn url_through(&self, url: &str) -> String {
        url.replacen(&Self::host_port(url), &self.addr.to_string(), 1)
    }

    /// Starts relaying to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                let mut cut_signal = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_signal.changed() => {}
                    }
                });
            }
        });
        Relay { addr, cut, generation }
    }

    /// Closes every relayed connection and every new one, until [`Relay::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
