//! Sending one [`Request`] until every row in it is stored or rejected
//! (SPEC §4 codes; see the module docs of [`super`] for what each does).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::CONTENT_TYPE;
use reqwest::Url;
use serde_json::Value as Json;

use super::batch::Request;
use super::rejects::RejectsFile;
use super::{Counters, ImportOptions, Reject};
use crate::progress::Progress;
use crate::rate::{clock_utc, human_duration, RateLimit};
use crate::retry::RetryPolicy;

/// What one answer means for the client.
#[derive(Debug)]
enum Answer {
    /// `20000`.
    Stored,
    /// `50000`, HTTP 5xx/408, a transport error: send again after a backoff.
    Retry(String),
    /// `40401` (or HTTP 429): wait for the window.
    RateLimited(RateLimit),
    /// `40001`: nothing stored; `(index, reason)` of each problem.
    Invalid(Vec<(Option<usize>, String)>),
    /// `40000`, `40402`, `40403`: refused as a whole; split, or reject a single row.
    Refused(String, String),
    /// `40101`, `40201`, another HTTP status, a body that is not the Import
    /// API's: stop the import.
    Stop(String),
}

pub(crate) struct Sender {
    http: reqwest::Client,
    url: Url,
    token: String,
    retry: RetryPolicy,
    max_rate_wait: Duration,
    counters: Arc<Counters>,
    rejects: Arc<RejectsFile>,
    progress: Option<Arc<Progress>>,
    /// Senders waiting for the per-minute window (the status line is
    /// cleared when the last one is done).
    waiting: AtomicUsize,
}

impl Sender {
    pub(crate) fn new(
        options: &ImportOptions,
        counters: Arc<Counters>,
        rejects: Arc<RejectsFile>,
    ) -> anyhow::Result<Sender> {
        let base = crate::http::base_url(&options.base_url)?;
        Ok(Sender {
            http: crate::http::client(Some(Duration::from_secs(120)))?,
            url: crate::http::api_url(&base, &options.kind.path(), &options.service),
            token: options.token.clone(),
            retry: options.retry,
            max_rate_wait: options.max_rate_wait,
            counters,
            rejects,
            progress: None,
            waiting: AtomicUsize::new(0),
        })
    }

    pub(crate) fn with_progress(mut self, progress: Arc<Progress>) -> Sender {
        self.progress = Some(progress);
        self
    }

    fn line(&self, text: &str) {
        if let Some(p) = &self.progress {
            p.line(text);
        }
    }

    fn status(&self, text: &str) {
        if let Some(p) = &self.progress {
            p.status(text);
        }
    }

    fn reject(&self, reject: Reject) -> anyhow::Result<()> {
        self.rejects.write(&reject)?;
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends `request` until each of its rows is stored or rejected.
    ///
    /// Errors: the server refused the token or the service (40201, 40101),
    /// answered something that is not the Import API, or failed more than
    /// the retry policy allows; the rejects file could not be written.
    pub(crate) async fn send(&self, request: Request) -> anyhow::Result<()> {
        let mut queue = vec![request];
        let mut failures = 0u32;
        while let Some(mut request) = queue.pop() {
            while !request.rows.is_empty() {
                let body = serde_json::to_vec(&request.body())?;
                let bytes = body.len() as u64;
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                match self.post(body).await {
                    Answer::Stored => {
                        let n = request.rows.len() as u64;
                        self.counters.stored.fetch_add(n, Ordering::Relaxed);
                        if let Some(p) = &self.progress {
                            p.add(n, bytes);
                        }
                        failures = 0;
                        break;
                    }
                    Answer::Retry(why) => {
                        failures += 1;
                        if failures > self.retry.max_retries {
                            anyhow::bail!(
                                "{why}; gave up after {} retries (what was stored stays stored; \
                                 running the same import again is safe)",
                                self.retry.max_retries
                            );
                        }
                        self.counters.retries.fetch_add(1, Ordering::Relaxed);
                        let wait = self.retry.backoff(failures);
                        self.line(&format!(
                            "{why}; retry {failures}/{} in {:.1}s",
                            self.retry.max_retries,
                            wait.as_secs_f64()
                        ));
                        tokio::time::sleep(wait).await;
                    }
                    Answer::RateLimited(rate) => {
                        let n = request.rows.len();
                        // Room for part of it now: that part goes at once.
                        if let Some(room) = rate.remaining.map(|r| r as usize).filter(|r| *r > 0 && *r < n) {
                            let rest = request.rows.split_off(room);
                            queue.push(request.with_rows(rest));
                            continue;
                        }
                        self.wait_for_window(&rate).await;
                    }
                    Answer::Invalid(problems) => {
                        let n = request.rows.len();
                        let mut bad = vec![None::<String>; n];
                        let mut general = Vec::new();
                        for (index, reason) in problems {
                            match index.filter(|i| *i < n) {
                                Some(i) => {
                                    let slot = &mut bad[i];
                                    *slot = Some(match slot.take() {
                                        Some(before) => format!("{before}; {reason}"),
                                        None => reason,
                                    });
                                }
                                None => general.push(reason),
                            }
                        }
                        // Without a row to blame, the whole request is invalid.
                        if bad.iter().all(Option::is_none) {
                            let reason = if general.is_empty() {
                                "VALIDATION_FAILURE without a reason".to_owned()
                            } else {
                                general.join("; ")
                            };
                            bad.iter_mut().for_each(|b| *b = Some(reason.clone()));
                        }
                        let rows = std::mem::take(&mut request.rows);
                        for (row, reason) in rows.into_iter().zip(bad) {
                            match reason {
                                Some(reason) => {
                                    self.reject(Reject::new(&row.origin, row.event_log_id, Some("40001"), reason))?
                                }
                                None => request.rows.push(row),
                            }
                        }
                    }
                    Answer::Refused(code, why) => {
                        if request.rows.len() > 1 {
                            let half = request.rows.len() / 2;
                            let rest = request.rows.split_off(half);
                            queue.push(request.with_rows(rest));
                        } else {
                            for row in std::mem::take(&mut request.rows) {
                                self.reject(Reject::new(&row.origin, row.event_log_id, Some(&code), why.clone()))?;
                            }
                        }
                    }
                    Answer::Stop(why) => anyhow::bail!(why),
                }
            }
        }
        Ok(())
    }

    async fn wait_for_window(&self, rate: &RateLimit) {
        self.counters.rate_waits.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let wait = rate.wait_after_refusal(now, self.max_rate_wait);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.status(&format!(
            "per-minute limit reached (40401): waiting until {} ({})",
            clock_utc(now + wait),
            human_duration(wait)
        ));
        tokio::time::sleep(wait).await;
        if self.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.status("");
        }
    }

    async fn post(&self, body: Vec<u8>) -> Answer {
        let sent = self
            .http
            .post(self.url.clone())
            .header("access_token", &self.token)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Answer::Retry(format!("request failed: {}", crate::http::error_chain(&e))),
        };
        let status = response.status();
        let rate = RateLimit::from_headers(response.headers());
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => return Answer::Retry(format!("reading the answer failed: {}", crate::http::error_chain(&e))),
        };
        if status.as_u16() == 429 {
            return Answer::RateLimited(rate);
        }
        if status.is_server_error() || status.as_u16() == 408 {
            return Answer::Retry(format!("HTTP {status}"));
        }
        let answer: Option<Json> = serde_json::from_str(&text).ok();
        let code = answer.as_ref().and_then(|a| a.get("code")).and_then(Json::as_str);
        let (Some(answer), Some(code)) = (answer.as_ref(), code) else {
            let hint = if status.as_u16() == 404 {
                "\nhint: is --base-url the address of a fineport server or of DFINERY's Open API?"
            } else {
                ""
            };
            return Answer::Stop(format!(
                "{} answered HTTP {status} without an Import API result: {}{hint}",
                self.url,
                text.chars().take(300).collect::<String>()
            ));
        };
        let message = answer.get("message").and_then(Json::as_str).unwrap_or("");
        let data = answer.get("data").cloned().unwrap_or(Json::Null);
        let detail = || {
            let reasons = problems(&data);
            if reasons.is_empty() {
                format!("{code} {message}")
            } else {
                let joined: Vec<String> = reasons.into_iter().map(|(_, r)| r).collect();
                format!("{code} {message}: {}", joined.join("; "))
            }
        };
        match code {
            "20000" => Answer::Stored,
            "50000" => Answer::Retry(format!("the server answered {}", detail())),
            "40401" => Answer::RateLimited(rate),
            "40001" => Answer::Invalid(problems(&data)),
            "40000" | "40402" | "40403" => Answer::Refused(code.to_owned(), detail()),
            "40201" => Answer::Stop(format!(
                "the server refused the import token: {}\nhint: pass the service's import token \
                 (--import-token or FINEPORT_IMPORT_TOKEN); an export token does not work for imports, \
                 and a revoked or reissued-and-expired token no longer does",
                detail()
            )),
            "40101" => Answer::Stop(format!(
                "the server does not know service {:?}: {}\nhint: check --service (FINEPORT_SERVICE) \
                 and --base-url",
                self.url
                    .query_pairs()
                    .find(|(k, _)| k == "service_id")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default(),
                detail()
            )),
            other => Answer::Stop(format!(
                "the server answered an unknown result code {other}: {}",
                detail()
            )),
        }
    }
}

/// `data` of a failure: `[{"index"?,"reason"}]` → `(index, reason)`; a
/// string is one reason; anything else none.
fn problems(data: &Json) -> Vec<(Option<usize>, String)> {
    match data {
        Json::Array(list) => list
            .iter()
            .map(|p| {
                let index = p.get("index").and_then(Json::as_u64).map(|i| i as usize);
                let reason = match p.get("reason") {
                    Some(Json::String(s)) => s.clone(),
                    _ => p.to_string(),
                };
                (index, reason)
            })
            .collect(),
        Json::String(s) => vec![(None, s.clone())],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn problems_are_read_from_data() {
        assert_eq!(
            problems(&json!([{"index": 1, "reason": "bad"}, {"reason": "too many items"}])),
            vec![(Some(1), "bad".to_owned()), (None, "too many items".to_owned())]
        );
        assert!(problems(&json!(true)).is_empty());
    }
}
