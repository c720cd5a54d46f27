//! Chat completion request and (unary) response.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A chat request as the pipeline carries it: the caller's model name, the messages, and the
/// OpenAI parameters to send upstream (`temperature`, `tools`, `response_format`, ...), already
/// stripped of LLMux's own options (`api_key`, `num_retries`, ...).
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Value>,
    pub params: Map<String, Value>,
}

impl ChatRequest {
    pub fn new(model: impl Into<String>, messages: Vec<Value>) -> Self {
        ChatRequest {
            model: model.into(),
            messages,
            params: Map::new(),
        }
    }

    /// The output cap the caller asked for: the larger of `max_tokens` and
    /// `max_completion_tokens`.
    pub fn output_cap(&self) -> Option<u64> {
        let a = self.params.get("max_tokens").and_then(Value::as_u64);
        let b = self
            .params
            .get("max_completion_tokens")
            .and_then(Value::as_u64);
        a.max(b)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletion {
    #[serde(default)]
    pub id: String,
    #[serde(default = "object_chat_completion")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn object_chat_completion() -> String {
    "chat.completion".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    #[serde(default = "role_assistant")]
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

pub(crate) fn role_assistant() -> String {
    "assistant".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type", default = "type_function")]
    pub kind: String,
    pub function: FunctionCall,
}

pub(crate) fn type_function() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionCall {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    /// `prompt_tokens_details`, `completion_tokens_details` and vendor additions.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
