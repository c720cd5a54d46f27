//! Telemetry: the names the engine's trace spans use, and (feature `server`) their export to
//! an OpenTelemetry collector over OTLP ([`otlp`]).
//!
//! The engine marks the spans meant for export with the target [`OTEL_TARGET`]: the gateway's
//! request span (`otel.kind = server`) and the router's span per upstream attempt
//! (`otel.kind = client`), with OpenTelemetry's `gen_ai.*` attributes. Nothing subscribes to
//! them unless an exporter is configured, so they cost a disabled callsite check otherwise.
//! Field conventions read by the exporter: `otel.name` (the span name), `otel.kind`,
//! `traceparent` (a W3C parent from the client), `error.type` (marks the span as failed).

#[cfg(feature = "server")]
pub mod otlp;

use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};

/// The `tracing` target of spans exported to OpenTelemetry.
pub const OTEL_TARGET: &str = "llmux::otel";

/// The `gen_ai.system` of a `provider/model` name (no prefix: OpenAI).
pub fn gen_ai_system(model: &str) -> &str {
    model.split_once('/').map_or("openai", |(p, _)| p)
}

/// The `telemetry` config block. Its `Debug` shows header names only (they may carry a
/// collector's credentials).
#[derive(Clone, PartialEq)]
pub struct OtlpConfig {
    /// The collector's base URL (`http://host:4318`) or its full traces URL.
    pub endpoint: String,
    pub service_name: String,
    /// Extra request headers (authentication for hosted collectors).
    pub headers: Vec<(String, String)>,
    pub export_interval: Duration,
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field("service_name", &self.service_name)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("export_interval", &self.export_interval)
            .finish()
    }
}

impl OtlpConfig {
    pub const KEYS: [&'static str; 4] = [
        "otlp_endpoint",
        "service_name",
        "headers",
        "export_interval",
    ];

    pub fn from_json(v: &Value) -> Result<Self> {
        let bad = |m: String| Error::invalid_config(m);
        let m = v
            .as_object()
            .ok_or_else(|| bad("telemetry must be a mapping".into()))?;
        for k in m.keys() {
            if !Self::KEYS.contains(&k.as_str()) {
                return Err(bad(format!(
                    "telemetry.{k}: unknown key (known: {})",
                    Self::KEYS.join(", ")
                )));
            }
        }
        let endpoint = m
            .get("otlp_endpoint")
            .and_then(Value::as_str)
            .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
            .ok_or_else(|| {
                bad("telemetry.otlp_endpoint is required: the collector's http(s) URL (e.g. http://127.0.0.1:4318)".into())
            })?
            .trim_end_matches('/')
            .to_owned();
        let service_name = match m.get("service_name") {
            None | Some(Value::Null) => "llmux".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(bad("telemetry.service_name must be a string".into())),
        };
        let headers = match m.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(h)) => h
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_owned()))
                        .ok_or_else(|| bad(format!("telemetry.headers.{k} must be a string")))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("telemetry.headers must be a mapping".into())),
        };
        let export_interval = match m.get("export_interval") {
            None | Some(Value::Null) => Duration::from_secs(1),
            Some(v) => crate::config::secs(v, "telemetry.export_interval")?,
        };
        Ok(OtlpConfig {
            endpoint,
            service_name,
            headers,
            export_interval,
        })
    }

    pub fn traces_url(&self) -> String {
        if self.endpoint.ends_with("/v1/traces") {
            self.endpoint.clone()
        } else {
            format!("{}/v1/traces", self.endpoint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_requires_an_endpoint_and_rejects_unknown_keys() {
        assert!(OtlpConfig::from_json(&json!({})).is_err());
        let e = OtlpConfig::from_json(&json!({"otlp_endpoint": "http://x:4318", "sampler": 1}))
            .unwrap_err();
        assert!(e.message.contains("telemetry.sampler"));
        let c = OtlpConfig::from_json(&json!({"otlp_endpoint": "http://x:4318/"})).unwrap();
        assert_eq!(c.traces_url(), "http://x:4318/v1/traces");
    }
}
