//! Logging (tracing, human or JSON lines) and the metrics endpoint every service serves.
//!
//! Log fields name tables, positions and errors (`table = %t, pos = %p, error = %e`), never row values.
//! `GET /metrics` answers Prometheus text from the service's registry; `GET /healthz` answers 200 while the
//! service's main loop is alive, 503 after it stopped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a terminal: a log read from a file (the demo's, a supervisor's) must not hold `\x1b[2m`.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// SIGINT/SIGTERM cancel `shutdown`: services drain (finish what is in flight, acknowledge, exit), not abort.
pub fn shutdown_on_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received: draining");
        shutdown.cancel();
    });
}

/// The `table` label every service puts on its per-table metrics: `schema.table`, escaped for the Prometheus text
/// format (prometheus-client writes label values as they are).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TableLabel {
    pub table: String,
}

impl TableLabel {
    pub fn new(table: &crate::change::TableRef) -> Self {
        TableLabel { table: label_value(&format!("{}.{}", table.schema, table.table)) }
    }
}

/// Any text as a metric label value, escaped for the Prometheus text format.
pub fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Liveness and the waiting state, reported by `/healthz` and the `pgm_waiting` gauge.
///
/// A service that waits out a transient fault (the broker or a database away) is alive: `/healthz` answers 200 with
/// `waiting: <what>` so a supervisor does not restart it, while dashboards see `pgm_waiting 1`.
#[derive(Clone, Debug)]
pub struct Health {
    alive: Arc<AtomicBool>,
    waiting_for: Arc<Mutex<Option<String>>>,
    waiting: Gauge,
}

impl Default for Health {
    fn default() -> Self {
        Health { alive: Arc::new(AtomicBool::new(true)), waiting_for: Default::default(), waiting: Gauge::default() }
    }
}

impl Health {
    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Relaxed);
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// The service waits for `what` (an error text, never row values) before it can go on.
    pub fn set_waiting(&self, what: impl Into<String>) {
        *self.waiting_for.lock().unwrap_or_else(|e| e.into_inner()) = Some(what.into());
        self.waiting.set(1);
    }

    /// It works again.
    pub fn clear_waiting(&self) {
        *self.waiting_for.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.waiting.set(0);
    }

    pub fn waiting_for(&self) -> Option<String> {
        self.waiting_for.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Clone)]
struct Endpoint {
    registry: Arc<Mutex<Registry>>,
    health: Health,
}

/// Binds `addr` and serves `/metrics` and `/healthz` until `shutdown`. Returns the bound address (port 0 picks one).
///
/// `addr` is the configured text and `setting` its key (`transform.metrics_addr`): errors name both and the fix.
pub async fn serve_metrics(
    addr: &str,
    setting: &str,
    registry: Arc<Mutex<Registry>>,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsAddrError> {
    let problem = |problem: String| MetricsAddrError { setting: setting.to_owned(), addr: addr.to_owned(), problem };
    let parsed: SocketAddr = addr.parse().map_err(|e| problem(format!("{e}; write it as ip:port")))?;
    let listener = TcpListener::bind(parsed).await.map_err(|e| {
        problem(format!(
            "cannot listen there: {e}; set it to a free port (127.0.0.1:0 picks one), or stop what holds it"
        ))
    })?;
    let bound = listener.local_addr().map_err(|e| problem(e.to_string()))?;
    registry.lock().unwrap_or_else(|e| e.into_inner()).register(
        "pgm_waiting",
        "1 while the service waits for the broker or a database after a transient fault (see /healthz for what)",
        health.waiting.clone(),
    );
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(Endpoint { registry, health });
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

/// The metrics endpoint cannot start: names the setting, the address and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{setting} = {addr:?}: {problem}")]
pub struct MetricsAddrError {
    pub setting: String,
    pub addr: String,
    pub problem: String,
}

async fn metrics(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let mut body = String::new();
    let encoded = {
        let registry = endpoint.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut body, &registry)
    };
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        ),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], "encoding failed".into()),
    }
}

async fn healthz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    match (endpoint.health.is_alive(), endpoint.health.waiting_for()) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "stopped\n".to_owned()),
        (true, None) => (StatusCode::OK, "ok\n".to_owned()),
        (true, Some(what)) => (StatusCode::OK, format!("waiting: {}\n", what.replace('\n', " "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("pgm_test_records", "records seen", counter.clone());
        counter.inc_by(3);
        let health = Health::default();
        let shutdown = CancellationToken::new();
        let (addr, task) = serve_metrics(
            "127.0.0.1:0",
            "test.metrics_addr",
            Arc::new(Mutex::new(registry)),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let body = get(addr, "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("pgm_test_records_total 3"), "{body}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(body.contains("pgm_waiting 0"), "{body}");
        // Waiting out a fault is alive, and says for what.
        health.set_waiting("Kafka: metadata of pgm.txn: BrokerTransportFailure");
        let waiting = get(addr, "/healthz").await;
        assert!(waiting.starts_with("HTTP/1.1 200") && waiting.contains("waiting: Kafka: metadata"), "{waiting}");
        assert!(get(addr, "/metrics").await.contains("pgm_waiting 1"));
        health.clear_waiting();
        assert!(get(addr, "/healthz").await.ends_with("ok\n"));
        health.set_alive(false);
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 503"));

        // A taken port or a malformed address names the setting and the fix.
        let taken = addr.to_string();
        let err = serve_metrics(&taken, "transform.metrics_addr", Arc::default(), Health::default(), shutdown.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&format!("transform.metrics_addr = \"{taken}\": cannot listen there")), "{err}");
        assert!(err.contains("127.0.0.1:0"), "{err}");
        let err = serve_metrics("localhost", "apply.metrics_addr", Arc::default(), Health::default(), shutdown.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("apply.metrics_addr = \"localhost\": ") && err.contains("ip:port"), "{err}");
        shutdown.cancel();
        task.await.unwrap();
    }
}
