//! Every log line a handler writes carries the object it is about: the
//! framework opens a span `object` (kind, key) around a processing cycle and a
//! span `handler` (id, cause, retry) around each handler run.
//!
//! This file is its own test binary because it installs a *global* tracing
//! subscriber (a thread-local default would not see the operator's tasks on
//! the runtime's worker threads). It captures the JSON log output in memory
//! and checks the span context of the lines the handlers wrote. Runs against
//! the real API server like `tests/integration.rs`.

mod common;

use common::*;
use kube::api::{Api, DeleteParams};
use operator_framework::{Context, Handler, WatchEventType};
use serde_json::Value;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// Where the captured log output goes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("capture buffer poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Capture {
    /// Every captured line, parsed as JSON (lines that are not JSON are kept
    /// as strings so a failure message shows them).
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.to_string())))
            .collect()
    }
}

/// Installs the capturing global subscriber once (before `common::client`,
/// whose own `try_init` then leaves it in place).
fn capture() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let cap = Capture::default();
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .with_span_list(true)
                .with_writer(cap.clone());
            let subscriber = tracing_subscriber::registry()
                .with(tracing_subscriber::EnvFilter::new("info,kube=warn"))
                .with(layer);
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber is installed in this test binary");
            cap
        })
        .clone()
}

fn message(line: &Value) -> Option<&str> {
    line.pointer("/fields/message")?.as_str()
}

/// The `spans` list of a line (outermost first), as (name, fields) pairs.
fn spans(line: &Value) -> Vec<(String, &serde_json::Map<String, Value>)> {
    line.get("spans")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let m = s.as_object()?;
                    Some((m.get("name")?.as_str()?.to_string(), m))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn field<'a>(m: &'a serde_json::Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

/// Asserts that `line` is inside `object{kind=FwTest, key}` and, within it,
/// `handler{id, cause}`.
fn assert_in_spans(line: &Value, key: &str, id: &str, cause: &str) {
    let s = spans(line);
    let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["object", "handler"],
        "a handler's line sits in object > handler: {line}"
    );
    let (_, object) = &s[0];
    let (_, handler) = &s[1];
    assert_eq!(field(object, "kind"), Some("FwTest"), "{line}");
    assert_eq!(field(object, "key"), Some(key), "{line}");
    assert_eq!(field(handler, "id"), Some(id), "{line}");
    assert_eq!(field(handler, "cause"), Some(cause), "{line}");
    assert!(handler.contains_key("retry"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_handler_log_line_carries_the_object_key_and_handler_id() {
    let cap = capture();
    let Some(client) = client("every_handler_log_line_carries_the_object_key_and_handler_id").await
    else {
        return;
    };
    let ns = namespace(&client, "logspans").await;

    // Each handler logs a line naming itself and the object it was given, so
    // the test can tell which object's span the line must sit in.
    let create_handler = Handler::on_create("log-create", |ctx: Context<FwTest>| async move {
        tracing::info!("logspan-marker create {}", ctx.name());
        Ok(())
    });
    let timer = Handler::on_timer(
        "log-timer",
        Duration::from_millis(300),
        Duration::from_millis(100),
        |ctx: Context<FwTest>| async move {
            tracing::warn!("logspan-marker timer {}", ctx.name());
            Ok(())
        },
    );
    let event = Handler::on_event("log-event", |ctx: Context<FwTest>| async move {
        let what = match ctx.watch_event {
            Some(WatchEventType::Deleted) => "deleted",
            _ => "applied",
        };
        tracing::info!("logspan-marker event-{what} {}", ctx.name());
        Ok(())
    });
    let delete = Handler::on_delete("log-delete", |ctx: Context<FwTest>| async move {
        tracing::info!("logspan-marker delete {}", ctx.name());
        Ok(())
    });
    let running = start(operator(
        &client,
        controller(&client, &ns)
            .handler(create_handler)
            .handler(timer)
            .handler(event)
            .handler(delete),
    ));

    // Two objects handled at the same time: each line must carry its own key.
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    for name in ["alpha", "beta"] {
        create(&api, &obj(name, "v")).await;
    }
    let marker_seen = |what: String| {
        let cap = cap.clone();
        move || {
            let found = cap
                .lines()
                .iter()
                .any(|l| message(l) == Some(what.as_str()));
            async move { found.then_some(()) }
        }
    };
    for name in ["alpha", "beta"] {
        for what in ["create", "timer", "event-applied"] {
            let m = format!("logspan-marker {what} {name}");
            eventually(Duration::from_secs(20), &m, marker_seen(m.clone())).await;
        }
    }
    for name in ["alpha", "beta"] {
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete a test object");
    }
    for name in ["alpha", "beta"] {
        for what in ["delete", "event-deleted"] {
            let m = format!("logspan-marker {what} {name}");
            eventually(Duration::from_secs(20), &m, marker_seen(m.clone())).await;
        }
    }
    running.stop().await;

    let lines = cap.lines();
    let expected = [
        ("create", "log-create", "create"),
        ("timer", "log-timer", "timer"),
        ("event-applied", "log-event", "event"),
        ("delete", "log-delete", "delete"),
        ("event-deleted", "log-event", "event"),
    ];
    for name in ["alpha", "beta"] {
        let key = format!("{ns}/{name}");
        for (what, id, cause) in expected {
            let m = format!("logspan-marker {what} {name}");
            let mine: Vec<&Value> = lines
                .iter()
                .filter(|l| message(l) == Some(m.as_str()))
                .collect();
            assert!(!mine.is_empty(), "no line `{m}` captured");
            for line in mine {
                assert_in_spans(line, &key, id, cause);
            }
        }
    }
    // The framework's own per-run line is inside the same spans.
    let succeeded: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            message(l) == Some("handler succeeded")
                && spans(l).first().and_then(|(_, m)| field(m, "key"))
                    == Some(format!("{ns}/alpha").as_str())
        })
        .collect();
    assert!(
        succeeded.iter().any(|l| spans(l)
            .get(1)
            .is_some_and(|(n, m)| n == "handler" && field(m, "id") == Some("log-create"))),
        "`handler succeeded` for alpha's create handler inside its spans: {succeeded:?}"
    );
    cleanup(&client, &ns).await;
}
