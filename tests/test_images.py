"""Image generation through the SDK, the Router and the gateway, against the fake upstream;
answers are checked with the `openai` package's own types."""

from __future__ import annotations

import base64
import os
import urllib.request

import openai
import pytest

import llmux
from llmux.testing import Gateway

PNG = b"\x89PNG\r\n\x1a\n"
MULTIPART = {"headers": {"Content-Type": "multipart/form-data"}}


def test_b64_images_with_revised_prompt_and_cost(fake):
    r = llmux.image_generation(
        "a lighthouse at dusk",
        model="openai/dall-e-3",
        api_base=fake.base_url,
        n=2,
        response_format="b64_json",
    )
    assert len(r.data) == 2
    assert base64.b64decode(r.data[0].b64_json).startswith(PNG)
    assert r.data[0].url is None
    assert r.data[1]["revised_prompt"] == "A detailed picture of a lighthouse at dusk"
    # Two standard 1024x1024 DALL-E 3 images: $0.04 each.
    assert r._hidden_params["response_cost"] == pytest.approx(0.08, rel=1e-3)
    openai.types.ImagesResponse.model_validate(r.model_dump())


def test_url_images_can_be_fetched(fake):
    r = llmux.image_generation("a cat", model="openai/dall-e-2", api_base=fake.base_url, size="256x256")
    with urllib.request.urlopen(r.data[0].url) as f:
        assert f.read().startswith(PNG)
    assert r._hidden_params["response_cost"] == pytest.approx(0.016, rel=1e-3)


async def test_async_gpt_image_reports_usage(fake, key):
    r = await llmux.aimage_generation(
        "a blue square",
        model="openai/gpt-image-1",
        api_base=fake.base_url,
        quality="low",
        size="1024x1536",
        extra_headers={"x-fake-key": key},
    )
    assert r.usage["output_tokens"] == 272
    assert r._hidden_params["response_cost"] == pytest.approx(0.016)
    body = fake.stats(key)["last_body"]
    assert body["prompt"] == "a blue square" and body["quality"] == "low" and body["model"] == "gpt-image-1"


def test_azure_images(fake, key):
    r = llmux.image_generation(
        "a tree",
        model="azure/my-dalle",
        api_base=fake.url,
        api_version="2024-10-21",
        api_key="azure-key",
        extra_headers={"x-fake-key": key},
    )
    assert len(r.data) == 1
    st = fake.stats(key)
    assert st["last_path"].startswith("/openai/deployments/my-dalle/images/generations")
    assert st["last_headers"]["api-key"] == "azure-key"


def test_errors_are_classified(fake, key):
    with pytest.raises(llmux.BadRequestError, match="non-empty prompt"):
        llmux.image_generation("  ", model="openai/dall-e-3", api_base=fake.base_url)
    with pytest.raises(llmux.ContentPolicyViolationError):
        llmux.image_generation(
            "something",
            model="openai/dall-e-3",
            api_base=fake.base_url,
            extra_headers={"x-fake-key": key, "x-fake-error-code": "content_policy_violation"},
            num_retries=2,
        )
    assert fake.stats(key)["requests"] == 1, "a content policy refusal is never retried"


def test_router_retries_images_on_another_deployment(fake, key):
    def dep(dep_id, weight=1, **headers):
        params = {"model": "openai/dall-e-3", "api_base": fake.base_url, "api_key": "sk-x", "weight": weight}
        params["extra_headers"] = {"x-fake-key": key + dep_id, **headers}
        return {"model_name": "painter", "litellm_params": params, "model_info": {"id": dep_id}}

    router = llmux.Router(
        model_list=[dep("bad", 10_000, **{"x-fake-status": "503"}), dep("good")], num_retries=2
    )
    extra_attempts = 0
    for _ in range(3):
        r = router.image_generation("a boat", model="painter")
        assert r._hidden_params["model_id"] == "good"
        assert r._hidden_params["response_cost"] == pytest.approx(0.04, rel=1e-3)
        extra_attempts += r._hidden_params["attempts"] - 1
    # Weighted to be picked first, the bad deployment failed and each call was retried on the
    # good one.
    assert fake.stats(key + "bad")["requests"] == extra_attempts >= 1


def test_gateway_images_with_the_openai_client(fake, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""
model_list:
  - model_name: painter
    litellm_params: {{model: openai/dall-e-3, api_base: "{fake.base_url}", api_key: sk-up}}
general_settings:
  master_key: sk-m
keys:
  - key: sk-painter
    models: [painter]
    rpm: 2
"""
    )
    with Gateway(path) as g:
        c = openai.OpenAI(base_url=g.base_url, api_key="sk-painter", max_retries=0)
        raw = c.images.with_raw_response.generate(
            model="painter", prompt="a fox", n=2, response_format="b64_json"
        )
        r = raw.parse()
        assert len(r.data) == 2 and base64.b64decode(r.data[0].b64_json).startswith(PNG)
        assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(0.08, rel=1e-3)
        c.images.generate(model="painter", prompt="a fox")
        with pytest.raises(openai.RateLimitError):
            c.images.generate(model="painter", prompt="a fox")
        m = openai.OpenAI(base_url=g.base_url, api_key="sk-m", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="'prompt' is required"):
            m.post("/images/generations", body={"model": "painter"}, cast_to=object)
        metrics = urllib.request.urlopen(f"{g.url}/metrics").read().decode()
        assert 'llmux_requests_total{route="images",model="painter"' in metrics
        assert 'llmux_cost_usd_total{model="painter"}' in metrics


def test_stub_and_package_exports():
    assert llmux.ImageResponse is llmux.types.ImageResponse
    r = llmux.ImageResponse(data=[{"url": "http://x/y.png"}])
    assert r.data[0].url == "http://x/y.png" and r.data[0].b64_json is None
    assert os.path.basename(r.model_dump()["data"][0]["url"]) == "y.png"


def test_image_edit_sdk_and_router(fake, tmp_path):
    img = tmp_path / "room.png"
    img.write_bytes(PNG + bytes(100))
    r = llmux.image_edit(img, "add a plant", model="openai/dall-e-2", api_base=fake.base_url, n=2)
    assert len(r.data) == 2
    assert r.data[0].revised_prompt == "edited 108 bytes of room.png: add a plant"
    # Two 1024x1024 DALL-E 2 images: $0.02 each.
    assert r._hidden_params["response_cost"] == pytest.approx(0.04, rel=1e-2)
    # Several images, a mask from memory, through a router.
    dep = {"model": "openai/gpt-image-1", "api_base": fake.base_url, "api_key": "sk-x"}
    router = llmux.Router(
        model_list=[{"model_name": "editor", "litellm_params": dep, "model_info": {"id": "e1"}}]
    )
    r = router.image_edit([img, ("b.png", PNG)], "merge them", model="editor", mask=("m.png", b"1234"))
    assert r.data[0].revised_prompt == "edited 116 bytes of room.png,b.png mask 4: merge them"
    assert r._hidden_params["model_id"] == "e1"
    with pytest.raises(llmux.BadRequestError, match="non-empty prompt"):
        llmux.image_edit(img, " ", model="openai/dall-e-2", api_base=fake.base_url)


async def test_async_image_edit(fake, tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(PNG)
    with open(img, "rb") as f:
        r = await llmux.aimage_edit(f, "brighter", model="openai/dall-e-2", api_base=fake.base_url)
    assert r.data[0].revised_prompt == "edited 8 bytes of a.png: brighter"


def test_gateway_image_edits_with_the_openai_client(fake, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""
model_list:
  - model_name: editor
    litellm_params: {{model: openai/dall-e-2, api_base: "{fake.base_url}", api_key: sk-up}}
"""
    )
    img = tmp_path / "room.png"
    img.write_bytes(PNG + bytes(100))
    with Gateway(path) as g:
        c = openai.OpenAI(base_url=g.base_url, api_key="any", max_retries=0)
        with open(img, "rb") as f, open(img, "rb") as m:
            r = c.images.edit(model="editor", image=f, mask=m, prompt="add a plant", n=2)
        assert len(r.data) == 2
        assert r.data[0].revised_prompt == "edited 108 bytes of room.png mask 108: add a plant"
        with pytest.raises(openai.BadRequestError, match="'prompt' is required"):
            c.post(
                "/images/edits",
                body={"model": "editor"},
                files=[("image", ("room.png", PNG))],
                cast_to=object,
                options=MULTIPART,
            )
        with pytest.raises(openai.BadRequestError, match="'image' is required"):
            c.post(
                "/images/edits",
                body={"model": "editor", "prompt": "x"},
                files=[("other", ("o.txt", b"1"))],
                cast_to=object,
                options=MULTIPART,
            )


def test_imagen_through_the_gemini_api(fake, key):
    r = llmux.image_generation(
        "a dog on a beach",
        model="gemini/imagen-3.0-generate-001",
        api_base=fake.url,
        api_key="g-key",
        n=2,
        size="1792x1024",
        extra_headers={"x-fake-key": key},
    )
    assert len(r.data) == 2 and base64.b64decode(r.data[0].b64_json).startswith(PNG)
    # $0.04 an image (the price table's gemini/imagen-3.0-generate-001).
    assert r._hidden_params["response_cost"] == pytest.approx(0.08)
    st = fake.stats(key)
    assert st["last_path"].endswith("/models/imagen-3.0-generate-001:predict")
    assert st["last_body"] == {
        "instances": [{"prompt": "a dog on a beach"}],
        "parameters": {"sampleCount": 2, "aspectRatio": "16:9"},
    }
    assert st["last_headers"]["x-goog-api-key"] == "g-key"
