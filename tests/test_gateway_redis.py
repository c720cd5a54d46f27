"""Two `llmux serve` processes on one Redis act as one gateway: a key's limit is shared
(together they admit what one would), and so is a deployment's cooldown."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import openai
import pytest
from redis_server import RedisServer

from llmux.testing import Gateway

MSGS = [{"role": "user", "content": "hello there"}]
MASTER = "sk-master-shared"
CAROL = "sk-carol-shared"


@pytest.fixture(scope="module")
def redis_srv():
    srv = RedisServer()
    yield srv
    srv.stop()


def config(fake, redis_url: str, bad_key: str, good_key: str) -> str:
    return f"""
model_list:
  - model_name: gpt-4o
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{fake.base_url}", api_key: sk-up}}
  - model_name: pair
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: "{fake.base_url}"
      api_key: sk-up
      extra_headers: {{x-fake-key: "{bad_key}", x-fake-status: "429"}}
    model_info: {{id: pair-bad}}
  - model_name: pair
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: "{fake.base_url}"
      api_key: sk-up
      extra_headers: {{x-fake-key: "{good_key}"}}
    model_info: {{id: pair-good}}
router_settings:
  num_retries: 2
  cooldown_time: 60
general_settings:
  master_key: {MASTER}
redis:
  url: {redis_url}
keys:
  - key: {CAROL}
    rpm: 10
"""


@pytest.fixture(scope="module")
def pair(fake, redis_srv, tmp_path_factory):
    bad, good = f"bad-{uuid.uuid4().hex[:6]}", f"good-{uuid.uuid4().hex[:6]}"
    path = tmp_path_factory.mktemp("gwr") / "config.yaml"
    path.write_text(config(fake, redis_srv.url, bad, good))
    with Gateway(path) as a, Gateway(path) as b:
        yield a, b, bad, good


def test_two_gateways_share_a_keys_limit(pair):
    a, b, _, _ = pair
    clients = [openai.OpenAI(base_url=g.base_url, api_key=CAROL, max_retries=0) for g in (a, b)]
    ok = limited = 0
    for i in range(30):
        try:
            clients[i % 2].chat.completions.create(model="gpt-4o", messages=MSGS)
            ok += 1
        except openai.RateLimitError:
            limited += 1
    # One process alone would admit 10 (rpm 10, burst 10); two together admit the same 10.
    assert (ok, limited) == (10, 20)


def test_two_gateways_share_a_cooldown(pair, fake):
    a, b, bad, good = pair
    ca = openai.OpenAI(base_url=a.base_url, api_key=MASTER, max_retries=0)
    # Gateway A sends until it has met the failing deployment once (a 429 cools it down).
    for _ in range(20):
        ca.chat.completions.create(model="pair", messages=MSGS)
        if fake.stats(bad)["requests"] >= 1:
            break
    assert fake.stats(bad)["requests"] == 1
    # Gateway B never sends to it while it cools down.
    cb = openai.OpenAI(base_url=b.base_url, api_key=MASTER, max_retries=0)
    for _ in range(20):
        assert cb.chat.completions.create(model="pair", messages=MSGS).choices[0].message.content
    assert fake.stats(bad)["requests"] == 1
    metrics = urllib.request.urlopen(f"{b.url}/metrics").read().decode()
    assert 'llmux_deployment_cooldown{deployment="pair-bad",model="pair"} 1' in metrics
    assert "llmux_redis_up 1" in metrics
    ready = json.loads(urllib.request.urlopen(f"{b.url}/health/readiness").read())
    assert ready["redis"] == "connected"


@pytest.mark.parametrize("policy", ["closed", "local"])
def test_redis_vanishing_follows_the_failure_policy(fake, tmp_path, policy):
    srv = RedisServer()
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
model_list:
  - model_name: gpt-4o
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{fake.base_url}", api_key: sk-up}}
general_settings:
  master_key: {MASTER}
redis:
  url: {srv.url}
  command_timeout: 0.3
rate_limit:
  requests_per_minute: 1000
  on_redis_failure: {policy}
"""
    )
    try:
        with Gateway(path) as g:
            c = openai.OpenAI(base_url=g.base_url, api_key=MASTER, max_retries=0)
            c.chat.completions.create(model="gpt-4o", messages=MSGS)
            srv.stop()
            if policy == "closed":
                with pytest.raises(openai.InternalServerError) as e:
                    c.chat.completions.create(model="gpt-4o", messages=MSGS)
                assert e.value.status_code == 503
                assert int(e.value.response.headers["retry-after"]) >= 1
            else:
                for _ in range(3):
                    c.chat.completions.create(model="gpt-4o", messages=MSGS)
            try:
                urllib.request.urlopen(f"{g.url}/health/readiness")
                status, ready = 200, None
            except urllib.error.HTTPError as e:
                status, ready = e.code, json.loads(e.read())
            assert status == (503 if policy == "closed" else 200)
            if ready is not None:
                assert ready["redis"] == "unreachable"
            # The gateway keeps serving its other routes.
            assert [m.id for m in c.models.list()] == ["gpt-4o"]
    finally:
        srv.stop()


def test_budgets_per_key_and_team_hold_across_gateways(fake, redis_srv, tmp_path):
    # Each call costs (5 prompt + 20 completion tokens) x $0.00001 = $0.00025.
    team, frank = f"team-{uuid.uuid4().hex[:6]}", f"sk-frank-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
model_list:
  - model_name: priced
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: "{fake.base_url}"
      api_key: sk-up
      input_cost_per_token: 0.00001
      output_cost_per_token: 0.00001
general_settings:
  master_key: {MASTER}
redis:
  url: {redis_srv.url}
teams:
  - team_id: {team}
    max_budget: 0.0002
    budget_duration: 1d
keys:
  - key: {frank}
    key_alias: frank
    max_budget: 0.0004
    budget_duration: 30d
  - key: sk-dave
    team_id: {team}
  - key: sk-erin
    team_id: {team}
"""
    )
    with Gateway(path) as a, Gateway(path) as b:

        def call(g, key):
            c = openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)
            return c.chat.completions.create(model="priced", messages=MSGS)

        call(a, frank)
        time.sleep(0.2)
        call(b, frank)  # $0.00025 spent < $0.0004: still allowed
        time.sleep(0.2)
        with pytest.raises(openai.BadRequestError) as e:
            call(a, frank)
        assert e.value.status_code == 400
        assert "Budget has been exceeded for key 'frank'" in e.value.message
        assert e.value.body["type"] == "budget_exceeded"
        # A team's budget is shared by its keys, across gateways.
        call(a, "sk-dave")
        time.sleep(0.2)
        with pytest.raises(openai.BadRequestError, match=f"for team '{team}'"):
            call(b, "sk-erin")
        # Other keys are not affected.
        openai.OpenAI(base_url=b.base_url, api_key=MASTER, max_retries=0).chat.completions.create(
            model="priced", messages=MSGS
        )
