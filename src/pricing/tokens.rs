//! Token counting (`token_counter`): the model's own encoding where known, o200k_base for
//! OpenAI's GPT-4o / GPT-4.1 / GPT-5 / o-series and cl100k_base for older OpenAI models; every
//! other model (Claude, Gemini, Llama, ...) is counted with cl100k_base, a documented
//! approximation (their tokenizers are not public or not bundled), as LiteLLM does by default.
//!
//! Chat messages are counted the way OpenAI's cookbook does: 3 tokens per message plus its
//! role and content, 1 more for a `name`, 3 to prime the reply. Tool calls count their name and
//! arguments; tool definitions their JSON; an image part a fixed 85 tokens at `detail: low`
//! and 765 otherwise (the size of a 512x512-tile image; we do not fetch images to measure
//! them). Counting stays off the request path: usage comes from providers.

use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

use crate::error::{Error, ErrorKind, Result};

/// The two bundled encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200k,
    Cl100k,
}

static O200K: OnceLock<std::result::Result<CoreBPE, String>> = OnceLock::new();
static CL100K: OnceLock<std::result::Result<CoreBPE, String>> = OnceLock::new();

fn bpe(enc: Encoding) -> Result<&'static CoreBPE> {
    let cell = match enc {
        Encoding::O200k => {
            O200K.get_or_init(|| tiktoken_rs::o200k_base().map_err(|e| e.to_string()))
        }
        Encoding::Cl100k => {
            CL100K.get_or_init(|| tiktoken_rs::cl100k_base().map_err(|e| e.to_string()))
        }
    };
    cell.as_ref().map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("cannot load the tokenizer: {e}"),
        )
    })
}

/// The encoding used for a model name (with or without a provider prefix).
pub fn encoding_for(model: &str) -> Encoding {
    let m = model.rsplit('/').next().unwrap_or(model);
    let m = m.strip_prefix("ft:").unwrap_or(m);
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
        "gpt-oss",
        "codex",
    ];
    if o200k.iter().any(|p| m.starts_with(p)) {
        Encoding::O200k
    } else {
        Encoding::Cl100k
    }
}

/// Tokens in a text.
pub fn count_text(model: &str, text: &str) -> Result<usize> {
    Ok(bpe(encoding_for(model))?
        .encode_with_special_tokens(text)
        .len())
}

const PER_MESSAGE: usize = 3;
const PER_NAME: usize = 1;
const REPLY_PRIMING: usize = 3;
const IMAGE_LOW: usize = 85;
const IMAGE_DEFAULT: usize = 765;

fn count_content(b: &CoreBPE, content: &Value) -> usize {
    match content {
        Value::String(s) => b.encode_with_special_tokens(s).len(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map_or(0, |t| b.encode_with_special_tokens(t).len()),
                Some("image_url") => {
                    let low = p
                        .get("image_url")
                        .and_then(|i| i.get("detail"))
                        .and_then(Value::as_str)
                        == Some("low");
                    if low {
                        IMAGE_LOW
                    } else {
                        IMAGE_DEFAULT
                    }
                }
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Tokens of a chat prompt (messages and, optionally, tool definitions).
pub fn count_messages(model: &str, messages: &[Value], tools: Option<&Value>) -> Result<usize> {
    let b = bpe(encoding_for(model))?;
    let mut n = REPLY_PRIMING;
    for m in messages {
        n += PER_MESSAGE;
        if let Some(role) = m.get("role").and_then(Value::as_str) {
            n += b.encode_with_special_tokens(role).len();
        }
        if let Some(c) = m.get("content") {
            n += count_content(b, c);
        }
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            n += PER_NAME + b.encode_with_special_tokens(name).len();
        }
        if let Some(Value::Array(calls)) = m.get("tool_calls") {
            for call in calls {
                let f = call.get("function");
                for field in ["name", "arguments"] {
                    if let Some(s) = f.and_then(|f| f.get(field)).and_then(Value::as_str) {
                        n += b.encode_with_special_tokens(s).len();
                    }
                }
            }
        }
    }
    if let Some(t) = tools {
        if !t.is_null() {
            n += b.encode_with_special_tokens(&t.to_string()).len();
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodings_by_model() {
        assert_eq!(encoding_for("gpt-4o-mini"), Encoding::O200k);
        assert_eq!(encoding_for("openai/o3-mini"), Encoding::O200k);
        assert_eq!(encoding_for("gpt-4-turbo"), Encoding::Cl100k);
        assert_eq!(
            encoding_for("anthropic/claude-sonnet-4-5"),
            Encoding::Cl100k
        );
    }

    #[test]
    fn counts() {
        assert_eq!(count_text("gpt-4", "hello world").unwrap(), 2);
        let msgs = [json!({"role": "user", "content": "hello world"})];
        // 3 priming + 3 per message + "user" (1) + "hello world" (2)
        assert_eq!(count_messages("gpt-4", &msgs, None).unwrap(), 9);
        let with_image = [json!({"role": "user", "content": [
            {"type": "text", "text": "hello world"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
        ]})];
        assert_eq!(
            count_messages("gpt-4o", &with_image, None).unwrap(),
            9 + IMAGE_LOW
        );
    }
}
