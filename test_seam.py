"""Issue 22: the transport seam, record and replay.

A handler stands in for the network (`Client(transport=handler)`): the
tests below test a user's own function with handlers, for Client and
AsyncClient alike, and show that a recording made against the loopback
server (a real socket) replays offline with the same chunks, the same
folded answer and the same errors, and that no secret reaches the file.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import octoai_lite
from conftest import MESSAGES, WORDS, LoopbackServer, chat_events, chunk, reply, running, sse_event, stream
from octoai_lite import (
    AsyncClient,
    BadRequestError,
    Client,
    HTTPResponse,
    OctoAIClientError,
    OctoAIConnectionError,
    OctoAIServerError,
    OctoAITimeoutError,
)

HERE = Path(__file__).resolve().parent
TOKEN = "sk-seam-5cb7f1e0a9d24e61b8c3f07e2d9a4b16"
API_KEY = "azure-key-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
MY_KEY = "my-key-2b4d6f8a0c1e3579bdf02468ace13579"


def pieces(secret, size=8):
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def events(*texts, done=True):
    """SSE bytes of a chat stream, one piece per event: a role chunk, each text, [DONE]."""
    out = [sse_event(chunk(role="assistant"))] + [sse_event(chunk(text)) for text in texts]
    return out + [b"data: [DONE]\n\n"] if done else out


# -- a user's code, as someone would write it, and its tests with handlers ------


def summarise(client, text):
    """The user's function under test: a plain call, then the same streamed."""
    messages = [{"role": "user", "content": "Summarise: " + text}]
    whole = client.chat.completions.create(model="m", messages=messages, max_tokens=20)
    with client.chat.completions.create(model="m", messages=messages, max_tokens=20, stream=True) as chat_stream:
        streamed = "".join(chat_stream.text_stream)
    return whole.choices[0].message.content, streamed


async def asummarise(client, text):
    messages = [{"role": "user", "content": "Summarise: " + text}]
    whole = await client.chat.completions.create(model="m", messages=messages, max_tokens=20)
    chat_stream = await client.chat.completions.create(model="m", messages=messages, max_tokens=20, stream=True)
    async with chat_stream:
        streamed = "".join([text async for text in chat_stream.text_stream])
    return whole.choices[0].message.content, streamed


def answering(seen):
    """A handler: a plain answer or a stream, as the request asks; it notes every request."""

    def handler(request):
        seen.append(request)
        if request.json().get("stream"):
            return HTTPResponse(200, {"Content-Type": "text/event-stream"}, iter(events("Short", " text.")))
        return HTTPResponse(
            200, {"x-request-id": "req-1"}, {"choices": [{"index": 0, "message": {"content": "Short."}}]}
        )

    return handler


def test_a_users_function_tested_with_a_handler():
    seen = []
    client = Client(transport=answering(seen))
    assert summarise(client, "a long text") == ("Short.", "Short text.")
    assert [request.method for request in seen] == ["POST", "POST"]
    assert seen[0].url.endswith("/chat/completions")
    assert seen[0].json() == {"model": "m", "messages": [{"role": "user", "content": "Summarise: a long text"}],
                              "max_tokens": 20}  # fmt: skip
    assert seen[1].json()["stream"] is True and seen[1].headers["Accept"] == "text/event-stream"
    assert 0 < seen[0].timeout <= client.timeout


def test_a_users_async_function_tested_with_sync_and_async_handlers():
    seen = []

    async def async_handler(request):
        answer = answering(seen)(request)
        if not isinstance(answer.body, dict):
            parts = list(answer.body)

            async def body():
                for part in parts:
                    await asyncio.sleep(0)
                    yield part

            answer.body = body()
        return answer

    async def main():
        async with AsyncClient(transport=answering(seen)) as client:
            first = await asummarise(client, "x")
        async with AsyncClient(transport=async_handler) as client:
            return first, await asummarise(client, "x")

    assert asyncio.run(main()) == (("Short.", "Short text."), ("Short.", "Short text."))
    assert len(seen) == 4


def flavored(flavor, handler, **options):
    return flavor.make(transport=handler, **options)


def test_an_error_status_through_a_handler_is_retried_then_raised(flavor):
    statuses = iter([429, 200])
    calls = []

    def busy_then_fine(request):
        calls.append(request)
        status = next(statuses, 400)
        body = (
            {"choices": [{"index": 0, "message": {"content": "ok"}}]} if status == 200 else {"error": {"message": "no"}}
        )
        return HTTPResponse(status, {"retry-after": "0"}, body)

    client = flavored(flavor, busy_then_fine, max_retries=2)
    assert flavor.chat(client).choices[0].message.content == "ok"
    assert len(calls) == 2  # the 429 was tried again, above the seam
    with pytest.raises(BadRequestError, match="400 Bad Request: no"):
        flavor.chat(client)


def test_a_redirect_through_a_handler_is_followed_and_the_token_stays_home(flavor):
    """Above the seam as over a socket: a 307 within the origin is followed with the method, body and token;
    one to another origin is refused with a clear error, and nothing is sent there."""
    calls = []

    def moving(request):
        calls.append(request)
        if request.url.endswith("/v1/chat/completions"):
            return HTTPResponse(307, {"Location": "/v2/chat/completions"}, b"")
        if request.url.endswith("/v2/chat/completions"):
            return HTTPResponse(200, {}, {"choices": [{"index": 0, "message": {"content": "moved"}}]})
        return HTTPResponse(307, {"Location": "http://127.0.0.2:9/v1/chat/completions"}, b"")

    client = flavored(flavor, moving, token=TOKEN)
    assert flavor.chat(client).choices[0].message.content == "moved"
    assert [call.url.split("/", 3)[3] for call in calls] == ["v1/chat/completions", "v2/chat/completions"]
    assert [call.json()["messages"] for call in calls] == [MESSAGES] * 2  # a 307 keeps the method and body
    assert calls[1].headers.get("Authorization") == f"Bearer {TOKEN}"
    elsewhere = flavored(flavor, moving, token=TOKEN, base_url="http://127.0.0.1:8/v0")
    calls.clear()
    with pytest.raises(OctoAIClientError, match="another origin") as caught:
        flavor.chat(elsewhere)
    assert [call.url for call in calls] == ["http://127.0.0.1:8/v0/chat/completions"]
    assert TOKEN not in str(caught.value)


def test_a_reset_mid_stream_through_a_handler(flavor):
    def cut(request):
        def body():
            yield sse_event(chunk(role="assistant"))
            yield sse_event(chunk("half"))
            raise ConnectionResetError("reset by the test")

        return HTTPResponse(200, {"Content-Type": "text/event-stream"}, body())

    got = []
    with pytest.raises(OctoAIConnectionError, match="reset by the test"):
        flavor.collect(flavored(flavor, cut), got)
    assert "half" in got


def test_the_deadline_bounds_a_handler_that_trickles(flavor):
    def trickle(request):
        def body():
            yield sse_event(chunk(role="assistant"))
            while True:
                time.sleep(0.1)
                yield b": ping\n\n"

        return HTTPResponse(200, {"Content-Type": "text/event-stream"}, body())

    started = time.monotonic()
    with pytest.raises(OctoAITimeoutError, match="deadline passed"):
        flavor.collect(flavored(flavor, trickle, deadline=0.5), [])
    assert time.monotonic() - started < 1.2


def test_an_empty_body_piece_from_a_handler_is_no_bytes_not_the_end(flavor):
    def with_gaps(request):
        body = [b""] + [piece for event in events("Short", " text.") for piece in (event, b"")]
        if flavor.name == "async":

            async def pieces():
                for piece in body:
                    yield piece

            return HTTPResponse(200, {"Content-Type": "text/event-stream"}, pieces())
        return HTTPResponse(200, {"Content-Type": "text/event-stream"}, iter(body))

    got = []
    assert flavor.collect(flavored(flavor, with_gaps), got).choices[0].message.content == "Short text."
    assert "".join(got) == "Short text."


def heartbeat_pieces():
    """A role chunk, then b"" every 50 ms for 3 s (nothing yet), then the rest: what a queue-fed handler sends."""
    yield sse_event(chunk(role="assistant"))
    give_up_at = time.monotonic() + 3
    while time.monotonic() < give_up_at:
        time.sleep(0.05)
        yield b""
    yield sse_event(chunk("late"))
    yield b"data: [DONE]\n\n"


def test_empty_body_pieces_from_a_handler_do_not_escape_the_deadline(flavor):
    def handler(request):
        return HTTPResponse(200, {"Content-Type": "text/event-stream"}, heartbeat_pieces())

    started = time.monotonic()
    with pytest.raises(OctoAITimeoutError, match="deadline passed"):
        flavor.collect(flavored(flavor, handler, deadline=0.5), [])
    assert time.monotonic() - started < 1.5


def test_empty_pieces_of_an_async_body_do_not_escape_the_deadline():
    async def body():
        for piece in heartbeat_pieces():  # sleeps in the loop's thread, as a careless handler would
            yield piece
            await asyncio.sleep(0)

    async def main():
        async with AsyncClient(transport=lambda request: HTTPResponse(200, {"Content-Type": "text/event-stream"},
                                                                      body()), deadline=0.5) as client:  # fmt: skip
            chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            async with chat_stream:
                return [piece async for piece in chat_stream]

    started = time.monotonic()
    with pytest.raises(OctoAITimeoutError, match="deadline passed"):
        asyncio.run(main())
    assert time.monotonic() - started < 1.5


def test_closing_a_stream_ends_a_read_that_waits_on_empty_pieces():
    """`close()` from another thread ends a read at once (the response's promise), empty pieces or not."""
    client = Client(transport=lambda request: HTTPResponse(200, {"Content-Type": "text/event-stream"},
                                                           heartbeat_pieces()))  # fmt: skip
    chat_stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    closer = threading.Timer(0.3, chat_stream.close)
    closer.start()
    started = time.monotonic()
    got = list(chat_stream)  # ends quietly once closed, as at the body's end
    closer.join()
    assert time.monotonic() - started < 1.5, "the read went on until the handler sent bytes"
    assert [piece.choices[0].delta.role for piece in got] == ["assistant"]


def test_a_handler_that_returns_something_else_is_a_clear_error(flavor):
    with pytest.raises(OctoAIClientError, match="must return an HTTPResponse"):
        flavor.chat(flavored(flavor, lambda request: {"choices": []}))
    with pytest.raises(OctoAIClientError, match="pieces must be bytes"):
        flavor.chat(flavored(flavor, lambda request: HTTPResponse(200, {}, iter(["text"]))))
    with pytest.raises(TypeError, match="transport must be a handler"):
        Client(transport="not callable")


# -- record against a real socket, replay offline --------------------------------


def scripted(server):
    """The loopback server's answers, in order: a completion, a stream, a 500, a stream cut mid-way."""
    server.script += [
        reply(200, None, headers={"x-request-id": "rec-1", "x-ratelimit-remaining-tokens": "99"}),
        stream(chat_events(WORDS)),
        reply(500, {"error": {"message": "the model fell over"}}),
        stream([sse_event(chunk("only this"))], cut=True),
    ]


def run_calls(flavor, client):
    """The calls both the recording and the replay make: (answers, chunks, errors)."""
    completion = flavor.chat(client)
    got = []
    folded = flavor.collect(client, got)
    errors = []
    for call in (lambda: flavor.chat(client, extra_body={"user": "fail"}),
                 lambda: flavor.collect(client, [], extra_body={"user": "cut"})):  # fmt: skip
        try:
            call()
        except octoai_lite.OctoAIError as exc:
            errors.append((type(exc), str(exc).split(" [request id")[0].split(" from ")[0]))
    return completion.dict(), completion.request_id, completion.rate_limits, got, folded.dict(), errors


def test_a_recording_replays_the_same_offline(server, flavor, tmp_path):
    path = tmp_path / "calls.jsonl"
    scripted(server)
    recorded = run_calls(flavor, flavor.make(transport=octoai_lite.record(path), max_retries=0))
    assert "".join(recorded[3]) == "".join(WORDS)  # the stream was real
    assert [kind for kind, _ in recorded[5]] == [OctoAIServerError, OctoAIConnectionError]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["end"] for line in lines] == ["whole", "whole", "whole", "cut"]
    assert len(server.requests) == 4
    server.script.clear()
    offline = flavor.make(transport=octoai_lite.replay(path), base_url="http://127.0.0.1:9/v1", max_retries=0)
    assert run_calls(flavor, offline) == recorded
    assert len(server.requests) == 4  # nothing reached the server


def test_closing_a_recording_client_closes_its_network_connections(server, tmp_path):
    server.script.append(reply(200, None))
    client = Client(base_url=server.url + "/v1", transport=octoai_lite.record(tmp_path / "calls.jsonl"))
    client.chat.completions.create(model="m", messages=MESSAGES)
    assert server.closed < server.connections  # kept alive for the next call
    client.close()
    give_up_at = time.monotonic() + 3
    while server.closed < server.connections and time.monotonic() < give_up_at:
        time.sleep(0.01)
    assert server.closed == server.connections


def test_a_shared_recording_closed_by_one_client_still_pools_for_the_other(tmp_path):
    with running(LoopbackServer()) as own:  # its own server: no other test's connections in the counts
        recording = octoai_lite.record(tmp_path / "calls.jsonl")
        first = Client(base_url=own.url + "/v1", transport=recording, max_retries=0)
        second = Client(base_url=own.url + "/v1", transport=recording, max_retries=0)
        first.chat.completions.create(model="m", messages=MESSAGES)
        first.close()
        before = own.connections
        for _ in range(3):
            second.chat.completions.create(model="m", messages=MESSAGES)
        assert own.connections - before == 1, "the second client kept no connection for its next call"
        second.close()
        give_up_at = time.monotonic() + 3
        while own.closed < own.connections and time.monotonic() < give_up_at:
            time.sleep(0.01)
        assert own.closed == own.connections, "the second client left a connection open"


def test_a_shared_recording_hides_each_clients_own_secret_headers(tmp_path):
    secret = "x-a-secret-7f3e9b2c4d6a8e0f1b3d5c7a"
    path = tmp_path / "calls.jsonl"
    with running(LoopbackServer()) as own:
        recording = octoai_lite.record(path)
        with Client(base_url=own.url + "/v1", transport=recording, secret_headers=("x-a",),
                    default_headers={"x-a": secret}) as first, Client(base_url=own.url + "/v1", transport=recording):
            first.chat.completions.create(model="m", messages=MESSAGES)
        assert own.requests[0].headers["x-a"] == secret
    assert not [piece for piece in pieces(secret) if piece in path.read_text()]


def test_a_replayed_stream_has_the_recorded_pieces_byte_for_byte(server, tmp_path):
    path = tmp_path / "stream.jsonl"
    server.script += [stream(chat_events(WORDS))]
    with Client(base_url=server.url + "/v1", transport=octoai_lite.record(path), max_retries=0) as client:
        list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    recorded = json.loads(path.read_text())["pieces"]
    assert "".join(recorded).encode() == b"".join(chat_events(WORDS))
    handler = octoai_lite.replay(path)
    request = octoai_lite.HTTPRequest("POST", "http://elsewhere/v1/chat/completions", {},
                                      json.dumps({"model": "m", "messages": MESSAGES, "stream": True}).encode(), 1.0)  # fmt: skip
    assert [piece.decode() for piece in handler(request).body] == recorded


# Every default secret header (Authorization is the token's), a caller-named one, and a cookie the server sets.
OTHER_SECRETS = {
    "x-api-key": "xk-" + "Gq7Lm2Vb9Tc4Rz8Ws1Nd6Hy3",
    "cookie": "session=" + "Pz5Kw8Jd2Mn7Qs4Vx1Tb9Rc6",
    "proxy-authorization": "Basic " + "Yj3Fh8Lq5Wd2Nc7Tk4Rb9Gs1",
}
SET_COOKIE = "sid=" + "Ue6Ma1Xp8Hz3Bd5Kw2Qn7Lt4"


def test_no_secret_reaches_the_recording(server, flavor, tmp_path):
    path = tmp_path / "secret.jsonl"
    echo = " ".join(["you sent", TOKEN, API_KEY, MY_KEY, *OTHER_SECRETS.values(), SET_COOKIE])
    server.script += [
        reply(
            200, {"choices": [{"index": 0, "message": {"content": echo}}]},
            headers={"x-echo": API_KEY, "Set-Cookie": SET_COOKIE + "; Path=/"},
        ),
        reply(401, {"error": {"message": echo}}, headers={"Set-Cookie": SET_COOKIE}),
    ]  # fmt: skip
    client = flavor.make(
        token=TOKEN, default_headers={"api-key": API_KEY, **OTHER_SECRETS}, secret_headers=("X-My-Key",),
        transport=octoai_lite.record(path),
    )  # fmt: skip
    flavor.chat(client, extra_headers={"x-my-key": MY_KEY})
    with pytest.raises(octoai_lite.AuthenticationError):
        flavor.chat(client, extra_headers={"x-my-key": MY_KEY})
    assert server.requests[0].headers["api-key"] == API_KEY  # it went out to the server, not to the file
    for name, value in OTHER_SECRETS.items():
        assert server.requests[0].headers[name] == value
    text = path.read_text()
    for secret in (TOKEN, API_KEY, MY_KEY, *OTHER_SECRETS.values(), SET_COOKIE):
        assert not [piece for piece in pieces(secret) if piece in text], secret


def test_a_secret_repeated_in_an_ordinary_request_header_stays_out_of_the_recording(server, tmp_path):
    path = tmp_path / "echo.jsonl"
    server.script.append(reply(200, None))
    headers = {"x-debug": "sent with " + TOKEN}  # not a secret header: its value is recorded, the token taken out
    with Client(base_url=server.url + "/v1", token=TOKEN, default_headers=headers,
                transport=octoai_lite.record(path)) as client:  # fmt: skip
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert server.requests[0].headers["x-debug"] == "sent with " + TOKEN
    recorded = {name.lower(): value for name, value in json.loads(path.read_text())["headers"].items()}
    assert recorded["x-debug"] == "sent with ***"
    assert not [piece for piece in pieces(TOKEN) if piece in path.read_text()]


def test_a_replay_miss_names_the_nearest_recorded_request(tmp_path):
    path = tmp_path / "one.jsonl"
    entry = {"method": "POST", "url": "http://h/v1/chat/completions", "headers": {},
             "body": json.dumps({"model": "m", "messages": [{"role": "user", "content": "Seattle"}]}),
             "status": 200, "response_headers": {}, "pieces": ["{}"], "end": "whole"}  # fmt: skip
    path.write_text(json.dumps(entry) + "\n")
    client = Client(transport=octoai_lite.replay(path))
    with pytest.raises(OctoAIClientError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Portland"}])
    message = str(caught.value)
    assert "no answer recorded" in message and "Portland" in message
    assert "the nearest recorded: POST /v1/chat/completions" in message and "Seattle" in message
    with pytest.raises(ValueError, match="cannot read the recording"):
        octoai_lite.replay(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1 is not a recorded exchange"):
        octoai_lite.replay(tmp_path / "bad.jsonl")


def test_the_environment_switches_record_and_replay(server, tmp_path, monkeypatch):
    path = tmp_path / "env.jsonl"
    server.script += [reply(200, None)]
    monkeypatch.setenv("OCTOAI_RECORD", str(path))
    with Client(base_url=server.url + "/v1") as client:
        recorded = client.chat.completions.create(model="m", messages=MESSAGES).dict()
    monkeypatch.delenv("OCTOAI_RECORD")
    monkeypatch.setenv("OCTOAI_REPLAY", str(path))
    with Client(base_url="http://127.0.0.1:9/v1") as client:
        assert client.chat.completions.create(model="m", messages=MESSAGES).dict() == recorded


def test_the_environment_switches_record_and_replay_for_the_async_client(server, tmp_path, monkeypatch):
    path = tmp_path / "aenv.jsonl"
    server.script += [stream(chat_events(WORDS))]

    async def ask(base_url):
        async with AsyncClient(base_url=base_url, max_retries=0) as client:
            chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            return [chunk.dict() async for chunk in chat_stream]

    monkeypatch.setenv("OCTOAI_RECORD", str(path))
    recorded = asyncio.run(ask(server.url + "/v1"))
    monkeypatch.delenv("OCTOAI_RECORD")
    monkeypatch.setenv("OCTOAI_REPLAY", str(path))
    assert asyncio.run(ask("http://127.0.0.1:9/v1")) == recorded
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in recorded) == "".join(WORDS)


def test_the_command_line_records_then_replays(server, tmp_path, capsys):
    path = tmp_path / "cli.jsonl"
    server.script += [stream(chat_events(WORDS))]
    base = ["--base-url", server.url + "/v1", "--max-retries", "0"]
    assert octoai_lite.main(base + ["--record", str(path), "Write a haiku"]) == 0
    recorded = capsys.readouterr().out
    assert recorded == "".join(WORDS) + "\n"
    assert octoai_lite.main(["--base-url", "http://127.0.0.1:9/v1", "--replay", str(path), "Write a haiku"]) == 0
    assert capsys.readouterr().out == recorded
    assert octoai_lite.main(["--replay", str(path), "Another prompt"]) == 1
    assert "no answer recorded" in capsys.readouterr().err
    assert octoai_lite.main(["--replay", str(path), "   "]) == 2  # a blank prompt is a usage error


# -- the recording shipped in the repo ---------------------------------------------

GUIDE = HERE / "recordings" / "guide.jsonl"


@pytest.mark.skipif(not GUIDE.exists(), reason="recordings/guide.jsonl is made by integration/real_model.py --record")
def test_the_shipped_recording_answers_the_command_line_offline():
    done = subprocess.run(
        [sys.executable, str(HERE / "octoai_lite.py"), "--replay", str(GUIDE), "Write a blog about Seattle"],
        capture_output=True, text=True, timeout=30, cwd=str(HERE),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    recorded = [json.loads(line) for line in GUIDE.read_text().splitlines()]
    cli = [entry for entry in recorded if '"Write a blog about Seattle"' in entry["body"]]
    assert cli, "the recording has the command line's call"
    assert len(done.stdout.strip()) > 100 and done.stdout.split()[0] in "".join(cli[-1]["pieces"])
    assert "sk-" not in GUIDE.read_text()


@pytest.mark.skipif(not GUIDE.exists(), reason="recordings/guide.jsonl is made by integration/real_model.py --record")
@pytest.mark.parametrize("name", ["GUIDE_PLAIN", "GUIDE_STREAM"])
def test_the_shipped_recording_replays_the_guides_snippets(name, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE / "integration"))
    import llama_env

    code = llama_env.with_octoai_lite(getattr(llama_env, name))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HERE), "OCTOAI_REPLAY": str(GUIDE), "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    recorded = "".join("".join(json.loads(line)["pieces"]) for line in GUIDE.read_text().splitlines())
    words = [word for word in done.stdout.split() if word.isalpha() and len(word) > 4][:20]
    assert len(words) >= 10 and all(word in recorded for word in words)  # the recorded model's own text


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_child_forked_while_a_recording_is_being_written_can_record(tmp_path):
    """Another thread holds the recording's lock at the fork: the child's own write must not wait for it."""
    script = f"""
import os, sys, threading
sys.path.insert(0, {str(HERE)!r})
import octoai_lite
from octoai_lite import HTTPRequest, HTTPResponse
recording = octoai_lite.record({str(tmp_path / "fork.jsonl")!r}, lambda request: HTTPResponse(200, {{}}, b"{{}}"))
held, release = threading.Event(), threading.Event()
def hold():
    with recording._lock:
        held.set()
        release.wait()
threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    recording(HTTPRequest("GET", "http://h/v1/models", {{}}, b"", 5.0))
    os._exit(0)
_, status = os.waitpid(pid, 0)
release.set()
print(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status)
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child waited for a lock its parent's thread held")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert (tmp_path / "fork.jsonl").read_text().count("\n") == 1  # the child's exchange, written
