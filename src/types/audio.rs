//! Audio requests: text to speech (OpenAI's `audio/speech`).

use serde_json::{Map, Value};

/// A speech request: the caller's model name, the text, and the parameters sent upstream
/// (`voice`, `response_format`, `speed`, `instructions`).
#[derive(Debug, Clone, Default)]
pub struct SpeechRequest {
    pub model: String,
    pub input: String,
    pub params: Map<String, Value>,
}
