"""octoai_lite: a one-file, standard-library-only client for Chat Completions.

Talks to OctoAI's text-generation API and to any server that speaks the
OpenAI "Chat Completions" protocol (vLLM, llama.cpp's server, Ollama, OpenAI,
Together, Fireworks, Groq...). Copy this file anywhere Python 3.8+ runs; it
imports nothing outside the standard library and starts in milliseconds.

Quick start::

    from octoai_lite import Client, TextModel
    client = Client(base_url="http://127.0.0.1:8080/v1")   # or OCTOAI_TOKEN for OctoAI
    completion = client.chat.completions.create(
        model=TextModel.LLAMA_2_70B_CHAT, messages=[{"role": "user", "content": "Hi"}])
    print(completion.choices[0].message.content)

Map of the file (each section uses only the ones above it, but for
`from_chunks` in 3, which folds with 4f's `_ChunkFolder`)::

    1 Constants     2 Errors      3 Data types (TextModel, response dataclasses)
    4 Protocol, pure: 4a SSE  4b requests and the `_Call`  4c responses and errors
                      4d redirects  4e retry policy (`_judge`)  4f folding stream chunks
                      4g one HTTP/1.1 exchange  4h structured output (schemas from types)
    5 Transport, the only code that touches sockets: proxies, TLS, pools, and
                      the pumps that move bytes: 5a threads, 5b asyncio;
                      5c a handler in place of the network (record, replay)
    6 Client API: Stream, Client, AsyncStream, AsyncClient (chat.completions,
                      completions, embeddings, models, infer*, health_check),
                      sharing one _BaseClient
    7 Command line

Life of a call, with `deadline` and `max_retries` followed from `create` to
the socket: `create` builds the body (4b); `_BaseClient._prepare` checks
the options and makes one immutable `_Call` (deadline -> `deadline_at`,
max_retries -> `retries`). The client's `_run` loop hands it to the
transport's `send(call, url)`, which makes one try: `_slot` waits for a
pool slot, `_opening` connects (tunnel and TLS too), and an `_Exchange`
(4g) takes the request bytes out and the answer's head in; each of those
waits asks `_Call.wait` just before it waits. `send` returns the answer or
raises a typed failure saying whether the request went out. `_next` then
asks `_judge` (4e) what follows: the answer, a resend on another connection,
a redirect, a sleep and a retry (counted against `retries`, never past
`deadline_at`), or the error. A `Stream` feeds body pieces (read under the
same `_Call.wait`) to the `SSEDecoder` (4a), turns each event into a chunk
(4c) and folds it for `get_final_completion` (4f). Every rule is written
once; what each flavour writes for itself is how it waits: its connection
class, the pumps (`_pump`, `_apump`), the pool's lock or futures, the
`_run` loop, and the awaiting twins of the public methods.

Limits: a Client is safe to share between threads, an AsyncClient between
event loops. `timeout` (seconds) bounds connecting and every single read;
`deadline` (seconds) bounds a whole call, every phase, retries and a
trickling stream included. Nothing happens at import: no network, no
threads, no files.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import math
import os
import re
import select
import socket
import sys
import threading
import time
import types
import weakref
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs 3.5 ms to import; annotations are strings here (PEP 563), so only mypy reads them
    import asyncio
    import ssl
    from typing import (
        Any, AsyncGenerator, AsyncIterator, Callable, ClassVar, Dict, FrozenSet, Generic, Iterable, Iterator, List,
        Literal, Mapping, Optional, Tuple, Type, TypeVar, Union,
    )  # fmt: skip
    from typing import Awaitable  # noqa: F401  (used in string subscripts, which ruff does not read)
    from typing import Generic as _Of
    from typing import overload as _overload

    _Env = Mapping[str, str]
    _Secrets = Union[None, str, Tuple[str, ...]]  # values to keep out of messages and logs: the token, secret headers
    _PoolKey = Tuple[str, str, int, Optional[str]]
    _MessageT = TypeVar("_MessageT", bound="ChatMessage")
    _ResultT = TypeVar("_ResultT", bound="_Completion")
    _ClientT = TypeVar("_ClientT", bound="_BaseClient")
    _SelfT = TypeVar("_SelfT")
    _T = TypeVar("_T")
    _MapFn = Optional[Callable[[Any], Any]]
    _Object = Optional[Mapping[str, Any]]
    _Headers = Optional[Mapping[str, Optional[str]]]
    _CompletionT = TypeVar("_CompletionT")
    _Prompt = Union[str, List[str], List[int], List[List[int]]]  # text, or token ids
    _StreamT = TypeVar("_StreamT")
    _ChunkT = TypeVar("_ChunkT", bound="_Completion")
    _ParsedT = TypeVar("_ParsedT")
else:

    class _Of:  # typing.Generic for type checkers; at run time X[...] is just X
        def __class_getitem__(cls, item):
            return cls


__all__ = [
    "AsyncClient", "AsyncCompletionStream", "AsyncStream", "AuthenticationError", "BadRequestError", "ChatCompletion",
    "ChatMessage", "Choice", "ChoiceDelta", "Client", "Completion", "CompletionChoice", "CompletionStream",
    "CompletionUsage", "CreateEmbeddingResponse", "DEFAULT_BASE_URL", "DEFAULT_MAX_RETRIES", "DEFAULT_TIMEOUT",
    "Embedding", "FunctionCall", "HTTPRequest", "HTTPResponse", "InferenceFuture", "NotFoundError", "OctoAIClientError",
    "OctoAIConnectionError", "OctoAIError", "OctoAILengthError", "OctoAIParseError", "OctoAIRefusalError",
    "OctoAIServerError", "OctoAITimeoutError", "OctoAIValidationError", "ParsedChatCompletion", "ParsedChatMessage",
    "ParsedChoice", "PermissionDeniedError", "RateLimitError", "RateLimits", "SSEDecoder", "ServerSentEvent", "Stream",
    "TextModel", "ToolCall", "UnprocessableEntityError", "get_model_list", "main", "record", "replay",
]  # fmt: skip
__version__ = "0.1.0"


# Logging goes through `_log`; the logger is `octoai_lite.log`. The logging
# module is imported only once something else has imported it (only then
# may a record have somewhere to go) or OCTOAI_LOG asks for it: importing
# it here would cost a sixth of this module's import time.
_DEBUG, _INFO = 10, 20  # logging's level numbers


_LOGGER: Any = None  # made once: getLogger takes logging's module lock at every call


def _logger() -> Any:
    global _LOGGER
    if _LOGGER is None:
        import logging

        _LOGGER = logging.getLogger("octoai_lite")
    return _LOGGER


def _log_enabled(level: int) -> bool:
    return "logging" in sys.modules and bool(_logger().isEnabledFor(level))


def _log(level: int, message: str, *args: Any) -> None:
    if _log_enabled(level):
        _logger().log(level, message, *args)


def __getattr__(name: str) -> Any:
    # `octoai_lite.log`, made on first use (PEP 562).
    if name == "log":
        return _logger()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# =============================================================================
# 1. Constants
# =============================================================================
# Immutable values only. Limits carry their unit in the name and the reason
# for their size beside them.

DEFAULT_BASE_URL = "https://text.octoai.run/v1"
DEFAULT_TIMEOUT = 900.0  # seconds; the original SDK's default
DEFAULT_MAX_RETRIES = 2  # as openai-python

_SECURE_LINK_BASE_URL = "https://text.securelink.octo.ai/v1"
_CONFIG_PATH = os.path.join("~", ".octoai", "config.yaml")
_USER_AGENT = "octoai-lite/" + __version__

# Statuses worth another try: timeouts, conflicts, rate limits, and server
# trouble that is usually passing (the set openai-python retries).
_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
_BACKOFF_INITIAL_S = 0.5  # first wait; doubles per attempt (openai: 0.5 s)
_BACKOFF_MAX_S = 8.0  # longest computed wait (openai: 8 s)
_RETRY_AFTER_MAX_S = 60.0  # a server asking for longer gets its error at once
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Headers whose values are secrets wherever the token is one (Client(secret_headers=...) names more).
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "set-cookie"})
_TRANSPORT_VARIABLES = frozenset(
    {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD", "SSL_CERT_FILE"}
)  # the environment the transport reads, in either case

# Memory bounds. An SSE line or event above a few MiB is not a chat token;
# h11 and urllib3 bound headers the same way.
_MAX_LINE_BYTES = 8 * 1024 * 1024
_MAX_EVENT_BYTES = 16 * 1024 * 1024
_MAX_BODY_BYTES = 64 * 1024 * 1024  # a whole non-streamed JSON answer
_MAX_ERROR_BODY_BYTES = 64 * 1024  # an error page; only its text is kept
_MAX_HEAD_BYTES = 64 * 1024  # a response's status line and headers (http.client: 100 lines of 64 KiB)
_MAX_MESSAGE_CHARS = 500  # server text quoted in an exception message
# Redaction's work is (text) x (secret): a JSON error value past this much text is kept as its start, and a
# Set-Cookie's secret is its first 4 KiB (more than browsers keep: RFC 6265 section 6.1 asks for 4,096 bytes).
_MAX_REDACTED_JSON_CHARS = 256 * 1024
_MAX_COOKIE_SECRET_CHARS = 4096
_READ_SIZE = 64 * 1024  # one read from the socket

_MAX_CONNECTIONS = 100  # open at once to one host, idle and busy (httpx: 100; openai-python: 1,000)
_MAX_IDLE_CONNECTIONS = 32  # of those, kept open for reuse after a burst (httpx: 20)
_SLOT_RECHECK_S = 0.25  # a thread waiting for a slot looks again this often (a finalizer frees one unannounced)
_MAX_REDIRECTS = 5
_URL_SAFE = "/%:@!$&'()*+,;=?-._~"  # what a URL's path and query keep as they are (RFC 3986 pchar)
_MAX_CACHED_ROUTES = 256  # URLs whose parsed route a client remembers
_DONE_GRACE_S = 1.0  # after [DONE], how long the rest of the body may take
_HEALTH_CHECK_INTERVAL_S = 1.0

# What a call is doing when it waits, for messages ("timed out connecting to
# host:port"); a failure in the last two may come after the server acted.
_PHASES = types.MappingProxyType(
    {
        "pool": "waiting for a free connection to",
        "connect": "connecting to",
        "tunnel": "opening a tunnel to",
        "tls": "in the TLS handshake with",
        "send": "sending the request to",
        "wait": "waiting for the answer from",
        "body": "reading the answer from",
    }
)
_SENT_NOTE = " (the request was sent: the server may have received it)"
_REASONS = types.MappingProxyType(
    {
        400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
        408: "Request Timeout", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
        422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
        502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    }
)  # fmt: skip


# =============================================================================
# 2. Errors
# =============================================================================
# One tree, raised from one place per kind of failure:
#
#   OctoAIError(message, caused_by=None)  .status_code .body .request_id .headers
#   ├── OctoAIClientError            4xx, and problems on the client's side
#   │   ├── BadRequestError 400      ├── AuthenticationError 401
#   │   ├── PermissionDeniedError 403 ├── NotFoundError 404
#   │   ├── UnprocessableEntityError 422 └── RateLimitError 429
#   ├── OctoAIServerError            5xx
#   ├── OctoAIValidationError        a response or stream not shaped as the protocol says
#   │   └── OctoAIParseError         parse(): the answer is not the object asked for
#   │       ├── OctoAIRefusalError   the model refused (or a content filter stopped it)
#   │       └── OctoAILengthError    the answer was cut at max_tokens
#   └── OctoAIConnectionError        refused, reset, DNS, TLS, truncated body
#       └── OctoAITimeoutError


class OctoAIError(Exception):
    """Base of every error this client raises.

    Attributes: ``status_code`` (int or None), ``body`` (the server's parsed
    JSON or text, or None), ``request_id``, ``headers`` (lower-case names),
    ``retry_after`` (seconds the server asked to wait, or None). The token
    never appears in any of them.
    """

    def __init__(
        self,
        message: str,
        caused_by: Optional[BaseException] = None,
        *,
        status_code: Optional[int] = None,
        body: Any = None,
        request_id: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.caused_by = caused_by
        if caused_by is not None:
            self.__cause__ = caused_by
        self.status_code = status_code
        self.body = body
        self.request_id = request_id
        self.headers: Dict[str, str] = dict(headers or {})
        self.retry_after: Optional[float] = None


class OctoAIClientError(OctoAIError):
    """A 4xx answer, or a problem on the client's side."""


class BadRequestError(OctoAIClientError):
    """400: the server rejected the request."""


class AuthenticationError(OctoAIClientError):
    """401: the token is missing or wrong."""


class PermissionDeniedError(OctoAIClientError):
    """403: the token may not do this."""


class NotFoundError(OctoAIClientError):
    """404: no such endpoint or model."""


class UnprocessableEntityError(OctoAIClientError):
    """422: the request was well formed but invalid."""


class RateLimitError(OctoAIClientError):
    """429: too many requests, or out of quota."""


class OctoAIServerError(OctoAIError):
    """A 5xx answer, or an error the server reported inside a stream."""


class OctoAIValidationError(OctoAIError):
    """A response or stream that is not what the protocol says."""


class OctoAIParseError(OctoAIValidationError):
    """`parse`: the answer is not JSON, or not of the schema (``path``: where, ``$.items[2].price``).

    ``text`` is the model's raw text (or refusal); ``completion`` the `ChatCompletion` received.
    """

    text: Optional[str] = None
    path: Optional[str] = None
    completion: Optional[ChatCompletion] = None


class OctoAIRefusalError(OctoAIParseError):
    """`parse`: the model refused (``message.refusal``), or the server's content filter stopped the answer."""


class OctoAILengthError(OctoAIParseError):
    """`parse`: the answer was cut short (``finish_reason == "length"``): raise max_tokens."""


class OctoAIConnectionError(OctoAIError):
    """The connection failed: refused, reset, DNS, TLS, or a body cut short.

    ``request_sent`` is True when the request had gone out whole before the
    failure, so the server may have acted on it; such a POST is not re-sent.
    ``stale`` is True when it met a pooled connection that the server had
    closed while idle (no byte of an answer came): the retry policy (4e)
    decides whether the request may go out again on another.
    """

    request_sent = False
    stale = False


class OctoAITimeoutError(OctoAIConnectionError):
    """A connect, a read, a free pool slot or the call's deadline took too long."""


_ERRORS_BY_STATUS: Mapping[int, type] = types.MappingProxyType(
    {
        400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
        422: UnprocessableEntityError, 429: RateLimitError,
    }
)  # fmt: skip


# =============================================================================
# 3. Data types
# =============================================================================
# Response objects are dataclasses that keep the dict the server sent
# (`_raw`): `dict()` gives back every field of it, and at run time a field
# this module does not declare is an attribute too (`completion.service_tier`),
# though type checkers only know the declared ones.


class TextModel(str, enum.Enum):
    """Text models OctoAI served; any other model name may be passed as a str."""

    LLAMA_2_13B_CHAT = "llama-2-13b-chat"
    LLAMA_2_70B_CHAT = "llama-2-70b-chat"
    LLAMA2_70B = "llama-2-70b-chat"  # the name the original guide's prose uses
    CODELLAMA_7B_INSTRUCT = "codellama-7b-instruct"
    CODELLAMA_13B_INSTRUCT = "codellama-13b-instruct"
    CODELLAMA_34B_INSTRUCT = "codellama-34b-instruct"
    CODELLAMA_70B_INSTRUCT = "codellama-70b-instruct"
    MISTRAL_7B_INSTRUCT = "mistral-7b-instruct"
    MIXTRAL_8X7B_INSTRUCT = "mixtral-8x7b-instruct"

    __str__ = str.__str__  # the name the server knows, not "TextModel.NAME"


def get_model_list() -> List[str]:
    """Return the names of the models in `TextModel`."""
    return [model.value for model in TextModel]


def _to_json(value: Any) -> Any:
    if isinstance(value, _Model):
        return value.to_dict()
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    return value


# Lenient readers for the server's JSON: a value of the wrong type is read
# as absent (the server's own value stays in `_raw` and in `dict()`), so no
# response shape can make building an object fail.


def _str_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _int_or_none(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> Optional[str]:
    """Message content as text: a str, or the text parts of a list of content parts."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = (part.get("text") if isinstance(part, dict) else part for part in value)
        return "".join(text for text in texts if isinstance(text, str))
    return json.dumps(value)


def _object(cls: Any, value: Any) -> Any:
    return cls.from_dict(value) if isinstance(value, dict) else None


def _objects(cls: Any, value: Any) -> Optional[List[Any]]:
    return [cls.from_dict(item) for item in value if isinstance(item, dict)] if isinstance(value, list) else None


def _raw_field() -> Any:
    """The dict the server sent: kept for `dict()`, out of `==` and `repr`."""
    return dataclasses.field(default_factory=dict, repr=False, compare=False)


def _filler(factory: Callable[[], Any]) -> Any:
    """A field that is never None: an empty value stands where the server sent none (null in `dict()`)."""
    return dataclasses.field(default_factory=factory, metadata={"filler": True})


class _Model:
    """What the response dataclasses share: `dict()`, `json()`, `==`, `repr`, and `_raw`'s fields as attributes."""

    _SEED_FIELDS: ClassVar[FrozenSet[str]] = frozenset()  # always present in dict(), null when absent
    _raw: Dict[str, Any]

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            # Only called for names the class does not declare.
            if not name.startswith("_"):
                try:
                    return self._raw[name]
                except KeyError:
                    pass
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> Dict[str, Any]:
        """Return the server's JSON: every field it sent, the guide's fields always."""
        out: Dict[str, Any] = {}
        raw = self._raw
        for field in _fields(type(self)):
            name, value = field.name, getattr(self, field.name)
            if field.metadata and raw.get(name) is None and value == field.default_factory():
                value = None  # an empty stand-in for what the server did not send
            if value is None and name not in self._SEED_FIELDS and name not in raw:
                continue
            out[name] = _to_json(value)
        for key, value in raw.items():
            out.setdefault(key, value)
        return out

    dict = model_dump = to_dict

    # What dataclasses would generate for each class, written once (each generated method costs import time).
    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        names = [field.name for field in _fields(type(self))]
        return tuple(getattr(self, name) for name in names) == tuple(getattr(other, name) for name in names)

    def __repr__(self) -> str:
        shown = ", ".join(f"{field.name}={getattr(self, field.name)!r}" for field in _fields(type(self)))
        return f"{type(self).__qualname__}({shown})"

    def json(self, **dumps_kwargs: Any) -> str:
        """Return `to_dict()` as a JSON string."""
        return json.dumps(self.to_dict(), **dumps_kwargs)


_FIELDS_BY_CLASS: Dict[type, Tuple[Any, ...]] = {}


def _fields(cls: type) -> Tuple[Any, ...]:
    """The declared fields of a response class but `_raw`, worked out once."""
    found = _FIELDS_BY_CLASS.get(cls)
    if found is None:
        found = _FIELDS_BY_CLASS[cls] = tuple(f for f in dataclasses.fields(cls) if f.name != "_raw")
    return found


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class FunctionCall(_Model):
    """A function name and its JSON arguments (as a string)."""

    name: Optional[str] = None
    arguments: Optional[str] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"name", "arguments"})

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "FunctionCall":
        """Build from the server's JSON object."""
        arguments = data.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments)  # some servers send the object itself
        return cls(_str_or_none(data.get("name")), arguments, data)


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class ToolCall(_Model):
    """One tool call; in a stream chunk, a fragment of one (see `index`)."""

    id: Optional[str] = None
    type: Optional[str] = None
    function: FunctionCall = _filler(FunctionCall)
    index: Optional[int] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"id", "type", "function"})

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ToolCall":
        """Build from the server's JSON object."""
        return cls(
            _str_or_none(data.get("id")),
            _str_or_none(data.get("type")),
            _object(FunctionCall, data.get("function")) or FunctionCall(),
            _int_or_none(data.get("index")),
            data,
        )


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class ChatMessage(_Model):
    """A message: what the model answered, or what you send."""

    role: Optional[str] = None
    content: Optional[str] = None
    function_call: Optional[FunctionCall] = None
    tool_calls: Optional[List[ToolCall]] = None
    reasoning_content: Optional[str] = None  # DeepSeek, older vLLM
    refusal: Optional[str] = None
    reasoning: Optional[str] = None  # vLLM >= 0.17, OpenRouter, Groq
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"role", "content", "function_call"})

    @classmethod
    def from_dict(cls: Type[_MessageT], data: Dict[str, Any]) -> _MessageT:
        """Build from the server's JSON object."""
        return cls(
            _str_or_none(data.get("role")),
            _text(data.get("content")),
            _object(FunctionCall, data.get("function_call")),
            _objects(ToolCall, data.get("tool_calls")),
            _text(data.get("reasoning_content")),
            _str_or_none(data.get("refusal")),
            _text(data.get("reasoning")),
            data,
        )

    @property
    def reasoning_text(self) -> Optional[str]:
        """The reasoning, under whichever name the server sent it (`reasoning` or `reasoning_content`)."""
        return self.reasoning if self.reasoning is not None else self.reasoning_content


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class ChoiceDelta(ChatMessage):
    """The part of a message one stream chunk adds; `content` is "" when it adds no text.

    (openai-python gives None there; "" lets ``print(delta.content, end="")``
    print just the answer. `dict()` still shows what the server sent.)
    """

    content: str = _filler(str)
    _SEED_FIELDS = frozenset({"role", "content"})

    @classmethod
    def from_dict(cls: Type[_MessageT], data: Dict[str, Any]) -> _MessageT:
        """Build from the server's JSON object."""
        delta = super().from_dict(data)
        if delta.content is None:  # what the server sends for "no text" (or leaves out)
            delta.content = ""
        return delta


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class Choice(_Model):
    """One answer: `message` in a completion, `delta` in a stream chunk (the other is empty)."""

    index: int = 0
    message: ChatMessage = _filler(ChatMessage)
    delta: ChoiceDelta = _filler(ChoiceDelta)
    finish_reason: Optional[str] = None
    logprobs: Optional[Dict[str, Any]] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"index", "message", "delta", "finish_reason"})

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            if name == "message":  # a stream chunk's empty message, made when first asked for (see the fast path)
                self.message = ChatMessage()
                return self.message
            return _Model.__getattr__(self, name)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Choice":
        """Build from the server's JSON object."""
        logprobs = data.get("logprobs")
        return cls(
            _int_or_none(data.get("index")) or 0,
            _object(ChatMessage, data.get("message")) or ChatMessage(),
            _object(ChoiceDelta, data.get("delta")) or ChoiceDelta(),
            _str_or_none(data.get("finish_reason")),
            logprobs if isinstance(logprobs, dict) else None,
            data,
        )


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class CompletionUsage(_Model):
    """Token counts, the basis of billing."""

    completion_tokens: Optional[int] = None
    prompt_tokens: Optional[int] = None
    total_tokens: Optional[int] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"completion_tokens", "prompt_tokens", "total_tokens"})

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "CompletionUsage":
        """Build from the server's JSON object."""
        return cls(
            _int_or_none(data.get("completion_tokens")),
            _int_or_none(data.get("prompt_tokens")),
            _int_or_none(data.get("total_tokens")),
            data,
        )


def _dict_or_empty(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _usage_of(data: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """An answer's usage object: the top-level one, else Groq's `x_groq.usage`."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = _dict_or_empty(data.get("x_groq")).get("usage")
    return usage if isinstance(usage, dict) else None


# A rate-limit reset as Go prints a duration ("6m0s", "20ms", "1h2m3.5s") or as plain seconds ("0.5").
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ms|us|µs|μs|ns|h|m|s|)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}


def _duration_s(text: Optional[str]) -> Optional[float]:
    text, total, at = (text or "").strip()[:64], 0.0, 0
    while at < len(text):
        part = _DURATION_PART.match(text, at)
        if part is None or (not part[2] and (at or part.end() < len(text))):
            return None  # a unit-less number only alone
        total, at = total + float(part[1]) * _UNIT_S.get(part[2], 1.0), part.end()
    return total if text else None


def _count(text: Optional[str]) -> Optional[int]:
    text = (text or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


@dataclasses.dataclass(frozen=True)
class RateLimits:
    """An answer's rate-limit headers (``x-ratelimit-*``, as OpenAI, Groq, Together send them); None where absent."""

    remaining_requests: Optional[int] = None
    limit_requests: Optional[int] = None
    remaining_tokens: Optional[int] = None
    limit_tokens: Optional[int] = None
    reset_requests_s: Optional[float] = None  # seconds until the request budget is full again
    reset_tokens_s: Optional[float] = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> "RateLimits":
        """Read ``x-ratelimit-{remaining,limit,reset}-{requests,tokens}`` from lower-case header names."""
        get = headers.get
        return cls(
            _count(get("x-ratelimit-remaining-requests")), _count(get("x-ratelimit-limit-requests")),
            _count(get("x-ratelimit-remaining-tokens")), _count(get("x-ratelimit-limit-tokens")),
            _duration_s(get("x-ratelimit-reset-requests")), _duration_s(get("x-ratelimit-reset-tokens")),
        )  # fmt: skip


def _request_id(headers: Mapping[str, str]) -> Optional[str]:
    return headers.get("x-user-request-id") or headers.get("x-request-id")


class _Answer:
    """The HTTP answer a result came in, if any; not dataclass fields, so out of ``==``, ``repr`` and ``dict()``."""

    _headers: Dict[str, str]

    @property
    def headers(self) -> Dict[str, str]:
        """The response headers, names in lower case."""
        return getattr(self, "_headers", None) or {}

    @property
    def request_id(self) -> Optional[str]:
        """The server's id for the request (``x-request-id``, ``X-User-Request-ID``), if it sent one."""
        return _request_id(self.headers)

    @property
    def rate_limits(self) -> RateLimits:
        """The parsed rate-limit headers."""
        return RateLimits.from_headers(self.headers)


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class _Completion(_Answer, _Model):
    """What a chat completion and a legacy text completion (and their stream chunks) share."""

    id: Optional[str] = None
    choices: List[Any] = dataclasses.field(default_factory=list)
    created: Optional[int] = None
    model: Optional[str] = None
    object: Optional[str] = None
    system_fingerprint: Optional[str] = None
    usage: Optional[CompletionUsage] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"id", "choices", "created", "model", "object", "system_fingerprint", "usage"})
    if TYPE_CHECKING:
        _CHOICE: ClassVar[Any]  # the class of a choice
        _KIND: ClassVar[str]  # `object` of a folded answer

        def _first_text(self) -> str: ...  # the text choice 0 adds

    @classmethod
    def from_dict(cls: Type[_ResultT], data: Dict[str, Any]) -> _ResultT:
        """Build from the server's JSON object, leniently: whatever its shape, this does not raise."""
        return cls(
            _str_or_none(data.get("id")),
            _objects(cls._CHOICE, data.get("choices")) or [],
            _int_or_none(data.get("created")),
            _str_or_none(data.get("model")),
            _str_or_none(data.get("object")),
            _str_or_none(data.get("system_fingerprint")),
            _object(CompletionUsage, _usage_of(data)),
            data,
        )

    @classmethod
    def from_chunks(cls: Type[_ResultT], chunks: Iterable[Union[_ResultT, Dict[str, Any]]]) -> _ResultT:
        """Fold stream chunks (objects or dicts) into one completion.

        Text (content, reasoning, legacy `text`) and tool-call fragments are
        joined per choice, and the last finish_reason and usage win. Raises
        `OctoAIValidationError` for an item that is neither.
        """
        folder = _ChunkFolder(cls._KIND)
        for chunk in chunks:
            data = chunk._raw if isinstance(chunk, _Model) else chunk
            if not isinstance(data, dict):
                raise OctoAIValidationError(f"not a stream chunk: {type(chunk).__name__}")
            folder.add(data)
        return cls.from_dict(folder.result())


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class ChatCompletion(_Completion):
    """A chat completion, or one chunk of a streamed one."""

    choices: List[Choice] = dataclasses.field(default_factory=list)
    _CHOICE, _KIND = Choice, "chat.completion"

    def _first_text(self) -> str:
        return next((choice.delta.content for choice in self.choices if choice.index == 0), "")


# The shape nearly every chat stream chunk has, built without the lenient
# readers' calls into exactly what `from_dict` builds (test_fast_path.py
# checks it); any other shape (tool calls, usage, logprobs, a value of
# another type) gives None and takes the lenient path.
_new_object = object.__new__
_PLAIN_CHUNK_KEYS = frozenset({"id", "object", "created", "model", "system_fingerprint", "choices", "usage"})
_PLAIN_CHOICE_KEYS = frozenset({"index", "delta", "finish_reason", "logprobs"})
_PLAIN_DELTA_KEYS = frozenset({"role", "content", "reasoning_content", "refusal", "reasoning"})


def _plain_chat_chunk(data: Dict[str, Any]) -> Optional[ChatCompletion]:
    """`ChatCompletion.from_dict(data)` for a plain, valid chunk; None for any other."""
    get = data.get
    choices, chunk_id, kind, created = get("choices"), get("id"), get("object"), get("created")
    model, fingerprint = get("model"), get("system_fingerprint")
    if (
        type(choices) is not list
        or not _PLAIN_CHUNK_KEYS.issuperset(data)
        or not (chunk_id is None or isinstance(chunk_id, str))
        or not (kind is None or isinstance(kind, str))
        or not (model is None or isinstance(model, str))
        or not (type(created) is int or created is None)
        or not (fingerprint is None or isinstance(fingerprint, str))
        or get("usage") is not None
    ):
        return None
    built = []
    for choice in choices:
        if type(choice) is not dict or not _PLAIN_CHOICE_KEYS.issuperset(choice):
            return None
        get = choice.get
        delta, index, finish = get("delta"), get("index"), get("finish_reason")
        if (
            type(delta) is not dict
            or not (type(index) is int or index is None)
            or not (finish is None or isinstance(finish, str))
            or get("logprobs") is not None
            or not _PLAIN_DELTA_KEYS.issuperset(delta)
        ):
            return None
        for value in delta.values():
            if not (value is None or isinstance(value, str)):
                return None
        get = delta.get
        text, role, reasoning = get("content") or "", get("role"), get("reasoning")
        message = ChoiceDelta(role, text, None, None, get("reasoning_content"), get("refusal"), reasoning, delta)
        made = _new_object(Choice)  # no __init__: its empty `message` is made only if asked for
        made.index, made.delta, made.finish_reason, made.logprobs, made._raw = index or 0, message, finish, None, choice
        built.append(made)
    return ChatCompletion(chunk_id, built, created, model, kind, fingerprint, None, data)


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class CompletionChoice(_Model):
    """One answer of a legacy text completion, or the piece of it a stream chunk adds."""

    text: str = _filler(str)
    index: int = 0
    finish_reason: Optional[str] = None
    logprobs: Optional[Dict[str, Any]] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"text", "index", "finish_reason", "logprobs"})

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "CompletionChoice":
        """Build from the server's JSON object."""
        logprobs = data.get("logprobs")
        return cls(
            _text(data.get("text")) or "",
            _int_or_none(data.get("index")) or 0,
            _str_or_none(data.get("finish_reason")),
            logprobs if isinstance(logprobs, dict) else None,
            data,
        )


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class Completion(_Completion):
    """A legacy text completion (``client.completions.create``), or one chunk of a streamed one."""

    choices: List[CompletionChoice] = dataclasses.field(default_factory=list)
    _CHOICE, _KIND = CompletionChoice, "text_completion"

    def _first_text(self) -> str:
        return next((choice.text for choice in self.choices if choice.index == 0), "")


def _floats(value: Any) -> List[float]:
    """An embedding: a list of numbers, or (encoding_format="base64") little-endian float32s in base64."""
    if isinstance(value, list):
        return value if all(type(item) in (float, int) for item in value) else []
    if not isinstance(value, str):
        return []
    import array
    import base64

    floats = array.array("f")
    try:
        floats.frombytes(base64.b64decode(value, validate=True))
    except ValueError:  # binascii.Error, or a length that is not a multiple of 4
        raise OctoAIValidationError(f"an embedding is not base64 float32 data: {value[:40]!r}") from None
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class Embedding(_Model):
    """One input's embedding vector."""

    embedding: List[float] = dataclasses.field(default_factory=list)
    index: int = 0
    object: Optional[str] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"embedding", "index", "object"})

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Embedding":
        """Build from the server's JSON object; a base64 vector is decoded to floats."""
        return cls(_floats(data.get("embedding")), _int_or_none(data.get("index")) or 0,
                   _str_or_none(data.get("object")), data)  # fmt: skip


@dataclasses.dataclass(eq=False, repr=False)  # _Model's ==, repr
class CreateEmbeddingResponse(_Answer, _Model):
    """The answer of ``client.embeddings.create``: ``data[i].embedding`` for input i."""

    data: List[Embedding] = dataclasses.field(default_factory=list)
    model: Optional[str] = None
    object: Optional[str] = None
    usage: Optional[CompletionUsage] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"data", "model", "object", "usage"})

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "CreateEmbeddingResponse":
        """Build from the server's JSON object."""
        return cls(
            _objects(Embedding, data.get("data")) or [],
            _str_or_none(data.get("model")),
            _str_or_none(data.get("object")),
            _object(CompletionUsage, _usage_of(data)),
            data,
        )


class InferenceFuture(collections.namedtuple("InferenceFuture", ["response_id", "poll_url"])):
    """A handle on an inference running in the background (`Client.infer_async`): response_id, poll_url."""

    __slots__ = ()


@dataclasses.dataclass
class HTTPRequest:
    """What a `transport=` handler receives: one request, as it would go out (Host and framing aside).

    ``timeout`` is how long the handler may take to answer, already cut to the call's deadline.
    """

    method: str
    url: str
    headers: Dict[str, str]
    body: bytes
    timeout: float

    def json(self) -> Any:
        """The body as JSON; None for an empty body."""
        return json.loads(self.body) if self.body else None


@dataclasses.dataclass
class HTTPResponse:
    """What a `transport=` handler returns: the status, the headers and the body.

    The body is whole (bytes, or a str or JSON-able value sent as JSON) or an iterable of byte pieces,
    each one read as a server's chunk would be; an empty piece is a read of nothing yet, and an exception
    the pieces raise is what a broken connection would be (ConnectionResetError, say). An AsyncClient's
    handler may also return an awaitable, or an async iterable body.
    """

    status: int = 200
    headers: Dict[str, str] = dataclasses.field(default_factory=dict)
    body: Any = b""


# =============================================================================
# 4. Protocol (pure: no sockets, no clock, no randomness but via parameters)
# =============================================================================

# -- 4a. Server-Sent Events ---------------------------------------------------
# WHATWG HTML, "9.2.6 Interpreting an event stream". The decoder works on
# bytes: it splits lines on CR, LF or CRLF itself (never str.splitlines, which
# also splits on U+2028) and decodes each whole line, so a character split
# across reads is never broken. Chat meaning ([DONE], errors) lives in 4c.

_BOM = b"\xef\xbb\xbf"
_new_tuple = tuple.__new__  # a namedtuple made without its Python-level __new__
_LINE_END = re.compile(rb"\r\n|\r|\n")
_MAX_RETRY_DIGITS = 18  # a longer reconnection time (ms) is ignored: no real one, and int() refuses 4,300 digits


class ServerSentEvent(
    collections.namedtuple("ServerSentEvent", ["event", "data", "id", "retry"], defaults=["message", "", None, None])
):
    """One dispatched event: ``event`` (type), ``data``, ``id``, ``retry``.

    ``id`` is the stream's last event ID (None until one is set) and
    ``retry`` the last reconnection time in milliseconds the stream set.
    """

    __slots__ = ()

    def json(self) -> Any:
        """Return `data` parsed as JSON."""
        return json.loads(self.data)


class SSEDecoder:
    """Turn the bytes of an event stream into `ServerSentEvent` objects.

    Push bytes as they arrive with `feed`; it returns every event their
    blank line completed, holding nothing back. Call `close` at end of input.
    Raises `OctoAIValidationError` when a line or an event passes its limit.
    """

    def __init__(self, max_line_bytes: int = _MAX_LINE_BYTES, max_event_bytes: int = _MAX_EVENT_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_event_bytes = max_event_bytes
        self._buffer = bytearray()  # bytes of a line not yet ended
        self._at_start = True  # a BOM may still come
        self._skip_lf = False  # the last feed ended in CR: a leading LF is its pair
        self._data: List[str] = []  # the data buffer, one item per data line
        self._data_chars = 0
        self._event_type = ""  # the event type buffer
        self._last_event_id: Optional[str] = None  # the last event ID buffer
        self._retry: Optional[int] = None  # the reconnection time

    def feed(self, data: bytes) -> List[ServerSentEvent]:
        """Consume bytes; return the events they completed."""
        buffer = self._buffer
        scanned = len(buffer)  # no line end in what the buffer already held
        buffer += data
        if self._at_start:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                return []  # too little to tell a BOM from text
            if buffer.startswith(_BOM):
                del buffer[: len(_BOM)]
                scanned = 0
            self._at_start = False
        if self._skip_lf and buffer:
            self._skip_lf = False
            if buffer[0] == 0x0A:
                del buffer[:1]
                scanned = 0
        events: List[ServerSentEvent] = []
        if b"\n" in data and b"\r" not in data:
            # The usual case, LF only: the whole lines decoded and split at
            # once, in C (an LF byte always ends a UTF-8 sequence, whole or
            # broken, so this decodes as line by line would). Data lines and
            # blank lines, nearly all there is, are taken here inline.
            end = buffer.rfind(b"\n")  # -1 when the LF was a CRLF's second half
            lines = [] if end < 0 else buffer[:end].decode("utf-8", "replace").split("\n")
            del buffer[: end + 1]
            for line in lines:
                if line.startswith("data: "):
                    self._add_data(line[6:])
                elif line:
                    self.decode_line(line)  # a line that is not blank ends no event
                elif (event := self._dispatch()) is not None:
                    events.append(event)
        elif b"\r" in data:
            start = 0
            for match in _LINE_END.finditer(buffer, scanned):
                event = self._take_line(buffer[start : match.start()])
                if event is not None:
                    events.append(event)
                start = match.end()
                if start == len(buffer) and buffer[-1] == 0x0D:
                    self._skip_lf = True  # CR at the end of this read: LF may follow
            del buffer[:start]
        if len(buffer) > self.max_line_bytes:
            raise OctoAIValidationError(f"an event-stream line is longer than {self.max_line_bytes} bytes")
        return events

    def close(self) -> Optional[ServerSentEvent]:
        """Mark the end of input and reset.

        As the spec says, an event not ended by a blank line is not
        dispatched; it is returned here (or None) so that the caller may
        judge it, then forgotten.
        """
        if self._buffer:
            self._take_line(self._buffer)  # a line that is not blank: it dispatches nothing
        self._buffer.clear()
        self._at_start, self._skip_lf = True, False
        return self._dispatch()

    def _take_line(self, line: Union[bytes, bytearray]) -> Optional[ServerSentEvent]:
        if line.startswith(b"data: "):  # the line nearly every event is made of
            self._add_data(line[6:].decode("utf-8", "replace"))
            return None
        return self.decode_line(line.decode("utf-8", "replace"))

    def _add_data(self, value: str) -> None:
        self._data.append(value)
        self._data_chars += len(value) + 1
        if self._data_chars > self.max_event_bytes:
            raise OctoAIValidationError(f"an event is longer than {self.max_event_bytes} bytes")

    def decode_line(self, line: str) -> Optional[ServerSentEvent]:
        """Process one line without its line end; return an event if it dispatched one."""
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None  # a comment, such as ": ping"
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]  # exactly one space is part of the syntax
        if name == "data":
            self._add_data(value)
        elif name == "event":
            self._event_type = value
        elif name == "id" and "\0" not in value:
            self._last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:
            self._retry = int(value)  # digits only: int() also takes " 5", "+5", "1_0"
        return None  # any other field is ignored

    def _dispatch(self) -> Optional[ServerSentEvent]:
        # Only an event with at least one data line is dispatched; the event
        # type resets either way, the last event ID does not.
        data, event = self._data, None
        if data:
            text = data[0] if len(data) == 1 else "\n".join(data)
            event = _new_tuple(ServerSentEvent, (self._event_type or "message", text, self._last_event_id, self._retry))
        self._data, self._data_chars, self._event_type = [], 0, ""
        return event


# -- 4b. Building requests, and the call ---------------------------------------


def _build_chat_body(
    model: Union[str, TextModel], messages: Iterable[Any], params: Mapping[str, Any], key: str = "messages"
) -> Dict[str, Any]:
    """The JSON body of a request: model, `messages` (or the `key` given), and the parameters not None."""
    if not isinstance(messages, (list, str, bytes, dict)):
        messages = list(messages)  # a generator or tuple; anything else goes as given, for the server to judge
    body: Dict[str, Any] = {"model": str(model), key: messages}  # TextModel's str is its value
    body.update((name, value) for name, value in params.items() if value is not None)
    return body


def _json_default(value: Any) -> Any:
    if isinstance(value, _Model):
        return value.to_dict()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _build_json(body: Any) -> bytes:
    try:
        return json.dumps(body, default=_json_default, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except ValueError as exc:  # NaN or Infinity, which JSON has no way to say
        raise ValueError(f"the request body cannot be sent as JSON: {exc}") from None


def _merge_headers(*layers: _Headers) -> Dict[str, str]:
    """Merge header dicts, later ones winning whatever their case; None removes."""
    merged: Dict[str, Tuple[str, Optional[str]]] = {}
    for layer in layers:
        for name, value in (layer or {}).items():
            merged[name.lower()] = (name, value)
    return {name: value for name, value in merged.values() if value is not None}


def _build_headers(
    token: Optional[str],
    default_headers: _Headers,
    extra_headers: _Headers = None,
    *,
    stream: bool = False,
    has_body: bool = True,
) -> Dict[str, str]:
    base: Dict[str, Optional[str]] = {
        "User-Agent": _USER_AGENT,
        "Accept-Encoding": "identity",  # this client does not decompress
        "Accept": "text/event-stream" if stream else "application/json",
    }
    if has_body:
        base["Content-Type"] = "application/json"
    if token:
        base["Authorization"] = "Bearer " + token
    return _merge_headers(base, default_headers, extra_headers)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class _Call:
    """One call as the caller made it: the request, and the bounds it runs under.

    Immutable, and built by keyword; the transport reads it, never writes
    it. `wait` is the one deadline rule: every phase of every attempt (pool,
    connect, tunnel, TLS, write, head, body) asks it just before it waits,
    and the retry policy checks its sleeps against `deadline_at` (4e).
    """

    method: str
    url: str
    headers: Mapping[str, str]
    body: Optional[bytes]
    timeout_s: float  # connect and each read
    deadline_at: Optional[float]  # time.monotonic() by which the whole call ends
    retries: int
    base_url: Optional[str]  # for the 404 hint, when the URL was built from base_url
    secrets: Tuple[str, ...]  # the token and secret header values, to keep out of errors and log lines
    retry_every_s: Optional[float] = None  # health_check: a 5xx or a failed connection is tried again this often

    def wait(self, phase: str, where: str, now: float) -> float:
        """Seconds the next wait in `phase` may take: the timeout, cut to what is left of the deadline."""
        if self.deadline_at is None:
            return self.timeout_s
        if now >= self.deadline_at:
            raise self.deadline_error(phase, where)
        return min(self.timeout_s, self.deadline_at - now)

    def deadline_error(self, phase: str, where: str) -> OctoAITimeoutError:
        error = OctoAITimeoutError(
            f"the call's deadline passed {_PHASES[phase]} {where}" + (_SENT_NOTE if phase == "wait" else "")
        )
        error.request_sent = phase in ("wait", "body")
        return error


def _join_url(base: str, path: str, query: Optional[Mapping[str, Any]] = None) -> str:
    """`base` + "/" + `path`, with the query strings of both (an Azure-style `?api-version=` stays last)."""
    base, _, base_query = base.partition("?")
    url = base.rstrip("/") + "/" + path.lstrip("/") if path else base
    queries = [part for part in (base_query, urlencode(query, doseq=True) if query else "") if part]
    return url + "?" + "&".join(queries) if queries else url


_USERINFO = re.compile(r"(?<=//)[^/?#@]*@")


def _redact_userinfo(url: str) -> str:
    return _USERINFO.sub("***@", url)


def _check_base_url(url: str) -> str:
    """The base URL, checked: ValueError if it cannot be used as given (it never echoes a password)."""
    url = url.strip()  # a .env file's trailing space or newline
    shown = _redact_userinfo(url)
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"base_url {shown!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must start with http:// or https:// and name a host, not {shown!r}")
    if "#" in url:
        raise ValueError(f"base_url must not have a #fragment: {shown!r}")
    if "@" in parts.netloc:
        raise ValueError(
            f"base_url must not carry user:password@ ({shown!r}): pass the token as token= or OCTOAI_TOKEN"
        )
    path, mark, query = url.partition("?")
    return path.rstrip("/") + mark + query


# RFC 9110 section 5.6.2: a header name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host"})  # the exchange writes these


def _check_headers(headers: _Headers) -> Dict[str, Optional[str]]:
    """Caller headers, checked before anything is sent; None values remove a default."""
    checked: Dict[str, Optional[str]] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}: a name is letters, digits and !#$%&'*+-.^_`|~")
        if name.lower() in _FRAMING_HEADERS:
            raise ValueError(f"the {name} header is the client's to set; it cannot be given")
        if value is not None:
            if not isinstance(value, str):
                raise TypeError(f"the value of header {name!r} must be a str, not {type(value).__name__}")
            _check_header_value(f"the value of header {name!r}", value)
        checked[name] = value
    return checked


def _check_header_value(what: str, value: str) -> None:
    # The value is not quoted: it may be a credential.
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{what} has a line break or NUL in it")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} has characters outside Latin-1") from None


_PIECE_CHARS = 8  # a piece of a secret this long is taken out too, wherever a cut left it


def _header_secrets(headers: Mapping[str, Optional[str]], names: FrozenSet[str]) -> Tuple[str, ...]:
    """The values of the headers named secret (lower-case `names`), and each credential after a scheme ("Bearer x")."""
    found: List[str] = []
    for name, value in headers.items():
        if value and name.lower() in names:
            value = value[:_MAX_COOKIE_SECRET_CHARS] if name.lower() == "set-cookie" else value  # a server's: bounded
            found += [value.partition(" ")[2].strip(), value]  # the credential first: "Bearer ***" as it was sent
    return tuple(secret for secret in found if len(secret) >= 4)


def _redact(text: str, secrets: _Secrets) -> str:
    """The text with each secret replaced by ***, as it is and as JSON text writes it (\\", \\\\, \\u00e9),
    and any piece of one that a cut left behind."""
    for secret in (secrets,) if isinstance(secrets, str) else secrets or ():
        if len(secret) < 4:
            continue
        forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
        for form in sorted(forms, key=len, reverse=True):  # an escaped form whole before the plain one's pieces
            text = text.replace(form, "***")
            for start in range(len(form) - _PIECE_CHARS + 1):
                text = text.replace(form[start : start + _PIECE_CHARS], "***")
            for size in range(min(_PIECE_CHARS - 1, len(form) - 1, len(text)), 3, -1):
                if text.endswith(form[:size]):  # the text was cut inside the secret's first characters
                    text = text[:-size] + "***"
                    break
    return text


def _scrub(error: OctoAIError, secrets: _Secrets) -> OctoAIError:
    """The error with the secrets taken out of everything it carries that a server could have echoed."""
    if secrets:
        error.message = _redact(error.message, secrets)
        error.args = (error.message,) + error.args[1:]
        error.body = _redact_json(error.body, secrets)
        error.headers = {_redact(name, secrets): _redact(value, secrets) for name, value in error.headers.items()}
        error.request_id = error.request_id and _redact(error.request_id, secrets)
    return error


def _redact_json(value: Any, secrets: _Secrets) -> Any:
    """A JSON value with the secrets replaced wherever they appear in a key or a string.

    Redacted as one text (the work of one text, however many strings); a value
    whose text is past `_MAX_REDACTED_JSON_CHARS` is kept as the start of that text.
    """
    if not secrets:
        return value
    try:
        text = json.dumps(value)
        if len(text) > _MAX_REDACTED_JSON_CHARS:
            return _redact(_cut(text, _MAX_REDACTED_JSON_CHARS), secrets)
        return json.loads(_redact(text, secrets))
    except (RecursionError, ValueError):
        return "(a JSON value nested too deeply to show)"


def _parse_config_token(text: str) -> Optional[str]:
    """The top-level `token:` of ~/.octoai/config.yaml, read without a YAML library."""
    for line in text.splitlines():
        if line[:1].isspace():
            continue  # a nested key
        key, colon, value = line.partition(":")
        if not colon or key.strip() != "token":
            continue
        value = value.strip()
        if value[:1] in ("'", '"'):
            end = value.find(value[0], 1)
            return value[1:end] or None if end > 0 else None
        value = re.split(r"\s#", value, maxsplit=1)[0].strip()  # a comment needs a space before '#'
        return value or None
    return None


# -- 4c. Parsing responses and errors -----------------------------------------

_HTML_TAG = re.compile(r"<[^>]*>")
_WHITESPACE = re.compile(r"\s+")
_VERSION_SEGMENT = re.compile(r"/v\d+")


def _cut(text: str, limit: int = _MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _preview(text: str, secrets: _Secrets) -> str:
    """Server text to quote in a message: the secrets out first, then cut (a cut could split one)."""
    return _cut(_redact(text, secrets), 200)


def _loads(data: Union[str, bytes]) -> Any:
    """json.loads, with absurd nesting a ValueError too."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # not in typeshed


def _parse_json(body: bytes, secrets: _Secrets = None) -> Any:
    """Parse a JSON body; raise `OctoAIValidationError` saying what it was instead."""
    try:
        return _loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        preview = _preview(body[:_MAX_MESSAGE_CHARS].decode("utf-8", "replace"), secrets)
        # Not chained: JSONDecodeError keeps the whole body, secrets and all, in `doc`.
        raise OctoAIValidationError(f"the server sent a body that is not JSON ({exc}): {preview!r}") from None


def _error_details(payload: Any) -> Tuple[str, Optional[str], Optional[int]]:
    """(message, code, status) of an error payload: {"error": {...}}, {"error": "..."}, {"detail": ...}, or text."""
    if isinstance(payload, dict):
        error = payload.get("error") or payload
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("msg")
            text = message if isinstance(message, str) else _detail_text(error if message is None else message)
            code, kind = error.get("code"), error.get("type")
            name = code if isinstance(code, str) else kind if isinstance(kind, str) else None
            return _cut(text), name, _int_or_none(code)
        payload = error
    if isinstance(payload, str):
        if payload.lstrip().startswith("<"):
            payload = _HTML_TAG.sub(" ", payload)  # an HTML error page from a proxy: keep its words
        return _cut(_WHITESPACE.sub(" ", payload).strip()), None, None
    return _cut(_json_text(payload)), None, None


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value)
    except (RecursionError, ValueError):
        return "(a JSON value nested too deeply to show)"


def _detail_text(detail: Any) -> str:
    # FastAPI's 422 detail: [{"loc": [...], "msg": "...", "type": "..."}]
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = item.get("loc")
                where = ".".join(str(part) for part in loc) if isinstance(loc, list) else ""
                parts.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return _json_text(detail)


def _with_answer_secrets(secrets: _Secrets, headers: Mapping[str, str]) -> _Secrets:
    """The secrets, and those the answer's own headers carry (a Set-Cookie)."""
    found = _header_secrets(headers, _SECRET_HEADERS)
    return ((secrets,) if isinstance(secrets, str) else tuple(secrets or ())) + found if found else secrets


def _error_from_response(
    status: int, headers: Mapping[str, str], body: bytes, *, secrets: _Secrets = None, base_url: Optional[str] = None
) -> OctoAIError:
    """The typed error for an HTTP error answer; returned, not raised. No secret shows in it."""
    sent_credentials, secrets = bool(secrets), _with_answer_secrets(secrets, headers)
    try:  # the body as JSON, or as text; the secrets taken out either way
        payload: Any = _redact_json(_loads(body), secrets)
    except ValueError:
        payload = _redact(body.decode("utf-8", "replace"), secrets)
    text, _code, _status = _error_details(payload)
    reason = _REASONS.get(status, "")
    message = f"{status} {reason}".rstrip()
    if text:
        message += ": " + text
    if status == 401 and not sent_credentials:
        message += (
            " (no token is set: pass Client(token=...), set OCTOAI_TOKEN, or put 'token: ...' in ~/.octoai/config.yaml)"
        )
    if status == 404 and base_url is not None and not _VERSION_SEGMENT.search(urlsplit(base_url).path):
        message += f" (base_url {_redact_userinfo(base_url)} has no version segment: does it lack '/v1'?)"
    kept = payload if not isinstance(payload, str) else _cut(payload, 2000)
    return _server_error(message, status, kept, headers, secrets, OctoAIServerError if status >= 500 else OctoAIError)


def _server_error(
    message: str, status: Optional[int], body: Any, headers: Mapping[str, str], secrets: _Secrets, fallback: type
) -> OctoAIError:
    """The error of `status`'s class (or `fallback`, outside 4xx), the request id and headers on it, secrets out."""
    cls = _ERRORS_BY_STATUS.get(status or 0) or (OctoAIClientError if status and 400 <= status < 500 else fallback)
    headers = {name: _redact(value, secrets) for name, value in headers.items()}
    request_id = _request_id(headers)
    if request_id:
        message += f" [request id: {request_id}]"
    return cls(  # type: ignore[no-any-return]
        _redact(message, secrets), status_code=status, body=body, request_id=request_id, headers=headers
    )


def _error_from_payload(payload: Any, headers: Mapping[str, str], *, secrets: _Secrets = None) -> OctoAIError:
    """The typed error for an error object sent inside a 200 answer or a stream."""
    secrets = _with_answer_secrets(secrets, headers)
    payload = _redact_json(payload, secrets)
    text, _code, status = _error_details(payload)
    return _server_error("the server reported an error: " + text, status, payload, headers, secrets, OctoAIServerError)


def _check_completion(
    payload: Any,
    headers: Mapping[str, str],
    secrets: _Secrets,
    *,
    chunk: bool = False,
    what: str = "chat completion",
    key: str = "choices",
) -> Dict[str, Any]:
    """Return the payload if it is a `what` (or a stream chunk) with a `key` list; raise the right error if not."""
    what = "stream chunk" if chunk else what
    if not isinstance(payload, dict):
        raise OctoAIValidationError(
            f"expected a {what} object, got {type(payload).__name__}: {_preview(_json_text(payload), secrets)}"
        )
    if payload.get("error"):
        raise _error_from_payload(payload, headers, secrets=secrets)
    items = payload.get(key)
    if type(items) is not list or any(type(item) is not dict for item in items):
        keys = _preview(", ".join(sorted(payload)[:10]) or "none", secrets)
        raise OctoAIValidationError(f"expected a {what} with a '{key}' list; the server sent keys: {keys}")
    if not chunk and not items:
        raise OctoAIValidationError(f"the {what} has no {key}")
    return payload


def _payload_from_event(event: ServerSentEvent, headers: Mapping[str, str], secrets: _Secrets) -> Any:
    """The JSON of one event (not `[DONE]`); raises for an error event or bad JSON."""
    data = event.data
    try:  # exactly one JSON value, nearly every event: scanned without json.loads' wrappers (about 1 µs a chunk)
        payload, end = _scan_json(data, 0)
    except (ValueError, StopIteration, RecursionError):
        end = -1
    try:  # anything else: `_loads` gives its value, or its error
        if end != len(data):
            payload = _loads(data)
    except ValueError as exc:
        if event.event == "error":  # an error event's text is the message
            raise _error_from_payload(data, headers, secrets=secrets) from None
        raise OctoAIValidationError(f"an event's data is not JSON ({exc}): {_preview(data, secrets)!r}") from None
    if event.event == "error" or (isinstance(payload, dict) and payload.get("error")):
        raise _error_from_payload(payload, headers, secrets=secrets)
    return payload


def _stream_answered_with_json(body: bytes, headers: Mapping[str, str], secrets: _Secrets) -> OctoAIError:
    """The error for a streaming request answered with one JSON body: its error, or a clear complaint."""
    payload = _parse_json(body, secrets)
    if isinstance(payload, dict) and payload.get("error"):
        return _error_from_payload(payload, headers, secrets=secrets)
    return OctoAIValidationError(
        "the server answered a streaming request with one JSON body instead of an event stream"
    )


def _models_from_body(body: bytes, secrets: _Secrets) -> List[str]:
    payload = _parse_json(body, secrets)
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list) or not all(isinstance(item, dict) and "id" in item for item in data):
        raise OctoAIValidationError("expected {'data': [{'id': ...}, ...]} from the models endpoint")
    return [str(item["id"]) for item in data]


def _future_from_body(body: bytes, secrets: _Secrets) -> InferenceFuture:
    payload = _parse_json(body, secrets)
    if not isinstance(payload, dict) or "response_id" not in payload or "poll_url" not in payload:
        raise OctoAIValidationError("expected 'response_id' and 'poll_url' in the answer to an async inference")
    return InferenceFuture(str(payload["response_id"]), str(payload["poll_url"]))


def _poll_status_from_body(body: bytes, secrets: _Secrets) -> Dict[str, Any]:
    """A poll answer; raises OctoAIServerError when the background inference failed."""
    payload = _parse_json(body, secrets)
    if not isinstance(payload, dict):
        raise OctoAIValidationError("expected a JSON object from the poll URL")
    if payload.get("status") == "failed":
        payload = _redact_json(payload, secrets)
        raise OctoAIServerError("the background inference failed: " + _error_details(payload)[0], body=payload)
    return payload


def _response_url(status: Mapping[str, Any]) -> Optional[str]:
    """Where a completed background inference's result is; None while it runs."""
    if status.get("status") != "completed":
        return None
    url = status.get("response_url")
    if not isinstance(url, str):
        raise OctoAIValidationError("the completed inference names no 'response_url'")
    return url


_CALL_OPTIONS = ("extra_headers", "extra_query", "extra_body", "timeout", "max_retries", "deadline")


def _build_call(arguments: Mapping[str, Any], key: str) -> Tuple[Dict[str, Any], bool, Dict[str, Any]]:
    """(body, stream, per-call options) from a `create`'s keyword arguments; `model` and `key` are required."""
    params = dict(arguments)
    try:
        model, value = params.pop("model"), params.pop(key)
    except KeyError as exc:
        raise TypeError(f"create() missing required keyword argument {exc}") from None
    stream = bool(params.pop("stream", False))
    options = {name: params.pop(name) for name in _CALL_OPTIONS if name in params}
    body = _build_chat_body(model, value, params, key)
    if stream:
        body["stream"] = True
    return body, stream, options


# -- 4d. Redirects ------------------------------------------------------------

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def _split_url(url: str) -> Tuple[Any, Optional[int]]:
    """`urlsplit(url)` and its port; a bad port or an unclosed "[" is an `OctoAIClientError`, not a ValueError."""
    try:
        parts = urlsplit(url)
        return parts, parts.port
    except ValueError as exc:
        raise OctoAIClientError(f"not a valid URL ({exc}): {_cut(_redact_userinfo(url), 200)!r}") from None


def _origin(url: str) -> Tuple[str, str, Optional[int]]:
    parts, port = _split_url(url)
    default_port = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), port or default_port


def _redirect_target(method: str, url: str, status: int, headers: Mapping[str, str]) -> str:
    """Where to follow a redirect; raises `OctoAIClientError` where following would be wrong.

    Only 307 and 308 keep a POST's method and body (301/302/303 would make it
    a GET of something else); nothing is followed to another origin, where
    the token must not go, nor to a Location that is not a valid URL.
    """
    location = headers.get("location", "")
    try:
        target = urljoin(url, location)  # which splits the Location too
        elsewhere = _origin(target) != _origin(url)
    except (ValueError, OctoAIClientError):
        target, why = _cut(location, 200), "the Location is not a valid URL"
    else:
        if status not in (307, 308) and method not in _IDEMPOTENT_METHODS:
            why = f"a {method} cannot follow a {status} without turning into a GET"
        elif elsewhere:
            why = "it leads to another origin, where the token must not go"
        else:
            return target
    raise OctoAIClientError(
        f"{status} redirect to {target} not followed: {why}; set base_url to the new address",
        status_code=status,
        headers=headers,
        request_id=_request_id(headers),
    )


# -- 4e. Retry policy: one judge of every attempt's outcome -------------------
# What follows one try of a call is decided here alone, apart from the
# sleeping (as urllib3's Retry and openai's _should_retry decide it).


def _seconds(text: str, scale: float = 1.0) -> Optional[float]:
    """A finite number of seconds (negative ones as 0) from a header value, or None."""
    try:
        value = float(text) * scale
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def _parse_retry_after(headers: Mapping[str, str], now: float) -> Optional[float]:
    """Seconds the server asked to wait (retry-after-ms, Retry-After seconds or HTTP date), or None."""
    text = headers.get("retry-after", "")
    seconds = _seconds(headers.get("retry-after-ms", ""), 0.001)
    if seconds is None:
        seconds = _seconds(text)
    if seconds is not None or not text:
        return seconds
    import email.utils  # only this path needs it

    try:
        parsed = email.utils.parsedate_tz(text)
        return None if parsed is None else max(0.0, email.utils.mktime_tz(parsed) - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _retry_delay(
    attempt: int,
    *,
    status: Optional[int] = None,
    headers: Optional[Mapping[str, str]] = None,
    error_code: Optional[str] = None,
    now: float,
    rand: float,
    initial_s: float,
) -> Optional[float]:
    """Seconds to wait before retrying, or None not to retry.

    ``attempt`` counts the failed tries so far less one (0 after the first);
    ``rand`` is in [0, 1). A connection failure passes no status.
    """
    headers = headers or {}
    should_retry = headers.get("x-should-retry")
    if should_retry == "false":
        return None
    if status is not None and should_retry != "true":
        if status not in _RETRY_STATUSES or (status == 429 and error_code == "insufficient_quota"):
            return None  # insufficient_quota: waiting does not add quota
    asked = _parse_retry_after(headers, now)
    if asked is not None:
        return asked if asked <= _RETRY_AFTER_MAX_S else None
    backoff = min(initial_s * 2.0**attempt, _BACKOFF_MAX_S)
    return backoff * (1.0 - 0.25 * rand)  # jitter: 75% to 100% of the backoff


class _Attempt(collections.namedtuple("_Attempt", ["url", "retries", "hops", "wait_s"], defaults=[0, 0, 0.0])):
    """The next try of a call: its URL, the failed tries waited for so far, the redirects followed since the
    last of them, and the seconds to wait before it."""

    __slots__ = ()


def _judge(
    call: _Call, attempt: _Attempt, outcome: Any, *, now: float, clock: float, rand: Callable[[], float]
) -> Optional[_Attempt]:
    """What follows one try whose `outcome` is an answer (status, headers, error_body) or an OctoAIError.

    None: the answer is the call's. Otherwise the next attempt: at once for
    a dead pooled connection (uncounted) or a redirect, after `wait_s` for a
    retry. Raises the error when nothing is left to try: a POST that went
    out whole is never sent again (DESIGN.md, Retries), and no sleep may
    end past the deadline. `now` is the wall clock (for Retry-After dates),
    `clock` the monotonic one, `rand()` a number in [0, 1) for the jitter.
    """
    status: Optional[int] = None
    headers: Mapping[str, str] = {}
    if isinstance(outcome, OctoAIError):
        error = outcome
        if not isinstance(error, OctoAIConnectionError):
            raise error  # the answer broke the protocol: asking again will not mend it
        if error.request_sent and call.method not in _IDEMPOTENT_METHODS:
            raise error
        if error.stale:
            return attempt._replace(wait_s=0.0)
    else:
        status, headers = outcome.status, outcome.headers
        if status in _REDIRECT_STATUSES and "location" in headers:
            target = _redirect_target(call.method, attempt.url, status, headers)
            if attempt.hops >= _MAX_REDIRECTS:
                raise OctoAIClientError(f"more than {_MAX_REDIRECTS} redirects, the last to {target}")
            return attempt._replace(url=target, hops=attempt.hops + 1, wait_s=0.0)
        if status < 300:
            return None
        error = _error_from_response(status, headers, outcome.error_body, secrets=call.secrets, base_url=call.base_url)
        error.retry_after = _parse_retry_after(headers, now)
    delay: Optional[float] = None
    if call.retry_every_s is not None:  # health_check: a 5xx or no answer, again until the deadline
        if status is None or status >= 500:
            delay = call.retry_every_s
            if status is not None and call.deadline_at is not None and clock + delay >= call.deadline_at:
                return None  # out of time: the last 5xx is the answer
    elif attempt.retries < call.retries:
        delay = _retry_delay(
            attempt.retries, status=status, headers=headers, error_code=_error_details(error.body)[1], now=now,
            rand=rand(), initial_s=_BACKOFF_INITIAL_S,
        )  # fmt: skip
    if delay is None or (call.deadline_at is not None and clock + delay >= call.deadline_at):
        raise error
    return _Attempt(call.url, attempt.retries + 1, 0, delay)


# -- 4f. Folding stream chunks ------------------------------------------------


class _Text:
    """Text arriving in many small pieces, kept in blocks: memory grows with the text, not the pieces."""

    __slots__ = ("_blocks", "_pieces")

    def __init__(self, first: str = "") -> None:
        self._blocks: List[str] = []
        self._pieces: List[str] = [first] if first else []

    def add(self, piece: Any) -> None:
        text = piece if type(piece) is str else _text(piece)  # a str, or content parts; anything else as its JSON
        if not text:
            return
        pieces = self._pieces
        pieces.append(text)
        if len(pieces) == 1024:  # a str per token costs ~50 bytes; a block costs one per character
            self._blocks.append("".join(pieces))
            pieces.clear()

    def value(self) -> str:
        return "".join(self._blocks) + "".join(self._pieces)


_FOLDED_TEXTS = frozenset({"content", "reasoning", "reasoning_content", "text"})  # joined, not replaced


class _ChunkFolder:
    """Stream chunks (dicts) folded into one answer of `kind`, in linear time; a mistyped field counts as absent."""

    def __init__(self, kind: str = "chat.completion") -> None:
        self._kind = kind
        self._top: Dict[str, Any] = {}
        self._choices: Dict[int, Dict[str, Any]] = {}
        self._usage: Optional[Dict[str, Any]] = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        if not self._top:
            self._top.update((key, value) for key, value in chunk.items() if key not in ("choices", "usage", "object"))
        if "usage" in chunk or "x_groq" in chunk:
            self._usage = _usage_of(chunk) or self._usage  # an empty one leaves the last
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict):
                self._add_choice(choice)

    def _add_choice(self, choice: Dict[str, Any]) -> None:
        index = _int_or_none(choice.get("index")) or 0
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = {
                "choice": {"index": index}, "message": {}, "texts": {}, "tools": {}, "ids": {}, "last": -1,
            }  # fmt: skip
        delta = choice.get("delta")
        if not (isinstance(delta, dict) and delta):
            delta = _dict_or_empty(choice.get("message"))
        self._add_delta(state, delta)
        for key, value in choice.items():
            if key in ("delta", "message", "index") or value is None:
                continue
            if key == "logprobs" and isinstance(value, dict):
                self._add_logprobs(state["choice"], value)
            elif key == "text":
                (state["texts"].get(key) or state["texts"].setdefault(key, _Text())).add(value)
            else:
                state["choice"][key] = value

    def add_plain(self, chunk: Dict[str, Any]) -> None:
        """`add` for a chunk `_plain_chat_chunk` accepted: the same folding, without the checks it made."""
        if not self._top:
            self.add(chunk)
            return
        states = self._choices
        for choice in chunk["choices"]:
            state = states.get(choice.get("index") or 0)
            if state is None:
                self._add_choice(choice)
                continue
            self._add_delta(state, choice["delta"])
            finish = choice.get("finish_reason")
            if finish is not None:
                state["choice"]["finish_reason"] = finish

    def finished(self) -> bool:
        """Whether every choice seen so far has its finish_reason (so the answer is whole)."""
        return bool(self._choices) and all(state["choice"].get("finish_reason") for state in self._choices.values())

    @staticmethod
    def _add_delta(state: Dict[str, Any], delta: Mapping[str, Any]) -> None:
        message, texts = state["message"], state["texts"]
        for key, value in delta.items():
            if value is None:
                continue
            if key in _FOLDED_TEXTS:
                (texts.get(key) or texts.setdefault(key, _Text())).add(value)
            elif key == "tool_calls":
                if isinstance(value, list):
                    _ChunkFolder._add_tool_calls(state, value)
            elif key == "function_call":
                if isinstance(value, dict):
                    _ChunkFolder._add_function(message.setdefault("function_call", {"name": None}), value)
            else:
                message[key] = value

    @staticmethod
    def _add_function(function: Dict[str, Any], fragment: Mapping[str, Any]) -> None:
        name, arguments = fragment.get("name"), fragment.get("arguments")
        if isinstance(name, str) and name:
            function["name"] = name
        if arguments is not None:
            piece, text = arguments if isinstance(arguments, str) else _json_text(arguments), function.get("arguments")
            if text is None:
                function["arguments"] = piece  # most calls come whole: a str, not a _Text, is cheaper
            else:
                if isinstance(text, str):
                    text = function["arguments"] = _Text(text)
                text.add(piece)

    @staticmethod
    def _add_tool_calls(state: Dict[str, Any], fragments: List[Any]) -> None:
        tools, ids = state["tools"], state["ids"]
        for fragment in fragments:
            if not isinstance(fragment, dict):
                continue
            index = _int_or_none(fragment.get("index"))
            call_id = fragment.get("id")
            if index is None:
                # Some servers leave `index` out: a new id starts a new call,
                # a fragment without one continues the last call.
                index = ids.get(call_id) if isinstance(call_id, str) and call_id else None
                if index is None:
                    index = len(tools) if call_id or not tools else state["last"]
            call = tools.get(index)
            if call is None:
                call = tools[index] = {"id": None, "type": "function", "function": {"name": None}}
                state["last"] = max(state["last"], index)
            for key, value in fragment.items():
                if key == "function":
                    if isinstance(value, dict):
                        _ChunkFolder._add_function(call["function"], value)
                elif key != "index" and value is not None:
                    call[key] = value
                    if key == "id" and isinstance(value, str):
                        ids.setdefault(value, index)

    @staticmethod
    def _add_logprobs(choice: Dict[str, Any], logprobs: Mapping[str, Any]) -> None:
        folded = choice.get("logprobs")
        if not isinstance(folded, dict):
            folded = choice["logprobs"] = {}
        for key, value in logprobs.items():
            if isinstance(value, list) and isinstance(folded.get(key, []), list):
                folded.setdefault(key, []).extend(value)
            else:
                folded[key] = value

    def result(self) -> Dict[str, Any]:
        choices = []
        for _, state in sorted(self._choices.items()):
            texts = {key: text.value() for key, text in state["texts"].items()}
            choice = dict(state["choice"], finish_reason=state["choice"].get("finish_reason"))
            if self._kind == "text_completion":
                choice["text"] = texts.get("text", "")
            else:
                texts.pop("text", None)
                message: Dict[str, Any] = {"role": "assistant", "content": None, **state["message"], **texts}
                if "function_call" in message:
                    message["function_call"] = _folded_function(message["function_call"])
                if state["tools"]:
                    message["tool_calls"] = [
                        dict(call, function=_folded_function(call["function"]))
                        for _, call in sorted(state["tools"].items())
                    ]
                choice["message"] = message
            choices.append(choice)
        return {**self._top, "object": self._kind, "choices": choices, "usage": self._usage}


def _folded_function(function: Dict[str, Any]) -> Dict[str, Any]:
    arguments = function.get("arguments") or ""
    return dict(function, arguments=arguments if isinstance(arguments, str) else arguments.value())


# -- 4g. One HTTP/1.1 exchange ------------------------------------------------
# A request and its answer on one connection, as bytes out and events in
# (h11's shape), for both transports. Every rule of RFC 9112 this client
# relies on is decided here, once: framing (sections 6-7), interim 1xx
# answers, limits, and whether the connection may carry another request.
# Failures are OctoAIErrors: a malformed answer an OctoAIValidationError, one
# cut short an OctoAIConnectionError.

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END_CRLF = re.compile(rb"\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: .*)?", re.DOTALL)
_DIGITS = re.compile(r"[0-9]{1,18}")  # not str.isdigit, which takes "²"
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_NEXT_CHUNK = re.compile(rb"\r\n([0-9A-Fa-f]{1,16})\r?\n")  # a chunk's end and the next one's size line
_MAX_INTERIM_ANSWERS = 8  # 100 Continue, 103 Early Hints... before the real one
_MAX_CHUNK_LINE_BYTES = 4096  # a chunk-size or trailer line (h11: the same)
# Empty lines before a status line, and a chunked body's trailer section, are bounded by _MAX_HEAD_BYTES too.


def _build_request(method: str, target: str, host: str, headers: Mapping[str, str], body: Optional[bytes]) -> bytes:
    """The request's bytes; the headers were checked when they were built (4b)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


class _Exchange:
    """One request and its answer on one connection, with no I/O.

    Send `request`, then set `sent`. `feed` what arrives (b"" when the peer
    closed). `head()` turns True once the final answer's status line and
    headers are in (`status`, `headers` with lower-case names); then
    `body_piece()` gives the body: non-empty bytes, and b"" at its end. Both
    return None while they need more input. `reusable` turns True when the
    answer ended cleanly and the connection may carry another request.
    """

    def __init__(self, method: str, request: bytes, where: str, secrets: Tuple[str, ...] = ()) -> None:
        self.method = method
        self.request = request
        self.where = where
        self.secrets = secrets  # kept out of what its errors quote, before any cut
        self.sent = False  # the request went out whole
        self.received = False  # some byte of an answer arrived
        self.status = 0
        self.headers: Dict[str, str] = {}
        self.reusable = False
        self.ends_at_close = False  # the body has no framing: its end is the connection's close
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no head end
        self._eof = False
        self._keep_alive = True
        self._interim = 0
        self._blank_bytes = 0  # of empty lines before a status line
        self._trailer_bytes = 0
        self._remaining = 0
        self._reader: Optional[Callable[[], Optional[bytes]]] = None  # the body's framing, once the head is in
        self._after_data: Callable[[], Optional[bytes]] = self._chunk_end  # the reader after `_remaining` bytes
        self._failure: Optional[OctoAIError] = None  # found after a piece it must not hold back

    @property
    def phase(self) -> str:
        """Where the exchange stands: "send", "wait" (for the head) or "body"."""
        return "body" if self._reader is not None else "wait" if self.sent else "send"

    def feed(self, data: bytes) -> None:
        if data:
            self.received = True
            self._buffer += data
        else:
            self._eof = True

    def head(self) -> Optional[bool]:
        while self._reader is None:
            buffer = self._buffer
            blank = len(buffer) - len(buffer.lstrip(b"\r\n"))
            if blank:  # RFC 9112 section 2.2: empty lines before the status line are ignored, up to a bound
                del buffer[:blank]
                self._blank_bytes += blank
                if self._blank_bytes > _MAX_HEAD_BYTES:
                    raise self._invalid(f"more than {_MAX_HEAD_BYTES} bytes of empty lines before a status line")
            match = _HEAD_END.search(buffer, max(0, self._scanned - 3))
            if match is None:
                self._scanned = len(buffer)
                if len(buffer) > _MAX_HEAD_BYTES:
                    raise self._invalid(f"a response head longer than {_MAX_HEAD_BYTES} bytes")
                if self._eof:
                    raise self._cut_short()
                return None
            lines = _LINE_END_CRLF.split(bytes(buffer[: match.start()]))
            del buffer[: match.end()]
            self._scanned = 0
            self._parse_head(lines)
        return True

    def body_piece(self) -> Optional[bytes]:
        """The next piece of the body, b"" at its end; None while more input is needed.

        What the buffer holds of several chunks comes as one piece; an error
        in a later one is raised at the next call, after what came before it.
        """
        assert self._reader is not None, "head() first"
        if self._failure is not None:
            raise self._failure
        pieces: List[Any] = []
        try:
            while True:
                if self._reader == self._chunk_end:
                    self._whole_chunks(pieces)
                piece = self._reader()
                if not piece:
                    break  # None: more input needed; b"": the end
                pieces.append(piece)
                if not self._buffer:
                    break
        except OctoAIError as exc:
            if not pieces:
                raise
            self._failure = exc
        return b"".join(pieces) if pieces else piece

    def _whole_chunks(self, pieces: List[Any]) -> None:
        """After a chunk's data, the next whole chunks in one pass, as `_chunk_end`, `_chunk_size` and `_data` would."""
        buffer, at, next_chunk = self._buffer, 0, _NEXT_CHUNK.match
        while (size_line := next_chunk(buffer, at)) is not None:
            start = size_line.end()
            stop = start + int(size_line[1], 16)
            if stop == start or len(buffer) < stop:
                break  # the last chunk, or one not all here
            pieces.append(buffer[start:stop])
            at = stop
        del buffer[:at]

    # -- the head

    def _parse_head(self, lines: List[bytes]) -> None:
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise self._invalid(f"a malformed status line {self._quote(lines[0], 80)}")
        self.status = int(status_line.group(2))
        headers: Dict[str, str] = {}
        name = ""
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t") and name:  # an obsolete folded line continues the last value
                headers[name] += " " + line.strip().decode("latin-1")
                continue
            raw_name, colon, value = line.partition(b":")
            name = raw_name.decode("latin-1").lower()
            if not colon or not _TOKEN.fullmatch(name):
                raise self._invalid(f"a malformed header line {self._quote(line, 80)}")
            text = value.strip().decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        self.headers = headers
        if 100 <= self.status < 200 and self.status != 101:
            self._interim += 1  # 100 Continue, 103 Early Hints: the real answer follows
            if self._interim > _MAX_INTERIM_ANSWERS:
                raise self._invalid(f"more than {_MAX_INTERIM_ANSWERS} interim answers")
            return
        connection = headers.get("connection", "").lower()
        self._keep_alive = "close" not in connection and (status_line.group(1) == b"1" or "keep-alive" in connection)
        self._reader = self._framing()
        self.ends_at_close = self._reader == self._until_close

    def _framing(self) -> Callable[[], Optional[bytes]]:
        """The body's reader, by RFC 9112 section 6.3."""
        method, status, headers = self.method, self.status, self.headers
        if status == 101:
            self._keep_alive = False  # switched to a protocol this client does not speak
        if method == "HEAD" or status in (101, 204, 304) or (method == "CONNECT" and 200 <= status < 300):
            return self._ended
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if coding.lower().rsplit(",", 1)[-1].strip() != "chunked":
                return self._until_close
            if "content-length" in headers:
                self._keep_alive = False  # both framings: a request smuggling pattern, never reuse
            return self._chunk_size
        length = headers.get("content-length")
        if length is None:
            return self._until_close
        values = {value.strip() for value in length.split(",")}  # "5, 5" is one length said twice
        if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
            raise self._invalid(f"a malformed Content-Length {self._quote(length, 40)}")
        self._remaining = int(values.pop())
        self._after_data = self._ended
        return self._data if self._remaining else self._ended

    # -- the body: each reader returns a piece, b"" at the end, or None for more input

    def _data(self) -> Optional[bytes]:
        """Up to `_remaining` bytes of a Content-Length body or of a chunk; then on to `_after_data`."""
        buffer = self._buffer
        if not buffer:
            if self._eof:
                raise self._cut_short()
            return None
        if len(buffer) <= self._remaining:
            piece = bytes(buffer)
            buffer.clear()
        else:
            piece = bytes(buffer[: self._remaining])
            del buffer[: self._remaining]
        self._remaining -= len(piece)
        if not self._remaining:
            self._reader = self._after_data
        return piece

    def _line(self) -> Optional[bytes]:
        """One line of the chunked framing, without its line end; None if incomplete."""
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > _MAX_CHUNK_LINE_BYTES:
                raise self._invalid(f"a chunk-size or trailer line longer than {_MAX_CHUNK_LINE_BYTES} bytes")
            if self._eof:
                raise self._cut_short()
            return None
        line = bytes(self._buffer[:end]).rstrip(b"\r")
        del self._buffer[: end + 1]
        return line

    def _chunk_size(self) -> Optional[bytes]:
        if (line := self._line()) is None:
            return None
        size = line.split(b";", 1)[0].strip()  # chunk extensions are ignored
        if not _CHUNK_SIZE.fullmatch(size):
            raise self._invalid(f"a malformed chunk-size line {self._quote(line, 40)}")
        self._remaining = int(size, 16)
        self._reader = self._data if self._remaining else self._trailer
        return self._reader()

    def _chunk_end(self) -> Optional[bytes]:
        if (line := self._line()) is None:
            return None
        if line:
            raise self._invalid("a chunk longer than its size line said")
        self._reader = self._chunk_size
        return self._reader()

    def _trailer(self) -> Optional[bytes]:
        while (line := self._line()) is not None:
            if not line:  # the empty line that ends the trailer section
                self._reader = self._ended
                return self._reader()
            self._trailer_bytes += len(line) + 2
            if self._trailer_bytes > _MAX_HEAD_BYTES:
                raise self._invalid(f"a trailer section longer than {_MAX_HEAD_BYTES} bytes")
        return None

    def _until_close(self) -> Optional[bytes]:
        if self._buffer:
            piece = bytes(self._buffer)
            self._buffer.clear()
            return piece
        if self._eof:
            self._reader = self._ended
            return b""
        return None

    def _ended(self) -> bytes:
        # Bytes after the answer, or a close, and the connection cannot be trusted again.
        self.reusable = self.sent and self._keep_alive and not self._buffer and not self._eof
        return b""

    # -- errors

    def _invalid(self, what: str) -> OctoAIValidationError:
        # Every error quoting the server passes here: a credential the request carried, echoed back, is taken out.
        self._keep_alive = False
        return OctoAIValidationError(_redact(f"{what} from {self.where}", self.secrets))

    def _quote(self, data: Union[bytes, str], limit: int) -> str:
        """The server's `data` for a message: credentials taken out before it is cut to `limit`, so no piece is left."""
        if isinstance(data, str):
            return repr(_redact(data, self.secrets)[:limit])
        return repr(_redact(data.decode("latin-1"), self.secrets).encode("latin-1")[:limit])

    def _cut_short(self) -> OctoAIConnectionError:
        if self._reader is None and not self._buffer:
            what = f"the server {self.where} closed the connection without an answer{_SENT_NOTE if self.sent else ''}"
        else:
            what = f"the connection closed before the whole answer arrived from {self.where}"
        error = OctoAIConnectionError(what)
        error.request_sent = self.sent
        return error


class _Body:
    """Collect a body up to a limit."""

    def __init__(self, limit: int, where: str) -> None:
        self.limit = limit
        self.where = where
        self._chunks: List[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> bool:
        """Take a piece; False once the body ended (b""). Raises past the limit (the response is then closed)."""
        if not data:
            return False
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self.limit:
            raise OctoAIValidationError(f"the answer from {self.where} is larger than {self.limit} bytes")
        return True

    def value(self) -> bytes:
        return b"".join(self._chunks)


def _answer_head(answer: HTTPResponse, pieces: bool) -> bytes:
    """The status line and headers a server would send for a handler's answer (its framing ours)."""
    lines = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Answer')}"]
    lines += [f"{name}: {value}" for name, value in answer.headers.items() if name.lower() not in _FRAMING_HEADERS]
    lines.append("Transfer-Encoding: chunked" if pieces else f"Content-Length: {len(answer.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _whole_body(answer: HTTPResponse) -> HTTPResponse:
    """The answer with a str or JSON-able body as bytes (JSON with its Content-Type); pieces left as they are."""
    if not isinstance(answer, HTTPResponse):
        raise OctoAIClientError(f"a transport handler must return an HTTPResponse, not {type(answer).__name__}")
    body = answer.body
    if isinstance(body, (dict, list)) and not any(name.lower() == "content-type" for name in answer.headers):
        answer.headers = {**answer.headers, "Content-Type": "application/json"}
    if isinstance(body, (str, dict, list)) or body is None:
        answer.body = body.encode("utf-8") if isinstance(body, str) else _build_json(body)
    return answer


def _chunk_of(piece: Any) -> Optional[bytes]:
    """A body piece as a chunk on the wire; None for an empty one: a read of nothing yet, not the end."""
    if not isinstance(piece, (bytes, bytearray)):
        raise OctoAIClientError(f"a transport handler's body pieces must be bytes, not {type(piece).__name__}")
    return b"%x\r\n%s\r\n" % (len(piece), piece) if piece else None


def _answer_bytes(answer: HTTPResponse) -> Iterator[Optional[bytes]]:
    """A handler's answer as the bytes a server would send: one read per piece of its body (None for an empty one)."""
    body = _whole_body(answer).body
    if isinstance(body, (bytes, bytearray)):
        yield _answer_head(answer, False) + body
        return
    yield _answer_head(answer, True)
    try:
        yield from map(_chunk_of, body)  # the pump asks the deadline again after each, an empty one too
    finally:  # read to its end, failed, or closed by the client: the body's own generator is told
        close = getattr(body, "close", None)
        if close is not None:
            close()
    yield b"0\r\n\r\n"


# -- 4h. Structured output ----------------------------------------------------
# `parse` asks for a strict `json_schema` answer (never `json_object`: LM
# Studio refuses it). A dataclass or TypedDict becomes a schema with every
# field required and no other property. The answer is checked against that
# schema, or the caller's, in this subset, coercing nothing: type (a name or
# a list; "integer" is neither 1.0 nor true), enum and const (equal as JSON
# text), properties, required, additionalProperties, items and anyOf; other
# keywords ($ref, minimum, pattern...) are the server's to enforce. Then the
# dataclass is built.


class ParsedChatMessage(ChatMessage, _Of["_ParsedT"]):
    """A `ChatMessage` with `parsed`, the answer as the type asked for (in `repr`; not in `==` or `dict()`)."""

    parsed: _ParsedT

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, parsed={self.parsed!r})"


class ParsedChoice(Choice, _Of["_ParsedT"]):
    """A `Choice` whose `message` is a `ParsedChatMessage`."""

    message: ParsedChatMessage[_ParsedT]


class ParsedChatCompletion(ChatCompletion, _Of["_ParsedT"]):
    """What `parse` returns: a `ChatCompletion` whose every choice has ``message.parsed``."""

    choices: List[ParsedChoice[_ParsedT]]  # type: ignore[assignment]


# JSON's types as the json module reads them (bool first: True is an int to isinstance).
_JSON_TYPES: Tuple[Tuple[type, str], ...] = tuple(
    zip((type(None), bool, int, float, str, list, dict), "null boolean integer number string array object".split())
)
_SCALAR_SCHEMAS = types.MappingProxyType(dict(_JSON_TYPES[:5]))


def _json_type(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), type(value).__name__)


def _annotation(kind: Any) -> Tuple[Any, Tuple[Any, ...]]:
    """An annotation's list, dict, "union", "literal", object (for Any) or None, and its arguments."""
    import typing  # only parse() pays for it

    origin = typing.get_origin(kind)
    if origin is typing.Union or origin is getattr(types, "UnionType", typing.Union):  # X | Y: 3.10+
        return "union", typing.get_args(kind)
    if kind is typing.Any or kind in (list, dict, object):
        return object if kind is typing.Any else kind, ()
    return "literal" if origin is typing.Literal else origin, typing.get_args(kind)


def _is_record(kind: Any) -> bool:
    """A dataclass or a TypedDict (the class)."""
    typed_dict = isinstance(kind, type) and issubclass(kind, dict) and hasattr(kind, "__total__")
    return typed_dict or isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _fields_of(kind: Any) -> Tuple[Dict[str, Any], List[str]]:
    import typing

    hints = typing.get_type_hints(kind)  # resolves string annotations (PEP 563) in the class's module
    names = [f.name for f in dataclasses.fields(kind) if f.init] if dataclasses.is_dataclass(kind) else list(hints)
    return hints, names


def _schema_of(kind: Any, seen: Tuple[Any, ...] = ()) -> Dict[str, Any]:
    """The JSON Schema of an annotation; TypeError for what JSON cannot carry."""
    origin, args = _annotation(kind)
    if kind in _SCALAR_SCHEMAS:
        return {"type": _SCALAR_SCHEMAS[kind]}
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return {"enum": [member.value for member in kind]}
    if _is_record(kind):
        if kind in seen:
            raise TypeError(f"{kind.__name__} contains itself: parse() takes no recursive types")
        hints, names = _fields_of(kind)
        required = getattr(kind, "__required_keys__", names if getattr(kind, "__total__", True) else ())
        properties = {name: _schema_of(hints[name], seen + (kind,)) for name in names}
        required = [name for name in names if name in required]
        return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    if origin == "literal":
        return {"enum": list(args)}
    if origin == "union":
        options = [_schema_of(arg, seen) for arg in args]
        simple = all(list(option) == ["type"] for option in options)
        return {"type": [option["type"] for option in options]} if simple else {"anyOf": options}
    if origin is list:
        return {"type": "array", **({"items": _schema_of(args[0], seen)} if args else {})}
    if origin is dict and (not args or args[0] is str):
        return {"type": "object", **({"additionalProperties": _schema_of(args[1], seen)} if args else {})}
    if origin is object:
        return {}
    raise TypeError(f"parse() cannot express {kind!r} in JSON Schema")


def _member(path: str, name: str) -> str:
    return f"{path}.{name}" if name.isidentifier() else f"{path}[{json.dumps(name)}]"


def _schema_problem(schema: Any, value: Any, path: str = "$") -> Optional[Tuple[str, str]]:
    """(where, what) `value` breaks `schema` in the subset above, or None when it fits."""
    if not isinstance(schema, dict):  # true, false, or a form outside the subset
        return (path, "no value is allowed here") if schema is False else None
    got, kinds = _json_type(value), schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    allowed = [schema["const"]] if "const" in schema else schema.get("enum")
    if isinstance(kinds, list) and not any(kind == got or (kind, got) == ("number", "integer") for kind in kinds):
        return path, f"expected {' or '.join(map(str, kinds))}, got {got}"
    if isinstance(allowed, list) and _json_text(value) not in [_json_text(option) for option in allowed]:
        return path, f"expected one of {_cut(_json_text(allowed), 200)}, got {_cut(_json_text(value), 80)}"
    options = schema.get("anyOf")
    if isinstance(options, list) and options:
        found = [problem for problem in (_schema_problem(option, value, path) for option in options) if problem]
        if len(found) == len(options):  # none fits: the one that got deepest explains best
            deepest, tail = max(found, key=lambda problem: len(problem[0])), f", got {got}"
            wanted = [what[9 : -len(tail)] for _, what in found if what.startswith("expected ") and what.endswith(tail)]
            return (path, f"expected {' or '.join(wanted)}{tail}") if len(wanted) == len(found) else deepest
    if got == "array" and "items" in schema:
        parts = [(schema["items"], item, f"{path}[{number}]") for number, item in enumerate(value)]
    elif got == "object":
        missing = [name for name in schema.get("required", ()) if name not in value]
        properties, others = schema.get("properties") or {}, schema.get("additionalProperties", True)
        unknown = [name for name in value if name not in properties] if others is False else []
        if missing:
            return path, f"missing required property {json.dumps(missing[0])}"
        if unknown:
            return path, f"unexpected property {json.dumps(unknown[0])}"
        parts = [(properties.get(name, others), item, _member(path, name)) for name, item in value.items()]
    else:
        return None
    return next(filter(None, (_schema_problem(part, item, where) for part, item, where in parts)), None)


def _build(kind: Any, value: Any) -> Any:
    """A value that fits `kind`'s schema as `kind`: dataclasses, enums and floats made, recursively."""
    origin, args = _annotation(kind)
    if _is_record(kind):
        hints, names = _fields_of(kind)
        built = {name: _build(hints[name], value[name]) for name in names if name in value}
        return kind(**built) if dataclasses.is_dataclass(kind) else built  # type: ignore[operator]
    if kind is float or isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(value)  # float: JSON's 2 is a number too
    if origin is list and args:
        return [_build(args[0], item) for item in value]
    if origin is dict and args:
        return {name: _build(args[1], item) for name, item in value.items()}
    if origin == "union":
        return _build(next(arg for arg in args if _schema_problem(_schema_of(arg), value) is None), value)
    return value


def _response_format(asked: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the strict response_format to send for `asked`, its schema); TypeError for what is neither type nor schema."""
    if isinstance(asked, dict) and asked.get("type") not in ("json_object", "json_schema", "text"):
        schema, name = asked, str(asked.get("title") or "response")
    elif _is_record(asked):
        schema, name = _schema_of(asked), asked.__name__
    else:
        raise TypeError(f"parse() takes a dataclass, a TypedDict or a JSON Schema dict, not {asked!r}")
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]  # OpenAI's rule for a schema's name
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}, schema


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parsed_answer(choice: Choice, completion: ChatCompletion, asked: Any, schema: Dict[str, Any]) -> Any:
    """One choice's answer as `asked`; raises `OctoAIParseError` or a subclass."""
    message, reason = choice.message, choice.finish_reason
    text = message.refusal or message.content

    def failed(cls: Type[OctoAIParseError], what: str, path: Optional[str] = None) -> OctoAIParseError:
        where = f"choice {choice.index}: " if len(completion.choices) > 1 else ""
        shown = f"; the answer: {_preview(text, None)!r}" if text and cls is not OctoAIRefusalError else ""
        error = cls(f"structured output: {where}{what}{shown}")
        error.text, error.path, error.completion = text, path, completion
        return error

    if message.refusal:
        raise failed(OctoAIRefusalError, f"the model refused: {_preview(message.refusal, None)}")
    if reason == "length":
        raise failed(OctoAILengthError, "the answer was cut short (finish_reason 'length')")
    if reason == "content_filter":
        raise failed(OctoAIRefusalError, "the server's content filter stopped the answer")
    if text is None:
        raise failed(OctoAIParseError, f"the answer has no content (finish_reason {reason!r})")
    try:
        value = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise failed(OctoAIParseError, f"the answer is not JSON ({exc})") from None
    problem = _schema_problem(schema, value)
    if problem is None and isinstance(asked, dict) and not isinstance(value, dict):
        problem = "$", f"expected object, got {_json_type(value)}"  # parsed is a dict
    if problem:
        raise failed(OctoAIParseError, f"{problem[0]}: {problem[1]}", problem[0])
    try:
        return _build(asked, value)
    except (TypeError, ValueError, OverflowError) as exc:  # a dataclass's own checks in __post_init__, say
        raise failed(OctoAIParseError, f"{asked.__name__} refused the answer: {exc}") from exc


def _recast(obj: Any, cls: Type[_SelfT], **changes: Any) -> _SelfT:
    """`obj`'s attributes, and `changes`, on a new `cls` (a subclass of obj's class that adds no fields)."""
    new = cls.__new__(cls)
    new.__dict__.update(obj.__dict__, **changes)
    return new


def _parsed_completion(completion: ChatCompletion, asked: Any, schema: Dict[str, Any]) -> ParsedChatCompletion[Any]:
    choices = []
    for choice in completion.choices:
        message = _recast(choice.message, ParsedChatMessage, parsed=_parsed_answer(choice, completion, asked, schema))
        choices.append(_recast(choice, ParsedChoice, message=message))
    return _recast(completion, ParsedChatCompletion, choices=choices)


# =============================================================================
# 5. Transport: the only code that touches sockets
# =============================================================================
# Two flavours, threads (blocking sockets) and asyncio, that only move bytes.
# A transport's `send(call, url)` makes one try on one URL and reports it:
# the answer, or a typed failure (what to do next is 4e's). Opening a
# connection is one list of steps (`_opening`), waiting for a slot one rule
# (`_PoolBook._slot`), every request an `_Exchange` (4g); low-level failures
# are translated in one place (`_failure`). A connection goes back to the
# pool only when its exchange says it is reusable.


# A child forked while another thread held a lock of this module would wait
# for it for ever: pools and transports make their locks anew there.
_AFTER_FORK: "weakref.WeakSet[Any]" = weakref.WeakSet()
if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=lambda: [owner._after_fork() for owner in list(_AFTER_FORK)])


class _OwnLock:
    """A lock shared between threads, made anew in a forked child (a thread of the parent may have held it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _AFTER_FORK.add(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


def _env_get(env: _Env, name: str) -> Optional[str]:
    # curl and urllib prefer the lower-case form of proxy variables.
    return env.get(name.lower()) or env.get(name.upper()) or None


def _bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether NO_PROXY (comma-separated hosts, .domains, host:port, CIDR, '*') exempts host."""
    host = host.lower().strip("[]")
    for entry in no_proxy.replace(" ", "").lower().split(","):
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, entry_port = entry, ""
        if entry.startswith("["):  # an IPv6 address, bracketed: [::1], [::1]:8080, [fd00::]/8
            entry_host, _, after = entry[1:].partition("]")
            entry_port = after[1:] if after.startswith(":") else ""
            entry_host += after if after.startswith("/") else ""
        elif entry.count(":") == 1:
            entry_host, entry_port = entry.split(":")
        if entry_port and entry_port != str(port):
            continue
        entry_host = entry_host.lstrip(".")
        if host == entry_host or host.endswith("." + entry_host):
            return True
        if "/" in entry_host:
            import ipaddress  # only CIDR entries need it

            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry_host, strict=False):
                    return True
            except ValueError:
                continue
    return False


def _proxy_for(scheme: str, host: str, port: int, env: _Env) -> Optional[str]:
    """The proxy URL to use for a request, from the *_PROXY variables, or None."""
    if _bypasses_proxy(host, port, _env_get(env, "no_proxy") or ""):
        return None
    if scheme == "https":
        proxy = _env_get(env, "https_proxy")
    else:
        # HTTP_PROXY in upper case is ignored under CGI, where a request's
        # "Proxy:" header would set it (httpoxy), as urllib does.
        proxy = env.get("http_proxy") or (None if "REQUEST_METHOD" in env else env.get("HTTP_PROXY"))
    proxy = proxy or _env_get(env, "all_proxy")
    if proxy and "://" not in proxy:
        proxy = "http://" + proxy
    return proxy


def _proxy_authorization(proxy_url: str) -> Dict[str, str]:
    parts = urlsplit(proxy_url)
    if parts.username is None:
        return {}
    import base64  # only proxies with credentials need it

    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
    return {"Proxy-Authorization": "Basic " + base64.b64encode(credentials).decode("ascii")}


def _ssl_context(verify: Union[bool, str, "os.PathLike[str]"], env: _Env) -> ssl.SSLContext:
    """The client's one TLS context: verifying by default, or with a CA bundle, or not at all."""
    import ssl  # 4 ms of import that plain-HTTP users (a local server) never need

    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _logger().warning("TLS certificate verification is off (verify_ssl=False): traffic can be intercepted")
        return context
    cafile = os.fspath(verify) if not isinstance(verify, bool) else env.get("SSL_CERT_FILE")
    try:
        if cafile and os.path.isdir(cafile):
            return ssl.create_default_context(capath=cafile)
        return ssl.create_default_context(cafile=cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise OctoAIClientError(f"cannot load the CA bundle {cafile!r}: {exc}", exc) from exc


def _is_dropped(sock: Any) -> bool:
    """Whether an idle pooled socket was closed by the server, or holds bytes nobody asked for."""
    if getattr(sock, "pending", None) is not None and sock.pending():  # TLS bytes already decrypted
        return True
    try:
        if hasattr(select, "poll"):  # select() cannot watch descriptors above 1023
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True  # an idle HTTP connection has nothing to say: readable means gone


def _translate_error(exc: BaseException, phase: str, where: str) -> OctoAIConnectionError:
    """The OctoAIConnectionError (or OctoAITimeoutError) for a socket or TLS failure in `phase`."""
    doing = _PHASES[phase]
    note = _SENT_NOTE if phase == "wait" else ""  # after the request went out whole
    tls = sys.modules.get("ssl")  # a TLS failure means ssl was imported
    error: OctoAIConnectionError
    if isinstance(exc, socket.timeout):
        error = OctoAITimeoutError(f"timed out {doing} {where}{note}", exc)
    elif tls is not None and isinstance(exc, tls.SSLCertVerificationError):
        error = OctoAIConnectionError(
            f"TLS certificate verification failed for {where}: {exc.verify_message or exc.reason}; "
            "pass verify_ssl='/path/to/ca.pem' or set SSL_CERT_FILE if a private CA signed it",
            exc,
        )
    elif isinstance(exc, socket.gaierror):
        error = OctoAIConnectionError(
            f"cannot resolve {where}: {exc}; is base_url (or OCTOAI_BASE_URL) right? "
            "OctoAI's hosted service has shut down: point base_url at your server",
            exc,
        )
    elif isinstance(exc, ConnectionRefusedError):
        error = OctoAIConnectionError(
            f"error {doing} {where}: the connection was refused; is the server running, and base_url "
            "(or OCTOAI_BASE_URL) right?",
            exc,
        )
    else:
        error = OctoAIConnectionError(f"error {doing} {where}: {type(exc).__name__}: {exc}{note}", exc)
    error.request_sent = phase in ("wait", "body")
    return error


def _failure(exc: BaseException, phase: str, where: str, call: _Call) -> BaseException:
    """What a low-level failure in `phase` means: a wait the deadline cut short says so."""
    if isinstance(exc, socket.timeout) and call.deadline_at is not None and time.monotonic() >= call.deadline_at:
        return call.deadline_error(phase, where)
    if isinstance(exc, OSError):
        return _translate_error(exc, phase, where)
    return exc  # the exchange's own errors; and interrupts, cancellations, bugs as they are


class _Route:
    """Where requests to one URL go: the pool key, the address to connect to, the target."""

    def __init__(self, url: str, env: _Env) -> None:
        parts, port = _split_url(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OctoAIClientError(f"not an http(s) URL: {_redact_userinfo(url)!r}")
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = port or (443 if self.scheme == "https" else 80)
        # What goes on the wire names the host in ASCII (IDNA for an international name), an IPv6 one in brackets.
        try:
            ascii_host = self.host if self.host.isascii() else self.host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise OctoAIClientError(f"the host name {self.host!r} has no ASCII (IDNA) form: {exc}") from None
        bracketed = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        self.host_header = parts.netloc.rpartition("@")[2]
        if not self.host_header.isascii():
            self.host_header = bracketed + (f":{port}" if port else "")
        self.authority = f"{bracketed}:{self.port}"  # a CONNECT's target (RFC 9110 section 9.3.6)
        self.proxy = _proxy_for(self.scheme, self.host, self.port, env)
        self.key: _PoolKey = (self.scheme, self.host, self.port, self.proxy)
        self.where = f"{self.host}:{self.port}"
        self.connect_host, self.connect_port = self.host, self.port
        self.proxy_headers: Dict[str, str] = {}
        # What a request line cannot carry (spaces, non-ASCII) is percent-encoded; the rest goes as given.
        self.target = quote(parts.path or "/", _URL_SAFE) + ("?" + quote(parts.query, _URL_SAFE) if parts.query else "")
        if self.proxy:
            proxy, proxy_port = _split_url(self.proxy)
            if proxy.scheme != "http" or not proxy.hostname:
                raise OctoAIClientError(f"unsupported proxy URL (only http:// proxies): {proxy.scheme}://...")
            self.connect_host, self.connect_port = proxy.hostname, proxy_port or 80
            self.where += f" through the proxy {self.connect_host}:{self.connect_port}"
            if self.scheme == "http":  # a plain-HTTP proxy takes the absolute URL; https tunnels
                self.target = f"http://{self.host_header}{self.target}"
                self.proxy_headers = _proxy_authorization(self.proxy)

    def request(self, method: str, headers: Mapping[str, str], body: Optional[bytes]) -> bytes:
        if self.proxy_headers:
            headers = {**headers, **self.proxy_headers}
        return _build_request(method, self.target, self.host_header, headers, body)


def _numeric_addresses(host: str, port: int) -> List[Any]:
    """getaddrinfo's answer for an IP literal, found without a lookup; [] for a name."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        return []


def _lookup(address: Tuple[str, int], timeout_s: float) -> List[Any]:
    """getaddrinfo for a host name, given up after `timeout_s`: the resolver has no bound of its own.

    It runs in a thread of its own, which a lookup that never answers leaves behind until the resolver
    gives up; the call goes on to its error at once.
    """
    found: List[Any] = []

    def look() -> None:
        try:
            found.append(socket.getaddrinfo(*address, type=socket.SOCK_STREAM))
        except OSError as exc:
            found.append(exc)

    thread = threading.Thread(target=look, name="octoai_lite lookup", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not found:
        raise socket.timeout(f"no answer from the name resolver within {timeout_s:g} s")
    if isinstance(found[0], OSError):
        raise found[0]
    return found[0]  # type: ignore[no-any-return]


def _opening(route: _Route, call: _Call, context: Optional[ssl.SSLContext]) -> Iterator[Tuple[str, Any, float]]:
    """The steps that open a connection along `route`, for either flavour to take in turn.

    Each is (step, argument, wait), its wait asked of the call just before
    it: "connect" to (host, port); through a proxy to an https URL,
    "tunnel" with (the CONNECT exchange, the wait of each of its reads),
    the proxy's answer checked once it is in; then "tls" with (context,
    host name).
    """
    where = route.where
    yield "connect", (route.connect_host, route.connect_port), call.wait("connect", where, time.monotonic())
    if context is None:
        return
    if route.proxy:

        def wait() -> float:
            return call.wait("tunnel", where, time.monotonic())

        credentials = _proxy_authorization(route.proxy)
        request = _build_request("CONNECT", route.authority, route.authority, credentials, None)
        exchange = _Exchange("CONNECT", request, where, _header_secrets(credentials, _SECRET_HEADERS))
        yield "tunnel", (exchange, wait), wait()
        if exchange.status != 200:
            raise OctoAIConnectionError(f"the proxy refused a tunnel to {where}: {exchange.status}")
    yield "tls", (context, route.host), call.wait("tls", where, time.monotonic())


class _PoolBook:
    """The bookkeeping both pools share: idle connections and leases per key.

    At most `max_connections` connections to one key are open at once (idle,
    or leased to a try), and at most `max_idle` of them wait idle for reuse,
    unless callers are waiting for one (closing it would make them open anew).
    Idle ones are reused most recent first, after a check that the server has
    not closed them or sent bytes nobody asked for. A slot is taken and freed
    in one atomic step each (a dict's store and pop), so an interrupt landing
    anywhere (a signal's exception, a cancellation) can at worst drop a
    connection for the collector to close, never keep a slot. After a fork
    the child starts afresh: the parent keeps using the sockets it inherited.
    """

    def __init__(self, max_connections: int, max_idle: int) -> None:
        self.max_connections = max_connections
        self.max_idle = max_idle
        self._idle: Dict[_PoolKey, List[Any]] = {}
        self._leased: Dict[_PoolKey, Dict[int, List[Any]]] = {}  # id(held) -> held, for each try holding a slot
        self._waiting: Dict[_PoolKey, int] = {}  # callers waiting for a slot: a connection they will want stays open
        self._closed = False
        self._pid = os.getpid()

    def _leases(self, key: _PoolKey) -> Dict[int, List[Any]]:
        if self._pid != os.getpid():
            for inherited in self._idle.values():
                for conn in inherited:
                    conn.close()  # this process's descriptor only (see the connections' close)
            self._idle, self._leased, self._waiting, self._pid = {}, {}, {}, os.getpid()
        return self._leased.setdefault(key, {})

    def _reserve(self, key: _PoolKey, held: List[Any]) -> bool:
        """Whether the caller may go on, with an idle connection put in `held`, or None there to open a new one."""
        leases, idle, conn = self._leases(key), self._idle.get(key), None
        while idle and conn is None:
            conn = idle.pop()
            if conn.is_gone():
                conn.close()
                conn = None
        if conn is None and len(leases) >= self.max_connections:
            return False
        held.append(conn)
        leases[id(held)] = held
        return True

    def give_back(self, key: _PoolKey, held: List[Any], finalizing: bool = False) -> None:
        """Close what `held` holds, then free its slot; once, whoever takes the connection out first (list.pop is
        atomic). Takes no lock that may be busy: a finalizer passes `finalizing`, as the garbage collector may
        run it while this thread holds the pool's. The response's finalizer also frees a slot an interrupt
        kept its taker from freeing (no one else can be closing it then)."""
        conn, taken = None, False
        if held:
            try:
                conn, taken = held.pop(), True
            except IndexError:
                pass
        if not (taken or finalizing):
            return  # the one who took it frees the slot once the socket is closed
        try:
            if conn is not None:
                conn.close()
        finally:
            if self._leases(key).pop(id(held), None) is not None:  # not if taken before a fork
                self._wake(key, finalizing)

    def _give(self, key: _PoolKey, held: List[Any], reusable: bool) -> None:
        """End the lease `held` after a whole answer: its connection kept idle if reusable, else closed."""
        try:
            conn = held.pop()
        except IndexError:
            return  # closed by its holder meanwhile, who frees the slot
        leases = self._leases(key)  # first: a fork since resets the book
        try:
            idle = self._idle.setdefault(key, [])
            if conn.pid != self._pid:
                pass  # opened before a fork: the parent's to reuse
            elif reusable and not self._closed and (len(idle) < self.max_idle or self._waiting.get(key)):
                conn.reused = True  # from now on, a failure may only mean the server closed it while idle
                idle.append(conn)
                conn = None
        finally:
            if conn is not None:
                conn.close()  # before its slot is free: never more sockets open than max_connections
            leases.pop(id(held), None)

    def _wake(self, key: _PoolKey, finalizing: bool) -> None:
        raise NotImplementedError

    def _slot(self, route: _Route, call: _Call, held: List[Any]) -> Iterator[float]:
        """The wait for a connection, for either flavour: yields how long to wait for a freed slot, until
        `held` has an idle connection, or None with a slot reserved for a new one. Run it under the pool's lock."""
        wait_s = call.wait("pool", route.where, time.monotonic())
        give_up_at = time.monotonic() + wait_s
        while True:
            if self._reserve(route.key, held):
                return
            now = time.monotonic()
            if now >= give_up_at:
                call.wait("pool", route.where, now)  # the deadline's error, if that is what ran out
                raise OctoAITimeoutError(
                    f"all {self.max_connections} connections to {route.host}:{route.port} stayed busy for {wait_s:g} s"
                )
            self._waiting[route.key] = self._waiting.get(route.key, 0) + 1
            try:
                yield give_up_at - now
            finally:
                self._waiting[route.key] -= 1

    def _close_idle(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def open_count(self) -> int:
        """Connections open now, idle or busy."""
        return self.idle_count() + sum(len(leases) for leases in self._leased.values())

    def idle_count(self) -> int:
        """Connections open and waiting for reuse."""
        return sum(len(idle) for idle in self._idle.values())


class _ResponseBase:
    """One try of a call on one pooled connection, from the request's bytes to the answer's end.

    Whoever holds it reads it to the end (the connection then goes back to
    the pool) or calls `close()`, from any thread: a read blocked in another
    thread then ends at once, as if the body had ended. Each flavour adds one
    method, `_drive(goal, fallback)`, which pumps bytes into the exchange
    until `goal()` returns something; so `start`, `read_chunk` and `read`
    below return values for threads and awaitables for asyncio.
    """

    def __init__(self, pool: Any, route: _Route, held: List[Any], call: _Call) -> None:
        self.secrets = call.secrets  # what to keep out of what it reports
        self.error_body = b""  # an error answer's body, read by `start` (up to a limit)
        self.closed_early = False  # closed by its holder before the answer ended
        self._pool = pool
        self._key = route.key
        self.where = route.where
        self._conn = held[0]
        self._held = held  # the transport's: the connection is given back once, whoever is first
        data = route.request(call.method, call.headers, call.body)
        self._exchange = _Exchange(call.method, data, route.where, call.secrets)
        self._call = call  # its bounds: every wait asks `_call.wait`
        self._written = False
        self._send_error: Optional[BaseException] = None
        self._quiet = False  # reading the rest of an answer already complete: a failure loses nothing

    @property
    def status(self) -> int:
        return self._exchange.status

    @property
    def headers(self) -> Dict[str, str]:
        return self._exchange.headers

    def _drive(self, goal: Callable[[], Any], fallback: Any) -> Any:
        raise NotImplementedError

    # -- what the holder calls (awaitables for asyncio)

    def start(self) -> Any:
        """Send the request; read the answer's head, and an error answer's body (to judge it)."""
        return self._drive(self._answer, None)

    def read_chunk(self) -> Any:
        """The next part of the body as it arrives; b"" at the end (the connection is then released)."""
        return self._drive(self._piece, b"")

    def read(self) -> Any:
        """The whole body; raises past `_MAX_BODY_BYTES`."""
        body = _Body(_MAX_BODY_BYTES, self.where)

        def whole() -> Optional[bytes]:
            while (piece := self._piece()) is not None:
                if not body.add(piece):
                    return body.value()
            return None

        return self._drive(whole, b"")

    def grace(self, grace_s: float) -> None:
        """Let the rest of an answer already complete for its holder take `grace_s` in all; a failure loses nothing."""
        call, give_up_at = self._call, time.monotonic() + grace_s
        deadline_at = give_up_at if call.deadline_at is None else min(call.deadline_at, give_up_at)
        self._call = dataclasses.replace(call, timeout_s=min(call.timeout_s, grace_s), deadline_at=deadline_at)
        self._quiet = True

    # -- goals for the pump: each returns None while it needs more bytes

    def _answer(self) -> Optional[bool]:
        exchange = self._exchange
        if not self._written:
            self._written = True
            try:
                self._conn.send(exchange.request, self._wait())
            except (OSError, OctoAIError) as exc:
                # The server may have answered early (401, 413) and closed
                # without reading the body: what it said is read next.
                self._send_error = exc
        self._check_sent()
        if exchange.head() is None:
            return None
        if self.status < 300:
            return True
        while len(self.error_body) <= _MAX_ERROR_BODY_BYTES:
            piece = exchange.body_piece()
            if piece is None:
                return None
            if not piece:
                self._release()
                return True
            self.error_body += piece
        self._abort()  # too long to be worth reading to its end
        return True

    def _piece(self) -> Optional[bytes]:
        if not self._held:
            return b""
        piece = self._exchange.body_piece()
        if piece == b"":
            self._release()
        return piece

    def _check_sent(self) -> None:
        # Sent whole: the write did not fail and nothing of it waits in a buffer (asyncio's).
        if self._written and self._send_error is None and not self._conn.writing:
            self._exchange.sent = True

    def _wait(self) -> float:
        return self._call.wait(self._exchange.phase, self.where, time.monotonic())

    # -- failures

    def __enter__(self) -> "_ResponseBase":
        return self

    def __exit__(self, kind: Any, exc: Optional[BaseException], traceback: Any) -> bool:
        """Around every pump: a failure closes the connection and becomes the right error, or ends quietly."""
        if exc is None:
            return False
        exchange = self._exchange
        self._check_sent()  # before closing: a lost connection's buffer is dropped, not sent
        self._abort()
        if isinstance(exc, Exception) and (self.closed_early or self._quiet):
            return True  # closed by its holder, or the rest of a complete answer
        failed = exc
        if self._send_error is not None and exchange.phase != "body":
            failed = self._send_error  # the write failed and no answer came: that is the story
        error = _failure(failed, exchange.phase, self.where, self._call)
        if type(error) is OctoAIConnectionError and self._conn.reused and not exchange.received:
            error.stale = True  # a pooled connection the server closed while it was idle
        if isinstance(error, OctoAIError):
            error = _scrub(error, self.secrets)  # framing errors quote bytes
        if error is exc:
            return False
        raise error from exc

    def _release(self) -> None:
        self._pool.release(self._key, self._held, self._exchange.reusable)

    def close(self) -> None:
        """End the response now; the connection is closed, not reused. Safe from any thread.

        A read going on meanwhile (another thread, another task) ends quietly, as at the body's end.
        """
        if self._held:
            self.closed_early = True
            self._abort()

    def __del__(self) -> None:
        # An answer dropped before anyone took it (an interrupt between `send`
        # returning and the caller's next line), whose release an interrupt cut
        # short, or whose stream was dropped unfinished, must not keep its pool slot.
        if "_held" in self.__dict__:
            self._abort(finalizing=True)

    def _abort(self, finalizing: bool = False) -> None:
        """Close the connection and free its slot (this module's own decision, not the holder's)."""
        self._pool.give_back(self._key, self._held, finalizing)


class _TransportBase(_OwnLock):
    """The settings both transports share, the one TLS context of a client, and where requests go."""

    def __init__(
        self, verify: Union[bool, str, "os.PathLike[str]"], env: _Env, limits: Tuple[int, int], handler: Any = None
    ) -> None:
        super().__init__()
        self.handler = handler  # `transport=handler` (5c): each connection an exchange with it, not a socket
        self._verify = verify
        # The environment as the client was made: proxies and CA files are
        # read once, not on every request (as httpx does).
        self._env = {name: value for name, value in env.items() if name.upper() in _TRANSPORT_VARIABLES}
        self._limits = limits
        self._context: Optional[ssl.SSLContext] = None
        self._route_cache: Dict[str, _Route] = {}
        self._pools: Dict[Any, Any] = {}  # the threaded transport's one pool, or one per event loop
        # Idle keep-alive connections go with the last client that used them. A weakref
        # callback, not __del__: a client sits in a reference cycle (its namespaces), and
        # the collector calls such callbacks before any finalizer, so no socket of the
        # pools is ever finalized (with a ResourceWarning) before they are closed.
        weakref.finalize(self, _close_pools, self._pools, True)

    def route(self, url: str) -> _Route:
        """The route of a URL, worked out once (parsing it and the proxy rules cost microseconds)."""
        route = self._route_cache.get(url)
        if route is None:
            route = _Route(url, self._env)
            if len(self._route_cache) < _MAX_CACHED_ROUTES:
                self._route_cache[url] = route
        return route

    def ssl_context(self) -> ssl.SSLContext:
        # Made on first HTTPS use (loading CAs costs milliseconds), once per client.
        with self._lock:
            if self._context is None:
                self._context = _ssl_context(self._verify, self._env)
            return self._context

    def close(self) -> None:
        """Close the idle pooled connections; busy ones close when released."""
        _close_pools(self._pools, False)


def _close_pools(pools: Dict[Any, Any], finalizing: bool) -> None:
    for pool in list(pools.values()):
        try:
            pool.close_from_anywhere(finalizing)
        except Exception:  # at interpreter exit, imports and loops may already be gone
            if not finalizing:
                raise


# -- 5a. Threads: blocking sockets ---------------------------------------------


class _Connection:
    """A blocking socket, plain or TLS. `close` may come from another thread: it wakes a blocked read."""

    def __init__(self) -> None:
        self.sock: socket.socket = None  # type: ignore[assignment]  # until `connect`
        self.pid = os.getpid()
        self.reused = False
        self.writing = False  # sendall returns once everything is written
        self._timeout_s: Optional[float] = None

    def _settimeout(self, timeout_s: float) -> None:
        if timeout_s != self._timeout_s:  # settimeout is a system call
            self.sock.settimeout(timeout_s)
            self._timeout_s = timeout_s

    # -- the steps of `_opening`
    def connect(self, address: Tuple[str, int], timeout_s: float) -> None:
        give_up_at, error = time.monotonic() + timeout_s, None
        for family, kind, proto, _, sockaddr in _numeric_addresses(*address) or _lookup(address, timeout_s):
            try:
                self.sock = socket.socket(family, kind, proto)
                self._timeout_s = None
                self._settimeout(max(0.001, give_up_at - time.monotonic()))
                self.sock.connect(sockaddr)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return
            except OSError as exc:
                self.close()
                error = exc
        raise error or OSError(f"no address for {address[0]}")

    def tunnel(self, how: Tuple[_Exchange, Callable[[], float]], timeout_s: float) -> None:
        self.send(how[0].request, timeout_s)
        _pump(self, how[0], how[0].head, how[1])

    def tls(self, how: Tuple[ssl.SSLContext, str], timeout_s: float) -> None:
        self._settimeout(timeout_s)  # the handshake's own bound
        self.sock = how[0].wrap_socket(self.sock, server_hostname=how[1])

    # -- the exchange's
    def send(self, data: bytes, timeout_s: float) -> None:
        self._settimeout(timeout_s)
        self.sock.sendall(data)

    def receive(self, timeout_s: float) -> bytes:
        """Some bytes, b"" once the peer closed; raises socket.timeout after `timeout_s`."""
        self._settimeout(timeout_s)
        return self.sock.recv(_READ_SIZE)

    def is_gone(self) -> bool:
        return _is_dropped(self.sock)

    def close(self) -> None:
        if self.sock is None:
            return
        if self.pid == os.getpid():  # after a fork, the parent still uses the socket: close our descriptor only
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread
            except OSError:
                pass
        self.sock.close()


def _pump(conn: Any, exchange: _Exchange, goal: Callable[[], Any], timeout: Callable[[], float]) -> Any:
    """Feed the exchange what the connection receives until `goal()` says something (a handler's None: nothing yet)."""
    while (result := goal()) is None:
        if (data := conn.receive(timeout())) is not None:
            exchange.feed(data)
    return result


class _ConnectionPool(_PoolBook, _OwnLock):
    """The threaded transport's pool: a caller wanting a connection past the bound waits."""

    def __init__(self, max_connections: int, max_idle: int) -> None:
        _PoolBook.__init__(self, max_connections, max_idle)
        _OwnLock.__init__(self)
        self._slot_freed: Dict[_PoolKey, threading.Condition] = {}  # per host: a freed slot wakes its own waiters

    def _waiters(self, key: _PoolKey) -> threading.Condition:
        cond = self._slot_freed.get(key)
        if cond is None:
            cond = self._slot_freed[key] = threading.Condition(self._lock)
        return cond

    def acquire(self, route: _Route, call: _Call, held: List[Any]) -> None:
        """Put an idle connection in `held`, or None with a slot reserved for a new one (see `_slot`)."""
        with self._lock:
            for wait_s in self._slot(route, call, held):
                self._waiters(route.key).wait(min(wait_s, _SLOT_RECHECK_S))

    def release(self, key: _PoolKey, held: List[Any], reusable: bool) -> None:
        with self._lock:
            self._give(key, held, reusable)
            self._waiters(key).notify()

    def _wake(self, key: _PoolKey, finalizing: bool) -> None:
        if not finalizing:  # a finalizer may run where this thread holds the lock: waiters look again soon
            with self._lock:
                self._waiters(key).notify()

    def close(self, finalizing: bool = False) -> None:
        if not self._lock.acquire(blocking=not finalizing):
            return  # a finalizer in a thread that holds the lock: the idle sockets close as they are collected
        try:
            self._close_idle()
            for cond in self._slot_freed.values():
                cond.notify_all()
        finally:
            self._lock.release()

    close_from_anywhere = close  # safe from any thread already

    def _after_fork(self) -> None:
        super()._after_fork()
        self._slot_freed = {}


class _Response(_ResponseBase):
    """A response on a blocking socket; see `_ResponseBase`."""

    def _drive(self, goal: Callable[[], Any], fallback: Any) -> Any:
        with self:
            return _pump(self._conn, self._exchange, goal, self._wait)
        return fallback  # ended quietly (see __exit__)


class _Transport(_TransportBase):
    """Sends requests over pooled blocking sockets; shared by a Client and its copies."""

    def __init__(self, *settings: Any) -> None:  # _TransportBase's
        super().__init__(*settings)
        self.pool = self._pools[None] = _ConnectionPool(*self._limits)

    def send(self, call: _Call, url: str) -> _Response:
        """One try of `call` at `url`: the answer's head (and an error answer's body), or the typed failure."""
        route = self.route(url)
        held: List[Any] = []  # this try's lease: [] until a slot is reserved, then [its connection, or None]
        try:
            self.pool.acquire(route, call, held)
            if held[0] is None:
                held[0] = conn = self._new_connection(route, call)
                if self.handler is None:
                    self._connect(conn, route, call)
            response = _Response(self.pool, route, held, call)
            response.start()
        except BaseException:
            self.pool.give_back(route.key, held)  # nothing if the response gave it back already
            raise
        return response

    def _new_connection(self, route: _Route, call: _Call) -> Any:
        return _Connection() if self.handler is None else _HandlerConnection(self.handler, route, call)

    def _connect(self, conn: _Connection, route: _Route, call: _Call) -> None:
        step = "connect"
        try:
            for step, argument, wait in _opening(route, call, self.ssl_context() if route.scheme == "https" else None):
                getattr(conn, step)(argument, wait)
        except BaseException as exc:
            raise _failure(exc, step, route.where, call) from exc


# -- 5b. asyncio ---------------------------------------------------------------
# No thread per request: a connection is a non-blocking socket read when the
# pump asks, and every wait is a future with a timer beside it, woken by the
# loop's add_reader. asyncio is imported inside functions, so that sync users
# never pay for it.


def _settle(waiter: "asyncio.Future[None]", error: Optional[BaseException]) -> None:
    if not waiter.done():
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


class _AsyncConnection:
    """One non-blocking socket of its own, watched with the loop's `add_reader` (and `add_writer`).

    No asyncio transport: the socket is the connection, so closing it is
    closing the socket, at any moment (after its loop has ended, or in a
    child after a fork, where only the child's descriptor is closed). What
    arrives waits in a list until read; TLS runs in memory (`ssl.SSLObject`).
    """

    def __init__(self, loop: "asyncio.AbstractEventLoop") -> None:
        self.loop = loop
        self.pid = os.getpid()
        self.reused = False
        self.sock: Optional[socket.socket] = None
        self._chunks: List[bytes] = []
        self._size = 0
        self._watching = False  # add_reader is on: a pause leaves bytes in the socket (the server slows down)
        self._eof = False
        self._closed = False
        self._error: Optional[BaseException] = None
        self._waiter: Optional["asyncio.Future[None]"] = None  # a read waiting for bytes
        self._unsent = bytearray()  # what the socket has not taken yet, written as it becomes writable
        self._wrote = False  # some of it went out while a read waited: the read's wait starts again
        self._tls: Any = None  # an ssl.SSLObject, and its two MemoryBIOs: what came in, what goes out
        self._tls_in: Any = None
        self._tls_out: Any = None

    # -- the steps of `_opening`
    async def connect(self, address: Tuple[str, int], timeout_s: float) -> None:
        import asyncio

        await asyncio.wait_for(self._open(address), timeout_s)
        self._watch(True)  # a loop that cannot watch sockets is refused here, before any write needs add_writer

    async def _open(self, address: Tuple[str, int]) -> None:
        loop, error = self.loop, None
        addresses = _numeric_addresses(*address) or await loop.getaddrinfo(*address, type=socket.SOCK_STREAM)
        for family, kind, proto, _, sockaddr in addresses:
            self.sock = socket.socket(family, kind, proto)
            try:
                self.sock.setblocking(False)
                await loop.sock_connect(self.sock, sockaddr)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return
            except OSError as exc:
                self.sock.close()
                error = exc
        raise error or OSError(f"no address for {address[0]}")

    async def tunnel(self, how: Tuple[_Exchange, Callable[[], float]], timeout_s: float) -> None:
        self.send(how[0].request, timeout_s)
        await _apump(self, how[0], how[0].head, how[1])

    async def tls(self, how: Tuple[ssl.SSLContext, str], timeout_s: float) -> None:
        import ssl

        give_up_at = time.monotonic() + timeout_s
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = how[0].wrap_bio(self._tls_in, self._tls_out, server_hostname=how[1])
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._write(self._tls_out.read())
                while (data := await self._receive(max(0.0, give_up_at - time.monotonic()))) is None:
                    pass
                if not data:
                    raise ConnectionResetError("the connection closed during the TLS handshake") from None
                self._tls_in.write(data)
        self._write(self._tls_out.read())
        self._tls = tls

    # -- the loop's
    def _watch(self, on: bool) -> None:
        if on and not self._watching:
            try:
                self.loop.add_reader(self.sock.fileno(), self._readable)  # type: ignore[union-attr]
            except NotImplementedError:
                raise OctoAIClientError(_NEEDS_SELECTOR_LOOP) from None
        elif self._watching and not on:
            self.loop.remove_reader(self.sock.fileno())  # type: ignore[union-attr]
        self._watching = on

    def _readable(self) -> None:
        try:
            data = self.sock.recv(_READ_SIZE)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data, self._error = b"", exc
        if data:
            self._chunks.append(data)
            self._size += len(data)
            if self._size > 4 * _READ_SIZE:
                self._watch(False)  # the caller reads slower than the server sends: push back
        else:
            self._eof = True
            self._watch(False)
        if self._waiter is not None:
            _settle(self._waiter, None)

    # -- the exchange's
    def is_gone(self) -> bool:
        """Closed, or holding bytes nobody asked for (the loop may not have seen them yet)."""
        if self._eof or self._closed or self._chunks or self._unsent:
            return True
        if self._tls is not None and (self._tls.pending() or self._tls_in.pending):
            return True  # a record not yet read (a close_notify, say)
        return _is_dropped(self.sock)

    async def receive(self, timeout_s: float) -> Optional[bytes]:
        """The bytes received so far, waiting up to `timeout_s` for some; b"" at the end. None when
        the request's upload moved on meanwhile: the wait is the write's, asked of the call again."""
        if self._tls is None:
            return await self._receive(timeout_s)
        import ssl

        while True:
            try:
                return self._tls.read(_READ_SIZE)  # type: ignore[no-any-return]  # b"" after the peer's close_notify
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLEOFError:
                return b""  # closed without close_notify: the end, as for a blocking TLS socket
            data = await self._receive(timeout_s)
            if data is None:
                return None
            if data:
                self._tls_in.write(data)
            else:
                self._tls_in.write_eof()

    async def _receive(self, timeout_s: float) -> Optional[bytes]:
        while not self._chunks:
            if self._eof or self._closed:
                if self._error is not None:
                    raise self._error
                return b""
            waiter = self._waiter = self.loop.create_future()
            timer = self.loop.call_later(timeout_s, _settle, waiter, socket.timeout("timed out"))
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if self._wrote and not self._chunks:
                self._wrote = False
                return None
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if not (self._watching or self._eof or self._closed):
            self._watch(True)
        return data

    def send(self, data: bytes, timeout_s: float) -> None:
        """Write `data`; what the socket does not take at once follows as it can (a failure shows on a read)."""
        if self._tls is not None:
            self._tls.write(data)
            data = self._tls_out.read()
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self._unsent:
            self._unsent += data  # behind what waits already
            return
        try:
            sent = self.sock.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._unsent += data  # not sent; the read that follows tells why
            return
        if sent < len(data):
            self._unsent += data[sent:]
            self.loop.add_writer(self.sock.fileno(), self._writable)  # type: ignore[union-attr]  # see `connect`

    def _writable(self) -> None:
        try:
            del self._unsent[: self.sock.send(self._unsent)]  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass  # stays unsent, and the read that follows tells why
        else:
            if self._waiter is not None:
                self._wrote = True
                _settle(self._waiter, None)
            if self._unsent:
                return
        self.loop.remove_writer(self.sock.fileno())  # type: ignore[union-attr]

    @property
    def writing(self) -> bool:
        return bool(self._unsent)

    def close(self) -> None:
        """Close at once, without flushing: nobody wants the rest. A read waiting on it ends with b""."""
        self._closed = True
        sock = self.sock
        if sock is None or sock.fileno() < 0:
            return
        if self.pid == os.getpid() and not self.loop.is_closed():  # in a child, the loop and its epoll are the parent's
            self._watch(False)
            if self._unsent:
                self.loop.remove_writer(sock.fileno())
            if self._waiter is not None:
                _settle(self._waiter, None)
        sock.close()


_NEEDS_SELECTOR_LOOP = (
    "AsyncClient needs an event loop that can watch sockets (add_reader): the default one on Linux and macOS, "
    "or uvloop; on Windows, asyncio.WindowsSelectorEventLoopPolicy()"
)


async def _apump(conn: Any, exchange: _Exchange, goal: Callable[[], Any], timeout: Callable[[], float]) -> Any:
    """`_pump` for an asyncio connection (whose `receive` gives None when only the upload moved on)."""
    while (result := goal()) is None:
        if (data := await conn.receive(timeout())) is not None:
            exchange.feed(data)
    return result


class _AsyncPool(_PoolBook):
    """The asyncio transport's pool, one per event loop: a task wanting a connection past the bound waits.

    Its connections close when the loop shuts down: `asyncio.run` finalizes
    the loop's async generators before closing it, and the pool keeps one
    waiting for that moment. After a bare `loop.close()`, `client.close()` or
    the garbage collector closes them (each socket is the pool's own).
    """

    def __init__(self, max_connections: int, max_idle: int) -> None:
        import asyncio

        super().__init__(max_connections, max_idle)
        self.loop = asyncio.get_running_loop()
        # per host, woken in turn; an ordered set, so that waking one and leaving are O(1) with thousands waiting
        self._waiters: Dict[_PoolKey, "collections.OrderedDict[asyncio.Future[None], None]"] = {}
        self._watch = self._close_at_shutdown()
        self.loop.create_task(self._watch.__anext__())

    async def _close_at_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            self.close()

    async def acquire(self, route: _Route, call: _Call, held: List[Any]) -> None:
        loop, key = self.loop, route.key  # the running loop: `_AsyncTransport.pool` gives each loop its own pool
        for wait_s in self._slot(route, call, held):
            waiter: "asyncio.Future[None]" = loop.create_future()
            waiters = self._waiters.setdefault(key, collections.OrderedDict())
            waiters[waiter] = None
            timer = loop.call_later(wait_s, _settle, waiter, None)
            try:
                await waiter
            except BaseException:
                self._wake(key)  # a wakeup meant for this cancelled task goes to the next one
                raise
            finally:
                timer.cancel()
                waiters.pop(waiter, None)

    def _wake(self, key: _PoolKey, finalizing: bool = False) -> None:
        waiters = self._waiters.get(key)
        while waiters:
            waiter = waiters.popitem(last=False)[0]
            if not waiter.done():
                waiter.set_result(None)
                return

    def release(self, key: _PoolKey, held: List[Any], reusable: bool) -> None:
        self._give(key, held, reusable)
        self._wake(key)

    def close(self, finalizing: bool = False) -> None:
        self._close_idle()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.get_loop().is_closed():
                    _settle(waiter, None)

    def close_from_anywhere(self, finalizing: bool = False) -> None:
        """`close`, in the loop's own thread when it runs in another."""
        import asyncio

        try:
            current: Any = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if self.loop is current or not self.loop.is_running():
            self.close()
        else:
            self.loop.call_soon_threadsafe(self.close)


class _AsyncResponse(_ResponseBase):
    """A response on an asyncio connection; see `_ResponseBase`."""

    async def _drive(self, goal: Callable[[], Any], fallback: Any) -> Any:
        with self:
            return await _apump(self._conn, self._exchange, goal, self._wait)
        return fallback  # ended quietly (see __exit__)


class _AsyncTransport(_TransportBase):
    """Sends requests over pooled asyncio connections, one pool per event loop."""

    @property
    def pool(self) -> _AsyncPool:
        """The pool of the running event loop: futures and sockets belong to one loop."""
        import asyncio

        loop = asyncio.get_running_loop()
        with self._lock:
            pool = self._pools.get(loop)
            if pool is None:
                for ended in [other for other in self._pools if other.is_closed()]:
                    self._pools.pop(ended).close()  # what asyncio.run left behind
                pool = self._pools[loop] = _AsyncPool(*self._limits)
            return pool

    async def send(self, call: _Call, url: str) -> _AsyncResponse:
        pool, route = self.pool, self.route(url)
        held: List[Any] = []  # as in `_Transport.send`
        try:
            await pool.acquire(route, call, held)
            if held[0] is None:
                held[0] = conn = self._new_connection(route, call, pool.loop)
                if self.handler is None:
                    await self._connect(conn, route, call)
            response = _AsyncResponse(pool, route, held, call)
            await response.start()
        except BaseException:
            pool.give_back(route.key, held)
            raise
        return response

    def _new_connection(self, route: _Route, call: _Call, loop: Any) -> Any:
        return _AsyncConnection(loop) if self.handler is None else _AsyncHandlerConnection(self.handler, route, call)

    async def _connect(self, conn: _AsyncConnection, route: _Route, call: _Call) -> None:
        import asyncio

        step = "connect"
        try:
            for step, argument, wait in _opening(route, call, self.ssl_context() if route.scheme == "https" else None):
                await getattr(conn, step)(argument, wait)
        except BaseException as exc:
            failure = socket.timeout("timed out") if isinstance(exc, asyncio.TimeoutError) else exc
            raise _failure(failure, step, route.where, call) from exc


# -- 5c. A handler in place of the network: the seam, record and replay -------
# `Client(transport=handler)`: each try's request goes to `handler` as an
# HTTPRequest, and its HTTPResponse comes back as the bytes a server would
# send, read by the same exchange, retry loop, SSE reader and folder as the
# network's. `record` wraps a handler (by default the network itself) and
# writes every exchange to a JSON Lines file, secrets left out; `replay`
# answers from such a file, offline.


class _HandlerConnection:
    """One exchange with a handler, standing in for a connection: never reused."""

    reused = writing = False

    def __init__(self, handler: Callable[[HTTPRequest], Any], route: _Route, call: _Call) -> None:
        self.pid = os.getpid()
        self._handler, self._route, self._call = handler, route, call
        self._pieces: Any = None  # the answer's bytes, once the handler gave it

    def _request(self, timeout_s: float) -> HTTPRequest:
        call = self._call
        return HTTPRequest(call.method, self._route.url, dict(call.headers), call.body or b"", timeout_s)

    def send(self, data: bytes, timeout_s: float) -> None:
        pass  # the handler is given the request as an HTTPRequest instead

    def receive(self, timeout_s: float) -> Optional[bytes]:
        if self._pieces is None:
            self._pieces = _answer_bytes(self._handler(self._request(timeout_s)))
        return next(self._pieces, b"")

    def is_gone(self) -> bool:
        return True

    def close(self) -> None:
        try:
            if self._pieces is not None:
                self._pieces.close()
        except ValueError:
            pass  # another thread is reading it: that read ends as the response closed


class _AsyncHandlerConnection(_HandlerConnection):
    """`_HandlerConnection` for an AsyncClient: the handler may be a coroutine function, the body async."""

    async def receive(self, timeout_s: float) -> Optional[bytes]:  # type: ignore[override]
        if self._pieces is None:
            answer = self._handler(self._request(timeout_s))
            answer = _whole_body(await answer if hasattr(answer, "__await__") else answer)
            self._pieces = (_async_pieces if hasattr(answer.body, "__aiter__") else _answer_bytes)(answer)
        if hasattr(self._pieces, "__anext__"):
            return await self._pieces.__anext__()  # type: ignore[no-any-return]
        return next(self._pieces, b"")

    def close(self) -> None:
        if not hasattr(self._pieces, "__anext__"):
            super().close()


async def _async_pieces(answer: HTTPResponse) -> AsyncGenerator[Optional[bytes], None]:
    """`_answer_bytes` for an async body."""
    body, answer.body = answer.body, ()
    yield _answer_head(answer, True)
    async for piece in body:
        yield _chunk_of(piece)
    yield b"0\r\n\r\n"
    while True:
        yield b""


def _network_handler(transport: Any) -> Callable[[HTTPRequest], Any]:
    """The network as a handler (what `record` wraps by default): one try, its body as pieces."""

    def call_of(request: HTTPRequest) -> _Call:
        return _Call(
            method=request.method, url=request.url, headers=request.headers, body=request.body or None,
            timeout_s=request.timeout, deadline_at=None, retries=0, base_url=None, secrets=(),
        )  # fmt: skip

    def pieces(response: _Response) -> Iterator[bytes]:
        try:
            yield from iter(response.read_chunk, b"")
        finally:
            response.close()

    async def apieces(response: _AsyncResponse) -> AsyncGenerator[bytes, None]:
        try:
            while piece := await response.read_chunk():
                yield piece
        finally:
            response.close()

    def handler(request: HTTPRequest) -> HTTPResponse:
        response = transport.send(call_of(request), request.url)
        body = response.error_body if response.status >= 300 else pieces(response)
        return HTTPResponse(response.status, dict(response.headers), body)

    async def ahandler(request: HTTPRequest) -> HTTPResponse:
        response = await transport.send(call_of(request), request.url)
        body = response.error_body if response.status >= 300 else apieces(response)
        return HTTPResponse(response.status, dict(response.headers), body)

    return ahandler if isinstance(transport, _AsyncTransport) else handler


def _text_of(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")  # any bytes, back the same by `_bytes_of`


def _bytes_of(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _Recording(_OwnLock):
    """What `record` returns: a handler that writes every exchange through it to `path`, one JSON line each."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], handler: Any = None) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.handler = handler  # None: the client's own network

    def __call__(self, request: HTTPRequest, handler: Any = None, hidden: Optional[FrozenSet[str]] = None) -> Any:
        """One exchange; each client passes its own network (`handler`) and secret headers (`hidden`)."""
        answer, hidden = (handler or self.handler)(request), hidden or _SECRET_HEADERS
        if hasattr(answer, "__await__"):
            return self._later(request, answer, hidden)
        return self._wrap(request, answer, hidden)

    async def _later(self, request: HTTPRequest, answer: Any, hidden: FrozenSet[str]) -> HTTPResponse:
        return self._wrap(request, await answer, hidden)

    def _wrap(self, request: HTTPRequest, answer: HTTPResponse, hidden: FrozenSet[str]) -> HTTPResponse:
        answer = _whole_body(answer)
        secrets = _header_secrets(request.headers, hidden) + _header_secrets(answer.headers, hidden)  # a Set-Cookie
        entry = {
            "method": request.method,
            "url": _redact(_redact_userinfo(request.url), secrets),
            "headers": {name: _redact(value, secrets) for name, value in request.headers.items()
                        if name.lower() not in hidden},
            "body": _redact(_text_of(request.body), secrets),
            "status": answer.status,
            "response_headers": {name: _redact(value, secrets) for name, value in answer.headers.items()
                                 if name.lower() not in hidden},
        }  # fmt: skip
        body = answer.body
        if isinstance(body, (bytes, bytearray)):
            self._write(entry, [bytes(body)], "whole", secrets)
        elif hasattr(body, "__aiter__"):
            answer.body = self._apieces(body, entry, secrets)
        else:
            answer.body = self._pieces(iter(body), entry, secrets)
        return answer

    def _pieces(self, body: Iterator[bytes], entry: Dict[str, Any], secrets: Tuple[str, ...]) -> Iterator[bytes]:
        seen: List[bytes] = []
        try:
            for piece in body:
                seen.append(piece)
                yield piece
        except BaseException as exc:  # a failure cut it; GeneratorExit (the client closed it) or an interrupt: "closed"
            self._write(entry, seen, "cut" if isinstance(exc, Exception) else "closed", secrets)
            raise
        self._write(entry, seen, "whole", secrets)

    async def _apieces(self, body: Any, entry: Dict[str, Any], secrets: Tuple[str, ...]) -> AsyncGenerator[bytes, None]:
        seen: List[bytes] = []
        try:
            async for piece in body:
                seen.append(piece)
                yield piece
        except BaseException as exc:  # as in `_pieces`
            self._write(entry, seen, "cut" if isinstance(exc, Exception) else "closed", secrets)
            raise
        self._write(entry, seen, "whole", secrets)

    def _write(self, entry: Dict[str, Any], pieces: List[bytes], end: str, secrets: Tuple[str, ...]) -> None:
        entry = {**entry, "pieces": [_redact(_text_of(piece), secrets) for piece in pieces], "end": end}
        line = json.dumps(entry, ensure_ascii=True) + "\n"
        with self._lock, open(self.path, "a", encoding="ascii") as file:
            file.write(line)


def _request_key(method: str, url: str, body: str) -> Tuple[str, str, str]:
    """What a replay matches on: the method, the path and query (any host), and the JSON body (any layout)."""
    parts = urlsplit(url)
    try:
        body = json.dumps(json.loads(body), sort_keys=True) if body else ""
    except ValueError:
        pass
    return method, parts.path + ("?" + parts.query if parts.query else ""), body


class _Replay(_OwnLock):
    """What `replay` returns: a handler that answers from a recording, as the server did then."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self._answers: Dict[Tuple[str, str, str], List[Tuple[int, Dict[str, str], List[bytes], str]]] = {}
        try:
            with open(self.path, encoding="utf-8") as file:
                lines = list(file)
        except OSError as exc:
            raise ValueError(f"cannot read the recording {self.path!r}: {exc}") from None
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    entry = json.loads(line)
                    key = _request_key(entry["method"], entry["url"], entry["body"])
                    pieces = [_bytes_of(piece) for piece in entry["pieces"]]
                    answer = (int(entry["status"]), dict(entry["response_headers"]), pieces, entry["end"])
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise ValueError(f"{self.path}:{number} is not a recorded exchange: {exc!r}") from None
                self._answers.setdefault(key, []).append(answer)

    def __call__(self, request: HTTPRequest) -> HTTPResponse:
        key = _request_key(request.method, request.url, _text_of(request.body))
        with self._lock:
            answers = self._answers.get(key)
            if not answers:
                raise OctoAIClientError(f"no answer recorded in {self.path} for {self._show(key)}{self._nearest(key)}")
            status, headers, pieces, end = answers.pop(0) if len(answers) > 1 else answers[0]
        return HTTPResponse(status, dict(headers), self._body(pieces, end))

    @staticmethod
    def _body(pieces: List[bytes], end: str) -> Iterator[bytes]:
        yield from pieces
        if end == "cut":
            raise ConnectionResetError("the recorded answer was cut here")

    @staticmethod
    def _show(key: Tuple[str, str, str]) -> str:
        return f"{key[0]} {key[1]} {_cut(key[2], 300)}".rstrip()

    def _nearest(self, key: Tuple[str, str, str]) -> str:
        if not self._answers:
            return " (the recording is empty)"
        import difflib  # only a miss needs it

        wanted = self._show(key)
        nearest = max(self._answers, key=lambda other: difflib.SequenceMatcher(None, wanted, self._show(other)).ratio())
        return f"; the nearest recorded: {self._show(nearest)}"


def record(path: Union[str, "os.PathLike[str]"], handler: Any = None) -> _Recording:
    """A transport that writes every exchange to `path` (JSON Lines), through `handler` or the network.

    ``Client(transport=record("calls.jsonl"))``; `replay` answers from the file later. A line has the
    request (method, URL, headers, body) and the answer (status, headers, the body's pieces as read, and
    how it ended: "whole", "cut" by a failure, or "closed" by the client). The token and every secret
    header are never written, and their values are taken out of the rest.
    """
    return _Recording(path, handler)


def replay(path: Union[str, "os.PathLike[str]"]) -> _Replay:
    """A transport that answers from a `record`ing, offline: ``Client(transport=replay("calls.jsonl"))``.

    Requests match on method, path and JSON body; the same request asked again gets the next answer
    recorded for it (the last one once they run out). Raises ValueError for a file that is not a
    recording; a request with no recorded answer raises OctoAIClientError naming the nearest one recorded.
    """
    return _Replay(path)


# =============================================================================
# 6. Client API
# =============================================================================
# The shells around the pure pieces: make a `_Call`, try it until `_judge`
# (4e) says the answer is in, turn the answer into objects. Client and
# AsyncClient share every decision through _BaseClient; only their `_run`
# loops, which sleep, differ. A stream is never retried once an event has
# been handed out.


_MORE = object()  # what `_take` gives when it needs the next read
_END = object()  # and once the stream is over


def _chunks(cls: Any, folder: _ChunkFolder, headers: Mapping[str, str], secrets: _Secrets) -> Callable[[Any], Any]:
    """A payload converter that checks each chunk, folds it, and returns it as a `cls` object."""
    plain = _plain_chat_chunk if cls is ChatCompletion else lambda payload: None

    def convert(payload: Any) -> Any:
        built = plain(payload) if type(payload) is dict else None
        if built is None:
            built = cls.from_dict(_check_completion(payload, headers, secrets, chunk=True))
            folder.add(payload)
        else:
            folder.add_plain(payload)
        return built

    return convert


def _identity(payload: Any) -> Any:
    return payload


class _Closing:
    """``with`` for what has a `close()`: Client, Stream and the infer_stream iterator."""

    def __enter__(self: _SelfT) -> _SelfT:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # type: ignore[attr-defined]


class _AsyncClosing:
    """``async with`` for what has an awaitable `close()`."""

    async def __aenter__(self: _SelfT) -> _SelfT:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()  # type: ignore[attr-defined]


class _StreamBase(_Answer):
    """The JSON payloads of a streamed answer, for every stream class; with a `_result`, its chunks folded.

    `_take` gives the next payload through `_convert` (a server's error event
    raises), `_MORE` when it needs a read of the body for `_add` (b"" at its
    end), `_END` once over. After `[DONE]` the answer is complete: the rest of
    the body gets `_DONE_GRACE_S` in all (`_ResponseBase.grace`).
    """

    _result: ClassVar[Any] = None  # the chunk class (ChatCompletion, Completion): chunks checked, folded, built

    def __init__(self, response: _ResponseBase, convert: _MapFn = None) -> None:
        self.response_headers: Dict[str, str] = response.headers
        self._headers, self._secrets = response.headers, response.secrets
        self._response = response
        self._convert = convert or _identity
        if self._result is not None:
            self._folder = _ChunkFolder(self._result._KIND)
            self._convert = _chunks(self._result, self._folder, response.headers, response.secrets)
        self._decoder = SSEDecoder()
        self._events: List[ServerSentEvent] = []  # of the last read, last first
        self._count = 0  # payloads handed out
        self._done = False  # [DONE] arrived
        self._over = False  # the body ended, or the iteration failed
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        json_answer = media_type == "application/json"  # a plain JSON answer to a streaming request
        self._json = _Body(_MAX_BODY_BYTES, response.where) if json_answer else None
        self._error: Optional[OctoAIError] = None  # what ended the iteration, if it failed

    def _take(self) -> Any:
        events, response = self._events, self._response
        while events:
            event = events.pop()
            if event.data == "[DONE]":
                self._done = True
                events.clear()
                response.grace(_DONE_GRACE_S)
                break
            payload = _payload_from_event(event, self._headers, self._secrets)
            if response.closed_early:
                break  # closed by its holder: nothing more is handed out
            self._count += 1
            return self._convert(payload)
        return _END if self._over or response.closed_early else _MORE

    def _add(self, data: bytes) -> None:
        if self._json is not None:
            if self._json.add(data):  # past the limit it raises, and `_failed` closes the response
                return
            raise _stream_answered_with_json(self._json.value(), self._headers, self._secrets)
        if not data:
            self._over = True
            if not self._done and not self._response.closed_early:
                self._end()
        elif not self._done:
            self._events = self._decoder.feed(data)
            self._events.reverse()

    def _end(self) -> None:
        """At a clean end of the body without `[DONE]`: raise if the stream never said anything."""
        unterminated = self._decoder.close()
        if unterminated is not None and unterminated.data == "[DONE]":
            return  # llama.cpp ends with "data: [DONE]" and no blank line after it
        if self._count == 0:
            raise OctoAIValidationError(
                "the stream ended before any event arrived (a server may do this when the prompt is too long)"
            )
        if self._response._exchange.ends_at_close and self._result is not None and not self._folder.finished():
            raise OctoAIConnectionError(  # with no framing, a close is all a cut looks like
                f"the stream from {self._response.where} ended at a close with neither [DONE] nor a finish_reason "
                "on every choice: it was probably cut short"
            )

    def _failed(self, exc: BaseException) -> None:
        """After any failure (a cancellation too): the response is closed, and no more is handed out."""
        self._over = True
        self._response.close()
        if isinstance(exc, OctoAIError):
            self._error = _scrub(exc, self._secrets)  # and raised again by get_final_completion

    def _final(self) -> Any:
        if self._error is not None:
            raise self._error  # the stream failed: what came before it is not the whole answer
        return self._result.from_dict(self._folder.result())


class _EventStream(_StreamBase, _Closing):
    """Iterate the JSON payloads of an event-stream answer; owns the response until closed."""

    def __iter__(self: _SelfT) -> _SelfT:
        return self

    def __next__(self) -> Any:
        try:
            while (item := self._take()) is _MORE:
                self._add(self._response.read_chunk())
        except BaseException as exc:
            self._failed(exc)
            raise
        if item is _END:
            raise StopIteration
        return item

    def close(self) -> None:
        """End the HTTP response now; the connection is closed, not reused. Safe from another thread."""
        self._response.close()  # which ends the iteration too: the next read finds it closed


class _ChunkStream(_EventStream, _Of["_ChunkT"]):
    """What `Stream` and `CompletionStream` share: chunks, their text, their folding."""

    if TYPE_CHECKING:

        def __next__(self) -> _ChunkT: ...

    @property
    def text_stream(self) -> Iterator[str]:
        """Only the non-empty text of choice 0 (no role-only, empty or usage chunks); the stream still folds."""
        return (text for chunk in self if (text := chunk._first_text()))

    def get_final_completion(self) -> _ChunkT:
        """Read the rest of the stream and return the whole answer as one completion."""
        for _ in self:
            pass
        return self._final()  # type: ignore[no-any-return]


class Stream(_ChunkStream["ChatCompletion"]):
    """Chat completion chunks as the server sends them.

    Iterate it for `ChatCompletion` chunks (``chunk.choices[0].delta.content``),
    or `text_stream` for just the text. The Stream owns the HTTP connection:
    leaving a ``with`` block, `close()` (from any thread), or reading to the
    end releases it. Raises `OctoAIConnectionError` if the body is cut
    short, and the server's typed error if it sends one. `headers`,
    `request_id` and `rate_limits` describe the answer.
    """

    _result = ChatCompletion


class CompletionStream(_ChunkStream["Completion"]):
    """Legacy text completion chunks (``choices[i].text``); otherwise as `Stream`."""

    _result = Completion


class _AsyncEventStream(_StreamBase, _AsyncClosing):
    """The async form of `_EventStream`: ``async for``, ``async with``, `aclose()`."""

    def __aiter__(self: _SelfT) -> _SelfT:
        return self

    async def __anext__(self) -> Any:
        try:
            while (item := self._take()) is _MORE:
                self._add(await self._response.read_chunk())
        except BaseException as exc:
            self._failed(exc)
            raise
        if item is _END:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """End the HTTP response now; the connection is closed, not reused (a read awaited meanwhile ends)."""
        self._response.close()

    close = aclose


class _AsyncChunkStream(_AsyncEventStream, _Of["_ChunkT"]):
    """What `AsyncStream` and `AsyncCompletionStream` share."""

    if TYPE_CHECKING:

        async def __anext__(self) -> _ChunkT: ...

    @property
    def text_stream(self) -> AsyncIterator[str]:
        """Only the non-empty text of choice 0 (no role-only, empty or usage chunks); the stream still folds."""
        return (text async for chunk in self if (text := chunk._first_text()))

    async def get_final_completion(self) -> _ChunkT:
        """Read the rest of the stream and return the whole answer as one completion."""
        async for _ in self:
            pass
        return self._final()  # type: ignore[no-any-return]


class AsyncStream(_AsyncChunkStream["ChatCompletion"]):
    """Chat completion chunks for ``async for``; see `Stream`."""

    _result = ChatCompletion


class AsyncCompletionStream(_AsyncChunkStream["Completion"]):
    """Legacy text completion chunks for ``async for``; see `CompletionStream`."""

    _result = Completion


def _resolve_token(token: Optional[str], config_path: Optional[str], env: _Env) -> Optional[str]:
    """The token from the argument, OCTOAI_TOKEN or the config file, stripped; ValueError if unusable."""
    if not token:
        token = env.get("OCTOAI_TOKEN", "").strip()
    if not token:
        path = os.path.expanduser(config_path or _CONFIG_PATH)
        try:
            with open(path, encoding="utf-8") as file:
                token = _parse_config_token(file.read()) or ""
        except (OSError, UnicodeDecodeError):
            token = ""
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, not {type(token).__name__}")
    token = token.strip()  # a secret file or a pasted token often ends in a newline
    if token:
        _check_header_value("the token", token)
    return token or None


def _log_to_stderr(level: str, format: str) -> None:
    """Send this module's records at `level` and above to stderr, unless a handler is set already."""
    import logging

    logger = _logger()
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(format))
        logger.addHandler(handler)
        logger.setLevel(level)


def _random() -> float:
    import random  # only retries need it

    return random.random()


def _with_async_header(options: Dict[str, Any]) -> Dict[str, Any]:
    return {**options, "extra_headers": _merge_headers({"X-OctoAI-Async": "1"}, options.get("extra_headers"))}


def _check_seconds(name: str, value: Any) -> float:
    """A timeout or deadline argument: a finite number of seconds above 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not (0 < value < math.inf):  # also refuses NaN
        raise ValueError(f"{name} must be a finite number of seconds above 0, not {value!r}")
    return float(value)


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


class _BaseClient:
    """Configuration and retry decisions that Client and AsyncClient share."""

    _transport: Any
    _transport_class: ClassVar[Type[Any]]
    _bind: Callable[[], None]  # makes the namespaces (``client.chat.completions``...), for this client or a copy
    _run: Callable[[_Call], Any]  # each client's loop: try, let `_next` judge, sleep, try again

    def __init__(
        self,
        token: Optional[str] = None,
        config_path: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify_ssl: Union[bool, str, "os.PathLike[str]"] = True,
        secure_link: bool = False,
        *,
        base_url: Optional[str] = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Optional[Mapping[str, Optional[str]]] = None,
        deadline: Optional[float] = None,
        max_connections: int = _MAX_CONNECTIONS,
        max_idle_connections: int = _MAX_IDLE_CONNECTIONS,
        api_key: Optional[str] = None,
        secret_headers: Iterable[str] = (),
        transport: Optional[Callable[[HTTPRequest], Any]] = None,
    ) -> None:
        if token and api_key:
            raise ValueError("pass token= or api_key=, not both")
        env = os.environ
        level = env.get("OCTOAI_LOG", "").upper()
        if level in ("DEBUG", "INFO", "WARNING"):
            _log_to_stderr(level, "%(asctime)s octoai_lite %(levelname)s %(message)s")
        self._token = _resolve_token(token or api_key, config_path, env)
        self.base_url = _check_base_url(
            base_url or env.get("OCTOAI_BASE_URL") or (_SECURE_LINK_BASE_URL if secure_link else DEFAULT_BASE_URL)
        )
        self.secure_link = secure_link
        self.timeout = _check_seconds("timeout", timeout)
        self.max_retries = _check_count("max_retries", max_retries, 0)
        self.deadline = None if deadline is None else _check_seconds("deadline", deadline)
        self.default_headers: Dict[str, Optional[str]] = _check_headers(default_headers)
        names = secret_headers if isinstance(secret_headers, str) else tuple(secret_headers)  # a generator: read once
        if isinstance(names, str) or not all(isinstance(name, str) for name in names):
            raise TypeError("secret_headers must be header names, such as ('x-my-key',)")
        self.secret_headers = _SECRET_HEADERS | {name.lower() for name in names}
        self._headers: Dict[Tuple[bool, bool], Tuple[Dict[str, str], Tuple[str, ...]]] = {}  # per (stream, has body)
        limits = (
            _check_count("max_connections", max_connections, 1),
            _check_count("max_idle_connections", max_idle_connections, 0),
        )
        if transport is None and env.get("OCTOAI_REPLAY"):
            transport = replay(env["OCTOAI_REPLAY"])
        elif transport is None and env.get("OCTOAI_RECORD"):
            transport = record(env["OCTOAI_RECORD"])
        self._network = None  # the connections this client records through, closed with the client's
        if isinstance(transport, _Recording):  # a recording may be shared: each client its network and secrets
            recording, network, hidden = transport, None, self.secret_headers
            if recording.handler is None:
                self._network = self._transport_class(verify_ssl, env, limits)
                network = _network_handler(self._network)
            transport = lambda request: recording(request, network, hidden)  # noqa: E731
        if transport is not None and not callable(transport):
            raise TypeError(f"transport must be a handler (a callable taking an HTTPRequest), not {transport!r}")
        self._transport = self._transport_class(verify_ssl, env, limits, transport)
        self._owns_transport = True
        self._bind()

    def __repr__(self) -> str:
        token = "set" if self._token else "none"
        return f"{type(self).__name__}(base_url={self.base_url!r}, token={token}, timeout={self.timeout:g})"

    def with_options(
        self: _ClientT,
        *,
        timeout: Optional[float] = None,
        max_retries: Optional[int] = None,
        default_headers: Optional[Mapping[str, Optional[str]]] = None,
        deadline: Optional[float] = None,
    ) -> _ClientT:
        """Return a copy with other settings that shares this client's connections."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._owns_transport = False
        clone._headers = {}
        if timeout is not None:
            clone.timeout = _check_seconds("timeout", timeout)
        if max_retries is not None:
            clone.max_retries = _check_count("max_retries", max_retries, 0)
        if default_headers is not None:
            clone.default_headers = {**self.default_headers, **_check_headers(default_headers)}
        if deadline is not None:
            clone.deadline = _check_seconds("deadline", deadline)
        clone._bind()
        return clone

    def _send(self, method: str, url: str, body: Any, **options: Any) -> Any:
        """Send with retries; return a 2xx response or raise the typed error (awaitable for AsyncClient)."""
        return self._run(self._prepare(method, url, body, **options))

    def _health_call(self, url: str, timeout: float, interval: float) -> _Call:
        return dataclasses.replace(
            self._prepare("GET", url, None, deadline=_check_seconds("timeout", timeout)),
            retry_every_s=_check_seconds("interval", interval),
        )

    def _next(self, call: _Call, attempt: _Attempt, outcome: Any, started: float) -> Optional[_Attempt]:
        """Judge one try (4e): None when `outcome` is the answer, else the next attempt; raises the error.

        What is not the answer is closed; what is raised has the token taken out.
        """
        answer = not isinstance(outcome, OctoAIError)
        if answer and _log_enabled(_DEBUG):
            request_id = _redact(_request_id(outcome.headers) or "", call.secrets)  # a server may echo anything
            _log(
                _DEBUG, "%s %s -> %d in %.1f ms%s", call.method, _redact(_redact_userinfo(attempt.url), call.secrets),
                outcome.status, (time.monotonic() - started) * 1000,
                f" [request id: {request_id}]" if request_id else "",
            )  # fmt: skip
        try:
            following = _judge(call, attempt, outcome, now=time.time(), clock=time.monotonic(), rand=_random)
        except OctoAIError as error:
            if answer:
                outcome.close()  # a redirect not followed: its body is not wanted
            raise _scrub(error, call.secrets) from error.__cause__  # redirects and framing errors quote the server too
        if following is None:
            return None
        if answer:
            outcome.close()
        if following.retries > attempt.retries:
            reason = f"{outcome.status} {_REASONS.get(outcome.status, '')}".rstrip() if answer else str(outcome)
            _log(
                _INFO, "retrying %s %s in %.2f s (retry %d of %d): %s", call.method,
                _redact(_redact_userinfo(call.url), call.secrets), following.wait_s, following.retries, call.retries,
                _redact(reason, call.secrets),
            )  # fmt: skip
        elif following.hops > attempt.hops:
            target = _redact(_redact_userinfo(following.url), call.secrets)
            _log(_DEBUG, "following %d redirect to %s", outcome.status, target)
        return following

    def close(self) -> None:
        """Close the pooled connections (a `with_options` copy leaves them to its original)."""
        if self._owns_transport:
            self._transport.close()
            if self._network is not None:
                self._network.close()

    def _prepare(
        self,
        method: str,
        url: str,
        body: Any,
        *,
        stream: bool = False,
        extra_headers: Optional[Mapping[str, Optional[str]]] = None,
        extra_query: Optional[Mapping[str, Any]] = None,
        extra_body: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        max_retries: Optional[int] = None,
        deadline: Optional[float] = None,
    ) -> _Call:
        """Apply the per-call options every public method takes; check them before anything is sent."""
        if extra_body and body is not None:
            body = {**body, **extra_body}
        if extra_query:
            url = _join_url(url, "", extra_query)
        data = None if body is None else _build_json(body)
        shape = (stream, data is not None)
        built = None if extra_headers else self._headers.get(shape)  # the same few header sets: each built once
        if built is None:
            headers = _build_headers(
                self._token, self.default_headers, _check_headers(extra_headers), stream=stream, has_body=shape[1]
            )
            token = (self._token,) if self._token else ()
            built = headers, token + _header_secrets(headers, self.secret_headers)
            if not extra_headers:
                self._headers[shape] = built
        headers, secrets = built
        timeout_s = self.timeout if timeout is None else _check_seconds("timeout", timeout)
        deadline = self.deadline if deadline is None else _check_seconds("deadline", deadline)
        return _Call(
            method=method,
            url=url,
            headers=headers,
            body=data,
            timeout_s=timeout_s,
            deadline_at=None if deadline is None else time.monotonic() + deadline,
            retries=self.max_retries if max_retries is None else _check_count("max_retries", max_retries, 0),
            base_url=self.base_url if url.startswith(self.base_url.split("?")[0] + "/") else None,
            secrets=secrets,
        )


if TYPE_CHECKING:
    # Every other keyword (tools, seed, n, stream_options...) goes into the body as given: **more.
    class _CreateTypes(Generic[_CompletionT, _StreamT]):
        """`create`'s signature for type checkers: a stream when ``stream=True``, else a completion."""

        @_overload
        def create(
            self, *, model: Union[str, TextModel], messages: Iterable[Any], stream: Literal[False] = False,
            max_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
            stop: Union[str, List[str], None] = None, frequency_penalty: Optional[float] = None,
            presence_penalty: Optional[float] = None, response_format: _Object = None, extra_headers: _Headers = None,
            extra_query: _Object = None, extra_body: _Object = None, timeout: Optional[float] = None,
            max_retries: Optional[int] = None, deadline: Optional[float] = None, **more: Any,
        ) -> _CompletionT: ...  # fmt: skip
        @_overload
        def create(
            self, *, model: Union[str, TextModel], messages: Iterable[Any], stream: Literal[True],
            max_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
            stop: Union[str, List[str], None] = None, frequency_penalty: Optional[float] = None,
            presence_penalty: Optional[float] = None, response_format: _Object = None, extra_headers: _Headers = None,
            extra_query: _Object = None, extra_body: _Object = None, timeout: Optional[float] = None,
            max_retries: Optional[int] = None, deadline: Optional[float] = None, **more: Any,
        ) -> _StreamT: ...  # fmt: skip
        @_overload
        def create(
            self, *, model: Union[str, TextModel], messages: Iterable[Any], stream: bool,
            max_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
            stop: Union[str, List[str], None] = None, frequency_penalty: Optional[float] = None,
            presence_penalty: Optional[float] = None, response_format: _Object = None, extra_headers: _Headers = None,
            extra_query: _Object = None, extra_body: _Object = None, timeout: Optional[float] = None,
            max_retries: Optional[int] = None, deadline: Optional[float] = None, **more: Any,
        ) -> Union[_CompletionT, _StreamT]: ...  # fmt: skip
        def create(self, **arguments: Any) -> Any: ...

    class _TextCreateTypes(Generic[_CompletionT, _StreamT]):
        """The legacy `create`'s signature; per-call options and other parameters go in **more."""

        @_overload
        def create(
            self, *, model: Union[str, TextModel], prompt: _Prompt, stream: Literal[False] = False,
            max_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
            stop: Union[str, List[str], None] = None, **more: Any,
        ) -> _CompletionT: ...  # fmt: skip
        @_overload
        def create(
            self, *, model: Union[str, TextModel], prompt: _Prompt, stream: Literal[True],
            max_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
            stop: Union[str, List[str], None] = None, **more: Any,
        ) -> _StreamT: ...  # fmt: skip
        @_overload
        def create(
            self, *, model: Union[str, TextModel], prompt: _Prompt, stream: bool,
            max_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
            stop: Union[str, List[str], None] = None, **more: Any,
        ) -> Union[_CompletionT, _StreamT]: ...  # fmt: skip
        def create(self, **arguments: Any) -> Any: ...

    class _EmbedTypes(Generic[_CompletionT]):
        """The embeddings `create`'s signature."""

        def create(
            self, *, model: Union[str, TextModel], input: _Prompt, dimensions: Optional[int] = None, **more: Any
        ) -> _CompletionT: ...

else:

    class _CreateTypes(_Of):
        """`create` at run time, for every endpoint and both clients; the signatures above are for type checkers."""

        def create(self, **arguments):
            """Create a chat completion, a legacy text completion or embeddings (awaited, for an AsyncClient).

            ``client.chat.completions``, ``client.completions``, ``client.embeddings``;
            with ``stream=True`` return a `Stream` (`CompletionStream`) of chunks, or for
            an AsyncClient an `AsyncStream` (`AsyncCompletionStream`).

            Keyword arguments: ``model`` (a str or `TextModel`), ``messages`` (or
            ``prompt``, or ``input``), and any of ``max_tokens``, ``temperature``,
            ``top_p``, ``stop``, ``frequency_penalty``, ``presence_penalty``,
            ``response_format`` (``dimensions``, ``encoding_format`` for embeddings),
            and the per-call options ``extra_headers``, ``extra_query``,
            ``extra_body``, ``timeout``, ``max_retries``, ``deadline``. Only
            parameters you set are sent; any other keyword (tools, seed, n,
            stream_options...) goes into the body unchanged. Raises the typed
            `OctoAIError` for the server's answer or the connection's failure.
            """
            client = self._client
            body, stream, options = _build_call({**self._defaults, **arguments}, self._key)
            if stream and self._stream is None:
                raise TypeError("this endpoint does not stream")
            url = _join_url(client.base_url, self._path)
            return client._answer(client._send("POST", url, body, stream=stream, **options), stream, self)

    _TextCreateTypes = _EmbedTypes = _CreateTypes

    def _chat_parse(self, *, response_format, **arguments):
        """Ask for an answer of a type: a dataclass, a TypedDict or a JSON Schema (awaited, for an AsyncClient).

        `create` with a strict ``json_schema`` response_format; ``choices[i].message.parsed``
        is the answer, checked (section 4h), as the dataclass or a dict. Raises
        `OctoAIParseError` or a subclass for an answer that is not one.
        """
        if arguments.get("stream"):
            raise TypeError("parse() does not stream")
        sent, schema = _response_format(response_format)
        answer = self.create(response_format=sent, **arguments)
        if isinstance(answer, ChatCompletion):
            return _parsed_completion(answer, response_format, schema)
        return _parsed_later(answer, response_format, schema)

    async def _parsed_later(answer, asked, schema):
        return _parsed_completion(await answer, asked, schema)


class _Namespace:
    """A part of a client's API: ``client.chat.completions``, ``client.models``...; `create` POSTs to `_path`."""

    _path, _key, _what, _items = "chat/completions", "messages", "chat completion", "choices"
    _defaults: ClassVar[Dict[str, Any]] = {}  # parameters sent unless the caller sets them
    _result: ClassVar[Any] = ChatCompletion  # the answer's class

    def __init__(self, client: Any, stream: Any = None) -> None:
        self._client = client
        self._stream = stream  # the stream's class, picked by the client's flavour; None: the endpoint does not stream

    def _parse(self, body: bytes, response: _ResponseBase) -> Any:
        headers, secrets = response.headers, response.secrets
        payload = _check_completion(_parse_json(body, secrets), headers, secrets, what=self._what, key=self._items)
        answer = self._result.from_dict(payload)
        answer._headers = headers  # for `_Answer`'s headers, request_id, rate_limits
        return answer


class _Completions(_CreateTypes["ChatCompletion", "Stream"], _Namespace):
    """``client.chat.completions``."""

    if TYPE_CHECKING:  # `parse`'s types: `parsed` is the caller's type (the code is `_chat_parse`)

        @_overload
        def parse(
            self, *, model: Union[str, TextModel], messages: Iterable[Any], response_format: Type[_ParsedT], **more: Any
        ) -> ParsedChatCompletion[_ParsedT]: ...
        @_overload
        def parse(
            self, *, model: Union[str, TextModel], messages: Iterable[Any], response_format: _Object, **more: Any
        ) -> ParsedChatCompletion[Dict[str, Any]]: ...
        def parse(self, **arguments: Any) -> Any: ...
    else:
        parse = _chat_parse


class _TextCompletions(_TextCreateTypes["_CompletionT", "_StreamT"], _Namespace):
    """``client.completions``: the legacy text completion, POST {base_url}/completions (``choices[i].text``)."""

    _path, _key, _what, _result = "completions", "prompt", "completion", Completion


class _Embeddings(_EmbedTypes["_CompletionT"], _Namespace):
    """``client.embeddings``: POST {base_url}/embeddings, ``encoding_format="float"`` unless you say otherwise.

    ``input`` is a str or a list of them; a base64 answer is decoded to floats too.
    """

    _path, _key, _what, _items, _result = "embeddings", "input", "embeddings answer", "data", CreateEmbeddingResponse
    _defaults = {"encoding_format": "float"}


class _Chat(_Of["_T"]):
    """``client.chat``."""

    def __init__(self, completions: _T) -> None:
        self.completions = completions


class _Models(_Namespace, _Of["_T"]):
    """``client.models``."""

    def list(self, **options: Any) -> _T:
        """Return the ids of the models the server offers (GET {base_url}/models; awaited, for an AsyncClient)."""
        client = self._client
        url = _join_url(client.base_url, "models")
        return client._fetch(_models_from_body, "GET", url, None, **options)  # type: ignore[no-any-return]


class Client(_BaseClient, _Closing):
    """A client for OctoAI and any OpenAI-compatible Chat Completions server.

    The token comes from ``token`` (or ``api_key``), else ``OCTOAI_TOKEN``,
    else ``token:`` in ``~/.octoai/config.yaml`` (or ``config_path``); with
    none, no Authorization header is sent. The endpoint comes from
    ``base_url``, else ``OCTOAI_BASE_URL``, else OctoAI's. ``timeout``
    bounds connecting and each read, ``deadline`` (None: no bound) a whole
    call, both in seconds. ``verify_ssl`` may be False or a CA bundle path.

    Safe to share between threads; connections are pooled and reused. Use
    ``with Client() as client:`` or call `close()`. Every method takes the
    per-call options ``extra_headers``, ``extra_query``, ``extra_body``,
    ``timeout``, ``max_retries`` and ``deadline``.

    The API: ``client.chat.completions.create(model=..., messages=...)``
    (``stream=True`` for a `Stream`), ``client.chat.completions.parse(...,
    response_format=YourDataclass)``, ``client.completions.create(model=...,
    prompt=...)`` (legacy), ``client.embeddings.create(model=..., input=...)``,
    ``client.models.list()``, and the methods below.
    """

    chat: _Chat[_Completions]
    completions: _TextCompletions[Completion, CompletionStream]
    embeddings: _Embeddings[CreateEmbeddingResponse]
    models: _Models[List[str]]
    _transport: _Transport
    _transport_class = _Transport

    def _bind(self) -> None:
        self.chat, self.models = _Chat(_Completions(self, Stream)), _Models(self)
        self.completions, self.embeddings = _TextCompletions(self, CompletionStream), _Embeddings(self)

    def _answer(self, response: _Response, stream: bool, endpoint: _Namespace) -> Any:
        return endpoint._stream(response) if stream else endpoint._parse(response.read(), response)

    def _fetch(self, parse: Callable[[bytes, _Secrets], _T], method: str, url: str, body: Any, **options: Any) -> _T:
        """Send with retries; return the answer's body read through `parse`."""
        response = self._send(method, url, body, **options)
        return parse(response.read(), response.secrets)

    def _run(self, call: _Call) -> _Response:
        attempt: Optional[_Attempt] = _Attempt(call.url)
        while attempt is not None:
            if attempt.wait_s:
                time.sleep(attempt.wait_s)
            started = time.monotonic()
            try:
                outcome: Any = self._transport.send(call, attempt.url)
            except OctoAIError as error:
                outcome = error
            attempt = self._next(call, attempt, outcome, started)
        return outcome  # type: ignore[no-any-return]

    # -- the generic inference API of the original SDK ----------------------

    def infer(self, endpoint_url: str, inputs: Mapping[str, Any], **options: Any) -> Any:
        """POST `inputs` as JSON to `endpoint_url`; return the JSON answer."""
        return self._fetch(_parse_json, "POST", endpoint_url, inputs, **options)

    def infer_stream(
        self, endpoint_url: str, inputs: Mapping[str, Any], map_fn: _MapFn = None, **options: Any
    ) -> _EventStream:
        """POST `inputs` and yield each event's JSON (through `map_fn` if given) until `[DONE]`.

        The returned iterator owns the connection; it is also a context manager.
        """
        return _EventStream(self._send("POST", endpoint_url, inputs, stream=True, **options), map_fn)

    def infer_async(self, endpoint_url: str, inputs: Mapping[str, Any], **options: Any) -> InferenceFuture:
        """Start an inference in the background (header ``X-OctoAI-Async: 1``)."""
        return self._fetch(_future_from_body, "POST", endpoint_url, inputs, **_with_async_header(options))

    def is_future_ready(self, future: InferenceFuture) -> bool:
        """Whether the background inference has completed; raises if it failed."""
        return self._fetch(_poll_status_from_body, "GET", future.poll_url, None).get("status") == "completed"

    def get_future_result(self, future: InferenceFuture) -> Optional[Any]:
        """The background inference's JSON result, or None while it is still running."""
        url = _response_url(self._fetch(_poll_status_from_body, "GET", future.poll_url, None))
        return None if url is None else self._fetch(_parse_json, "GET", url, None)

    def health_check(
        self, endpoint_url: str, timeout: float = DEFAULT_TIMEOUT, *, interval: float = _HEALTH_CHECK_INTERVAL_S
    ) -> int:
        """GET `endpoint_url` every `interval` seconds until it answers below 500 or `timeout` passes.

        Returns the last status code; raises the typed error for a 4xx, and
        the last connection error if the server never answered.
        """
        response = self._run(self._health_call(endpoint_url, timeout, interval))
        response.close()  # only its status matters
        return response.status


class _AsyncCompletions(_CreateTypes["Awaitable[ChatCompletion]", "Awaitable[AsyncStream]"], _Namespace):
    """``client.chat.completions`` of an AsyncClient."""

    if TYPE_CHECKING:

        @_overload
        async def parse(
            self, *, model: Union[str, TextModel], messages: Iterable[Any], response_format: Type[_ParsedT], **more: Any
        ) -> ParsedChatCompletion[_ParsedT]: ...
        @_overload
        async def parse(
            self, *, model: Union[str, TextModel], messages: Iterable[Any], response_format: _Object, **more: Any
        ) -> ParsedChatCompletion[Dict[str, Any]]: ...
        async def parse(self, **arguments: Any) -> Any: ...
    else:
        parse = _chat_parse


class AsyncClient(_BaseClient, _AsyncClosing):
    """`Client` for asyncio: the same arguments and methods, awaited.

    ``await client.chat.completions.create(...)``; with ``stream=True`` it
    returns an `AsyncStream` for ``async for``. Use ``async with
    AsyncClient() as client:`` or ``await client.close()``. Connections are
    non-blocking sockets the event loop watches, in a bounded pool: no
    thread per request. Cancelling a task mid-stream closes its connection.
    """

    chat: _Chat[_AsyncCompletions]
    completions: _TextCompletions[Awaitable[Completion], Awaitable[AsyncCompletionStream]]
    embeddings: _Embeddings[Awaitable[CreateEmbeddingResponse]]
    models: _Models[Awaitable[List[str]]]
    _transport: _AsyncTransport
    _transport_class = _AsyncTransport

    def _bind(self) -> None:
        self.chat, self.models = _Chat(_AsyncCompletions(self, AsyncStream)), _Models(self)
        self.completions, self.embeddings = _TextCompletions(self, AsyncCompletionStream), _Embeddings(self)

    async def _answer(self, sending: Awaitable[_AsyncResponse], stream: bool, endpoint: _Namespace) -> Any:
        response = await sending
        return endpoint._stream(response) if stream else endpoint._parse(await response.read(), response)

    async def _fetch(
        self, parse: Callable[[bytes, _Secrets], _T], method: str, url: str, body: Any, **options: Any
    ) -> _T:
        response = await self._send(method, url, body, **options)
        return parse(await response.read(), response.secrets)

    async def close(self) -> None:  # type: ignore[override]
        """Close the pooled connections (a `with_options` copy leaves them to its original)."""
        super().close()

    async def infer(self, endpoint_url: str, inputs: Mapping[str, Any], **options: Any) -> Any:
        """POST `inputs` as JSON to `endpoint_url`; return the JSON answer."""
        return await self._fetch(_parse_json, "POST", endpoint_url, inputs, **options)

    async def infer_stream(
        self, endpoint_url: str, inputs: Mapping[str, Any], map_fn: _MapFn = None, **options: Any
    ) -> _AsyncEventStream:
        """POST `inputs`; ``async for`` each event's JSON (through `map_fn` if given) until `[DONE]`."""
        return _AsyncEventStream(await self._send("POST", endpoint_url, inputs, stream=True, **options), map_fn)

    async def infer_async(self, endpoint_url: str, inputs: Mapping[str, Any], **options: Any) -> InferenceFuture:
        """Start an inference in the background (header ``X-OctoAI-Async: 1``)."""
        return await self._fetch(_future_from_body, "POST", endpoint_url, inputs, **_with_async_header(options))

    async def is_future_ready(self, future: InferenceFuture) -> bool:
        """Whether the background inference has completed; raises if it failed."""
        return (await self._fetch(_poll_status_from_body, "GET", future.poll_url, None)).get("status") == "completed"

    async def get_future_result(self, future: InferenceFuture) -> Optional[Any]:
        """The background inference's JSON result, or None while it is still running."""
        url = _response_url(await self._fetch(_poll_status_from_body, "GET", future.poll_url, None))
        return None if url is None else await self._fetch(_parse_json, "GET", url, None)

    async def health_check(
        self, endpoint_url: str, timeout: float = DEFAULT_TIMEOUT, *, interval: float = _HEALTH_CHECK_INTERVAL_S
    ) -> int:
        """See `Client.health_check`."""
        response = await self._run(self._health_call(endpoint_url, timeout, interval))
        response.close()
        return response.status

    async def _run(self, call: _Call) -> _AsyncResponse:
        import asyncio

        attempt: Optional[_Attempt] = _Attempt(call.url)
        while attempt is not None:
            if attempt.wait_s:
                await asyncio.sleep(attempt.wait_s)
            started = time.monotonic()
            try:
                outcome: Any = await self._transport.send(call, attempt.url)
            except OctoAIError as error:
                outcome = error
            attempt = self._next(call, attempt, outcome, started)
        return outcome  # type: ignore[no-any-return]


# The original SDK's module layout, for `import octoai_lite as octoai`:
# octoai.chat.TextModel, octoai.chat.get_model_list(), octoai.client.Client.
chat = types.SimpleNamespace(
    TextModel=TextModel, get_model_list=get_model_list, ChatCompletion=ChatCompletion, ChatMessage=ChatMessage,
    Choice=Choice, ChoiceDelta=ChoiceDelta, CompletionUsage=CompletionUsage,
)  # fmt: skip
client = types.SimpleNamespace(Client=Client, AsyncClient=AsyncClient, InferenceFuture=InferenceFuture)


# =============================================================================
# 7. Command line
# =============================================================================
# Generated text goes to stdout as it arrives, diagnostics to stderr. Exit
# status: 0 success, 1 API or network error, 2 usage error, 130 interrupted.
# The token is never an argument (it would show in `ps`).

_EXIT_OK, _EXIT_ERROR, _EXIT_USAGE, _EXIT_INTERRUPTED = 0, 1, 2, 130

_CLI_EXAMPLES = """\
examples:
  octoai-lite "Write a haiku about Seattle"
  octoai-lite --base-url http://127.0.0.1:8080/v1 -m my-model "Hello"
  cat notes.txt | octoai-lite -s "Summarise the text" --max-tokens 200
  octoai-lite --no-stream --json "Hi" > completion.json
  octoai-lite --list-models
  octoai-lite --replay recordings/guide.jsonl "Write a blog about Seattle"

The token comes from OCTOAI_TOKEN or 'token:' in ~/.octoai/config.yaml, never
from an argument (it would show in the process list). OCTOAI_BASE_URL and
OCTOAI_MODEL set the defaults of --base-url and --model.
"""


def _cli_number(kind: Callable[[str], Any], least: float, *, above: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite `kind` at least (or, with `above`, above) `least`; else a usage error."""
    import argparse

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < least or (above and value == least):
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {least:g}, not {text}")
        return value

    return parse


def _build_arg_parser() -> Any:
    import argparse  # only the command line needs it

    parser = argparse.ArgumentParser(
        prog="octoai-lite",
        description="Ask a Chat Completions model and stream its answer to stdout.",
        epilog=_CLI_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompt", nargs="*", help="the prompt; '-' or nothing reads it from stdin")
    parser.add_argument(
        "-m", "--model", default=os.environ.get("OCTOAI_MODEL") or TextModel.LLAMA_2_70B_CHAT.value, help="model name"
    )
    parser.add_argument("-s", "--system", help="a system message to send first")
    parser.add_argument("--max-tokens", type=_cli_number(int, 1))
    parser.add_argument("--temperature", type=_cli_number(float, 0))
    parser.add_argument("--top-p", type=_cli_number(float, 0))
    parser.add_argument("--stop", action="append", help="a stop sequence (repeatable)")
    parser.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    parser.add_argument(
        "--json", action="store_true", help="print the completion's JSON (one chunk per line when streaming)"
    )
    parser.add_argument("--list-models", action="store_true", help="list the server's models and exit")
    parser.add_argument("--base-url", help="the API's base URL, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument(
        "--timeout",
        type=_cli_number(float, 0, above=True),
        default=DEFAULT_TIMEOUT,
        help="seconds for connecting and each read",
    )
    parser.add_argument("--max-retries", type=_cli_number(int, 0), default=DEFAULT_MAX_RETRIES)
    parser.add_argument("--record", metavar="FILE", help="write every exchange to FILE (JSON Lines, no secrets)")
    parser.add_argument("--replay", metavar="FILE", help="answer from a recording in FILE, offline")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr; tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"octoai-lite {__version__}")
    return parser


def _read_prompt(words: List[str]) -> Optional[str]:
    if words and words != ["-"]:
        text = " ".join(words)
    elif words == ["-"] or (sys.stdin is not None and not sys.stdin.isatty()):
        text = sys.stdin.read()
    else:
        return None
    return text if text.strip() else None  # a blank prompt is no prompt


def _print_answer(client: Client, args: Any, messages: List[Dict[str, str]]) -> None:
    params = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, stop=args.stop)
    if args.no_stream:
        completion = client.chat.completions.create(model=args.model, messages=messages, **params)
        text = completion.json() if args.json else completion.choices[0].message.content or ""
        sys.stdout.write(text + "\n")
        return
    stream = client.chat.completions.create(model=args.model, messages=messages, stream=True, **params)
    with stream:
        try:
            for chunk in stream:
                if args.json:
                    sys.stdout.write(chunk.json() + "\n")
                elif chunk.choices:
                    sys.stdout.write(chunk.choices[0].delta.content)
                sys.stdout.flush()
        finally:
            if not args.json:
                sys.stdout.write("\n")  # also after Ctrl-C, so the shell prompt starts on its own line
                sys.stdout.flush()


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]); return the exit status."""
    parser = _build_arg_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else _EXIT_USAGE
    if args.verbose:
        _log_to_stderr("DEBUG", "octoai-lite: %(levelname)s %(message)s")
    if args.base_url is not None:
        try:
            _check_base_url(args.base_url)
        except ValueError as exc:
            parser.print_usage(sys.stderr)
            print(f"octoai-lite: error: --base-url: {exc}", file=sys.stderr)
            return _EXIT_USAGE
    try:
        transport = replay(args.replay) if args.replay else record(args.record) if args.record else None
        with Client(
            base_url=args.base_url, timeout=args.timeout, max_retries=args.max_retries, transport=transport
        ) as cli_client:
            if args.list_models:
                for model in cli_client.models.list():  # the server's own; a failure is an error, not a stale list
                    print(model)
                return _EXIT_OK
            prompt = _read_prompt(args.prompt)
            if not prompt:
                parser.print_usage(sys.stderr)
                print("octoai-lite: error: give a prompt, or pipe one to stdin", file=sys.stderr)
                return _EXIT_USAGE
            messages = [{"role": "user", "content": prompt}]
            if args.system:
                messages.insert(0, {"role": "system", "content": args.system})
            _print_answer(cli_client, args, messages)
    except (OctoAIError, ValueError) as exc:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"octoai-lite: error: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    except KeyboardInterrupt:
        return _EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's
        # final flush of stdout from complaining too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return _EXIT_OK
    return _EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
