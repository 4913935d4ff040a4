"""Issue 13: hostile servers and careless callers.

Each scenario runs over real loopback sockets (conftest.py's servers; nothing
patched), against both `Client` and `AsyncClient` through `flavor` wherever
the network is involved:

1. the token never leaks, whole or in part, whatever the server echoes back;
2. wrong-shape JSON never escapes as a raw Python error;
3. bad caller arguments are a ValueError/TypeError before anything is sent;
4. a Client used across os.fork() gives the child its own connection;
5. one AsyncClient driven from two event loops at once.

Every call is bounded by a short timeout, so a regression fails fast.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import octoai_lite
from conftest import MESSAGES, WORDS, chunk, completion_body, reply, sse_event, stream
from octoai_lite import (
    ChatCompletion,
    Client,
    OctoAIClientError,
    OctoAIError,
    OctoAIServerError,
    OctoAIValidationError,
)

ROOT = Path(__file__).resolve().parent

# 40 random-looking characters after "sk-": any 8 of them in a row is a leak.
TOKEN = "sk-" + "R7vKq2mXw9LpT4cZ8nHb3YsF6dJg1QaE5uWo0iNk"
AUTH = "Bearer " + TOKEN
PASSWORD = "pw-Zt8Qm4Lx9Vc2Rn7K"


def pieces(secret, size=8):
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def assert_no_secret(text, where, secret=TOKEN):
    """Neither the secret nor any 8-character piece of it is in `text`."""
    for piece in pieces(secret):
        at = text.find(piece)
        assert at < 0, f"{where} holds {piece!r} of the secret: ...{text[max(0, at - 60) : at + 60]!r}..."


def assert_error_hides_token(exc, caplog):
    assert_no_secret(str(exc), "str(exception)")
    assert_no_secret(repr(exc), "repr(exception)")
    assert_no_secret(repr(getattr(exc, "body", None)), "repr(exception.body)")
    assert_no_secret(caplog.text, "the DEBUG log")
    assert isinstance(exc, OctoAIError), f"a raw {type(exc).__name__} escaped: {exc!r}"


# -- the echoing server: the request's Authorization header comes back --------------

# The module cuts quoted server text at 200 (previews), 500 (messages) and
# 2000 (error bodies) characters: place the token so that a cut falls inside it.
# Starts: at the front; 24 characters before the 200, 500 and 2000 cuts; 9 before the 500 one.
CUTS = (200, 500, 2000)
TOKEN_STARTS = [7] + [cut - 24 for cut in CUTS] + [500 - 9]


def place(auth, start):
    """`auth` ("Bearer <token>") padded so that the token starts at character `start`; a tail follows."""
    return "." * (start - len("Bearer ")) + auth + " and then" + "." * 120


def sent_auth(request):
    return request.headers.get("authorization", "")


def echo_reply(make_body, status=200, content_type="application/json", headers=None):
    """Answer with make_body(<the request's Authorization value>): a str as is, else as JSON."""

    def action(handler, request):
        body = make_body(sent_auth(request))
        if not isinstance(body, str):
            body = json.dumps(body)
        return reply(status, body, headers=headers, content_type=content_type)(handler, request)

    return action


def echo_stream(make_event):
    """An SSE answer: one good chunk, then make_event(<Authorization value>) as raw bytes, then [DONE]."""

    def action(handler, request):
        events = [sse_event(chunk("", role="assistant")), make_event(sent_auth(request)), b"data: [DONE]\n\n"]
        return stream(events)(handler, request)

    return action


def drain(flavor, client, **kwargs):
    """Stream a chat answer to its end; return (chunks, get_final_completion())."""
    if flavor.name == "sync":
        with client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **kwargs) as chat_stream:
            chunks = list(chat_stream)
            return chunks, chat_stream.get_final_completion()

    async def go():
        chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **kwargs)
        async with chat_stream:
            chunks = [piece async for piece in chat_stream]
            return chunks, await chat_stream.get_final_completion()

    return flavor.run(go())


def caught(call):
    """The exception `call` raises (any kind); fails if it raises none."""
    try:
        call()
    except Exception as exc:  # noqa: B902 - the point is to see what escapes
        return exc
    pytest.fail("expected an error, got an answer")


@pytest.fixture
def debug_log(caplog):
    caplog.set_level("DEBUG", logger="octoai_lite")
    return caplog


# =============================================================================
# 1. The token never leaks
# =============================================================================


def check_leak(server, flavor, caplog, actions, stream_call=False, retries=0):
    server.script.extend(actions)
    client = flavor.make(token=TOKEN, timeout=3, max_retries=retries)
    exc = caught(lambda: drain(flavor, client) if stream_call else flavor.chat(client))
    assert server.requests and sent_auth(server.requests[-1]) == AUTH  # the server did see the token
    assert_error_hides_token(exc, caplog)
    assert_no_secret(repr(client), "repr(client)")


# (a) a plain-text (non-JSON) 200 body for a non-stream create


@pytest.mark.parametrize("start", TOKEN_STARTS)
def test_a_token_echoed_in_a_plain_text_200_body(server, flavor, debug_log, start):
    action = echo_reply(lambda auth: place(auth, start), content_type="text/plain")
    check_leak(server, flavor, debug_log, [action])


# (b) a 200 body that is JSON of the wrong shape

WRONG_SHAPES = {
    "object": lambda text: {"echo": text},
    "string": lambda text: text,
    "list": lambda text: [text],
    "choices-string": lambda text: {"choices": text},
    "choices-of-strings": lambda text: {"choices": [text]},
}


@pytest.mark.parametrize("start", TOKEN_STARTS)
@pytest.mark.parametrize("shape", sorted(WRONG_SHAPES))
def test_b_token_echoed_in_wrong_shape_json(server, flavor, debug_log, shape, start):
    action = echo_reply(lambda auth: WRONG_SHAPES[shape](place(auth, start)))
    check_leak(server, flavor, debug_log, [action])


# (c) an SSE event whose data is not JSON (or not a chunk); a stream answered with a bad JSON body

BAD_EVENTS = {
    "not-json": lambda text: ("data: %s\n\n" % text).encode(),
    "json-string": lambda text: sse_event(json.dumps(text)),
    "wrong-shape": lambda text: sse_event({"echo": text}),
    "choices-of-strings": lambda text: sse_event({"choices": [text]}),
}


@pytest.mark.parametrize("start", TOKEN_STARTS)
@pytest.mark.parametrize("kind", sorted(BAD_EVENTS))
def test_c_token_echoed_in_a_bad_sse_event(server, flavor, debug_log, kind, start):
    action = echo_stream(lambda auth: BAD_EVENTS[kind](place(auth, start)))
    check_leak(server, flavor, debug_log, [action], stream_call=True)


@pytest.mark.parametrize("start", TOKEN_STARTS)
def test_c_token_echoed_in_a_non_json_answer_to_a_stream_request(server, flavor, debug_log, start):
    action = echo_reply(lambda auth: place(auth, start), content_type="application/json")
    check_leak(server, flavor, debug_log, [action], stream_call=True)


# (d) an SSE event that is an error

ERROR_EVENTS = {
    "error-event-text": lambda text: ("event: error\ndata: %s\n\n" % text).encode(),
    "error-event-json": lambda text: sse_event({"message": text}, event="error"),
    "error-object": lambda text: sse_event({"error": {"message": text, "type": "server_error"}}),
    "error-string": lambda text: sse_event({"error": text}),
    "error-no-message": lambda text: sse_event({"error": {"info": text}}),
}


@pytest.mark.parametrize("start", TOKEN_STARTS)
@pytest.mark.parametrize("kind", sorted(ERROR_EVENTS))
def test_d_token_echoed_in_an_sse_error(server, flavor, debug_log, kind, start):
    action = echo_stream(lambda auth: ERROR_EVENTS[kind](place(auth, start)))
    check_leak(server, flavor, debug_log, [action], stream_call=True)


# (e) an error body (500, 400, and an error object sent with 200), plain text and JSON

ERROR_BODIES = {
    "text": (lambda text: text, "text/plain"),
    "json-message": (lambda text: {"error": {"message": text, "type": "invalid_request_error"}}, "application/json"),
    "json-detail": (lambda text: {"detail": text}, "application/json"),
    "json-no-message": (lambda text: {"error": {"info": text}}, "application/json"),
}


ERROR_BODY_CASES = [(status, kind) for status in (500, 400, 200) for kind in sorted(ERROR_BODIES)]
ERROR_BODY_CASES.remove((200, "text"))  # case (a)


@pytest.mark.parametrize("start", TOKEN_STARTS)
@pytest.mark.parametrize("status, kind", ERROR_BODY_CASES, ids=[f"{s}-{k}" for s, k in ERROR_BODY_CASES])
def test_e_token_echoed_in_an_error_body(server, flavor, debug_log, status, kind, start):
    make, content_type = ERROR_BODIES[kind]
    # A 500 is retried once (retry-after-ms keeps it quick): the retry's log line quotes the error too.
    action = echo_reply(lambda auth: make(place(auth, start)), status, content_type, {"retry-after-ms": "1"})
    retries = 1 if status == 500 else 0
    check_leak(server, flavor, debug_log, [action] * (retries + 1), retries=retries)


# (h) a request id header that echoes the token: the DEBUG log quotes request ids


@pytest.mark.parametrize("header", ["x-request-id", "x-user-request-id"])
@pytest.mark.parametrize("status", [200, 500])
def test_h_token_echoed_in_a_request_id_header(server, flavor, debug_log, status, header):
    def action(handler, request):
        body = completion_body() if status == 200 else {"error": {"message": "overloaded"}}
        return reply(status, body, headers={header: sent_auth(request)})(handler, request)

    server.script.append(action)
    client = flavor.make(token=TOKEN, timeout=3)
    if status == 200:
        flavor.chat(client)
    else:
        assert_error_hides_token(caught(lambda: flavor.chat(client)), debug_log)
    assert sent_auth(server.requests[-1]) == AUTH
    assert_no_secret(debug_log.text, "the DEBUG log")


def test_h_error_attributes_hold_no_token(server, flavor):
    """OctoAIError's docstring: the token never appears in status_code, body, request_id or headers."""
    headers = {"x-request-id": "", "x-echo": ""}

    def action(handler, request):
        echoed = {name: sent_auth(request) for name in headers}
        return reply(500, {"error": {"message": "overloaded"}}, headers=echoed)(handler, request)

    server.script.append(action)
    client = flavor.make(token=TOKEN, timeout=3)
    exc = caught(lambda: flavor.chat(client))
    assert_no_secret(repr(exc.request_id), "exception.request_id")
    assert_no_secret(repr(exc.headers), "exception.headers")


# The command line: stdout and stderr, plain, -v and --no-stream


# (i) redirects and malformed answers that quote what the server sent


def echo_redirect(status, same_origin):
    """A redirect whose Location carries the token (cross-origin, or same origin looping)."""

    def action(handler, request):
        target = "/v1/chat/completions" if same_origin else "http://127.0.0.2:9/"
        location = f"{target}?t={sent_auth(request)[7:]}"
        return reply(status, "", headers={"Location": location, "X-Echo": sent_auth(request)})(handler, request)

    return action


@pytest.mark.parametrize(
    "status, same_origin, count", [(307, False, 1), (303, True, 1), (307, True, octoai_lite._MAX_REDIRECTS + 1)]
)
def test_i_token_echoed_in_a_redirect(server, flavor, debug_log, status, same_origin, count):
    check_leak(server, flavor, debug_log, [echo_redirect(status, same_origin)] * count)


def test_i_token_echoed_in_a_malformed_answer(raw_server, flavor, debug_log):
    def handler(sock, raw):
        head, _ = raw.read_request(sock)
        auth = [line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization:")][0]
        sock.sendall(b"HTTP/1.1 200 " + auth[15:] + b"\r\nContent-Length: x" + auth[15:] + b"\r\n\r\n")

    raw_server.handler = handler
    client = flavor.make(base_url=raw_server.url + "/v1", token=TOKEN, timeout=3, max_retries=0)
    assert_error_hides_token(caught(lambda: flavor.chat(client)), debug_log)


def test_i_token_echoed_into_a_health_check(raw_server, flavor, debug_log):
    def handler(sock, raw):
        head, _ = raw.read_request(sock)
        auth = [line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization:")][0]
        sock.sendall(b"HTTP/1.1 200 " + auth[15:] + b"\r\nContent-Length: x" + auth[15:] + b"\r\n\r\n")

    raw_server.handler = handler
    client = flavor.make(base_url=raw_server.url + "/v1", token=TOKEN, timeout=3, max_retries=0)
    error = caught(lambda: flavor.call(client, "health_check", raw_server.url + "/health", timeout=0.2, interval=0.05))
    assert_error_hides_token(error, debug_log)


def cli_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCTOAI_", "HTTP", "http", "NO_PROXY", "no_proxy"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def echo_request_id_stream(handler, request):
    """A good stream whose x-request-id header echoes the Authorization value."""
    return stream(headers={"x-request-id": sent_auth(request)})(handler, request)


CLI_CASES = {  # name: (arguments, the server's answers, the exit status)
    "plain-200": (["--no-stream"], lambda: [echo_reply(lambda auth: place(auth, 191), content_type="text/plain")], 1),
    "json-string-200": (["--no-stream"], lambda: [echo_reply(lambda auth: place(auth, 176))], 1),
    "sse-not-json": ([], lambda: [echo_stream(lambda auth: BAD_EVENTS["not-json"](place(auth, 191)))], 1),
    "sse-error": ([], lambda: [echo_stream(lambda auth: ERROR_EVENTS["error-event-text"](place(auth, 476)))], 1),
    "500-text": (
        ["--no-stream"],  # the CLI retries twice by default: three answers, each asking for a 1 ms wait
        lambda: [echo_reply(lambda auth: place(auth, 476), 500, "text/plain", {"retry-after-ms": "1"})] * 3,
        1,
    ),
    "400-json": ([], lambda: [echo_reply(lambda auth: {"error": {"message": place(auth, 491)}}, 400)], 1),
    "request-id-header": ([], lambda: [echo_request_id_stream], 0),
}


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_command_line_never_prints_the_token(server, case, verbose):
    args, actions, status = CLI_CASES[case]
    server.script.extend(actions())
    command = [sys.executable, str(ROOT / "octoai_lite.py"), "--base-url", server.url + "/v1", "--timeout", "5"]
    command += (["-v"] if verbose else []) + args + ["hi"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=30, env=cli_env(OCTOAI_TOKEN=TOKEN), check=False
    )
    assert server.requests and sent_auth(server.requests[0]) == AUTH
    assert_no_secret(result.stdout, "the command line's stdout")
    assert_no_secret(result.stderr, "the command line's stderr")
    assert result.returncode == status, result.stderr[-2000:]


# (f) a token from the environment or the config file loses its surrounding whitespace


def test_f_token_from_the_environment_is_stripped(server, flavor, monkeypatch):
    monkeypatch.setenv("OCTOAI_TOKEN", "  tok\n")
    client = flavor.make(timeout=3)
    flavor.chat(client)
    assert server.requests[-1].headers["authorization"] == "Bearer tok"


@pytest.mark.parametrize("line", ["token: tok   \n", "token: tok \t\r\n", "token:   tok\t\n"])
def test_f_token_from_the_config_file_is_stripped(server, flavor, tmp_path, line):
    (tmp_path / ".octoai").mkdir()
    (tmp_path / ".octoai" / "config.yaml").write_bytes(line.encode())
    client = flavor.make(timeout=3)
    flavor.chat(client)
    assert server.requests[-1].headers["authorization"] == "Bearer tok"


# (g) a token with an inner CR, LF or NUL is refused at construction, without quoting it


@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\x00"], ids=["CR", "LF", "CRLF", "NUL"])
def test_g_token_with_a_control_character_is_refused(server, flavor, bad):
    token = TOKEN[:20] + bad + TOKEN[20:]
    with pytest.raises(ValueError) as info:
        flavor.make(token=token)
    assert_no_secret(str(info.value), "the ValueError's message")
    assert_no_secret(repr(info.value), "the ValueError's repr")
    assert not server.requests


@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])  # no NUL in an environment
def test_g_token_with_a_control_character_in_the_environment_is_refused(server, flavor, monkeypatch, bad):
    monkeypatch.setenv("OCTOAI_TOKEN", TOKEN[:20] + bad + TOKEN[20:])
    with pytest.raises(ValueError) as info:
        flavor.make()
    assert_no_secret(str(info.value), "the ValueError's message")
    assert not server.requests


# =============================================================================
# 2. Wrong-shape JSON never escapes as a raw error
# =============================================================================


def exercise(completion):
    """Use a parsed completion the ways a caller would: none of them may raise."""
    repr(completion)
    completion.to_dict()
    completion.json()
    for choice in completion.choices:
        repr(choice.message)
        repr(choice.delta)
    return completion


def outcome(call):
    """The call's result, or the OctoAIError it raised; any other exception propagates (a failure)."""
    try:
        return call()
    except OctoAIError as exc:
        return exc


def refusal(payload, *, chunk=False):
    """The error a chat completion (or stream chunk) must be refused with, or None if it must be
    accepted. The module's one shape rule: a JSON object, no error in it, and a 'choices' list of
    objects (not empty, for a whole completion); anything at all may be inside those objects."""
    if not isinstance(payload, dict):
        return OctoAIValidationError
    if payload.get("error"):
        return (OctoAIClientError, OctoAIServerError)  # the server's error, raised as the typed error
    choices = payload.get("choices")
    if type(choices) is not list or any(type(choice) is not dict for choice in choices):
        return OctoAIValidationError
    if not chunk and not choices:
        return OctoAIValidationError
    return None


def stream_refusal(chunks):
    """(the error the stream must end with or None, how many chunks arrive before it ends)."""
    for number, each in enumerate(chunks):
        refused_with = refusal(each, chunk=True)
        if refused_with is not None:
            return refused_with, number
    return None, len(chunks)


def accepted_or_refused(call, refused_with):
    """Valid input (refused_with None): the call must succeed, with no error at all. Invalid input:
    it must raise the typed error that `refusal` names, never another one."""
    if refused_with is None:
        return call()
    with pytest.raises(OctoAIError) as info:
        call()
    assert isinstance(info.value, refused_with), f"refused with {info.value!r}, expected {refused_with}"
    return info.value


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def either(good):
    """A well-formed value, or any JSON value at all."""
    return st.one_of(good, JSON)


def some_of(**fields):
    """A dict with any subset of the fields."""
    return st.fixed_dictionaries({}, optional=fields)


FUNCTION = either(some_of(name=either(st.text(max_size=4)), arguments=either(st.text(max_size=4))))
TOOL_CALL = either(
    some_of(
        id=either(st.text(max_size=4)),
        type=either(st.just("function")),
        function=FUNCTION,
        index=either(st.integers(0, 2)),
    )
)
MESSAGE = either(
    some_of(
        role=either(st.just("assistant")),
        content=either(st.text(max_size=4)),
        tool_calls=either(st.lists(TOOL_CALL, max_size=2)),
        function_call=FUNCTION,
    )
)
CHOICE_FIELDS = dict(
    index=either(st.integers(0, 2)),
    message=MESSAGE,
    delta=MESSAGE,
    finish_reason=either(st.sampled_from(["stop", "length", "tool_calls"])),
    logprobs=either(some_of(content=either(st.lists(JSON, max_size=2)))),
)
CHOICE = either(some_of(**CHOICE_FIELDS))
USAGE = either(
    some_of(
        completion_tokens=either(st.integers(0, 9)),
        prompt_tokens=either(st.integers(0, 9)),
        total_tokens=either(st.integers(0, 9)),
    )
)
TOP_FIELDS = dict(
    id=either(st.text(max_size=4)),
    object=either(st.just("chat.completion")),
    created=either(st.integers(0, 9)),
    model=either(st.just("m")),
    usage=USAGE,
)
BODY = either(some_of(choices=either(st.lists(CHOICE, max_size=3)), **TOP_FIELDS))
# What passes the shape check (an object whose choices are a list of objects), with anything inside.
CHECKED_CHUNK = st.fixed_dictionaries({"choices": st.lists(some_of(**CHOICE_FIELDS), max_size=3)}, optional=TOP_FIELDS)
BODY_OR_CHECKED = st.one_of(CHECKED_CHUNK, BODY)

# A failing example is reported as found: shrinking one through a server would take minutes.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def sse_json(payload):
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


@settings(max_examples=300, deadline=None, phases=NO_SHRINK)
@given(chunks=st.lists(CHECKED_CHUNK, max_size=5))
def test_any_checked_chunks_fold_or_raise_octoai_errors(chunks):
    """Chunks that pass the shape check are all valid: each parses and they fold, whatever is inside."""
    for each in chunks:
        exercise(ChatCompletion.from_dict(each))
    exercise(ChatCompletion.from_chunks(chunks))


network_settings = settings(max_examples=50, deadline=None, phases=NO_SHRINK, suppress_health_check=list(HealthCheck))


@network_settings
@given(body=BODY_OR_CHECKED)
def test_any_completion_body_is_parsed_or_refused(http_server, body):
    http_server.reset()
    http_server.script.append(reply(body=json.dumps(body).encode()))
    with Client(base_url=http_server.url + "/v1", timeout=3, max_retries=0) as client:
        accepted_or_refused(
            lambda: exercise(client.chat.completions.create(model="m", messages=MESSAGES)), refusal(body)
        )


@network_settings
@given(chunks=st.lists(BODY_OR_CHECKED, max_size=4))
def test_any_stream_chunks_are_parsed_or_refused(http_server, chunks):
    http_server.reset()
    http_server.script.append(stream([sse_json(each) for each in chunks] + [b"data: [DONE]\n\n"]))
    refused_with, delivered = stream_refusal(chunks)
    got = []
    with Client(base_url=http_server.url + "/v1", timeout=3, max_retries=0) as client:

        def go():
            with client.chat.completions.create(model="m", messages=MESSAGES, stream=True) as chat_stream:
                for piece in chat_stream:
                    got.append(exercise(piece))
                return exercise(chat_stream.get_final_completion())

        accepted_or_refused(go, refused_with)
    assert len(got) == delivered, f"{len(got)} chunks arrived, expected {delivered}"


# The shapes the issue names, as plain tests: streamed, folded from chunks, and (for a message) whole.


def choice_chunk(choice):
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


def tool_delta(function):
    return {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": function}]}


STREAM_REGRESSIONS = {
    "string-delta": [choice_chunk({"index": 0, "delta": "hello"})],
    "list-index": [choice_chunk({"index": [0], "delta": {"content": "x"}})],
    "dict-index": [choice_chunk({"index": {"i": 0}, "delta": {"content": "x"}})],
    "tool-calls-dict": [choice_chunk({"index": 0, "delta": {"tool_calls": {"index": 0, "function": {"name": "f"}}}})],
    "tool-calls-strings": [choice_chunk({"index": 0, "delta": {"tool_calls": ["call"]}})],
    "tool-call-list-index": [choice_chunk({"index": 0, "delta": {"tool_calls": [{"index": [0], "id": "a"}]}})],
    "function-call-string": [choice_chunk({"index": 0, "delta": {"function_call": "f(1)"}})],
    "arguments-object": [choice_chunk({"index": 0, "delta": tool_delta({"name": "f", "arguments": {"a": 1}})})],
    "function-call-arguments-object": [
        choice_chunk({"index": 0, "delta": {"function_call": {"name": "f", "arguments": {"a": 1}}}})
    ],
    "function-string": [choice_chunk({"index": 0, "delta": tool_delta("f")})],
    "content-number": [choice_chunk({"index": 0, "delta": {"content": 7}})],
    "logprobs-string": [choice_chunk({"index": 0, "delta": {"content": "x"}, "logprobs": "none"})],
    "usage-string": [dict(choice_chunk({"index": 0, "delta": {"content": "x"}}), usage="lots")],
    "content-parts": [
        choice_chunk({"index": 0, "delta": {"content": [{"type": "text", "text": "a"}]}}) for _ in range(1100)
    ],
}


@pytest.mark.parametrize("name", sorted(STREAM_REGRESSIONS))
def test_regression_streamed(server, flavor, name):
    chunks = STREAM_REGRESSIONS[name]
    server.script.append(stream([sse_json(each) for each in chunks] + [b"data: [DONE]\n\n"]))
    client = flavor.make(timeout=3)

    pieces_, final = drain(flavor, client)  # every shape here passes the check: nothing may refuse it
    for piece in pieces_:
        exercise(piece)
    exercise(final)
    assert len(pieces_) == len(chunks)


@pytest.mark.parametrize("name", sorted(STREAM_REGRESSIONS))
def test_regression_folded_from_chunks(name):
    exercise(ChatCompletion.from_chunks(STREAM_REGRESSIONS[name]))


MESSAGE_REGRESSIONS = {
    "string-message": {"index": 0, "message": "hello", "finish_reason": "stop"},
    "list-index": {"index": [0], "message": {"role": "assistant", "content": "x"}},
    "tool-calls-dict": {"index": 0, "message": {"role": "assistant", "tool_calls": {"id": "a"}}},
    "function-call-string": {"index": 0, "message": {"role": "assistant", "function_call": "f(1)"}},
    "arguments-object": {"index": 0, "message": {"tool_calls": [{"id": "a", "function": {"arguments": {"a": 1}}}]}},
    "content-parts": {"index": 0, "message": {"content": [{"type": "text", "text": "a"}]}},
}


@pytest.mark.parametrize("name", sorted(MESSAGE_REGRESSIONS))
def test_regression_whole_completion(server, flavor, name):
    server.script.append(reply(body=completion_body(choices=[MESSAGE_REGRESSIONS[name]])))
    client = flavor.make(timeout=3)
    exercise(flavor.chat(client))


# 100,000 levels of nesting

DEEP = "[" * 100000 + "]" * 100000


def test_deep_nesting_as_a_completion_body(server, flavor):
    server.script.append(reply(body=DEEP))
    client = flavor.make(timeout=3)
    with pytest.raises(OctoAIValidationError):
        flavor.chat(client)


def test_deep_nesting_as_an_event(server, flavor):
    server.script.append(stream([sse_event(chunk("a")), b"data: " + DEEP.encode() + b"\n\n", b"data: [DONE]\n\n"]))
    client = flavor.make(timeout=3)
    with pytest.raises(OctoAIValidationError):
        drain(flavor, client)


def test_deep_nesting_as_a_500_error_body(server, flavor):
    server.script.append(reply(500, DEEP))
    client = flavor.make(timeout=3)
    with pytest.raises(OctoAIServerError) as info:
        flavor.chat(client)
    assert info.value.status_code == 500


def test_deep_nesting_as_an_error_event(server, flavor):
    server.script.append(stream([("event: error\ndata: %s\n\n" % DEEP).encode()]))
    client = flavor.make(timeout=3)
    with pytest.raises(OctoAIError):
        drain(flavor, client)


# =============================================================================
# 3. Caller arguments are checked before anything is sent
# =============================================================================

NAN = float("nan")
BAD_SETTINGS = [
    ("timeout", 0),
    ("timeout", -1),
    ("timeout", NAN),
    ("deadline", 0),
    ("deadline", -1),
    ("deadline", NAN),
    ("max_retries", -1),
    ("max_retries", 1.5),
    ("max_retries", "2"),
]
SETTING_IDS = [f"{name}={value!r}" for name, value in BAD_SETTINGS]


def assert_names(exc, name):
    assert name in str(exc), f"the message does not name {name!r}: {exc}"


@pytest.mark.parametrize("name, value", BAD_SETTINGS, ids=SETTING_IDS)
def test_bad_setting_at_construction(server, flavor, name, value):
    with pytest.raises((ValueError, TypeError)) as info:
        flavor.client_class(base_url=server.url + "/v1", **{name: value})
    assert_names(info.value, name)


def raised(kinds, call):
    """The exception of `kinds` that `call` raises. Its traceback is dropped and garbage collected
    here, so that anything its frames held (a socket left open, say) is reported by this test."""
    try:
        call()
    except kinds as exc:
        error = exc
    else:
        pytest.fail(f"DID NOT RAISE {kinds}")
    error.__traceback__ = None
    gc.collect()
    return error


@pytest.mark.parametrize("name, value", BAD_SETTINGS, ids=SETTING_IDS)
def test_bad_setting_per_call(server, flavor, name, value):
    client = flavor.make(timeout=3)
    error = raised((ValueError, TypeError), lambda: flavor.chat(client, **{name: value}))
    assert_names(error, name)
    assert not server.requests


@pytest.mark.parametrize("name, value", BAD_SETTINGS, ids=SETTING_IDS)
def test_bad_setting_in_with_options(server, flavor, name, value):
    client = flavor.make(timeout=3)
    with pytest.raises((ValueError, TypeError)) as info:
        client.with_options(**{name: value})
    assert_names(info.value, name)


BAD_HEADERS = [(name, "v") for name in ["X-Bad:Name", "X Bad", "X-Bad\r", "X-Bad\nX-Injected", "X-Bad\x00"]] + [
    ("X-Ok", value) for value in ["a\rb", "a\nb", "a\x00b", "a\r\n b", "v\r\nX-Injected: 1"]
]
HEADER_IDS = [repr(pair) for pair in BAD_HEADERS]


def recording(raw_server):
    """Make `raw_server` keep every byte it receives (in .received) and answer any whole request."""
    raw_server.received = []
    answer = json.dumps(completion_body()).encode()

    def handler(sock, server):
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                break
            data += more
        if data:
            server.received.append(data)
        if b"\r\n\r\n" in data:
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(answer) + answer)

    raw_server.handler = handler
    return raw_server.url + "/v1"


def assert_nothing_received(raw_server):
    time.sleep(0.05)  # bytes sent on loopback would have arrived by now
    assert raw_server.received == [], f"the server received {raw_server.received!r}"


@pytest.mark.parametrize("name, value", BAD_HEADERS, ids=HEADER_IDS)
def test_bad_default_header_is_refused_before_sending(raw_server, flavor, name, value):
    url = recording(raw_server)
    # Refused when the client is made, or at the latest before its first request goes out.
    with pytest.raises(ValueError):
        client = flavor.make(base_url=url, timeout=3, default_headers={name: value})
        flavor.chat(client)
    assert_nothing_received(raw_server)


@pytest.mark.parametrize("name, value", BAD_HEADERS, ids=HEADER_IDS)
def test_bad_extra_header_is_refused_before_sending(raw_server, flavor, name, value):
    client = flavor.make(base_url=recording(raw_server), timeout=3)
    with pytest.raises(ValueError):
        flavor.chat(client, extra_headers={name: value})
    assert_nothing_received(raw_server)


@pytest.mark.parametrize(
    "body_args",
    [
        {"temperature": NAN},
        {"top_p": float("-inf")},
        {"extra_body": {"x": [float("inf")]}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"default": NAN}}}]},
    ],
    ids=["temperature-nan", "top_p-minus-inf", "extra_body-inf", "nested-nan"],
)
def test_nan_or_infinity_in_the_body_is_refused_before_sending(raw_server, flavor, body_args):
    client = flavor.make(base_url=recording(raw_server), timeout=3)
    with pytest.raises(ValueError):
        flavor.chat(client, **body_args)
    assert_nothing_received(raw_server)


def test_base_url_query_string_stays_after_the_path(server, flavor):
    client = flavor.make(base_url=server.url + "/v1?api-version=1", timeout=3)
    flavor.chat(client)
    assert server.requests[-1].path == "/v1/chat/completions?api-version=1"
    assert flavor.models(client) == ["llama-2-70b-chat", "tiny"]
    assert server.requests[-1].path == "/v1/models?api-version=1"


def test_base_url_with_a_fragment_is_refused(server, flavor):
    with pytest.raises(ValueError):
        flavor.client_class(base_url=server.url + "/v1#section")


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_base_url_with_a_password_is_refused_without_quoting_it(server, flavor, monkeypatch, source):
    url = server.url.replace("http://", f"http://user:{PASSWORD}@") + "/v1"
    if source == "environment":
        monkeypatch.setenv("OCTOAI_BASE_URL", url)
        make = lambda: flavor.client_class()  # noqa: E731
    else:
        make = lambda: flavor.client_class(base_url=url)  # noqa: E731
    with pytest.raises(ValueError) as info:
        make()
    assert_no_secret(str(info.value), "the ValueError's message", secret=PASSWORD)
    assert_no_secret(repr(info.value), "the ValueError's repr", secret=PASSWORD)


@pytest.mark.parametrize("userinfo", [f"user:{PASSWORD}@", f":{PASSWORD}@"])
def test_repr_never_shows_a_password(server, flavor, userinfo):
    url = server.url.replace("http://", "http://" + userinfo) + "/v1"
    try:
        client = flavor.make(base_url=url, token=TOKEN)
    except ValueError as exc:  # refusing it is the chosen behaviour
        assert_no_secret(str(exc), "the ValueError's message", secret=PASSWORD)
        return
    for shown in (repr(client), repr(client.with_options(timeout=2))):
        assert_no_secret(shown, "repr(client)", secret=PASSWORD)
        assert_no_secret(shown, "repr(client)")


FRAMING_HEADERS = [
    ("Content-Length", "5"),
    ("content-length", "0"),
    ("Transfer-Encoding", "chunked"),
    ("Host", "evil.example"),
    ("HOST", "127.0.0.1"),
]
FRAMING_IDS = [name for name, _ in FRAMING_HEADERS]


@pytest.mark.parametrize("name, value", FRAMING_HEADERS, ids=FRAMING_IDS)
def test_framing_extra_header_is_refused_then_the_client_still_works(server, flavor, name, value):
    client = flavor.make(timeout=3)
    flavor.chat(client)  # a pooled keep-alive connection that a bad frame would poison
    server.reset()
    with pytest.raises(ValueError) as info:
        flavor.chat(client, extra_headers={name: value})
    assert name.lower() in str(info.value).lower(), f"the message does not name {name}: {info.value}"
    time.sleep(0.05)
    assert not server.requests
    server.script.append(reply(body=completion_body("the follow-up's own answer")))
    assert flavor.chat(client).choices[0].message.content == "the follow-up's own answer"
    assert len(server.requests) == 1 and server.requests[0].json()["messages"] == MESSAGES


@pytest.mark.parametrize("name, value", FRAMING_HEADERS, ids=FRAMING_IDS)
def test_framing_default_header_is_refused_before_sending(server, flavor, name, value):
    with pytest.raises(ValueError) as info:
        client = flavor.make(timeout=3, default_headers={name: value})
        flavor.chat(client)
    assert name.lower() in str(info.value).lower(), f"the message does not name {name}: {info.value}"
    time.sleep(0.05)
    assert not server.requests


# =============================================================================
# 4. os.fork(): the child gets its own connection
# =============================================================================


def echo_call(client, prompt):
    """A streamed call whose answer is the prompt's words (conftest's echo route)."""
    messages = [{"role": "user", "content": prompt}]
    with client.chat.completions.create(model="m", messages=messages, stream=True) as chat_stream:
        return chat_stream.get_final_completion().choices[0].message.content


def read_report(fd, timeout_s):
    data = b""
    give_up_at = time.monotonic() + timeout_s
    while True:
        remaining = give_up_at - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return {"error": f"no report from the child within {timeout_s} s"}
        more = os.read(fd, 65536)
        if not more:
            return json.loads(data.decode()) if data else {"error": "the child reported nothing"}
        data += more


def wait_child(pid, timeout_s):
    give_up_at = time.monotonic() + timeout_s
    while time.monotonic() < give_up_at:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -9


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
@pytest.mark.parametrize("order", ["child-first", "at-once"])
def test_after_fork_the_child_uses_its_own_connection(server, order):
    """child-first: the parent calls once the child has its answer; at-once: both call together."""
    client = Client(base_url=server.url + "/v1", timeout=3, max_retries=0)
    try:
        assert echo_call(client, "echo parent first") == " parent first"  # leaves an idle pooled connection
        parent_port = server.requests[-1].port
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a process with threads
            pid = os.fork()
        if pid == 0:  # the child: report through the pipe, and never return into pytest
            code = 1
            try:
                os.close(read_end)
                signal.alarm(10)
                report = {"answer": echo_call(client, "echo child")}
                code = 0
            except BaseException as exc:  # noqa: B902 - anything at all goes to the parent
                report = {"error": repr(exc)}
            finally:
                try:
                    os.write(write_end, json.dumps(report).encode())
                finally:
                    os._exit(code)
        os.close(write_end)
        try:
            if order == "child-first":
                report = read_report(read_end, 10)
                parent_answer = outcome(lambda: echo_call(client, "echo parent second"))
            else:
                parent_answer = outcome(lambda: echo_call(client, "echo parent second"))
                report = read_report(read_end, 10)
        finally:
            os.close(read_end)
            exit_code = wait_child(pid, 10)
    finally:
        client.close()
    assert report == {"answer": " child"}, report
    assert exit_code == 0
    assert parent_answer == " parent second", parent_answer
    child_requests = [r for r in server.requests if b"echo child" in r.body]
    assert len(child_requests) == 1
    assert child_requests[0].port != parent_port, "the child sent its request on the parent's pooled connection"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_a_child_closing_what_it_inherited_leaves_the_parents_stream_alone(server):
    """The child closes the parent's open stream and client, and exits: the parent reads its stream to the end."""
    server.script.append(stream(delay=0.1))
    client = Client(base_url=server.url + "/v1", timeout=3, max_retries=0)
    try:
        chat_stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        first = next(chat_stream)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a process with threads
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                chat_stream.close()
                client.close()
                code = 0
            finally:
                os._exit(code)
        assert wait_child(pid, 10) == 0
        rest = [piece.choices[0].delta.content for piece in chat_stream if piece.choices]
        assert first.choices[0].delta.content + "".join(rest) == "".join(WORDS)
    finally:
        client.close()


# =============================================================================
# 5. One AsyncClient, two event loops at once
# =============================================================================


def run_in_loops(client, names, calls):
    """Each name in its own thread and event loop, making `calls` echo calls in turn; (answers, failures, seconds)."""
    failures = []
    answers = {}

    def worker(name):
        async def go():
            got = []
            for number in range(calls):
                messages = [{"role": "user", "content": f"echo {name} {number}"}]
                chat_stream = await client.chat.completions.create(model="m", messages=messages, stream=True)
                async with chat_stream:
                    final = await chat_stream.get_final_completion()
                got.append(final.choices[0].message.content)
            return got

        try:
            answers[name] = asyncio.run(go())
        except BaseException as exc:  # noqa: B902 - reported by the caller
            failures.append(f"{name}: {exc!r}")

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(name,), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.1, 10 - (time.monotonic() - started)))
    assert not any(thread.is_alive() for thread in threads), "a loop is still waiting after 10 s"
    return answers, failures, time.monotonic() - started


def test_one_async_client_serves_two_event_loops_at_once(server):
    client = octoai_lite.AsyncClient(base_url=server.url + "/v1", timeout=3, max_retries=0)
    with warnings.catch_warnings(record=True):  # sockets left behind are the next test's subject
        warnings.simplefilter("always")
        try:
            answers, failures, elapsed = run_in_loops(client, ["left", "right"], 20)
        finally:
            asyncio.run(client.close())
            gc.collect()
    assert not failures, failures
    for name in ("left", "right"):
        assert answers[name] == [f" {name} {number}" for number in range(20)]
    assert elapsed < 5, f"40 calls took {elapsed:.1f} s"


def test_closing_an_async_client_after_its_loops_ended_leaves_no_socket_open(server):
    client = octoai_lite.AsyncClient(base_url=server.url + "/v1", timeout=3, max_retries=0)
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        try:
            answers, failures, _ = run_in_loops(client, ["left", "right"], 3)
        finally:
            asyncio.run(client.close())
            gc.collect()
    assert not failures, failures
    unclosed = [str(w.message) for w in caught_warnings if issubclass(w.category, ResourceWarning)]
    assert not unclosed, unclosed


def test_log_records_of_a_failed_call_quote_no_token(server, flavor, debug_log):
    """Sanity: the DEBUG log of an ordinary error is checked too (and holds the request line)."""
    server.script.append(echo_reply(lambda auth: {"error": {"message": auth}}, 401))
    client = flavor.make(token=TOKEN, timeout=3)
    exc = caught(lambda: flavor.chat(client))
    assert any(record.levelno == logging.DEBUG for record in debug_log.records)
    assert_error_hides_token(exc, debug_log)


def test_closing_an_async_client_closes_a_running_loops_pool_in_that_loops_thread(server):
    """close() from one loop while another runs in its thread: no cross-thread call (debug mode would raise)."""
    client = octoai_lite.AsyncClient(base_url=server.url + "/v1", timeout=3, max_retries=0)
    ready, closed = threading.Event(), threading.Event()
    idle_after = []

    def other_loop():
        async def go():
            asyncio.get_running_loop().set_debug(True)  # a non-thread-safe call from another thread raises
            await client.chat.completions.create(model="m", messages=MESSAGES)  # leaves an idle connection here
            ready.set()
            while not closed.is_set():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the scheduled close runs
            idle_after.extend(pool.idle_count() for pool in client._transport._pools.values())

        asyncio.run(go())

    thread = threading.Thread(target=other_loop, daemon=True)
    thread.start()
    assert ready.wait(5)

    async def close_here():
        asyncio.get_running_loop().set_debug(True)
        await client.close()

    asyncio.run(close_here())
    closed.set()
    thread.join(5)
    assert idle_after and all(count == 0 for count in idle_after), idle_after
