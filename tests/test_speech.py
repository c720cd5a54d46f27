"""Text to speech through the SDK, the Router and the gateway: the audio arrives piece by
piece (never held whole unless asked), a broken body is an error, the cost is per character."""

from __future__ import annotations

import http.client
import json
import time

import openai
import pytest

import llmux
from llmux.testing import Gateway

TEXT = "hello world from llmux"  # 4 words: 4 x 2,000 bytes of audio from the fake upstream


def test_speech_whole_body_and_cost(fake):
    r = llmux.speech(
        model="openai/tts-1", input=TEXT, voice="alloy", api_base=fake.base_url, response_format="wav"
    )
    assert r.content_type == "audio/wav"
    body = r.content
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE" and len(body) == 44 + 8000
    # tts-1: $15 per million characters.
    assert r._hidden_params["response_cost"] == pytest.approx(len(TEXT) * 15e-6)


def test_speech_arrives_piece_by_piece_and_streams_to_file(fake, tmp_path):
    slow = {"x-fake-chunk-delay-ms": "150", "x-fake-chunks": "6"}
    r = llmux.speech(
        model="openai/tts-1", input=TEXT, voice="alloy", api_base=fake.base_url, extra_headers=slow
    )
    t0 = time.monotonic()
    arrivals = []
    pieces = []
    for piece in r.iter_bytes():
        arrivals.append(time.monotonic() - t0)
        pieces.append(piece)
    assert len(pieces) == 6
    assert arrivals[-1] - arrivals[0] > 0.5, arrivals  # the first piece came long before the last
    assert b"".join(pieces).startswith(b"ID3")
    out = tmp_path / "speech.mp3"
    llmux.speech(model="openai/tts-1", input=TEXT, voice="alloy", api_base=fake.base_url).stream_to_file(out)
    assert out.read_bytes() == b"".join(pieces)


async def test_async_speech(fake, tmp_path):
    r = await llmux.aspeech(model="openai/tts-1-hd", input=TEXT, voice="nova", api_base=fake.base_url)
    got = b"".join([p async for p in r.aiter_bytes(chunk_size=1000)])
    assert len(got) >= 8000 and got.startswith(b"ID3")
    out = tmp_path / "a.mp3"
    r2 = await llmux.aspeech(model="openai/tts-1-hd", input=TEXT, voice="nova", api_base=fake.base_url)
    await r2.astream_to_file(out)
    assert out.read_bytes() == got


def test_speech_errors(fake):
    with pytest.raises(llmux.BadRequestError, match="voice"):
        llmux.speech(model="openai/tts-1", input=TEXT, api_base=fake.base_url)
    with pytest.raises(llmux.BadRequestError, match="non-empty input"):
        llmux.speech(model="openai/tts-1", input="", voice="alloy", api_base=fake.base_url)
    r = llmux.speech(
        model="openai/tts-1",
        input=TEXT,
        voice="alloy",
        api_base=fake.base_url,
        extra_headers={"x-fake-cut-after": "2"},
    )
    with pytest.raises(llmux.APIConnectionError):
        r.read()


def test_router_speech(fake):
    dep = {"model": "openai/tts-1", "api_base": fake.base_url, "api_key": "sk-x"}
    router = llmux.Router(
        model_list=[{"model_name": "voice", "litellm_params": dep, "model_info": {"id": "v1"}}]
    )
    r = router.speech(model="voice", input=TEXT, voice="alloy")
    assert r._hidden_params["model_id"] == "v1" and r.content.startswith(b"ID3")


def test_gateway_streams_speech(fake, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""
model_list:
  - model_name: voice
    litellm_params: {{model: openai/tts-1, api_base: "{fake.base_url}", api_key: sk-up}}
  - model_name: slow-voice
    litellm_params:
      model: openai/tts-1
      api_base: "{fake.base_url}"
      api_key: sk-up
      extra_headers: {{x-fake-chunk-delay-ms: "150", x-fake-chunks: "6"}}
  - model_name: broken-voice
    litellm_params:
      model: openai/tts-1
      api_base: "{fake.base_url}"
      api_key: sk-up
      extra_headers: {{x-fake-cut-after: "2"}}
general_settings:
  master_key: sk-m
"""
    )
    with Gateway(path) as g:
        c = openai.OpenAI(base_url=g.base_url, api_key="sk-m", max_retries=0)
        with c.audio.speech.with_streaming_response.create(
            model="slow-voice", voice="alloy", input=TEXT, response_format="wav"
        ) as resp:
            assert resp.headers["content-type"] == "audio/wav"
            assert float(resp.headers["x-litellm-response-cost"]) == pytest.approx(len(TEXT) * 15e-6)
            t0 = time.monotonic()
            arrivals, body = [], b""
            for piece in resp.iter_bytes():
                arrivals.append(time.monotonic() - t0)
                body += piece
        assert body[:4] == b"RIFF" and len(body) == 44 + 8000
        assert arrivals[-1] - arrivals[0] > 0.5, arrivals
        assert c.audio.speech.create(model="voice", voice="alloy", input=TEXT).content.startswith(b"ID3")
        # An upstream that breaks midway cuts the client's body: never a silently short file.
        conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10)
        conn.request(
            "POST",
            "/v1/audio/speech",
            json.dumps({"model": "broken-voice", "voice": "alloy", "input": TEXT}),
            {"Authorization": "Bearer sk-m", "Content-Type": "application/json"},
        )
        r = conn.getresponse()
        assert r.status == 200
        with pytest.raises(http.client.IncompleteRead):
            r.read()
        with pytest.raises(openai.BadRequestError, match="'input' is required"):
            c.post("/audio/speech", body={"model": "voice", "voice": "alloy"}, cast_to=object)


def test_azure_speech(fake, key):
    r = llmux.speech(
        model="azure/my-tts",
        input=TEXT,
        voice="alloy",
        api_base=fake.url,
        api_version="2025-03-01-preview",
        api_key="azure-key",
        extra_headers={"x-fake-key": key},
    )
    assert r.content.startswith(b"ID3")
    st = fake.stats(key)
    assert st["last_path"].startswith("/openai/deployments/my-tts/audio/speech")
    assert st["last_headers"]["api-key"] == "azure-key"
