//! The table of OpenAI-compatible vendors: for each LiteLLM prefix, the default base URL and the
//! environment variables that hold its key and base URL. Adding a vendor is adding a row.

/// One OpenAI-compatible vendor.
#[derive(Debug)]
pub struct Vendor {
    /// The model prefix, as LiteLLM spells it (`deepseek` in `deepseek/deepseek-chat`).
    pub prefix: &'static str,
    /// The name used in error messages (`DeepseekException - ...`).
    pub display: &'static str,
    /// Base URL when neither the call nor the environment gives one; `None` means one is required.
    pub default_base: Option<&'static str>,
    /// Environment variables holding the base URL, first found wins.
    pub base_env: &'static [&'static str],
    /// Environment variables holding the key, first found wins.
    pub key_env: &'static [&'static str],
    /// Whether a request without a key is an error before it is sent (local servers need none).
    pub key_required: bool,
    /// Appended to a base URL taken from the environment or the call when it is missing
    /// (Ollama and LM Studio serve the OpenAI API under `/v1`).
    pub base_suffix: Option<&'static str>,
    /// Whether the vendor honours `stream_options.include_usage`; when it does we always ask
    /// for usage, so that streams can be costed and limited.
    pub stream_usage: bool,
}

const fn v(
    prefix: &'static str,
    display: &'static str,
    default_base: Option<&'static str>,
    base_env: &'static [&'static str],
    key_env: &'static [&'static str],
    key_required: bool,
) -> Vendor {
    Vendor {
        prefix,
        display,
        default_base,
        base_env,
        key_env,
        key_required,
        base_suffix: None,
        stream_usage: true,
    }
}

pub static VENDORS: &[Vendor] = &[
    v(
        "openai",
        "OpenAI",
        Some("https://api.openai.com/v1"),
        &["OPENAI_BASE_URL", "OPENAI_API_BASE"],
        &["OPENAI_API_KEY"],
        true,
    ),
    v(
        "deepseek",
        "Deepseek",
        Some("https://api.deepseek.com/v1"),
        &["DEEPSEEK_API_BASE"],
        &["DEEPSEEK_API_KEY"],
        true,
    ),
    v(
        "groq",
        "Groq",
        Some("https://api.groq.com/openai/v1"),
        &["GROQ_API_BASE"],
        &["GROQ_API_KEY"],
        true,
    ),
    v(
        "mistral",
        "Mistral",
        Some("https://api.mistral.ai/v1"),
        &["MISTRAL_API_BASE"],
        &["MISTRAL_API_KEY"],
        true,
    ),
    v(
        "together_ai",
        "Together_ai",
        Some("https://api.together.xyz/v1"),
        &["TOGETHERAI_API_BASE"],
        &[
            "TOGETHERAI_API_KEY",
            "TOGETHER_AI_API_KEY",
            "TOGETHER_API_KEY",
        ],
        true,
    ),
    v(
        "openrouter",
        "Openrouter",
        Some("https://openrouter.ai/api/v1"),
        &["OPENROUTER_API_BASE"],
        &["OPENROUTER_API_KEY", "OR_API_KEY"],
        true,
    ),
    v(
        "xai",
        "Xai",
        Some("https://api.x.ai/v1"),
        &["XAI_API_BASE"],
        &["XAI_API_KEY"],
        true,
    ),
    v(
        "fireworks_ai",
        "Fireworks_ai",
        Some("https://api.fireworks.ai/inference/v1"),
        &["FIREWORKS_AI_API_BASE", "FIREWORKS_API_BASE"],
        &[
            "FIREWORKS_AI_API_KEY",
            "FIREWORKS_API_KEY",
            "FIREWORKSAI_API_KEY",
        ],
        true,
    ),
    v(
        "perplexity",
        "Perplexity",
        Some("https://api.perplexity.ai"),
        &["PERPLEXITY_API_BASE"],
        &["PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"],
        true,
    ),
    v(
        "deepinfra",
        "Deepinfra",
        Some("https://api.deepinfra.com/v1/openai"),
        &["DEEPINFRA_API_BASE"],
        &["DEEPINFRA_API_KEY"],
        true,
    ),
    v(
        "cerebras",
        "Cerebras",
        Some("https://api.cerebras.ai/v1"),
        &["CEREBRAS_API_BASE"],
        &["CEREBRAS_API_KEY"],
        true,
    ),
    v(
        "nvidia_nim",
        "Nvidia_nim",
        Some("https://integrate.api.nvidia.com/v1"),
        &["NVIDIA_NIM_API_BASE"],
        &["NVIDIA_NIM_API_KEY"],
        true,
    ),
    v(
        "hosted_vllm",
        "Hosted_vllm",
        None,
        &["HOSTED_VLLM_API_BASE"],
        &["HOSTED_VLLM_API_KEY"],
        false,
    ),
    Vendor {
        base_suffix: Some("/v1"),
        ..v(
            "ollama_chat",
            "Ollama_chat",
            Some("http://localhost:11434/v1"),
            &["OLLAMA_API_BASE"],
            &[],
            false,
        )
    },
    Vendor {
        base_suffix: Some("/v1"),
        ..v(
            "ollama",
            "Ollama",
            Some("http://localhost:11434/v1"),
            &["OLLAMA_API_BASE"],
            &[],
            false,
        )
    },
    Vendor {
        base_suffix: Some("/v1"),
        ..v(
            "lm_studio",
            "Lm_studio",
            Some("http://localhost:1234/v1"),
            &["LM_STUDIO_API_BASE"],
            &["LM_STUDIO_API_KEY"],
            false,
        )
    },
    v(
        "dashscope",
        "Dashscope",
        Some("https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
        &["DASHSCOPE_API_BASE"],
        &["DASHSCOPE_API_KEY"],
        true,
    ),
    v(
        "moonshot",
        "Moonshot",
        Some("https://api.moonshot.ai/v1"),
        &["MOONSHOT_API_BASE"],
        &["MOONSHOT_API_KEY"],
        true,
    ),
    v(
        "siliconflow",
        "Siliconflow",
        Some("https://api.siliconflow.com/v1"),
        &["SILICONFLOW_API_BASE"],
        &["SILICONFLOW_API_KEY"],
        true,
    ),
    v(
        "volcengine",
        "Volcengine",
        Some("https://ark.cn-beijing.volces.com/api/v3"),
        &["VOLCENGINE_API_BASE"],
        &["VOLCENGINE_API_KEY", "ARK_API_KEY"],
        true,
    ),
    v(
        "openai_like",
        "Openai_like",
        None,
        &["OPENAI_LIKE_API_BASE"],
        &["OPENAI_LIKE_API_KEY"],
        false,
    ),
    v(
        "custom_openai",
        "Custom_openai",
        None,
        &[],
        &["OPENAI_API_KEY"],
        false,
    ),
];

pub fn vendor(prefix: &str) -> Option<&'static Vendor> {
    VENDORS.iter().find(|v| v.prefix == prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for v in VENDORS {
            assert!(seen.insert(v.prefix), "duplicate {}", v.prefix);
            if let Some(b) = v.default_base {
                assert!(b.starts_with("http"), "{}", v.prefix);
                assert!(!b.ends_with('/'), "{}", v.prefix);
            }
        }
    }
}
