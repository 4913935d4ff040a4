"""Issue 19: every secret is a secret, and nothing deadlocks.

Over real loopback sockets (conftest.py's servers; nothing patched), for
`Client` and `AsyncClient` alike through `flavor`:

1. secret headers: Authorization, Proxy-Authorization, api-key, x-api-key,
   Cookie, Set-Cookie and any header named in `secret_headers=` never show,
   whole or as any 8-character piece, in an error, a log line or a repr,
   whatever a hostile server echoes and wherever; and never go to another
   origin on a redirect;
2. os.fork() while 16 threads use one Client: every child's first call
   answers, and the parent's calls all succeed with their own answers;
3. an AsyncClient whose event loop was closed without shutdown_asyncgens
   closes its connections with no ResourceWarning and no private asyncio
   attribute;
4. a close-delimited event stream that ends with neither [DONE] nor a
   finish_reason on every choice is a truncation, not a normal end.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import signal
import threading
import time
import warnings
from pathlib import Path

import pytest

import octoai_lite
from conftest import MESSAGES, LoopbackServer, chunk, completion_body, reply, running, sse_event, stream
from octoai_lite import AsyncClient, Client, OctoAIConnectionError, OctoAIError

# =============================================================================
# 1. Secret headers
# =============================================================================

# Random-looking values: any 8 characters of one in a row is a leak.
CALLER_NAMED = "X-My-Secret"  # named secret as "x-my-secret": names are case-insensitive
SECRETS = {
    "Authorization": "Bearer sk-nrSyTZUQPq0bL3SKyDZN9keiGvdR90cDSGVK",
    "Proxy-Authorization": "Basic aOMe1eC8w1yfxRxFXkQSep6HzXmwqYw06Naf",
    "api-key": "zUabLcR3xlaV2CAJlgIHUqQcT2J7Arq2jnjv",
    "x-api-key": "8mDxEXEpezjJsiJeTYIgbQSfQKRq8JGudD5I",
    "Cookie": "sid=soSGvqDyyJfO9oS5CImXPBGe5TS5mquvoJyt",
    CALLER_NAMED: "DBfC1ixOpsaOfkBL2DZOOGFa5a8jgcDfo1sp",
}
NAMES = list(SECRETS)
# A cookie the server sets: the value (name=value) is the secret, the attributes are not.
SET_COOKIE = "ZL7bMgdpEpTF2vPjGU3m=bly2y9NFpK8pmAnlJEFeRshG"


def pieces(secret, size=8):
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def assert_no_secret(text, where, secret):
    """Neither the secret nor any 8-character piece of it is in `text`."""
    for piece in pieces(secret):
        at = text.find(piece)
        assert at < 0, f"{where} holds {piece!r} of the secret: ...{text[max(0, at - 60) : at + 60]!r}..."


def assert_hidden(secret, exc=None, caplog=None, client=None):
    """The secret is in no part of the error (nor its causes), the DEBUG log, or the client's repr."""
    if exc is not None:
        assert isinstance(exc, OctoAIError), f"a raw {type(exc).__name__} escaped: {exc!r}"
        assert_no_secret(str(exc), "str(error)", secret)
        assert_no_secret(repr(exc), "repr(error)", secret)
        assert_no_secret(repr(exc.body), "error.body", secret)
        assert_no_secret(repr(exc.headers), "error.headers", secret)
        assert_no_secret(repr(exc.request_id), "error.request_id", secret)
        for link in ("__cause__", "__context__"):
            cause = getattr(exc, link)
            if cause is not None:
                assert_no_secret(f"{cause!s} {cause!r}", f"error.{link}", secret)
    if caplog is not None:
        assert_no_secret(caplog.text, "the DEBUG log", secret)
    if client is not None:
        assert_no_secret(repr(client), "repr(client)", secret)


@pytest.fixture
def debug_log(caplog):
    caplog.set_level("DEBUG", logger="octoai_lite")
    return caplog


def caught(call):
    """The exception `call` raises (any kind); fails if it raises none."""
    try:
        call()
    except Exception as exc:  # noqa: B902 - the point is to see what escapes
        return exc
    pytest.fail("expected an error, got an answer")


def outcome(call):
    """What `call` returned, or the exception it raised."""
    try:
        return call()
    except Exception as exc:  # noqa: B902
        return exc


def secret_client(flavor, name, source="default_headers", **kwargs):
    """(client, per-call options) sending header `name` with its secret value, given the `source` way."""
    headers = {name: SECRETS[name]}
    if name == CALLER_NAMED:
        kwargs["secret_headers"] = (name.lower(),)
    kwargs.setdefault("timeout", 3)
    if source == "default_headers":
        return flavor.make(default_headers=headers, **kwargs), {}
    if source == "extra_headers":
        return flavor.make(**kwargs), {"extra_headers": headers}
    assert source == "with_options"
    return flavor.make(**kwargs).with_options(default_headers=headers), {}


def drain(flavor, client, **options):
    """Stream a chat answer to its end; return the chunks."""
    if flavor.name == "sync":
        with client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **options) as chat_stream:
            return list(chat_stream)

    async def go():
        chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **options)
        async with chat_stream:
            return [piece async for piece in chat_stream]

    return flavor.run(go())


# -- what a hostile server does with the secret header it received ----------------


def pad(text, start):
    """`text` at character `start` of a longer string: the client's cuts (200, 500, 2000) may fall inside it."""
    return "." * start + text + " and then" + "." * 120


def echoing(name, make_action):
    """An action that answers with make_action(<the value of header `name` the request carried>)."""

    def action(handler, request):
        return make_action(request.headers.get(name.lower(), ""))(handler, request)

    return action


def error_event(value):
    return b"event: error\ndata: " + json.dumps({"message": pad(value, 7)}).encode() + b"\n\n"


def sse_around(event):
    return stream([sse_event(chunk("", role="assistant")), event, b"data: [DONE]\n\n"])


def redirect_to(location):
    return reply(307, "", headers={"Location": location})


def url_safe(value):
    return value.replace(" ", "%20")


# Each place: (action factory taking the echoed value, how many answers, stream call?, retries, an error expected?)
PLACES = {
    # A 500 in plain text, retried once: the retry's log line quotes the error too.
    "plain-text-500": (
        lambda v: reply(500, pad(v, 7), content_type="text/plain", headers={"retry-after-ms": "1"}),
        2, False, 1, True,
    ),
    "plain-text-200": (lambda v: reply(200, pad(v, 176), content_type="text/plain"), 1, False, 0, True),
    "json-error-400": (
        lambda v: reply(400, {"error": {"message": pad(v, 491), "type": "invalid_request_error"}}),
        1, False, 0, True,
    ),
    "json-detail-422": (lambda v: reply(422, {"detail": pad(v, 1976)}), 1, False, 0, True),
    "json-error-in-200": (lambda v: reply(200, {"error": {"message": pad(v, 7)}}), 1, False, 0, True),
    "sse-error-event": (lambda v: sse_around(error_event(v)), 1, True, 0, True),
    "sse-error-payload": (
        lambda v: sse_around(sse_event({"error": {"message": pad(v, 191), "type": "server_error"}})),
        1, True, 0, True,
    ),
    "sse-not-json": (lambda v: sse_around(b"data: " + pad(v, 7).encode() + b"\n\n"), 1, True, 0, True),
    "redirect-elsewhere": (
        lambda v: redirect_to("http://127.0.0.2:9/v1/chat/completions?k=" + url_safe(v)),
        1, False, 0, True,
    ),
    "redirect-loop": (
        lambda v: redirect_to("/v1/chat/completions?k=" + url_safe(v)),
        octoai_lite._MAX_REDIRECTS + 1, False, 0, True,
    ),
    "request-id-500": (
        lambda v: reply(500, {"error": {"message": "overloaded"}}, headers={"x-request-id": v}),
        1, False, 0, True,
    ),
    "request-id-200": (lambda v: reply(200, completion_body(), headers={"x-request-id": v}), 1, False, 0, False),
    "request-id-stream-200": (lambda v: stream(headers={"x-request-id": v}), 1, True, 0, False),
    "x-echo-header-503": (
        lambda v: reply(503, {"error": {"message": "busy"}}, headers={"x-echo": v}),
        1, False, 0, True,
    ),
    "set-cookie-echo-401": (
        lambda v: reply(401, {"error": {"message": "no"}}, headers={"Set-Cookie": f"echo={v}; Path=/"}),
        1, False, 0, True,
    ),
}  # fmt: skip


def check_place(server, flavor, caplog, name, place, source="default_headers"):
    make_action, answers, stream_call, retries, error_expected = PLACES[place]
    server.script.extend([echoing(name, make_action)] * answers)
    client, options = secret_client(flavor, name, source, max_retries=retries)
    call = (lambda: drain(flavor, client, **options)) if stream_call else (lambda: flavor.chat(client, **options))
    if error_expected:
        exc = caught(call)
    else:
        exc = None
        call()
    assert server.requests, "the server received nothing"
    assert server.requests[0].headers.get(name.lower()) == SECRETS[name], "the server did not see the secret"
    assert_hidden(SECRETS[name], exc, caplog, client)


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("name", NAMES)
def test_a_secret_header_echoed_by_the_server(server, flavor, debug_log, name, place):
    check_place(server, flavor, debug_log, name, place)


@pytest.mark.parametrize("place", ["json-error-400", "request-id-500", "sse-error-payload"])
@pytest.mark.parametrize("source", ["extra_headers", "with_options"])
@pytest.mark.parametrize("name", NAMES)
def test_a_secret_header_given_per_call_or_in_with_options(server, flavor, debug_log, name, source, place):
    check_place(server, flavor, debug_log, name, place, source)


def test_secret_header_names_are_case_insensitive_both_ways(server, flavor, debug_log):
    """Named in upper case, sent in lower case (and a default secret sent as API-KEY)."""
    value = SECRETS[CALLER_NAMED]
    server.script.append(
        lambda handler, request: reply(
            400, {"error": {"message": f"{request.headers.get('x-my-secret')} {request.headers.get('api-key')}"}}
        )(handler, request)
    )
    client = flavor.make(
        timeout=3,
        secret_headers=("X-MY-SECRET",),
        default_headers={"x-my-secret": value, "API-KEY": SECRETS["api-key"]},
    )
    exc = caught(lambda: flavor.chat(client))
    assert server.requests[0].headers.get("x-my-secret") == value
    assert_hidden(value, exc, debug_log, client)
    assert_hidden(SECRETS["api-key"], exc, debug_log, client)


def test_secret_headers_given_as_a_generator_are_all_kept(server, flavor, debug_log):
    value = SECRETS[CALLER_NAMED]
    server.script.append(echoing(CALLER_NAMED, lambda v: reply(400, {"error": {"message": "echo " + v}})))
    names = (name for name in [CALLER_NAMED])  # read once: checking the names must not use them up
    client = flavor.make(timeout=3, secret_headers=names, default_headers={CALLER_NAMED: value})
    exc = caught(lambda: flavor.chat(client))
    assert "x-my-secret" in client.secret_headers
    assert "echo ***" in str(exc)
    assert_hidden(value, exc, debug_log, client)


def test_an_ordinary_header_is_not_taken_for_a_secret(server, flavor):
    """The rule redacts secrets, not everything: a header nobody named secret is quoted as sent."""
    server.script.append(echoing("x-trace", lambda v: reply(400, {"error": {"message": "trace " + v}})))
    client = flavor.make(timeout=3, default_headers={"x-trace": "trace-id-0123456789abcdef"})
    exc = caught(lambda: flavor.chat(client))
    assert "trace-id-0123456789abcdef" in str(exc)


# -- a cookie the server sets is a secret too -----------------------------------------


@pytest.mark.parametrize("status", [401, 500])
def test_a_set_cookie_from_the_server_stays_out_of_the_error(server, flavor, debug_log, status):
    server.script.append(
        reply(status, {"error": {"message": "go away"}}, headers={"Set-Cookie": SET_COOKIE + "; Path=/; HttpOnly"})
    )
    client = flavor.make(timeout=3)
    exc = caught(lambda: flavor.chat(client))
    assert_hidden(SET_COOKIE, exc, debug_log, client)


def test_a_set_cookie_value_the_body_repeats_is_hidden_too(server, flavor, debug_log):
    server.script.append(
        reply(500, {"error": {"message": "your session is " + SET_COOKIE}}, headers={"Set-Cookie": SET_COOKIE})
    )
    client = flavor.make(timeout=3)
    exc = caught(lambda: flavor.chat(client))
    assert_hidden(SET_COOKIE, exc, debug_log, client)


@pytest.mark.parametrize("token", [None, "tok-5d1f3a9b7c2e4680"])
def test_a_401_says_no_token_is_set_only_when_none_was_sent_whatever_cookie_it_sets(server, flavor, token):
    server.script.append(reply(401, {"error": {"message": "who are you"}}, headers={"Set-Cookie": SET_COOKIE}))
    exc = caught(lambda: flavor.chat(flavor.make(timeout=3, token=token)))
    assert ("no token is set" in str(exc)) is (token is None)
    assert_hidden(SET_COOKIE, exc)


# A secret JSON writes escaped: a quote, a backslash, and a Latin-1 letter (\u00e9 in ASCII JSON).
ESCAPED_SECRET = 'q"Zk\\7v\u00e92LmR9xTb4Wp'


def test_a_secret_that_json_escapes_is_hidden_in_a_json_error_body(server, flavor, debug_log):
    server.script.append(
        echoing("x-my-secret", lambda v: reply(400, {"error": {"message": "you sent " + v}, "echo": {v: [v]}}))
    )
    client = flavor.make(timeout=3, secret_headers=("x-my-secret",), default_headers={"x-my-secret": ESCAPED_SECRET})
    exc = caught(lambda: flavor.chat(client))
    assert server.requests[0].headers.get("x-my-secret") == ESCAPED_SECRET
    assert "you sent ***" in str(exc) and exc.body["echo"] == {"***": ["***"]}
    assert_hidden(ESCAPED_SECRET, exc, debug_log, client)


def json_forms(secret):
    return (secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1])


def test_a_secret_that_json_escapes_stays_out_of_a_recording(server, tmp_path):
    server.script.append(
        echoing("x-my-secret", lambda v: reply(400, {"error": {"message": "you sent " + v}}))
    )
    path = tmp_path / "calls.jsonl"
    with Client(base_url=server.url + "/v1", transport=octoai_lite.record(path), max_retries=0,
                secret_headers=("x-my-secret",), default_headers={"x-my-secret": ESCAPED_SECRET}) as client:  # fmt: skip
        with pytest.raises(OctoAIError):
            client.chat.completions.create(model="m", messages=MESSAGES)
    assert server.requests[0].headers["x-my-secret"] == ESCAPED_SECRET
    line = path.read_text()
    recorded = "".join(json.loads(line)["pieces"])  # the body as the server wrote it: JSON, the secret escaped
    for form in json_forms(ESCAPED_SECRET):
        assert_no_secret(recorded, "the recorded body", form)
        assert_no_secret(line, "the recording", form)


def test_a_secret_that_json_escapes_stays_out_of_a_preview(server, flavor):
    server.script.append(echoing("x-my-secret", lambda v: reply(200, [v])))  # JSON, but not an object
    client = flavor.make(timeout=3, secret_headers=("x-my-secret",), default_headers={"x-my-secret": ESCAPED_SECRET})
    exc = caught(lambda: flavor.chat(client))
    assert "expected a chat completion object" in str(exc)
    for form in json_forms(ESCAPED_SECRET):
        assert_no_secret(str(exc), "str(error)", form)


def test_a_long_set_cookie_and_an_error_body_of_many_strings_cost_one_texts_work(server, flavor):
    """Redaction works on one text, not string by string: 9,000 strings and a 20 KB cookie take about
    a second (string by string, about 25 s)."""
    cookie = "sid=" + "".join(f"{i:05d}" for i in range(4000))
    strings = [f"{i:04x}" for i in range(9000)]  # ~60 KB of JSON: within an error body's 64 KiB
    server.script.append(reply(401, {"error": {"message": "no"}, "d": strings}, headers={"Set-Cookie": cookie}))
    started = time.monotonic()
    exc = caught(lambda: flavor.chat(flavor.make(timeout=5, token="tok-5d1f3a9b7c2e4680")))
    elapsed = time.monotonic() - started
    assert exc.status_code == 401 and exc.body["d"][:2] == ["0000", "0001"]
    assert elapsed < 10, f"building one 401 error took {elapsed:.1f} s"


def test_an_error_in_a_large_200_body_keeps_the_start_of_its_text(server, flavor):
    body = {"error": {"message": "overloaded, key " + SET_COOKIE}, "d": ["abcd"] * 100_000}  # 800 KB as JSON
    server.script.append(reply(200, body, headers={"Set-Cookie": SET_COOKIE}))
    exc = caught(lambda: flavor.chat(flavor.make(timeout=5)))
    assert "overloaded, key ***" in str(exc)
    assert isinstance(exc.body, str) and exc.body.startswith('{"error": {"message": "overloaded, key ***"')
    assert len(exc.body) <= octoai_lite._MAX_REDACTED_JSON_CHARS + 3
    assert_hidden(SET_COOKIE, exc)


# -- framing errors that quote what the server sent ---------------------------------

FRAMINGS = {
    "status-line": lambda v: b"HTTP/1.1 " + v + b"\r\nContent-Length: 2\r\n\r\n{}",
    "header-line": lambda v: b"HTTP/1.1 200 OK\r\n" + v + b"\r\nContent-Length: 2\r\n\r\n{}",
    "content-length": lambda v: (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + v + b"\r\n\r\n"
    ),
    "chunk-size": lambda v: (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + v + b"\r\n"
    ),
}


def header_value(head, name):
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip()
    return b""


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
@pytest.mark.parametrize("name", NAMES)
def test_a_secret_header_echoed_in_a_framing_error(raw_server, flavor, debug_log, name, framing):
    def handler(sock, raw):
        head, _ = raw.read_request(sock)
        sock.sendall(FRAMINGS[framing](header_value(head, name)))

    raw_server.handler = handler
    client, options = secret_client(flavor, name, base_url=raw_server.url + "/v1", max_retries=0)
    exc = caught(lambda: flavor.chat(client, **options))
    assert header_value(raw_server.requests[0][0], name) == SECRETS[name].encode()
    assert_hidden(SECRETS[name], exc, debug_log, client)


# -- redirects: secrets stay on their origin ----------------------------------------


@pytest.fixture(scope="module")
def other_origin_server():
    with running(LoopbackServer()) as other:
        yield other


@pytest.fixture
def other_server(other_origin_server):
    other_origin_server.reset()
    yield other_origin_server
    other_origin_server.reset()


@pytest.mark.parametrize("where", ["other-port", "other-host"])
@pytest.mark.parametrize("name", NAMES)
def test_a_redirect_to_another_origin_carries_no_secret_header(server, other_server, flavor, debug_log, name, where):
    """127.0.0.1 to another port, or to localhost: followed without the secret, or refused; never forwarded."""
    if where == "other-port":
        target = f"{other_server.url}/v1/chat/completions"
    else:
        target = f"http://localhost:{server.server_address[1]}/v1/chat/completions"
    server.script.append(redirect_to(target))
    client, options = secret_client(flavor, name, max_retries=0)
    result = outcome(lambda: flavor.chat(client, **options))
    assert server.requests[0].headers.get(name.lower()) == SECRETS[name]
    if where == "other-port":
        arrived = other_server.requests
    else:
        arrived = [r for r in server.requests if r.headers.get("host", "").lower().startswith("localhost")]
    for request in arrived:
        assert name.lower() not in request.headers, f"{name} went to another origin"
        assert_no_secret(json.dumps(request.headers), "the other origin's request headers", SECRETS[name])
    assert_hidden(SECRETS[name], result if isinstance(result, Exception) else None, debug_log, client)


@pytest.mark.parametrize("name", NAMES)
def test_a_same_origin_redirect_keeps_the_secret_headers(server, flavor, name):
    server.script.append(redirect_to("/v1/chat/completions?hop=2"))
    client, options = secret_client(flavor, name, max_retries=0)
    assert flavor.chat(client, **options).choices[0].message.content
    assert [r.path for r in server.requests] == ["/v1/chat/completions", "/v1/chat/completions?hop=2"]
    assert [r.headers.get(name.lower()) for r in server.requests] == [SECRETS[name]] * 2


# =============================================================================
# 2. os.fork() while 16 threads use the same Client
# =============================================================================

FORKS, THREADS = 200, 16
CHILD_BOUND_S = 5.0  # a child's call (timeout 3 s) answers well within this, or the child is killed
TEST_BOUND_S = 30.0


def echo_call(client, prompt):
    """A streamed call whose answer is the prompt's words (conftest's echo route)."""
    messages = [{"role": "user", "content": prompt}]
    with client.chat.completions.create(model="m", messages=messages, stream=True) as chat_stream:
        return chat_stream.get_final_completion().choices[0].message.content


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_forks_taken_while_16_threads_use_the_client(separate_server):
    started = time.monotonic()
    root = separate_server[: -len("/v1")]
    client = Client(base_url=separate_server, timeout=3, max_retries=0)
    stop = threading.Event()
    failures = []
    calls = [0] * THREADS

    def worker(number):
        """Each call carries a marker of its own that the server echoes: an answer meant for another is caught."""
        try:
            while not stop.is_set():
                marker = f"t{number}n{calls[number]}"
                if number % 2:
                    answer = json.loads(client.infer(root + "/echo", {"marker": marker})["body"])["marker"]
                    expected = marker
                else:
                    answer, expected = echo_call(client, "echo " + marker), " " + marker
                if answer != expected:
                    failures.append(f"thread {number} asked for {expected!r}, got {answer!r}")
                    return
                calls[number] += 1
        except BaseException as exc:  # noqa: B902 - reported by the test
            failures.append(f"thread {number}: {exc!r}")

    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)

    def child(number):
        code = 3
        try:
            os.close(read_end)
            signal.alarm(int(CHILD_BOUND_S) + 5)  # the default action ends the process, should the parent be gone
            answer = echo_call(client, f"echo child{number}")
            code = 0 if answer == f" child{number}" else 2
            if code:
                os.write(write_end, f"child {number} got {answer!r}\n".encode()[:500])
        except BaseException as exc:  # noqa: B902 - anything at all goes to the parent
            code = 1
            os.write(write_end, f"child {number}: {exc!r}"[:500].encode() + b"\n")
        finally:
            os._exit(code)

    children = {}  # pid: (number, forked at)
    results = {}  # number: exit code, or "hung"

    def reap(final=False):
        for pid, (number, forked_at) in list(children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                results[number] = os.WEXITSTATUS(status) if os.WIFEXITED(status) else f"signal {os.WTERMSIG(status)}"
            elif final or time.monotonic() - forked_at > CHILD_BOUND_S:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                results[number] = "hung"
            else:
                continue
            del children[pid]

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a process with threads
            for number in range(FORKS):
                pid = os.fork()
                if pid == 0:
                    child(number)  # never returns
                children[pid] = (number, time.monotonic())
                reap()
                time.sleep(0.005)
        while children and time.monotonic() - started < TEST_BOUND_S:
            reap()
            time.sleep(0.01)
    finally:
        reap(final=True)  # whatever still runs is killed and counted as hung
        stop.set()
        for thread in threads:
            thread.join(max(0.1, TEST_BOUND_S - (time.monotonic() - started)))
        client.close()
        os.close(write_end)
        try:
            reports = os.read(read_end, 1 << 20).decode(errors="replace")
        except BlockingIOError:
            reports = ""
        os.close(read_end)
    hung = sorted(number for number, code in results.items() if code == "hung")
    failed = {number: code for number, code in results.items() if code not in (0, "hung")}
    assert not hung, f"{len(hung)} of {FORKS} children hung in their first call: {hung[:20]}"
    assert not failed, f"{len(failed)} children failed: {failed}; {reports[:2000]}"
    assert len(results) == FORKS and all(code == 0 for code in results.values())
    assert not any(thread.is_alive() for thread in threads), "a parent thread still waits"
    assert not failures, failures[:10]
    assert all(calls), f"a parent thread made no call at all: {calls}"
    assert time.monotonic() - started < TEST_BOUND_S


# =============================================================================
# 3. An event loop closed without shutdown_asyncgens
# =============================================================================


async def use(client):
    """A whole answer and a streamed one: connections go back to this loop's pool."""
    assert (await client.chat.completions.create(model="m", messages=MESSAGES)).choices[0].message.content
    chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    async with chat_stream:
        assert (await chat_stream.get_final_completion()).choices[0].message.content
    assert await client.models.list()


@pytest.mark.parametrize(
    "shutdown_asyncgens, then", [(False, "closed"), (False, "collected"), (True, "closed")],
    ids=["bare-close-then-client-closed", "bare-close-then-collected", "control-with-shutdown_asyncgens"],
)  # fmt: skip
def test_a_loop_closed_without_shutdown_asyncgens_still_closes_every_socket(shutdown_asyncgens, then):
    """loop.close() alone, then client.close() in another loop (or no close: the garbage collector).

    The sockets are closed at once by client.close(), or by the collector, with no private attribute
    (the client owns them, and no asyncio transport is left to warn): no ResourceWarning either way.
    """
    with running(LoopbackServer()) as server:  # its own: no other test's connection ends during this one
        check_loop_closed(server, shutdown_asyncgens, then)


def check_loop_closed(server, shutdown_asyncgens, then):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        client = AsyncClient(base_url=server.url + "/v1", timeout=3, max_retries=0)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(use(client))
            if shutdown_asyncgens:  # what asyncio.run does: the control case
                loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
        del loop
        if then == "closed":
            asyncio.run(client.close())
            wait_for_every_close(server)  # closed by client.close() itself, before any garbage collection
        del client
        for _ in range(3):
            gc.collect()
    unclosed = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert not unclosed, unclosed
    wait_for_every_close(server)


def wait_for_every_close(server):
    """The server sees every connection end: no socket left open."""
    give_up_at = time.monotonic() + 3
    while server.closed < server.connections and time.monotonic() < give_up_at:
        time.sleep(0.01)
    assert server.connections and server.closed == server.connections, (server.connections, server.closed)


PRIVATE_ASYNCIO = [
    r"\._sock\b",  # the socket inside asyncio's TransportSocket
    r"""["']_sock["']""",  # the same through getattr
    r"_transport\._",  # a transport's private attributes
]


@pytest.mark.parametrize("pattern", PRIVATE_ASYNCIO)
def test_the_module_reaches_into_no_private_asyncio_attribute(pattern):
    source = Path(octoai_lite.__file__).read_text(encoding="utf-8")
    found = [line.strip() for line in source.splitlines() if re.search(pattern, line)]
    assert not found, found


# =============================================================================
# 4. Close-delimited event streams
# =============================================================================

CLOSE_DELIMITED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
DONE = b"data: [DONE]\n\n"
USAGE = sse_event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 3}})

# name: (events, whether the end is normal, the text of each choice if it is / else how many chunks come first)
CLOSE_DELIMITED = {
    "no-done-no-finish": ([sse_event(chunk("a")), sse_event(chunk("b"))], False, 2),
    "no-done-cut-mid-event": ([sse_event(chunk("a")), b'data: {"id": "chatcmpl-1", "choi'], False, 1),
    "two-choices-one-finish": (
        [sse_event(chunk("a", index=0)), sse_event(chunk("b", index=1)), sse_event(chunk(finish_reason="stop"))],
        False,
        3,
    ),
    "no-done-finish": ([sse_event(chunk("a")), sse_event(chunk("b", finish_reason="stop"))], True, ["ab"]),
    "no-done-finish-then-usage": (
        [sse_event(chunk("a")), sse_event(chunk("b")), sse_event(chunk(finish_reason="length")), USAGE],
        True,
        ["ab"],
    ),
    "done-no-finish": ([sse_event(chunk("a")), sse_event(chunk("b")), DONE], True, ["ab"]),
    "two-choices-both-finish": (
        [
            sse_event(chunk("a", index=0)),
            sse_event(chunk("b", index=1)),
            sse_event(chunk(finish_reason="stop", index=1)),
            sse_event(chunk(finish_reason="stop", index=0)),
        ],
        True,
        ["a", "b"],
    ),
}


def close_delimited(events):
    def handler(sock, raw):
        raw.read_request(sock)
        sock.sendall(CLOSE_DELIMITED_HEAD)
        for event in events:
            sock.sendall(event)
            time.sleep(0.002)
        # then a clean close (FIN): the only end a close-delimited body has

    return handler


def iterate(flavor, client):
    """Iterate a stream: (the text of each chunk's choice 0, the error the iteration raised, the folded answer)."""
    got = []
    if flavor.name == "sync":
        with client.chat.completions.create(model="m", messages=MESSAGES, stream=True) as chat_stream:
            try:
                for piece in chat_stream:
                    got.append(piece.choices[0].delta.content if piece.choices else None)
            except Exception as exc:  # noqa: B902
                return got, exc, None
            return got, None, chat_stream.get_final_completion()

    async def go():
        chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        async with chat_stream:
            try:
                async for piece in chat_stream:
                    got.append(piece.choices[0].delta.content if piece.choices else None)
            except Exception as exc:  # noqa: B902
                return got, exc, None
            return got, None, await chat_stream.get_final_completion()

    return flavor.run(go())


@pytest.mark.parametrize("case", sorted(CLOSE_DELIMITED))
def test_a_close_delimited_stream(raw_server, flavor, case):
    """Ends normally only after [DONE] or a finish_reason on every choice; else it may have been cut: a truncation."""
    events, normal, expected = CLOSE_DELIMITED[case]
    raw_server.handler = close_delimited(events)
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=3)
    got, error, final = iterate(flavor, client)
    if normal:
        assert error is None, f"a complete stream raised {error!r}"
        assert [choice.message.content for choice in final.choices] == expected
    else:
        assert isinstance(error, OctoAIConnectionError), f"a cut-off stream ended with {error!r}, not a truncation"
        assert len(got) == expected, f"the chunks before the cut were not all handed out first: {got}"
    assert raw_server.accepted == 1


def test_an_empty_close_delimited_stream_is_never_a_normal_end(raw_server, flavor):
    """No event at all: an error (a truncation, or the empty-stream error it raises today), never an empty answer."""
    raw_server.handler = close_delimited([])
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=3)
    got, error, _ = iterate(flavor, client)
    assert isinstance(error, (OctoAIConnectionError, octoai_lite.OctoAIValidationError)), repr(error)
    assert got == []
