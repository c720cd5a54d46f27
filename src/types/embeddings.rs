//! Embedding request and response.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chat::Usage;

/// An embedding request: the caller's model name, the input (a string, a list of strings or
/// token arrays) and the parameters to send upstream (`dimensions`, `encoding_format`, `user`).
#[derive(Debug, Clone, Default)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Value,
    pub params: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingResponse {
    #[serde(default = "object_list")]
    pub object: String,
    #[serde(default)]
    pub data: Vec<Value>,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn object_list() -> String {
    "list".to_owned()
}
