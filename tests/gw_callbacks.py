"""Python callbacks loaded by `llmux serve` in the gateway tests
(`litellm_settings.callbacks: [gw_callbacks.handler]`): every event is appended as a JSON line
to the file named by LLMUX_TEST_EVENTS."""

from __future__ import annotations

import json
import os

from llmux.integrations.custom_logger import CustomLogger


class Recorder(CustomLogger):
    def _write(self, kind: str, kwargs: dict, response) -> None:
        slo = kwargs.get("standard_logging_object") or {}
        content = None
        if response is not None:
            content = response.choices[0].message.content
        row = {
            "kind": kind,
            "model_group": slo.get("model_group"),
            "model_id": slo.get("model_id"),
            "cost": slo.get("response_cost"),
            "prompt_tokens": slo.get("prompt_tokens"),
            "content": content,
            "error": slo.get("error_str"),
        }
        with open(os.environ["LLMUX_TEST_EVENTS"], "a") as f:
            f.write(json.dumps(row) + "\n")

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._write("success", kwargs, response_obj)

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._write("failure", kwargs, None)

    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        if "forbidden" in json.dumps(data["messages"]):
            return "this topic is not allowed here"
        data["messages"] = data["messages"] + [{"role": "system", "content": "be brief"}]
        return data


handler = Recorder()
