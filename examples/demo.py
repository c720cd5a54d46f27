"""LLMux demo: a scripted session against the bundled fake upstream (no keys, no network).

Run with ``make demo``. Shows a unary call, a stream arriving chunk by chunk, an async
fan-out, tool calls, embeddings, and errors: a rate limit retried after the upstream's hint,
a quota error that is never retried, and an HTML error page classified; then the Router, rate
limits per user, the response cache, and the gateway: ``llmux serve`` with
``examples/config.yaml``, called with the official ``openai`` SDK.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

os.environ.setdefault("OPENAI_API_KEY", "sk-demo-not-a-real-key")

import llmux  # noqa: E402
from llmux.testing import FakeUpstream, Gateway  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.yaml")

MSGS = [{"role": "user", "content": "Say hello."}]


def title(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m")


def main() -> None:
    t0 = time.perf_counter()
    with FakeUpstream(threads=1) as fake:
        base = fake.base_url
        print(f"fake upstream on {base} (started in {1000 * (time.perf_counter() - t0):.0f} ms)")

        title("1. completion(): unary")
        r = llmux.completion(model="openai/gpt-4o-mini", messages=MSGS, api_base=base)
        print("content :", r.choices[0].message.content)
        print(
            "usage   :",
            r.usage.prompt_tokens,
            "prompt +",
            r.usage.completion_tokens,
            "completion =",
            r["usage"]["total_tokens"],
        )
        print("hidden  :", {k: r._hidden_params[k] for k in ("custom_llm_provider", "api_base", "attempts")})
        print(f"latency : {r._response_ms:.2f} ms")

        title("2. completion(stream=True): chunks as they arrive (40 ms apart upstream)")
        start = time.perf_counter()
        chunks = []
        for chunk in llmux.completion(
            model="deepseek/deepseek-chat",
            messages=MSGS,
            api_base=base,
            api_key="sk-demo",
            stream=True,
            extra_headers={
                "x-fake-chunk-delay-ms": "40",
                "x-fake-content": "Streaming, one word at a time, from Rust.",
            },
        ):
            chunks.append(chunk)
            piece = chunk.choices[0].delta.content or ""
            print(f"  +{1000 * (time.perf_counter() - start):4.0f} ms  {piece!r}")
        built = llmux.stream_chunk_builder(chunks, messages=MSGS)
        print("rebuilt :", built.choices[0].message.content, "| usage", built.usage.total_tokens)

        title("3. acompletion(): 1000 concurrent requests from one asyncio loop")

        async def fan_out(n: int) -> float:
            s = time.perf_counter()
            rs = await asyncio.gather(
                *[llmux.acompletion(model="gpt-4o-mini", messages=MSGS, api_base=base) for _ in range(n)]
            )
            assert all(x.choices[0].message.content for x in rs)
            return time.perf_counter() - s

        asyncio.run(fan_out(100))
        secs = asyncio.run(fan_out(1000))
        print(f"1000 requests in {secs * 1000:.0f} ms = {1000 / secs:,.0f} requests/s")

        async def astream() -> int:
            s = await llmux.acompletion(model="gpt-4o-mini", messages=MSGS, api_base=base, stream=True)
            return len([c async for c in s])

        print("async stream chunks:", asyncio.run(astream()))

        title("4. tool calls")
        r = llmux.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Weather in Paris and Tokyo?"}],
            api_base=base,
            tools=[
                {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
            ],
            extra_headers={"x-fake-tool-calls": "2"},
        )
        for tc in r.choices[0].message.tool_calls:
            print(f"  {tc.id}: {tc.function.name}({tc.function.arguments})")

        title("5. embeddings")
        e = llmux.embedding(
            model="text-embedding-3-small", input=["hello", "world"], dimensions=4, api_base=base
        )
        print("vectors:", [[round(x, 3) for x in d["embedding"]] for d in e.data])

        title("6. errors, classified and retried only when it can help")
        s = time.perf_counter()
        r = llmux.completion(
            model="gpt-4o-mini",
            messages=MSGS,
            api_base=base,
            num_retries=2,
            extra_headers={
                "x-fake-key": "demo-rl",
                "x-fake-status": "429",
                "x-fake-fail-times": "1",
                "x-fake-retry-after-ms": "300",
            },
        )
        print(
            f"429 with retry-after-ms 300 -> succeeded on attempt {r._hidden_params['attempts']}"
            f" after {1000 * (time.perf_counter() - s):.0f} ms"
        )
        for faults, label in [
            ({"x-fake-status": "429", "x-fake-error-code": "insufficient_quota"}, "quota exhausted"),
            ({"x-fake-status": "502", "x-fake-html": "1"}, "HTML error page"),
            ({"x-fake-status": "400", "x-fake-error-code": "context_length_exceeded"}, "context too long"),
        ]:
            try:
                llmux.completion(
                    model="gpt-4o-mini", messages=MSGS, api_base=base, num_retries=3, extra_headers=faults
                )
            except (llmux.RateLimitError, llmux.BadGatewayError, llmux.BadRequestError) as exc:
                what = f"status {exc.status_code}, kind {exc.kind}, attempts {exc.attempts}"
                print(f"{label:16} -> {type(exc).__name__} ({what})")
                print(f"{'':16}    {exc}")
        try:
            llmux.completion(model="groq/llama-3.1-8b-instant", messages=MSGS)
        except llmux.AuthenticationError as exc:
            print(f"{'no key':16} -> {type(exc).__name__}: {exc.message}")

        title("7. the same call, other providers' native APIs (the fake speaks each dialect)")
        creds = {
            "aws_access_key_id": "AKIDDEMO",
            "aws_secret_access_key": "demo",
            "aws_region_name": "us-east-1",
        }
        for model, extra in [
            ("anthropic/claude-sonnet-4-5", {"api_key": "sk-ant-demo"}),
            ("gemini/gemini-2.5-flash", {"api_key": "demo-key"}),
            ("bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", creds),
            ("azure/my-deployment", {"api_key": "azure-demo"}),
        ]:
            r = llmux.completion(model=model, messages=MSGS, api_base=fake.url, **extra)
            cost = r._hidden_params["response_cost"]
            print(f"  {model:52} -> {r.choices[0].message.content[:32]!r}... cost ${cost or 0:.6f}")

        title("8. Router: retries on another deployment, cooldown, fallback")
        down = {"x-fake-status": "503"}
        router = llmux.Router(
            model_list=[
                {
                    "model_name": "gpt",
                    "litellm_params": {
                        "model": "openai/gpt-4o-mini",
                        "api_base": base,
                        "extra_headers": down,
                    },
                    "model_info": {"id": "gpt-down"},
                },
                {
                    "model_name": "gpt",
                    "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": base},
                    "model_info": {"id": "gpt-up"},
                },
                {
                    "model_name": "flaky",
                    "litellm_params": {"model": "openai/gpt-4o", "api_base": base, "extra_headers": down},
                },
                {
                    "model_name": "backup",
                    "litellm_params": {
                        "model": "anthropic/claude-sonnet-4-5",
                        "api_base": fake.url,
                        "api_key": "sk-ant-demo",
                    },
                },
            ],
            routing_strategy="least-busy",
            allowed_fails=0,
            cooldown_time=30,
            fallbacks=[{"flaky": ["backup"]}],
        )
        served = [router.completion(model="gpt", messages=MSGS)._hidden_params["model_id"] for _ in range(6)]
        print("gpt answered by :", served)
        stats = {s["model_id"]: s for s in router.get_deployment_stats()}
        down_stats = stats["gpt-down"]
        left = down_stats["cooldown_remaining"] or 0
        print(f"gpt-down        : {down_stats['failures']} failure(s), cooling down for {left:.1f} s")
        r = router.completion(model="flaky", messages=MSGS)
        print(
            "flaky answered by group",
            repr(r._hidden_params["model_group"]),
            "after",
            r._hidden_params["additional_headers"]["x-litellm-attempted-fallbacks"],
            "fallback(s)",
        )

        title("9. rate limits (in process here; `distributed: True` shares them through Redis)")
        llmux.set_rate_limit({"requests_per_minute": 3, "tokens_per_minute": 5000, "key_strategy": "user"})
        outcomes = []
        for user in ["alice"] * 5 + ["bob"]:
            try:
                llmux.completion(model="openai/gpt-4o-mini", messages=MSGS, api_base=base, user=user)
                outcomes.append(f"{user}: ok")
            except llmux.RateLimitError as e:
                outcomes.append(f"{user}: 429, retry in {e.retry_after:.0f} s")
        print("calls   :", "; ".join(outcomes))
        stats = llmux.rate_limit_stats() or {}
        print(f"limiter : {stats.get('admitted')} admitted, {stats.get('denied')} refused")
        llmux.set_rate_limit(None)

        title("10. response cache: the repeat never reaches the upstream")
        llmux.cache = llmux.Cache()
        question = [{"role": "user", "content": "What is cached?"}]
        first = llmux.completion(model="openai/gpt-4o-mini", messages=question, api_base=base)
        again = llmux.completion(model="openai/gpt-4o-mini", messages=question, api_base=base)
        for name, r in [("first   ", first), ("repeat  ", again)]:
            hidden = r._hidden_params
            print(f"{name}: cost ${hidden['response_cost']:.6f}, cache_hit {hidden.get('cache_hit', False)}")
        llmux.disable_cache()

        gateway_demo(base)
    print("\ndone.")


def gateway_demo(upstream: str) -> None:
    import openai

    title("11. the gateway: llmux serve --config examples/config.yaml, called with the openai SDK")
    env = {"LLMUX_UPSTREAM": upstream, "LLMUX_MASTER_KEY": "sk-demo-master", "LLMUX_USER_KEY": "sk-demo-user"}
    t0 = time.perf_counter()
    with Gateway(CONFIG, env=env) as gw:
        print(f"gateway on {gw.base_url} (ready in {1000 * (time.perf_counter() - t0):.0f} ms)")
        client = openai.OpenAI(base_url=gw.base_url, api_key="sk-demo-user", max_retries=0)

        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS)
        r = raw.parse()
        print("unary   :", r.choices[0].message.content[:48] + "...")
        print(
            "headers :",
            f"deployment {raw.headers['x-litellm-model-id']},",
            f"{raw.headers['x-ratelimit-remaining-requests']}/{raw.headers['x-ratelimit-limit-requests']}",
            "requests left this minute",
        )

        pieces = []
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        print(f"stream  : {len(pieces)} chunks: {'|'.join(pieces[:6])}|...")

        raw = client.chat.completions.with_raw_response.create(model="flaky", messages=MSGS)
        print(
            "fallback: 'flaky' answered 503; the gateway fell back",
            f"({raw.headers['x-litellm-attempted-fallbacks']} group) and answered 200",
        )

        try:
            while True:
                client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        except openai.RateLimitError as e:
            h = e.response.headers
            print(f"limit   : 429 after 5 requests/min for key 'demo-user'; Retry-After {h['retry-after']} s")

        try:
            openai.OpenAI(base_url=gw.base_url, api_key="sk-wrong", max_retries=0).models.list()
        except openai.AuthenticationError as e:
            print("auth    :", e.status_code, e.body["message"] if isinstance(e.body, dict) else e.body)

        import urllib.request

        metrics = urllib.request.urlopen(f"{gw.url}/metrics").read().decode()
        print("metrics :")
        for line in metrics.splitlines():
            if line.startswith("llmux_requests_total"):
                print("   ", line)
        code = gw.stop()
        print(f"SIGTERM : drained and exited with status {code}")


if __name__ == "__main__":
    sys.exit(main())
