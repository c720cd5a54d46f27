//! The SSE writer: turns a routed [`ChatStream`] into `data: {chunk}` frames, flushed one by
//! one, ending with `data: [DONE]`. While the upstream is silent (before the first token, or
//! between chunks) it writes `: keep-alive` comments every `keepalive` interval; they keep
//! proxies from timing out and make a gone client show up as a failed write. When the client
//! goes away (the body is dropped) the upstream call is dropped with it, within one interval.
//! A failure after the headers were sent ends the stream with an OpenAI-shaped error event and
//! no `[DONE]`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::errors::error_json;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::CallMeta;
use crate::router::Routed;
use crate::streaming::ChatStream;
use crate::types::Usage;

pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// A spawned task that is aborted when this handle is dropped (a gone client stops the work).
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.map_err(|e| Error::new(ErrorKind::Internal, format!("request task failed: {e}")))
        })
    }
}

pub type Opened = Routed<(ChatStream, CallMeta)>;

/// How a stream went, for metrics and logs.
#[derive(Debug, Default)]
pub struct StreamEnd {
    /// The error that ended it (before or after the first chunk).
    pub error: Option<Error>,
    pub deployment: String,
    pub ttft: Option<Duration>,
    pub usage: Option<Usage>,
    pub meta: Option<CallMeta>,
    pub chunks: u64,
    /// The client left before the end.
    pub disconnected: bool,
    pub completed: bool,
}

/// One SSE `data:` frame.
pub fn frame(json: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(json.len() + 8);
    b.put_slice(b"data: ");
    b.put_slice(json);
    b.put_slice(b"\n\n");
    b.freeze()
}

/// The in-band error event that ends a stream.
pub fn error_frame(e: &Error) -> Bytes {
    frame(&serde_json::to_vec(&error_json(e)).unwrap_or_default())
}

/// Sends `b` unless the client is gone; `false` when it is.
async fn send(tx: &mpsc::Sender<Bytes>, b: Bytes) -> bool {
    tx.send(b).await.is_ok()
}

/// Waits for `fut`, writing keep-alive comments while it takes; `None` when the client left.
async fn wait_alive<F: Future>(
    tx: &mpsc::Sender<Bytes>,
    keepalive: Duration,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            () = tx.closed() => return None,
            () = tokio::time::sleep(keepalive) => {
                if !send(tx, Bytes::from_static(KEEPALIVE)).await {
                    return None;
                }
            }
        }
    }
}

/// Streams an opened (or still opening) routed stream into `tx`.
pub async fn pump(
    tx: mpsc::Sender<Bytes>,
    opening: AbortOnDrop<Result<Opened>>,
    started: Instant,
    keepalive: Duration,
) -> StreamEnd {
    let mut end = StreamEnd::default();
    let opened = match wait_alive(&tx, keepalive, opening).await {
        None => {
            end.disconnected = true;
            return end;
        }
        Some(Err(e)) | Some(Ok(Err(e))) => {
            let _ = send(&tx, error_frame(&e)).await;
            end.error = Some(e);
            return end;
        }
        Some(Ok(Ok(o))) => o,
    };
    end.deployment = opened.deployment_id;
    let (mut stream, meta) = opened.value;
    end.meta = Some(meta);
    loop {
        let Some(item) = wait_alive(&tx, keepalive, stream.next()).await else {
            end.disconnected = true;
            break;
        };
        match item {
            None => {
                end.completed = send(&tx, Bytes::from_static(DONE)).await;
                end.disconnected = !end.completed;
                break;
            }
            Some(Err(e)) => {
                let _ = send(&tx, error_frame(&e)).await;
                end.error = Some(e);
                break;
            }
            Some(Ok(item)) => {
                if end.ttft.is_none() {
                    end.ttft = Some(started.elapsed());
                }
                end.chunks += 1;
                let json = match serde_json::to_vec(&item.chunk) {
                    Ok(j) => j,
                    Err(e) => {
                        let err = Error::new(
                            ErrorKind::Internal,
                            format!("cannot encode a stream chunk: {e}"),
                        );
                        let _ = send(&tx, error_frame(&err)).await;
                        end.error = Some(err);
                        break;
                    }
                };
                if !send(&tx, frame(&json)).await {
                    end.disconnected = true;
                    break;
                }
            }
        }
    }
    end.usage = stream.usage().cloned();
    // Dropping the stream here closes the upstream connection when it did not finish.
    drop(stream);
    end
}
