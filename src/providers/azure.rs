//! Azure OpenAI: the OpenAI wire format at
//! `{api_base}/openai/deployments/{deployment}/chat/completions?api-version=...`, with the key
//! in an `api-key` header or an Azure AD token as a bearer. The error dialect is OpenAI's, with
//! Azure's additions (handled in `openai::parse_error`): `code: content_filter` with
//! `innererror` is a content policy violation, `DeploymentNotFound` is not found; a 200 whose
//! `finish_reason` is `content_filter` is passed through as it is.

use reqwest::header::{HeaderMap, AUTHORIZATION};

use super::openai::{self, apply_extra_headers, json_headers, sensitive, SseDecoder};
use super::{
    api_key, base_url, env_first, Endpoint, Extras, PreparedRequest, Provider, Route, Secret,
};
use crate::error::{Error, ErrorKind, Result};
use crate::streaming::StreamDecoder;
use crate::types::{
    ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse, ImageRequest, ImageResponse,
    SpeechRequest,
};

/// Used when neither the call nor `AZURE_API_VERSION` names one (a GA version).
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

const KEY_ENV: &[&str] = &["AZURE_OPENAI_API_KEY", "AZURE_API_KEY"];

#[derive(Debug)]
pub struct Azure;

/// The route for `azure/<deployment>`.
pub fn route(deployment: &str, ep: &Endpoint) -> Result<Route> {
    let base = base_url(
        "azure",
        ep,
        &["AZURE_API_BASE", "AZURE_OPENAI_ENDPOINT"],
        None,
        None,
    )?;
    let mut r = Route::new(&Azure, "azure", "Azure", deployment, base);
    r.api_key = api_key(ep, KEY_ENV)?;
    r.azure_ad_token = match &ep.azure_ad_token {
        Some(t) => Some(t.clone()),
        None => env_first(&["AZURE_AD_TOKEN"]).map(Secret::new),
    };
    if r.api_key.is_none() && r.azure_ad_token.is_none() {
        return Err(Error::new(
            ErrorKind::Authentication,
            "no credentials for provider 'azure': pass api_key or azure_ad_token, or set \
             AZURE_OPENAI_API_KEY / AZURE_API_KEY / AZURE_AD_TOKEN",
        )
        .with_context("azure", deployment));
    }
    r.api_version = Some(
        ep.api_version
            .clone()
            .or_else(|| env_first(&["AZURE_API_VERSION", "OPENAI_API_VERSION"]))
            .unwrap_or_else(|| DEFAULT_API_VERSION.to_owned()),
    );
    // Azure honours stream_options.include_usage on current API versions.
    r.stream_usage = true;
    Ok(r)
}

fn url(route: &Route, op: &str) -> String {
    // A base that already points at a deployment (`.../openai/deployments/x`) is used as is.
    let base = &route.api_base;
    let version = route.api_version.as_deref().unwrap_or(DEFAULT_API_VERSION);
    if base.contains("/openai/deployments/") {
        format!("{base}/{op}?api-version={version}")
    } else {
        format!(
            "{base}/openai/deployments/{}/{op}?api-version={version}",
            route.model
        )
    }
}

fn headers(route: &Route, extra: &[(String, String)]) -> Result<HeaderMap> {
    let mut h = json_headers();
    match (&route.api_key, &route.azure_ad_token) {
        (Some(key), _) => {
            h.insert("api-key", sensitive(key.expose())?);
        }
        (None, Some(token)) => {
            h.insert(
                AUTHORIZATION,
                sensitive(&format!("Bearer {}", token.expose()))?,
            );
        }
        (None, None) => {}
    }
    apply_extra_headers(&mut h, extra)?;
    Ok(h)
}

impl Provider for Azure {
    fn chat_request(
        &self,
        route: &Route,
        req: &ChatRequest,
        stream: bool,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Ok(PreparedRequest {
            url: url(route, "chat/completions"),
            headers: headers(route, x.headers)?,
            body: openai::chat_body(route, req, stream, x.body)?,
        })
    }

    fn parse_chat(&self, route: &Route, body: &[u8]) -> Result<ChatCompletion> {
        openai::parse_chat(route, body)
    }

    fn stream_decoder(&self, route: &Route) -> Box<dyn StreamDecoder> {
        Box::new(SseDecoder::new(route.clone()))
    }

    fn parse_error(&self, route: &Route, status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
        openai::parse_error(route, status, headers, body)
    }

    fn embedding_request(
        &self,
        route: &Route,
        req: &EmbeddingRequest,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Ok(PreparedRequest {
            url: url(route, "embeddings"),
            headers: headers(route, x.headers)?,
            body: openai::embedding_body(route, req, x.body)?,
        })
    }

    fn image_request(
        &self,
        route: &Route,
        req: &ImageRequest,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Ok(PreparedRequest {
            url: url(route, "images/generations"),
            headers: headers(route, x.headers)?,
            body: openai::image_body(route, req, x.body)?,
        })
    }

    fn parse_image(&self, route: &Route, body: &[u8]) -> Result<ImageResponse> {
        openai::parse_image(route, body)
    }

    fn image_edit_target(&self, route: &Route, x: &Extras<'_>) -> Result<(String, HeaderMap)> {
        Ok((url(route, "images/edits"), headers(route, x.headers)?))
    }

    fn transcription_target(&self, route: &Route, x: &Extras<'_>) -> Result<(String, HeaderMap)> {
        Ok((
            url(route, "audio/transcriptions"),
            headers(route, x.headers)?,
        ))
    }

    fn speech_request(
        &self,
        route: &Route,
        req: &SpeechRequest,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Ok(PreparedRequest {
            url: url(route, "audio/speech"),
            headers: headers(route, x.headers)?,
            body: openai::speech_body(route, req, x.body)?,
        })
    }

    fn parse_embedding(
        &self,
        route: &Route,
        _req: &EmbeddingRequest,
        body: &[u8],
    ) -> Result<EmbeddingResponse> {
        openai::parse_embedding(route, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint {
            api_base: Some("https://res.openai.azure.com/".into()),
            api_key: Some(Secret::new("azure-key-123")),
            ..Default::default()
        }
    }

    #[test]
    fn url_and_key_header() {
        let r = route("gpt4o-eu", &ep()).unwrap();
        let p = Azure
            .chat_request(
                &r,
                &ChatRequest::new("azure/gpt4o-eu", vec![]),
                false,
                &Extras::default(),
            )
            .unwrap();
        assert_eq!(
            p.url,
            format!("https://res.openai.azure.com/openai/deployments/gpt4o-eu/chat/completions?api-version={DEFAULT_API_VERSION}")
        );
        assert_eq!(p.headers.get("api-key").unwrap(), "azure-key-123");
        assert!(p.headers.get(AUTHORIZATION).is_none());
    }

    #[test]
    fn ad_token_and_version() {
        let e = Endpoint {
            api_key: None,
            azure_ad_token: Some(Secret::new("ad-token")),
            api_version: Some("2025-01-01-preview".into()),
            ..ep()
        };
        let r = route("dep", &e).unwrap();
        let p = Azure
            .embedding_request(
                &r,
                &EmbeddingRequest {
                    model: "azure/dep".into(),
                    ..Default::default()
                },
                &Extras::default(),
            )
            .unwrap();
        assert!(p
            .url
            .ends_with("/openai/deployments/dep/embeddings?api-version=2025-01-01-preview"));
        assert_eq!(p.headers.get(AUTHORIZATION).unwrap(), "Bearer ad-token");
    }

    #[test]
    fn content_filter_and_deployment_not_found() {
        let r = route("dep", &ep()).unwrap();
        let body = br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":true,"severity":"high"}}}}}"#;
        let e = Azure.parse_error(&r, 400, &HeaderMap::new(), body);
        assert_eq!(e.kind, ErrorKind::ContentPolicyViolation);
        assert!(e.message.starts_with("AzureException - "));
        let body = br#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#;
        assert_eq!(
            Azure.parse_error(&r, 404, &HeaderMap::new(), body).kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn missing_credentials_name_the_variables() {
        let e = route(
            "dep",
            &Endpoint {
                api_base: Some("https://x".into()),
                ..Default::default()
            },
        );
        if std::env::var("AZURE_API_KEY").is_err() && std::env::var("AZURE_OPENAI_API_KEY").is_err()
        {
            let e = e.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Authentication);
            assert!(e.message.contains("AZURE_API_KEY"));
        }
    }
}
