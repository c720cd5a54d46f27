"""Tests for llmux.exceptions (hierarchy mirrors litellm 1.110.2's exceptions.py)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import llmux.exceptions as E


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter with the same sys.path (no openai pre-imported)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_hierarchy_matches_litellm():
    for sub in (
        E.ContextWindowExceededError,
        E.ContentPolicyViolationError,
        E.UnsupportedParamsError,
        E.RejectedRequestError,
        E.PaymentRequiredError,
        E.UnsupportedEndpointError,
    ):
        assert issubclass(sub, E.BadRequestError)
    assert issubclass(E.JSONSchemaValidationError, E.APIResponseValidationError)
    assert issubclass(E.Timeout, E._APITimeoutError) and issubclass(E.Timeout, E._APIConnectionError)
    assert issubclass(E.APIConnectionError, E._APIError) and not issubclass(
        E.APIConnectionError, E._APIStatusError
    )
    for cls in (
        E.AuthenticationError,
        E.PermissionDeniedError,
        E.NotFoundError,
        E.BadRequestError,
        E.UnprocessableEntityError,
        E.RateLimitError,
        E.ServiceUnavailableError,
        E.BadGatewayError,
        E.InternalServerError,
    ):
        assert issubclass(cls, E._APIStatusError) and issubclass(cls, E._APIError)
        assert issubclass(cls, E._OpenAIError)
    assert not issubclass(E.ServiceUnavailableError, E.InternalServerError)
    assert not issubclass(E.BadGatewayError, E.ServiceUnavailableError)
    assert issubclass(E.APIError, E._APIError) and not issubclass(E.APIError, E._APIStatusError)
    assert issubclass(E.MockException, E._APIError)
    assert issubclass(E.OpenAIError, E._OpenAIError)
    assert E.BudgetExceededError.__mro__[-3:] == (Exception, BaseException, object)
    assert not issubclass(E.BudgetExceededError, E._OpenAIError)
    assert not issubclass(E.RateLimitError, E.BadRequestError)
    assert (
        E.LITELLM_EXCEPTION_TYPES[0] is E.AuthenticationError
        and E.RateLimitError in E.LITELLM_EXCEPTION_TYPES
    )


def test_positional_constructors_and_attributes():
    e = E.RateLimitError("slow down", "openai", "gpt-4o")
    assert (e.llm_provider, e.model, e.status_code) == ("openai", "gpt-4o", 429)
    assert str(e) == "llmux.RateLimitError: slow down" == e.message == repr(e)
    for attr in (
        "max_retries",
        "num_retries",
        "litellm_debug_info",
        "litellm_response_headers",
        "retry_after",
    ):
        assert getattr(e, attr) is None
    assert e.kind == "rate_limited" and e.attempts == 1 and e.code is None

    a = E.APIError(502, "bad upstream", "anthropic", "claude")
    assert (a.status_code, a.llm_provider, a.model) == (502, "anthropic", "claude")
    assert str(a) == "llmux.APIError: bad upstream"

    n = E.NotFoundError("nope", "gpt-9", "openai")  # LiteLLM order: message, model, llm_provider
    assert (n.model, n.llm_provider, n.status_code) == ("gpt-9", "openai", 404)
    b = E.BadRequestError("bad", "m", "p")
    assert (b.model, b.llm_provider, b.status_code) == ("m", "p", 400)
    t = E.Timeout("too slow", "m", "p")
    assert (t.model, t.llm_provider, t.status_code) == ("m", "p", 408)
    assert E.Timeout("x", "m", "p", exception_status_code=504).status_code == 504
    assert E.AuthenticationError("k", "openai", "m").status_code == 401
    assert E.PermissionDeniedError("k", "openai", "m", None).status_code == 403
    assert E.UnprocessableEntityError("k", "m", "p", None).status_code == 422
    assert E.ServiceUnavailableError("k", "p", "m").status_code == 503
    assert E.BadGatewayError("k", "p", "m").status_code == 502
    assert E.InternalServerError("k", "p", "m").status_code == 500
    assert E.APIConnectionError("k", "p", "m").status_code == 500
    assert E.APIResponseValidationError("k", "p", "m").status_code == 500
    assert E.ContextWindowExceededError("long", "m", "p").status_code == 400
    assert str(E.ContextWindowExceededError("long", "m", "p")).startswith(
        "llmux.ContextWindowExceededError: "
    )
    assert E.UnsupportedParamsError("x", "p", "m").status_code == 400
    assert E.RejectedRequestError("x", "m", "p", {"a": 1}).request_data == {"a": 1}
    assert E.MockException(418, "teapot", "p", "m").status_code == 418
    assert E.OpenAIError().llm_provider == "openai"
    be = E.BudgetExceededError(1.5, 1.0)
    assert str(be) == "Budget has been exceeded! Current cost: 1.5, Max budget: 1.0"
    assert (be.current_cost, be.max_budget) == (1.5, 1.0)

    r = E.RateLimitError("x", "p", "m", num_retries=2, max_retries=3)
    assert str(r) == "llmux.RateLimitError: x llmux Retried: 2 times, llmux Max Retries: 3"


def test_from_native_factory():
    e = E._from_native(
        "RateLimitError", "rate_limited", "quota", 429, "openai", "gpt-4o", 1.5, "insufficient_quota", 3, None
    )
    assert isinstance(e, E.RateLimitError)
    assert (e.kind, e.retry_after, e.code, e.attempts, e.num_retries) == (
        "rate_limited",
        1.5,
        "insufficient_quota",
        3,
        2,
    )
    assert e.message == "llmux.RateLimitError: quota"
    c = E._from_native(
        "ContextWindowExceededError", "context_window_exceeded", "m", 400, "p", "m", None, None, 1, None
    )
    assert isinstance(c, E.BadRequestError) and c.num_retries is None and str(c).endswith(": m")
    u = E._from_native("NoSuchClass", "weird", "m", 599, None, None, None, None, 1, None)
    assert isinstance(u, E.APIError) and type(u).__name__ == "APIError" and u.status_code == 599
    b = E._from_native("BudgetExceededError", "budget_exceeded", "over", 422, None, None, None, None, 1, None)
    assert type(b) is E.BudgetExceededError and str(b) == "over"


def test_pickle_roundtrip():
    for e in (
        E.RateLimitError("x", "p", "m", num_retries=1),
        E.APIError(500, "boom", "p", "m"),
        E._from_native("Timeout", "timeout", "slow", 408, "p", "m", None, None, 2, None),
        E.BudgetExceededError(2.0, 1.0),
        E.ContextWindowExceededError("long", "m", "p"),
    ):
        e2 = pickle.loads(pickle.dumps(e))
        assert type(e2) is type(e)
        assert str(e2) == str(e) and e2.args == e.args
        for attr in (
            "status_code",
            "message",
            "llm_provider",
            "model",
            "kind",
            "attempts",
            "num_retries",
            "code",
        ):
            assert getattr(e2, attr) == getattr(e, attr)


def test_import_does_not_import_openai():
    out = _run(
        """
        import sys
        import llmux.exceptions, llmux.types, llmux._streaming
        f = llmux.exceptions._from_native
        e = f("RateLimitError", "rate_limited", "q", 429, None, None, None, None, 1, None)
        assert type(e) is llmux.exceptions.RateLimitError
        print(sorted(m for m in ("openai", "httpx", "httpx2", "pydantic") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_openai_classes_catch_llmux_errors_when_openai_is_imported():
    out = _run(
        """
        import pickle
        import openai
        import llmux.exceptions as E

        def fire(name, status, *, api_base=None):
            code = "insufficient_quota"
            return E._from_native(name, "k", "msg", status, "openai", "gpt-4o", 2.0, code, 1, api_base)

        try:
            raise fire("RateLimitError", 429, api_base="https://api.example.com/v1")
        except openai.RateLimitError as e:
            assert isinstance(e, E.RateLimitError) and isinstance(e, openai.APIStatusError)
            assert e.status_code == 429 and e.response.status_code == 429
            assert str(e.request.url) == "https://api.example.com/v1"
            assert e.code == "insufficient_quota" and e.body is None and e.param is None
            assert type(e).__name__ == "RateLimitError"
            e2 = pickle.loads(pickle.dumps(e))
            assert isinstance(e2, openai.RateLimitError) and e2.retry_after == 2.0

        for name, status, oa in [
            ("AuthenticationError", 401, openai.AuthenticationError),
            ("PermissionDeniedError", 403, openai.PermissionDeniedError),
            ("NotFoundError", 404, openai.NotFoundError),
            ("ContextWindowExceededError", 400, openai.BadRequestError),
            ("ContentPolicyViolationError", 400, openai.BadRequestError),
            ("UnprocessableEntityError", 422, openai.UnprocessableEntityError),
            ("Timeout", 408, openai.APITimeoutError),
            ("Timeout", 408, openai.APIConnectionError),
            ("APIConnectionError", 500, openai.APIConnectionError),
            ("ServiceUnavailableError", 503, openai.APIStatusError),
            ("BadGatewayError", 502, openai.APIStatusError),
            ("InternalServerError", 500, openai.InternalServerError),
            ("APIError", 500, openai.APIError),
            ("APIResponseValidationError", 500, openai.APIResponseValidationError),
        ]:
            try:
                raise fire(name, status)
            except oa as e:
                assert isinstance(e, getattr(E, name)) and isinstance(e, openai.OpenAIError)
                assert e.request is not None

        # user-constructed exceptions are openai-compatible too
        try:
            raise E.RateLimitError("slow", "openai", "gpt-4o")
        except openai.RateLimitError as e:
            assert e.status_code == 429
        b = fire("BudgetExceededError", 422)
        assert not isinstance(b, openai.OpenAIError)
        print("ok")
        """
    )
    assert out.strip() == "ok"
