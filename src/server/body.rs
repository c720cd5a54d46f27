//! The response body of every route: a whole buffer, a stream of SSE frames, or a binary body
//! (audio), each stream fed by a task through a bounded channel. A binary body whose upstream
//! breaks ends with an error, so that the client sees a cut body rather than a short file. When the client goes away, hyper drops the body, the channel
//! closes, and the feeding task sees it (`Sender::closed`) and drops the upstream call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

pub enum Out {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
    Binary(mpsc::Receiver<io::Result<Bytes>>),
}

impl Out {
    pub fn full(b: impl Into<Bytes>) -> Self {
        Out::Full(Some(b.into()))
    }

    pub fn empty() -> Self {
        Out::Full(None)
    }
}

impl Body for Out {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Out::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Out::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
            Out::Binary(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Out::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Out::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Out::Full(None) => SizeHint::with_exact(0),
            Out::Stream(_) | Out::Binary(_) => SizeHint::default(),
        }
    }
}
