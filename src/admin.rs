//! The admin listener: `/health`, `/ready`, Prometheus `/metrics` and the dashboard
//! (`dashboards`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use dashboards::system::tap::{Tap, Tapped};
use ingest::server::Listener;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// The process-wide recorder: Prometheus, tapped for the dashboard's system view.
struct Recording {
    handle: PrometheusHandle,
    tap: Arc<Tap>,
}

/// Installs the process-wide recorder once and returns it.
fn recording() -> &'static Recording {
    static RECORDING: OnceLock<Recording> = OnceLock::new();
    RECORDING.get_or_init(|| {
        let seconds = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let sizes = [
            1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_envelopes".into()), &sizes))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let tap = Arc::new(Tap::default());
        metrics::set_global_recorder(Tapped::new(recorder, tap.clone()))
            .expect("the metrics recorder is installed once per process");
        Recording { handle, tap }
    })
}

/// The handle that renders `/metrics` (installs the recorder on first use).
pub fn metrics_handle() -> PrometheusHandle {
    recording().handle.clone()
}

/// The counters and timings the system view reads (installs the recorder on first use).
pub fn metrics_tap() -> Arc<Tap> {
    recording().tap.clone()
}

/// One dependency `/ready` reports on.
pub struct Check {
    pub name: &'static str,
    pub ok: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Check {
    pub fn flag(name: &'static str, flag: Arc<AtomicBool>) -> Check {
        Check {
            name,
            ok: Arc::new(move || flag.load(Ordering::Relaxed)),
        }
    }
}

/// Serves `/health`, `/ready` and `/metrics` on `listener` (the edge the gateway uses: same
/// accept loop, timeouts and graceful shutdown) until `shutdown`.
pub async fn serve(
    listener: Listener,
    checks: Vec<Check>,
    dashboard: BoxedFilter<(Response,)>,
    shutdown: CancellationToken,
) {
    let handle = metrics_handle();
    let checks = Arc::new(checks);
    let health = warp::path!("health").map(|| "ok".into_response());
    let ready = warp::path!("ready").map(move || {
        let states: serde_json::Map<String, serde_json::Value> = checks
            .iter()
            .map(|c| (c.name.to_owned(), ((c.ok)()).into()))
            .collect();
        let all_ok = states.values().all(|v| v == &serde_json::Value::Bool(true));
        let status = if all_ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        warp::reply::with_status(warp::reply::json(&states), status).into_response()
    });
    let metrics = warp::path!("metrics").map(move || handle.render().into_response());
    let routes = warp::get()
        .and(health.or(ready).unify().or(metrics).unify())
        .or(dashboard)
        .unify()
        .recover(|_| async {
            Ok::<_, Infallible>(warp::reply::with_status("not found", StatusCode::NOT_FOUND))
        });
    ingest::server::serve(listener, warp::service(routes), shutdown).await;
}
