"""Images and seconds of audio count toward token limits as configured
(`tokens_per_image`, `tokens_per_audio_second`): through the SDK's module-level limits, a
Router's deployment tpm, and a gateway virtual key's tpm. Unset, they count only as requests."""

from __future__ import annotations

import uuid

import openai
import pytest
from test_transcription import wav

import llmux
from llmux.testing import Gateway


@pytest.fixture
def clip(tmp_path):
    p = tmp_path / "clip.wav"
    p.write_bytes(wav(3.0))  # 3 seconds; the fake's json answer has no duration: the header counts
    return p


def test_sdk_limits_count_images_and_audio_seconds(fake, clip):
    user = f"u-{uuid.uuid4().hex[:8]}"
    llmux.set_rate_limit(
        {
            "tokens_per_minute": 2000,
            "key_strategy": "user",
            "tokens_per_image": 1000,
            "tokens_per_audio_second": 100,
        }
    )
    try:
        img = dict(model="openai/dall-e-2", prompt="a cat", api_base=fake.base_url, user=user)
        assert len(llmux.image_generation(n=2, **img).data) == 2
        # Two images took the whole minute's 2000 tokens.
        with pytest.raises(llmux.RateLimitError) as e:
            llmux.image_generation(**img)
        assert e.value.retry_after > 0
        # Another user's bucket: transcriptions are charged their 3 seconds (300 tokens) once
        # the answer is in, so the 7th finds the bucket overdrawn.
        other = f"u-{uuid.uuid4().hex[:8]}"
        tr = dict(model="openai/whisper-1", file=str(clip), api_base=fake.base_url, user=other)
        for _ in range(7):
            llmux.transcription(**tr)
        with pytest.raises(llmux.RateLimitError):
            llmux.transcription(**tr)
    finally:
        llmux.set_rate_limit(None)


def test_sdk_without_weights_media_count_only_as_requests(fake):
    user = f"u-{uuid.uuid4().hex[:8]}"
    llmux.set_rate_limit({"tokens_per_minute": 10, "requests_per_minute": 3, "key_strategy": "user"})
    try:
        img = dict(model="openai/dall-e-2", prompt="a cat", api_base=fake.base_url, user=user)
        for _ in range(3):
            assert len(llmux.image_generation(n=4, **img).data) == 4
        with pytest.raises(llmux.RateLimitError, match="requests"):
            llmux.image_generation(**img)
    finally:
        llmux.set_rate_limit(None)


def test_router_deployment_tpm_counts_images(fake):
    router = llmux.Router(
        model_list=[
            {
                "model_name": "pics",
                "litellm_params": {"model": "openai/dall-e-2", "api_base": fake.base_url, "api_key": "sk"},
                "tpm": 3000,
            }
        ],
        rate_limit={"tokens_per_image": 1000},
    )
    assert len(router.image_generation(model="pics", prompt="a", n=3).data) == 3
    with pytest.raises(llmux.RateLimitError):
        router.image_generation(model="pics", prompt="a")


def test_gateway_key_tpm_counts_images_and_audio_seconds(fake, clip, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""
model_list:
  - model_name: pics
    litellm_params: {{model: openai/dall-e-2, api_base: "{fake.base_url}", api_key: sk-up}}
  - model_name: ears
    litellm_params: {{model: openai/whisper-1, api_base: "{fake.base_url}", api_key: sk-up}}
general_settings:
  master_key: sk-m
keys:
  - key: sk-images
    tpm: 2000
  - key: sk-audio
    tpm: 1000
rate_limit:
  tokens_per_image: 1000
  tokens_per_audio_second: 100
"""
    )
    with Gateway(path) as g:
        c = openai.OpenAI(base_url=g.base_url, api_key="sk-images", max_retries=0)
        assert len(c.images.generate(model="pics", prompt="a", n=2).data) == 2
        with pytest.raises(openai.RateLimitError) as e:
            c.images.generate(model="pics", prompt="a")
        assert e.value.response.headers["x-ratelimit-limit-tokens"] == "2000"
        a = openai.OpenAI(base_url=g.base_url, api_key="sk-audio", max_retries=0)
        # 3 seconds = 300 tokens each, charged after the answer: 4 fit in 1000 (the 4th overdraws).
        for _ in range(4):
            with open(clip, "rb") as f:
                a.audio.transcriptions.create(model="ears", file=f)
        with pytest.raises(openai.RateLimitError):
            with open(clip, "rb") as f:
                a.audio.transcriptions.create(model="ears", file=f)


def test_audio_of_unknown_length_counts_by_its_size(fake, tmp_path):
    # An MP3 answered as plain text: no duration anywhere, so 160,000 bytes count as 10 s
    # (128 kbit/s), 1000 tokens at 100 a second.
    mp3 = tmp_path / "talk.mp3"
    mp3.write_bytes(b"ID3" + bytes(160_000 - 3))
    user = f"u-{uuid.uuid4().hex[:8]}"
    llmux.set_rate_limit({"tokens_per_minute": 1000, "key_strategy": "user", "tokens_per_audio_second": 100})
    try:
        tr = dict(
            model="openai/whisper-1", file=str(mp3), api_base=fake.base_url, user=user, response_format="text"
        )
        llmux.transcription(**tr)
        llmux.transcription(**tr)  # admitted at the edge, charged into debt
        with pytest.raises(llmux.RateLimitError):
            llmux.transcription(**tr)
    finally:
        llmux.set_rate_limit(None)
