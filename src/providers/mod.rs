//! Providers: from a model name to an upstream route, and the wire dialects.
//!
//! [`resolve`] turns `deepseek/deepseek-chat` (plus the call's `api_base`, `api_key`,
//! `custom_llm_provider`) into a [`Route`]: which dialect, which URL, which key. Each dialect
//! module (`openai`; Anthropic, Azure, Gemini and Bedrock join later) knows how to build its
//! requests and parse its answers, stream events and error bodies, and nothing about routing
//! or retries. Keys are held in [`Secret`], which never prints.

pub mod openai;
pub mod openai_compat;

use std::fmt;

use crate::error::{Error, ErrorKind, Result};

/// A credential. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The wire format a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's Chat Completions and Embeddings API, and every vendor that copies it.
    OpenAi,
}

/// Where and how one call goes upstream.
#[derive(Debug, Clone)]
pub struct Route {
    pub dialect: Dialect,
    /// The provider prefix (`openai`, `deepseek`, ...), reported as `llm_provider`.
    pub provider: &'static str,
    /// Used in error messages: `OpenAIException - ...`.
    pub display: &'static str,
    /// The model name sent upstream (the caller's name without the provider prefix).
    pub model: String,
    /// Base URL without a trailing slash.
    pub api_base: String,
    pub api_key: Option<Secret>,
    pub organization: Option<String>,
    /// Ask the upstream for a usage chunk at the end of streams.
    pub stream_usage: bool,
}

/// What the caller said about where to send the request.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    pub api_base: Option<String>,
    pub api_key: Option<Secret>,
    pub custom_llm_provider: Option<String>,
    pub organization: Option<String>,
}

/// Prefixes LiteLLM knows whose native dialect LLMux does not speak yet.
const NATIVE_NOT_YET: &[&str] = &[
    "anthropic",
    "azure",
    "azure_ai",
    "gemini",
    "vertex_ai",
    "bedrock",
    "cohere",
];

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// Resolves `os.environ/NAME` references, as LiteLLM does for keys and bases.
fn deref_env(value: &str) -> Result<String> {
    match value.strip_prefix("os.environ/") {
        Some(name) => std::env::var(name).map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("environment variable {name} is referenced but not set"),
            )
        }),
        None => Ok(value.to_owned()),
    }
}

/// Chooses the provider, the upstream model name, the base URL and the key.
///
/// Order (LiteLLM's): an explicit `custom_llm_provider`; else a known prefix before the first
/// `/`; else a bare name (no `/`) goes to OpenAI. Keys: the call's, else the vendor's variables.
pub fn resolve(model: &str, ep: &Endpoint) -> Result<Route> {
    let (prefix, upstream_model) = match ep.custom_llm_provider.as_deref() {
        Some(p) => (
            p,
            model
                .strip_prefix(p)
                .and_then(|m| m.strip_prefix('/'))
                .unwrap_or(model),
        ),
        None => match model.split_once('/') {
            Some((p, rest))
                if openai_compat::vendor(p).is_some() || NATIVE_NOT_YET.contains(&p) =>
            {
                (p, rest)
            }
            Some(_) if ep.api_base.is_some() => ("openai_like", model),
            Some((p, _)) => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "LLM Provider NOT provided: unknown provider prefix '{p}' in model '{model}'. \
                         Pass the model as '<provider>/<model>' with a known provider, or give \
                         custom_llm_provider / api_base."
                    ),
                ));
            }
            None => ("openai", model),
        },
    };
    if upstream_model.is_empty() {
        return Err(Error::bad_request(format!(
            "model name is empty in '{model}'"
        )));
    }
    let vendor = match openai_compat::vendor(prefix) {
        Some(v) => v,
        None if NATIVE_NOT_YET.contains(&prefix) => {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "provider '{prefix}' needs its native dialect, which this build does not \
                     include; use an OpenAI-compatible endpoint with 'openai_like/' and api_base"
                ),
            ));
        }
        None => {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("unknown custom_llm_provider '{prefix}'"),
            ));
        }
    };

    let api_base = match ep.api_base.as_deref() {
        Some(b) => deref_env(b)?,
        None => match env_first(vendor.base_env) {
            Some(b) => with_suffix(&b, vendor.base_suffix),
            None => match vendor.default_base {
                Some(b) => b.to_owned(),
                None => {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!(
                            "provider '{prefix}' has no default endpoint: pass api_base or set {}",
                            vendor.base_env.join(" / ")
                        ),
                    ));
                }
            },
        },
    };
    let api_base = api_base.trim_end_matches('/').to_owned();
    if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("api_base must be an http(s) URL, got '{api_base}'"),
        ));
    }

    let api_key = match &ep.api_key {
        Some(k) => Some(Secret::new(deref_env(k.expose())?)),
        None => env_first(vendor.key_env).map(Secret::new),
    };
    if api_key.is_none() && vendor.key_required {
        return Err(Error::new(
            ErrorKind::Authentication,
            format!(
                "no API key for provider '{prefix}': pass api_key or set {}",
                vendor.key_env.join(" / ")
            ),
        )
        .with_context(prefix, model));
    }

    Ok(Route {
        dialect: Dialect::OpenAi,
        provider: vendor.prefix,
        display: vendor.display,
        model: upstream_model.to_owned(),
        api_base,
        api_key,
        organization: ep.organization.clone().or_else(|| {
            if vendor.prefix == "openai" {
                env_first(&["OPENAI_ORGANIZATION"])
            } else {
                None
            }
        }),
        stream_usage: vendor.stream_usage,
    })
}

fn with_suffix(base: &str, suffix: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    match suffix {
        Some(s) if !base.ends_with(s) => format!("{base}{s}"),
        _ => base.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep_key() -> Endpoint {
        Endpoint {
            api_key: Some(Secret::new("sk-test")),
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_and_bare_names() {
        let r = resolve("gpt-4o-mini", &ep_key()).unwrap();
        assert_eq!((r.provider, r.model.as_str()), ("openai", "gpt-4o-mini"));
        assert_eq!(r.api_base, "https://api.openai.com/v1");
        let r = resolve("deepseek/deepseek-chat", &ep_key()).unwrap();
        assert_eq!(
            (r.provider, r.model.as_str()),
            ("deepseek", "deepseek-chat")
        );
        let r = resolve("openai/meta-llama/Llama-3", &ep_key()).unwrap();
        assert_eq!(r.model, "meta-llama/Llama-3");
        let r = resolve("groq/llama-3.1-8b", &ep_key()).unwrap();
        assert_eq!(r.api_base, "https://api.groq.com/openai/v1");
    }

    #[test]
    fn unknown_prefix_is_invalid_config_unless_api_base() {
        let e = resolve("nosuch/model", &ep_key()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidConfig);
        let ep = Endpoint {
            api_base: Some("http://127.0.0.1:9/v1/".into()),
            ..ep_key()
        };
        let r = resolve("nosuch/model", &ep).unwrap();
        assert_eq!(
            (r.provider, r.model.as_str()),
            ("openai_like", "nosuch/model")
        );
        assert_eq!(r.api_base, "http://127.0.0.1:9/v1");
    }

    #[test]
    fn hosted_vllm_needs_a_base_and_no_key() {
        let e = resolve("hosted_vllm/m", &Endpoint::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidConfig);
        let ep = Endpoint {
            api_base: Some("http://h:8000/v1".into()),
            ..Default::default()
        };
        let r = resolve("hosted_vllm/m", &ep).unwrap();
        assert!(r.api_key.is_none());
    }

    #[test]
    fn custom_provider_and_bad_base() {
        let ep = Endpoint {
            custom_llm_provider: Some("groq".into()),
            ..ep_key()
        };
        let r = resolve("llama3", &ep).unwrap();
        assert_eq!((r.provider, r.model.as_str()), ("groq", "llama3"));
        let ep = Endpoint {
            api_base: Some("ftp://x".into()),
            ..ep_key()
        };
        assert_eq!(
            resolve("gpt-4o", &ep).unwrap_err().kind,
            ErrorKind::InvalidConfig
        );
    }

    #[test]
    fn native_providers_are_named_not_misrouted() {
        let e = resolve("anthropic/claude-sonnet-4-5", &ep_key()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidConfig);
        assert!(e.message.contains("anthropic"));
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-very-secret");
        assert!(!format!("{s:?} {s}").contains("very"));
        let r = resolve(
            "gpt-4o",
            &Endpoint {
                api_key: Some(s),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!format!("{r:?}").contains("very"));
    }
}
