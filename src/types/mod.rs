//! OpenAI-shaped wire types: the chat request the pipeline carries, chat completions, stream
//! chunks, embeddings, images and usage.
//!
//! Every provider translates to and from these shapes; the Python layer and the HTTP layer
//! expose them as they are. Fields the types do not name are kept in `extra` and passed on, so
//! that a vendor's additions (`service_tier`, `citations`, ...) reach the caller intact.
//! No I/O here.

mod audio;
mod chat;
mod embeddings;
mod images;
mod stream;

pub use audio::{FileSource, SpeechRequest, TranscriptionRequest, TranscriptionResponse};
pub use chat::{ChatCompletion, ChatRequest, Choice, FunctionCall, Message, ToolCall, Usage};
pub use embeddings::{EmbeddingRequest, EmbeddingResponse};
pub use images::{ImageData, ImageEditRequest, ImageRequest, ImageResponse};
pub use stream::{ChatChunk, ChunkChoice, Delta, DeltaFunction, DeltaToolCall};

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
