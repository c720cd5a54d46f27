//! OpenAI-shaped wire types: the chat request the pipeline carries, chat completions, stream
//! chunks, embeddings, images and usage.
//!
//! Every provider translates to and from these shapes; the Python layer and the HTTP layer
//! expose them as they are. Fields the types do not name are kept in `extra` and passed on, so
//! that a vendor's additions (`service_tier`, `citations`, ...) reach the caller intact.
//! No I/O here.

use serde_json::Map;

mod audio;
mod chat;
mod embeddings;
mod images;
mod stream;

pub use audio::{FileSource, SpeechRequest, TranscriptionRequest, TranscriptionResponse};
pub use chat::{ChatCompletion, ChatRequest, Choice, FunctionCall, Message, ToolCall, Usage};
pub use embeddings::{EmbeddingRequest, EmbeddingResponse};
use images::image_count;
pub use images::{ImageData, ImageEditRequest, ImageRequest, ImageResponse};
pub use stream::{ChatChunk, ChunkChoice, Delta, DeltaFunction, DeltaToolCall};

/// What an image or audio call consumes, as limits count it: images made, seconds of audio.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Media {
    pub images: u64,
    pub seconds: f64,
}

/// Characters of speech input per second of audio, for estimating a speech's length (about
/// 150 words a minute).
pub const SPEECH_CHARS_PER_SECOND: f64 = 15.0;

/// A media request's own estimate of what it will consume, known before it is sent: the
/// images asked for, a speech's seconds from its input. A transcription's seconds are known
/// only from the answer (estimated as none).
pub trait MediaEstimate {
    fn media_estimate(&self) -> Media;
}

impl MediaEstimate for ImageRequest {
    fn media_estimate(&self) -> Media {
        images_estimate(&self.params)
    }
}

impl MediaEstimate for ImageEditRequest {
    fn media_estimate(&self) -> Media {
        images_estimate(&self.params)
    }
}

impl MediaEstimate for SpeechRequest {
    fn media_estimate(&self) -> Media {
        speech_estimate(&self.input)
    }
}

/// A speech of `input`: its estimated seconds of audio.
pub fn speech_estimate(input: &str) -> Media {
    Media {
        images: 0,
        seconds: input.chars().count() as f64 / SPEECH_CHARS_PER_SECOND,
    }
}

/// An image call with `params`: the images it asks for.
pub fn images_estimate(params: &Map<String, serde_json::Value>) -> Media {
    Media {
        images: image_count(params),
        seconds: 0.0,
    }
}

impl MediaEstimate for TranscriptionRequest {
    fn media_estimate(&self) -> Media {
        Media::default()
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
