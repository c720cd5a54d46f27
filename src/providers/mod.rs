//! Providers: from a model name to an upstream route, and the wire dialects.
//!
//! [`resolve`] turns `deepseek/deepseek-chat` (plus the call's `api_base`, `api_key`,
//! `custom_llm_provider`) into a [`Route`]: which dialect, which URL, which key. Each dialect
//! module (`openai`; Anthropic, Azure, Gemini and Bedrock join later) knows how to build its
//! requests and parse its answers, stream events and error bodies, and nothing about routing
//! or retries. Keys are held in [`Secret`], which never prints.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod gemini;
pub mod media;
pub mod openai;
pub mod openai_compat;

use std::fmt;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::streaming::StreamDecoder;
use crate::types::{
    ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse, ImageRequest, ImageResponse,
    SpeechRequest,
};

/// An HTTP request ready to send.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the caller adds to every request: `extra_headers` and `extra_body`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    pub headers: &'a [(String, String)],
    pub body: Option<&'a Map<String, Value>>,
}

/// One wire dialect. Implementations know formats, not routing or retries.
pub trait Provider: Send + Sync + fmt::Debug + 'static {
    /// OpenAI parameters this dialect cannot express. A call that uses one fails with
    /// `unsupported_params`, or has it removed with `drop_params`. Keys that are not OpenAI
    /// parameters are passed to the provider as they are (provider-specific options).
    fn unsupported_params(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether http(s) image URLs in messages must be fetched and sent as bytes (the
    /// pipeline does it with [`media::inline_remote_images`] before `chat_request`, so the
    /// dialect then sees only `data:` URLs).
    fn needs_inline_images(&self) -> bool {
        false
    }

    fn chat_request(
        &self,
        route: &Route,
        req: &ChatRequest,
        stream: bool,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest>;

    fn parse_chat(&self, route: &Route, body: &[u8]) -> Result<ChatCompletion>;

    /// A fresh decoder for one streamed response body.
    fn stream_decoder(&self, route: &Route) -> Box<dyn StreamDecoder>;

    /// Classifies a non-2xx answer.
    fn parse_error(&self, route: &Route, status: u16, headers: &HeaderMap, body: &[u8]) -> Error;

    fn embedding_request(
        &self,
        route: &Route,
        _req: &EmbeddingRequest,
        _x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Err(Error::bad_request(format!(
            "provider '{}' has no embeddings endpoint",
            route.provider
        )))
    }

    fn image_request(
        &self,
        route: &Route,
        _req: &ImageRequest,
        _x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Err(Error::bad_request(format!(
            "provider '{}' has no image generation endpoint in LLMux",
            route.provider
        )))
    }

    fn speech_request(
        &self,
        route: &Route,
        _req: &SpeechRequest,
        _x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Err(Error::bad_request(format!(
            "provider '{}' has no speech endpoint in LLMux",
            route.provider
        )))
    }

    /// Where a transcription goes: the URL and the headers (the pipeline builds the multipart
    /// body itself, streaming the file).
    fn transcription_target(&self, route: &Route, _x: &Extras<'_>) -> Result<(String, HeaderMap)> {
        Err(Error::bad_request(format!(
            "provider '{}' has no transcription endpoint in LLMux",
            route.provider
        )))
    }

    /// Where an image edit goes: the URL and the headers (the body is multipart).
    fn image_edit_target(&self, route: &Route, _x: &Extras<'_>) -> Result<(String, HeaderMap)> {
        Err(Error::bad_request(format!(
            "provider '{}' has no image edit endpoint in LLMux",
            route.provider
        )))
    }

    fn parse_image(&self, route: &Route, _body: &[u8]) -> Result<ImageResponse> {
        Err(Error::bad_request(format!(
            "provider '{}' has no image generation endpoint in LLMux",
            route.provider
        )))
    }

    /// `req` is the request the answer is for (some providers report no usage, or answer in
    /// another encoding than asked).
    fn parse_embedding(
        &self,
        route: &Route,
        _req: &EmbeddingRequest,
        _body: &[u8],
    ) -> Result<EmbeddingResponse> {
        Err(Error::bad_request(format!(
            "provider '{}' has no embeddings endpoint",
            route.provider
        )))
    }
}

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

/// AWS credentials for SigV4 (Bedrock).
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub region: String,
}

/// Where and how one call goes upstream.
#[derive(Debug, Clone)]
pub struct Route {
    /// The dialect that builds requests and reads answers.
    pub dialect: &'static dyn Provider,
    /// The provider prefix (`openai`, `deepseek`, `azure`, ...), reported as `llm_provider`.
    pub provider: &'static str,
    /// Used in error messages: `OpenAIException - ...`.
    pub display: &'static str,
    /// The model (or Azure deployment) sent upstream: the caller's name without the prefix.
    pub model: String,
    /// Base URL without a trailing slash.
    pub api_base: String,
    pub api_key: Option<Secret>,
    pub organization: Option<String>,
    /// Azure's `api-version`.
    pub api_version: Option<String>,
    /// Azure AD bearer token, used when no key is given.
    pub azure_ad_token: Option<Secret>,
    pub aws: Option<AwsCredentials>,
    /// Ask the upstream for a usage chunk at the end of streams.
    pub stream_usage: bool,
}

impl Route {
    /// A route with the common fields; dialect-specific ones start empty.
    pub fn new(
        dialect: &'static dyn Provider,
        provider: &'static str,
        display: &'static str,
        model: &str,
        api_base: String,
    ) -> Self {
        Route {
            dialect,
            provider,
            display,
            model: model.to_owned(),
            api_base: api_base.trim_end_matches('/').to_owned(),
            api_key: None,
            organization: None,
            api_version: None,
            azure_ad_token: None,
            aws: None,
            stream_usage: true,
        }
    }
}

/// What the caller said about where to send the request and with which credentials.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    pub api_base: Option<String>,
    pub api_key: Option<Secret>,
    pub custom_llm_provider: Option<String>,
    pub organization: Option<String>,
    pub api_version: Option<String>,
    pub azure_ad_token: Option<Secret>,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<Secret>,
    pub aws_session_token: Option<Secret>,
    pub aws_region_name: Option<String>,
}

/// Prefixes LiteLLM knows whose native dialect LLMux does not speak yet.
const NATIVE_NOT_YET: &[&str] = &["azure_ai", "vertex_ai", "cohere"];

/// Prefixes with a native dialect module; each has an arm in [`native_route`].
const NATIVE: &[&str] = &["anthropic", "azure", "bedrock", "gemini"];

/// The route of a provider with its own dialect, or `None` for OpenAI-compatible vendors.
fn native_route(prefix: &str, model: &str, ep: &Endpoint) -> Option<Result<Route>> {
    match prefix {
        "anthropic" => Some(anthropic::route(model, ep)),
        "azure" => Some(azure::route(model, ep)),
        "bedrock" => Some(bedrock::route(model, ep)),
        "gemini" => Some(gemini::route(model, ep)),
        _ => None,
    }
}

/// The first of these environment variables that is set and not empty.
pub fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// Resolves `os.environ/NAME` references, as LiteLLM does for keys and bases.
pub fn deref_env(value: &str) -> Result<String> {
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
                if openai_compat::vendor(p).is_some()
                    || NATIVE.contains(&p)
                    || NATIVE_NOT_YET.contains(&p) =>
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
    if let Some(route) = native_route(prefix, upstream_model, ep) {
        return route;
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

    let api_base = base_url(
        prefix,
        ep,
        vendor.base_env,
        vendor.default_base,
        vendor.base_suffix,
    )?;
    let api_key = api_key(ep, vendor.key_env)?;
    if api_key.is_none() && vendor.key_required {
        return Err(missing_key(prefix, model, vendor.key_env));
    }

    let mut route = Route::new(
        &openai::OpenAi,
        vendor.prefix,
        vendor.display,
        upstream_model,
        api_base,
    );
    route.api_key = api_key;
    route.organization = ep.organization.clone().or_else(|| {
        if vendor.prefix == "openai" {
            env_first(&["OPENAI_ORGANIZATION"])
        } else {
            None
        }
    });
    route.stream_usage = vendor.stream_usage;
    Ok(route)
}

/// The base URL: the call's `api_base`, else the first set variable of `env` (with `suffix`
/// appended when missing), else `default`; it must be an http(s) URL.
pub fn base_url(
    prefix: &str,
    ep: &Endpoint,
    env: &[&str],
    default: Option<&str>,
    suffix: Option<&str>,
) -> Result<String> {
    let api_base = match ep.api_base.as_deref() {
        Some(b) => deref_env(b)?,
        None => match env_first(env) {
            Some(b) => with_suffix(&b, suffix),
            None => match default {
                Some(b) => b.to_owned(),
                None => {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!(
                            "provider '{prefix}' has no default endpoint: pass api_base or set {}",
                            env.join(" / ")
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
    Ok(api_base)
}

/// The key: the call's `api_key` (`os.environ/NAME` resolved), else the first set variable.
pub fn api_key(ep: &Endpoint, env: &[&str]) -> Result<Option<Secret>> {
    Ok(match &ep.api_key {
        Some(k) => Some(Secret::new(deref_env(k.expose())?)),
        None => env_first(env).map(Secret::new),
    })
}

/// The error for a provider that needs a key and has none.
pub fn missing_key(prefix: &str, model: &str, env: &[&str]) -> Error {
    Error::new(
        ErrorKind::Authentication,
        format!(
            "no API key for provider '{prefix}': pass api_key or set {}",
            env.join(" / ")
        ),
    )
    .with_context(prefix, model)
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
    fn native_prefixes_route_to_their_dialects() {
        let ep = Endpoint {
            api_key: Some(Secret::new("k")),
            ..Default::default()
        };
        let r = resolve("anthropic/claude-sonnet-4-5", &ep).unwrap();
        assert_eq!(
            (r.provider, r.model.as_str(), r.api_base.as_str()),
            (
                "anthropic",
                "claude-sonnet-4-5",
                "https://api.anthropic.com"
            )
        );
        let r = resolve("gemini/gemini-2.5-flash", &ep).unwrap();
        assert_eq!(r.provider, "gemini");
    }

    #[test]
    fn native_providers_not_built_are_named_not_misrouted() {
        let e = resolve("vertex_ai/gemini-2.5-pro", &ep_key()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidConfig);
        assert!(e.message.contains("vertex_ai"));
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
