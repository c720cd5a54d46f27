//! Assembling a whole chat completion from the chunks of its stream.
//!
//! [`ChunkAssembler`] takes chunks in order and gives back the `ChatCompletion` they amount to:
//! per choice the role, the content, the tool calls (their id, type, name and arguments, merged
//! by index), a legacy `function_call`, content log probabilities, the finish reason, and
//! vendor fields of the deltas (strings are concatenated, lists extended, anything else is
//! the last value seen); the id, model, creation time and system fingerprint of the first chunk
//! that carries them; the usage given at the end. Fields of the chunks themselves beyond those
//! are not kept. It is the inverse of [`super::completion_to_chunks`]: replaying a response as
//! chunks and assembling them gives the response back.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::types::{
    ChatChunk, ChatCompletion, Choice, ChunkChoice, FunctionCall, Message, ToolCall, Usage,
};

#[derive(Debug, Default)]
struct ToolAcc {
    id: String,
    kind: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Debug, Default)]
struct ChoiceAcc {
    role: Option<String>,
    content: Option<String>,
    tool_calls: BTreeMap<u32, ToolAcc>,
    function_call: Option<(String, String)>,
    logprobs: Option<Vec<Value>>,
    finish_reason: Option<String>,
    extra: Map<String, Value>,
}

/// Builds a `ChatCompletion` out of stream chunks.
#[derive(Debug, Default)]
pub struct ChunkAssembler {
    id: String,
    created: i64,
    model: String,
    system_fingerprint: Option<String>,
    choices: BTreeMap<u32, ChoiceAcc>,
}

impl ChunkAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one chunk.
    pub fn add(&mut self, chunk: &ChatChunk) {
        if self.id.is_empty() && !chunk.id.is_empty() {
            self.id.clone_from(&chunk.id);
        }
        if self.created == 0 {
            self.created = chunk.created;
        }
        if self.model.is_empty() && !chunk.model.is_empty() {
            self.model.clone_from(&chunk.model);
        }
        if self.system_fingerprint.is_none() {
            self.system_fingerprint
                .clone_from(&chunk.system_fingerprint);
        }
        for c in &chunk.choices {
            self.add_choice(c);
        }
    }

    fn add_choice(&mut self, c: &ChunkChoice) {
        let acc = self.choices.entry(c.index).or_default();
        let d = &c.delta;
        if acc.role.is_none() {
            acc.role.clone_from(&d.role);
        }
        if let Some(text) = &d.content {
            acc.content.get_or_insert_with(String::new).push_str(text);
        }
        for tc in d.tool_calls.iter().flatten() {
            let t = acc.tool_calls.entry(tc.index).or_default();
            if let Some(id) = tc.id.as_ref().filter(|s| !s.is_empty()) {
                t.id.clone_from(id);
            }
            if tc.kind.is_some() {
                t.kind.clone_from(&tc.kind);
            }
            if let Some(f) = &tc.function {
                if let Some(n) = &f.name {
                    t.name.push_str(n);
                }
                if let Some(a) = &f.arguments {
                    t.arguments.push_str(a);
                }
            }
        }
        if let Some(fc) = &d.function_call {
            let (name, args) = acc.function_call.get_or_insert_with(Default::default);
            if let Some(n) = fc.get("name").and_then(Value::as_str) {
                name.push_str(n);
            }
            if let Some(a) = fc.get("arguments").and_then(Value::as_str) {
                args.push_str(a);
            }
        }
        if let Some(items) = c
            .logprobs
            .as_ref()
            .and_then(|l| l.get("content"))
            .and_then(Value::as_array)
        {
            acc.logprobs
                .get_or_insert_with(Vec::new)
                .extend(items.iter().cloned());
        }
        if c.finish_reason.is_some() {
            acc.finish_reason.clone_from(&c.finish_reason);
        }
        for (k, v) in &d.extra {
            merge_field(&mut acc.extra, k, v);
        }
    }

    /// The response the chunks amount to, with `usage`.
    pub fn finish(self, usage: Option<Usage>) -> ChatCompletion {
        let choices = self
            .choices
            .into_iter()
            .map(|(index, acc)| {
                let tool_calls: Vec<ToolCall> = acc
                    .tool_calls
                    .into_values()
                    .map(|t| ToolCall {
                        id: t.id,
                        kind: t.kind.unwrap_or_else(|| "function".to_owned()),
                        function: FunctionCall {
                            name: t.name,
                            arguments: t.arguments,
                        },
                    })
                    .collect();
                // OpenAI answers `content: null` beside tool calls, not "".
                let content = match acc.content {
                    Some(t) if t.is_empty() && !tool_calls.is_empty() => None,
                    other => other,
                };
                Choice {
                    index,
                    message: Message {
                        role: acc.role.unwrap_or_else(|| "assistant".to_owned()),
                        content,
                        tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                        function_call: acc.function_call.map(|(name, arguments)| {
                            serde_json::json!({"name": name, "arguments": arguments})
                        }),
                        extra: acc.extra,
                    },
                    finish_reason: acc.finish_reason,
                    logprobs: acc
                        .logprobs
                        .map(|items| serde_json::json!({ "content": items })),
                    extra: Map::new(),
                }
            })
            .collect();
        ChatCompletion {
            id: self.id,
            object: "chat.completion".to_owned(),
            created: self.created,
            model: self.model,
            choices,
            usage,
            system_fingerprint: self.system_fingerprint,
            extra: Map::new(),
        }
    }
}

/// Merges one delta field into the message: strings concatenate, lists extend, anything else
/// replaces.
fn merge_field(into: &mut Map<String, Value>, key: &str, v: &Value) {
    match (into.get_mut(key), v) {
        (Some(Value::String(acc)), Value::String(s)) => acc.push_str(s),
        (Some(Value::Array(acc)), Value::Array(items)) => acc.extend(items.iter().cloned()),
        (_, Value::Null) => {}
        _ => {
            into.insert(key.to_owned(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::completion_to_chunks;
    use serde_json::json;

    #[test]
    fn replay_then_assemble_gives_the_response_back() {
        let r: ChatCompletion = serde_json::from_value(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "system_fingerprint": "fp",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
                ]}, "finish_reason": "tool_calls"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        }))
        .unwrap();
        let mut a = ChunkAssembler::new();
        let chunks = completion_to_chunks(&r);
        let usage = chunks.iter().find_map(|c| c.usage.clone());
        for c in &chunks {
            a.add(c);
        }
        assert_eq!(a.finish(usage), r);
    }

    #[test]
    fn pieces_are_merged() {
        let chunks: Vec<ChatChunk> = serde_json::from_value(json!([
            {"id": "x", "model": "m", "created": 1, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "reasoning_content": "th"}}]},
            {"id": "x", "choices": [{"index": 0, "delta": {"content": "Hel", "reasoning_content": "ink"}}]},
            {"id": "x", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
            {"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]}}]},
            {"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]},
            {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        ]))
        .unwrap();
        let mut a = ChunkAssembler::new();
        for c in &chunks {
            a.add(c);
        }
        let r = a.finish(None);
        let m = &r.choices[0].message;
        assert_eq!(m.content.as_deref(), Some("Hello"));
        assert_eq!(m.extra["reasoning_content"], "think");
        let tc = &m.tool_calls.as_ref().unwrap()[0];
        assert_eq!((tc.id.as_str(), tc.function.name.as_str()), ("c", "f"));
        assert_eq!(tc.function.arguments, "{\"a\":1}");
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!((r.id.as_str(), r.model.as_str(), r.created), ("x", "m", 1));
    }
}
