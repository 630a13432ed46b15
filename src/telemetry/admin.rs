//! The admin HTTP API on the policy's admin address: `GET /metrics`, `GET /healthz`,
//! `GET /explain?ip=`, `POST /reload`. With `server.admin_token` set, every endpoint but `/healthz`
//! wants `Authorization: Bearer <token>`.

use crate::live::{Live, ReloadError};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long `/healthz` waits for the backend to accept a connection.
const BACKEND_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Histograms are folded and idle series dropped this often.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

pub struct AdminState {
    pub live: Arc<Live>,
    /// The metrics recorder's handle; `None` renders an empty page.
    pub metrics: Option<PrometheusHandle>,
    /// Set once the SMTP listeners accept connections, cleared at shutdown.
    pub listening: Arc<AtomicBool>,
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Some(handle) = state.metrics.clone() {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        });
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/explain", get(explain))
        .route("/reload", post(reload))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Whether no token is configured or the request carries it.
fn authorized(state: &AdminState, headers: &HeaderMap) -> bool {
    let policy = state.live.policy();
    let Some(expected) = policy.server.admin_token.as_deref() else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    constant_time_eq(given.as_bytes(), expected.as_bytes())
}

fn unauthorized() -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "send Authorization: Bearer <server.admin_token>",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// 200 when the SMTP listeners accept and the backend takes a TCP connection; 503 otherwise.
async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    let listening = state.listening.load(Ordering::Relaxed);
    let backend = state.live.policy().backend.address;
    let probe = tokio::time::timeout(
        BACKEND_PROBE_TIMEOUT,
        tokio::net::TcpStream::connect(backend),
    )
    .await;
    let backend_problem = match probe {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "no connection within {}s",
            BACKEND_PROBE_TIMEOUT.as_secs()
        )),
    };
    let healthy = listening && backend_problem.is_none();
    let status = match healthy {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "listening": listening,
        "backend": backend.to_string(),
        "backend_reachable": backend_problem.is_none(),
        "backend_error": backend_problem,
    });
    (status, Json(body)).into_response()
}

#[derive(serde::Deserialize)]
struct ExplainQuery {
    ip: Option<String>,
}

async fn explain(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Query(query): Query<ExplainQuery>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let Some(text) = query.ip else {
        return error(StatusCode::BAD_REQUEST, "missing ?ip=<address>");
    };
    let Ok(ip) = text.parse::<IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not an IP address"),
        );
    };
    let current = state.live.current();
    let verdict = crate::admission::assess(&current.policy, &current.lists, ip).await;
    Json(crate::admission::to_json(&current.policy, &verdict)).into_response()
}

/// Validates and installs the policy file; 400 with every error when it is invalid.
async fn reload(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    match state.live.reload().await {
        Ok(report) => (
            StatusCode::OK,
            Json(json!({ "result": "ok", "report": report })),
        )
            .into_response(),
        Err(ReloadError::Invalid(e)) => {
            let errors: Vec<String> = e.issues.iter().map(|i| i.to_string()).collect();
            (
                StatusCode::BAD_REQUEST,
                Json(json!({ "result": "invalid", "errors": errors })),
            )
                .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
