//! A binary response body read as it arrives (synthesised speech): chunks of bytes with the
//! upstream's content type, a limit on silence between chunks, and a classified error when the
//! body breaks. Dropping it drops the HTTP response and closes the connection.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::error::{Error, ErrorKind, Result};
use crate::http::transport_error;

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

pub struct BinaryStream {
    body: ByteStream,
    content_type: String,
    idle: Duration,
    api_base: String,
    bytes: u64,
    done: bool,
}

impl std::fmt::Debug for BinaryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinaryStream")
            .field("content_type", &self.content_type)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl BinaryStream {
    pub fn from_response(resp: reqwest::Response, idle: Duration, api_base: String) -> Self {
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        BinaryStream {
            body: Box::pin(resp.bytes_stream()),
            content_type,
            idle,
            api_base,
            bytes: 0,
            done: false,
        }
    }

    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// Bytes handed out so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// The next piece of the body; `None` at its end. After an error the stream is over.
    pub async fn next(&mut self) -> Option<Result<Bytes>> {
        if self.done {
            return None;
        }
        let out = match tokio::time::timeout(self.idle, self.body.next()).await {
            Err(_) => Some(Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the audio stream was silent for more than {:.1} s",
                    self.idle.as_secs_f64()
                ),
            ))),
            Ok(None) => None,
            Ok(Some(Ok(b))) => {
                self.bytes += b.len() as u64;
                Some(Ok(b))
            }
            Ok(Some(Err(e))) => Some(Err(transport_error(&e, &self.api_base))),
        };
        if !matches!(out, Some(Ok(_))) {
            self.done = true;
        }
        out
    }
}
