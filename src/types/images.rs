//! Image generation request and response (OpenAI's `images/generations`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An image generation request: the caller's model name, the prompt, and the parameters sent
/// upstream (`n`, `size`, `quality`, `style`, `response_format`, `user`, vendor options).
#[derive(Debug, Clone, Default)]
pub struct ImageRequest {
    pub model: String,
    pub prompt: String,
    pub params: Map<String, Value>,
}

impl ImageRequest {
    /// How many images are asked for (`n`, default 1).
    pub fn count(&self) -> u64 {
        image_count(&self.params)
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.params.get(key).and_then(Value::as_str)
    }

    /// `size`, e.g. `1024x1024` (`auto` and absent: `None`).
    pub fn size(&self) -> Option<&str> {
        self.text("size").filter(|s| *s != "auto")
    }

    /// `quality`: `standard` / `hd` (DALL-E 3), `low` / `medium` / `high` (gpt-image).
    pub fn quality(&self) -> Option<&str> {
        self.text("quality").filter(|s| *s != "auto")
    }
}

/// How many images `params` ask for (`n`, a number or a form field's text; default 1).
pub fn image_count(params: &Map<String, Value>) -> u64 {
    let n = match params.get("n") {
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(v) => v.as_u64(),
        None => None,
    };
    n.unwrap_or(1).max(1)
}

/// An image edit request: the prompt, the image(s) to edit with their file names, an optional
/// mask, and the parameters sent upstream (`n`, `size`, `quality`, `response_format`, ...).
#[derive(Debug, Clone)]
pub struct ImageEditRequest {
    pub model: String,
    pub prompt: String,
    pub images: Vec<(super::FileSource, String)>,
    pub mask: Option<(super::FileSource, String)>,
    pub params: Map<String, Value>,
}

/// One generated image: a URL or base64 data, and the prompt as the model rewrote it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ImageData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ImageResponse {
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub data: Vec<ImageData>,
    /// gpt-image models report token usage (`input_tokens`, `output_tokens`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
