//! Clients of fineport's HTTP APIs (SPEC §5.3), used by the `fineport`
//! binary's `admin`, `export` and `import` commands.
//!
//! - [`admin`]: the admin API, one method per call.
//! - [`export`]: big exports made safe: a range split into days, run up
//!   to the concurrency limit, 429s waited out, broken streams retried,
//!   each day verified complete, resumable, written atomically.
//! - [`import`]: files sent to the Import API in batches, with retries and
//!   the per-minute limit honoured.
//! - [`http`], [`rate`], [`retry`], [`progress`]: what those share: the
//!   HTTP client (TLS with bundled and system roots), DFINERY's rate-limit
//!   headers, backoff with jitter, and progress on a terminal or in a log.

pub mod admin;
pub mod export;
pub mod http;
pub mod import;
pub mod progress;
pub mod rate;
pub mod retry;

pub use admin::{AdminClient, ApiError, LimitSettings, ServiceSettings, TokenKind};

/// The default address of `fineport serve`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
