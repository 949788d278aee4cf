//! The one HTTP client every command builds: `reqwest` with rustls, trusting
//! both the bundled Mozilla roots and the system's (so `https://openapi.dfinery.ai`
//! works on a machine without CA certificates, and a company's own CA in the
//! system store works too), and the checked base URL.

use std::time::Duration;

use anyhow::Context;
use reqwest::Url;

/// The `User-Agent` of every request: `fineport-client/<version>`.
pub const USER_AGENT: &str = concat!("fineport-client/", env!("CARGO_PKG_VERSION"));

/// A client with a 10 s connect timeout and, when `total` is `Some`, a
/// bound on each whole request. Streaming exports pass `None` (an export
/// may stream for an hour) and bound the silence between chunks instead
/// (`read_timeout`, 120 s).
///
/// Errors: only if the TLS backend cannot be set up.
pub fn client(total: Option<Duration>) -> anyhow::Result<reqwest::Client> {
    let mut builder = builder();
    if let Some(total) = total {
        builder = builder.timeout(total);
    }
    builder.build().context("cannot build the HTTP client")
}

/// The client of a streaming export from `base`: like [`client`] without
/// a whole-request bound, and asking for a compressed stream (gzip or
/// zstd, SPEC §2.3) only when the server is not on this machine: over a
/// network compression saves more than it costs; over loopback it only
/// costs both sides CPU (measured: 10 % of a 72 MB export on 2 cores).
pub fn export_client(base: &Url) -> anyhow::Result<reqwest::Client> {
    let host = base
        .host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let mut builder = builder();
    if loopback {
        builder = builder.no_gzip().no_zstd();
    }
    builder.build().context("cannot build the HTTP client")
}

/// An error with its sources on one line (`reqwest` keeps the cause, e.g.
/// "connection reset", in its source chain).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What every client shares: the user agent, rustls with both root sets,
/// a 10 s connect timeout, 120 s of silence at most, TCP keepalive.
fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .tcp_keepalive(Duration::from_secs(30))
}

/// Parses a server's base URL: `http(s)://host[:port][/prefix]`.
///
/// Errors: not a URL, or not http/https.
pub fn base_url(raw: &str) -> anyhow::Result<Url> {
    let url = Url::parse(raw).with_context(|| format!("invalid server URL {raw:?}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        anyhow::bail!("invalid server URL {url}: expected http(s)://host[:port]");
    }
    Ok(url)
}

/// `base` + `/` + `segments` (each percent-encoded) + `?service_id=<id>`:
/// the address of an Export or Import API call (SPEC §2.1, §4).
pub fn api_url(base: &Url, segments: &[&str], service_id: &str) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url.query_pairs_mut().append_pair("service_id", service_id);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_keep_the_base_path_and_encode_the_service() {
        let base = base_url("https://openapi.dfinery.ai").unwrap();
        assert_eq!(
            api_url(&base, &["api", "v1", "export", "event"], "a b").as_str(),
            "https://openapi.dfinery.ai/api/v1/export/event?service_id=a+b"
        );
        let base = base_url("http://127.0.0.1:1/prefix/").unwrap();
        assert_eq!(
            api_url(&base, &["api", "v1", "events"], "s").as_str(),
            "http://127.0.0.1:1/prefix/api/v1/events?service_id=s"
        );
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("nonsense").is_err());
    }

    #[test]
    fn https_clients_build() {
        client(None).unwrap();
        client(Some(Duration::from_secs(1))).unwrap();
        for url in [
            "http://127.0.0.1:1",
            "http://[::1]:1",
            "http://localhost",
            "https://openapi.dfinery.ai",
        ] {
            export_client(&base_url(url).unwrap()).unwrap();
        }
    }
}
