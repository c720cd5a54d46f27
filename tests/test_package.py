"""Package-level promises: import cost, no openai import, openai-class compatibility, and the
same script giving the same fields under ``import litellm`` and ``import llmux as litellm``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def run(code: str, env_extra: dict | None = None) -> str:
    import os

    env = dict(os.environ, **(env_extra or {}))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_import_llmux_does_not_import_openai_or_pydantic():
    mods = json.loads(run("import sys, json, llmux; print(json.dumps(sorted(sys.modules)))"))
    for heavy in ("openai", "pydantic", "httpx", "aiohttp"):
        assert heavy not in mods, heavy


def test_openai_exception_classes_catch_llmux_errors(fake):
    code = textwrap.dedent(
        f"""
        import openai, llmux
        try:
            llmux.completion(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}],
                             api_base="{fake.base_url}", api_key="sk-x", extra_headers={{"x-fake-status": "429"}})
        except openai.RateLimitError as e:
            assert isinstance(e, llmux.RateLimitError) and isinstance(e, openai.APIStatusError)
            print("caught", e.status_code)
        """
    )
    assert run(code).strip() == "caught 429"


SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    if sys.argv[1] == "llmux":
        import llmux as litellm
    else:
        import litellm
        litellm.suppress_debug_info = True
    base = sys.argv[2]
    msgs = [{"role": "user", "content": "hello there"}]
    r = litellm.completion(model="openai/gpt-4o-mini", messages=msgs, api_base=base, api_key="sk-x")
    print("content", r.choices[0].message.content)
    print("item", r["choices"][0]["message"]["content"] == r.choices[0].message.content)
    print("usage", r.usage.prompt_tokens, r.usage.completion_tokens, r["usage"]["total_tokens"])
    print("finish", r.choices[0].finish_reason, r.object, r.model)
    print("keys", sorted(r.model_dump()))
    print("message_keys", sorted(r.model_dump()["choices"][0]["message"]))
    text = ""
    for c in litellm.completion(model="openai/gpt-4o-mini", messages=msgs, api_base=base, api_key="sk-x", stream=True):
        text += c.choices[0].delta.content or ""
    print("stream", text)
    async def main():
        s = await litellm.acompletion(model="openai/gpt-4o-mini", messages=msgs, api_base=base, api_key="sk-x",
                                      stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in s]
        built = litellm.stream_chunk_builder(chunks, messages=msgs)
        print("built", built.choices[0].message.content == text, built.usage.completion_tokens)
        r = await litellm.acompletion(model="openai/gpt-4o-mini", messages=msgs, api_base=base, api_key="sk-x",
                                      extra_headers={"x-fake-tool-calls": "1"})
        tc = r.choices[0].message.tool_calls[0]
        print("tool", r.choices[0].finish_reason, tc.id, tc.function.name, tc.function.arguments)
    asyncio.run(main())
    for status in ("429", "401", "404", "400", "503"):
        try:
            litellm.completion(model="openai/gpt-4o-mini", messages=msgs, api_base=base, api_key="sk-x",
                               extra_headers={"x-fake-status": status}, num_retries=0)
        except Exception as e:
            print("error", status, type(e).__name__, e.status_code, e.llm_provider, e.model)
    e = litellm.embedding(model="openai/text-embedding-3-small", input=["a", "b"], api_base=base, api_key="sk-x")
    print("embedding", len(e.data), len(e.data[0]["embedding"]), e.usage.prompt_tokens)
    """
)


def test_same_script_same_fields_as_litellm(fake, tmp_path):
    try:
        import litellm  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the test venv installs it
        raise AssertionError("litellm is not installed in the test venv; `make test` installs it") from exc
    script = tmp_path / "same.py"
    script.write_text(SCRIPT)
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    import os

    outs = {}
    for which in ("litellm", "llmux"):
        p = subprocess.run(
            [sys.executable, str(script), which, fake.base_url],
            capture_output=True,
            text=True,
            timeout=180,
            env=dict(os.environ, **env),
        )
        assert p.returncode == 0, p.stderr[-3000:]
        outs[which] = [
            line
            for line in p.stdout.splitlines()
            if line.split(" ")[0]
            in {
                "content",
                "item",
                "usage",
                "finish",
                "keys",
                "message_keys",
                "stream",
                "built",
                "tool",
                "error",
                "embedding",
            }
        ]
    assert outs["llmux"] == outs["litellm"]
    assert len(outs["llmux"]) == 15
