"""`llmux serve`: the gateway as a real OS process, driven by the official `openai` client
(sync, async, streaming) and by raw HTTP for bad input, against the fake upstream.

Each test asks the gateway for a model group whose deployment carries the fault it needs
(`extra_headers` with `x-fake-*`), and reads the upstream's own counters to see what reached
it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import threading
import time
import urllib.request
import uuid

import openai
import pytest

from llmux.testing import Gateway

REPLY = (
    "Hello! This is the fake upstream speaking. Every answer you receive from me is exactly "
    "twenty words long and deterministic."
)
MSGS = [{"role": "user", "content": "hello there"}]
MASTER = "sk-master-7f3a9c"
ALICE = "sk-alice-5b1e22"
BOB = "sk-bob-90c4d1"
OLD = "sk-old-44aa01"
UPSTREAM_KEY = "sk-upstream-secret-31337"


def deployment(name: str, fake, **headers: str) -> str:
    h = "".join(f'\n        {k}: "{v}"' for k, v in headers.items())
    extra = f"\n      extra_headers:{h}" if headers else ""
    return f"""
  - model_name: {name}
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {fake.base_url}
      api_key: os.environ/LLMUX_TEST_UPSTREAM_KEY{extra}"""


def write_config(path, fake, keys: dict, extra: str = "", models: str = "") -> None:
    slow = uuid.uuid4().hex[:8]
    body = "model_list:" + "".join(
        [
            deployment("gpt-4o", fake),
            deployment("slow", fake, **{"x-fake-chunk-delay-ms": "100", "x-fake-key": f"slow-{slow}"}),
            deployment("late", fake, **{"x-fake-delay-ms": "2500"}),
            deployment("cut", fake, **{"x-fake-stream-error-after": "3"}),
            deployment("html", fake, **{"x-fake-html": "1", "x-fake-status": "502"}),
            deployment("broken", fake, **{"x-fake-status": "500"}),
        ]
    )
    body += models
    body += f"""
router_settings:
  num_retries: 0
  fallbacks: [{{broken: [gpt-4o]}}]
general_settings:
  master_key: {MASTER}
server:
  max_body_bytes: 65536
  watch_interval: 0.2
keys:
  - key: {ALICE}
    key_alias: alice
    models: [gpt-4o, slow, cut, html, late, broken]
    rpm: {keys.get("alice_rpm", 1000)}
  - key: {BOB}
    key_alias: bob
    models: [gpt-4o]
  - key: {OLD}
    key_alias: old
    expires: 2020-01-01
{extra}"""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(body)
    import os

    os.replace(tmp, path)


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory, monkeypatch_module):
    path = tmp_path_factory.mktemp("gw") / "config.yaml"
    write_config(path, fake, {})
    with Gateway(path) as g:
        g.cfg_path = path
        yield g


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMUX_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    yield mp
    mp.undo()


def client(gw, key=MASTER, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, **kw)


def raw(gw, method: str, path: str, body=None, headers=None, key=MASTER):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), payload


def error_of(payload: bytes) -> dict:
    body = json.loads(payload)
    assert set(body) == {"error"}, body
    assert {"message", "type", "code", "param"} <= set(body["error"]), body
    return body["error"]


# --- the openai client: sync, async, streaming ------------------------------------------------


def test_unary_with_the_openai_client(gw):
    raw_r = client(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=MSGS)
    r = raw_r.parse()
    assert r.choices[0].message.content == REPLY
    assert r.usage.completion_tokens == 20
    assert raw_r.headers["x-litellm-model-id"]
    assert raw_r.headers["x-request-id"].startswith("req-")


async def test_async_client_concurrently(gw):
    c = openai.AsyncOpenAI(base_url=gw.base_url, api_key=ALICE, max_retries=0)
    rs = await asyncio.gather(*[c.chat.completions.create(model="gpt-4o", messages=MSGS) for _ in range(40)])
    assert {r.choices[0].message.content for r in rs} == {REPLY}
    await c.close()


def test_stream_with_the_openai_client(gw):
    chunks = list(
        client(gw).chat.completions.create(
            model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


async def test_async_stream(gw):
    c = openai.AsyncOpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0)
    s = await c.chat.completions.create(model="slow", messages=MSGS, stream=True)
    text = ""
    async for chunk in s:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == REPLY
    await c.close()


def test_embeddings_and_models(gw):
    e = client(gw).embeddings.create(model="gpt-4o", input=["a b c", "d"])
    assert len(e.data) == 2 and len(e.data[0].embedding) > 0
    assert [m.id for m in client(gw, BOB).models.list()] == ["gpt-4o"]
    assert "slow" in [m.id for m in client(gw).models.list()]


def test_keep_alive_while_waiting_for_the_first_token(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    body = json.dumps({"model": "late", "messages": MSGS, "stream": True})
    conn.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {MASTER}"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type") == "text/event-stream"
    text = r.read().decode()
    assert text.startswith(": keep-alive\n\n"), text[:80]
    assert text.rstrip().endswith("data: [DONE]")


# --- errors --------------------------------------------------------------------------------------


def test_auth_failures(gw):
    with pytest.raises(openai.AuthenticationError) as e:
        client(gw, key="sk-nope").chat.completions.create(model="gpt-4o", messages=MSGS)
    assert e.value.status_code == 401
    with pytest.raises(openai.AuthenticationError, match="expired"):
        client(gw, key=OLD).chat.completions.create(model="gpt-4o", messages=MSGS)
    with pytest.raises(openai.PermissionDeniedError, match="may not use model 'slow'"):
        client(gw, key=BOB).chat.completions.create(model="slow", messages=MSGS)
    status, _, payload = raw(
        gw, "POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": MSGS}, key=None
    )
    assert status == 401 and error_of(payload)["type"] == "authentication_error"


@pytest.mark.parametrize(
    "body,status,needle",
    [
        (b'{"model": "gpt-4o", "messages": [', 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        ({"model": 7, "messages": MSGS}, 400, "'model' must be a string"),
        ({"messages": MSGS}, 400, "'model' is required"),
        ({"model": "gpt-4o", "messages": "hi"}, 400, "'messages' must be a list"),
        (
            {"model": "gpt-4o", "messages": MSGS, "max_tokens": "ten"},
            400,
            "'max_tokens' must be a whole number",
        ),
        ({"model": "gpt-4o", "messages": MSGS, "stream": "yes"}, 400, "'stream' must be true or false"),
        (
            {"model": "gpt-4o", "messages": MSGS, "api_base": "http://evil.example"},
            400,
            "'api_base' may not be set",
        ),
        ({"model": "gpt-4o", "messages": MSGS, "api_key": "sk-x"}, 400, "'api_key' may not be set"),
        ({"model": "no-such-model", "messages": MSGS}, 404, "does not exist"),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 70000}]},
            413,
            "larger than the limit",
        ),
    ],
)
def test_bad_input_is_classified(gw, body, status, needle):
    got, headers, payload = raw(gw, "POST", "/v1/chat/completions", body)
    assert got == status, payload
    err = error_of(payload)
    assert needle in err["message"]
    assert headers["content-type"] == "application/json"


def test_routes_and_methods(gw):
    assert raw(gw, "GET", "/v1/nothing")[0] == 404
    assert raw(gw, "GET", "/v1/chat/completions")[0] == 405
    # Without the /v1 prefix too.
    status, _, payload = raw(gw, "POST", "/chat/completions", {"model": "gpt-4o", "messages": MSGS})
    assert status == 200 and json.loads(payload)["choices"][0]["message"]["content"] == REPLY
    with pytest.raises(openai.NotFoundError):
        client(gw).chat.completions.create(model="no-such-model", messages=MSGS)


def test_upstream_html_is_a_classified_502(gw):
    status, _, payload = raw(gw, "POST", "/v1/chat/completions", {"model": "html", "messages": MSGS})
    assert status == 502
    assert error_of(payload)["type"] == "api_error"
    # The gateway keeps serving.
    assert raw(gw, "POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": MSGS})[0] == 200


def test_mid_stream_failure_is_an_in_band_error_without_done(gw):
    status, _, payload = raw(
        gw, "POST", "/v1/chat/completions", {"model": "cut", "messages": MSGS, "stream": True}
    )
    text = payload.decode()
    assert status == 200
    assert "[DONE]" not in text
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert "error" in events[-1] and events[-1]["error"]["message"]
    assert sum(1 for e in events if "choices" in e) >= 3
    with pytest.raises(openai.APIError):
        for _ in client(gw).chat.completions.create(model="cut", messages=MSGS, stream=True):
            pass


def test_fallback_is_reported(gw):
    r = client(gw).chat.completions.with_raw_response.create(model="broken", messages=MSGS)
    assert r.parse().choices[0].message.content == REPLY
    assert r.headers["x-litellm-attempted-fallbacks"] == "1"


# --- limits ---------------------------------------------------------------------------------------


def test_key_rate_limit_answers_429_with_headers(fake, tmp_path, monkeypatch_module):
    path = tmp_path / "c.yaml"
    write_config(path, fake, {"alice_rpm": 2})
    with Gateway(path) as g:
        ok = client(g, ALICE).chat.completions.with_raw_response.create(model="gpt-4o", messages=MSGS)
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        assert ok.headers["x-ratelimit-remaining-requests"] == "1"
        client(g, ALICE).chat.completions.create(model="gpt-4o", messages=MSGS)
        with pytest.raises(openai.RateLimitError) as e:
            client(g, ALICE).chat.completions.create(model="gpt-4o", messages=MSGS)
        h = e.value.response.headers
        assert 20 <= int(h["retry-after"]) <= 31
        assert h["x-ratelimit-remaining-requests"] == "0"
        assert h["x-ratelimit-limit-requests"] == "2"
        # Another key is not affected.
        client(g, BOB).chat.completions.create(model="gpt-4o", messages=MSGS)


# --- streams: disconnect and shutdown ---------------------------------------------------------------


def read_until(sock: socket.socket, needle: bytes, limit: float = 10) -> bytes:
    buf = b""
    deadline = time.monotonic() + limit
    while needle not in buf:
        assert time.monotonic() < deadline, buf
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    return buf


def open_stream(port: int, model: str, key: str = MASTER) -> socket.socket:
    body = json.dumps({"model": model, "messages": MSGS, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return s


def test_client_disconnect_closes_the_upstream_call(gw, fake, tmp_path):
    k = f"disc-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "c.yaml"
    write_config(
        path, fake, {}, models=deployment("slowk", fake, **{"x-fake-chunk-delay-ms": "200", "x-fake-key": k})
    )
    with Gateway(path) as g:
        s = open_stream(g.port, "slowk")
        read_until(s, b'"content":"Hello! "')
        s.close()
        deadline = time.monotonic() + 3
        while fake.stats(k).get("aborted", 0) < 1:
            assert time.monotonic() < deadline, fake.stats(k)
            time.sleep(0.05)
        st = fake.stats(k)
        assert st["completed"] == 0 and st["aborted"] == 1
        # The gateway counted it as a client close.
        metrics = urllib.request.urlopen(f"{g.url}/metrics").read().decode()
        assert 'model="slowk"' in metrics and 'status="499"' in metrics


def test_sigterm_finishes_the_stream_in_flight(fake, tmp_path):
    path = tmp_path / "c.yaml"
    write_config(path, fake, {})
    g = Gateway(path)
    try:
        s = open_stream(g.port, "slow")
        head = read_until(s, b'"content":"Hello! "')
        g.signal(signal.SIGTERM)
        rest = read_until(s, b"data: [DONE]", limit=15)
        text = (head + rest).decode()
        content = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in text.splitlines()
            if line.startswith("data: {")
        )
        assert content == REPLY
        s.close()
        assert g.proc.wait(timeout=10) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", g.port), timeout=1).close()
    finally:
        g.stop()


# --- config: reload, secrets, metrics, health -----------------------------------------------------


def test_hot_reload_under_load_drops_nothing(fake, tmp_path, monkeypatch_module):
    path = tmp_path / "c.yaml"
    write_config(path, fake, {})
    with Gateway(path) as g:
        errors: list = []
        done = threading.Event()
        count = [0]

        def load():
            c = client(g)
            while not done.is_set():
                try:
                    r = c.chat.completions.create(model="gpt-4o", messages=MSGS)
                    assert r.choices[0].message.content == REPLY
                    count[0] += 1
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    errors.append(repr(e))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        for i in range(5):
            write_config(path, fake, {}, models=deployment(f"new{i}", fake))
            deadline = time.monotonic() + 5
            while f"new{i}" not in [m.id for m in client(g).models.list()]:
                assert time.monotonic() < deadline, g.log()[-2000:]
                time.sleep(0.05)
        done.set()
        for t in threads:
            t.join()
        assert errors == [] and count[0] > 50
        # A broken file is refused whole; the old config stays live and says why.
        with open(path, "a") as f:
            f.write("\nrouter_settings_typo: 1\n")
        deadline = time.monotonic() + 5
        while True:
            ready = json.loads(urllib.request.urlopen(f"{g.url}/health/readiness").read())
            if ready["config"]["last_reload_error"]:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "router_settings_typo" in ready["config"]["last_reload_error"]
        assert "new4" in ready["config"]["models"]
        assert (
            client(g).chat.completions.create(model="new4", messages=MSGS).choices[0].message.content == REPLY
        )
        # On demand: master key only.
        write_config(path, fake, {}, models=deployment("manual", fake))
        assert raw(g, "POST", "/config/reload", key=BOB)[0] == 403
        status, _, payload = raw(g, "POST", "/config/reload")
        assert status == 200 and "manual" in json.loads(payload)["models"]
        metrics = urllib.request.urlopen(f"{g.url}/metrics").read().decode()
        assert "llmux_config_reload_failures_total 1" in metrics


def test_no_secret_in_logs_or_errors(gw):
    client(gw).chat.completions.create(model="gpt-4o", messages=MSGS)
    raw(gw, "POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": MSGS}, key="sk-wrong-secret-123")
    raw(gw, "POST", "/v1/chat/completions", {"model": "html", "messages": MSGS})
    log = gw.log()
    assert "listening" in log
    for secret in [MASTER, ALICE, BOB, UPSTREAM_KEY, "sk-wrong-secret-123"]:
        assert secret not in log


def test_metrics_count_requests_tokens_and_latency(gw):
    before = urllib.request.urlopen(f"{gw.url}/metrics").read().decode()

    def count(text: str) -> int:
        prefix = 'llmux_requests_total{route="embeddings",model="gpt-4o",'
        return sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    for _ in range(3):
        client(gw).embeddings.create(model="gpt-4o", input="a b")
    after = urllib.request.urlopen(f"{gw.url}/metrics").read().decode()
    assert count(after) - count(before) == 3
    assert 'llmux_request_duration_seconds_bucket{model="gpt-4o",le="+Inf"}' in after
    assert 'llmux_tokens_total{model="gpt-4o",kind="completion"}' in after
    assert "llmux_in_flight_requests" in after


def test_health(gw):
    assert json.loads(urllib.request.urlopen(f"{gw.url}/health/liveliness").read()) == {"status": "alive"}
    ready = json.loads(urllib.request.urlopen(f"{gw.url}/health/readiness").read())
    assert ready["status"] == "ready" and ready["redis"] == "not_configured"


def test_bad_config_at_start_names_the_field(fake, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model_list:\n  - model_name: x\n    litellm_params: {model: openai/x}\nrouter_settings:\n  num_retries: many\n"
    )
    with pytest.raises(RuntimeError, match="num_retries"):
        Gateway(path)


# --- OpenTelemetry ------------------------------------------------------------------------------


class Collector:
    """A minimal OTLP/HTTP collector: keeps every span POSTed to /v1/traces."""

    def __init__(self) -> None:
        import http.server

        spans = self.spans = []
        self.content_types = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.content_types.append(self.headers["Content-Type"])
                for rs in json.loads(body)["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        spans.extend(ss["spans"])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, pred, timeout: float = 10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in list(self.spans) if pred(s)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no such span in {self.spans}")


def attrs(span) -> dict:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


def test_otlp_traces_per_request_and_attempt(fake, tmp_path, monkeypatch_module):
    col = Collector()
    path = tmp_path / "c.yaml"
    write_config(
        path,
        fake,
        {},
        extra=f"telemetry:\n  otlp_endpoint: http://127.0.0.1:{col.port}\n  export_interval: 0.2\n",
    )
    with Gateway(path) as g:
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        client(g).chat.completions.create(
            model="gpt-4o", messages=MSGS, extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}
        )
        (req,) = col.wait_for(lambda s: s["name"] == "chat gpt-4o" and s["traceId"] == trace_id)
        assert req["kind"] == 2 and req["parentSpanId"] == parent_id
        a = attrs(req)
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.system"] == "openai"
        assert a["gen_ai.request.model"] == "gpt-4o"
        assert a["gen_ai.response.model"] == "gpt-4o-mini"
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == ("5", "20")
        assert a["http.response.status_code"] == "200"
        assert req["status"]["code"] == 0
        (attempt,) = col.wait_for(lambda s: s.get("parentSpanId") == req["spanId"])
        assert attempt["kind"] == 3 and attempt["traceId"] == trace_id
        assert attrs(attempt)["gen_ai.request.model"] == "openai/gpt-4o-mini"
        # A fallback: two attempts under one request span, the first marked failed.
        client(g).chat.completions.create(model="broken", messages=MSGS)
        (req2,) = col.wait_for(lambda s: s["name"] == "chat broken")
        tries = col.wait_for(lambda s: s.get("parentSpanId") == req2["spanId"])
        time.sleep(0.5)
        tries = [s for s in col.spans if s.get("parentSpanId") == req2["spanId"]]
        assert sorted(t["status"]["code"] for t in tries) == [0, 2]
        # Streams: the request span ends with the stream and carries its usage.
        list(
            client(g).chat.completions.create(
                model="slow", messages=MSGS, stream=True, stream_options={"include_usage": True}
            )
        )
        (st,) = col.wait_for(lambda s: s["name"] == "chat slow")
        assert attrs(st)["gen_ai.usage.output_tokens"] == "20"
        assert set(col.content_types) == {"application/json"}
    col.server.shutdown()


def test_response_cache_and_cooldowns_survive_a_reload(fake, tmp_path, monkeypatch_module):
    k, down = f"cache-{uuid.uuid4().hex[:8]}", f"down-{uuid.uuid4().hex[:8]}"
    models = deployment("cached", fake, **{"x-fake-key": k}) + deployment(
        "down", fake, **{"x-fake-key": down, "x-fake-status": "429"}
    )
    path = tmp_path / "c.yaml"
    extra = "cache:\n  type: local\n  ttl: 60\n"
    write_config(path, fake, {}, extra=extra, models=models)
    with Gateway(path) as g:
        c = client(g)
        a = c.chat.completions.create(model="cached", messages=MSGS)
        b = c.chat.completions.create(model="cached", messages=MSGS)
        assert a.choices[0].message.content == b.choices[0].message.content == REPLY
        assert fake.stats(k)["requests"] == 1
        # A 429 cools the deployment down at once.
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="down", messages=MSGS)
        assert fake.stats(down)["requests"] == 1
        # Reload (a new group): the cache keeps its entries and the cooldown holds.
        write_config(path, fake, {}, extra=extra, models=models + deployment("other", fake))
        status, _, payload = raw(g, "POST", "/config/reload")
        assert status == 200, payload
        assert c.chat.completions.create(model="cached", messages=MSGS).choices[0].message.content == REPLY
        assert fake.stats(k)["requests"] == 1
        with pytest.raises(openai.APIStatusError):
            c.chat.completions.create(model="down", messages=MSGS)
        assert fake.stats(down)["requests"] == 1


def test_a_stream_left_early_is_charged_what_was_streamed(fake, tmp_path, monkeypatch_module):
    k = f"tpm-{uuid.uuid4().hex[:8]}"
    models = deployment("slowt", fake, **{"x-fake-chunk-delay-ms": "200", "x-fake-key": k})
    path = tmp_path / "c.yaml"
    extra = "  - key: sk-tpm-user\n    key_alias: tpm-user\n    tpm: 6000\n"
    write_config(path, fake, {}, models=models, extra="")
    text = path.read_text().replace("keys:\n", "keys:\n" + extra, 1)
    path.write_text(text)
    with Gateway(path) as g:
        s = open_stream(g.port, "slowt", key="sk-tpm-user")
        read_until(s, b'"content":"Hello! "')
        s.close()
        deadline = time.monotonic() + 5
        while fake.stats(k).get("aborted", 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        r = client(g, "sk-tpm-user").chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MSGS, max_tokens=10
        )
        remaining = int(r.headers["x-ratelimit-remaining-tokens"])
        # The stream reserved its prompt plus 1,024 output tokens; it was charged only its
        # prompt and the few words streamed, so nearly the whole bucket is left.
        assert r.headers["x-ratelimit-limit-tokens"] == "6000"
        assert remaining > 5800, remaining


def test_python_callbacks_named_in_the_config(fake, tmp_path, monkeypatch_module):
    import os

    events = tmp_path / "events.jsonl"
    path = tmp_path / "c.yaml"
    write_config(path, fake, {}, extra="litellm_settings:\n  callbacks: [gw_callbacks.handler]\n")
    env = {"LLMUX_TEST_EVENTS": str(events), "PYTHONPATH": os.path.dirname(__file__)}

    def rows(n):
        deadline = time.monotonic() + 10
        while True:
            lines = events.read_text().splitlines() if events.exists() else []
            if len(lines) >= n:
                return [json.loads(x) for x in lines]
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)

    with Gateway(path, env=env) as g:
        c = client(g)
        raw_r = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSGS)
        r = raw_r.parse()
        # The pre-call hook added a message: 2 words + 3 more prompt tokens than MSGS alone (5).
        assert r.usage.prompt_tokens == 10
        (ok,) = rows(1)
        assert ok["kind"] == "success" and ok["content"] == REPLY
        assert ok["model_group"] == "gpt-4o" and ok["model_id"] == raw_r.headers["x-litellm-model-id"]
        assert ok["prompt_tokens"] == 10 and ok["cost"] > 0
        # A hook's refusal is the caller's 400, and nothing is sent upstream.
        with pytest.raises(openai.BadRequestError, match="not allowed here"):
            c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "forbidden"}])
        # A failure is logged as one.
        with pytest.raises(openai.APIStatusError):
            c.chat.completions.create(model="html", messages=MSGS)
        assert rows(2)[1]["kind"] == "failure" and rows(2)[1]["model_group"] == "html"
        # A stream is logged once, with its whole answer, when it ends.
        text = "".join(
            ch.choices[0].delta.content or ""
            for ch in c.chat.completions.create(model="slow", messages=MSGS, stream=True)
            if ch.choices
        )
        assert rows(3)[2]["kind"] == "success" and rows(3)[2]["content"] == text == REPLY


def test_hardening(fake, tmp_path, monkeypatch_module):
    path = tmp_path / "c.yaml"
    gem = f"""
  - model_name: gem
    litellm_params: {{model: gemini/gemini-2.5-flash, api_base: "{fake.url}", api_key: g-key}}"""
    write_config(path, fake, {}, models=gem)
    limited = "  - key: sk-carol-fb\n    key_alias: carol\n    models: [broken]\n"
    path.write_text(path.read_text().replace("keys:\n", "keys:\n" + limited, 1))
    with Gateway(path) as g:
        # A key limited to some groups is not served by a fallback group outside them.
        status, _, _ = raw(
            g, "POST", "/v1/chat/completions", {"model": "broken", "messages": MSGS}, key="sk-carol-fb"
        )
        assert status == 500
        status, headers, _ = raw(g, "POST", "/v1/chat/completions", {"model": "broken", "messages": MSGS})
        assert status == 200 and headers["x-litellm-attempted-fallbacks"] == "1"
        # Only the operator may mock answers or force failures (they feed cooldowns).
        status, _, payload = raw(
            g,
            "POST",
            "/v1/chat/completions",
            {"model": "gpt-4o", "messages": MSGS, "mock_response": "hi"},
            key=ALICE,
        )
        assert status == 403 and "master key" in error_of(payload)["message"]
        status, _, payload = raw(
            g,
            "POST",
            "/v1/chat/completions",
            {"model": "gpt-4o", "messages": MSGS, "mock_testing_fallbacks": True},
            key=ALICE,
        )
        assert status == 403
        # Image URLs inside the gateway's own network are never fetched.
        msg = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": f"{fake.url}/__files/pixel.png"}},
                ],
            }
        ]
        status, _, payload = raw(g, "POST", "/v1/chat/completions", {"model": "gem", "messages": msg})
        assert status == 400 and "private or local network" in error_of(payload)["message"]
        # Absurd numbers are refused, not a crash.
        status, _, payload = raw(
            g, "POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": MSGS, "timeout": 1e300}
        )
        assert status == 400 and "'timeout'" in error_of(payload)["message"]
        # Made-up model names do not become metric labels.
        raw(g, "POST", "/v1/chat/completions", {"model": "made-up-xyz", "messages": MSGS})
        metrics = urllib.request.urlopen(f"{g.url}/metrics").read().decode()
        assert "made-up-xyz" not in metrics
        assert raw(g, "POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": MSGS})[0] == 200


def test_global_budget_and_request_log(fake, tmp_path, monkeypatch_module):
    log = tmp_path / "requests.jsonl"
    path = tmp_path / "c.yaml"
    priced = f"""
  - model_name: priced
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {fake.base_url}
      api_key: os.environ/LLMUX_TEST_UPSTREAM_KEY
      input_cost_per_token: 0.00001
      output_cost_per_token: 0.00001"""
    extra = "litellm_settings:\n  max_budget: 0.0004\n  budget_duration: 1d\n"
    write_config(path, fake, {}, models=priced, extra=extra)
    path.write_text(path.read_text().replace("server:\n", f"server:\n  request_log: {log}\n", 1))
    with Gateway(path) as g:
        c = client(g)
        c.chat.completions.create(model="priced", messages=MSGS)  # $0.00025
        c.chat.completions.create(model="priced", messages=MSGS)  # $0.0005 spent now
        with pytest.raises(openai.BadRequestError, match="Budget has been exceeded"):
            c.chat.completions.create(model="priced", messages=MSGS)
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert len(lines) >= 2 and lines[0]["request"]["messages"][0]["content"] == "hello there"
        text = log.read_text()
        assert UPSTREAM_KEY not in text and MASTER not in text
