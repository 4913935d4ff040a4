"""The HTTP engine both clients share, over real loopback sockets: no http.client
or urllib.request, 1xx answers, no re-sent POSTs, stale and dirty pooled
connections, deadlines, the grace after [DONE], closes from another thread,
early error answers, interrupted reads, header framing, and the async pool."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import octoai_lite
from conftest import MESSAGES, chat_events, chunk, completion_body, delta_text, reply, reset, sse_event
from octoai_lite import (
    AuthenticationError,
    OctoAIClientError,
    OctoAIConnectionError,
    OctoAIError,
    OctoAITimeoutError,
)

HERE = os.path.dirname(os.path.abspath(__file__))
FULL_TEXT = "Hello from the loopback server."


# -- bytes the raw server writes -------------------------------------------------


def answer(content, *, head_end=b"\r\n", extra_headers=b""):
    """A whole JSON completion answer with Content-Length; `head_end` ends each head line."""
    body = json.dumps(completion_body(content)).encode()
    lines = [b"HTTP/1.1 200 OK", b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    head = head_end.join(lines) + head_end + extra_headers + head_end
    return head + body


def json_answer(status, reason, payload, *, close=False):
    body = json.dumps(payload).encode()
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (status, reason, len(body))
    return head + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body


def sse_head():
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def content(completion):
    return completion.choices[0].message.content


def wait_for_close(sock, seconds):
    """Read and drop whatever comes until the client hangs up or `seconds` pass."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def keep_alive(pieces_for, pause=0.0):
    """A raw handler answering every request on a connection with the byte pieces of
    `pieces_for(n)`, n counting requests from 1 across connections."""

    def handler(sock, server):
        while server.read_request(sock) is not None:
            for piece in pieces_for(len(server.requests)):
                sock.sendall(piece)
                if pause:
                    time.sleep(pause)

    return handler


def raw_client(flavor, raw_server, **kwargs):
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 2)
    return flavor.make(base_url=raw_server.url + "/v1", **kwargs)


# =============================================================================
# No http.client, no urllib.request
# =============================================================================

NO_HTTP_CLIENT_SCRIPT = r"""
import json, sys
import octoai_lite

base_url, flavor = sys.argv[1], sys.argv[2]
messages = [{"role": "user", "content": "hi"}]
if flavor == "sync":
    with octoai_lite.Client(base_url=base_url, timeout=5, max_retries=0) as client:
        whole = client.chat.completions.create(model="m", messages=messages).choices[0].message.content
        with client.chat.completions.create(model="m", messages=messages, stream=True) as chat_stream:
            streamed = "".join(c.choices[0].delta.content or "" for c in chat_stream if c.choices)
else:
    import asyncio

    async def go():
        async with octoai_lite.AsyncClient(base_url=base_url, timeout=5, max_retries=0) as client:
            completion = await client.chat.completions.create(model="m", messages=messages)
            pieces = []
            async with await client.chat.completions.create(model="m", messages=messages, stream=True) as s:
                async for c in s:
                    if c.choices:
                        pieces.append(c.choices[0].delta.content or "")
            return completion.choices[0].message.content, "".join(pieces)

    whole, streamed = asyncio.run(go())
loaded = [name for name in ("http.client", "urllib.request") if name in sys.modules]
print(json.dumps({"whole": whole, "streamed": streamed, "loaded": loaded}))
"""


def test_requests_and_streams_never_import_http_client_or_urllib_request(server, flavor):
    """A fresh interpreter: a whole answer and a stream, and neither module was ever imported."""
    done = subprocess.run(
        [sys.executable, "-c", NO_HTTP_CLIENT_SCRIPT, server.url + "/v1", flavor.name],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["whole"] and result["streamed"] == FULL_TEXT
    assert result["loaded"] == []


# =============================================================================
# Interim 1xx answers
# =============================================================================

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"


@pytest.mark.parametrize(
    "interim",
    [b"HTTP/1.1 100 Continue\r\n\r\n", EARLY_HINTS, b"HTTP/1.1 100 Continue\r\n\r\n" + EARLY_HINTS],
    ids=["100", "103", "100+103"],
)
def test_interim_answers_are_skipped_and_the_next_call_gets_its_own(raw_server, flavor, interim):
    """1xx heads before the real 200 are skipped; the call after reads its own answer."""
    raw_server.handler = keep_alive(lambda n: [interim, answer(f"answer {n}")], pause=0.02)
    client = raw_client(flavor, raw_server)
    assert content(flavor.chat(client)) == "answer 1"
    assert content(flavor.chat(client)) == "answer 2"
    assert content(flavor.chat(client)) == "answer 3"


# =============================================================================
# A POST that went out whole is never re-sent
# =============================================================================


def hang_up(sock, how):
    if how == "reset":
        reset(sock)
    else:
        sock.close()  # everything sent was read: a plain FIN


@pytest.mark.parametrize("how", ["reset", "eof"])
def test_post_cut_before_any_answer_on_a_fresh_connection_is_not_resent(raw_server, flavor, how):
    """A reset or EOF after the whole POST went out: request_sent, one POST, even with retries."""

    def read_then_hang_up(sock, server):
        server.read_request(sock)
        hang_up(sock, how)

    raw_server.handler = read_then_hang_up
    client = raw_client(flavor, raw_server, max_retries=3)
    with pytest.raises(OctoAIConnectionError) as info:
        flavor.chat(client)
    assert info.value.request_sent is True
    assert len(raw_server.requests) == 1 and raw_server.accepted == 1


@pytest.mark.parametrize("how", ["reset", "eof"])
def test_post_cut_before_any_answer_on_a_reused_connection_is_not_resent(raw_server, flavor, how):
    """The same on a keep-alive connection that already served one answer: the second POST
    is not sent again on a new connection."""

    def handler(sock, server):
        first = server.accepted == 1
        server.read_request(sock)
        sock.sendall(answer(f"answer {len(server.requests)}"))
        if first:
            server.read_request(sock)  # the whole second POST, then no answer at all
            hang_up(sock, how)
            return
        while server.read_request(sock):  # a re-sent POST would be answered here
            sock.sendall(answer(f"answer {len(server.requests)}"))

    raw_server.handler = handler
    client = raw_client(flavor, raw_server, max_retries=3)
    assert content(flavor.chat(client)) == "answer 1"
    with pytest.raises(OctoAIConnectionError) as info:
        flavor.chat(client)
    assert info.value.request_sent is True
    assert len(raw_server.requests) == 2 and raw_server.accepted == 1


@pytest.mark.parametrize("how", ["reset", "eof"])
def test_pooled_connection_closed_while_idle_is_replaced_silently(raw_server, flavor, how):
    """Closed by the server before the client wrote anything: a new connection, not a retry."""
    hung_up = threading.Event()

    def one_answer_then_hang_up(sock, server):
        server.read_request(sock)
        sock.sendall(answer(f"answer {len(server.requests)}"))
        time.sleep(0.05)
        hang_up(sock, how)
        hung_up.set()

    raw_server.handler = one_answer_then_hang_up
    client = raw_client(flavor, raw_server, max_retries=0)
    assert content(flavor.chat(client)) == "answer 1"
    assert hung_up.wait(2)
    time.sleep(0.1)  # the FIN or RST reaches the idle connection
    assert content(flavor.chat(client)) == "answer 2"
    assert raw_server.accepted == 2 and len(raw_server.requests) == 2


# =============================================================================
# An idle pooled connection with unread bytes
# =============================================================================


@pytest.mark.parametrize("when", ["with the answer", "while idle"])
def test_pooled_connection_with_stray_bytes_is_not_reused(raw_server, flavor, when):
    """Bytes after the answer (here a whole bogus answer) retire the connection; the next
    call opens a new one and reads its own answer, never the stray one."""
    stray = answer("stray")
    stray_sent = threading.Event()

    def handler(sock, server):
        first = server.accepted == 1
        while server.read_request(sock) is not None:
            own = answer(f"answer {len(server.requests)}")
            if first and when == "with the answer":
                sock.sendall(own + stray)
                stray_sent.set()
            elif first:
                sock.sendall(own)
                time.sleep(0.05)
                sock.sendall(stray)  # arrives while the connection sits idle in the pool
                stray_sent.set()
            else:
                sock.sendall(own)

    raw_server.handler = handler
    client = raw_client(flavor, raw_server)
    assert content(flavor.chat(client)) == "answer 1"
    assert stray_sent.wait(2)
    time.sleep(0.1)  # the stray bytes reach the idle connection
    assert content(flavor.chat(client)) == "answer 2"
    assert raw_server.accepted == 2


# =============================================================================
# Deadlines and the grace after [DONE]
# =============================================================================


def test_deadline_bounds_a_head_sent_one_byte_at_a_time(raw_server, flavor):
    """A status line and headers trickling in every 0.2 s never trip `timeout`; the deadline stops it."""
    data = answer("never", extra_headers=b"X-Padding: " + b"p" * 200 + b"\r\n")

    def trickle(sock, server):
        server.read_request(sock)
        stop_at = time.monotonic() + 3  # bounded, whatever the client does
        for i in range(len(data)):
            if time.monotonic() > stop_at:
                return
            sock.sendall(data[i : i + 1])
            time.sleep(0.2)

    raw_server.handler = trickle
    client = raw_client(flavor, raw_server, timeout=5, deadline=1)
    started = time.monotonic()
    with pytest.raises(OctoAIError) as info:
        flavor.chat(client)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed <= 1.5, f"ended after {elapsed:.2f} s: {info.value!r}"
    assert isinstance(info.value, OctoAITimeoutError), repr(info.value)


def test_pings_after_done_end_the_stream_within_the_total_grace(raw_server, flavor):
    """After [DONE] a server sends `: ping` every 0.1 s, never ending the chunked body: the
    grace is a total, not per read, so the stream ends complete and promptly."""
    assert octoai_lite._DONE_GRACE_S == 0.5  # conftest's autouse fixture

    def done_then_pings(sock, server):
        server.read_request(sock)
        sock.sendall(sse_head() + b"".join(chunked(event) for event in chat_events()))
        stop_at = time.monotonic() + 3  # bounded: then a cut without the last chunk
        while time.monotonic() < stop_at:
            time.sleep(0.1)
            sock.sendall(chunked(b": ping\n\n"))

    raw_server.handler = done_then_pings
    client = raw_client(flavor, raw_server, timeout=5)
    got = []
    started = time.monotonic()
    completion = flavor.collect(client, got)
    elapsed = time.monotonic() - started
    assert content(completion) == FULL_TEXT and "".join(piece or "" for piece in got) == FULL_TEXT
    assert elapsed < 1.5, f"the stream ended {elapsed:.2f} s after [DONE]"


# =============================================================================
# Closing a stream while another thread or task reads it
# =============================================================================


def test_close_from_another_thread_or_task_stops_a_blocked_read(raw_server, flavor):
    """One event, then silence (timeout=10): close() returns at once and the reader stops
    promptly, by ending or with an OctoAIError, not at the timeout."""

    def one_event_then_stall(sock, server):
        server.read_request(sock)
        sock.sendall(sse_head() + chunked(sse_event(chunk("a"))))
        wait_for_close(sock, 3)

    raw_server.handler = one_event_then_stall
    client = raw_client(flavor, raw_server, timeout=10)
    times, outcome = {}, {}  # outcome: what close() raised, how the reader ended

    if flavor.name == "sync":
        chat_stream = flavor.chat(client, stream=True)
        assert delta_text(next(chat_stream)) == "a"

        def close_soon():
            time.sleep(0.2)
            times["close"] = time.monotonic()
            try:
                chat_stream.close()
            except Exception as exc:  # noqa: BLE001 - checked below
                outcome["close"] = exc
            times["closed"] = time.monotonic()

        closer = threading.Thread(target=close_soon, daemon=True)
        closer.start()
        try:
            for _ in chat_stream:
                pass
        except Exception as exc:  # noqa: BLE001 - checked below
            outcome["reader"] = exc
        times["stopped"] = time.monotonic()
        closer.join(5)
        assert "closed" in times, "close() did not return"
    else:

        async def go():
            chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            assert delta_text(await chat_stream.__anext__()) == "a"

            async def read_rest():
                try:
                    async for _ in chat_stream:
                        pass
                except Exception as exc:  # noqa: BLE001 - checked below
                    outcome["reader"] = exc
                times["stopped"] = time.monotonic()

            reader = asyncio.ensure_future(read_rest())
            await asyncio.sleep(0.2)
            times["close"] = time.monotonic()
            try:
                await chat_stream.aclose()
            except Exception as exc:  # noqa: BLE001 - checked below
                outcome["close"] = exc
            times["closed"] = time.monotonic()
            await asyncio.wait([reader], timeout=2)
            reader.cancel()

        flavor.run(go())

    assert times["closed"] - times["close"] < 0.5, f"close() took {times['closed'] - times['close']:.2f} s"
    assert "stopped" in times and times["stopped"] - times["close"] < 1.0, f"the reader ran on: {times}"
    assert "close" not in outcome, f"close() raised {outcome['close']!r}"
    assert isinstance(outcome.get("reader"), (type(None), OctoAIError)), f"the reader got {outcome['reader']!r}"


# =============================================================================
# Early error answers to a large body
# =============================================================================


@pytest.mark.parametrize(
    "status, reason, message, cls",
    [
        (413, b"Payload Too Large", "too big", OctoAIClientError),
        (401, b"Unauthorized", "bad token", AuthenticationError),
    ],
)
def test_early_error_answer_to_a_large_body_is_raised_not_lost(raw_server, flavor, status, reason, message, cls):
    """The server reads the head only, answers, and closes without reading the 20 MB body:
    the typed error with the server's message, after one attempt (max_retries=2)."""

    def answer_before_the_body(sock, server):
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                return
            data += more
        server.requests.append((data.partition(b"\r\n\r\n")[0], b""))
        sock.sendall(json_answer(status, reason, {"error": {"message": message}}, close=True))
        # closing with the body unread resets the connection

    raw_server.handler = answer_before_the_body
    client = raw_client(flavor, raw_server, max_retries=2, timeout=5)
    started = time.monotonic()
    with pytest.raises(OctoAIError) as info:
        flavor.infer(client, raw_server.url + "/upload", {"x": "a" * 20_000_000})
    assert isinstance(info.value, cls), repr(info.value)
    assert info.value.status_code == status and message in str(info.value)
    assert raw_server.accepted == 1 and len(raw_server.requests) == 1
    assert time.monotonic() - started < 3


# =============================================================================
# An interrupted body read frees its pool slot
# =============================================================================


def stall_or_answer(sock, server):
    """/stall: headers saying 1000 bytes, ten of them, then silence until the client hangs up
    (counted in `server.stalled` while it lasts); anything else: JSON."""
    while True:
        request = server.read_request(sock)
        if request is None:
            return
        if request[0].split(b" ")[1].startswith(b"/stall"):
            with server.lock:
                server.stalled += 1
            try:
                sock.sendall(
                    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a": 12345'
                )
                wait_for_close(sock, 3)
            finally:
                with server.lock:
                    server.stalled -= 1
            return
        sock.sendall(json_answer(200, b"OK", {"ok": True}))


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def test_interrupted_body_reads_free_their_pool_slots(raw_server, flavor):
    """20 reads cut mid-body (KeyboardInterrupt from SIGALRM; a cancelled task), five times what the
    pool holds per host (max_connections=4): every one reaches the server, each cut closes its
    connection, and the next call to the same host still goes through at once. A client that
    leaked the slot of a cut read would be out of slots after four."""
    raw_server.handler = stall_or_answer
    raw_server.lock, raw_server.stalled = threading.Lock(), 0
    client = raw_client(flavor, raw_server, timeout=5, max_connections=4)
    stall_url, ok_url = raw_server.url + "/stall", raw_server.url + "/ok"
    if flavor.name == "sync":
        previous = signal.signal(signal.SIGALRM, _raise_keyboard_interrupt)
        try:
            for _ in range(20):
                with pytest.raises(KeyboardInterrupt):
                    try:
                        signal.setitimer(signal.ITIMER_REAL, 0.1)
                        flavor.infer(client, stall_url, {})
                    finally:
                        signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)
    else:

        async def interrupt_all():
            for _ in range(20):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.infer(stall_url, {}), 0.1)

        flavor.run(interrupt_all())
    stalls = [head for head, _ in raw_server.requests if head.split(b" ")[1].startswith(b"/stall")]
    assert len(stalls) == 20, f"only {len(stalls)} of the 20 cut reads reached the server"
    started = time.monotonic()
    assert flavor.infer(client, ok_url, {}, timeout=2) == {"ok": True}
    assert time.monotonic() - started < 1
    stop_at = time.monotonic() + 1
    while raw_server.stalled and time.monotonic() < stop_at:
        time.sleep(0.01)
    assert raw_server.stalled == 0, f"{raw_server.stalled} connections of cut reads are still open"


# =============================================================================
# Header framing
# =============================================================================


@pytest.mark.parametrize("head_end", [b"\n", b"\r\n\n"], ids=["bare LF", "mixed"])
def test_bare_lf_header_lines_are_accepted(raw_server, flavor, head_end):
    """Head lines ended by LF alone (and a mix): read, framed, and the connection still usable."""

    def pieces(n):
        if head_end == b"\n":
            return [answer(f"answer {n}", head_end=b"\n")]
        body = json.dumps(completion_body(f"answer {n}")).encode()
        return [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\nContent-Length: %d\r\n\n%s" % (len(body), body)]

    raw_server.handler = keep_alive(pieces)
    client = raw_client(flavor, raw_server, timeout=1)
    assert content(flavor.chat(client)) == "answer 1"
    assert content(flavor.chat(client)) == "answer 2"


BODY = json.dumps(completion_body("framed")).encode()


@pytest.mark.parametrize(
    "length_headers",
    [
        "Content-Length: \N{SUPERSCRIPT TWO}\r\n".encode("latin-1"),
        b"Content-Length: -1\r\n",
        b"Content-Length: 1, 2\r\n",
        b"Content-Length: 0x10\r\n",
        b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(BODY), len(BODY) + 5),
    ],
    ids=["superscript", "negative", "list", "hex", "two different"],
)
def test_malformed_content_length_is_an_octoai_error_at_once(raw_server, flavor, length_headers):
    """A Content-Length that frames nothing is a typed error when the head arrives; no raw
    ValueError, no wait for the connection to close or time out."""

    def bad_length(sock, server):
        server.read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + length_headers + b"\r\n" + BODY)
        wait_for_close(sock, 3)

    raw_server.handler = bad_length
    client = raw_client(flavor, raw_server, timeout=2)
    started = time.monotonic()
    with pytest.raises(OctoAIError):
        flavor.chat(client)
    assert time.monotonic() - started < 1


# =============================================================================
# The async pool
# =============================================================================


def one_connection_async_client(base_url):
    options = dict(base_url=base_url, timeout=3, max_retries=0)
    try:
        return octoai_lite.AsyncClient(max_connections=1, **options)
    except TypeError:  # no max_connections= yet: today's pool attribute
        client = octoai_lite.AsyncClient(**options)
        client._transport.pool.max_per_host = 1
        return client


def test_async_pool_waiter_cancelled_after_wake_passes_the_slot_on(server):
    """One connection: A streams, B and C wait; A lets go and B, just woken, is cancelled.
    C gets the connection at once, not when its own wait times out."""

    async def go():
        client = one_connection_async_client(server.url + "/v1")
        try:
            held = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            await held.__anext__()
            task_b = asyncio.ensure_future(client.chat.completions.create(model="m", messages=MESSAGES))
            task_c = asyncio.ensure_future(client.chat.completions.create(model="m", messages=MESSAGES))
            await asyncio.sleep(0.1)
            assert not task_b.done() and not task_c.done()  # both wait for the one connection
            await held.aclose()
            task_b.cancel()  # woken by the release, cancelled before it ran
            released = time.monotonic()
            await asyncio.wait([task_c], timeout=1.0)
            waited = time.monotonic() - released
            if not task_c.done():
                task_c.cancel()
            await asyncio.gather(task_b, task_c, return_exceptions=True)
            assert task_b.cancelled()
            assert task_c.done() and not task_c.cancelled(), f"C still waited {waited:.2f} s after the release"
            assert content(task_c.result()) and waited < 1.0
        finally:
            await client.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(go())
    finally:
        loop.close()


# =============================================================================
# Found by a hostile review
# =============================================================================


def read_head_only(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return None
        data += more
    return data.partition(b"\r\n\r\n")[0]


def test_a_request_not_sent_whole_never_leaves_its_connection_for_reuse(raw_server, flavor):
    """An early 413 on a keep-alive connection while the body is still going out: the next call gets a new one."""
    calls = []

    def handler(sock, server):
        calls.append(1)
        if len(calls) == 1:
            read_head_only(sock)
            sock.sendall(json_answer(413, b"Content Too Large", {"error": {"message": "too big"}}))
            time.sleep(1.5)  # keep the connection open, the body unread
            return
        while server.read_request(sock) is not None:
            sock.sendall(answer("second"))

    raw_server.handler = handler
    client = raw_client(flavor, raw_server, timeout=0.5)
    with pytest.raises(OctoAIClientError, match="too big"):
        flavor.infer(client, raw_server.url + "/upload", {"x": "a" * 20_000_000})
    assert content(flavor.chat(client)) == "second"
    assert raw_server.accepted == 2  # the half-sent connection was not reused


def test_a_post_reset_before_its_body_went_out_is_resent_by_both_clients(raw_server, flavor):
    """Reset after the head of an 8 MiB POST: nothing says the server acted, so both clients try again."""
    calls = []

    def handler(sock, server):
        calls.append(1)
        if len(calls) < 3:
            read_head_only(sock)
            reset(sock)
            return
        while server.read_request(sock) is not None:
            sock.sendall(json_answer(200, b"OK", {"ok": True}))

    raw_server.handler = handler
    client = raw_client(flavor, raw_server, max_retries=2, timeout=5)
    assert flavor.infer(client, raw_server.url + "/upload", {"x": "a" * 8_000_000}) == {"ok": True}
    assert len(calls) == 3


def test_paths_a_request_line_cannot_carry_are_percent_encoded(server, flavor):
    client = flavor.make(base_url=server.url + "/v1 ")  # a .env file's trailing space
    flavor.chat(client)
    assert server.requests[-1].path == "/v1/chat/completions"
    assert flavor.infer(client, server.url + "/echo/模型 x", {})["path"] == "/echo/%E6%A8%A1%E5%9E%8B%20x"


def test_an_answer_over_the_body_limit_says_so(raw_server, flavor):
    limit = octoai_lite._MAX_BODY_BYTES

    def huge(sock, server):
        server.read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (limit + 10))
        block = b" " * 1_048_576
        for _ in range(limit // len(block) + 1):
            sock.sendall(block)

    raw_server.handler = huge
    client = raw_client(flavor, raw_server, timeout=5)
    with pytest.raises(octoai_lite.OctoAIValidationError, match="larger than"):
        flavor.chat(client)


def test_final_completion_of_a_failed_stream_raises_its_error(raw_server, flavor):
    def cut(sock, server):
        server.read_request(sock)
        sock.sendall(sse_head() + chunked(sse_event(chunk("Hello"))) + b"40\r\ndata: {")
        sock.shutdown(2)

    raw_server.handler = cut
    client = raw_client(flavor, raw_server)
    if flavor.name == "sync":
        chat_stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(OctoAIConnectionError):
            list(chat_stream)
        with pytest.raises(OctoAIConnectionError):
            chat_stream.get_final_completion()  # not the partial text as if it were the answer
        return

    async def go():
        chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(OctoAIConnectionError):
            async for _ in chat_stream:
                pass
        with pytest.raises(OctoAIConnectionError):
            await chat_stream.get_final_completion()

    flavor.run(go())


def test_a_freed_slot_wakes_a_waiter_for_that_host(server, make_client):
    """Waiters for two hosts: a slot freed on one never goes to a waiter for the other and is lost."""
    from conftest import LoopbackServer, running, stream as slow_stream

    with running(LoopbackServer()) as other:
        client = make_client(max_connections=1, timeout=5)
        urls = {"a": server.url + "/v1", "b": other.url + "/v1"}
        for each in (server, other):
            each.script += [slow_stream(delay=0.1), slow_stream()]
        holders = {name: client.with_options().infer_stream(url + "/chat/completions", {"model": "m", "messages": MESSAGES, "stream": True}) for name, url in urls.items()}
        took = {}

        def wait_for(name):
            started = time.monotonic()
            list(client.infer_stream(urls[name] + "/chat/completions", {"model": "m", "messages": MESSAGES, "stream": True}))
            took[name] = time.monotonic() - started

        waiters = [threading.Thread(target=wait_for, args=(name,)) for name in ("a", "b")]
        for waiter in waiters:
            waiter.start()
        time.sleep(0.2)
        holders["b"].close()  # frees b's slot only
        time.sleep(0.3)
        assert "b" in took and took["b"] < 0.6, took  # b's waiter got it, not a's
        holders["a"].close()
        for waiter in waiters:
            waiter.join(5)
        assert set(took) == {"a", "b"}


def test_an_unasked_101_never_leaves_its_connection_for_reuse(raw_server, flavor):
    def handler(sock, server):
        while server.read_request(sock) is not None:
            if len(server.requests) == 1:
                sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
            else:
                sock.sendall(answer("after"))

    raw_server.handler = handler
    client = raw_client(flavor, raw_server)
    with pytest.raises(OctoAIError):
        flavor.chat(client)
    assert content(flavor.chat(client)) == "after"
    assert raw_server.accepted == 2


def test_a_callers_accept_encoding_replaces_the_default(raw_server, flavor):
    raw_server.handler = keep_alive(lambda n: [answer("ok")])
    client = raw_client(flavor, raw_server)
    flavor.chat(client, extra_headers={"Accept-Encoding": "br"})
    flavor.chat(client)
    (first, _), (second, _) = raw_server.requests
    assert [line for line in first.lower().split(b"\r\n") if line.startswith(b"accept-encoding")] == [b"accept-encoding: br"]
    assert b"accept-encoding: identity" in second.lower().split(b"\r\n")


def test_redirects_are_counted_per_attempt(server, flavor):
    """Three redirects then a 503, three redirects then the answer: six in all, never five in one attempt."""
    hop = reply(307, "", headers={"Location": "/v1/chat/completions"})
    server.script += [hop] * 3 + [reply(503, {"error": {"message": "busy"}}, headers={"retry-after-ms": "1"})]
    server.script += [hop] * 3 + [reply(200, completion_body("there"))]
    client = flavor.make(max_retries=1)
    assert content(flavor.chat(client)) == "there"
    assert len(server.requests) == 8


def test_the_deadline_bounds_a_proxy_that_trickles_the_tunnel(raw_server, flavor, monkeypatch):
    def trickling_proxy(sock, server):
        read_head_only(sock)  # the CONNECT, answered a byte every 0.2 s for 3 s
        for byte in (b"HTTP/1.1 200 Connection established" + b" " * 100)[:15]:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)

    raw_server.handler = trickling_proxy
    monkeypatch.setenv("HTTPS_PROXY", raw_server.url)
    client = flavor.make(base_url="https://127.0.0.1:9/v1", timeout=5, deadline=1)
    started = time.monotonic()
    with pytest.raises(OctoAITimeoutError):
        flavor.chat(client)
    assert time.monotonic() - started < 1.6


def test_an_international_host_goes_out_in_its_ascii_form():
    route = octoai_lite._Route("http://bücher.example:8080/v1 x/ü", {})
    assert route.host_header == "xn--bcher-kva.example:8080"
    assert route.target == "/v1%20x/%C3%BC"
