//! Streams of chat chunks: SSE framing ([`sse`]) and the typed [`ChatStream`] a caller pulls
//! chunks from.
//!
//! A `ChatStream` reads the upstream body, frames SSE events, lets the route's dialect turn
//! each into a chunk, and keeps what the pipeline needs afterwards: the usage, how many chunks
//! were seen, when the first arrived. A body that ends before the stream's end marker (and
//! before every choice finished) is a classified `connection` error, never a silent short
//! answer. Dropping a `ChatStream` drops the HTTP response and so closes the connection.
//!
//! When asked ([`ChatStream::assemble_response`]), a stream also assembles the whole answer
//! from the chunks it hands out ([`assemble`]), for whoever needs it once the stream completed
//! (the response cache). Work to run when a stream completes ([`ChatStream::on_complete`]: the
//! post hooks) runs before the caller is told that the stream ended, so that its effects (a
//! spend counted, an answer cached) are visible to the caller's next call.

pub mod assemble;
pub mod binary;
pub mod sse;

pub use assemble::ChunkAssembler;
pub use binary::BinaryStream;

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};

use crate::error::{Error, ErrorKind, Result};
use crate::http::transport_error;
use std::sync::Arc;

use crate::hooks::{self, ChunkAction, HookContext};
use crate::providers::Route;
use crate::types::{
    ChatChunk, ChatCompletion, ChunkChoice, Delta, DeltaFunction, DeltaToolCall, Usage,
};

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// One understood event of a streamed response.
#[derive(Debug)]
pub enum StreamEvent {
    Chunk(Box<ChatChunk>),
    /// The stream's own end marker (`[DONE]`, `message_stop`, ...).
    Done,
}

/// Turns a dialect's response body, fed in arbitrary pieces, into OpenAI-shaped chunks. Each
/// provider gives one per stream ([`crate::providers::Provider::stream_decoder`]); it may keep
/// state across events (ids, tool-call indexes, usage).
pub trait StreamDecoder: Send {
    /// Adds bytes; appends every event (or classified error) they complete.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Result<StreamEvent>>);

    /// The body ended: appends what the remaining bytes complete, and returns whether bytes of
    /// an unfinished event were left over (the stream was cut mid-event).
    fn finish(&mut self, out: &mut Vec<Result<StreamEvent>>) -> bool;
}

enum Source {
    Http {
        body: ByteStream,
        decoder: Box<dyn StreamDecoder>,
        events: VecDeque<Result<StreamEvent>>,
        route: Box<Route>,
        /// Set at the end of the body: whether an unfinished event was left over.
        eof: Option<bool>,
    },
    Canned(VecDeque<ChatChunk>),
}

/// One chunk for the caller, with usage that arrived for it but is not to be shown as a chunk
/// (the caller did not ask for `stream_options.include_usage`).
#[derive(Debug, Clone)]
pub struct StreamItem {
    pub chunk: ChatChunk,
    pub hidden_usage: Option<Usage>,
}

pub struct ChatStream {
    source: Source,
    /// Usage chunks are shown only when the caller asked for them.
    show_usage_chunk: bool,
    /// A finished chunk held back until we know whether a usage chunk follows.
    held: Option<ChatChunk>,
    /// Chunks read ahead and given back.
    pending: VecDeque<ChatChunk>,
    idle_timeout: Duration,
    finished: bool,
    saw_finish_reason: bool,
    chunks: u64,
    /// Characters of content and tool-call arguments streamed so far.
    streamed_chars: u64,
    first_chunk_at: Option<Instant>,
    usage: Option<Usage>,
    provider: &'static str,
    model: String,
    /// Stream hooks and their call context.
    hooks: Option<(Arc<hooks::Pipeline>, HookContext)>,
    /// Items already pulled (by [`ChatStream::prefetch_first`]), handed out first.
    ready: VecDeque<Result<StreamItem>>,
    /// Called once when the stream ends, fails, or is dropped.
    on_finish: Vec<OnFinish>,
    /// Started when the stream completes; awaited before its end is reported.
    on_complete: Vec<OnComplete>,
    settling: Vec<tokio::task::JoinHandle<()>>,
    /// Builds the whole answer from the chunks handed out, when asked to.
    assembler: Option<Box<ChunkAssembler>>,
}

/// How a stream ended, for whoever tracks it (the router's stats).
#[derive(Debug, Clone)]
pub struct StreamSummary {
    pub chunks: u64,
    /// Characters of content and tool-call arguments streamed (an estimate of the output when
    /// the stream ended without usage).
    pub streamed_chars: u64,
    pub first_chunk_at: Option<Instant>,
    pub usage: Option<Usage>,
    /// The error that ended it, if any; `None` also when the caller dropped it early.
    pub error: Option<crate::error::ErrorKind>,
    pub completed: bool,
    /// The whole answer, for a completed stream asked to assemble it
    /// ([`ChatStream::assemble_response`]).
    pub response: Option<Arc<ChatCompletion>>,
}

type OnFinish = Box<dyn FnOnce(StreamSummary) + Send>;
type OnComplete = Box<dyn FnOnce(StreamSummary) -> BoxFuture<'static, ()> + Send>;

impl Drop for ChatStream {
    fn drop(&mut self) {
        self.fire_finish(None);
    }
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("chunks", &self.chunks)
            .finish()
    }
}

impl ChatStream {
    pub(crate) fn from_http(
        body: ByteStream,
        route: Route,
        caller_model: String,
        show_usage_chunk: bool,
        idle_timeout: Duration,
    ) -> Self {
        let provider = route.provider;
        let decoder = route.dialect.stream_decoder(&route);
        ChatStream {
            source: Source::Http {
                body,
                decoder,
                events: VecDeque::new(),
                route: Box::new(route),
                eof: None,
            },
            show_usage_chunk,
            held: None,
            pending: VecDeque::new(),
            idle_timeout,
            finished: false,
            saw_finish_reason: false,
            chunks: 0,
            streamed_chars: 0,
            first_chunk_at: None,
            usage: None,
            provider,
            model: caller_model,
            hooks: None,
            ready: VecDeque::new(),
            on_finish: Vec::new(),
            on_complete: Vec::new(),
            settling: Vec::new(),
            assembler: None,
        }
    }

    /// A stream replaying chunks already in hand (mock responses, hooks' answers, cache hits).
    /// Its usage chunk is shown; see [`ChatStream::show_usage_chunk`].
    pub fn from_chunks(chunks: Vec<ChatChunk>, provider: &'static str, model: String) -> Self {
        ChatStream {
            source: Source::Canned(chunks.into()),
            show_usage_chunk: true,
            held: None,
            pending: VecDeque::new(),
            idle_timeout: Duration::from_secs(3600),
            finished: false,
            saw_finish_reason: false,
            chunks: 0,
            streamed_chars: 0,
            first_chunk_at: None,
            usage: None,
            provider,
            model,
            hooks: None,
            ready: VecDeque::new(),
            on_finish: Vec::new(),
            on_complete: Vec::new(),
            settling: Vec::new(),
            assembler: None,
        }
    }

    /// Whether a usage-only chunk is handed out as a chunk (the caller asked for
    /// `stream_options.include_usage`) or attached to the last chunk as hidden usage.
    pub fn show_usage_chunk(&mut self, show: bool) {
        self.show_usage_chunk = show;
    }

    /// Calls `f` once when the stream ends, fails or is dropped (callbacks run in the order
    /// they were added).
    pub fn on_finish(&mut self, f: impl FnOnce(StreamSummary) + Send + 'static) {
        self.on_finish.push(Box::new(f));
    }

    /// Runs `f`'s future (spawned on the current runtime) when the stream completes, i.e. ends
    /// at its end marker without an error; the end is reported to the caller once the future
    /// is done. A stream that fails or is dropped before its end never runs it.
    pub fn on_complete(
        &mut self,
        f: impl FnOnce(StreamSummary) -> BoxFuture<'static, ()> + Send + 'static,
    ) {
        self.on_complete.push(Box::new(f));
    }

    /// Assembles the whole answer from the chunks handed out from now on, for
    /// [`StreamSummary::response`] (call it before reading the stream).
    pub fn assemble_response(&mut self) {
        if self.assembler.is_none() {
            self.assembler = Some(Box::default());
        }
    }

    fn fire_finish(&mut self, error: Option<crate::error::ErrorKind>) {
        if self.on_finish.is_empty() && self.on_complete.is_empty() {
            return;
        }
        let completed = self.finished && error.is_none();
        let usage = self.usage.clone();
        let response = match self.assembler.take() {
            Some(a) if completed => Some(Arc::new(a.finish(usage.clone()))),
            _ => None,
        };
        let summary = StreamSummary {
            chunks: self.chunks,
            streamed_chars: self.streamed_chars,
            first_chunk_at: self.first_chunk_at,
            usage,
            error,
            completed,
            response,
        };
        for f in std::mem::take(&mut self.on_finish) {
            f(summary.clone());
        }
        let on_complete = std::mem::take(&mut self.on_complete);
        if !completed || on_complete.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("a stream completed outside a runtime: its completion work is skipped");
            return;
        };
        for f in on_complete {
            self.settling.push(rt.spawn(f(summary.clone())));
        }
    }

    /// Waits for the completion work started when the stream completed.
    async fn settle(&mut self) {
        // Kept in `self` while awaited: a caller that stops waiting midway (a dropped `next`
        // future) waits for the rest on its next call; the work itself runs on regardless.
        while let Some(h) = self.settling.first_mut() {
            if let Err(e) = h.await {
                tracing::warn!(error = %e, "stream completion work failed");
            }
            self.settling.remove(0);
        }
    }

    /// Waits for the first chunk and keeps it for [`ChatStream::next`]. A stream that fails
    /// before its first chunk fails here, where the caller can still retry or fall back
    /// without having shown anything.
    pub async fn prefetch_first(&mut self) -> Result<()> {
        match self.next().await {
            Some(Err(e)) => Err(e),
            Some(Ok(item)) => {
                self.ready.push_back(Ok(item));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Runs `pipeline`'s stream hooks on every chunk from now on.
    pub fn set_hooks(&mut self, pipeline: Arc<hooks::Pipeline>, ctx: HookContext) {
        self.hooks = Some((pipeline, ctx));
    }

    /// Usage reported by the upstream, once its usage chunk has arrived.
    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    pub fn chunks_seen(&self) -> u64 {
        self.chunks
    }

    pub fn first_chunk_at(&self) -> Option<Instant> {
        self.first_chunk_at
    }

    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// The next raw chunk from the source, or `None` at a proper end.
    async fn next_raw(&mut self) -> Option<Result<ChatChunk>> {
        if let Some(c) = self.pending.pop_front() {
            return Some(Ok(c));
        }
        loop {
            let (body, decoder, events, route, eof) = match &mut self.source {
                Source::Canned(q) => return q.pop_front().map(Ok),
                Source::Http {
                    body,
                    decoder,
                    events,
                    route,
                    eof,
                } => (body, decoder, events, route, eof),
            };
            if let Some(ev) = events.pop_front() {
                match ev {
                    Ok(StreamEvent::Chunk(c)) => return Some(Ok(*c)),
                    Ok(StreamEvent::Done) => return None,
                    Err(e) => return Some(Err(e.with_context(route.provider, &route.model))),
                }
            }
            if let Some(partial) = *eof {
                if self.saw_finish_reason && !partial {
                    return None;
                }
                return Some(Err(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "stream ended before completion after {} chunks (no end marker)",
                        self.chunks
                    ),
                )
                .with_context(route.provider, &route.model)));
            }
            let read = tokio::time::timeout(self.idle_timeout, body.next()).await;
            let mut buf = Vec::new();
            match read {
                Err(_) => {
                    return Some(Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "stream stalled: no data for {:?} after {} chunks",
                            self.idle_timeout, self.chunks
                        ),
                    )
                    .with_context(route.provider, &route.model)));
                }
                Ok(Some(Ok(bytes))) => decoder.feed(&bytes, &mut buf),
                Ok(Some(Err(e))) => {
                    let mut err = transport_error(&e, &route.api_base);
                    err.message = format!(
                        "stream interrupted after {} chunks: {}",
                        self.chunks, err.message
                    );
                    return Some(Err(err.with_context(route.provider, &route.model)));
                }
                Ok(None) => *eof = Some(decoder.finish(&mut buf)),
            }
            events.extend(buf);
        }
    }

    /// The next chunk for the caller; `None` at the end. After an error the stream is over.
    pub async fn next(&mut self) -> Option<Result<StreamItem>> {
        if let Some(item) = self.ready.pop_front() {
            return Some(item);
        }
        let out = self.next_inner().await;
        match &out {
            None => {
                self.fire_finish(None);
                self.settle().await;
            }
            Some(Err(e)) => self.fire_finish(Some(e.kind)),
            Some(Ok(item)) => {
                if let Some(a) = &mut self.assembler {
                    a.add(&item.chunk);
                }
            }
        }
        out
    }

    async fn next_inner(&mut self) -> Option<Result<StreamItem>> {
        if self.finished {
            return None;
        }
        loop {
            let raw = self.next_raw().await;
            let chunk = match raw {
                None => {
                    self.finished = true;
                    return self.held.take().map(|chunk| {
                        Ok(StreamItem {
                            chunk,
                            hidden_usage: None,
                        })
                    });
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                Some(Ok(c)) => c,
            };
            let mut chunk = chunk;
            if let Some((pipeline, ctx)) = &self.hooks {
                if pipeline.stream(ctx, &mut chunk) == ChunkAction::Drop {
                    continue;
                }
            }
            if self.first_chunk_at.is_none() {
                self.first_chunk_at = Some(Instant::now());
            }
            self.chunks += 1;
            for c in &chunk.choices {
                let d = &c.delta;
                self.streamed_chars += d.content.as_deref().map_or(0, str::len) as u64;
                for call in d.tool_calls.iter().flatten() {
                    self.streamed_chars += call
                        .function
                        .as_ref()
                        .and_then(|f| f.arguments.as_deref())
                        .map_or(0, str::len) as u64;
                }
            }
            if chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
                self.saw_finish_reason = true;
            }
            if let Some(u) = &chunk.usage {
                self.usage = Some(u.clone());
            }
            let usage_only = chunk.choices.is_empty() && chunk.usage.is_some();
            if usage_only && !self.show_usage_chunk {
                let hidden = chunk.usage;
                return match self.held.take() {
                    Some(held) => Some(Ok(StreamItem {
                        chunk: held,
                        hidden_usage: hidden,
                    })),
                    None => continue,
                };
            }
            if !self.show_usage_chunk && chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
                // Hold the finishing chunk: a usage chunk may follow and belongs to it.
                if let Some(prev) = self.held.replace(chunk) {
                    return Some(Ok(StreamItem {
                        chunk: prev,
                        hidden_usage: None,
                    }));
                }
                continue;
            }
            if let Some(prev) = self.held.take() {
                // Something other than usage followed the held chunk; emit both in order.
                self.push_front(chunk);
                return Some(Ok(StreamItem {
                    chunk: prev,
                    hidden_usage: None,
                }));
            }
            return Some(Ok(StreamItem {
                chunk,
                hidden_usage: None,
            }));
        }
    }

    fn push_front(&mut self, chunk: ChatChunk) {
        // Re-queue a chunk already counted; only reached when a held chunk is followed by more
        // content (several choices finishing at different times).
        self.chunks -= 1;
        self.pending.push_front(chunk);
    }
}

/// A complete response as the chunks a stream of it would have carried: per choice a role
/// chunk, the content, one chunk per tool call, the finish chunk; then a usage chunk. Used to
/// replay answers that did not come from an upstream stream (hooks, cache).
pub fn completion_to_chunks(r: &ChatCompletion) -> Vec<ChatChunk> {
    let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatChunk {
        id: r.id.clone(),
        object: "chat.completion.chunk".into(),
        created: r.created,
        model: r.model.clone(),
        choices,
        usage,
        system_fingerprint: r.system_fingerprint.clone(),
        extra: serde_json::Map::new(),
    };
    let one = |index: u32, delta: Delta, finish: Option<String>| ChunkChoice {
        index,
        delta,
        finish_reason: finish,
        logprobs: None,
    };
    let mut out = Vec::new();
    for c in &r.choices {
        let role = Some(c.message.role.clone());
        out.push(chunk(
            vec![one(
                c.index,
                Delta {
                    role,
                    content: Some(String::new()),
                    ..Default::default()
                },
                None,
            )],
            None,
        ));
        if let Some(text) = c.message.content.as_ref().filter(|t| !t.is_empty()) {
            out.push(chunk(
                vec![one(
                    c.index,
                    Delta {
                        content: Some(text.clone()),
                        ..Default::default()
                    },
                    None,
                )],
                None,
            ));
        }
        for (i, tc) in c.message.tool_calls.iter().flatten().enumerate() {
            let call = DeltaToolCall {
                index: i as u32,
                id: Some(tc.id.clone()),
                kind: Some(tc.kind.clone()),
                function: Some(DeltaFunction {
                    name: Some(tc.function.name.clone()),
                    arguments: Some(tc.function.arguments.clone()),
                }),
            };
            out.push(chunk(
                vec![one(
                    c.index,
                    Delta {
                        tool_calls: Some(vec![call]),
                        ..Default::default()
                    },
                    None,
                )],
                None,
            ));
        }
        out.push(chunk(
            vec![one(
                c.index,
                Delta::default(),
                c.finish_reason.clone().or_else(|| Some("stop".into())),
            )],
            None,
        ));
    }
    if let Some(u) = &r.usage {
        out.push(chunk(Vec::new(), Some(u.clone())));
    }
    out
}
