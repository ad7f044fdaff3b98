//! Telemetry: the process-wide Prometheus recorder (every crate records through the `metrics`
//! facade) and the listener that serves `GET /metrics`.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Latency buckets (seconds) for every `*_seconds` histogram.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus recorder: {0}")]
pub struct RecorderError(String);

/// Installs the process-wide `metrics` recorder (call once, before anything records) and
/// describes the edge's metrics.
pub fn install_recorder() -> Result<PrometheusHandle, RecorderError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .map_err(|e| RecorderError(e.to_string()))?
        .install_recorder()
        .map_err(|e| RecorderError(e.to_string()))?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "clawdeploy_http_requests_total",
        "Requests answered by the edge, by route kind, status and method"
    );
    describe_histogram!(
        "clawdeploy_http_request_duration_seconds",
        Unit::Seconds,
        "Time from request start to the end of the response (WebSockets: their whole life), by route kind"
    );
    describe_counter!(
        "clawdeploy_upstream_errors_total",
        "Failed proxy attempts to upstreams, by route kind and error"
    );
    describe_gauge!("clawdeploy_websockets_open", "WebSockets currently proxied");
    describe_counter!(
        "clawdeploy_ws_frames_total",
        "WebSocket frames relayed on metered gateway connections, by direction (up = client to instance)"
    );
    describe_counter!(
        "clawdeploy_ws_bytes_total",
        Unit::Bytes,
        "WebSocket bytes relayed on metered gateway connections, by direction"
    );
    describe_counter!(
        "clawdeploy_messages_counted_total",
        "OpenClaw user messages counted against quotas, by tier"
    );
    describe_counter!(
        "clawdeploy_quota_rejections_total",
        "Requests refused because a monthly quota was reached, by tier and quota (messages, tokens)"
    );
    describe_counter!(
        "clawdeploy_rate_limited_total",
        "Requests answered 429 by the rate limiter, by scope (ip, user)"
    );
    describe_counter!(
        "clawdeploy_llm_tokens_total",
        "LLM tokens metered at the edge's LLM endpoint, by provider and kind (input, output)"
    );
    describe_gauge!(
        "clawdeploy_redis_up",
        "1 while the shared-counter sync with Redis works, 0 while this node counts alone"
    );
    describe_gauge!(
        "clawdeploy_rate_limits_shared",
        "1 while rate limits are decided through Redis (shared by the edge nodes), 0 while per node"
    );
    describe_counter!(
        "clawdeploy_rate_limit_fallbacks_total",
        "Rate-limit checks decided by this node alone because Redis failed or did not answer in time"
    );
    describe_gauge!(
        "clawdeploy_pool_instances",
        "Pool members on this node by state (idle, creating, assigned), set every pool tick"
    );
    describe_gauge!(
        "clawdeploy_instances_awake",
        "Assigned instances on this node that are awake (running, starting), set every pool tick"
    );
    describe_gauge!(
        "clawdeploy_instances_sleeping",
        "Assigned instances on this node asleep after being idle, set every pool tick"
    );
    describe_counter!(
        "clawdeploy_sleep_checks_total",
        "Idle checks of awake instances by outcome: traffic (requests at the edge), working (the gateway said busy), job_due, slept"
    );
    describe_histogram!(
        "clawdeploy_wake_seconds",
        Unit::Seconds,
        "Time to wake a sleeping instance, from the wake's start to the instance serving, by outcome (woken, failed)"
    );
    describe_histogram!(
        "clawdeploy_wake_wait_seconds",
        Unit::Seconds,
        "Time a request to a sleeping instance was held at the edge, by outcome (woken, failed, pending: answered the waking page or 503 while the wake goes on)"
    );
    describe_counter!(
        "clawdeploy_usage_flush_failures_total",
        "Failed writes of usage counters to the store (retried at the next flush)"
    );
}

/// Serves `GET /metrics` on the metrics listener (a background service).
pub struct MetricsService {
    listener: Mutex<Option<std::net::TcpListener>>,
    handle: PrometheusHandle,
}

impl MetricsService {
    /// Serves `handle`'s metrics on `listener` (bound by the caller, so a busy port fails at
    /// start).
    pub fn new(listener: std::net::TcpListener, handle: PrometheusHandle) -> Self {
        Self {
            listener: Mutex::new(Some(listener)),
            handle,
        }
    }
}

#[async_trait]
impl BackgroundService for MetricsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("metrics listener unusable: {e}");
                return;
            }
        };
        // Histograms and idle series are maintained here rather than on every scrape.
        let upkeep = self.handle.clone();
        let upkeep_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        let handle = self.handle.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                }
            }),
        );
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!("metrics listener stopped: {e}");
        }
        upkeep_task.abort();
    }
}
