"""Transcription through the SDK, the Router and the gateway: the file is sent as multipart
streamed from disk (a 50 MB file leaves memory flat), every response format, bad uploads
refused with the right status, the cost per second of audio."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import openai
import pytest

import llmux
from llmux.testing import Gateway


def wav(seconds: float, rate: int = 16_000) -> bytes:
    n = int(seconds * rate) * 2
    header = (
        b"RIFF"
        + (36 + n).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * 2).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + n.to_bytes(4, "little")
    )
    return header + bytes(n)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    p = tmp_path_factory.mktemp("audio") / "clip.wav"
    p.write_bytes(wav(3.0))
    return p


def test_path_file_object_bytes_and_tuple(fake, clip):
    size = clip.stat().st_size
    for file in [str(clip), clip, open(clip, "rb")]:
        r = llmux.transcription(model="openai/whisper-1", file=file, api_base=fake.base_url)
        assert r.text == f"transcribed {size} bytes of clip.wav"
        # whisper-1: $0.006 a minute; 3 s of audio read from the WAV header.
        assert r._hidden_params["response_cost"] == pytest.approx(3 * 0.0001)
    r = llmux.transcription(model="openai/whisper-1", file=("talk.mp3", b"ID3abc"), api_base=fake.base_url)
    assert r.text == "transcribed 6 bytes of talk.mp3"
    r = llmux.transcription(model="openai/whisper-1", file=io.BytesIO(b"12345"), api_base=fake.base_url)
    assert r.text == "transcribed 5 bytes of audio.wav"


def test_response_formats_and_fields(fake, clip, key):
    r = llmux.transcription(
        model="openai/whisper-1",
        file=clip,
        api_base=fake.base_url,
        response_format="verbose_json",
        language="fr",
        timestamp_granularities=["word", "segment"],
        extra_headers={"x-fake-key": key},
    )
    assert r.language == "fr" and r["duration"] == 8.0 and r.words[0]["word"] == "transcribed"
    assert r._hidden_params["response_cost"] == pytest.approx(8 * 0.0001)
    t = llmux.transcription(
        model="openai/whisper-1", file=clip, api_base=fake.base_url, response_format="text"
    )
    assert t.text.startswith("transcribed ")
    from openai.types.audio import Transcription

    Transcription.model_validate(t.model_dump())


async def test_async_transcription(fake, clip):
    r = await llmux.atranscription(model="openai/gpt-4o-transcribe", file=clip, api_base=fake.base_url)
    assert r.text.startswith("transcribed ")


def test_bad_uploads(fake, clip, tmp_path):
    with pytest.raises(llmux.BadRequestError, match="cannot read the audio file"):
        llmux.transcription(
            model="openai/whisper-1", file=str(tmp_path / "missing.wav"), api_base=fake.base_url
        )
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(llmux.BadRequestError, match="empty"):
        llmux.transcription(model="openai/whisper-1", file=empty, api_base=fake.base_url)
    with pytest.raises(llmux.BadRequestError, match="over the upload limit of 1000 bytes") as e:
        llmux.transcription(
            model="openai/whisper-1", file=clip, api_base=fake.base_url, max_upload_bytes=1000
        )
    assert e.value.status_code == 413
    with pytest.raises(TypeError):
        llmux.transcription(model="openai/whisper-1", file=12, api_base=fake.base_url)


def test_a_50_mb_upload_is_streamed_from_disk(fake, tmp_path):
    big = tmp_path / "big.wav"
    with open(big, "wb") as f:
        f.write(wav(0.1))
        f.write(bytes(50 * 1024 * 1024))
    script = textwrap.dedent(
        f"""
        import resource, llmux
        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        llmux.transcription(model="openai/whisper-1", file=("warm.wav", b"RIFF1234"), api_base={fake.base_url!r})
        before = peak()
        r = llmux.transcription(model="openai/whisper-1", file={str(big)!r}, api_base={fake.base_url!r})
        print(before, peak(), r.text)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, *text = out.stdout.split()
    assert " ".join(text) == f"transcribed {big.stat().st_size} bytes of big.wav"
    # Sending 50 MB raised the process's peak memory by far less than 50 MB.
    assert int(after) - int(before) < 20, (before, after)


def test_router_transcription(fake, clip, key):
    def dep(dep_id, **headers):
        params = {"model": "openai/whisper-1", "api_base": fake.base_url, "api_key": "sk-x", "weight": 1}
        params["extra_headers"] = {"x-fake-key": key + dep_id, **headers}
        if dep_id == "bad":
            params["weight"] = 10_000
        return {"model_name": "ears", "litellm_params": params, "model_info": {"id": dep_id}}

    router = llmux.Router(model_list=[dep("bad", **{"x-fake-status": "503"}), dep("good")], num_retries=2)
    r = router.transcription(model="ears", file=clip)
    assert r._hidden_params["model_id"] == "good" and r.text.startswith("transcribed ")
    # The file was sent again, whole, on the retry.
    assert fake.stats(key + "good")["requests"] == 1 and fake.stats(key + "bad")["requests"] == 1


def vm_hwm_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def test_gateway_transcriptions_with_the_openai_client(fake, clip, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""
model_list:
  - model_name: ears
    litellm_params: {{model: openai/whisper-1, api_base: "{fake.base_url}", api_key: sk-up}}
general_settings:
  master_key: sk-m
server:
  max_upload_bytes: 62914560
"""
    )
    with Gateway(path) as g:
        c = openai.OpenAI(base_url=g.base_url, api_key="sk-m", max_retries=0)
        size = clip.stat().st_size
        with open(clip, "rb") as f:
            raw = c.audio.transcriptions.with_raw_response.create(model="ears", file=f)
        assert raw.parse().text == f"transcribed {size} bytes of clip.wav"
        assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(3 * 0.0001)
        with open(clip, "rb") as f:
            text = c.audio.transcriptions.create(model="ears", file=f, response_format="text")
        assert text.strip() == f"transcribed {size} bytes of clip.wav"
        with open(clip, "rb") as f:
            v = c.audio.transcriptions.create(
                model="ears", file=f, response_format="verbose_json", timestamp_granularities=["word"]
            )
        assert v.duration == 8.0 and v.words[0].word == "transcribed"
        # 50 MB through the gateway: spooled to disk and streamed on, the gateway's peak memory
        # barely moves.
        big = tmp_path / "big.wav"
        with open(big, "wb") as f:
            f.write(wav(0.1))
            f.write(bytes(50 * 1024 * 1024))
        before = vm_hwm_mib(g.proc.pid)
        with open(big, "rb") as f:
            r = c.audio.transcriptions.create(model="ears", file=f)
        assert r.text == f"transcribed {big.stat().st_size} bytes of big.wav"
        assert vm_hwm_mib(g.proc.pid) - before < 20
        # Bad uploads.
        m = openai.OpenAI(base_url=g.base_url, api_key="sk-m", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="'file' is required"):
            m.post(
                "/audio/transcriptions",
                body={"model": "ears"},
                cast_to=object,
                options={"headers": {"Content-Type": "multipart/form-data"}},
                files=[("x", ("a.txt", b"1"))],
            )
        with pytest.raises(openai.BadRequestError, match="multipart/form-data"):
            m.post("/audio/transcriptions", body={"model": "ears"}, cast_to=object)
        with pytest.raises(openai.NotFoundError):
            with open(clip, "rb") as f:
                c.audio.transcriptions.create(model="nope", file=f)


def test_gateway_upload_limit(fake, clip, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""
model_list:
  - model_name: ears
    litellm_params: {{model: openai/whisper-1, api_base: "{fake.base_url}", api_key: sk-up}}
server:
  max_upload_bytes: 1000
"""
    )
    with Gateway(path) as g:
        c = openai.OpenAI(base_url=g.base_url, api_key="any", max_retries=0)
        with pytest.raises(openai.APIStatusError, match="over the limit of 1000 bytes") as e:
            with open(clip, "rb") as f:
                c.audio.transcriptions.create(model="ears", file=f)
        assert e.value.status_code == 413
        # Still serving.
        assert c.audio.transcriptions.create(model="ears", file=("s.wav", b"RIFF0000")).text


@pytest.mark.parametrize(
    "model,extra,path",
    [
        (
            "azure/my-whisper",
            {"api_version": "2024-10-21", "api_key": "azure-key"},
            "/openai/deployments/my-whisper/audio/transcriptions",
        ),
        ("groq/whisper-large-v3", {"api_key": "gsk-test"}, "/v1/audio/transcriptions"),
    ],
)
def test_azure_and_groq_transcription(fake, clip, key, model, extra, path):
    base = fake.url if model.startswith("azure") else fake.base_url
    r = llmux.transcription(model=model, file=clip, api_base=base, extra_headers={"x-fake-key": key}, **extra)
    assert r.text == f"transcribed {clip.stat().st_size} bytes of clip.wav"
    st = fake.stats(key)
    assert st["last_path"].startswith(path)
    if model.startswith("groq"):
        assert st["last_headers"]["authorization"] == "Bearer gsk-test"


def _multipart(boundary: str, fields: dict[str, str]) -> bytes:
    return b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )


def _file_head(boundary: str, name: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()


def test_gateway_streams_an_upload_through(fake, key, tmp_path):
    """The upstream receives the first half of the audio while the client still holds back the
    second: the gateway sends the upload on as it arrives. A retry reads the whole file again;
    fields sent after the file are honoured; a client that leaves mid-upload costs nothing."""
    import time

    import httpx

    path = tmp_path / "c.yaml"
    path.write_text(
        f"""
model_list:
  - model_name: ears
    litellm_params:
      model: openai/whisper-1
      api_base: "{fake.base_url}"
      api_key: sk-up
      extra_headers: {{x-fake-key: "{key}"}}
  - model_name: flaky-ears
    litellm_params:
      model: openai/whisper-1
      api_base: "{fake.base_url}"
      api_key: sk-up
      extra_headers: {{x-fake-key: "{key}-flaky", x-fake-status: "500", x-fake-fail-times: "1"}}
litellm_settings:
  num_retries: 1
"""
    )
    half = 1024 * 1024
    boundary = "llmuxtestboundary"
    audio = wav(0.1) + bytes(2 * half)

    def upload(model: str, wait_for: str | None, trailing: dict[str, str] | None = None):
        yield _multipart(boundary, {"model": model}) + _file_head(boundary, "s.wav")
        yield audio[:half]
        if wait_for is not None:
            deadline = time.monotonic() + 10
            while fake.stats(wait_for)["upload_bytes"] < half:
                if time.monotonic() > deadline:
                    raise AssertionError("the upstream saw none of the upload before the client finished")
                time.sleep(0.02)
        yield audio[half:] + b"\r\n"
        yield _multipart(boundary, trailing or {}) + f"--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with Gateway(path) as g, httpx.Client(base_url=g.base_url, timeout=30) as c:
        r = c.post("/audio/transcriptions", content=upload("ears", key), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["text"] == f"transcribed {len(audio)} bytes of s.wav"
        assert fake.stats(key)["requests"] == 1

        # The first attempt fails; the retry sends the whole file again, from the start.
        r = c.post("/audio/transcriptions", content=upload("flaky-ears", None), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["text"] == f"transcribed {len(audio)} bytes of s.wav"
        assert fake.stats(f"{key}-flaky")["requests"] == 2

        # A field after the file still counts (here: answer as plain text).
        r = c.post(
            "/audio/transcriptions",
            content=upload("ears", None, {"response_format": "text"}),
            headers=headers,
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        assert r.text.strip() == f"transcribed {len(audio)} bytes of s.wav"
        # But not another model (the key's models were checked on the first), nor the limit.
        r = c.post(
            "/audio/transcriptions",
            content=upload("ears", None, {"model": "flaky-ears"}),
            headers=headers,
        )
        assert r.status_code == 400 and "'model' came after the file" in r.text

    # A client that goes away mid-upload: the upstream request is ended (not left waiting for
    # the rest), and the gateway keeps serving.
    with Gateway(path) as g:
        import socket
        from urllib.parse import urlparse

        u = urlparse(g.base_url)
        before = fake.stats(key)
        s = socket.create_connection((u.hostname, u.port))
        head = _multipart(boundary, {"model": "ears"}) + _file_head(boundary, "s.wav")
        s.sendall(
            (
                "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(head) + len(audio) + 100}\r\n\r\n"
            ).encode()
            + head
            + audio[:half]
        )
        deadline = time.monotonic() + 10
        while fake.stats(key)["upload_bytes"] - before["upload_bytes"] < half:
            assert time.monotonic() < deadline, "the upload did not reach the upstream"
            time.sleep(0.02)
        s.close()
        deadline = time.monotonic() + 10
        while fake.stats(key)["requests"] == before["requests"]:
            assert time.monotonic() < deadline, "the upstream request was left waiting for the rest"
            time.sleep(0.02)
        with httpx.Client(base_url=g.base_url, timeout=30) as c:
            r = c.post("/audio/transcriptions", content=upload("ears", None), headers=headers)
            assert r.status_code == 200, r.text


def test_a_slow_upload_is_the_clients_fault_not_the_deployments(fake, key, tmp_path):
    """A client that uploads more slowly than the request timeout gets 408; the deployment is
    not cooled down for it (one failure would do it here), so the next call goes through."""
    import time

    import httpx

    path = tmp_path / "c.yaml"
    path.write_text(
        f"""
model_list:
  - model_name: ears
    litellm_params:
      model: openai/whisper-1
      api_base: "{fake.base_url}"
      api_key: sk-up
      extra_headers: {{x-fake-key: "{key}"}}
litellm_settings:
  request_timeout: 1
router_settings:
  allowed_fails: 0
  cooldown_time: 60
"""
    )
    boundary = "llmuxslow"
    audio = wav(0.1) + bytes(256 * 1024)

    def upload(pause: float):
        yield _multipart(boundary, {"model": "ears"}) + _file_head(boundary, "s.wav")
        yield audio[:1000]
        time.sleep(pause)
        yield audio[1000:] + b"\r\n" + f"--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with Gateway(path) as g, httpx.Client(base_url=g.base_url, timeout=30) as c:
        r = c.post("/audio/transcriptions", content=upload(2.5), headers=headers)
        assert r.status_code == 408, r.text
        assert "still arriving" in r.json()["error"]["message"]
        r = c.post("/audio/transcriptions", content=upload(0), headers=headers)
        assert r.status_code == 200, r.text
