//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const HANDLER_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

type Labels = Vec<(&'static str, String)>;

/// Appends an operator's own series, in Prometheus text format, to `out`.
type Collector = Box<dyn Fn(&mut String) + Send + Sync>;

/// `{labels}`, or nothing for a series without labels.
fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// A cumulative Prometheus histogram over fixed upper bounds, for an
/// operator's own series too (render it from a [`Metrics::add_collector`]
/// collector with [`Histogram::write`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with these bucket upper bounds (ascending; `+Inf`
    /// is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        for (c, b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// Appends the `<name>_bucket`, `<name>_sum` and `<name>_count` lines.
    /// `labels` is the series' label list without braces, values already
    /// escaped with [`escape_label_value`] (`a="x",b="y"`), or empty.
    pub fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let braced = braced(labels);
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n{name}_sum{braced} {}\n{name}_count{braced} {}",
            self.count, self.sum, self.count
        );
    }
}

/// The operator's metrics (Prometheus text format via [`Metrics::render`]).
///
/// Exposed series:
/// * `operator_handler_runs_total{controller,handler}`
/// * `operator_handler_failures_total{controller,handler,kind="retryable|permanent"}`
/// * `operator_handler_retries_total{controller,handler}` (runs that were retries)
/// * `operator_handler_duration_seconds{controller,handler}` (histogram)
/// * `operator_objects_queued{controller}` (due, waiting for a worker slot)
/// * `operator_objects_in_flight` (objects being processed)
/// * `operator_object_cycles_total{controller}` (processing cycles)
/// * `operator_api_requests_total{verb}` (requests made by the framework itself)
/// * `operator_api_writes_total` (writes made by the framework itself, incl. handlers' context helpers)
/// * `operator_is_leader`
///
/// Operators add their own series with [`Metrics::add_collector`]; they are
/// rendered after these, on the same endpoint.
#[derive(Default)]
pub struct Metrics {
    collectors: Mutex<Vec<Collector>>,
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    histograms: Mutex<BTreeMap<Labels, Histogram>>,
    gauges: Mutex<BTreeMap<(&'static str, Labels), i64>>,
    in_flight: AtomicI64,
    leader: AtomicBool,
    ready: AtomicBool,
    unsynced: AtomicI64,
    pub(crate) health: crate::health::Health,
}

impl Metrics {
    /// Adds a function that appends the operator's own series (Prometheus
    /// text format, with `# HELP`/`# TYPE` lines) to every `/metrics` reply.
    pub fn add_collector(&self, collect: impl Fn(&mut String) + Send + Sync + 'static) {
        if let Ok(mut c) = self.collectors.lock() {
            c.push(Box::new(collect));
        }
    }

    fn inc(&self, name: &'static str, labels: Labels, by: u64) {
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((name, labels)).or_default() += by;
        }
    }

    fn counter(&self, name: &'static str, labels: &Labels) -> u64 {
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.get(&(name, labels.clone())).copied())
            .unwrap_or(0)
    }

    pub(crate) fn handler_run(&self, controller: &str, handler: &str, retry: bool, d: Duration) {
        let l: Labels = vec![
            ("controller", controller.into()),
            ("handler", handler.into()),
        ];
        self.inc("operator_handler_runs_total", l.clone(), 1);
        if retry {
            self.inc("operator_handler_retries_total", l.clone(), 1);
        }
        if let Ok(mut h) = self.histograms.lock() {
            h.entry(l)
                .or_insert_with(|| Histogram::new(&HANDLER_BUCKETS))
                .observe(d.as_secs_f64());
        }
    }

    pub(crate) fn cycle(&self, controller: &str) {
        self.inc(
            "operator_object_cycles_total",
            vec![("controller", controller.into())],
            1,
        );
    }

    /// Processing cycles (an object taken from the queue and looked at) of
    /// all controllers.
    pub fn cycles(&self) -> u64 {
        self.sum("operator_object_cycles_total", |_| true)
    }

    pub(crate) fn handler_failure(&self, controller: &str, handler: &str, permanent: bool) {
        let kind = if permanent { "permanent" } else { "retryable" };
        self.inc(
            "operator_handler_failures_total",
            vec![
                ("controller", controller.into()),
                ("handler", handler.into()),
                ("kind", kind.into()),
            ],
            1,
        );
    }

    pub(crate) fn api_request(&self, verb: &'static str) {
        self.inc(
            "operator_api_requests_total",
            vec![("verb", verb.into())],
            1,
        );
        if !matches!(verb, "get" | "list") {
            self.inc("operator_api_writes_total", vec![], 1);
        }
    }

    pub(crate) fn set_queued(&self, controller: &str, n: usize) {
        if let Ok(mut g) = self.gauges.lock() {
            g.insert(
                (
                    "operator_objects_queued",
                    vec![("controller", controller.into())],
                ),
                n as i64,
            );
        }
    }

    pub(crate) fn in_flight_add(&self, d: i64) {
        self.in_flight.fetch_add(d, Ordering::Relaxed);
    }

    pub(crate) fn set_leader(&self, v: bool) {
        self.leader.store(v, Ordering::Relaxed);
    }

    pub(crate) fn set_ready(&self, v: bool) {
        self.ready.store(v, Ordering::Relaxed);
    }

    /// Whether the operator is ready: every controller finished its initial
    /// list (or the replica stands by for the lease).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.unsynced.load(Ordering::Relaxed) <= 0
    }

    /// Whether the operator is healthy (what `/healthz` answers): no running
    /// controller's watch has gone without its initial list, or has been
    /// failing, for longer than
    /// [`OperatorConfig::unhealthy_after`](crate::OperatorConfig::unhealthy_after).
    /// Secondary watches (`owns`, `watches`) are not counted.
    pub fn is_healthy(&self) -> bool {
        self.health_problems().is_empty()
    }

    /// What makes the operator unhealthy (empty when healthy).
    pub fn health_problems(&self) -> Vec<String> {
        self.health.problems(std::time::Instant::now())
    }

    pub(crate) fn set_unsynced(&self, n: usize) {
        self.unsynced.store(n as i64, Ordering::Relaxed);
    }

    pub(crate) fn controller_synced(&self) {
        self.unsynced.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether this replica currently holds the lease (always `true` without
    /// leader election once running).
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Total handler runs of `handler` (all controllers).
    pub fn handler_runs(&self, handler: &str) -> u64 {
        self.sum("operator_handler_runs_total", |l| has_handler(l, handler))
    }

    /// Total failed runs of `handler` (all controllers).
    pub fn handler_failures(&self, handler: &str) -> u64 {
        self.sum("operator_handler_failures_total", |l| {
            has_handler(l, handler)
        })
    }

    /// The sum of the counters `name` whose labels pass `keep`.
    fn sum(&self, name: &str, keep: impl Fn(&Labels) -> bool) -> u64 {
        self.counters
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|((n, l), _)| *n == name && keep(l))
                    .map(|(_, v)| *v)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// API requests made by the framework (watches excluded).
    pub fn api_requests(&self) -> u64 {
        self.sum("operator_api_requests_total", |_| true)
    }

    /// Write requests (create/patch/apply/delete/event) made by the framework.
    pub fn api_writes(&self) -> u64 {
        self.counter("operator_api_writes_total", &vec![])
    }

    /// The metrics in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let label_list = |l: &Labels| -> String {
            l.iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let helps: [(&str, &str, &str); 5] = [
            (
                "operator_object_cycles_total",
                "counter",
                "Objects taken from the queue and processed.",
            ),
            ("operator_handler_runs_total", "counter", "Handler runs."),
            (
                "operator_handler_failures_total",
                "counter",
                "Failed handler runs.",
            ),
            (
                "operator_handler_retries_total",
                "counter",
                "Handler runs that were retries.",
            ),
            (
                "operator_api_requests_total",
                "counter",
                "API requests made by the framework.",
            ),
        ];
        if let Ok(c) = self.counters.lock() {
            for (name, typ, help) in helps {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {typ}");
                for ((n, l), v) in c.iter() {
                    if *n == name {
                        let _ = writeln!(out, "{n}{} {v}", braced(&label_list(l)));
                    }
                }
            }
            let _ = writeln!(
                out,
                "# HELP operator_api_writes_total Write requests made by the framework.\n# TYPE operator_api_writes_total counter\noperator_api_writes_total {}",
                c.get(&("operator_api_writes_total", vec![]))
                    .copied()
                    .unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP operator_handler_duration_seconds Handler run duration.\n# TYPE operator_handler_duration_seconds histogram"
        );
        if let Ok(h) = self.histograms.lock() {
            for (l, h) in h.iter() {
                h.write(
                    &mut out,
                    "operator_handler_duration_seconds",
                    &label_list(l),
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP operator_objects_queued Objects due and waiting for a worker slot.\n# TYPE operator_objects_queued gauge"
        );
        if let Ok(g) = self.gauges.lock() {
            for ((n, l), v) in g.iter() {
                let _ = writeln!(out, "{n}{} {v}", braced(&label_list(l)));
            }
        }
        let _ = writeln!(
            out,
            "# HELP operator_objects_in_flight Objects being processed.\n# TYPE operator_objects_in_flight gauge\noperator_objects_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP operator_is_leader Whether this replica acts.\n# TYPE operator_is_leader gauge\noperator_is_leader {}",
            u8::from(self.is_leader())
        );
        if let Ok(c) = self.collectors.lock() {
            for collect in c.iter() {
                collect(&mut out);
            }
        }
        out
    }
}

/// Whether the labels `l` name the handler `handler`.
fn has_handler(l: &Labels, handler: &str) -> bool {
    l.iter().any(|(k, v)| *k == "handler" && v == handler)
}

/// A label value escaped for the Prometheus text format (backslash, double
/// quote, newline), for collectors that write their own series.
pub fn escape_label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the future is dropped.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: std::sync::Arc<Metrics>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(m) => {
                            n += m;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
                                break;
                            }
                        }
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let (code, ctype, body) = route(path, &metrics);
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

fn route(path: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" | "/livez" => match metrics.health_problems() {
            p if p.is_empty() => ("200 OK", "text/plain", "ok\n".into()),
            p => ("503 Service Unavailable", "text/plain", p.join("\n") + "\n"),
        },
        "/readyz" if metrics.is_ready() => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".into(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_and_without_labels() {
        static BOUNDS: [f64; 3] = [1.0, 2.5, 10.0];
        let mut h = Histogram::new(&BOUNDS);
        for v in [0.5, 2.0, 2.5, 60.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.write(&mut out, "x_seconds", "a=\"b\"");
        h.write(&mut out, "y_seconds", "");
        let expected = "x_seconds_bucket{a=\"b\",le=\"1\"} 1\n\
            x_seconds_bucket{a=\"b\",le=\"2.5\"} 3\n\
            x_seconds_bucket{a=\"b\",le=\"10\"} 3\n\
            x_seconds_bucket{a=\"b\",le=\"+Inf\"} 4\n\
            x_seconds_sum{a=\"b\"} 65\n\
            x_seconds_count{a=\"b\"} 4\n\
            y_seconds_bucket{le=\"1\"} 1\n\
            y_seconds_bucket{le=\"2.5\"} 3\n\
            y_seconds_bucket{le=\"10\"} 3\n\
            y_seconds_bucket{le=\"+Inf\"} 4\n\
            y_seconds_sum 65\n\
            y_seconds_count 4\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn render_and_route() {
        let m = Metrics::default();
        m.handler_run("Foo", "create", false, Duration::from_millis(30));
        m.handler_run("Foo", "create", true, Duration::from_millis(300));
        m.handler_failure("Foo", "create", false);
        m.api_request("patch");
        m.api_request("get");
        m.set_queued("Foo", 3);
        let text = m.render();
        assert!(
            text.contains("operator_handler_runs_total{controller=\"Foo\",handler=\"create\"} 2")
        );
        assert!(
            text.contains(
                "operator_handler_retries_total{controller=\"Foo\",handler=\"create\"} 1"
            )
        );
        assert!(text.contains("operator_handler_duration_seconds_bucket{controller=\"Foo\",handler=\"create\",le=\"0.05\"} 1"));
        assert!(text.contains(
            "operator_handler_duration_seconds_count{controller=\"Foo\",handler=\"create\"} 2"
        ));
        assert!(text.contains("operator_objects_queued{controller=\"Foo\"} 3"));
        assert!(text.contains("operator_api_writes_total 1"));
        assert_eq!(m.handler_runs("create"), 2);
        assert_eq!(m.handler_failures("create"), 1);
        assert_eq!(m.api_requests(), 2);
        assert_eq!(route("/readyz", &m).0, "503 Service Unavailable");
        m.set_ready(true);
        assert_eq!(route("/readyz", &m).0, "200 OK");
        assert_eq!(route("/healthz", &m).0, "200 OK");
        assert_eq!(route("/nope", &m).0, "404 Not Found");
        m.health.set_threshold(Duration::ZERO);
        m.health.started("Foo", false);
        std::thread::sleep(Duration::from_millis(5));
        let (code, _, body) = route("/healthz", &m);
        assert_eq!(code, "503 Service Unavailable");
        assert!(body.contains("watch Foo has not synced"), "{body}");
        assert!(!m.is_healthy());
    }

    #[test]
    fn collectors_append_their_series_on_every_render() {
        let m = Metrics::default();
        let n = std::sync::Arc::new(AtomicI64::new(0));
        let seen = n.clone();
        m.add_collector(move |out| {
            let v = seen.fetch_add(1, Ordering::Relaxed) + 1;
            let _ = writeln!(out, "# TYPE my_gauge gauge\nmy_gauge {v}");
        });
        assert!(m.render().ends_with("my_gauge 1\n"));
        assert!(m.render().ends_with("my_gauge 2\n"));
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
