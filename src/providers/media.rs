//! Images inside chat messages, for dialects that need the bytes.
//!
//! OpenAI-style `image_url` parts carry either a `data:` URL or an http(s) URL. Providers that
//! cannot fetch URLs themselves (Gemini's inline data, Bedrock's image bytes) get the image
//! fetched by us first ([`inline_remote_images`]), with a size limit and a timeout; a failure is
//! a `bad_request` error that names the URL, never a hang. Dialect modules then read every
//! image with [`image_parts`] / [`parse_data_url`].
//!
//! A server (the gateway) turns on [`block_private_networks`]: URLs whose host resolves to a
//! loopback, private, link-local or unspecified address are refused, redirects are not followed,
//! and a request may carry at most [`MAX_REMOTE_IMAGES`] URLs, so that callers cannot make it
//! reach inside its network.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use futures_util::future::join_all;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::http::{client, fetch_client};

/// Image URLs fetched for one request at most (when private networks are blocked).
pub const MAX_REMOTE_IMAGES: usize = 16;

static BLOCK_PRIVATE: AtomicBool = AtomicBool::new(false);

/// Refuses image URLs on private or local networks from now on (a server's setting).
pub fn block_private_networks(on: bool) {
    BLOCK_PRIVATE.store(on, Ordering::Relaxed);
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_private()
                || v.is_loopback()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v) => {
            let s0 = v.segments()[0];
            v.is_loopback()
                || v.is_unspecified()
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped()
                    .is_some_and(|m| is_private(IpAddr::V4(m)))
        }
    }
}

/// Checks that every address `url`'s host resolves to is public.
async fn check_public(url: &str) -> std::result::Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let host = u.host_str().ok_or("the URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = u.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| is_private(a.ip())) {
        return Err("its address is on a private or local network".into());
    }
    Ok(())
}

/// Largest image fetched on a caller's behalf.
pub const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;
/// Longest wait for one image.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// `(media type, base64 data)` of a `data:<type>;base64,<data>` URL.
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((
        if mime.is_empty() {
            "application/octet-stream"
        } else {
            mime
        },
        data,
    ))
}

/// The URL of an OpenAI `image_url` content part (`{"image_url": {"url": ...}}` or the
/// string shorthand `{"image_url": "..."}`), if `part` is one.
pub fn image_url(part: &Value) -> Option<&str> {
    if part.get("type").and_then(Value::as_str) != Some("image_url") {
        return None;
    }
    match part.get("image_url")? {
        Value::String(s) => Some(s),
        v => v.get("url")?.as_str(),
    }
}

fn image_url_mut(part: &mut Value) -> Option<&mut Value> {
    if part.get("type").and_then(Value::as_str) != Some("image_url") {
        return None;
    }
    let slot = part.get_mut("image_url")?;
    if slot.is_string() {
        return Some(slot);
    }
    slot.get_mut("url")
}

/// Replaces every http(s) image URL in `messages` by a `data:` URL of the fetched bytes.
/// Fetches run concurrently.
pub async fn inline_remote_images(messages: &mut [Value]) -> Result<()> {
    let mut slots: Vec<&mut Value> = Vec::new();
    for m in messages.iter_mut() {
        if let Some(Value::Array(parts)) = m.get_mut("content") {
            for part in parts.iter_mut() {
                if let Some(url) = image_url_mut(part) {
                    if url
                        .as_str()
                        .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"))
                    {
                        slots.push(url);
                    }
                }
            }
        }
    }
    if slots.is_empty() {
        return Ok(());
    }
    if BLOCK_PRIVATE.load(Ordering::Relaxed) && slots.len() > MAX_REMOTE_IMAGES {
        return Err(Error::bad_request(format!(
            "a request may carry at most {MAX_REMOTE_IMAGES} image URLs to fetch, got {}",
            slots.len()
        )));
    }
    let fetched = join_all(
        slots
            .iter()
            .map(|u| fetch(u.as_str().unwrap_or_default().to_owned())),
    )
    .await;
    for (slot, data_url) in slots.into_iter().zip(fetched) {
        *slot = Value::String(data_url?);
    }
    Ok(())
}

/// Fetches one image and returns it as a `data:` URL.
pub async fn fetch(url: String) -> Result<String> {
    let fail = |why: String| Error::bad_request(format!("could not fetch image {url}: {why}"));
    let http = if BLOCK_PRIVATE.load(Ordering::Relaxed) {
        check_public(&url).await.map_err(fail)?;
        fetch_client()?
    } else {
        client()?
    };
    let mut resp = tokio::time::timeout(FETCH_TIMEOUT, http.get(&url).send())
        .await
        .map_err(|_| fail(format!("no answer within {FETCH_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status().as_u16())));
    }
    let mime = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !mime.starts_with("image/") {
        return Err(fail(format!("content type is '{mime}', not an image")));
    }
    if resp
        .content_length()
        .is_some_and(|n| n as usize > MAX_IMAGE_BYTES)
    {
        return Err(fail(format!("larger than {MAX_IMAGE_BYTES} bytes")));
    }
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(FETCH_TIMEOUT, async {
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            if bytes.len() + chunk.len() > MAX_IMAGE_BYTES {
                return Err(fail(format!("larger than {MAX_IMAGE_BYTES} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    })
    .await;
    match read {
        Err(_) => Err(fail(format!("body not received within {FETCH_TIMEOUT:?}"))),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok(format!(
            "data:{mime};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn blocked_hosts_are_refused_before_any_request() {
        assert!(check_public("http://127.0.0.1:9/x.png").await.is_err());
        assert!(check_public("http://[::1]:9/x.png").await.is_err());
        assert!(check_public("http://localhost:9/x.png").await.is_err());
        assert!(check_public("http://169.254.169.254/latest/meta-data")
            .await
            .is_err());
    }
    use serde_json::json;

    #[test]
    fn data_urls_and_parts() {
        assert_eq!(
            parse_data_url("data:image/png;base64,AAAA"),
            Some(("image/png", "AAAA"))
        );
        assert_eq!(parse_data_url("data:image/png,AAAA"), None);
        assert_eq!(parse_data_url("https://x/y.png"), None);
        let p =
            json!({"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}});
        assert_eq!(image_url(&p), Some("https://x/a.png"));
        let p = json!({"type": "image_url", "image_url": "data:image/jpeg;base64,/9j/"});
        assert_eq!(image_url(&p), Some("data:image/jpeg;base64,/9j/"));
        assert_eq!(image_url(&json!({"type": "text", "text": "hi"})), None);
    }

    #[tokio::test]
    async fn unreachable_image_is_a_bad_request_naming_the_url() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut msgs = vec![json!({"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}
        ]})];
        let e = inline_remote_images(&mut msgs).await.unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::BadRequest);
        assert!(e.message.contains("http://127.0.0.1:9/cat.png"));
    }
}
