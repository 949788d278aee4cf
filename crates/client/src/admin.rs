//! The admin API client (SPEC §5.2): one async method per call, each
//! answering the server's JSON as a [`serde_json::Value`]. A non-2xx answer
//! becomes an [`ApiError`] (inside the `anyhow::Error`) that keeps the HTTP
//! status and the body exactly as the server sent it, so a caller can show
//! the server's own `{"error":…,"detail":…}`; find it with
//! `err.downcast_ref::<ApiError>()`.

use std::time::Duration;

use anyhow::Context;
use fineport_contract::taxonomy::TaxonomyDoc;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde_json::Value;

/// A non-2xx answer from the server: its status and body, verbatim.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: String,
}

impl ApiError {
    /// The body as JSON, when it is JSON (the admin API's errors are).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body.trim_end())
    }
}

impl std::error::Error for ApiError {}

/// Service settings for create and update; absent fields are left out of
/// the request (the server keeps or defaults them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_lookback_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_register: Option<bool>,
    #[serde(skip_serializing_if = "LimitSettings::is_empty")]
    pub limits: LimitSettings,
}

/// Per-service limits to set (SPEC §3); absent fields are left unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LimitSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_per_hour: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identities_per_minute: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiles_per_minute: Option<u32>,
}

impl LimitSettings {
    pub fn is_empty(&self) -> bool {
        *self == LimitSettings::default()
    }
}

pub use fineport_contract::tokens::TokenKind;

/// A client of the admin API of one fineport server.
#[derive(Debug, Clone)]
pub struct AdminClient {
    pub base_url: Url,
    pub token: String,
    pub http: reqwest::Client,
}

impl AdminClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8080`,
    /// optionally with a path prefix) using the admin `token`.
    pub fn new(base_url: &str, token: impl Into<String>) -> anyhow::Result<AdminClient> {
        let base_url = crate::http::base_url(base_url)?;
        let http = crate::http::client(Some(Duration::from_secs(120)))?;
        Ok(AdminClient {
            base_url,
            token: token.into(),
            http,
        })
    }

    /// `base_url` + `/admin/v1/` + `segments`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["admin", "v1"]).extend(segments);
        }
        url
    }

    async fn call(&self, method: Method, url: Url, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method.clone(), url.clone()).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("{method} {url} failed"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{method} {url}: reading the answer (HTTP {status}) failed"))?;
        if !status.is_success() {
            return Err(ApiError { status, body: text }.into());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{method} {url}: the answer (HTTP {status}) is not JSON: {text}"))
    }

    fn json<T: Serialize>(body: &T) -> anyhow::Result<Value> {
        serde_json::to_value(body).context("cannot encode the request body")
    }

    /// `GET /admin/v1/services` → `{"services":[…]}`.
    pub async fn list_services(&self) -> anyhow::Result<Value> {
        self.call(Method::GET, self.url(&["services"]), None).await
    }

    /// `POST /admin/v1/services` → the service with its two tokens (shown once).
    pub async fn create_service(&self, settings: &ServiceSettings) -> anyhow::Result<Value> {
        self.call(Method::POST, self.url(&["services"]), Some(Self::json(settings)?))
            .await
    }

    /// `GET /admin/v1/services/{id}`.
    pub async fn get_service(&self, service_id: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, self.url(&["services", service_id]), None).await
    }

    /// `PATCH /admin/v1/services/{id}` → the service as changed.
    pub async fn update_service(&self, service_id: &str, settings: &ServiceSettings) -> anyhow::Result<Value> {
        self.call(
            Method::PATCH,
            self.url(&["services", service_id]),
            Some(Self::json(settings)?),
        )
        .await
    }

    /// `GET /admin/v1/services/{id}/tokens` → `{"tokens":[…]}`, newest
    /// first, never a token's value.
    pub async fn tokens(&self, service_id: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, self.url(&["services", service_id, "tokens"]), None)
            .await
    }

    /// `POST /admin/v1/services/{id}/tokens/{kind}/reissue` with an
    /// optional `{"reason"}` (at most 500 characters) →
    /// `{"token","previous_valid_until"}`.
    pub async fn reissue_token(
        &self,
        service_id: &str,
        kind: TokenKind,
        reason: Option<&str>,
    ) -> anyhow::Result<Value> {
        let url = self.url(&["services", service_id, "tokens", kind.as_str(), "reissue"]);
        let body = reason.map(|r| serde_json::json!({ "reason": r }));
        self.call(Method::POST, url, body).await
    }

    /// `DELETE /admin/v1/services/{id}/tokens/{kind}`: revokes every token of `kind`.
    pub async fn revoke_token(&self, service_id: &str, kind: TokenKind) -> anyhow::Result<Value> {
        let url = self.url(&["services", service_id, "tokens", kind.as_str()]);
        self.call(Method::DELETE, url, None).await
    }

    /// `GET /admin/v1/services/{id}/taxonomy`.
    pub async fn taxonomy(&self, service_id: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, self.url(&["services", service_id, "taxonomy"]), None)
            .await
    }

    /// `POST /admin/v1/services/{id}/taxonomy`: adds names (idempotent).
    pub async fn add_taxonomy(&self, service_id: &str, additions: &TaxonomyDoc) -> anyhow::Result<Value> {
        let url = self.url(&["services", service_id, "taxonomy"]);
        self.call(Method::POST, url, Some(Self::json(additions)?)).await
    }

    /// `GET /admin/v1/services/{id}/audiences`.
    pub async fn audiences(&self, service_id: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, self.url(&["services", service_id, "audiences"]), None)
            .await
    }

    /// `POST /admin/v1/services/{id}/audiences`: `{"id"?,"name","external_ids"|"rule"}`.
    pub async fn create_audience(&self, service_id: &str, audience: &Value) -> anyhow::Result<Value> {
        let url = self.url(&["services", service_id, "audiences"]);
        self.call(Method::POST, url, Some(audience.clone())).await
    }

    /// `DELETE /admin/v1/services/{id}/audiences/{aid}`.
    pub async fn delete_audience(&self, service_id: &str, audience_id: &str) -> anyhow::Result<Value> {
        let url = self.url(&["services", service_id, "audiences", audience_id]);
        self.call(Method::DELETE, url, None).await
    }

    /// `GET /admin/v1/services/{id}/stats?hours=H&days=D` →
    /// `{"hourly":[{"hour","requests","export_rows"}],"daily":[{"day","events"}]}`.
    pub async fn stats(&self, service_id: &str, hours: Option<u32>, days: Option<u32>) -> anyhow::Result<Value> {
        let mut url = self.url(&["services", service_id, "stats"]);
        if let Some(hours) = hours {
            url.query_pairs_mut().append_pair("hours", &hours.to_string());
        }
        if let Some(days) = days {
            url.query_pairs_mut().append_pair("days", &days.to_string());
        }
        self.call(Method::GET, url, None).await
    }

    /// `GET /admin/v1/services/{id}/requests?limit=N&outcome=M`: the
    /// request log, newest first; only the entries whose `message` is
    /// `outcome` (`ok`, `invalid_parameter`, `40001`, …) when given.
    pub async fn requests(
        &self,
        service_id: &str,
        limit: Option<usize>,
        outcome: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut url = self.url(&["services", service_id, "requests"]);
        if let Some(limit) = limit {
            url.query_pairs_mut().append_pair("limit", &limit.to_string());
        }
        if let Some(outcome) = outcome {
            url.query_pairs_mut().append_pair("outcome", outcome);
        }
        self.call(Method::GET, url, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_under_the_base_and_encoded() {
        let c = AdminClient::new("http://127.0.0.1:8080", "t").unwrap();
        assert_eq!(c.url(&["services"]).as_str(), "http://127.0.0.1:8080/admin/v1/services");
        assert_eq!(
            c.url(&["services", "a/b c"]).as_str(),
            "http://127.0.0.1:8080/admin/v1/services/a%2Fb%20c"
        );
        let c = AdminClient::new("http://host:1/prefix/", "t").unwrap();
        assert_eq!(c.url(&["services"]).as_str(), "http://host:1/prefix/admin/v1/services");
        assert!(AdminClient::new("not a url", "t").is_err());
    }

    #[test]
    fn settings_leave_out_what_is_not_set() {
        let s = ServiceSettings {
            name: Some("Shop".into()),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"name":"Shop"}"#);
        let s = ServiceSettings {
            limits: LimitSettings {
                export_per_hour: Some(5),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"limits":{"export_per_hour":5}}"#
        );
    }
}
