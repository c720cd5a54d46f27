//! OTLP/HTTP export of the engine's spans (target [`OTEL_TARGET`]) to an OpenTelemetry
//! collector, JSON-encoded (`POST {endpoint}/v1/traces`, `Content-Type: application/json`).
//!
//! [`OtlpLayer`] is a `tracing` layer: it gives each span a trace and span id (joining the
//! parent span's trace, or a client's W3C `traceparent`), collects its fields as attributes,
//! and on close hands the finished span to a bounded queue without blocking. An exporter task
//! sends batches (up to [`MAX_BATCH`] spans, at least every `export_interval`); when the
//! collector is slow or down, spans beyond the queue are dropped and counted, never waited on.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::{OtlpConfig, OTEL_TARGET};

/// Spans sent in one request at most.
pub const MAX_BATCH: usize = 512;
/// Finished spans waiting for export at most.
const QUEUE: usize = 8192;

/// A finished span.
#[derive(Debug, Clone)]
struct SpanData {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: String,
    kind: u8,
    start: SystemTime,
    end: SystemTime,
    attrs: Vec<(&'static str, Value)>,
    error: Option<String>,
}

/// What a live span carries in its extensions.
#[derive(Debug)]
struct Live(SpanData);

#[derive(Default)]
struct Fields<'a> {
    attrs: Option<&'a mut Vec<(&'static str, Value)>>,
}

impl Fields<'_> {
    fn put(&mut self, name: &'static str, v: Value) {
        if let Some(a) = self.attrs.as_deref_mut() {
            match a.iter_mut().find(|(k, _)| *k == name) {
                Some(slot) => slot.1 = v,
                None => a.push((name, v)),
            }
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f.name(), Value::from(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f.name(), Value::from(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f.name(), Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f.name(), Value::from(v));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.put(f.name(), Value::from(v));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.put(f.name(), Value::from(format!("{v:?}")));
    }
}

/// A W3C `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
pub fn parse_traceparent(s: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = s.trim().split('-');
    let (ver, trace, parent, _flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if ver.len() != 2 || trace.len() != 32 || parent.len() != 16 {
        return None;
    }
    let mut t = [0u8; 16];
    let mut p = [0u8; 8];
    for (i, b) in t.iter_mut().enumerate() {
        *b = u8::from_str_radix(trace.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    for (i, b) in p.iter_mut().enumerate() {
        *b = u8::from_str_radix(parent.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    (t != [0; 16] && p != [0; 8]).then_some((t, p))
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// Counters of the exporter.
#[derive(Debug, Default)]
pub struct OtlpStats {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed_batches: AtomicU64,
}

/// The `tracing` layer that turns [`OTEL_TARGET`] spans into OTLP spans.
pub struct OtlpLayer {
    tx: mpsc::Sender<SpanData>,
    stats: Arc<OtlpStats>,
}

impl OtlpLayer {
    /// Starts the exporter task on the current runtime; returns the layer feeding it.
    pub fn start(cfg: OtlpConfig) -> (Self, Arc<OtlpStats>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(OtlpStats::default());
        tokio::spawn(export(cfg, rx, stats.clone()));
        (
            OtlpLayer {
                tx,
                stats: stats.clone(),
            },
            stats,
        )
    }

    /// Whether a span is one of ours.
    pub fn wants(meta: &tracing::Metadata<'_>) -> bool {
        meta.target() == OTEL_TARGET
    }
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span.parent().and_then(|p| {
            p.extensions()
                .get::<Live>()
                .map(|l| (l.0.trace_id, l.0.span_id))
        });
        let (trace_id, parent) = match parent {
            Some((t, p)) => (t, Some(p)),
            None => (rand::random(), None),
        };
        let mut data = SpanData {
            trace_id,
            span_id: rand::random(),
            parent,
            name: attrs.metadata().name().to_owned(),
            kind: 1,
            start: SystemTime::now(),
            end: SystemTime::now(),
            attrs: Vec::new(),
            error: None,
        };
        attrs.record(&mut Fields {
            attrs: Some(&mut data.attrs),
        });
        apply_conventions(&mut data);
        span.extensions_mut().insert(Live(data));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(live) = ext.get_mut::<Live>() {
            values.record(&mut Fields {
                attrs: Some(&mut live.0.attrs),
            });
            apply_conventions(&mut live.0);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(Live(mut data)) = span.extensions_mut().remove::<Live>() else {
            return;
        };
        data.end = SystemTime::now();
        if self.tx.try_send(data).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads the convention fields (`otel.name`, `otel.kind`, `traceparent`, `error.type`) out of
/// the attributes into the span itself.
fn apply_conventions(d: &mut SpanData) {
    let mut keep = Vec::with_capacity(d.attrs.len());
    for (k, v) in d.attrs.drain(..) {
        match k {
            "otel.name" => {
                if let Some(s) = v.as_str() {
                    d.name = s.to_owned();
                }
            }
            "otel.kind" => {
                d.kind = match v.as_str() {
                    Some("server") => 2,
                    Some("client") => 3,
                    _ => 1,
                }
            }
            "traceparent" => {
                if d.parent.is_none() {
                    if let Some((t, p)) = v.as_str().and_then(parse_traceparent) {
                        d.trace_id = t;
                        d.parent = Some(p);
                    }
                }
            }
            _ => {
                if k == "error.type" {
                    d.error = v.as_str().map(str::to_owned);
                }
                keep.push((k, v));
            }
        }
    }
    d.attrs = keep;
}

fn attr_value(v: &Value) -> Value {
    match v {
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n.as_f64()}),
        Value::String(s) => json!({"stringValue": s}),
        other => json!({"stringValue": other.to_string()}),
    }
}

fn span_json(d: &SpanData) -> Value {
    let mut m = Map::new();
    m.insert("traceId".into(), hex(&d.trace_id).into());
    m.insert("spanId".into(), hex(&d.span_id).into());
    if let Some(p) = d.parent {
        m.insert("parentSpanId".into(), hex(&p).into());
    }
    m.insert("name".into(), d.name.clone().into());
    m.insert("kind".into(), d.kind.into());
    m.insert("startTimeUnixNano".into(), nanos(d.start).into());
    m.insert("endTimeUnixNano".into(), nanos(d.end).into());
    m.insert(
        "attributes".into(),
        d.attrs
            .iter()
            .map(|(k, v)| json!({"key": k, "value": attr_value(v)}))
            .collect::<Vec<_>>()
            .into(),
    );
    m.insert(
        "status".into(),
        match &d.error {
            Some(e) => json!({"code": 2, "message": e}),
            None => json!({"code": 0}),
        },
    );
    Value::Object(m)
}

fn batch_json(cfg: &OtlpConfig, spans: &[SpanData]) -> Value {
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": cfg.service_name}},
                {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "llmux", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans.iter().map(span_json).collect::<Vec<_>>(),
            }],
        }]
    })
}

async fn export(cfg: OtlpConfig, mut rx: mpsc::Receiver<SpanData>, stats: Arc<OtlpStats>) {
    let url = cfg.traces_url();
    let client = match crate::http::client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e.message, "OTLP export disabled: no HTTP client");
            return;
        }
    };
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::time::timeout(cfg.export_interval, rx.recv()).await;
        match first {
            Ok(Some(s)) => batch.push(s),
            Ok(None) => break,
            Err(_) => {}
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        // Let a partial batch fill for up to one interval before sending.
        if batch.len() < MAX_BATCH {
            let deadline = tokio::time::Instant::now() + cfg.export_interval;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    _ => break,
                }
            }
        }
        let body = batch_json(&cfg, &batch);
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(10))
            .body(serde_json::to_vec(&body).unwrap_or_default());
        for (k, v) in &cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                stats
                    .exported
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Ok(r) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    status = r.status().as_u16(),
                    spans = batch.len(),
                    "OTLP export refused by the collector"
                );
            }
            Err(e) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, spans = batch.len(), "OTLP export failed");
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_only_when_well_formed() {
        let (t, p) =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(hex(&t), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&p), "b7ad6b7169203331");
        assert!(
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01").is_none()
        );
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let mut d = SpanData {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: None,
            name: "llmux.request".into(),
            kind: 1,
            start: UNIX_EPOCH,
            end: UNIX_EPOCH + Duration::from_millis(5),
            attrs: vec![
                ("otel.name", json!("chat gpt-4o")),
                ("otel.kind", json!("server")),
                ("gen_ai.usage.input_tokens", json!(4)),
                ("error.type", json!("timeout")),
            ],
            error: None,
        };
        apply_conventions(&mut d);
        let j = span_json(&d);
        assert_eq!(j["name"], "chat gpt-4o");
        assert_eq!(j["kind"], 2);
        assert_eq!(j["endTimeUnixNano"], "5000000");
        assert_eq!(j["status"]["code"], 2);
        assert_eq!(
            j["attributes"][0],
            json!({"key": "gen_ai.usage.input_tokens", "value": {"intValue": "4"}})
        );
    }
}
