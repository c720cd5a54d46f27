//! Prices and model facts: the price table, cost of a call, and model info.
//!
//! The table is in LiteLLM's `model_prices_and_context_window.json` format (one JSON object,
//! model name -> entry with `input_cost_per_token`, `output_cost_per_token`,
//! `cache_read_input_token_cost`, `max_input_tokens`, `supports_vision`, ...), so a user can
//! load LiteLLM's file or their own ([`load_file`], [`register`]). A bundled table of current
//! prices for the mainstream models of every supported provider is loaded on first use.
//!
//! Unknown models cost nothing and are counted as unpriced ([`unpriced_count`]); a price lookup
//! never rejects a call.

pub mod tokens;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::types::Usage;

const BUNDLED: &str = include_str!("model_prices.json");

/// One model's entry, as in the JSON file.
pub type Entry = Arc<Map<String, Value>>;

type Table = HashMap<String, Entry>;

static TABLE: OnceLock<RwLock<Arc<Table>>> = OnceLock::new();
static UNPRICED: AtomicU64 = AtomicU64::new(0);

fn parse_table(text: &str) -> Result<Table> {
    let v: Map<String, Value> = serde_json::from_str(text).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("price table is not a JSON object: {e}"),
        )
    })?;
    let mut t = Table::with_capacity(v.len());
    for (k, entry) in v {
        if k == "sample_spec" {
            continue;
        }
        match entry {
            Value::Object(m) => {
                t.insert(k, Arc::new(m));
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("price table entry '{k}' must be an object, got {other}"),
                ))
            }
        }
    }
    Ok(t)
}

fn table() -> &'static RwLock<Arc<Table>> {
    TABLE.get_or_init(|| {
        // The bundled table is checked by a unit test; an error here cannot happen in a build
        // that passed its tests, and would leave the table empty rather than fail calls.
        RwLock::new(Arc::new(parse_table(BUNDLED).unwrap_or_default()))
    })
}

fn snapshot() -> Arc<Table> {
    table()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Adds or replaces entries (LiteLLM's `register_model`): fields given replace the same
/// fields of an existing entry, others are kept.
pub fn register(entries: Map<String, Value>) -> Result<()> {
    let mut additions = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        match v {
            Value::Object(m) => additions.push((k, m)),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("register_model: entry '{k}' must be an object, got {other}"),
                ))
            }
        }
    }
    let lock = table();
    let mut guard = lock.write().unwrap_or_else(PoisonError::into_inner);
    let mut next: Table = (**guard).clone();
    for (k, m) in additions {
        let merged = match next.get(&k) {
            Some(old) => {
                let mut e = (**old).clone();
                e.extend(m);
                e
            }
            None => m,
        };
        next.insert(k, Arc::new(merged));
    }
    *guard = Arc::new(next);
    Ok(())
}

/// Loads a price file in LiteLLM's format; its entries are added over the current table.
/// A file that does not parse leaves the table as it was.
pub fn load_file(path: &std::path::Path) -> Result<usize> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("cannot read price file {}: {e}", path.display()),
        )
    })?;
    let t = parse_table(&text)?;
    let n = t.len();
    let entries: Map<String, Value> = t
        .into_iter()
        .map(|(k, v)| (k, Value::Object((*v).clone())))
        .collect();
    register(entries)?;
    Ok(n)
}

/// A price file that is reloaded when it changes.
struct Watched {
    path: std::path::PathBuf,
    modified: Option<std::time::SystemTime>,
    checked: std::time::Instant,
}

static WATCHED: std::sync::Mutex<Option<Watched>> = std::sync::Mutex::new(None);

/// How often a watched price file's modification time is looked at (on lookups).
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Loads `path` now and reloads it whenever its modification time changes (checked at most
/// once a second, on lookups). A reload that fails keeps the previous prices and is logged.
pub fn watch_file(path: &std::path::Path) -> Result<usize> {
    let n = load_file(path)?;
    let mut w = WATCHED.lock().unwrap_or_else(PoisonError::into_inner);
    *w = Some(Watched {
        path: path.to_owned(),
        modified: modified(path),
        checked: std::time::Instant::now(),
    });
    Ok(n)
}

fn reload_if_changed() {
    let mut w = match WATCHED.try_lock() {
        Ok(w) => w,
        Err(_) => return, // another thread is checking
    };
    let Some(watched) = w.as_mut() else { return };
    if watched.checked.elapsed() < WATCH_INTERVAL {
        return;
    }
    watched.checked = std::time::Instant::now();
    let now = modified(&watched.path);
    if now == watched.modified {
        return;
    }
    match load_file(&watched.path) {
        Ok(n) => {
            watched.modified = now;
            tracing::info!(path = %watched.path.display(), entries = n, "price file reloaded");
        }
        Err(e) => {
            tracing::warn!(path = %watched.path.display(), error = %e, "price file reload failed; keeping the previous prices")
        }
    }
}

/// How many cost computations found no price.
pub fn unpriced_count() -> u64 {
    UNPRICED.load(Ordering::Relaxed)
}

/// The candidate keys for a model, most specific first: `provider/model`, `model`, and the
/// model without a `provider/` prefix it already carries.
fn candidates(provider: Option<&str>, model: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(4);
    if let Some(p) = provider {
        if !model.starts_with(&format!("{p}/")) {
            out.push(format!("{p}/{model}"));
        }
    }
    out.push(model.to_owned());
    if let Some((_, rest)) = model.split_once('/') {
        out.push(rest.to_owned());
        // bedrock/converse/<id> and regional inference profiles (us.anthropic...)
        if let Some(id) = rest.strip_prefix("converse/") {
            out.push(id.to_owned());
        }
    }
    let bare = out.last().cloned().unwrap_or_default();
    for region in ["us.", "eu.", "apac.", "global."] {
        if let Some(id) = bare.strip_prefix(region) {
            out.push(id.to_owned());
        }
    }
    out
}

/// The entry for a model (`provider` is the route's provider prefix, when known).
pub fn lookup(provider: Option<&str>, model: &str) -> Option<Entry> {
    reload_if_changed();
    let t = snapshot();
    candidates(provider, model)
        .iter()
        .find_map(|k| t.get(k).cloned())
}

fn num(e: &Map<String, Value>, k: &str) -> Option<f64> {
    e.get(k).and_then(Value::as_f64)
}

fn detail(u: &Usage, group: &str, field: &str) -> u64 {
    u.extra
        .get(group)
        .and_then(|g| g.get(field))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The cost in USD of `n` generated images, from LiteLLM's image entries: keys
/// `{quality}/{W}-x-{H}/{model}`, then `{W}-x-{H}/{model}`, then `{model}`; priced per image
/// (`output_cost_per_image`, `input_cost_per_image`) or per pixel (`input_cost_per_pixel` x
/// W x H). Without a size, 1024x1024; without a quality, `standard` (DALL-E's default).
pub fn image_cost(
    provider: Option<&str>,
    model: &str,
    size: Option<&str>,
    quality: Option<&str>,
    n: u64,
) -> Option<f64> {
    let size = size.unwrap_or("1024x1024");
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.trim().parse::<f64>().ok()?, h.trim().parse::<f64>().ok()?)))
        .unwrap_or((1024.0, 1024.0));
    let dashed = size.replace('x', "-x-");
    let bare = model.rsplit_once('/').map_or(model, |(_, m)| m);
    let quality = quality.unwrap_or("standard");
    let keys = [
        format!("{quality}/{dashed}/{bare}"),
        format!("{dashed}/{bare}"),
        bare.to_owned(),
    ];
    let entry = keys.iter().find_map(|k| lookup(provider, k))?;
    let per_image = num(&entry, "output_cost_per_image")
        .filter(|c| *c > 0.0)
        .or_else(|| num(&entry, "input_cost_per_image").filter(|c| *c > 0.0))
        .or_else(|| num(&entry, "input_cost_per_pixel").map(|p| p * w * h))?;
    Some(per_image * n as f64)
}

/// The cost in USD of transcribing `seconds` of audio (`input_cost_per_second`).
pub fn transcription_cost(provider: Option<&str>, model: &str, seconds: f64) -> Option<f64> {
    let entry = lookup(provider, model)?;
    num(&entry, "input_cost_per_second").map(|c| c * seconds)
}

/// The cost in USD of speaking `input` (`input_cost_per_character`).
pub fn speech_cost(provider: Option<&str>, model: &str, input: &str) -> Option<f64> {
    let entry = lookup(provider, model)?;
    num(&entry, "input_cost_per_character").map(|c| c * input.chars().count() as f64)
}

/// The cost of one call in USD: `(prompt, completion)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    pub prompt: f64,
    pub completion: f64,
}

impl Cost {
    pub fn total(&self) -> f64 {
        self.prompt + self.completion
    }
}

/// Prices `usage` with an entry. Prompt tokens that were read from the provider's cache
/// (`prompt_tokens_details.cached_tokens`) are priced at `cache_read_input_token_cost`, tokens
/// written to it (`cache_creation_input_tokens`) at `cache_creation_input_token_cost`;
/// reasoning tokens at `output_cost_per_reasoning_token` when the model has one.
pub fn cost_with(entry: &Map<String, Value>, usage: &Usage) -> Cost {
    let input = num(entry, "input_cost_per_token").unwrap_or(0.0);
    let output = num(entry, "output_cost_per_token").unwrap_or(0.0);
    let cached = detail(usage, "prompt_tokens_details", "cached_tokens");
    let created = usage
        .extra
        .get("cache_creation_input_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let plain_prompt = usage.prompt_tokens.saturating_sub(cached + created);
    let prompt = plain_prompt as f64 * input
        + cached as f64 * num(entry, "cache_read_input_token_cost").unwrap_or(input)
        + created as f64 * num(entry, "cache_creation_input_token_cost").unwrap_or(input);
    let reasoning = detail(usage, "completion_tokens_details", "reasoning_tokens");
    let completion = match num(entry, "output_cost_per_reasoning_token") {
        Some(r) => {
            usage.completion_tokens.saturating_sub(reasoning) as f64 * output + reasoning as f64 * r
        }
        None => usage.completion_tokens as f64 * output,
    };
    Cost { prompt, completion }
}

/// The cost of a call, or `None` (counted as unpriced) when the model has no price.
pub fn cost(provider: Option<&str>, model: &str, usage: &Usage) -> Option<Cost> {
    match lookup(provider, model) {
        Some(e) => Some(cost_with(&e, usage)),
        None => {
            UNPRICED.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The whole table as `(name, entry)` pairs (for `llmux.model_cost`).
pub fn entries() -> Vec<(String, Entry)> {
    snapshot()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_costs_follow_size_and_quality() {
        let std = image_cost(Some("openai"), "dall-e-3", Some("1024x1024"), None, 1).unwrap();
        assert!((std - 0.04).abs() < 1e-4, "{std}");
        let hd = image_cost(Some("openai"), "openai/dall-e-3", None, Some("hd"), 2).unwrap();
        assert!((hd - 0.16).abs() < 1e-4, "{hd}");
        let small = image_cost(Some("openai"), "dall-e-2", Some("256x256"), None, 1).unwrap();
        assert!((small - 0.016).abs() < 1e-4, "{small}");
        let gi = image_cost(
            Some("openai"),
            "gpt-image-1",
            Some("1024x1536"),
            Some("low"),
            1,
        );
        assert_eq!(gi, Some(0.016));
        assert_eq!(
            image_cost(Some("openai"), "no-such-painter", None, None, 1),
            None
        );
    }
    use serde_json::json;

    fn usage(p: u64, c: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: p + c,
            extra: Map::new(),
        }
    }

    #[test]
    fn bundled_table_parses_and_has_the_mainstream_models() {
        let t = parse_table(BUNDLED).unwrap();
        assert!(t.len() > 500, "{}", t.len());
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "claude-sonnet-4-5",
            "gemini/gemini-2.5-flash",
            "text-embedding-3-small",
        ] {
            assert!(t.contains_key(m), "{m}");
        }
    }

    #[test]
    fn costs_like_litellm() {
        // LiteLLM: cost_per_token("gpt-4o", 1000, 1000) == (0.0025, 0.01)
        let c = cost(Some("openai"), "gpt-4o", &usage(1000, 1000)).unwrap();
        assert!(
            (c.prompt - 0.0025).abs() < 1e-12 && (c.completion - 0.01).abs() < 1e-12,
            "{c:?}"
        );
        // Provider-qualified names and prefixes resolve to the same entry.
        assert_eq!(
            cost(Some("openai"), "openai/gpt-4o", &usage(1000, 1000)),
            Some(c)
        );
        assert!(lookup(Some("gemini"), "gemini-2.5-flash").is_some());
        assert!(lookup(
            Some("bedrock"),
            "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
        )
        .is_some());
    }

    #[test]
    fn cached_prompt_tokens_are_cheaper() {
        let mut u = usage(1000, 0);
        u.extra.insert(
            "prompt_tokens_details".into(),
            json!({"cached_tokens": 800}),
        );
        let c = cost(Some("openai"), "gpt-4o", &u).unwrap();
        // 200 at 2.5e-6 + 800 at 1.25e-6
        assert!(
            (c.prompt - (200.0 * 2.5e-6 + 800.0 * 1.25e-6)).abs() < 1e-12,
            "{c:?}"
        );
    }

    #[test]
    fn unknown_models_cost_nothing_and_are_counted() {
        let before = unpriced_count();
        assert_eq!(
            cost(Some("openai"), "no-such-model-xyz", &usage(10, 10)),
            None
        );
        assert!(unpriced_count() > before);
    }

    #[test]
    fn watched_file_reloads_on_change() {
        let dir = std::env::temp_dir().join(format!("llmux-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prices.json");
        std::fs::write(&path, r#"{"watched-model": {"input_cost_per_token": 1.0}}"#).unwrap();
        watch_file(&path).unwrap();
        assert_eq!(
            num(
                &lookup(None, "watched-model").unwrap(),
                "input_cost_per_token"
            ),
            Some(1.0)
        );
        std::thread::sleep(WATCH_INTERVAL + std::time::Duration::from_millis(50));
        std::fs::write(&path, r#"{"watched-model": {"input_cost_per_token": 2.0}}"#).unwrap();
        // Make sure the modification time differs even on coarse clocks.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(
            num(
                &lookup(None, "watched-model").unwrap(),
                "input_cost_per_token"
            ),
            Some(2.0)
        );
        // A broken file keeps the previous prices.
        std::thread::sleep(WATCH_INTERVAL + std::time::Duration::from_millis(50));
        std::fs::write(&path, "not json").unwrap();
        let later = later + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(
            num(
                &lookup(None, "watched-model").unwrap(),
                "input_cost_per_token"
            ),
            Some(2.0)
        );
        *WATCHED.lock().unwrap() = None;
    }

    #[test]
    fn register_overrides_and_adds() {
        let mut m = Map::new();
        m.insert(
            "my-private-model".into(),
            json!({"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}),
        );
        register(m).unwrap();
        let c = cost(None, "my-private-model", &usage(10, 10)).unwrap();
        assert!((c.total() - 3e-5).abs() < 1e-15);
        let mut bad = Map::new();
        bad.insert("x".into(), json!(3));
        assert_eq!(register(bad).unwrap_err().kind, ErrorKind::InvalidConfig);
    }
}
