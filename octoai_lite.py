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

Map of the file (each section uses only the ones above it)::

    1 Constants     2 Errors      3 Data types (TextModel, response dataclasses)
    4 Protocol, pure: 4a SSE  4b requests  4c responses and errors  4d retry policy
                      4e redirects  4f folding stream chunks  4g one HTTP/1.1 exchange
    5 Transport, the only code that touches sockets: proxies, TLS, pools, and
                      the pumps that move bytes: 5a threads, 5b asyncio
    6 Client API: Stream, Client, AsyncStream, AsyncClient (chat.completions,
                      models, infer*, health_check), sharing one _BaseClient
    7 Command line

Life of a streamed call: `create` builds the body (4b) and `_BaseClient._send`
a `_Request`; the retry loop (`_Retry`, 4d's policy) hands it to the
transport, which takes a pooled connection or opens one (5) and makes an
`_Exchange` (4g): request bytes out, the answer's head and body pieces in.
The transport only pumps bytes into it. The `Stream` then feeds body pieces
to the `SSEDecoder` (4a), turns each event into a chunk (4c) and folds it for
`get_final_completion` (4f). Sync and async share all of this; what each
writes for itself is a few lines of pumping.

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
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs 3.5 ms to import; annotations are strings here (PEP 563), so only mypy reads them
    import asyncio
    import ssl
    from typing import (
        Any,
        AsyncGenerator,
        Awaitable,  # noqa: F401  (in string subscripts ruff does not read)
        Callable,
        ClassVar,
        Dict,
        FrozenSet,
        Generator,
        Generic,
        Iterable,
        Iterator,
        List,
        Literal,
        Mapping,
        Optional,
        Tuple,
        Type,
        TypeVar,
        Union,
    )
    from typing import overload as _overload

    _Env = Mapping[str, str]
    _PoolKey = Tuple[str, str, int, Optional[str]]
    _MessageT = TypeVar("_MessageT", bound="ChatMessage")
    _ClientT = TypeVar("_ClientT", bound="_BaseClient")
    _SelfT = TypeVar("_SelfT")
    _MapFn = Optional[Callable[[Any], Any]]
    _Object = Optional[Mapping[str, Any]]
    _Headers = Optional[Mapping[str, Optional[str]]]
    _CompletionT = TypeVar("_CompletionT")
    _StreamT = TypeVar("_StreamT")

__all__ = [
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletion",
    "ChatMessage",
    "Choice",
    "ChoiceDelta",
    "Client",
    "CompletionUsage",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "FunctionCall",
    "InferenceFuture",
    "NotFoundError",
    "OctoAIClientError",
    "OctoAIConnectionError",
    "OctoAIError",
    "OctoAIServerError",
    "OctoAITimeoutError",
    "OctoAIValidationError",
    "PermissionDeniedError",
    "RateLimitError",
    "SSEDecoder",
    "ServerSentEvent",
    "Stream",
    "TextModel",
    "ToolCall",
    "UnprocessableEntityError",
    "get_model_list",
    "main",
]
__version__ = "0.1.0"


# Logging goes through `_log`; the logger is `octoai_lite.log`. The logging
# module is imported only once something else has imported it (only then
# may a record have somewhere to go) or OCTOAI_LOG asks for it: importing
# it here would cost a sixth of this module's import time.
_DEBUG, _INFO, _WARNING = 10, 20, 30  # logging's level numbers


def _logger() -> Any:
    import logging

    return logging.getLogger("octoai_lite")


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
_READ_SIZE = 64 * 1024  # one read from the socket

_MAX_CONNECTIONS = 100  # open at once to one host, idle and busy (httpx: 100; openai-python: 1,000)
_MAX_IDLE_CONNECTIONS = 32  # of those, kept open for reuse after a burst (httpx: 20)
_MAX_REDIRECTS = 5
_URL_SAFE = "/%:@!$&'()*+,;=?-._~"  # what a URL's path and query keep as they are (RFC 3986 pchar)
_MAX_CACHED_ROUTES = 256  # URLs whose parsed route a client remembers
_DONE_GRACE_S = 1.0  # after [DONE], how long the rest of the body may take
_HEALTH_CHECK_INTERVAL_S = 1.0


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


class OctoAIConnectionError(OctoAIError):
    """The connection failed: refused, reset, DNS, TLS, or a body cut short.

    ``request_sent`` is True when the request had gone out whole before the
    failure, so the server may have acted on it; such a POST is not re-sent.
    """

    request_sent = False


class OctoAITimeoutError(OctoAIConnectionError):
    """A connect, a read, a free pool slot or the call's deadline took too long."""


_ERRORS_BY_STATUS: Mapping[int, type] = types.MappingProxyType(
    {
        400: BadRequestError,
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        422: UnprocessableEntityError,
        429: RateLimitError,
    }
)


# =============================================================================
# 3. Data types
# =============================================================================
# Response objects are dataclasses that keep the dict the server sent
# (`_raw`), so fields this module does not declare survive `dict()`.


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

    def __str__(self) -> str:
        return str(self.value)


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
        return "".join(
            part if isinstance(part, str) else part.get("text") or "" if isinstance(part, dict) else ""
            for part in value
            if isinstance(part, (str, dict))
            and isinstance(part if isinstance(part, str) else part.get("text", ""), str)
        )
    return json.dumps(value)


def _raw_field() -> Any:
    """The dict the server sent: kept for `dict()`, out of `==` and `repr`."""
    return dataclasses.field(default_factory=dict, repr=False, compare=False)


def _filler(factory: Callable[[], Any]) -> Any:
    """A field that is never None: an empty value stands where the server sent none (null in `dict()`)."""
    return dataclasses.field(default_factory=factory, metadata={"filler": True})


class _Model:
    """What the response dataclasses share: `from_dict`, `dict()` and `json()`.

    Each keeps the dict the server sent (`_raw`): `dict()` gives back every
    field of it, and at run time a field this module does not declare is an
    attribute too (`completion.service_tier`), though type checkers only
    know the declared ones.
    """

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

    dict = to_dict
    model_dump = to_dict

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


@dataclasses.dataclass
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


def _function_or_none(value: Any) -> Optional[FunctionCall]:
    return FunctionCall.from_dict(value) if isinstance(value, dict) else None


@dataclasses.dataclass
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
        function = _function_or_none(data.get("function")) or FunctionCall()
        return cls(
            _str_or_none(data.get("id")),
            _str_or_none(data.get("type")),
            function,
            _int_or_none(data.get("index")),
            data,
        )


def _tool_calls_or_none(value: Any) -> Optional[List[ToolCall]]:
    if not isinstance(value, list):
        return None
    return [ToolCall.from_dict(item) for item in value if isinstance(item, dict)]


@dataclasses.dataclass
class ChatMessage(_Model):
    """A message: what the model answered, or what you send."""

    role: Optional[str] = None
    content: Optional[str] = None
    function_call: Optional[FunctionCall] = None
    tool_calls: Optional[List[ToolCall]] = None
    reasoning_content: Optional[str] = None
    refusal: Optional[str] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"role", "content", "function_call"})

    @classmethod
    def from_dict(cls: Type[_MessageT], data: Dict[str, Any]) -> _MessageT:
        """Build from the server's JSON object."""
        return cls(
            _str_or_none(data.get("role")),
            _text(data.get("content")),
            _function_or_none(data.get("function_call")),
            _tool_calls_or_none(data.get("tool_calls")),
            _text(data.get("reasoning_content")),
            _str_or_none(data.get("refusal")),
            data,
        )


@dataclasses.dataclass
class ChoiceDelta(ChatMessage):
    """The part of a message one stream chunk adds; `content` is "" when it adds no text.

    (openai-python gives None there; "" lets ``print(delta.content, end="")``
    print just the answer. `dict()` still shows what the server sent.)
    """

    content: str = _filler(str)
    _SEED_FIELDS = frozenset({"role", "content"})

    def __post_init__(self) -> None:
        if self.content is None:  # what the server sends for "no text" (or leaves out)
            self.content = ""


@dataclasses.dataclass
class Choice(_Model):
    """One answer: `message` in a completion, `delta` in a stream chunk (the other is empty)."""

    index: int = 0
    message: ChatMessage = _filler(ChatMessage)
    delta: ChoiceDelta = _filler(ChoiceDelta)
    finish_reason: Optional[str] = None
    logprobs: Optional[Dict[str, Any]] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"index", "message", "delta", "finish_reason"})

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Choice":
        """Build from the server's JSON object."""
        message, delta, logprobs = data.get("message"), data.get("delta"), data.get("logprobs")
        return cls(
            _int_or_none(data.get("index")) or 0,
            ChatMessage.from_dict(message) if isinstance(message, dict) else ChatMessage(),
            ChoiceDelta.from_dict(delta) if isinstance(delta, dict) else ChoiceDelta(),
            _str_or_none(data.get("finish_reason")),
            logprobs if isinstance(logprobs, dict) else None,
            data,
        )


@dataclasses.dataclass
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


@dataclasses.dataclass
class ChatCompletion(_Model):
    """A chat completion, or one chunk of a streamed one."""

    id: Optional[str] = None
    choices: List[Choice] = dataclasses.field(default_factory=list)
    created: Optional[int] = None
    model: Optional[str] = None
    object: Optional[str] = None
    system_fingerprint: Optional[str] = None
    usage: Optional[CompletionUsage] = None
    _raw: Dict[str, Any] = _raw_field()
    _SEED_FIELDS = frozenset({"id", "choices", "created", "model", "object", "system_fingerprint", "usage"})

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ChatCompletion":
        """Build from the server's JSON object, leniently: whatever its shape, this does not raise."""
        usage, choices = data.get("usage"), data.get("choices")
        return cls(
            _str_or_none(data.get("id")),
            [Choice.from_dict(choice) for choice in choices if isinstance(choice, dict)]
            if isinstance(choices, list)
            else [],
            _int_or_none(data.get("created")),
            _str_or_none(data.get("model")),
            _str_or_none(data.get("object")),
            _str_or_none(data.get("system_fingerprint")),
            CompletionUsage.from_dict(usage) if isinstance(usage, dict) else None,
            data,
        )

    @classmethod
    def from_chunks(cls, chunks: Iterable[Union["ChatCompletion", Dict[str, Any]]]) -> "ChatCompletion":
        """Fold stream chunks (objects or dicts) into one completion.

        Content and tool-call fragments are joined per choice, and the last
        finish_reason and usage win. Raises `OctoAIValidationError` for an
        item that is neither.
        """
        folder = _ChunkFolder()
        for chunk in chunks:
            data = chunk._raw if isinstance(chunk, ChatCompletion) else chunk
            if not isinstance(data, dict):
                raise OctoAIValidationError(f"not a stream chunk: {type(chunk).__name__}")
            folder.add(data)
        return cls.from_dict(folder.result())


class InferenceFuture(collections.namedtuple("InferenceFuture", ["response_id", "poll_url"])):
    """A handle on an inference running in the background (`Client.infer_async`): response_id, poll_url."""

    __slots__ = ()


# =============================================================================
# 4. Protocol (pure: no sockets, no clock, no randomness but via parameters)
# =============================================================================

# -- 4a. Server-Sent Events ---------------------------------------------------
# WHATWG HTML, "9.2.6 Interpreting an event stream". The decoder works on
# bytes: it splits lines on CR, LF or CRLF itself (never str.splitlines, which
# also splits on U+2028) and decodes each whole line, so a character split
# across reads is never broken. Chat meaning ([DONE], errors) lives in 4c.

_BOM = b"\xef\xbb\xbf"
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
            # The usual case, LF only: split in C. What the buffer held had no
            # line end, so the last piece is the unfinished line.
            lines = buffer.split(b"\n")
            buffer = self._buffer = lines.pop()
            for line in lines:
                event = self._take_line(line)
                if event is not None:
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
            self._take_line(self._buffer)
        unterminated = self._make_event() if self._data else None
        self._buffer.clear()
        self._at_start, self._skip_lf = True, False
        self._dispatch()
        return unterminated

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
        elif name == "id":
            if "\0" not in value:
                self._last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:  # int() takes " 5", "+5", "1_0"
                self._retry = int(value)
        return None  # any other field is ignored

    def _make_event(self) -> ServerSentEvent:
        data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
        return ServerSentEvent(self._event_type or "message", data, self._last_event_id, self._retry)

    def _dispatch(self) -> Optional[ServerSentEvent]:
        # Only an event with at least one data line is dispatched; the event
        # type resets either way, the last event ID does not.
        event = self._make_event() if self._data else None
        self._data = []
        self._data_chars = 0
        self._event_type = ""
        return event


# -- 4b. Building requests ----------------------------------------------------


def _model_name(model: Union[str, TextModel]) -> str:
    return model.value if isinstance(model, TextModel) else str(model)


def _build_chat_body(
    model: Union[str, TextModel],
    messages: Iterable[Any],
    params: Mapping[str, Any],
) -> Dict[str, Any]:
    """The JSON body of a chat request: parameters left None are not sent."""
    if not isinstance(messages, (list, str, bytes, dict)):
        messages = list(messages)  # a generator or tuple; anything else goes as given, for the server to judge
    body: Dict[str, Any] = {"model": _model_name(model), "messages": messages}
    body.update((key, value) for key, value in params.items() if value is not None)
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


def _merge_headers(*layers: Optional[Mapping[str, Optional[str]]]) -> Dict[str, str]:
    """Merge header dicts, later ones winning whatever their case; None removes."""
    merged: Dict[str, Tuple[str, Optional[str]]] = {}
    for layer in layers:
        for name, value in (layer or {}).items():
            merged[name.lower()] = (name, value)
    return {name: value for name, value in merged.values() if value is not None}


def _build_headers(
    token: Optional[str],
    default_headers: Optional[Mapping[str, Optional[str]]],
    extra_headers: Optional[Mapping[str, Optional[str]]] = None,
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


class _Request:
    """One call's request and settings, ready for the retry loop."""

    def __init__(
        self, method: str, url: str, headers: Dict[str, str], data: Optional[bytes], timeout_s: float,
        deadline_at: Optional[float], retries: int, base_url: Optional[str], token: Optional[str],
    ) -> None:  # fmt: skip
        self.method = method
        self.url = url
        self.headers = headers
        self.data = data
        self.timeout_s = timeout_s
        self.deadline_at = deadline_at
        self.retries = retries
        self.base_url = base_url  # for the 404 hint, when the URL was built from base_url
        self.token = token  # to keep out of log lines
        self.hops = 0  # redirects followed in this attempt
        self.response: Any = None  # the latest attempt's response, set by the transport


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


def _check_headers(headers: Optional[Mapping[str, Optional[str]]]) -> Dict[str, Optional[str]]:
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


_PIECE_CHARS = 8  # a piece of the token this long is taken out too, wherever a cut left it


def _redact(text: str, token: Optional[str]) -> str:
    """The text with the token replaced by ***, and any piece of it a cut left behind."""
    if not token or len(token) < 4:
        return text
    text = text.replace(token, "***")
    for start in range(len(token) - _PIECE_CHARS + 1):
        piece = token[start : start + _PIECE_CHARS]
        if piece in text:
            text = text.replace(piece, "***")
    for size in range(min(_PIECE_CHARS - 1, len(token) - 1, len(text)), 3, -1):
        if text.endswith(token[:size]):  # the body was cut inside the token's first characters
            return text[:-size] + "***"
    return text


def _scrub(error: OctoAIError, token: Optional[str]) -> OctoAIError:
    """The error with the token taken out of everything it carries that a server could have echoed."""
    if token:
        error.message = _redact(error.message, token)
        error.args = (error.message,) + error.args[1:]
        error.body = _redact_json(error.body, token)
        error.headers = {_redact(name, token): _redact(value, token) for name, value in error.headers.items()}
        error.request_id = error.request_id and _redact(error.request_id, token)
    return error


def _redact_json(value: Any, token: Optional[str]) -> Any:
    """A JSON value with the token replaced wherever it appears in a key or a string."""
    if not token:
        return value
    try:
        return json.loads(_redact(json.dumps(value), token))
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


def _request_id(headers: Mapping[str, str]) -> Optional[str]:
    return headers.get("x-user-request-id") or headers.get("x-request-id")


def _cut(text: str, limit: int = _MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _preview(text: str, token: Optional[str], limit: int = 200) -> str:
    """Server text to quote in a message: the token out first, then cut (a cut could split the token)."""
    return _cut(_redact(text, token), limit)


def _loads(data: Union[str, bytes]) -> Any:
    """json.loads, with absurd nesting a ValueError too."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _parse_json(body: bytes, token: Optional[str] = None) -> Any:
    """Parse a JSON body; raise `OctoAIValidationError` saying what it was instead."""
    try:
        return _loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        preview = _preview(body[:_MAX_MESSAGE_CHARS].decode("utf-8", "replace"), token)
        # Not chained: JSONDecodeError keeps the whole body, token and all, in `doc`.
        raise OctoAIValidationError(f"the server sent a body that is not JSON ({exc}): {preview!r}") from None


def _error_details(payload: Any) -> Tuple[str, Optional[str], Optional[int]]:
    """(message, code, status) of an error payload: {"error": {...}}, {"error": "..."}, {"detail": ...}, or text."""
    if isinstance(payload, dict):
        error = payload.get("error") or payload
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("msg")
            if isinstance(message, str):
                text = message
            else:
                text = _detail_text(message) if message is not None else _json_text(error)
            code, kind = error.get("code"), error.get("type")
            name = code if isinstance(code, str) else kind if isinstance(kind, str) else None
            status = code if isinstance(code, int) and not isinstance(code, bool) else None
            return _cut(text), name, status
        payload = error
    if isinstance(payload, str):
        text = payload
        if text.lstrip().startswith("<"):
            text = _HTML_TAG.sub(" ", text)  # an HTML error page from a proxy: keep its words
        return _cut(_WHITESPACE.sub(" ", text).strip()), None, None
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


def _decode_error_body(body: bytes, token: Optional[str]) -> Any:
    """An error body as JSON, or as text; the token taken out either way."""
    try:
        return _redact_json(_loads(body), token)
    except ValueError:
        return _redact(body.decode("utf-8", "replace"), token)


def _error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    token: Optional[str] = None,
    base_url: Optional[str] = None,
) -> OctoAIError:
    """The typed error for an HTTP error answer; returned, not raised. The token never shows in it."""
    payload = _decode_error_body(body, token)
    text, _code, _status = _error_details(payload)
    if status in _ERRORS_BY_STATUS:
        cls = _ERRORS_BY_STATUS[status]
    elif 400 <= status < 500:
        cls = OctoAIClientError
    elif status >= 500:
        cls = OctoAIServerError
    else:
        cls = OctoAIError
    reason = _REASONS.get(status, "")
    message = f"{status} {reason}".rstrip()
    if text:
        message += ": " + text
    if status == 401 and not token:
        message += (
            " (no token is set: pass Client(token=...), set OCTOAI_TOKEN, or put 'token: ...' in ~/.octoai/config.yaml)"
        )
    if status == 404 and base_url is not None and not _VERSION_SEGMENT.search(urlsplit(base_url).path):
        message += f" (base_url {_redact_userinfo(base_url)} has no version segment: does it lack '/v1'?)"
    return _server_error(
        cls, message, status, payload if not isinstance(payload, str) else _cut(payload, 2000), headers, token
    )


def _server_error(
    cls: type, message: str, status: Optional[int], body: Any, headers: Mapping[str, str], token: Optional[str]
) -> OctoAIError:
    """The error, with the request id and the server's headers on it, and the token out of all of them."""
    headers = {name: _redact(value, token) for name, value in headers.items()}
    request_id = _request_id(headers)
    if request_id:
        message += f" [request id: {request_id}]"
    return cls(  # type: ignore[no-any-return]
        _redact(message, token), status_code=status, body=body, request_id=request_id, headers=headers
    )


def _error_from_payload(payload: Any, headers: Mapping[str, str], *, token: Optional[str] = None) -> OctoAIError:
    """The typed error for an error object sent inside a 200 answer or a stream."""
    payload = _redact_json(payload, token)
    text, _code, status = _error_details(payload)
    cls = _ERRORS_BY_STATUS.get(status or 0) or (
        OctoAIClientError if status and 400 <= status < 500 else OctoAIServerError
    )
    return _server_error(cls, "the server reported an error: " + text, status, payload, headers, token)


def _error_code(payload: Any) -> Optional[str]:
    return _error_details(payload)[1]


def _check_completion(
    payload: Any, headers: Mapping[str, str], token: Optional[str], *, chunk: bool = False
) -> Dict[str, Any]:
    """Return the payload if it is a chat completion (or chunk); raise the right error if not."""
    what = "stream chunk" if chunk else "chat completion"
    if not isinstance(payload, dict):
        raise OctoAIValidationError(
            f"expected a {what} object, got {type(payload).__name__}: {_preview(_json_text(payload), token)}"
        )
    if "error" in payload and payload["error"]:
        raise _error_from_payload(payload, headers, token=token)
    choices = payload.get("choices")
    if type(choices) is not list or any(type(choice) is not dict for choice in choices):
        keys = _preview(", ".join(sorted(payload)[:10]) or "none", token)
        raise OctoAIValidationError(f"expected a {what} with a 'choices' list; the server sent keys: {keys}")
    if not chunk and not choices:
        raise OctoAIValidationError("the chat completion has no choices")
    return payload


def _payload_from_event(event: ServerSentEvent, headers: Mapping[str, str], token: Optional[str]) -> Optional[Any]:
    """The JSON of one event; None for `[DONE]`; raises for an error event or bad JSON."""
    data = event.data
    if data == "[DONE]":
        return None
    try:
        payload = _loads(data)
    except ValueError as exc:
        if event.event == "error":  # an error event's text is the message
            raise _error_from_payload(data, headers, token=token) from None
        raise OctoAIValidationError(f"an event's data is not JSON ({exc}): {_preview(data, token)!r}") from None
    if event.event == "error" or (isinstance(payload, dict) and payload.get("error")):
        raise _error_from_payload(payload, headers, token=token)
    return payload


class _EventPayloads:
    """The JSON payloads of an event-stream body, by the rules of a chat stream.

    Feed it the body as it arrives; `done` turns True at `[DONE]`. Call `end`
    when the body ends without one.
    """

    def __init__(self, headers: Mapping[str, str], token: Optional[str]) -> None:
        self._decoder = SSEDecoder()
        self._headers = headers
        self._token = token
        self.count = 0
        self.done = False

    def payloads(self, data: bytes) -> Iterator[Any]:
        """Each payload the bytes completed; raises the server's error where it stands."""
        for event in self._decoder.feed(data):
            payload = _payload_from_event(event, self._headers, self._token)
            if payload is None:
                self.done = True
                return
            self.count += 1
            yield payload

    def end(self) -> None:
        """At a clean end of the body: raise if the stream never said anything."""
        unterminated = self._decoder.close()
        if unterminated is not None and unterminated.data == "[DONE]":
            return  # llama.cpp ends with "data: [DONE]" and no blank line after it
        if self.count == 0:
            raise OctoAIValidationError(
                "the stream ended before any event arrived (a server may do this when the prompt is too long)"
            )


def _stream_answered_with_json(body: bytes, headers: Mapping[str, str], token: Optional[str]) -> OctoAIError:
    """The error for a streaming request answered with one JSON body: its error, or a clear complaint."""
    payload = _parse_json(body, token)
    if isinstance(payload, dict) and payload.get("error"):
        return _error_from_payload(payload, headers, token=token)
    return OctoAIValidationError(
        "the server answered a streaming request with one JSON body instead of an event stream"
    )


def _completion_from_body(body: bytes, headers: Mapping[str, str], token: Optional[str]) -> ChatCompletion:
    return ChatCompletion.from_dict(_check_completion(_parse_json(body, token), headers, token))


def _models_from_body(body: bytes, token: Optional[str]) -> List[str]:
    payload = _parse_json(body, token)
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list) or not all(isinstance(item, dict) and "id" in item for item in data):
        raise OctoAIValidationError("expected {'data': [{'id': ...}, ...]} from the models endpoint")
    return [str(item["id"]) for item in data]


def _future_from_body(body: bytes, token: Optional[str]) -> InferenceFuture:
    payload = _parse_json(body, token)
    if not isinstance(payload, dict) or "response_id" not in payload or "poll_url" not in payload:
        raise OctoAIValidationError("expected 'response_id' and 'poll_url' in the answer to an async inference")
    return InferenceFuture(str(payload["response_id"]), str(payload["poll_url"]))


def _poll_status_from_body(body: bytes, token: Optional[str]) -> Dict[str, Any]:
    """A poll answer; raises OctoAIServerError when the background inference failed."""
    payload = _parse_json(body, token)
    if not isinstance(payload, dict):
        raise OctoAIValidationError("expected a JSON object from the poll URL")
    if payload.get("status") == "failed":
        payload = _redact_json(payload, token)
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


def _build_chat_request(arguments: Mapping[str, Any]) -> Tuple[Dict[str, Any], bool, Dict[str, Any]]:
    """(body, stream, per-call options) from `chat.completions.create`'s keyword arguments."""
    params = dict(arguments)
    try:
        model, messages = params.pop("model"), params.pop("messages")
    except KeyError as exc:
        raise TypeError(f"create() missing required keyword argument {exc}") from None
    stream = bool(params.pop("stream", False))
    options = {name: params.pop(name) for name in _CALL_OPTIONS if name in params}
    body = _build_chat_body(model, messages, params)
    if stream:
        body["stream"] = True
    return body, stream, options


# -- 4d. Retry policy ---------------------------------------------------------
# A value computed from the attempt and the answer, apart from the sleeping
# (urllib3's Retry, openai's _should_retry). Connection failures reach it
# only when they are safe to repeat: before the request went out, or for an
# idempotent method.


def _seconds(text: str, scale: float = 1.0) -> Optional[float]:
    """A finite number of seconds (negative ones as 0) from a header value, or None."""
    try:
        value = float(text) * scale
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def _parse_retry_after(headers: Mapping[str, str], now: float) -> Optional[float]:
    """Seconds the server asked to wait (retry-after-ms, Retry-After seconds or HTTP date), or None."""
    millis = headers.get("retry-after-ms")
    seconds = _seconds(millis, 0.001) if millis else None
    if seconds is not None:
        return seconds
    text = headers.get("retry-after")
    if not text:
        return None
    seconds = _seconds(text)
    if seconds is not None:
        return seconds
    import email.utils  # only this path needs it

    try:
        parsed = email.utils.parsedate_tz(text)
        if parsed is None:
            return None
        return max(0.0, email.utils.mktime_tz(parsed) - now)
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
    initial_s: float = _BACKOFF_INITIAL_S,
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
        if status not in _RETRY_STATUSES:
            return None
        if status == 429 and error_code == "insufficient_quota":
            return None  # waiting does not add quota
    asked = _parse_retry_after(headers, now)
    if asked is not None:
        return asked if asked <= _RETRY_AFTER_MAX_S else None
    backoff = min(initial_s * 2.0**attempt, _BACKOFF_MAX_S)
    return backoff * (1.0 - 0.25 * rand)  # jitter: 75% to 100% of the backoff


# -- 4e. Redirects ------------------------------------------------------------

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def _split_url(url: str) -> Tuple[Any, Optional[int]]:
    """`urlsplit(url)` and its port, for every URL this module opens or compares.

    A URL that cannot be split (a server's Location or poll URL, a proxy's:
    a port past 65535 or not a number, an unclosed "[") is an
    `OctoAIClientError`, not urllib's raw ValueError.
    """
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

    307 and 308 keep the method and body; 301/302/303 would turn a POST into
    a GET of something else, so only GETs follow them. Nothing is followed to
    another origin, so the token is never sent there, nor to a Location
    that is not a valid URL.
    """
    location = headers.get("location", "")
    why = ""
    try:
        target = urljoin(url, location)  # which splits the Location too
        elsewhere = _origin(target) != _origin(url)
    except (ValueError, OctoAIClientError):
        target, elsewhere, why = _cut(location, 200), False, "the Location is not a valid URL"
    if not why and status not in (307, 308) and method not in _IDEMPOTENT_METHODS:
        why = f"a {method} cannot follow a {status} without turning into a GET"
    elif not why and elsewhere:
        why = "it leads to another origin, where the token must not go"
    if why:
        raise OctoAIClientError(
            f"{status} redirect to {target} not followed: {why}; set base_url to the new address",
            status_code=status,
            headers=headers,
            request_id=_request_id(headers),
        )
    return target


# -- 4f. Folding stream chunks ------------------------------------------------


class _Text:
    """Text arriving in many small pieces, kept in blocks: memory grows with the text, not the pieces."""

    __slots__ = ("_blocks", "_pieces", "_seen")

    def __init__(self) -> None:
        self._blocks: List[str] = []
        self._pieces: List[str] = []
        self._seen = False

    def add(self, piece: Any) -> None:
        text = _text(piece)  # a str, or content parts; anything else as its JSON
        self._seen = True
        if not text:
            return
        pieces = self._pieces
        pieces.append(text)
        if len(pieces) == 1024:  # a str per token costs ~50 bytes; a block costs one per character
            self._blocks.append("".join(pieces))
            pieces.clear()

    def value(self) -> Optional[str]:
        """The whole text, or None if no piece came."""
        if not self._seen:
            return None
        return "".join(self._blocks) + "".join(self._pieces)


def _dict_or_empty(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


class _ChunkFolder:
    """Accumulate chat chunks (dicts) into one completion dict.

    Lenient like the response classes: a field of the wrong type counts as
    absent, so no chunk shape makes folding fail.
    """

    def __init__(self) -> None:
        self._top: Dict[str, Any] = {}
        self._choices: Dict[int, Dict[str, Any]] = {}
        self._usage: Optional[Dict[str, Any]] = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        top = self._top
        if not top:
            top.update((key, value) for key, value in chunk.items() if key not in ("choices", "usage", "object"))
        if isinstance(chunk.get("usage"), dict) and chunk["usage"]:
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            index = _int_or_none(choice.get("index")) or 0
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = {
                    "choice": {"index": index}, "message": {}, "content": _Text(), "reasoning": _Text(), "tools": {},
                }  # fmt: skip
            self._add_delta(state, _dict_or_empty(choice.get("delta")) or _dict_or_empty(choice.get("message")))
            for key, value in choice.items():
                if key not in ("delta", "message", "index") and value is not None:
                    if key == "logprobs" and isinstance(value, dict):
                        self._add_logprobs(state["choice"], value)
                    else:
                        state["choice"][key] = value

    @staticmethod
    def _add_delta(state: Dict[str, Any], delta: Mapping[str, Any]) -> None:
        message = state["message"]
        for key, value in delta.items():
            if value is None:
                continue
            if key == "content":
                state["content"].add(value)
            elif key == "reasoning_content":
                state["reasoning"].add(value)
            elif key == "tool_calls":
                if isinstance(value, list):
                    _ChunkFolder._add_tool_calls(state["tools"], value)
            elif key == "function_call":
                if isinstance(value, dict):
                    _ChunkFolder._add_function(
                        message.setdefault("function_call", {"name": None, "arguments": ""}), value
                    )
            else:
                message[key] = value

    @staticmethod
    def _add_function(function: Dict[str, Any], fragment: Mapping[str, Any]) -> None:
        name, arguments = fragment.get("name"), fragment.get("arguments")
        if isinstance(name, str) and name:
            function["name"] = name
        if arguments is not None:
            function["arguments"] += arguments if isinstance(arguments, str) else _json_text(arguments)

    @staticmethod
    def _add_tool_calls(tools: Dict[int, Dict[str, Any]], fragments: List[Any]) -> None:
        for fragment in fragments:
            if not isinstance(fragment, dict):
                continue
            index = _int_or_none(fragment.get("index"))
            call_id = fragment.get("id")
            if index is None:
                # Some servers leave `index` out: a new id starts a new call,
                # a fragment without one continues the last call.
                known = [i for i, call in tools.items() if call_id and call.get("id") == call_id]
                if known:
                    index = known[0]
                elif call_id or not tools:
                    index = len(tools)
                else:
                    index = max(tools)
            call = tools.get(index)
            if call is None:
                call = tools[index] = {"id": None, "type": "function", "function": {"name": None, "arguments": ""}}
            for key, value in fragment.items():
                if key == "function":
                    if isinstance(value, dict):
                        _ChunkFolder._add_function(call["function"], value)
                elif key != "index" and value is not None:
                    call[key] = value

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
        out = dict(self._top)
        out["object"] = "chat.completion"
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: Dict[str, Any] = {"role": "assistant", "content": None}
            message.update(state["message"])
            content, reasoning = state["content"].value(), state["reasoning"].value()
            if content is not None:
                message["content"] = content
            if reasoning is not None:
                message["reasoning_content"] = reasoning
            if state["tools"]:
                message["tool_calls"] = [state["tools"][i] for i in sorted(state["tools"])]
            choice = dict(state["choice"])
            choice["message"] = message
            choice.setdefault("finish_reason", None)
            choices.append(choice)
        out["choices"] = choices
        out["usage"] = self._usage
        return out


# -- 4g. One HTTP/1.1 exchange ------------------------------------------------
# A request and its answer on one connection, as bytes out and events in
# (h11's shape). Both transports send `request`, feed what they receive (b""
# once the peer closed) and ask `head()` and `body_piece()` what it means.
# Every rule of RFC 9112 this client relies on is decided here, once:
# framing (sections 6-7), interim 1xx answers, limits, and whether the
# connection may carry another request. Failures are OctoAIErrors: a
# malformed answer an OctoAIValidationError, one cut short an
# OctoAIConnectionError.

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END_CRLF = re.compile(rb"\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: .*)?", re.DOTALL)
_DIGITS = re.compile(r"[0-9]{1,18}")  # not str.isdigit, which takes "²"
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_MAX_INTERIM_ANSWERS = 8  # 100 Continue, 103 Early Hints... before the real one
_MAX_CHUNK_LINE_BYTES = 4096  # a chunk-size or trailer line (h11: the same)
# Empty lines before a status line, and a chunked body's trailer section, are bounded by _MAX_HEAD_BYTES too.
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"proxy-authorization", b"api-key", b"x-api-key", b"cookie"})
_SENT_NOTE = " (the request was sent: the server may have received it)"
_REASONS = types.MappingProxyType(
    {
        400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
        408: "Request Timeout", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
        422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
        502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    }
)  # fmt: skip


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

    def __init__(self, method: str, request: bytes, where: str) -> None:
        self.method = method
        self.request = request
        self.where = where
        self.sent = False  # the request went out whole
        self.received = False  # some byte of an answer arrived
        self.status = 0
        self.headers: Dict[str, str] = {}
        self.reusable = False
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
        """True once the final answer's head is in; None while more input is needed."""
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
        """The next piece of the body, b"" at its end; None while more input is needed."""
        assert self._reader is not None, "head() first"
        return self._reader()

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
                self._keep_alive = False
                return self._until_close
            if "content-length" in headers:
                self._keep_alive = False  # both framings: a request smuggling pattern, never reuse
            return self._chunk_size
        length = headers.get("content-length")
        if length is None:
            self._keep_alive = False
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
        line = self._line()
        if line is None:
            return None
        size = line.split(b";", 1)[0].strip()  # chunk extensions are ignored
        if not _CHUNK_SIZE.fullmatch(size):
            raise self._invalid(f"a malformed chunk-size line {self._quote(line, 40)}")
        self._remaining = int(size, 16)
        self._reader = self._data if self._remaining else self._trailer
        return self._reader()

    def _chunk_end(self) -> Optional[bytes]:
        line = self._line()
        if line is None:
            return None
        if line:
            raise self._invalid("a chunk longer than its size line said")
        self._reader = self._chunk_size
        return self._reader()

    def _trailer(self) -> Optional[bytes]:
        while True:
            line = self._line()
            if line is None:
                return None
            if not line:  # the empty line that ends the trailer section
                self._reader = self._ended
                return self._reader()
            self._trailer_bytes += len(line) + 2
            if self._trailer_bytes > _MAX_HEAD_BYTES:
                raise self._invalid(f"a trailer section longer than {_MAX_HEAD_BYTES} bytes")

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
        return OctoAIValidationError(self._hide_credentials(f"{what} from {self.where}"))

    def _quote(self, data: Union[bytes, str], limit: int) -> str:
        """The server's `data` for a message: credentials taken out before it is cut to `limit`, so no piece is left."""
        if isinstance(data, str):
            return repr(self._hide_credentials(data)[:limit])
        return repr(self._hide_credentials(data.decode("latin-1")).encode("latin-1")[:limit])

    def _hide_credentials(self, text: str) -> str:
        """`text` without the values of the request's Authorization, api-key... headers, nor the token alone."""
        for line in self.request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() in _CREDENTIAL_HEADERS:
                credential = value.strip().decode("latin-1")
                text = _redact(_redact(text, credential), credential.rpartition(" ")[2])  # "Bearer <token>"
        return text

    def _cut_short(self) -> OctoAIConnectionError:
        if self._reader is None and not self._buffer:
            error = OctoAIConnectionError(
                f"the server {self.where} closed the connection without an answer" + (_SENT_NOTE if self.sent else "")
            )
        else:
            error = OctoAIConnectionError(f"the connection closed before the whole answer arrived from {self.where}")
        error.request_sent = self.sent
        return error


class _Body:
    """Collect a body up to a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.over = False
        self._chunks: List[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> bool:
        """Take a piece; False once the body ended (b"") or passed the limit."""
        if not data:
            return False
        self._chunks.append(data)
        self._size += len(data)
        self.over = self._size > self.limit
        return not self.over

    def value(self, truncate: bool, where: str) -> bytes:
        if self.over and not truncate:
            raise OctoAIValidationError(f"the answer from {where} is larger than {self.limit} bytes")
        return b"".join(self._chunks)[: self.limit]


# =============================================================================
# 5. Transport: the only code that touches sockets
# =============================================================================
# Two flavours, threads (blocking sockets) and asyncio, that only move bytes:
# every request is an `_Exchange` (4g), which decides everything, pumped by a
# few lines per flavour. Low-level failures are translated in one place,
# `_ResponseBase._failed`. A connection goes back to the pool only when its
# exchange says it is reusable.


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
    return proxy or None


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


_PHASES = types.MappingProxyType(
    {
        "connect": "connecting to",
        "send": "sending the request to",
        "wait": "waiting for the answer from",
        "body": "reading the answer from",
    }
)


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


def _ascii_host(host: str) -> str:
    """The host's name in ASCII: its IDNA form if it is international."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise OctoAIClientError(f"the host name {host!r} has no ASCII (IDNA) form: {exc}") from None


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
        ascii_host = _ascii_host(self.host)
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
        """The bytes of a request along this route."""
        if self.proxy_headers:
            headers = {**headers, **self.proxy_headers}
        return _build_request(method, self.target, self.host_header, headers, body)

    def tunnel(self) -> _Exchange:
        """The CONNECT exchange that asks the proxy for a tunnel to the host."""
        assert self.proxy is not None
        authority = self.authority
        request = _build_request("CONNECT", authority, authority, _proxy_authorization(self.proxy), None)
        return _Exchange("CONNECT", request, self.where)

    def check_tunnel(self, exchange: _Exchange) -> None:
        if exchange.status != 200:
            raise OctoAIConnectionError(f"the proxy refused a tunnel to {self.where}: {exchange.status}")


def _next_wait(timeout_s: float, deadline_at: Optional[float]) -> Optional[float]:
    """The wait allowed for the next step: `timeout_s`, shortened by the call's deadline; None once it passed."""
    if deadline_at is None:
        return timeout_s
    remaining = deadline_at - time.monotonic()
    return min(timeout_s, remaining) if remaining > 0 else None


def _wait_s(request: _Request, route: _Route) -> float:
    """The wait allowed for a pool slot or a connect."""
    wait = _next_wait(request.timeout_s, request.deadline_at)
    if wait is None:
        raise OctoAITimeoutError(f"the call's deadline passed before the answer from {route.where}")
    return wait


def _is_redirect(status: int, headers: Mapping[str, str]) -> bool:
    return status in _REDIRECT_STATUSES and "location" in headers


class _PoolBook:
    """The bookkeeping both pools share: idle connections and open counts per key.

    At most `max_connections` connections to one key are open at once, and
    at most `max_idle` of them wait idle for reuse. Idle ones are reused
    most recent first, after a check that the server has not closed them or
    sent bytes nobody asked for. After a fork the child starts afresh: the
    parent keeps using the sockets it inherited.
    """

    def __init__(self, max_connections: int, max_idle: int) -> None:
        self.max_connections = max_connections
        self.max_idle = max_idle
        self._idle: Dict[_PoolKey, List[Any]] = {}
        self._open: Dict[_PoolKey, int] = {}
        self._closed = False
        self._pid = os.getpid()

    def _take(self, key: _PoolKey) -> Tuple[Any, bool]:
        """(an idle connection or None, whether the caller may go on: None means open a new one)."""
        if self._pid != os.getpid():
            for inherited in self._idle.values():
                for conn in inherited:
                    conn.close()  # this process's descriptor only (see the connections' close)
            self._idle, self._open, self._pid = {}, {}, os.getpid()
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.is_gone():
                return conn, True
            conn.close()
            self._open[key] -= 1
        if self._open.get(key, 0) < self.max_connections:
            self._open[key] = self._open.get(key, 0) + 1
            return None, True
        return None, False

    def _give(self, key: _PoolKey, conn: Any, reusable: bool) -> None:
        if self._pid != os.getpid() or (conn is not None and conn.pid != self._pid):
            if conn is not None:
                conn.close()
            return  # from before a fork: the counts started afresh
        idle = self._idle.setdefault(key, [])
        if conn is not None and reusable and not self._closed and len(idle) < self.max_idle:
            conn.reused = True  # from now on, a failure may only mean the server closed it while idle
            idle.append(conn)
            return
        if conn is not None:
            conn.close()
        self._open[key] -= 1

    def _claim(self, key: _PoolKey, remaining_s: float, wait_s: float) -> Tuple[Any, float]:
        """(an idle connection or None for a new one, 0.0), or (None, seconds to wait for a slot)."""
        conn, reserved = self._take(key)
        if reserved:
            return conn, 0.0
        if remaining_s <= 0:
            raise OctoAITimeoutError(
                f"all {self.max_connections} connections to {key[1]}:{key[2]} stayed busy for {wait_s:g} s"
            )
        return None, remaining_s

    def _close_idle(self) -> None:
        self._closed = True
        for key, idle in self._idle.items():
            for conn in idle:
                conn.close()
            self._open[key] -= len(idle)
        self._idle.clear()

    def open_count(self) -> int:
        """Connections open now, idle or busy."""
        return sum(self._open.values())

    def idle_count(self) -> int:
        """Connections open and waiting for reuse."""
        return sum(len(idle) for idle in self._idle.values())


class _ResponseBase:
    """One exchange on one pooled connection, from the request's bytes to the answer's end.

    Whoever holds it reads it to the end (the connection then goes back to
    the pool) or calls `close()`, from any thread: a read blocked in another
    thread then ends at once, as if the body had ended. Each flavour adds one
    method, `_drive(goal, fallback)`, which pumps bytes into the exchange
    until `goal()` returns something; so `start`, `read_chunk` and `read`
    below return values for threads and awaitables for asyncio.
    """

    def __init__(self, pool: Any, route: _Route, conn: Any, request: _Request) -> None:
        request.response = self
        self.url = route.url
        self.error_body = b""  # an error answer's body, read by `start` (up to a limit)
        self.closed_early = False  # closed by its holder before the answer ended
        self.stale = False  # sent on a reused connection that proved dead: to go out again on another
        self._pool = pool
        self._key = route.key
        self.where = route.where
        self._conn = conn
        self._held = [conn]  # list.pop() is atomic: the connection is given back once, whoever is first
        try:
            data = route.request(request.method, request.headers, request.data)
        except BaseException:
            pool.release(route.key, conn, True)  # nothing went out on it
            raise
        self._exchange = _Exchange(request.method, data, route.where)
        self._timeout_s = request.timeout_s
        self._deadline_at = request.deadline_at
        self._written = False
        self._send_error: Optional[BaseException] = None
        self._quiet = False  # reading the rest of an answer already complete: a failure loses nothing

    @property
    def status(self) -> int:
        return self._exchange.status

    @property
    def headers(self) -> Dict[str, str]:
        return self._exchange.headers

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def _drive(self, goal: Callable[[], Any], fallback: Any) -> Any:
        raise NotImplementedError

    # -- what the holder calls (awaitables for asyncio)

    def start(self) -> Any:
        """Send the request; read the answer's head, and an error answer's body (to judge it)."""
        return self._drive(self._answer, None)

    def read_chunk(self) -> Any:
        """The next part of the body as it arrives; b"" at the end (the connection is then released)."""
        return self._drive(self._piece, b"")

    def read(self, limit: int = _MAX_BODY_BYTES, *, truncate: bool = False) -> Any:
        """The whole body; past `limit` bytes raise, or with `truncate` keep the start."""
        body = _Body(limit)

        def whole() -> Optional[bytes]:
            while True:
                piece = self._piece()
                if piece is None:
                    return None
                if not body.add(piece):
                    if body.over:
                        self._abort()
                    return body.value(truncate, self.where)

        return self._drive(whole, b"")

    def grace(self, grace_s: float) -> None:
        """Let the rest of an answer already complete for its holder take `grace_s` in all; a failure loses nothing."""
        give_up_at = time.monotonic() + grace_s
        self._timeout_s = min(self._timeout_s, grace_s)
        self._deadline_at = give_up_at if self._deadline_at is None else min(self._deadline_at, give_up_at)
        self._quiet = True

    # -- goals for the pump: each returns None while it needs more bytes

    def _answer(self) -> Optional[bool]:
        exchange = self._exchange
        if not self._written:
            self._written = True
            self._write()
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

    def _write(self) -> None:
        try:
            self._conn.send(self._exchange.request, self._read_timeout())
        except (OSError, OctoAIError) as exc:
            # The server may have answered early (401, 413) and closed
            # without reading the body: what it said is read next.
            self._send_error = exc

    def _check_sent(self) -> None:
        # Sent whole: the write did not fail and nothing of it waits in a buffer (asyncio's).
        if self._written and self._send_error is None and not self._conn.writing:
            self._exchange.sent = True

    def _read_timeout(self) -> float:
        """How long the next read may wait: the timeout, or what is left of the deadline."""
        wait = _next_wait(self._timeout_s, self._deadline_at)
        if wait is None:
            raise self._deadline_error()
        return wait

    # -- failures

    def __enter__(self) -> "_ResponseBase":
        return self

    def __exit__(self, kind: Any, exc: Optional[BaseException], traceback: Any) -> bool:
        """Around every pump: a failure closes the connection and becomes the right error."""
        if exc is None:
            return False
        error = self._failed(exc)
        if error is None:
            return True  # closed by its holder, a dead reused connection, or the rest of a complete answer
        if error is exc:
            return False
        raise error from exc

    def _failed(self, exc: BaseException) -> Optional[BaseException]:
        """Close after a failure; return the error to raise, or None to end quietly."""
        if not self._exchange.sent:
            self._check_sent()  # before closing: a lost connection's buffer is dropped, not sent
        self._abort()
        if isinstance(exc, Exception) and (self.closed_early or self._quiet):
            return None
        exchange = self._exchange
        if self._send_error is not None and exchange.phase != "body":
            exc = self._send_error  # the write failed and no answer came: that is the story
        error = exc
        if isinstance(exc, socket.timeout) and self._deadline_at is not None and time.monotonic() >= self._deadline_at:
            error = self._deadline_error()
        elif isinstance(exc, OSError):
            error = _translate_error(exc, exchange.phase, self.where)
        if self._conn.reused and _may_resend(error, exchange):
            self.stale = True
            return None
        return error  # the exchange's own errors; and interrupts, cancellations, bugs as they are

    def _deadline_error(self) -> OctoAITimeoutError:
        phase = self._exchange.phase
        error = OctoAITimeoutError(
            f"the call's deadline passed {_PHASES[phase]} {self.where}" + (_SENT_NOTE if phase == "wait" else "")
        )
        error.request_sent = phase != "send"
        return error

    def _release(self) -> None:
        """Hand the connection back after the answer's end."""
        try:
            conn = self._held.pop()
        except IndexError:
            return
        self._pool.release(self._key, conn, self._exchange.reusable)

    def close(self) -> None:
        """End the response now; the connection is closed, not reused. Safe from any thread.

        A read going on meanwhile (another thread, another task) ends quietly, as at the body's end.
        """
        if self._held:
            self.closed_early = True
            self._abort()

    def _abort(self) -> None:
        """Close the connection and free its slot (this module's own decision, not the holder's)."""
        try:
            conn = self._held.pop()
        except IndexError:
            return
        conn.close()
        self._pool.release(self._key, conn, False)


def _may_resend(error: BaseException, exchange: _Exchange) -> bool:
    """Whether a failure on a reused connection shows that it was dead, so the request may go out again.

    Only when nothing says the server acted on it: no answer byte came, and
    the write failed or the method is idempotent. A POST that went out whole
    is not sent again (DESIGN.md, Retries).
    """
    return (
        isinstance(error, OctoAIConnectionError)
        and not isinstance(error, OctoAITimeoutError)
        and not exchange.received
        and (not exchange.sent or exchange.method in _IDEMPOTENT_METHODS)
    )


class _TransportBase:
    """The settings both transports share, the one TLS context of a client, and where requests go."""

    def __init__(self, verify: Union[bool, str, "os.PathLike[str]"], env: _Env, limits: Tuple[int, int]) -> None:
        self._verify = verify
        # The environment as the client was made: proxies and CA files are
        # read once, not on every request (as httpx does).
        self._env = {name: value for name, value in env.items() if name.upper() in _TRANSPORT_VARIABLES}
        self._limits = limits
        self._context: Optional[ssl.SSLContext] = None
        self._lock = threading.Lock()
        self._route_cache: Dict[str, _Route] = {}

    def route(self, url: str) -> _Route:
        """The route of a URL, worked out once (parsing it and the proxy rules cost microseconds)."""
        route = self._route_cache.get(url)
        if route is None:
            route = _Route(url, self._env)
            if len(self._route_cache) < _MAX_CACHED_ROUTES:
                self._route_cache[url] = route
        return route

    def _routes(self, request: _Request) -> Iterator[_Route]:
        """Where a request goes, attempt by attempt: its URL; again after a dead reused connection; each redirect."""
        route = self.route(request.url)
        request.hops = 0
        while True:
            yield route
            response = request.response
            if response.stale:
                continue
            if not _is_redirect(response.status, response.headers):
                return
            response.close()
            request.hops += 1
            target = _redirect_target(request.method, response.url, response.status, response.headers)
            _log(
                _DEBUG, "following %d redirect to %s", response.status, _redact(_redact_userinfo(target), request.token)
            )
            if request.hops > _MAX_REDIRECTS:
                raise OctoAIClientError(f"more than {_MAX_REDIRECTS} redirects, the last to {target}")
            route = self.route(target)

    def ssl_context(self) -> ssl.SSLContext:
        # Made on first HTTPS use (loading CAs costs milliseconds), once per client.
        with self._lock:
            if self._context is None:
                self._context = _ssl_context(self._verify, self._env)
            return self._context

    def _connect_failed(self, exc: BaseException, route: _Route, pool: Any) -> BaseException:
        pool.release(route.key, None, False)
        if isinstance(exc, OSError):
            return _translate_error(exc, "connect", route.where)
        return exc

    def close(self) -> None:
        """Close the idle pooled connections; busy ones close when released."""
        for pool in self.pools():
            pool.close()

    def pools(self) -> List[Any]:
        raise NotImplementedError

    def __del__(self) -> None:
        # Idle keep-alive connections go with the last client that used them.
        if "_limits" in self.__dict__:
            try:
                self.close()
            except Exception:  # at interpreter exit, imports and loops may already be gone
                pass


# -- 5a. Threads: blocking sockets ---------------------------------------------


class _Connection:
    """A blocking socket, plain or TLS. `close` may come from another thread: it wakes a blocked read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.reused = False
        self.writing = False  # sendall returns once everything is written
        self._timeout_s: Optional[float] = None

    def _settimeout(self, timeout_s: float) -> None:
        if timeout_s != self._timeout_s:  # settimeout is a system call
            self.sock.settimeout(timeout_s)
            self._timeout_s = timeout_s

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
        if self.pid == os.getpid():  # after a fork, the parent still uses the socket: close our descriptor only
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread
            except OSError:
                pass
        self.sock.close()


def _pump(conn: Any, exchange: _Exchange, goal: Callable[[], Any], timeout: Callable[[], float]) -> Any:
    """Feed the exchange what the connection receives until `goal()` says something."""
    while (result := goal()) is None:
        exchange.feed(conn.receive(timeout()))
    return result


class _ConnectionPool(_PoolBook):
    """The threaded transport's pool: a caller wanting a connection past the bound waits."""

    def __init__(self, max_connections: int, max_idle: int) -> None:
        super().__init__(max_connections, max_idle)
        self._lock = threading.Lock()
        self._slot_freed: Dict[_PoolKey, threading.Condition] = {}  # per host: a freed slot wakes its own waiters

    def _waiters(self, key: _PoolKey) -> threading.Condition:
        cond = self._slot_freed.get(key)
        if cond is None:
            cond = self._slot_freed[key] = threading.Condition(self._lock)
        return cond

    def acquire(self, route: _Route, request: _Request) -> Optional[_Connection]:
        """An idle connection, or None with a slot reserved for a new one."""
        key, wait_s = route.key, _wait_s(request, route)
        give_up_at = time.monotonic() + wait_s
        with self._lock:
            while True:
                conn, wait = self._claim(key, give_up_at - time.monotonic(), wait_s)
                if not wait:
                    return conn  # type: ignore[no-any-return]
                self._waiters(key).wait(wait)

    def release(self, key: _PoolKey, conn: Optional[_Connection], reusable: bool) -> None:
        """Give a connection back: kept if reusable, else closed and its slot freed."""
        with self._lock:
            self._give(key, conn, reusable)
            self._waiters(key).notify()

    def close(self) -> None:
        with self._lock:
            self._close_idle()
            for cond in self._slot_freed.values():
                cond.notify_all()


class _Response(_ResponseBase):
    """A response on a blocking socket; see `_ResponseBase`."""

    def _drive(self, goal: Callable[[], Any], fallback: Any) -> Any:
        with self:
            return _pump(self._conn, self._exchange, goal, self._read_timeout)
        return fallback  # ended quietly (see __exit__)


class _Transport(_TransportBase):
    """Sends requests over pooled blocking sockets; shared by a Client and its copies."""

    def __init__(self, verify: Union[bool, str, "os.PathLike[str]"], env: _Env, limits: Tuple[int, int]) -> None:
        super().__init__(verify, env, limits)
        self.pool = _ConnectionPool(*limits)

    def pools(self) -> List[_ConnectionPool]:
        return [self.pool]

    def send(self, request: _Request) -> _Response:
        """Send one request, following safe redirects; return the response, whatever its status."""
        for route in self._routes(request):
            conn = self.pool.acquire(route, request) or self._connect(route, request)
            _Response(self.pool, route, conn, request).start()
        return request.response  # type: ignore[no-any-return]

    def _connect(self, route: _Route, request: _Request) -> _Connection:
        sock: Optional[socket.socket] = None
        try:
            timeout_s = _wait_s(request, route)
            sock = socket.create_connection((route.connect_host, route.connect_port), timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if route.scheme == "https":
                if route.proxy:
                    tunnel, exchange = _Connection(sock), route.tunnel()
                    tunnel.send(exchange.request, timeout_s)
                    route.check_tunnel(
                        _pump(tunnel, exchange, exchange.head, lambda: _wait_s(request, route)) and exchange
                    )
                sock = self.ssl_context().wrap_socket(sock, server_hostname=route.host)
            return _Connection(sock)
        except BaseException as exc:
            if sock is not None:
                sock.close()
            raise self._connect_failed(exc, route, self.pool) from exc


# -- 5b. asyncio ---------------------------------------------------------------
# No thread per request: connections are asyncio protocols whose bytes wait
# in a list until the pump asks; every wait is a future with a timer beside
# it. asyncio is imported inside functions, so that sync users never pay for it.


def _settle(waiter: "asyncio.Future[None]", error: Optional[BaseException]) -> None:
    """Resolve the future (with `error`, if any) unless it is done already."""
    if not waiter.done():
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


class _AsyncConnection:
    """One connection as an asyncio protocol: received bytes wait here until read."""

    def __init__(self, loop: "asyncio.AbstractEventLoop") -> None:
        self.loop = loop
        self.pid = os.getpid()
        self.reused = False
        self._unsent = False  # bytes of the request were in asyncio's buffer when last seen
        self.transport: Any = None
        self._chunks: List[bytes] = []
        self._size = 0
        self._eof = False
        self._error: Optional[BaseException] = None
        self._waiter: Optional["asyncio.Future[None]"] = None
        self._paused = False

    # -- asyncio.Protocol callbacks
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=0)  # pause/resume_writing tell when the buffer fills and empties

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > 4 * _READ_SIZE and not self._paused:
            self._paused = True  # the caller reads slower than the server sends: push back
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._eof = True
        self._error = exc
        self._wake()

    def pause_writing(self) -> None:
        self._unsent = True

    def resume_writing(self) -> None:
        self._unsent = False

    def _wake(self) -> None:
        if self._waiter is not None:
            _settle(self._waiter, None)

    # -- used by the transport
    def is_gone(self) -> bool:
        """Closed, or holding bytes nobody asked for (the loop may not have seen them yet)."""
        if self._eof or self.transport is None or self.transport.is_closing() or self._chunks:
            return True
        sock = self.transport.get_extra_info("socket")
        return sock is None or _is_dropped(sock)

    async def receive(self, timeout_s: float) -> bytes:
        """The bytes received so far, waiting up to `timeout_s` for some; b"" at the end."""
        while not self._chunks:
            if self._eof:
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
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        return data

    def send(self, data: bytes, timeout_s: float) -> None:
        self.transport.write(data)  # buffered by asyncio; a failure shows on the next read

    @property
    def writing(self) -> bool:
        """Whether bytes of the request still wait in asyncio's buffer (as last seen, once the connection is lost)."""
        if not self._eof and self.transport is not None and not self.transport.is_closing():
            self._unsent = self.transport.get_write_buffer_size() > 0
        return self._unsent

    def close(self) -> None:
        """Close at once, without flushing: nobody wants the rest."""
        self._eof = True
        if self.transport is None:
            return
        if not self.loop.is_closed():
            self.transport.abort()
            return
        # Its event loop has ended (asyncio.run returned): close the socket itself.
        sock = getattr(self.transport.get_extra_info("socket"), "_sock", None)  # asyncio's TransportSocket wraps it
        if sock is not None:
            sock.close()


async def _apump(conn: Any, exchange: _Exchange, goal: Callable[[], Any], timeout: Callable[[], float]) -> Any:
    """`_pump` for an asyncio connection."""
    while (result := goal()) is None:
        exchange.feed(await conn.receive(timeout()))
    return result


class _AsyncPool(_PoolBook):
    """The asyncio transport's pool, one per event loop: a task wanting a connection past the bound waits.

    Its connections close when the loop shuts down: `asyncio.run` finalizes
    the loop's async generators before closing it, and the pool keeps one
    waiting for that moment (sockets must close while their loop still runs).
    """

    def __init__(self, max_connections: int, max_idle: int) -> None:
        import asyncio

        super().__init__(max_connections, max_idle)
        self._waiters: Dict[_PoolKey, List["asyncio.Future[None]"]] = {}  # per host, woken in turn
        self._watch = self._close_at_shutdown()
        asyncio.get_running_loop().create_task(self._watch.__anext__())

    async def _close_at_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            self.close()

    async def acquire(self, route: _Route, request: _Request) -> Optional[_AsyncConnection]:
        """An idle connection, or None with a slot reserved for a new one."""
        import asyncio

        key, wait_s = route.key, _wait_s(request, route)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + wait_s
        while True:
            conn, wait = self._claim(key, give_up_at - loop.time(), wait_s)
            if not wait:
                return conn  # type: ignore[no-any-return]
            waiter: "asyncio.Future[None]" = loop.create_future()
            waiters = self._waiters.setdefault(key, [])
            waiters.append(waiter)
            timer = loop.call_later(wait, _settle, waiter, None)
            try:
                await waiter
            except BaseException:
                self._wake_one(key)  # a wakeup meant for this cancelled task goes to the next one
                raise
            finally:
                timer.cancel()
                if waiter in waiters:
                    waiters.remove(waiter)

    def _wake_one(self, key: _PoolKey) -> None:
        waiters = self._waiters.get(key, [])
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def release(self, key: _PoolKey, conn: Optional[_AsyncConnection], reusable: bool) -> None:
        """Give a connection back: kept if reusable, else closed and its slot freed."""
        self._give(key, conn, reusable)
        self._wake_one(key)

    def close(self) -> None:
        self._close_idle()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.get_loop().is_closed():
                    _settle(waiter, None)


class _AsyncResponse(_ResponseBase):
    """A response on an asyncio connection; see `_ResponseBase`."""

    async def _drive(self, goal: Callable[[], Any], fallback: Any) -> Any:
        with self:
            return await _apump(self._conn, self._exchange, goal, self._read_timeout)
        return fallback  # ended quietly (see __exit__)


class _AsyncTransport(_TransportBase):
    """Sends requests over pooled asyncio connections, one pool per event loop."""

    def __init__(self, verify: Union[bool, str, "os.PathLike[str]"], env: _Env, limits: Tuple[int, int]) -> None:
        super().__init__(verify, env, limits)
        self._pools: Dict[Any, _AsyncPool] = {}

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

    def pools(self) -> List[_AsyncPool]:
        with self._lock:
            return list(self._pools.values())

    def close(self) -> None:
        """Close each loop's idle connections, in that loop's own thread when it runs in another."""
        import asyncio

        try:
            current: Any = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        with self._lock:
            pools = list(self._pools.items())
        for loop, pool in pools:
            if loop is current or not loop.is_running():
                pool.close()
            else:
                loop.call_soon_threadsafe(pool.close)

    async def send(self, request: _Request) -> _AsyncResponse:
        """Send one request, following safe redirects; return the response, whatever its status."""
        pool = self.pool
        for route in self._routes(request):
            conn = await pool.acquire(route, request) or await self._connect(route, request, pool)
            await _AsyncResponse(pool, route, conn, request).start()
        return request.response  # type: ignore[no-any-return]

    async def _connect(self, route: _Route, request: _Request, pool: _AsyncPool) -> _AsyncConnection:
        import asyncio

        loop = asyncio.get_running_loop()
        context = self.ssl_context() if route.scheme == "https" else None
        tunnel = context is not None and route.proxy is not None
        made: Optional[_AsyncConnection] = None
        try:
            timeout_s = _wait_s(request, route)
            factory: Callable[[], Any] = lambda: _AsyncConnection(loop)  # noqa: E731
            _, made = await asyncio.wait_for(
                loop.create_connection(
                    factory,
                    route.connect_host,
                    route.connect_port,
                    ssl=None if tunnel else context,
                    server_hostname=route.host if context is not None and not tunnel else None,
                ),
                timeout_s,
            )
            conn: _AsyncConnection = made  # type: ignore[assignment]
            if tunnel:
                exchange = route.tunnel()
                conn.send(exchange.request, timeout_s)
                route.check_tunnel(
                    await _apump(conn, exchange, exchange.head, lambda: _wait_s(request, route)) and exchange
                )
                conn.transport = await asyncio.wait_for(
                    loop.start_tls(conn.transport, conn, context, server_hostname=route.host),  # type: ignore[arg-type]
                    timeout_s,
                )
            return conn
        except BaseException as exc:
            if made is not None:
                made.close()
            failure = socket.timeout("timed out") if isinstance(exc, asyncio.TimeoutError) else exc
            raise self._connect_failed(failure, route, pool) from exc


# =============================================================================
# 6. Client API
# =============================================================================
# The shells around the pure pieces: build a request, send it through the
# retry loop, turn the answer into objects. Client and AsyncClient share
# every decision through _BaseClient; only the loops that wait differ. A
# stream is never retried once an event has been handed out.


class _PayloadReader:
    """The JSON payloads of a streamed answer, for the sync and async iterators alike.

    `take(data)` gives the payloads a read completed (through `convert`), and
    None once the body is over. After `[DONE]` the answer is complete: the
    rest of the body may take `_DONE_GRACE_S` in all, and a failure then
    loses nothing (see `_ResponseBase.grace`). As a context manager around
    the iteration, it closes the response on any exit.
    """

    def __init__(self, response: _ResponseBase, token: Optional[str], convert: Callable[[Any], Any]) -> None:
        self.response = response
        self._token = token
        self._convert = convert
        self._events = _EventPayloads(response.headers, token)
        self._json = _Body(_MAX_BODY_BYTES) if response.content_type == "application/json" else None
        self.error: Optional[OctoAIError] = None  # what ended the iteration, if it failed

    def take(self, data: bytes) -> Optional[Iterable[Any]]:
        if self._json is not None:  # a plain JSON answer to a streaming request
            if self._json.add(data):
                return ()
            if self._json.over:
                self.response._abort()
            body = self._json.value(False, self.response.where)
            raise _stream_answered_with_json(body, self.response.headers, self._token)
        if not data:
            if not self._events.done and not self.response.closed_early:
                self._events.end()
            return None
        return () if self._events.done else self._converted(data)

    def _converted(self, data: bytes) -> Iterator[Any]:
        for payload in self._events.payloads(data):
            if self.response.closed_early:
                return  # closed by its holder: nothing more is handed out
            yield self._convert(payload)
        if self._events.done:
            self.response.grace(_DONE_GRACE_S)

    def __enter__(self) -> "_PayloadReader":
        return self

    def __exit__(self, kind: Any, exc: Optional[BaseException], traceback: Any) -> None:
        self.response.close()  # a no-op once the body was read to the end and released
        if isinstance(exc, OctoAIError):
            self.error = _scrub(exc, self._token)  # and raised again by get_final_completion


def _iter_payloads(reader: _PayloadReader) -> Generator[Any, None, None]:
    with reader:
        while (items := reader.take(reader.response.read_chunk())) is not None:
            yield from items


async def _aiter_payloads(reader: _PayloadReader) -> AsyncGenerator[Any, None]:
    with reader:
        while (items := reader.take(await reader.response.read_chunk())) is not None:
            for item in items:
                yield item


def _chat_chunks(
    folder: _ChunkFolder, headers: Mapping[str, str], token: Optional[str]
) -> Callable[[Any], ChatCompletion]:
    """A payload converter that checks each chunk, folds it, and returns it as an object."""

    def convert(payload: Any) -> ChatCompletion:
        chunk = _check_completion(payload, headers, token, chunk=True)
        folder.add(chunk)
        return ChatCompletion.from_dict(chunk)

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


class _StreamBase:
    """What the stream classes share: the answer's headers, the iterator, closing, folding chat chunks."""

    _iterate: Any  # _iter_payloads or _aiter_payloads
    _chat: ClassVar[bool] = False  # chat chunks: checked, folded and built into ChatCompletion objects

    def __init__(self, response: Any, token: Optional[str], convert: Optional[Callable[[Any], Any]] = None) -> None:
        self.response_headers: Dict[str, str] = response.headers
        self.request_id = _request_id(response.headers)
        self._response: _ResponseBase = response
        self._folder = _ChunkFolder()
        if self._chat:
            convert = _chat_chunks(self._folder, response.headers, token)
        self._reader = _PayloadReader(response, token, convert or _identity)
        self._items = type(self)._iterate(self._reader)

    def _close(self) -> None:
        # Closing the response ends the iteration too: the next read finds it closed.
        self._response.close()

    def _final(self) -> ChatCompletion:
        if self._reader.error is not None:
            raise self._reader.error  # the stream failed: what came before it is not the whole answer
        return ChatCompletion.from_dict(self._folder.result())

    def __del__(self) -> None:
        # A stream dropped unfinished must not leak its socket. The iterator
        # holds the response, not the stream, so this runs at once.
        response = getattr(self, "_response", None)
        if response is not None:
            response.close()


class _EventStream(_StreamBase, _Closing):
    """Iterate the JSON payloads of an event-stream answer; owns the response until closed."""

    _iterate = staticmethod(_iter_payloads)

    def __iter__(self: _SelfT) -> _SelfT:
        return self

    def __next__(self) -> Any:
        return next(self._items)

    def close(self) -> None:
        """End the HTTP response now; the connection is closed, not reused. Safe from another thread."""
        self._close()


class Stream(_EventStream):
    """Chat completion chunks as the server sends them.

    Iterate it for `ChatCompletion` chunks (``chunk.choices[0].delta.content``).
    The Stream owns the HTTP connection: leaving a ``with`` block, `close()`
    (from any thread), or reading to the end releases it. Raises
    `OctoAIConnectionError` if the body is cut short, and the server's
    typed error if it sends one.
    """

    _chat = True

    def __next__(self) -> ChatCompletion:
        return next(self._items)  # type: ignore[no-any-return]

    def get_final_completion(self) -> ChatCompletion:
        """Read the rest of the stream and return the whole answer as one completion."""
        for _ in self:
            pass
        return self._final()


class _AsyncEventStream(_StreamBase, _AsyncClosing):
    """The async form of `_EventStream`: ``async for``, ``async with``, `aclose()`."""

    _iterate = staticmethod(_aiter_payloads)

    def __aiter__(self: _SelfT) -> _SelfT:
        return self

    async def __anext__(self) -> Any:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        """End the HTTP response now; the connection is closed, not reused."""
        self._close()
        if not self._items.ag_running:  # else another task is awaiting it: that read ends by itself
            await self._items.aclose()

    close = aclose


class AsyncStream(_AsyncEventStream):
    """Chat completion chunks for ``async for``; see `Stream`."""

    _chat = True

    async def __anext__(self) -> ChatCompletion:
        return await self._items.__anext__()  # type: ignore[no-any-return]

    async def get_final_completion(self) -> ChatCompletion:
        """Read the rest of the stream and return the whole answer as one completion."""
        async for _ in self:
            pass
        return self._final()


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


def _configure_logging(env: _Env) -> None:
    level = env.get("OCTOAI_LOG", "").upper()
    if level in ("DEBUG", "INFO", "WARNING"):
        _log_to_stderr(level, "%(asctime)s octoai_lite %(levelname)s %(message)s")


def _log_to_stderr(level: str, format: str) -> None:
    """Send this module's records at `level` and above to stderr, unless a handler is set already."""
    import logging

    logger = logging.getLogger("octoai_lite")
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


class _Retry:
    """One call's attempts. Around each: a failure worth another try is kept, with its delay; any other is raised."""

    def __init__(self, client: "_BaseClient", request: _Request) -> None:
        self.request = request
        self.delay = 0.0
        self._client = client
        self._attempt = 0
        self._started = 0.0

    def check(self, response: _ResponseBase) -> Any:
        """The response if it is a success; else raise the typed error for it."""
        client, request = self._client, self.request
        client._log_answer(request, response.status, response.headers, self._started)
        if response.status < 300:
            return response
        error = _error_from_response(
            response.status, response.headers, response.error_body, token=client._token, base_url=request.base_url
        )
        error.retry_after = _parse_retry_after(response.headers, time.time())
        raise error

    def __enter__(self) -> "_Retry":
        self._started = time.monotonic()
        return self

    def __exit__(self, kind: Any, exc: Optional[BaseException], traceback: Any) -> bool:
        if not isinstance(exc, OctoAIError):
            return False
        _scrub(exc, self._client._token)  # redirects and framing errors quote the server too
        delay = self._next_delay(exc)
        if delay is None:
            return False
        self.delay = delay
        self._attempt += 1
        return True

    def _next_delay(self, error: OctoAIError) -> Optional[float]:
        """Seconds to wait before the next try; None, or the error raised, when there is none."""
        if isinstance(error, OctoAIConnectionError):
            return self._client._after_connection_error(error, self.request, self._attempt)
        if error.status_code is not None:
            return self._client._after_error_status(error, self.request, self._attempt)
        return None


class _HealthCheck(_Retry):
    """`health_check`'s attempts: a 5xx or a failed connection is tried again every `interval` until `timeout`.

    The last 5xx's status is the answer; a 4xx, or a connection that never
    answered, is raised.
    """

    def __init__(self, client: "_BaseClient", url: str, timeout_s: float, interval_s: float) -> None:
        super().__init__(client, client._prepare("GET", url, None, max_retries=0))
        self._give_up_at = time.monotonic() + timeout_s
        self._interval_s = interval_s

    def _time_left(self) -> bool:
        return time.monotonic() + self._interval_s < self._give_up_at

    def __enter__(self) -> "_Retry":
        self.request.timeout_s = max(0.01, min(self._client.timeout, self._give_up_at - time.monotonic()))
        return super().__enter__()

    def check(self, response: _ResponseBase) -> Any:
        if response.status < 500 or self._time_left():
            return super().check(response)
        return response

    def _next_delay(self, error: OctoAIError) -> Optional[float]:
        if isinstance(error, (OctoAIServerError, OctoAIConnectionError)) and self._time_left():
            return self._interval_s
        return None


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
    _chat_class: ClassVar[Type[Any]]
    _completions_class: ClassVar[Type[Any]]
    _models_class: ClassVar[Type[Any]]
    chat: Any
    models: Any

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
    ) -> None:
        if token and api_key:
            raise ValueError("pass token= or api_key=, not both")
        env = os.environ
        _configure_logging(env)
        self._token = _resolve_token(token or api_key, config_path, env)
        self.base_url = _check_base_url(
            base_url or env.get("OCTOAI_BASE_URL") or (_SECURE_LINK_BASE_URL if secure_link else DEFAULT_BASE_URL)
        )
        self.secure_link = secure_link
        self.timeout = _check_seconds("timeout", timeout)
        self.max_retries = _check_count("max_retries", max_retries, 0)
        self.deadline = None if deadline is None else _check_seconds("deadline", deadline)
        self.default_headers: Dict[str, Optional[str]] = _check_headers(default_headers)
        self._headers: Dict[Tuple[bool, bool], Dict[str, str]] = {}  # built once per (stream, has body)
        limits = (
            _check_count("max_connections", max_connections, 1),
            _check_count("max_idle_connections", max_idle_connections, 0),
        )
        self._transport = self._make_transport(verify_ssl, env, limits)
        self._owns_transport = True
        self._bind()

    def _make_transport(self, verify: Union[bool, str, "os.PathLike[str]"], env: _Env, limits: Tuple[int, int]) -> Any:
        return self._transport_class(verify, env, limits)

    def _bind(self) -> None:
        self.chat = self._chat_class(self._completions_class(self))
        self.models = self._models_class(self)

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
        return self._run(_Retry(self, self._prepare(method, url, body, **options)))

    def _run(self, retry: _Retry) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Close the pooled connections (a `with_options` copy leaves them to its original)."""
        if self._owns_transport:
            self._transport.close()

    def _chat_request(self, arguments: Mapping[str, Any]) -> Tuple[str, Dict[str, Any], bool, Dict[str, Any]]:
        """(url, body, stream, per-call options) of a `chat.completions.create` call."""
        body, stream, options = _build_chat_request(arguments)
        return _join_url(self.base_url, "chat/completions"), body, stream, options

    def _poll(self, body: bytes) -> Dict[str, Any]:
        return _poll_status_from_body(body, self._token)

    @property
    def _models_url(self) -> str:
        return _join_url(self.base_url, "models")

    def _completion(self, body: bytes, response: _ResponseBase) -> ChatCompletion:
        return _completion_from_body(body, response.headers, self._token)

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
    ) -> _Request:
        """Apply the per-call options every public method takes; check them before anything is sent."""
        if extra_body and body is not None:
            body = {**body, **extra_body}
        if extra_query:
            url = _join_url(url, "", extra_query)
        data = None if body is None else _build_json(body)
        if extra_headers:
            headers = _build_headers(
                self._token,
                self.default_headers,
                _check_headers(extra_headers),
                stream=stream,
                has_body=data is not None,
            )
        else:  # the same few header sets every time: build each once
            shape = (stream, data is not None)
            headers = self._headers.get(shape) or self._headers.setdefault(
                shape, _build_headers(self._token, self.default_headers, stream=stream, has_body=data is not None)
            )
        timeout_s = self.timeout if timeout is None else _check_seconds("timeout", timeout)
        deadline = self.deadline if deadline is None else _check_seconds("deadline", deadline)
        return _Request(
            method,
            url,
            headers,
            data,
            timeout_s,
            None if deadline is None else time.monotonic() + deadline,
            self.max_retries if max_retries is None else _check_count("max_retries", max_retries, 0),
            self.base_url if url.startswith(self.base_url.split("?")[0] + "/") else None,
            self._token,
        )

    def _log_answer(self, request: _Request, status: int, headers: Mapping[str, str], started: float) -> None:
        if _log_enabled(_DEBUG):
            request_id = _redact(_request_id(headers) or "", self._token)  # a server may echo anything
            _log(
                _DEBUG,
                "%s %s -> %d in %.1f ms%s",
                request.method,
                _redact(_redact_userinfo(request.url), self._token),
                status,
                (time.monotonic() - started) * 1000,
                f" [request id: {request_id}]" if request_id else "",
            )

    def _after_connection_error(self, error: OctoAIConnectionError, request: _Request, attempt: int) -> float:
        """Seconds to wait before trying again, or raise `error`."""
        # Safe to repeat: nothing went out, or the method is idempotent.
        safe = not error.request_sent or request.method in _IDEMPOTENT_METHODS
        delay = None
        if safe and attempt < request.retries:
            delay = _retry_delay(attempt, now=time.time(), rand=_random(), initial_s=_BACKOFF_INITIAL_S)
        return self._retry_wait(error, delay, request, attempt)

    def _after_error_status(self, error: OctoAIError, request: _Request, attempt: int) -> float:
        """Seconds to wait before trying again, or raise the typed error for this answer."""
        delay = None
        if attempt < request.retries:
            delay = _retry_delay(
                attempt,
                status=error.status_code,
                headers=error.headers,
                error_code=_error_code(error.body),
                now=time.time(),
                rand=_random(),
                initial_s=_BACKOFF_INITIAL_S,
            )
        return self._retry_wait(error, delay, request, attempt)

    def _retry_wait(self, error: OctoAIError, delay: Optional[float], request: _Request, attempt: int) -> float:
        if delay is None or (request.deadline_at is not None and time.monotonic() + delay >= request.deadline_at):
            raise error
        _log(
            _INFO,
            "retrying %s %s in %.2f s (retry %d of %d): %s",
            request.method,
            _redact(_redact_userinfo(request.url), self._token),
            delay,
            attempt + 1,
            request.retries,
            error,
        )
        return delay


_CREATE_DOC = """Create a chat completion; with ``stream=True`` return a `Stream`
of chunks (an `AsyncStream`, awaited, for an AsyncClient).

Keyword arguments: ``model`` (a str or `TextModel`), ``messages``, and
any of ``max_tokens``, ``temperature``, ``top_p``, ``stop``,
``frequency_penalty``, ``presence_penalty``, ``response_format``, and the
per-call options ``extra_headers``, ``extra_query``, ``extra_body``,
``timeout``, ``max_retries``, ``deadline``. Only parameters you set are
sent; any other keyword (tools, seed, n, stream_options...) goes into the
body unchanged. Raises the typed `OctoAIError` for the server's answer or
the connection's failure.
"""


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

else:

    class _CreateTypes:
        """`create` at run time, for both clients; the signatures above are for type checkers."""

        def __class_getitem__(cls, item):
            return cls

        def create(self, **arguments):
            client = self._client
            url, body, stream, options = client._chat_request(arguments)
            return client._chat_answer(client._send("POST", url, body, stream=stream, **options), stream)

        create.__doc__ = _CREATE_DOC


class _Namespace:
    """A part of a client's API: ``client.chat``, ``client.chat.completions``, ``client.models``."""

    def __init__(self, client: Any) -> None:
        self._client = client


class _Completions(_CreateTypes["ChatCompletion", "Stream"], _Namespace):
    """``client.chat.completions``."""


class _Chat:
    """``client.chat``."""

    completions: _Completions

    def __init__(self, completions: Any) -> None:
        self.completions = completions


class _Models(_Namespace):
    """``client.models``."""

    _client: "Client"

    def list(self, **options: Any) -> List[str]:
        """Return the ids of the models the server offers (GET {base_url}/models)."""
        client = self._client
        return _models_from_body(client._send("GET", client._models_url, None, **options).read(), client._token)


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
    (``stream=True`` for a `Stream`), ``client.models.list()``, and the
    methods below.
    """

    chat: _Chat
    models: _Models
    _transport: _Transport

    _transport_class, _chat_class, _completions_class, _models_class = _Transport, _Chat, _Completions, _Models

    def _chat_answer(self, response: _Response, stream: bool) -> Union[ChatCompletion, Stream]:
        return Stream(response, self._token) if stream else self._completion(response.read(), response)

    def _run(self, retry: _Retry) -> _Response:
        while True:
            with retry:
                return retry.check(self._transport.send(retry.request))  # type: ignore[no-any-return]
            time.sleep(retry.delay)

    # -- the generic inference API of the original SDK ----------------------

    def infer(self, endpoint_url: str, inputs: Mapping[str, Any], **options: Any) -> Any:
        """POST `inputs` as JSON to `endpoint_url`; return the JSON answer."""
        return _parse_json(self._send("POST", endpoint_url, inputs, **options).read(), self._token)

    def infer_stream(
        self, endpoint_url: str, inputs: Mapping[str, Any], map_fn: _MapFn = None, **options: Any
    ) -> _EventStream:
        """POST `inputs` and yield each event's JSON (through `map_fn` if given) until `[DONE]`.

        The returned iterator owns the connection; it is also a context manager.
        """
        return _EventStream(self._send("POST", endpoint_url, inputs, stream=True, **options), self._token, map_fn)

    def infer_async(self, endpoint_url: str, inputs: Mapping[str, Any], **options: Any) -> InferenceFuture:
        """Start an inference in the background (header ``X-OctoAI-Async: 1``)."""
        return _future_from_body(
            self._send("POST", endpoint_url, inputs, **_with_async_header(options)).read(), self._token
        )

    def is_future_ready(self, future: InferenceFuture) -> bool:
        """Whether the background inference has completed; raises if it failed."""
        return self._poll(self._send("GET", future.poll_url, None).read()).get("status") == "completed"

    def get_future_result(self, future: InferenceFuture) -> Optional[Any]:
        """The background inference's JSON result, or None while it is still running."""
        url = _response_url(self._poll(self._send("GET", future.poll_url, None).read()))
        return None if url is None else _parse_json(self._send("GET", url, None).read(), self._token)

    def health_check(
        self, endpoint_url: str, timeout: float = DEFAULT_TIMEOUT, *, interval: float = _HEALTH_CHECK_INTERVAL_S
    ) -> int:
        """GET `endpoint_url` every `interval` seconds until it answers below 500 or `timeout` passes.

        Returns the last status code; raises the typed error for a 4xx, and
        the last connection error if the server never answered.
        """
        response = self._run(_HealthCheck(self, endpoint_url, timeout, interval))
        response.close()  # only its status matters
        return response.status


class _AsyncCompletions(_CreateTypes["Awaitable[ChatCompletion]", "Awaitable[AsyncStream]"], _Namespace):
    """``client.chat.completions`` of an AsyncClient."""


class _AsyncChat(_Chat):
    """``client.chat`` of an AsyncClient."""

    completions: _AsyncCompletions  # type: ignore[assignment]


class _AsyncModels(_Namespace):
    """``client.models`` of an AsyncClient."""

    _client: "AsyncClient"

    async def list(self, **options: Any) -> List[str]:
        """Return the ids of the models the server offers (GET {base_url}/models)."""
        response = await self._client._send("GET", self._client._models_url, None, **options)
        return _models_from_body(await response.read(), self._client._token)


class AsyncClient(_BaseClient, _AsyncClosing):
    """`Client` for asyncio: the same arguments and methods, awaited.

    ``await client.chat.completions.create(...)``; with ``stream=True`` it
    returns an `AsyncStream` for ``async for``. Use ``async with
    AsyncClient() as client:`` or ``await client.close()``. Connections are
    asyncio streams in a bounded pool: no thread per request. Cancelling a
    task mid-stream closes its connection.
    """

    chat: _AsyncChat
    models: _AsyncModels
    _transport: _AsyncTransport

    _transport_class, _chat_class, _models_class = _AsyncTransport, _AsyncChat, _AsyncModels
    _completions_class = _AsyncCompletions

    async def _chat_answer(
        self, sending: Awaitable[_AsyncResponse], stream: bool
    ) -> Union[ChatCompletion, AsyncStream]:
        response = await sending
        if stream:
            return AsyncStream(response, self._token)
        return self._completion(await response.read(), response)

    async def close(self) -> None:  # type: ignore[override]
        """Close the pooled connections (a `with_options` copy leaves them to its original)."""
        super().close()

    async def infer(self, endpoint_url: str, inputs: Mapping[str, Any], **options: Any) -> Any:
        """POST `inputs` as JSON to `endpoint_url`; return the JSON answer."""
        return _parse_json(await (await self._send("POST", endpoint_url, inputs, **options)).read(), self._token)

    async def infer_stream(
        self, endpoint_url: str, inputs: Mapping[str, Any], map_fn: _MapFn = None, **options: Any
    ) -> _AsyncEventStream:
        """POST `inputs`; ``async for`` each event's JSON (through `map_fn` if given) until `[DONE]`."""
        response = await self._send("POST", endpoint_url, inputs, stream=True, **options)
        return _AsyncEventStream(response, self._token, map_fn)

    async def infer_async(self, endpoint_url: str, inputs: Mapping[str, Any], **options: Any) -> InferenceFuture:
        """Start an inference in the background (header ``X-OctoAI-Async: 1``)."""
        response = await self._send("POST", endpoint_url, inputs, **_with_async_header(options))
        return _future_from_body(await response.read(), self._token)

    async def _poll_future(self, future: InferenceFuture) -> Dict[str, Any]:
        return self._poll(await (await self._send("GET", future.poll_url, None)).read())

    async def is_future_ready(self, future: InferenceFuture) -> bool:
        """Whether the background inference has completed; raises if it failed."""
        return (await self._poll_future(future)).get("status") == "completed"

    async def get_future_result(self, future: InferenceFuture) -> Optional[Any]:
        """The background inference's JSON result, or None while it is still running."""
        url = _response_url(await self._poll_future(future))
        return None if url is None else _parse_json(await (await self._send("GET", url, None)).read(), self._token)

    async def health_check(
        self, endpoint_url: str, timeout: float = DEFAULT_TIMEOUT, *, interval: float = _HEALTH_CHECK_INTERVAL_S
    ) -> int:
        """See `Client.health_check`."""
        response = await self._run(_HealthCheck(self, endpoint_url, timeout, interval))
        response.close()
        return response.status

    async def _run(self, retry: _Retry) -> _AsyncResponse:
        import asyncio

        while True:
            with retry:
                return retry.check(await self._transport.send(retry.request))  # type: ignore[no-any-return]
            await asyncio.sleep(retry.delay)


# The original SDK's module layout, for `import octoai_lite as octoai`:
# octoai.chat.TextModel, octoai.chat.get_model_list(), octoai.client.Client.
chat = types.SimpleNamespace(
    TextModel=TextModel,
    get_model_list=get_model_list,
    ChatCompletion=ChatCompletion,
    ChatMessage=ChatMessage,
    Choice=Choice,
    ChoiceDelta=ChoiceDelta,
    CompletionUsage=CompletionUsage,
)
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
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr; tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"octoai-lite {__version__}")
    return parser


def _read_prompt(words: List[str]) -> Optional[str]:
    if words and words != ["-"]:
        return " ".join(words)
    if words == ["-"] or (sys.stdin is not None and not sys.stdin.isatty()):
        text = sys.stdin.read()
        return text if text.strip() else None  # blank input is no prompt
    return None


def _print_models(client: Client) -> None:
    for model in client.models.list():  # the server's own list; a failure is an error, not a stale fallback
        print(model)


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
        with Client(base_url=args.base_url, timeout=args.timeout, max_retries=args.max_retries) as cli_client:
            if args.list_models:
                _print_models(cli_client)
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
