"""Integration base classes (LiteLLM's ``litellm.integrations`` layout)."""
