"""LiteLLM-compatible exception classes that do not import openai.

LiteLLM's exceptions subclass openai's.  We mirror openai's hierarchy with private
stand-ins (``_OpenAIError`` -> ``_APIError`` -> ``_APIStatusError`` ...) and build the
public LiteLLM names on top, so ``import llmux`` never imports openai/httpx.

openai compatibility: whenever an exception is created (by the engine through
``_from_native`` or by user code calling a constructor) while ``openai`` is already
in ``sys.modules``, the instance is of a cached dual subclass
``type(name, (OurClass, openai.MatchingClass), {})``, so both ``except llmux.X`` and
``except openai.X`` catch it, and it carries the attributes openai's classes expose
(``request``, ``response``, ``body``, ``code``, ``param``, ``type``, ``status_code``,
``request_id``).
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "BudgetExceededError",
    "ContentPolicyViolationError",
    "ContextWindowExceededError",
    "InternalServerError",
    "JSONSchemaValidationError",
    "LITELLM_EXCEPTION_TYPES",
    "MockException",
    "NotFoundError",
    "OpenAIError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "RateLimitError",
    "RejectedRequestError",
    "ServiceUnavailableError",
    "Timeout",
    "UnprocessableEntityError",
    "UnsupportedEndpointError",
    "UnsupportedParamsError",
]

_PREFIX = "llmux"


# --------------------------------------------------------------------------------------
# private mirror of openai's hierarchy (``_openai_name`` = class to pair with)
# --------------------------------------------------------------------------------------


class _OpenAIError(Exception):
    _openai_name: Optional[str] = "OpenAIError"


class _APIError(_OpenAIError):
    _openai_name = "APIError"


class _APIStatusError(_APIError):
    _openai_name = "APIStatusError"


class _APIConnectionError(_APIError):
    _openai_name = "APIConnectionError"


class _APITimeoutError(_APIConnectionError):
    _openai_name = "APITimeoutError"


class _APIResponseValidationError(_APIError):
    _openai_name = "APIResponseValidationError"


class _BadRequestError(_APIStatusError):
    _openai_name = "BadRequestError"


class _AuthenticationError(_APIStatusError):
    _openai_name = "AuthenticationError"


class _PermissionDeniedError(_APIStatusError):
    _openai_name = "PermissionDeniedError"


class _NotFoundError(_APIStatusError):
    _openai_name = "NotFoundError"


class _UnprocessableEntityError(_APIStatusError):
    _openai_name = "UnprocessableEntityError"


class _RateLimitError(_APIStatusError):
    _openai_name = "RateLimitError"


class _InternalServerError(_APIStatusError):
    _openai_name = "InternalServerError"


# --------------------------------------------------------------------------------------
# dual classes (ours + openai's), created on demand
# --------------------------------------------------------------------------------------

_DUAL_CACHE: Dict[type, type] = {}


def _openai_class(cls: type) -> Optional[type]:
    openai = sys.modules.get("openai")
    if openai is None:
        return None
    for klass in cls.__mro__:
        name = klass.__dict__.get("_openai_name")
        if name is not None:
            return getattr(openai, name, None)
        if klass is Exception:
            break
    return None


def _dual_class(cls: type) -> type:
    """The cached ``(cls, openai.Matching)`` subclass, or ``cls`` if there is none."""
    dual = _DUAL_CACHE.get(cls)
    if dual is not None:
        return dual
    oa = _openai_class(cls)
    if oa is None or issubclass(cls, oa):
        return cls
    dual = type(
        cls.__name__,
        (cls, oa),
        {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "_llmux_dual": True},
    )
    _DUAL_CACHE[cls] = dual
    return dual


def _httpx_module() -> Any:
    """The httpx flavour openai uses (openai 3.x ships ``httpx2``), or None."""
    ex = sys.modules.get("openai._exceptions")
    mod = getattr(ex, "httpx2", None) or getattr(ex, "httpx", None)
    if mod is not None:
        return mod
    try:
        import httpx

        return httpx
    except Exception:  # pragma: no cover
        return None


# --------------------------------------------------------------------------------------
# common base for every public class
# --------------------------------------------------------------------------------------


class _LlmuxErrorMixin:
    """Shared behaviour: attributes, ``str()``, pickling and the openai dual class."""

    _default_status: int = 500
    _kind: str = "api_error"

    # attributes openai exposes as class-level defaults
    code: Optional[str] = None
    param: Optional[str] = None

    def __new__(cls, *args: Any, **kwargs: Any):
        if "openai" in sys.modules and "_llmux_dual" not in cls.__dict__:
            cls = _dual_class(cls)
        return Exception.__new__(cls)

    def _setup(
        self,
        message: Any,
        *,
        status_code: Optional[int] = None,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        response: Any = None,
        request: Any = None,
        body: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
        kind: Optional[str] = None,
        retry_after: Optional[float] = None,
        code: Optional[str] = None,
        attempts: int = 1,
        api_base: Optional[str] = None,
        prefix: bool = True,
    ) -> None:
        name = type(self).__name__
        msg = "" if message is None else str(message)
        if prefix:
            msg = f"{_PREFIX}.{name}: {msg}"
        self.message = msg
        self.status_code = self._default_status if status_code is None else status_code
        self.llm_provider = llm_provider
        self.model = model
        self.litellm_debug_info = litellm_debug_info
        self.max_retries = max_retries
        self.num_retries = num_retries
        self.litellm_response_headers: Optional[dict] = None
        self.kind = kind or self._kind
        self.retry_after = retry_after
        self.attempts = attempts
        self.body = body
        if isinstance(body, dict):
            c = body.get("code")
            self.code = str(c) if c is not None else code
            self.param = body.get("param")
            self.type = body.get("type")
        else:
            self.code = code
            self.param = None
            self.type = None
        self.request_id = None
        self.request = request
        self.response = response
        self.api_base = api_base
        Exception.__init__(self, msg)
        if "_llmux_dual" in type(self).__dict__:
            self._fill_openai_attrs()

    def _fill_openai_attrs(self) -> None:
        """Give the instance the httpx request/response objects openai's classes carry."""
        hx = _httpx_module()
        if hx is None:
            return
        try:
            if self.request is None:
                resp_req = getattr(self.response, "request", None) if self.response is not None else None
                self.request = resp_req or hx.Request("POST", self.api_base or "http://localhost")
            if self.response is None and isinstance(self, (_APIStatusError, _APIResponseValidationError)):
                self.response = hx.Response(self.status_code or 500, request=self.request)
            if self.response is not None:
                headers = getattr(self.response, "headers", None)
                if headers is not None:
                    self.request_id = headers.get("x-request-id")
        except Exception:  # pragma: no cover - never let attribute filling mask the error
            pass

    def __str__(self) -> str:
        msg = self.message
        if self.num_retries:
            msg += f" {_PREFIX} Retried: {self.num_retries} times"
        if self.max_retries:
            msg += f", {_PREFIX} Max Retries: {self.max_retries}"
        return msg

    __repr__ = __str__

    def __reduce__(self):
        cls = type(self)
        if "_llmux_dual" in cls.__dict__:
            cls = cls.__mro__[1]
        state = {k: v for k, v in self.__dict__.items() if k not in ("request", "response")}
        return (_restore, (cls, self.args, state))


def _restore(cls: type, args: tuple, state: dict) -> BaseException:
    obj = cls.__new__(cls)
    obj.args = args
    obj.__dict__.update(state)
    obj.__dict__.setdefault("request", None)
    obj.__dict__.setdefault("response", None)
    if "_llmux_dual" in type(obj).__dict__:
        obj._fill_openai_attrs()
    return obj


# --------------------------------------------------------------------------------------
# public LiteLLM classes
# --------------------------------------------------------------------------------------


class AuthenticationError(_LlmuxErrorMixin, _AuthenticationError):
    _default_status = 401
    _kind = "authentication"

    def __init__(
        self,
        message: Any,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
        body: Any = None,
    ) -> None:
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            body=body,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class PermissionDeniedError(_LlmuxErrorMixin, _PermissionDeniedError):
    _default_status = 403
    _kind = "permission_denied"

    def __init__(
        self,
        message: Any,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
    ) -> None:
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class NotFoundError(_LlmuxErrorMixin, _NotFoundError):
    _default_status = 404
    _kind = "not_found"

    def __init__(
        self,
        message: Any,
        model: Optional[str] = None,
        llm_provider: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
        body: Any = None,
    ) -> None:
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            body=body,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class BadRequestError(_LlmuxErrorMixin, _BadRequestError):
    _default_status = 400
    _kind = "bad_request"

    def __init__(
        self,
        message: Any,
        model: Optional[str] = None,
        llm_provider: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
        body: Any = None,
    ) -> None:
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            body=body,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class UnsupportedEndpointError(BadRequestError):
    _kind = "unsupported_endpoint"


class ContextWindowExceededError(BadRequestError):
    _kind = "context_window_exceeded"

    def __init__(
        self,
        message: Any,
        model: Optional[str] = None,
        llm_provider: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        body: Any = None,
    ) -> None:
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            body=body,
            litellm_debug_info=litellm_debug_info,
        )


class ContentPolicyViolationError(BadRequestError):
    _kind = "content_policy_violation"

    def __init__(
        self,
        message: Any,
        model: Optional[str] = None,
        llm_provider: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        provider_specific_fields: Optional[dict] = None,
        body: Any = None,
    ) -> None:
        self.provider_specific_fields = provider_specific_fields
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            body=body,
            litellm_debug_info=litellm_debug_info,
        )


class UnsupportedParamsError(BadRequestError):
    _kind = "unsupported_params"

    def __init__(
        self,
        message: Any,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        status_code: int = 400,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
    ) -> None:
        self._setup(
            message,
            status_code=400,
            llm_provider=llm_provider,
            model=model,
            response=response,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class PaymentRequiredError(BadRequestError):
    _default_status = 402
    _kind = "payment_required"

    def __init__(
        self,
        message: Any,
        model: Optional[str] = None,
        llm_provider: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
    ) -> None:
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            litellm_debug_info=litellm_debug_info,
        )


class RejectedRequestError(BadRequestError):
    _kind = "rejected_request"

    def __init__(
        self,
        message: Any,
        model: Optional[str] = None,
        llm_provider: Optional[str] = None,
        request_data: Optional[dict] = None,
        litellm_debug_info: Optional[str] = None,
    ) -> None:
        self.request_data = request_data
        self._setup(message, llm_provider=llm_provider, model=model, litellm_debug_info=litellm_debug_info)


class UnprocessableEntityError(_LlmuxErrorMixin, _UnprocessableEntityError):
    _default_status = 422
    _kind = "unprocessable_entity"

    def __init__(
        self,
        message: Any,
        model: Optional[str] = None,
        llm_provider: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
    ) -> None:
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class RateLimitError(_LlmuxErrorMixin, _RateLimitError):
    _default_status = 429
    _kind = "rate_limited"

    def __init__(
        self,
        message: Any,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
        category: Any = "vendor_rate_limit",
        rate_limit_type: Any = None,
        headers: Optional[dict] = None,
        detail: Any = None,
        body: Any = None,
    ) -> None:
        self.category = getattr(category, "value", category)
        self.rate_limit_type = getattr(rate_limit_type, "value", rate_limit_type)
        self.headers = {k: str(v) for k, v in headers.items()} if headers else None
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            body=body,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )
        self.detail = detail if detail is not None else self.message


class Timeout(_LlmuxErrorMixin, _APITimeoutError):
    _default_status = 408
    _kind = "timeout"

    def __init__(
        self,
        message: Any,
        model: Optional[str] = None,
        llm_provider: Optional[str] = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
        headers: Optional[dict] = None,
        exception_status_code: Optional[int] = None,
        response: Any = None,
    ) -> None:
        self.headers = headers
        self._setup(
            message,
            status_code=exception_status_code or 408,
            llm_provider=llm_provider,
            model=model,
            response=response,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class APIConnectionError(_LlmuxErrorMixin, _APIConnectionError):
    _default_status = 500
    _kind = "connection"

    def __init__(
        self,
        message: Any,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        request: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
    ) -> None:
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            request=request,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class ServiceUnavailableError(_LlmuxErrorMixin, _APIStatusError):
    _default_status = 503
    _kind = "service_unavailable"

    def __init__(
        self,
        message: Any,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
    ) -> None:
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class BadGatewayError(_LlmuxErrorMixin, _APIStatusError):
    _default_status = 502
    _kind = "bad_gateway"

    __init__ = ServiceUnavailableError.__init__  # same signature as LiteLLM's


class InternalServerError(_LlmuxErrorMixin, _InternalServerError):
    _default_status = 500
    _kind = "internal_server_error"

    def __init__(
        self,
        message: Any,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        response: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
        body: Any = None,
        provider_status_code: Optional[int] = None,
    ) -> None:
        self.provider_status_code = provider_status_code
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            response=response,
            body=body,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )
        if self.type is None:
            self.type = "internal_server_error"


class APIError(_LlmuxErrorMixin, _APIError):
    _default_status = 500
    _kind = "api_error"

    def __init__(
        self,
        status_code: int,
        message: Any,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        request: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
        body: Any = None,
        response: Any = None,
    ) -> None:
        self._setup(
            message,
            status_code=status_code,
            llm_provider=llm_provider,
            model=model,
            request=request,
            response=response,
            body=body,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class APIResponseValidationError(_LlmuxErrorMixin, _APIResponseValidationError):
    _default_status = 500
    _kind = "response_validation"

    def __init__(
        self,
        message: Any,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
    ) -> None:
        self._setup(
            message,
            llm_provider=llm_provider,
            model=model,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class JSONSchemaValidationError(APIResponseValidationError):
    _kind = "json_schema_validation"

    def __init__(self, model: str, llm_provider: str, raw_response: str, schema: str) -> None:
        self.raw_response = raw_response
        self.schema = schema
        self._setup(
            f"model={model}, returned an invalid response={raw_response}, for schema={schema}.\n"
            "Access raw response with `e.raw_response`",
            llm_provider=llm_provider,
            model=model,
        )


class OpenAIError(_LlmuxErrorMixin, _OpenAIError):
    _kind = "openai_error"

    def __init__(self, original_exception: Any = None) -> None:
        self.original_exception = original_exception
        self._setup(
            "" if original_exception is None else str(original_exception), llm_provider="openai", prefix=False
        )


class MockException(_LlmuxErrorMixin, _APIError):
    _kind = "mock"

    def __init__(
        self,
        status_code: int,
        message: Any,
        llm_provider: Optional[str] = None,
        model: Optional[str] = None,
        request: Any = None,
        litellm_debug_info: Optional[str] = None,
        max_retries: Optional[int] = None,
        num_retries: Optional[int] = None,
    ) -> None:
        self._setup(
            message,
            status_code=status_code,
            llm_provider=llm_provider,
            model=model,
            request=request,
            litellm_debug_info=litellm_debug_info,
            max_retries=max_retries,
            num_retries=num_retries,
        )


class BudgetExceededError(_LlmuxErrorMixin, Exception):
    """Budget cap reached.  Plain ``Exception`` subclass (no openai counterpart), like LiteLLM's."""

    _default_status = 422  # litellm.budget_exceeded_status_code
    _kind = "budget_exceeded"

    def __init__(
        self,
        current_cost: Optional[float] = None,
        max_budget: Optional[float] = None,
        message: Optional[str] = None,
        llm_provider: Optional[str] = None,
        entity_type: Optional[str] = None,
        entity_id: Optional[str] = None,
    ) -> None:
        self.current_cost = current_cost
        self.max_budget = max_budget
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.category = "litellm_rate_limit"
        self.rate_limit_type = "budget"
        message = (
            message or f"Budget has been exceeded! Current cost: {current_cost}, Max budget: {max_budget}"
        )
        self._setup(message, llm_provider=llm_provider or "", prefix=False)


LITELLM_EXCEPTION_TYPES = [
    AuthenticationError,
    NotFoundError,
    BadRequestError,
    UnprocessableEntityError,
    UnsupportedParamsError,
    UnsupportedEndpointError,
    Timeout,
    PermissionDeniedError,
    RateLimitError,
    ContextWindowExceededError,
    PaymentRequiredError,
    RejectedRequestError,
    ContentPolicyViolationError,
    InternalServerError,
    ServiceUnavailableError,
    BadGatewayError,
    APIError,
    APIConnectionError,
    APIResponseValidationError,
    OpenAIError,
    InternalServerError,
    JSONSchemaValidationError,
]

_BY_NAME: Dict[str, type] = {
    c.__name__: c for c in (*LITELLM_EXCEPTION_TYPES, BudgetExceededError, MockException)
}


def _from_native(
    class_name: str,
    kind: str,
    message: str,
    status_code: int,
    llm_provider: Optional[str],
    model: Optional[str],
    retry_after: Optional[float],
    code: Optional[str],
    attempts: int,
    api_base: Optional[str],
) -> BaseException:
    """Build the exception the engine raises.  Unknown class names fall back to ``APIError``.

    When ``openai`` is imported the result is also an instance of openai's matching class.
    """
    cls = _BY_NAME.get(class_name, APIError)
    obj = cls.__new__(cls)
    if cls is BudgetExceededError:
        obj.current_cost = None
        obj.max_budget = None
        obj.entity_type = None
        obj.entity_id = None
        obj.category = "litellm_rate_limit"
        obj.rate_limit_type = "budget"
    elif cls is RateLimitError:
        obj.category = "vendor_rate_limit"
        obj.rate_limit_type = None
        obj.headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    elif cls is Timeout:
        obj.headers = None
    elif cls is ContentPolicyViolationError:
        obj.provider_specific_fields = None
    elif cls is InternalServerError:
        obj.provider_status_code = status_code
    retries = attempts - 1 if attempts and attempts > 1 else None
    obj._setup(
        message,
        status_code=status_code,
        llm_provider=llm_provider,
        model=model,
        kind=kind,
        retry_after=retry_after,
        code=code,
        attempts=attempts,
        num_retries=retries,
        api_base=api_base,
        prefix=cls is not BudgetExceededError,
    )
    if cls is RateLimitError:
        obj.detail = obj.message
    return obj
