//! Audio requests: text to speech (OpenAI's `audio/speech`) and transcription
//! (`audio/transcriptions`).

use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A speech request: the caller's model name, the text, and the parameters sent upstream
/// (`voice`, `response_format`, `speed`, `instructions`).
#[derive(Debug, Clone, Default)]
pub struct SpeechRequest {
    pub model: String,
    pub input: String,
    pub params: Map<String, Value>,
}

/// An uploaded file (transcription audio, an image to edit): a file on disk (streamed, never
/// loaded whole), bytes already in memory, or a spool file that may still be arriving (the
/// gateway's uploads, sent on while the client is still sending).
#[derive(Debug, Clone)]
pub enum FileSource {
    Path(PathBuf),
    Bytes(Bytes),
    Spool(crate::spool::Spool),
}

/// A transcription request: the caller's model name, the audio, its file name (the upstream
/// infers the format from its extension), and the form fields sent upstream (`language`,
/// `prompt`, `response_format`, `temperature`, `timestamp_granularities`).
#[derive(Debug, Clone)]
pub struct TranscriptionRequest {
    pub model: String,
    pub file: FileSource,
    pub filename: String,
    pub params: Map<String, Value>,
}

/// A transcription: the text, and what else the format carried (`language`, `duration`,
/// `segments`, `words` for `verbose_json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TranscriptionResponse {
    #[serde(default)]
    pub text: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
