//! A fast, faithful fake OpenAI-compatible upstream.
//!
//! It is the upstream of the project's tests, demo and benchmarks: a hyper 1.x
//! server (HTTP/1.1 keep-alive and h2c, `TCP_NODELAY` on every socket) whose
//! responses follow the OpenAI wire format exactly (they are validated against the
//! `openai` Python package's pydantic types).
//!
//! # Routes (with or without the `/v1` prefix)
//!
//! * `POST /v1/chat/completions`: unary or streamed (`"stream": true`) chat completion,
//!   `n` choices, `max_tokens`/`max_completion_tokens` truncation (finish reason
//!   `length`), `stream_options.include_usage`, tool calls.
//! * `POST /v1/embeddings`: string / list of strings / tokens / list of token lists,
//!   `dimensions` (default 8), `encoding_format: "base64"` (little-endian `f32`).
//! * `POST /v1/images/generations`: `n` images (a 1x1 PNG) as `url` or `b64_json`.
//! * `POST /v1/audio/speech`: audio bytes of the asked format, streamed in pieces.
//! * `POST /v1/audio/transcriptions`: multipart in; the text says how many bytes of which file.
//! * `GET /v1/models`, `GET /v1/models/{id}`.
//! * `GET /__stats?key=K`: [`KeyStats`] of key `K` as JSON. `GET /health`.
//! * Anything else: 404 with an OpenAI error body. An unparsable JSON request body: 400.
//!
//! # Token accounting
//!
//! * prompt tokens = whitespace-separated words of every message content (string
//!   contents and the `text` of content parts) + 3 per message; for embeddings the
//!   words of each string input or the length of each token list;
//! * completion tokens = words of the reply (for tool calls: the words of the
//!   arguments strings), multiplied by `n`.
//!
//! # Fault controls (request headers, so tests can run in parallel)
//!
//! | header | effect |
//! |---|---|
//! | `x-fake-key: K` | per-key counters ([`KeyStats`]); no header = key `""` |
//! | `x-fake-status: S` | answer status `S` with an OpenAI error body (defaults per status) |
//! | `x-fake-error-code: C` | error `code` (known codes also set type/message and, without `x-fake-status`, the status) |
//! | `x-fake-error-message: M` | error message |
//! | `x-fake-fail-times: N` | only the first `N` requests of the key get the fault(s); later ones succeed (500 if no other fault is given) |
//! | `x-fake-retry-after-ms: V`, `x-fake-retry-after: V` | copied to `retry-after-ms` / `retry-after` on error responses |
//! | `x-fake-html: 1` | HTML error page (`text/html`), status `x-fake-status` or 502 |
//! | `x-fake-malformed: 1` | 200 `application/json` with a body that is not JSON |
//! | `x-fake-delay-ms: N` | wait before the response headers (client disconnect counts as aborted) |
//! | `x-fake-chunk-delay-ms: N` | wait before every streamed content chunk |
//! | `x-fake-cut-after: N` | streams: end the body with an error after `N` content chunks |
//! | `x-fake-stream-error-after: N` | streams: send an SSE `error` event after `N` content chunks, then end cleanly without `[DONE]` |
//! | `x-fake-content: text` | reply text instead of [`DEFAULT_REPLY`] |
//! | `x-fake-chunks: K` | number of streamed content chunks (default: one per word) |
//! | `x-fake-tool-calls: N` | answer with `N` tool calls |
//! | `x-fake-finish-reason: R` | report finish reason `R` (e.g. Azure's `content_filter`) |
//!
//! `completed` counts responses whose last body frame was handed to hyper (a
//! deliberate `x-fake-cut-after` counts as completed); `aborted` counts responses
//! dropped before that, i.e. the client went away.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The reply of every chat completion without `x-fake-content`: exactly 20 words.
pub const DEFAULT_REPLY: &str = "Hello! This is the fake upstream speaking. Every answer you receive from me is exactly twenty words long and deterministic.";

/// The id listed by `GET /v1/models` and used when a request names no model.
pub const FAKE_MODEL_ID: &str = "fake-model";

pub(crate) const JSON: &str = "application/json";
pub(crate) const SSE: &str = "text/event-stream";
const FINGERPRINT: &str = "fp_fake";
const DEFAULT_EMBEDDING_DIMENSIONS: usize = 8;
const MAX_EMBEDDING_DIMENSIONS: usize = 65_536;
const MAX_CHOICES: u32 = 128;
pub(crate) const TOOL_LOCATIONS: [&str; 8] = [
    "Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Sydney", "Nairobi", "Quebec",
];
const MODELS_BODY: &[u8] =
    br#"{"object":"list","data":[{"id":"fake-model","object":"model","created":0,"owned_by":"llmux"}]}"#;
const MALFORMED_BODY: &[u8] = br#"{"id": "chatcmpl-broken", "choices": ["#;
const STREAM_ERROR_EVENT: &[u8] = b"data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

// ---------------------------------------------------------------------------
// Shared state and public API
// ---------------------------------------------------------------------------

/// Snapshot of the counters and last request of one `x-fake-key`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KeyStats {
    /// Requests received (counted once the request body has been read).
    pub requests: u64,
    /// Responses fully handed to the connection.
    pub completed: u64,
    /// Responses dropped before completion (client disconnected).
    pub aborted: u64,
    /// The last request body, parsed as JSON (`None` if it was not JSON).
    pub last_body: Option<serde_json::Value>,
    /// The last `Authorization` header (or `api-key` header if there was none).
    pub last_authorization: Option<String>,
    /// All headers of the last request (lowercase names; repeated headers joined by `", "`).
    pub last_headers: BTreeMap<String, String>,
    /// Path and query of the last request.
    pub last_path: Option<String>,
    /// Bytes of multipart request bodies received, counted as they arrive (so a test can see
    /// an upload reach the upstream while it is still being sent).
    pub upload_bytes: u64,
}

#[derive(Default)]
struct KeyState {
    requests: u64,
    completed: u64,
    aborted: u64,
    last_body: Option<Bytes>,
    last_headers: Option<HeaderMap>,
    last_uri: Option<Uri>,
    upload_bytes: u64,
}

/// Shared state of a fake upstream: per-key counters and the completion id counter.
#[derive(Default)]
pub struct FakeUpstream {
    keys: Mutex<HashMap<Arc<str>, KeyState>>,
    next_id: AtomicU64,
}

impl fmt::Debug for FakeUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeUpstream")
            .field("keys", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl FakeUpstream {
    /// Fresh state with no keys.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, KeyState>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Snapshot of the counters of `key` (all zero if the key was never seen).
    pub fn stats(&self, key: &str) -> KeyStats {
        let (requests, completed, aborted, body, headers, uri, upload_bytes) = {
            let map = self.lock();
            match map.get(key) {
                None => return KeyStats::default(),
                Some(k) => (
                    k.requests,
                    k.completed,
                    k.aborted,
                    k.last_body.clone(),
                    k.last_headers.clone(),
                    k.last_uri.clone(),
                    k.upload_bytes,
                ),
            }
        };
        let mut last_headers = BTreeMap::new();
        let mut last_authorization = None;
        if let Some(headers) = &headers {
            for (name, value) in headers {
                let value = String::from_utf8_lossy(value.as_bytes());
                last_headers
                    .entry(name.as_str().to_owned())
                    .and_modify(|v: &mut String| {
                        v.push_str(", ");
                        v.push_str(&value);
                    })
                    .or_insert_with(|| value.into_owned());
            }
            last_authorization = headers
                .get(AUTHORIZATION)
                .or_else(|| headers.get("api-key"))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        KeyStats {
            requests,
            completed,
            aborted,
            last_body: body.and_then(|b| serde_json::from_slice(&b).ok()),
            last_authorization,
            last_headers,
            last_path: uri.map(|u| {
                u.path_and_query()
                    .map_or_else(|| u.path().to_owned(), |pq| pq.as_str().to_owned())
            }),
            upload_bytes,
        }
    }

    /// Counts `n` more bytes of an upload arriving for `key`.
    fn receiving(&self, key: &str, n: usize) {
        let mut map = self.lock();
        let entry = match map.get_mut(key) {
            Some(e) => e,
            None => map.entry(Arc::from(key)).or_default(),
        };
        entry.upload_bytes += n as u64;
    }

    /// Serves on `listener` with this state until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let builder = auto::Builder::new(TokioExecutor::new());
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(_) => {
                    // Accept errors (EMFILE, ECONNABORTED, ...) are transient: back off.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            // Best effort: a socket that refuses TCP_NODELAY still works.
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            let state = Arc::clone(&self);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(handle(state, req).await) }
                });
                // Connection errors (client resets, cut bodies) end the connection only.
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Registers a request; returns its completion tracker and its rank within the key.
    fn record(
        self: &Arc<Self>,
        key: &str,
        headers: HeaderMap,
        uri: Uri,
        body: Bytes,
    ) -> (Tracker, u64) {
        let mut map = self.lock();
        let key: Arc<str> = match map.get_key_value(key) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(key),
        };
        let entry = map.entry(Arc::clone(&key)).or_default();
        entry.requests += 1;
        let nth = entry.requests;
        let old = (
            entry.last_headers.replace(headers),
            entry.last_uri.replace(uri),
            entry.last_body.replace(body),
        );
        drop(map);
        drop(old);
        let tracker = Tracker {
            state: Arc::clone(self),
            key,
            done: false,
        };
        (tracker, nth)
    }

    fn bump(&self, key: &str, completed: bool) {
        if let Some(k) = self.lock().get_mut(key) {
            if completed {
                k.completed += 1;
            } else {
                k.aborted += 1;
            }
        }
    }
}

/// A running fake upstream started by [`spawn`]. Dropping it stops accepting too.
#[derive(Debug)]
pub struct FakeHandle {
    /// The bound address (with the real port when 0 was asked).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<io::Result<()>>,
    state: Arc<FakeUpstream>,
}

impl FakeHandle {
    /// Snapshot of the counters of `key`.
    pub fn stats(&self, key: &str) -> KeyStats {
        self.state.stats(key)
    }

    /// `http://<addr>/v1`, the base URL an OpenAI client wants.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The shared state (counters) of this server.
    pub fn state(&self) -> &Arc<FakeUpstream> {
        &self.state
    }

    /// Stops accepting connections and waits for the accept loop to end.
    /// Already-open connections are not waited for.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.join).await;
    }
}

/// Binds `addr` (port 0 = any free port) and serves on the current tokio runtime
/// (`tokio::spawn`) until [`FakeHandle::shutdown`] (or until the handle is dropped).
pub async fn spawn(addr: SocketAddr) -> io::Result<FakeHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(FakeUpstream::new());
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(Arc::clone(&state).serve(listener, async move {
        let _ = rx.await;
    }));
    Ok(FakeHandle {
        addr,
        shutdown: Some(tx),
        join,
        state,
    })
}

/// Serves on an already-bound listener until `shutdown` resolves (used by the binary
/// and by Python). Counters are only reachable through `GET /__stats`.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    Arc::new(FakeUpstream::new())
        .serve(listener, shutdown)
        .await
}

// ---------------------------------------------------------------------------
// Response body with completion / abort tracking
// ---------------------------------------------------------------------------

/// Counts the response as completed (explicitly) or aborted (dropped first).
struct Tracker {
    state: Arc<FakeUpstream>,
    key: Arc<str>,
    done: bool,
}

impl Tracker {
    fn complete(&mut self) {
        if !self.done {
            self.done = true;
            self.state.bump(&self.key, true);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.state.bump(&self.key, false);
        }
    }
}

pub(crate) enum Item {
    Data(Bytes),
    /// Data preceded by the chunk delay.
    Delayed(Bytes),
    /// End the body with an error (`x-fake-cut-after`), after a short pause that lets
    /// hyper flush what was already written (an error drops unflushed buffers).
    Cut,
    /// The error itself, once the pause is over.
    CutNow,
}

/// Pause before a cut so the bytes before it reach the client.
const CUT_FLUSH_PAUSE: Duration = Duration::from_millis(5);

struct Events {
    items: std::vec::IntoIter<Item>,
    held: Option<Item>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    delay: Duration,
}

enum BodyKind {
    Once(Option<Bytes>),
    Events(Events),
}

pub(crate) struct FakeBody {
    kind: BodyKind,
    tracker: Option<Tracker>,
}

impl FakeBody {
    pub(crate) fn once(bytes: Bytes) -> Self {
        Self {
            kind: BodyKind::Once(Some(bytes)),
            tracker: None,
        }
    }

    pub(crate) fn events(items: Vec<Item>, delay: Duration) -> Self {
        Self {
            kind: BodyKind::Events(Events {
                items: items.into_iter(),
                held: None,
                sleep: None,
                delay,
            }),
            tracker: None,
        }
    }
}

fn complete(tracker: &mut Option<Tracker>) {
    if let Some(t) = tracker.as_mut() {
        t.complete();
    }
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let FakeBody { kind, tracker } = self.get_mut();
        match kind {
            BodyKind::Once(slot) => {
                let out = slot.take();
                complete(tracker);
                Poll::Ready(out.map(|b| Ok(Frame::data(b))))
            }
            BodyKind::Events(ev) => loop {
                if let Some(sleep) = ev.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    ev.sleep = None;
                }
                let item = match ev.held.take() {
                    Some(item) => item,
                    None => match ev.items.next() {
                        None => {
                            complete(tracker);
                            return Poll::Ready(None);
                        }
                        Some(Item::Delayed(b)) if !ev.delay.is_zero() => {
                            ev.held = Some(Item::Data(b));
                            ev.sleep = Some(Box::pin(tokio::time::sleep(ev.delay)));
                            continue;
                        }
                        Some(Item::Cut) => {
                            ev.held = Some(Item::CutNow);
                            ev.sleep = Some(Box::pin(tokio::time::sleep(CUT_FLUSH_PAUSE)));
                            continue;
                        }
                        Some(item) => item,
                    },
                };
                match item {
                    Item::Data(b) | Item::Delayed(b) => {
                        if ev.items.len() == 0 {
                            complete(tracker);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    Item::Cut | Item::CutNow => {
                        complete(tracker);
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "fake upstream: stream cut (x-fake-cut-after)",
                        ))));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Once(slot) => slot.is_none(),
            BodyKind::Events(ev) => ev.held.is_none() && ev.items.len() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Once(slot) => {
                SizeHint::with_exact(slot.as_ref().map_or(0, |b| b.len() as u64))
            }
            BodyKind::Events(_) => SizeHint::default(),
        }
    }
}

pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: FakeBody,
) -> Response<FakeBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<FakeBody> {
    response(status, JSON, FakeBody::once(Bytes::from(body)))
}

// ---------------------------------------------------------------------------
// Controls (request headers)
// ---------------------------------------------------------------------------

#[derive(Default)]
pub(crate) struct Controls {
    pub(crate) key: Option<HeaderValue>,
    pub(crate) status: Option<u16>,
    pub(crate) error_code: Option<HeaderValue>,
    pub(crate) error_message: Option<HeaderValue>,
    pub(crate) fail_times: Option<u64>,
    pub(crate) retry_after_ms: Option<HeaderValue>,
    pub(crate) retry_after: Option<HeaderValue>,
    pub(crate) html: bool,
    pub(crate) malformed: bool,
    pub(crate) delay_ms: u64,
    pub(crate) chunk_delay_ms: u64,
    pub(crate) cut_after: Option<usize>,
    pub(crate) stream_error_after: Option<usize>,
    pub(crate) content: Option<HeaderValue>,
    pub(crate) chunks: Option<usize>,
    pub(crate) tool_calls: usize,
    /// `x-fake-finish-reason`: the finish reason to report on success (e.g. Azure's
    /// `content_filter` on a 200).
    pub(crate) finish_reason: Option<HeaderValue>,
}

fn num<T: FromStr>(v: &HeaderValue) -> Option<T> {
    v.to_str().ok()?.trim().parse().ok()
}

fn flag(v: &HeaderValue) -> bool {
    let v = v.as_bytes();
    !(v.is_empty()
        || v == b"0"
        || v.eq_ignore_ascii_case(b"false")
        || v.eq_ignore_ascii_case(b"no")
        || v.eq_ignore_ascii_case(b"off"))
}

pub(crate) fn lossy(v: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

impl Controls {
    fn from_headers(headers: &HeaderMap) -> Self {
        let mut c = Self::default();
        for (name, value) in headers {
            let Some(rest) = name.as_str().strip_prefix("x-fake-") else {
                continue;
            };
            match rest {
                "key" => c.key = Some(value.clone()),
                "status" => c.status = num(value),
                "error-code" => c.error_code = Some(value.clone()),
                "error-message" => c.error_message = Some(value.clone()),
                "fail-times" => c.fail_times = num(value),
                "retry-after-ms" => c.retry_after_ms = Some(value.clone()),
                "retry-after" => c.retry_after = Some(value.clone()),
                "html" => c.html = flag(value),
                "malformed" => c.malformed = flag(value),
                "delay-ms" => c.delay_ms = num(value).unwrap_or(0),
                "chunk-delay-ms" => c.chunk_delay_ms = num(value).unwrap_or(0),
                "cut-after" => c.cut_after = num(value),
                "stream-error-after" => c.stream_error_after = num(value),
                "content" => c.content = Some(value.clone()),
                "chunks" => c.chunks = num::<usize>(value).filter(|k| *k > 0),
                "tool-calls" => c.tool_calls = num(value).unwrap_or(0),
                "finish-reason" => c.finish_reason = Some(value.clone()),
                _ => {}
            }
        }
        c
    }

    fn error_status(&self) -> bool {
        self.status.is_some_and(|s| !(200..300).contains(&s))
    }

    fn has_response_fault(&self) -> bool {
        self.error_status() || self.error_code.is_some() || self.html || self.malformed
    }

    fn has_stream_fault(&self) -> bool {
        self.cut_after.is_some() || self.stream_error_after.is_some()
    }
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

enum Route {
    Chat,
    Embeddings,
    Images,
    Speech,
    Transcription,
    ImageEdits,
    Models,
    Model,
    Health,
    Stats,
    /// `GET /__files/{pixel.png,big.png,page.html}`: images for the image-fetching tests.
    File,
    NotFound,
}

/// A 1x1 transparent PNG.
pub const PIXEL_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// Size of `/__files/big.png`: just over the image-fetch limit.
pub const BIG_FILE_BYTES: usize = crate::providers::media::MAX_IMAGE_BYTES + 1;

fn file_response(path: &str) -> Response<FakeBody> {
    match path {
        "/__files/pixel.png" => response(
            StatusCode::OK,
            "image/png",
            FakeBody::once(Bytes::from_static(PIXEL_PNG)),
        ),
        "/__files/big.png" => {
            // Sent in pieces without a content-length, so the size limit is met while reading.
            let piece = Bytes::from(vec![0u8; 1024 * 1024]);
            let mut items: Vec<Item> = Vec::new();
            let mut left = BIG_FILE_BYTES;
            while left > 0 {
                let n = left.min(piece.len());
                items.push(Item::Data(piece.slice(..n)));
                left -= n;
            }
            response(
                StatusCode::OK,
                "image/png",
                FakeBody::events(items, Duration::ZERO),
            )
        }
        "/__files/page.html" => response(
            StatusCode::OK,
            "text/html",
            FakeBody::once(Bytes::from_static(
                b"<html><body>not an image</body></html>",
            )),
        ),
        _ => error_json(
            StatusCode::NOT_FOUND,
            "no such file",
            "invalid_request_error",
            None,
        ),
    }
}

/// Reads an upload frame by frame, counting its bytes for the key as they arrive.
async fn read_counted(state: &FakeUpstream, key: &str, mut body: Incoming) -> Option<Bytes> {
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            state.receiving(key, data.len());
            all.extend_from_slice(&data);
        }
    }
    Some(Bytes::from(all))
}

fn strip_v1(path: &str) -> &str {
    match path.strip_prefix("/v1") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

fn route(method: &Method, path: &str) -> Route {
    // Azure OpenAI: /openai/deployments/{deployment}/chat/completions (and /embeddings).
    let path = match path.strip_prefix("/openai/deployments/") {
        Some(rest) => rest.find('/').map_or(path, |i| &rest[i..]),
        None => strip_v1(path),
    };
    let path = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    match (method, path) {
        (&Method::POST, "/chat/completions") => Route::Chat,
        (&Method::POST, "/embeddings") => Route::Embeddings,
        (&Method::POST, "/images/generations") => Route::Images,
        (&Method::POST, "/audio/speech") => Route::Speech,
        (&Method::POST, "/audio/transcriptions") => Route::Transcription,
        (&Method::POST, "/images/edits") => Route::ImageEdits,
        (&Method::GET, "/models") => Route::Models,
        (&Method::GET, p) if p.len() > "/models/".len() && p.starts_with("/models/") => {
            Route::Model
        }
        (&Method::GET, "/health") => Route::Health,
        (&Method::GET, p) if p.starts_with("/__files/") => Route::File,
        (&Method::GET, "/__stats") => Route::Stats,
        _ => Route::NotFound,
    }
}

async fn handle(state: Arc<FakeUpstream>, req: Request<Incoming>) -> Response<FakeBody> {
    let (parts, body) = req.into_parts();
    let dialect = super::dialect_of(&parts.method, parts.uri.path());
    let route = route(&parts.method, parts.uri.path());
    match route {
        Route::File => return file_response(parts.uri.path()),
        Route::Health => {
            return response(
                StatusCode::OK,
                JSON,
                FakeBody::once(Bytes::from_static(br#"{"status":"ok"}"#)),
            )
        }
        Route::Stats => {
            let key = query_param(parts.uri.query(), "key");
            let stats = state.stats(&key);
            return match serde_json::to_vec(&stats) {
                Ok(body) => json_response(StatusCode::OK, body),
                Err(e) => error_json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &e.to_string(),
                    "server_error",
                    None,
                ),
            };
        }
        _ => {}
    }

    let controls = Controls::from_headers(&parts.headers);
    let key = controls
        .key
        .as_ref()
        .map(lossy)
        .unwrap_or(Cow::Borrowed(""));
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // A body that fails mid-upload is treated as empty (and then as invalid JSON).
    let body = if content_type.starts_with("multipart/") {
        read_counted(&state, &key, body).await.unwrap_or_default()
    } else {
        match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        }
    };
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let (mut tracker, nth) = state.record(&key, parts.headers, parts.uri.clone(), body.clone());

    if controls.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(controls.delay_ms)).await;
    }
    let failing = controls.fail_times.is_none_or(|n| nth <= n);

    let mut resp = if let Some(dialect) = dialect {
        dialect.respond(&super::Ctx {
            controls: &controls,
            method: &parts.method,
            uri: &parts.uri,
            body: &body,
            failing,
        })
    } else if let Route::NotFound = route {
        let message = format!("Invalid URL ({} {})", parts.method, parts.uri.path());
        error_json(
            StatusCode::NOT_FOUND,
            &message,
            "invalid_request_error",
            None,
        )
    } else if failing
        && (controls.has_response_fault()
            || (controls.fail_times.is_some() && !controls.has_stream_fault()))
    {
        fault_response(&controls, &body)
    } else {
        match route {
            Route::Chat => chat(&state, &controls, &body, failing),
            Route::Embeddings => embeddings(&body),
            Route::Images => images(&body, &host),
            Route::Speech => speech(&controls, &body),
            Route::Transcription => transcription(&content_type, &body),
            Route::ImageEdits => image_edits(&content_type, &body),
            Route::Models => response(
                StatusCode::OK,
                JSON,
                FakeBody::once(Bytes::from_static(MODELS_BODY)),
            ),
            Route::Model => {
                let id = strip_v1(parts.uri.path())
                    .trim_end_matches('/')
                    .trim_start_matches("/models/");
                model_object(id)
            }
            Route::Health | Route::Stats | Route::File | Route::NotFound => error_json(
                StatusCode::NOT_FOUND,
                "Not found",
                "invalid_request_error",
                None,
            ),
        }
    };
    let status = resp.status();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // hyper never polls these bodies.
        tracker.complete();
    }
    resp.body_mut().tracker = Some(tracker);
    resp
}

fn query_param(query: Option<&str>, name: &str) -> String {
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) == name {
            return percent_decode(v);
        }
    }
    String::new()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn model_object(id: &str) -> Response<FakeBody> {
    #[derive(Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
    }
    let model = Model {
        id,
        object: "model",
        created: 0,
        owned_by: "llmux",
    };
    match serde_json::to_vec(&model) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => error_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
            "server_error",
            None,
        ),
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn word_count(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

fn error_body(message: &str, kind: &str, code: Option<&str>) -> Vec<u8> {
    let envelope = ErrorEnvelope {
        error: ErrorObject {
            message,
            kind,
            param: None,
            code,
        },
    };
    serde_json::to_vec(&envelope).unwrap_or_else(|_| {
        br#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#.to_vec()
    })
}

fn error_json(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response<FakeBody> {
    json_response(status, error_body(message, kind, code))
}

fn model_not_found_message(model: &str) -> String {
    format!("The model `{model}` does not exist or you do not have access to it.")
}

/// `(type, code, message)` defaults of an error status.
fn status_defaults(
    status: u16,
    model: &str,
) -> (&'static str, Option<&'static str>, Cow<'static, str>) {
    match status {
        400 => (
            "invalid_request_error",
            None,
            Cow::Borrowed("Invalid request (x-fake-status: 400)."),
        ),
        401 => (
            "invalid_request_error",
            Some("invalid_api_key"),
            Cow::Borrowed("Incorrect API key provided: sk-fa***"),
        ),
        403 => (
            "permission_denied",
            None,
            Cow::Borrowed("You are not allowed to perform this request."),
        ),
        404 => (
            "invalid_request_error",
            Some("model_not_found"),
            Cow::Owned(model_not_found_message(model)),
        ),
        408 => ("timeout", None, Cow::Borrowed("Request timed out.")),
        422 => (
            "invalid_request_error",
            None,
            Cow::Borrowed("Unprocessable request."),
        ),
        429 => (
            "requests",
            Some("rate_limit_exceeded"),
            Cow::Borrowed("Rate limit reached for requests"),
        ),
        500 => (
            "server_error",
            None,
            Cow::Borrowed(
                "The server had an error while processing your request. Sorry about that!",
            ),
        ),
        502 | 503 => (
            "server_error",
            None,
            Cow::Borrowed("The server is overloaded or not ready yet."),
        ),
        504 => (
            "server_error",
            None,
            Cow::Borrowed("The server timed out while processing your request."),
        ),
        s if s >= 500 => (
            "server_error",
            None,
            Cow::Owned(format!("Fake upstream server error (status {s}).")),
        ),
        s => (
            "invalid_request_error",
            None,
            Cow::Owned(format!("Fake upstream error (status {s}).")),
        ),
    }
}

/// `(status, type, message)` of a known error code.
fn code_defaults(code: &str, model: &str) -> Option<(u16, &'static str, Cow<'static, str>)> {
    Some(match code {
        "insufficient_quota" => (
            429,
            "insufficient_quota",
            Cow::Borrowed("You exceeded your current quota, please check your plan and billing details."),
        ),
        "context_length_exceeded" => (
            400,
            "invalid_request_error",
            Cow::Borrowed("This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."),
        ),
        "content_policy_violation" => (
            400,
            "invalid_request_error",
            Cow::Borrowed("Your request was rejected as a result of our safety system."),
        ),
        "model_not_found" => (404, "invalid_request_error", Cow::Owned(model_not_found_message(model))),
        // Azure OpenAI's prompt filter.
        "content_filter" => (
            400,
            "invalid_request_error",
            Cow::Borrowed("The response was filtered due to the prompt triggering Azure OpenAI's content management policy."),
        ),
        "invalid_api_key" => (
            401,
            "invalid_request_error",
            Cow::Borrowed("Incorrect API key provided: sk-fa***"),
        ),
        "rate_limit_exceeded" => (429, "requests", Cow::Borrowed("Rate limit reached for requests")),
        _ => return None,
    })
}

#[derive(Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

fn fault_response(c: &Controls, body: &[u8]) -> Response<FakeBody> {
    let mut resp = if c.malformed && !c.html && !c.error_status() && c.error_code.is_none() {
        response(
            StatusCode::OK,
            JSON,
            FakeBody::once(Bytes::from_static(MALFORMED_BODY)),
        )
    } else if c.html {
        let status = c
            .status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let title = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        let page = format!(
            "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        );
        response(status, "text/html", FakeBody::once(Bytes::from(page)))
    } else {
        let parsed: Option<ModelOnly<'_>> = serde_json::from_slice(body).ok();
        let model = parsed
            .as_ref()
            .and_then(|m| m.model.as_deref())
            .unwrap_or(FAKE_MODEL_ID);
        let code_header = c.error_code.as_ref().map(lossy);
        let code_info = code_header
            .as_deref()
            .and_then(|code| code_defaults(code, model));
        let status_u16 = c
            .status
            .filter(|s| !(200..300).contains(s))
            .or(code_info.as_ref().map(|(s, _, _)| *s))
            .unwrap_or(500);
        let status = StatusCode::from_u16(status_u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (mut kind, code, mut message) = status_defaults(status.as_u16(), model);
        let mut code: Option<&str> = code;
        if let Some(header_code) = code_header.as_deref() {
            code = Some(header_code);
        }
        if let Some((_, k, m)) = code_info {
            kind = k;
            message = m;
        }
        let message_header = c.error_message.as_ref().map(lossy);
        let message: &str = message_header.as_deref().unwrap_or(&message);
        error_json(status, message, kind, code)
    };
    let headers = resp.headers_mut();
    if let Some(v) = &c.retry_after_ms {
        headers.insert(HeaderName::from_static("retry-after-ms"), v.clone());
    }
    if let Some(v) = &c.retry_after {
        headers.insert(hyper::header::RETRY_AFTER, v.clone());
    }
    resp
}

// ---------------------------------------------------------------------------
// Chat completions: request
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    messages: Prompt,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(borrow, default)]
    tools: Option<Vec<ToolDef<'a>>>,
    #[serde(borrow, default)]
    tool_choice: Option<ToolChoice<'a>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ToolDef<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionName<'a>>,
}

#[derive(Deserialize)]
struct FunctionName<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ToolChoice<'a> {
    Mode(#[serde(borrow)] Cow<'a, str>),
    Named {
        #[serde(borrow)]
        function: FunctionName<'a>,
    },
    Other(IgnoredAny),
}

/// Message count and words of all message contents, counted while parsing.
#[derive(Default)]
struct Prompt {
    messages: u64,
    words: u64,
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Prompt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of messages")
            }
            fn visit_unit<E>(self) -> Result<Prompt, E> {
                Ok(Prompt::default())
            }
            fn visit_none<E>(self) -> Result<Prompt, E> {
                Ok(Prompt::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Prompt, A::Error> {
                let mut p = Prompt::default();
                while let Some(m) = seq.next_element::<MessageWords>()? {
                    p.messages += 1;
                    p.words += m.content.0;
                }
                Ok(p)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct MessageWords {
    #[serde(default)]
    content: Words,
}

/// Whitespace-separated words of a content: a string, or the `text` of parts.
#[derive(Default)]
struct Words(u64);

impl<'de> Deserialize<'de> for Words {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Words;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message content")
            }
            fn visit_str<E>(self, s: &str) -> Result<Words, E> {
                Ok(Words(word_count(s)))
            }
            fn visit_unit<E>(self) -> Result<Words, E> {
                Ok(Words(0))
            }
            fn visit_none<E>(self) -> Result<Words, E> {
                Ok(Words(0))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Words, E> {
                Ok(Words(0))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Words, E> {
                Ok(Words(0))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Words, E> {
                Ok(Words(0))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Words, E> {
                Ok(Words(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Words, A::Error> {
                let mut n = 0;
                while let Some(w) = seq.next_element::<Words>()? {
                    n += w.0;
                }
                Ok(Words(n))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Words, A::Error> {
                let mut n = 0;
                while let Some(key) = map.next_key::<IsText>()? {
                    if key.0 {
                        n += map.next_value::<Words>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Words(n))
            }
        }
        d.deserialize_any(V)
    }
}

/// A map key that is (or is not) `"text"`.
struct IsText(bool);

impl<'de> Deserialize<'de> for IsText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IsText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, s: &str) -> Result<IsText, E> {
                Ok(IsText(s == "text"))
            }
        }
        d.deserialize_str(V)
    }
}

// ---------------------------------------------------------------------------
// Chat completions: response
// ---------------------------------------------------------------------------

#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize, Clone, Copy, Default)]
struct PromptDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize, Clone, Copy, Default)]
struct CompletionDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

impl Usage {
    fn new(prompt: u64, completion: u64) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptDetails::default(),
            completion_tokens_details: CompletionDetails::default(),
        }
    }
}

struct ToolCallData<'a> {
    id: String,
    name: &'a str,
    arguments: String,
}

impl Serialize for ToolCallData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Function<'a> {
            name: &'a str,
            arguments: &'a str,
        }
        #[derive(Serialize)]
        struct Call<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            function: Function<'a>,
        }
        Call {
            id: &self.id,
            kind: "function",
            function: Function {
                name: self.name,
                arguments: &self.arguments,
            },
        }
        .serialize(s)
    }
}

#[derive(Serialize)]
struct UnaryMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'a [ToolCallData<'a>],
}

#[derive(Serialize)]
struct UnaryChoice<'a> {
    index: u32,
    message: &'a UnaryMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

struct UnaryChoices<'a> {
    n: u32,
    message: UnaryMessage<'a>,
    finish_reason: &'a str,
}

impl Serialize for UnaryChoices<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.n as usize))?;
        for index in 0..self.n {
            seq.serialize_element(&UnaryChoice {
                index,
                message: &self.message,
                logprobs: None,
                finish_reason: self.finish_reason,
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: UnaryChoices<'a>,
    usage: Usage,
}

#[derive(Clone, Copy)]
enum UsageField {
    Absent,
    Null,
    Present(Usage),
}

impl UsageField {
    fn is_absent(&self) -> bool {
        matches!(self, UsageField::Absent)
    }
}

impl Serialize for UsageField {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UsageField::Present(u) => u.serialize(s),
            UsageField::Absent | UsageField::Null => s.serialize_none(),
        }
    }
}

#[derive(Serialize)]
struct DeltaFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct DeltaToolCall<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: DeltaFunction<'a>,
}

impl<'a> DeltaToolCall<'a> {
    fn header(index: usize, call: &'a ToolCallData<'a>) -> Self {
        Self {
            index,
            id: Some(&call.id),
            kind: Some("function"),
            function: DeltaFunction {
                name: Some(call.name),
                arguments: "",
            },
        }
    }

    fn arguments(index: usize, piece: &'a str) -> Self {
        Self {
            index,
            id: None,
            kind: None,
            function: DeltaFunction {
                name: None,
                arguments: piece,
            },
        }
    }
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[DeltaToolCall<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "UsageField::is_absent")]
    usage: UsageField,
}

#[derive(Clone, Copy)]
enum StreamFault {
    Cut(usize),
    Error(usize),
}

impl StreamFault {
    fn after(self) -> usize {
        match self {
            StreamFault::Cut(n) | StreamFault::Error(n) => n,
        }
    }
}

enum Mark {
    Data { end: usize, delayed: bool },
    Cut,
}

/// Writes all SSE events of a stream into one buffer, then slices it into frames.
struct SseWriter<'a> {
    buf: Vec<u8>,
    marks: Vec<Mark>,
    id: &'a str,
    created: u64,
    model: &'a str,
    filler: UsageField,
    emitted: usize,
    fault: Option<StreamFault>,
}

impl<'a> SseWriter<'a> {
    fn chunk(&mut self, choices: &[ChunkChoice<'_>], usage: UsageField, delayed: bool) {
        self.buf.extend_from_slice(b"data: ");
        let chunk = Chunk {
            id: self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model,
            system_fingerprint: FINGERPRINT,
            choices,
            usage,
        };
        // Serializing these plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, &chunk);
        self.buf.extend_from_slice(b"\n\n");
        self.marks.push(Mark::Data {
            end: self.buf.len(),
            delayed,
        });
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.marks.push(Mark::Data {
            end: self.buf.len(),
            delayed: false,
        });
    }

    fn plain(&mut self, index: u32, delta: Delta<'_>, finish_reason: Option<&str>) {
        let filler = self.filler;
        self.chunk(
            &[ChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason,
            }],
            filler,
            false,
        );
    }

    /// Emits a content chunk unless the fault is due; returns false once it fired.
    fn content(&mut self, index: u32, delta: Delta<'_>) -> bool {
        if self.fault.is_some_and(|f| f.after() <= self.emitted) {
            self.fire_fault();
            return false;
        }
        let filler = self.filler;
        self.chunk(
            &[ChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason: None,
            }],
            filler,
            true,
        );
        self.emitted += 1;
        true
    }

    fn fire_fault(&mut self) {
        match self.fault.take() {
            Some(StreamFault::Cut(_)) => self.marks.push(Mark::Cut),
            Some(StreamFault::Error(_)) => self.raw(STREAM_ERROR_EVENT),
            None => {}
        }
    }

    /// One frame per event; without chunk delay, consecutive events are coalesced
    /// into one frame (they are contiguous in the buffer, so this is free).
    fn into_items(self, coalesce: bool) -> Vec<Item> {
        let all = Bytes::from(self.buf);
        let mut items = Vec::with_capacity(if coalesce { 2 } else { self.marks.len() });
        let mut start = 0;
        let mut pending_end = 0;
        for mark in self.marks {
            match mark {
                Mark::Data { end, .. } if coalesce => pending_end = end,
                Mark::Data { end, delayed } => {
                    let b = all.slice(start..end);
                    start = end;
                    items.push(if delayed {
                        Item::Delayed(b)
                    } else {
                        Item::Data(b)
                    });
                }
                Mark::Cut => {
                    if pending_end > start {
                        items.push(Item::Data(all.slice(start..pending_end)));
                        start = pending_end;
                    }
                    items.push(Item::Cut);
                }
            }
        }
        if pending_end > start {
            items.push(Item::Data(all.slice(start..pending_end)));
        }
        items
    }
}

/// Byte ranges of whitespace-separated words.
fn word_spans(s: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let base = s.as_ptr() as usize;
    s.split_whitespace().map(move |w| {
        let start = w.as_ptr() as usize - base;
        (start, start + w.len())
    })
}

/// `text` limited to `limit` words; true when truncated.
fn truncate_words(text: &str, limit: Option<u64>) -> (&str, bool) {
    let Some(limit) = limit else {
        return (text, false);
    };
    if limit == 0 {
        return ("", word_count(text) > 0);
    }
    match word_spans(text).nth(usize::try_from(limit - 1).unwrap_or(usize::MAX)) {
        None => (text, false),
        Some((_, end)) => {
            let rest = text.get(end..).unwrap_or("");
            if rest.split_whitespace().next().is_some() {
                (text.get(..end).unwrap_or(text), true)
            } else {
                (text, false)
            }
        }
    }
}

/// `text` split into `k` pieces of nearly equal character counts (fewer if it is shorter).
fn split_chars(text: &str, k: usize) -> Vec<&str> {
    let idx: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let len = idx.len();
    let k = k.min(len).max(1);
    let at = |c: usize| {
        if c >= k {
            text.len()
        } else {
            idx.get(c * len / k).copied().unwrap_or(text.len())
        }
    };
    (0..k)
        .filter_map(|c| text.get(at(c)..at(c + 1)))
        .filter(|p| !p.is_empty())
        .collect()
}

/// `text` split into `k` chunks (default: one per word, each with its following
/// whitespace); words are spread evenly, or characters when `k` exceeds the words.
fn split_pieces(text: &str, k: Option<usize>) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    let starts: Vec<usize> = word_spans(text).map(|(s, _)| s).collect();
    let w = starts.len();
    if w == 0 {
        return vec![text];
    }
    let k = k.unwrap_or(w).max(1);
    if k > w {
        return split_chars(text, k);
    }
    let at = |c: usize| {
        if c == 0 {
            0
        } else if c >= k {
            text.len()
        } else {
            starts.get(c * w / k).copied().unwrap_or(text.len())
        }
    };
    (0..k).filter_map(|c| text.get(at(c)..at(c + 1))).collect()
}

fn chat(state: &FakeUpstream, c: &Controls, body: &[u8], failing: bool) -> Response<FakeBody> {
    let req: ChatRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("We could not parse the JSON body of your request. ({e})");
            return error_json(
                StatusCode::BAD_REQUEST,
                &message,
                "invalid_request_error",
                None,
            );
        }
    };
    let id = format!(
        "chatcmpl-fake-{}",
        state.next_id.fetch_add(1, Ordering::Relaxed) + 1
    );
    let created = now_secs();
    let model = req.model.as_deref().unwrap_or(FAKE_MODEL_ID);
    let n = req.n.unwrap_or(1).clamp(1, MAX_CHOICES);
    let prompt_tokens = req.messages.words + 3 * req.messages.messages;

    let forced_tool = match (&req.tools, &req.tool_choice) {
        (Some(tools), Some(ToolChoice::Mode(m))) if !tools.is_empty() && m == "required" => {
            Some(None)
        }
        (Some(tools), Some(ToolChoice::Named { function })) if !tools.is_empty() => {
            Some(Some(function.name.as_ref()))
        }
        _ => None,
    };
    let tool_count = if c.tool_calls > 0 {
        c.tool_calls.min(1024)
    } else if forced_tool.is_some() {
        1
    } else {
        0
    };
    let tool_name = forced_tool.flatten().unwrap_or_else(|| {
        req.tools
            .iter()
            .flatten()
            .find_map(|t| t.function.as_ref().map(|f| f.name.as_ref()))
            .unwrap_or("get_weather")
    });
    let tool_calls: Vec<ToolCallData<'_>> = (0..tool_count)
        .map(|i| ToolCallData {
            id: format!("call_fake_{i}"),
            name: tool_name,
            arguments: format!(
                "{{\"location\": \"{}\", \"unit\": \"celsius\"}}",
                TOOL_LOCATIONS
                    .get(i % TOOL_LOCATIONS.len())
                    .copied()
                    .unwrap_or("Paris")
            ),
        })
        .collect();

    let text_header = c.content.as_ref().map(lossy);
    let text = text_header.as_deref().unwrap_or(DEFAULT_REPLY);
    let limit = req.max_completion_tokens.or(req.max_tokens);
    let forced_finish = c.finish_reason.as_ref().map(lossy);
    let (content, finish_reason) = if tool_calls.is_empty() {
        match truncate_words(text, limit) {
            (t, true) => (t, "length"),
            (t, false) => (t, "stop"),
        }
    } else {
        ("", "tool_calls")
    };
    let finish_reason = forced_finish.as_deref().unwrap_or(finish_reason);
    let per_choice = if tool_calls.is_empty() {
        word_count(content)
    } else {
        tool_calls.iter().map(|t| word_count(&t.arguments)).sum()
    };
    let usage = Usage::new(prompt_tokens, per_choice * u64::from(n));

    if req.stream != Some(true) {
        let completion = Completion {
            id: &id,
            object: "chat.completion",
            created,
            model,
            system_fingerprint: FINGERPRINT,
            choices: UnaryChoices {
                n,
                message: UnaryMessage {
                    role: "assistant",
                    content: if tool_calls.is_empty() {
                        Some(content)
                    } else {
                        None
                    },
                    refusal: None,
                    tool_calls: &tool_calls,
                },
                finish_reason,
            },
            usage,
        };
        return match serde_json::to_vec(&completion) {
            Ok(body) => json_response(StatusCode::OK, body),
            Err(e) => error_json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
                "server_error",
                None,
            ),
        };
    }

    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let fault = if failing {
        c.cut_after
            .map(StreamFault::Cut)
            .or(c.stream_error_after.map(StreamFault::Error))
    } else {
        None
    };
    let mut w = SseWriter {
        buf: Vec::with_capacity(512 + 256 * (DEFAULT_REPLY.len() / 4) * n as usize),
        marks: Vec::with_capacity(32),
        id: &id,
        created,
        model,
        filler: if include_usage {
            UsageField::Null
        } else {
            UsageField::Absent
        },
        emitted: 0,
        fault,
    };
    write_stream(
        &mut w,
        n,
        content,
        c.chunks,
        &tool_calls,
        finish_reason,
        include_usage.then_some(usage),
    );
    let items = w.into_items(c.chunk_delay_ms == 0);
    response(
        StatusCode::OK,
        SSE,
        FakeBody::events(items, Duration::from_millis(c.chunk_delay_ms)),
    )
}

fn write_stream(
    w: &mut SseWriter<'_>,
    n: u32,
    content: &str,
    chunks: Option<usize>,
    tool_calls: &[ToolCallData<'_>],
    finish_reason: &str,
    usage: Option<Usage>,
) {
    for index in 0..n {
        let delta = match tool_calls.first() {
            None => Delta {
                role: Some("assistant"),
                content: Some(Some("")),
                tool_calls: None,
                refusal: Some(None),
            },
            Some(first) => Delta {
                role: Some("assistant"),
                content: Some(None),
                tool_calls: Some([DeltaToolCall::header(0, first)]),
                refusal: Some(None),
            },
        };
        w.plain(index, delta, None);
    }
    if tool_calls.is_empty() {
        for piece in split_pieces(content, chunks) {
            for index in 0..n {
                let delta = Delta {
                    content: Some(Some(piece)),
                    ..Delta::default()
                };
                if !w.content(index, delta) {
                    return;
                }
            }
        }
    } else {
        for (ci, call) in tool_calls.iter().enumerate() {
            if ci > 0 {
                for index in 0..n {
                    let delta = Delta {
                        tool_calls: Some([DeltaToolCall::header(ci, call)]),
                        ..Delta::default()
                    };
                    w.plain(index, delta, None);
                }
            }
            for piece in split_chars(&call.arguments, 4) {
                for index in 0..n {
                    let delta = Delta {
                        tool_calls: Some([DeltaToolCall::arguments(ci, piece)]),
                        ..Delta::default()
                    };
                    if !w.content(index, delta) {
                        return;
                    }
                }
            }
        }
    }
    if w.fault.is_some() {
        // The fault was asked after more chunks than there are: fire it now.
        w.fire_fault();
        return;
    }
    for index in 0..n {
        w.plain(index, Delta::default(), Some(finish_reason));
    }
    if let Some(usage) = usage {
        w.chunk(&[], UsageField::Present(usage), false);
    }
    w.raw(DONE_EVENT);
}

// ---------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct EmbeddingRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: EmbeddingInput<'a>,
    #[serde(default)]
    dimensions: Option<u64>,
    #[serde(borrow, default)]
    encoding_format: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Texts(#[serde(borrow)] Vec<Cow<'a, str>>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

enum EmbeddingValue {
    Floats(Vec<f32>),
    Base64(String),
}

impl Serialize for EmbeddingValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EmbeddingValue::Floats(v) => v.serialize(s),
            EmbeddingValue::Base64(b) => s.serialize_str(b),
        }
    }
}

#[derive(Serialize)]
struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct EmbeddingResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingData>,
    model: &'a str,
    usage: EmbeddingUsage,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Deterministic unit vector derived from `seed` (splitmix64).
fn embed(seed: u64, dims: usize) -> Vec<f32> {
    let mut x = seed;
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32) / 16_777_216.0 * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|f| f * f).sum::<f32>().sqrt();
    if norm > 0.0 {
        for f in &mut v {
            *f /= norm;
        }
    }
    v
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
fn base64_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    let sym = |n: u32, shift: u32| char::from(BASE64_ALPHABET[((n >> shift) & 63) as usize]);
    for chunk in input.chunks(3) {
        let (bytes, len) = match *chunk {
            [a] => ([a, 0, 0], 1),
            [a, b] => ([a, b, 0], 2),
            [a, b, c] => ([a, b, c], 3),
            _ => continue,
        };
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        out.push(sym(n, 18));
        out.push(sym(n, 12));
        out.push(if len > 1 { sym(n, 6) } else { '=' });
        out.push(if len > 2 { sym(n, 0) } else { '=' });
    }
    out
}

/// Audio bytes of the asked format for `words` words of text: a real header (RIFF/WAVE for
/// `wav`, ID3 + MPEG frames for `mp3`, `fLaC`, `OggS`, ADTS) and silence, 2,000 bytes a word.
pub fn fake_audio(format: &str, words: usize) -> Vec<u8> {
    let payload = 2000 * words.max(1);
    let mut out = Vec::with_capacity(payload + 64);
    match format {
        "wav" => {
            let data = u32::try_from(payload).unwrap_or(u32::MAX);
            out.extend_from_slice(b"RIFF");
            out.extend_from_slice(&(36 + data).to_le_bytes());
            out.extend_from_slice(b"WAVEfmt ");
            out.extend_from_slice(&16u32.to_le_bytes());
            out.extend_from_slice(&1u16.to_le_bytes()); // PCM
            out.extend_from_slice(&1u16.to_le_bytes()); // mono
            out.extend_from_slice(&24_000u32.to_le_bytes());
            out.extend_from_slice(&48_000u32.to_le_bytes());
            out.extend_from_slice(&2u16.to_le_bytes());
            out.extend_from_slice(&16u16.to_le_bytes());
            out.extend_from_slice(b"data");
            out.extend_from_slice(&data.to_le_bytes());
        }
        "flac" => out.extend_from_slice(b"fLaC"),
        "opus" => out.extend_from_slice(b"OggS"),
        "aac" => out.extend_from_slice(&[0xff, 0xf1, 0x50, 0x80]),
        "pcm" => {}
        _ => out.extend_from_slice(b"ID3\x03\x00\x00\x00\x00\x00\x00"),
    }
    let frame: &[u8] = if matches!(format, "mp3" | "") {
        &[0xff, 0xfb, 0x90, 0x64]
    } else {
        &[]
    };
    let total = out.len() + payload;
    while out.len() < total {
        out.extend_from_slice(frame);
        let pad = 413.min(total.saturating_sub(out.len()));
        out.resize(out.len() + pad, 0);
    }
    out.truncate(total);
    out
}

/// `POST /v1/audio/speech`: audio of the asked `response_format` (default mp3), sent in
/// `x-fake-chunks` pieces (default 8) `x-fake-chunk-delay-ms` apart; `x-fake-cut-after: N`
/// breaks the body after `N` pieces.
fn speech(controls: &Controls, body: &[u8]) -> Response<FakeBody> {
    #[derive(Deserialize)]
    struct SpeechReq {
        input: Option<String>,
        voice: Option<String>,
        response_format: Option<String>,
    }
    let req: SpeechReq = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("We could not parse the JSON body of your request. ({e})");
            return error_json(
                StatusCode::BAD_REQUEST,
                &message,
                "invalid_request_error",
                None,
            );
        }
    };
    let Some(input) = req.input.filter(|i| !i.is_empty()) else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'input'.",
            "invalid_request_error",
            None,
        );
    };
    if req.voice.is_none() {
        return error_json(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'voice'.",
            "invalid_request_error",
            None,
        );
    }
    let format = req.response_format.unwrap_or_else(|| "mp3".to_owned());
    let content_type = match format.as_str() {
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "opus" => "audio/opus",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "pcm" => "audio/pcm",
        other => {
            let message = format!("Invalid value for 'response_format': '{other}'.");
            return error_json(
                StatusCode::BAD_REQUEST,
                &message,
                "invalid_request_error",
                None,
            );
        }
    };
    let audio = Bytes::from(fake_audio(&format, input.split_whitespace().count()));
    let pieces = controls.chunks.unwrap_or(8).max(1);
    let step = audio.len().div_ceil(pieces).max(1);
    let mut items: Vec<Item> = (0..audio.len())
        .step_by(step)
        .map(|at| {
            let piece = audio.slice(at..(at + step).min(audio.len()));
            if at == 0 {
                Item::Data(piece)
            } else {
                Item::Delayed(piece)
            }
        })
        .collect();
    if let Some(n) = controls.cut_after {
        items.truncate(n);
        items.push(Item::Cut);
    }
    response(
        StatusCode::OK,
        content_type,
        FakeBody::events(items, Duration::from_millis(controls.chunk_delay_ms)),
    )
}

/// One part of a multipart/form-data body: `(name, file name, bytes)`.
type FormPart<'a> = (String, Option<String>, &'a [u8]);

/// The parts of a multipart/form-data body.
fn multipart_parts<'a>(content_type: &str, body: &'a [u8]) -> Option<Vec<FormPart<'a>>> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut rest = body;
    let start = memchr::memmem::find(rest, delim.as_bytes())?;
    rest = &rest[start + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Some(out);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = memchr::memmem::find(rest, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&rest[..head_end]).ok()?;
        let content = &rest[head_end + 4..];
        let next = memchr::memmem::find(content, format!("\r\n{delim}").as_bytes())?;
        let disposition = head
            .split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .unwrap_or("");
        let field = |key: &str| {
            disposition.split(';').find_map(|p| {
                p.trim()
                    .strip_prefix(&format!("{key}="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
        };
        out.push((field("name")?, field("filename"), &content[..next]));
        rest = &content[next + 2 + delim.len()..];
    }
}

/// The text of a form field that is not a file.
fn form_text(parts: &[FormPart<'_>], name: &str) -> Option<String> {
    parts
        .iter()
        .find(|(n, f, _)| n == name && f.is_none())
        .map(|(_, _, v)| String::from_utf8_lossy(v).into_owned())
}

/// `POST /v1/audio/transcriptions`: multipart with `file` and `model`; answers the text
/// `"transcribed <bytes> bytes of <file name>"` as `json` (default), `verbose_json` (with
/// `language` and `duration`), or plain `text`.
fn transcription(content_type: &str, body: &[u8]) -> Response<FakeBody> {
    let Some(parts) = multipart_parts(content_type, body) else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "The request body is not valid multipart/form-data.",
            "invalid_request_error",
            None,
        );
    };
    let text_field = |name: &str| form_text(&parts, name);
    let Some((_, filename, data)) = parts.iter().find(|(n, _, _)| n == "file") else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'file'.",
            "invalid_request_error",
            None,
        );
    };
    if text_field("model").is_none() {
        return error_json(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'model'.",
            "invalid_request_error",
            None,
        );
    }
    let name = filename.clone().unwrap_or_default();
    let text = format!("transcribed {} bytes of {name}", data.len());
    let grains: Vec<String> = parts
        .iter()
        .filter(|(n, _, _)| n == "timestamp_granularities[]")
        .map(|(_, _, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    match text_field("response_format").as_deref() {
        Some("text" | "srt" | "vtt") => response(
            StatusCode::OK,
            "text/plain",
            FakeBody::once(Bytes::from(text)),
        ),
        Some("verbose_json") => {
            let mut out = serde_json::json!({"task": "transcribe", "language": text_field("language").unwrap_or_else(|| "english".to_owned()), "duration": 8.0, "text": text, "segments": []});
            if grains.iter().any(|g| g == "word") {
                out["words"] =
                    serde_json::json!([{"word": "transcribed", "start": 0.0, "end": 0.5}]);
            }
            json_response(StatusCode::OK, serde_json::to_vec(&out).unwrap_or_default())
        }
        _ => json_response(
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({"text": text})).unwrap_or_default(),
        ),
    }
}

/// `POST /v1/images/edits`: multipart with `prompt` and `image` (or several `image[]`), and
/// an optional `mask`; answers `n` base64 PNGs whose `revised_prompt` says what was received
/// (`edited <bytes> bytes of <names> [mask <bytes>]: <prompt>`).
fn image_edits(content_type: &str, body: &[u8]) -> Response<FakeBody> {
    let Some(parts) = multipart_parts(content_type, body) else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "The request body is not valid multipart/form-data.",
            "invalid_request_error",
            None,
        );
    };
    let text_field = |name: &str| form_text(&parts, name);
    let Some(prompt) = text_field("prompt").filter(|p| !p.trim().is_empty()) else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'prompt'.",
            "invalid_request_error",
            None,
        );
    };
    let images: Vec<&FormPart<'_>> = parts
        .iter()
        .filter(|(n, _, _)| n == "image" || n == "image[]")
        .collect();
    if images.is_empty() {
        return error_json(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'image'.",
            "invalid_request_error",
            None,
        );
    }
    let bytes: usize = images.iter().map(|(_, _, d)| d.len()).sum();
    let names: Vec<String> = images
        .iter()
        .map(|(_, f, _)| f.clone().unwrap_or_default())
        .collect();
    let mask = parts
        .iter()
        .find(|(n, _, _)| n == "mask")
        .map(|(_, _, d)| format!(" mask {}", d.len()))
        .unwrap_or_default();
    let n = text_field("n")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .clamp(1, 10);
    let revised = format!(
        "edited {bytes} bytes of {}{mask}: {prompt}",
        names.join(",")
    );
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, PIXEL_PNG);
    let data: Vec<serde_json::Value> = (0..n)
        .map(|_| serde_json::json!({"b64_json": b64, "revised_prompt": revised}))
        .collect();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&serde_json::json!({"created": created, "data": data}))
            .unwrap_or_default(),
    )
}

/// `POST /v1/images/generations`: `n` copies of a 1x1 PNG, as `b64_json` or as a URL on this
/// server (`/__files/pixel.png`); DALL-E 3 adds a `revised_prompt`, gpt-image models answer in
/// base64 with token usage, as OpenAI's do.
fn images(body: &[u8], host: &str) -> Response<FakeBody> {
    #[derive(Deserialize)]
    struct ImageReq {
        prompt: Option<String>,
        model: Option<String>,
        n: Option<u64>,
        response_format: Option<String>,
    }
    let req: ImageReq = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("We could not parse the JSON body of your request. ({e})");
            return error_json(
                StatusCode::BAD_REQUEST,
                &message,
                "invalid_request_error",
                None,
            );
        }
    };
    let Some(prompt) = req.prompt.filter(|p| !p.trim().is_empty()) else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'prompt'.",
            "invalid_request_error",
            None,
        );
    };
    let n = req.n.unwrap_or(1);
    if !(1..=10).contains(&n) {
        return error_json(
            StatusCode::BAD_REQUEST,
            "Invalid value for 'n': must be between 1 and 10.",
            "invalid_request_error",
            None,
        );
    }
    let model = req.model.unwrap_or_else(|| "dall-e-2".to_owned());
    let gpt_image = model.starts_with("gpt-image");
    let b64 = gpt_image || req.response_format.as_deref() == Some("b64_json");
    let one = if b64 {
        serde_json::json!({"b64_json": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, PIXEL_PNG)})
    } else {
        serde_json::json!({"url": format!("http://{host}/__files/pixel.png")})
    };
    let data: Vec<serde_json::Value> = (0..n)
        .map(|_| {
            let mut d = one.clone();
            if model.starts_with("dall-e-3") {
                d["revised_prompt"] =
                    serde_json::Value::String(format!("A detailed picture of {prompt}"));
            }
            d
        })
        .collect();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = serde_json::json!({"created": created, "data": data});
    if gpt_image {
        let words = prompt.split_whitespace().count() as u64;
        out["usage"] = serde_json::json!({
            "input_tokens": words,
            "output_tokens": 272 * n,
            "total_tokens": words + 272 * n,
            "input_tokens_details": {"text_tokens": words, "image_tokens": 0},
        });
    }
    match serde_json::to_vec(&out) {
        Ok(b) => json_response(StatusCode::OK, b),
        Err(e) => error_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
            "server_error",
            None,
        ),
    }
}

fn embeddings(body: &[u8]) -> Response<FakeBody> {
    let req: EmbeddingRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("We could not parse the JSON body of your request. ({e})");
            return error_json(
                StatusCode::BAD_REQUEST,
                &message,
                "invalid_request_error",
                None,
            );
        }
    };
    let dims = match req.dimensions {
        None => DEFAULT_EMBEDDING_DIMENSIONS,
        Some(d) => match usize::try_from(d) {
            Ok(d) if (1..=MAX_EMBEDDING_DIMENSIONS).contains(&d) => d,
            _ => {
                return error_json(
                    StatusCode::BAD_REQUEST,
                    "Invalid value for 'dimensions': must be between 1 and 65536.",
                    "invalid_request_error",
                    None,
                )
            }
        },
    };
    let base64 = req.encoding_format.as_deref() == Some("base64");
    // (seed, tokens) per input.
    let seeds: Vec<(u64, u64)> = match &req.input {
        EmbeddingInput::Text(t) => vec![(fnv1a(FNV_OFFSET, t.as_bytes()), word_count(t))],
        EmbeddingInput::Texts(ts) => ts
            .iter()
            .map(|t| (fnv1a(FNV_OFFSET, t.as_bytes()), word_count(t)))
            .collect(),
        EmbeddingInput::Tokens(toks) => vec![token_seed(toks)],
        EmbeddingInput::TokenLists(lists) => lists.iter().map(|l| token_seed(l)).collect(),
    };
    let prompt_tokens = seeds.iter().map(|(_, t)| t).sum();
    let data = seeds
        .iter()
        .enumerate()
        .map(|(index, (seed, _))| {
            let v = embed(*seed, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64_encode(&bytes))
            } else {
                EmbeddingValue::Floats(v)
            };
            EmbeddingData {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let resp = EmbeddingResponse {
        object: "list",
        data,
        model: req.model.as_deref().unwrap_or(FAKE_MODEL_ID),
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    match serde_json::to_vec(&resp) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => error_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
            "server_error",
            None,
        ),
    }
}

fn token_seed(tokens: &[i64]) -> (u64, u64) {
    let seed = tokens
        .iter()
        .fold(FNV_OFFSET ^ 0x5555, |h, t| fnv1a(h, &t.to_le_bytes()));
    (seed, tokens.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_reply_has_twenty_words() {
        assert_eq!(word_count(DEFAULT_REPLY), 20);
    }

    #[test]
    fn base64_matches_reference() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn pieces_concatenate_to_text() {
        for k in [
            None,
            Some(1),
            Some(3),
            Some(7),
            Some(20),
            Some(50),
            Some(500),
        ] {
            let pieces = split_pieces(DEFAULT_REPLY, k);
            assert_eq!(pieces.concat(), DEFAULT_REPLY, "k={k:?}");
            if let Some(k) = k {
                assert_eq!(pieces.len(), k.min(DEFAULT_REPLY.len()), "k={k:?}");
            } else {
                assert_eq!(pieces.len(), 20);
                assert_eq!(pieces[0], "Hello! ");
            }
        }
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate_words("a b c", Some(2)), ("a b", true));
        assert_eq!(truncate_words("a b c", Some(3)), ("a b c", false));
        assert_eq!(truncate_words("a b c", Some(0)), ("", true));
        assert_eq!(truncate_words("a b c", None), ("a b c", false));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(query_param(Some("a=1&key=x%2Fy+z"), "key"), "x/y z");
        assert_eq!(query_param(None, "key"), "");
    }
}
