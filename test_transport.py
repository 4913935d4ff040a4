"""The transport over real loopback sockets: keep-alive, threads, retries,
timeouts, deadlines, proxies, TLS, redirects, and byte-exact faults."""

from __future__ import annotations

import asyncio
import email.utils
import gc
import json
import logging
import socket
import threading
import time

import pytest

import octoai_lite
from conftest import (
    MESSAGES,
    WORDS,
    LoopbackServer,
    open_fds,
    chunk,
    completion_body,
    reply,
    reset,
    running,
    sse_event,
    stream,
)
from octoai_lite import (
    BadRequestError,
    NotFoundError,
    OctoAIClientError,
    OctoAIConnectionError,
    OctoAIServerError,
    OctoAITimeoutError,
    RateLimitError,
)

TOKEN = "sk-transport-secret-999"


def chat(client, **kwargs):
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], **kwargs)


# =============================================================================
# Keep-alive
# =============================================================================


def test_sequential_requests_share_one_connection(server, flavor):
    client = flavor.make()
    for _ in range(100):
        flavor.chat(client)
    assert server.connections == 1
    assert len({r.port for r in server.requests}) == 1


def test_keep_alive_holds_with_descriptors_above_1023(server, flavor):
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2048), hard))
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # push new sockets past select()'s limit
    try:
        client = flavor.make()
        for _ in range(3):
            flavor.chat(client)
        assert server.connections == 1
    finally:
        for fd in spare:
            os.close(fd)


def test_streams_read_to_the_end_return_their_connection(server, flavor):
    client = flavor.make()
    for _ in range(5):
        assert flavor.collect(client, []).choices[0].message.content
    assert server.connections == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_client_dropped_unclosed_closes_its_sockets_before_any_finalizer(server, kind):
    """A client sits in a reference cycle (its namespaces), so the garbage collector frees it and
    calls the finalizers of all it reached in an order of its own: a socket finalized while still
    open warns (ResourceWarning, an error in this suite). Its pools are closed by a weakref callback,
    which the collector calls before any finalizer; a probe dropped with the client, older than it
    (so finalized first), sees every pooled socket closed already."""
    seen = []

    class Probe:
        def __del__(self):
            seen.append([sock.fileno() for sock in sockets])

    probe = Probe()
    options = dict(base_url=server.url + "/v1", timeout=5, max_retries=0)
    if kind == "sync":
        client = octoai_lite.Client(**options)
        assert client.models.list()
    else:
        client = octoai_lite.AsyncClient(**options)
        loop = asyncio.new_event_loop()
        assert loop.run_until_complete(client.models.list())
    (pool,) = list(client._transport._pools.values())
    sockets = [conn.sock for conns in pool._idle.values() for conn in conns]
    assert sockets and all(sock.fileno() >= 0 for sock in sockets)
    probe.cycle = (probe, client)
    del probe, client, pool
    gc.collect()
    assert seen == [[-1] * len(sockets)], "a pooled socket was still open when the collector finalized"
    if kind == "async":
        loop.close()


def test_unread_response_is_never_reused(server, make_client):
    client = make_client()
    chat_stream = chat(client, stream=True)
    next(chat_stream)
    chat_stream.close()
    chat(client)
    assert server.connections == 2


def test_idle_connection_closed_by_server_is_replaced_silently(raw_server, flavor):
    body = json.dumps(completion_body()).encode()
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def one_answer_then_close(sock, server):
        server.read_request(sock)
        sock.sendall(answer)
        time.sleep(0.05)
        sock.close()  # the keep-alive connection dies while idle in the pool

    raw_server.handler = one_answer_then_close
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=5)
    flavor.chat(client)
    time.sleep(0.2)
    flavor.chat(client)  # max_retries=0: a retry would have been refused
    assert raw_server.accepted == 2


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_reused_connection_closed_after_the_request_resends_only_what_is_safe(raw_server, flavor, method):
    """The server closes right after reading the next request, before any answer byte.

    The request went out whole, so a POST may have been acted on: it is not
    sent again (DESIGN.md, Retries), even on a reused connection. A GET is
    idempotent and goes out once more on a new connection, not counted as a retry.
    """
    models = json.dumps({"data": [{"id": "m"}]}).encode()
    body = json.dumps(completion_body()).encode()
    calls = []

    def answer(request):
        data = models if request[0].startswith(b"GET") else body
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)

    def handler(sock, server):
        calls.append(1)
        sock.sendall(answer(server.read_request(sock)))
        if len(calls) == 1:
            server.read_request(sock)  # read the second request, then hang up without answering
            sock.close()
            return
        while True:
            request = server.read_request(sock)
            if request is None:
                return
            sock.sendall(answer(request))

    raw_server.handler = handler
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=5)
    first, second = (flavor.chat, flavor.chat) if method == "POST" else (flavor.models, flavor.models)
    first(client)
    if method == "POST":
        with pytest.raises(OctoAIConnectionError, match="may have received it") as info:
            second(client)
        assert info.value.request_sent is True
        assert (raw_server.accepted, len(raw_server.requests)) == (1, 2)
    else:
        assert second(client) == ["m"]
        assert (raw_server.accepted, len(raw_server.requests)) == (2, 3)


# =============================================================================
# Threads
# =============================================================================


def test_threads_share_one_client_within_the_pool_bound(server, make_client):
    client = make_client()
    errors = []
    peak = [0]

    def work(number):
        try:
            for i in range(50):
                answer = client.infer(server.url + f"/echo/{number}/{i}", {"n": number, "i": i})
                assert answer["path"] == f"/echo/{number}/{i}" and json.loads(answer["body"]) == {"n": number, "i": i}
                peak[0] = max(peak[0], client._transport.pool.open_count())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(server.requests) == 32 * 50
    assert server.connections <= octoai_lite._MAX_CONNECTIONS
    assert peak[0] <= octoai_lite._MAX_CONNECTIONS
    client.close()
    assert client._transport.pool.open_count() == 0


def run_at_once(flavor, client, count, call):
    """`count` calls of `call(client)` at the same time: threads for Client, tasks for AsyncClient."""
    if flavor.name == "async":

        async def all_of_them():
            return await asyncio.gather(*(call(client) for _ in range(count)))

        return flavor.run(all_of_them())
    results, errors = [], []

    def work():
        try:
            results.append(call(client))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    return results


def slow_words(client):
    """A call that holds its connection for a while: a stream read to its end."""
    chat_stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    if hasattr(chat_stream, "__await__"):

        async def finish():
            return (await (await chat_stream).get_final_completion()).choices[0].message.content

        return finish()
    return chat_stream.get_final_completion().choices[0].message.content


def test_max_connections_bounds_the_sockets_of_concurrent_calls(server, flavor):
    """N+10 calls at once over max_connections=N: never more than N connections, every call answered."""
    server.script += [stream(delay=0.02) for _ in range(14)]
    client = flavor.make(max_connections=4, timeout=10)
    texts = run_at_once(flavor, client, 14, slow_words)
    assert texts == ["".join(WORDS)] * 14
    assert len(server.requests) == 14
    assert server.connections <= 4


def test_idle_connections_after_a_burst_are_bounded(flavor):
    """After 10 calls at once, at most max_idle_connections stay open; the rest are closed."""
    with running(LoopbackServer()) as server:  # its own server: no other test's connections close on it
        server.script += [stream(delay=0.02) for _ in range(10)]
        client = flavor.make(base_url=server.url + "/v1", max_connections=10, max_idle_connections=2, timeout=10)
        run_at_once(flavor, client, 10, slow_words)
        opened = server.connections
        assert opened > 2  # the burst did need more than the idle bound
        give_up_at = time.monotonic() + 5
        while server.closed < opened - 2 and time.monotonic() < give_up_at:
            time.sleep(0.01)
        time.sleep(0.1)
        assert server.closed == opened - 2  # the server saw every connection past the bound closed
        flavor.chat(client)  # and the ones kept are still good
        assert server.connections == opened


def test_a_connection_others_wait_for_stays_open_past_the_idle_bound(flavor):
    """12 calls at once over 3 connections with max_idle_connections=0: a connection that ends its answer while
    calls wait for one goes to them (3 connections in all), instead of closing and making them open new ones."""
    with running(LoopbackServer()) as server:  # its own server: it counts only this test's connections
        server.script += [stream(delay=0.02) for _ in range(12)]
        client = flavor.make(base_url=server.url + "/v1", max_connections=3, max_idle_connections=0, timeout=10)
        assert run_at_once(flavor, client, 12, slow_words) == ["".join(WORDS)] * 12
        assert server.connections == 3
        give_up_at = time.monotonic() + 5
        while server.closed < 3 and time.monotonic() < give_up_at:
            time.sleep(0.01)
        assert server.closed == 3  # with nobody waiting, the idle bound holds: none stays open


def test_pool_wait_is_bounded(server, make_client):
    client = make_client(timeout=0.3)
    client._transport.pool.max_connections = 1
    held = chat(client, stream=True)
    next(held)
    started = time.monotonic()
    with pytest.raises(OctoAITimeoutError, match="stayed busy"):
        chat(client)
    assert time.monotonic() - started < 2
    held.close()
    chat(client)


# =============================================================================
# Retries
# =============================================================================


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(server, flavor, status):
    server.script += [reply(status, {"error": {"message": "later"}}), reply(200)]
    assert flavor.chat(flavor.make(max_retries=2)).choices[0].message.content
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "status, cls",
    [
        (400, BadRequestError),
        (401, octoai_lite.AuthenticationError),
        (403, octoai_lite.PermissionDeniedError),
        (404, NotFoundError),
        (422, octoai_lite.UnprocessableEntityError),
    ],
)
def test_client_errors_are_never_retried(server, flavor, status, cls):
    server.script += [reply(status, {"error": {"message": "no"}}), reply(200)]
    with pytest.raises(cls):
        flavor.chat(flavor.make(max_retries=3))
    assert len(server.requests) == 1


def test_retries_stop_at_max_retries_and_wait_backoff(server, flavor, monkeypatch):
    monkeypatch.setattr(octoai_lite, "_BACKOFF_INITIAL_S", 0.05)
    server.script += [reply(503, "busy")] * 4
    with pytest.raises(OctoAIServerError, match="503"):
        flavor.chat(flavor.make(max_retries=2))
    times = [r.time for r in server.requests]
    assert len(times) == 3
    waits = [b - a for a, b in zip(times, times[1:])]
    assert 0.0375 * 0.9 <= waits[0] < 0.05 + 0.1  # 75-100% of 0.05 s
    assert 0.075 * 0.9 <= waits[1] < 0.1 + 0.1  # then doubled


def test_max_retries_per_call_and_zero_means_one_try(server, flavor):
    client = flavor.make(max_retries=5)
    server.script += [reply(503, "busy")] * 3
    with pytest.raises(OctoAIServerError):
        flavor.chat(client, max_retries=0)
    assert len(server.requests) == 1
    server.reset()
    server.script += [reply(503, "busy"), reply(200)]
    flavor.chat(client.with_options(max_retries=1))
    assert len(server.requests) == 2


def test_retry_after_seconds_and_http_date_are_honoured(server, flavor):
    def date_reply(handler, request):
        date = email.utils.formatdate(time.time() + 1.5, usegmt=True)  # whole seconds: a 0.5-1.5 s wait
        reply(503, "busy", headers={"Retry-After": date})(handler, request)

    server.script += [
        reply(429, "slow down", headers={"Retry-After": "0.3"}),
        date_reply,
        reply(503, "busy", headers={"retry-after-ms": "100"}),
        reply(200),
    ]
    flavor.chat(flavor.make(max_retries=3))
    times = [r.time for r in server.requests]
    assert times[1] - times[0] >= 0.28
    assert times[2] - times[1] >= 0.4
    assert times[3] - times[2] >= 0.09


def test_retry_after_beyond_the_cap_raises_at_once_with_the_wait(server, flavor):
    server.script += [reply(429, {"error": {"message": "wait an hour"}}, headers={"Retry-After": "3600"}), reply(200)]
    started = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        flavor.chat(flavor.make(max_retries=3))
    assert time.monotonic() - started < 1
    assert info.value.retry_after == 3600
    assert len(server.requests) == 1


def test_should_retry_header_is_obeyed(server, flavor):
    server.script += [reply(503, "no", headers={"x-should-retry": "false"}), reply(200)]
    with pytest.raises(OctoAIServerError):
        flavor.chat(flavor.make(max_retries=2))
    server.reset()
    server.script += [reply(400, "try again", headers={"x-should-retry": "true"}), reply(200)]
    flavor.chat(flavor.make(max_retries=2))
    assert len(server.requests) == 2


def test_insufficient_quota_is_not_retried(server, flavor):
    body = {
        "error": {
            "message": "You exceeded your current quota",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
    }
    server.script += [reply(429, body), reply(200)]
    with pytest.raises(RateLimitError, match="quota"):
        flavor.chat(flavor.make(max_retries=2))
    assert len(server.requests) == 1


def test_connection_refused_is_retried_then_raised(flavor):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = flavor.make(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, timeout=1)
    with pytest.raises(OctoAIConnectionError, match="connecting to") as info:
        flavor.chat(client)
    assert info.value.request_sent is False


def test_post_reset_after_sending_is_not_resent(raw_server, flavor):
    def read_then_reset(sock, server):
        server.read_request(sock)
        reset(sock)

    raw_server.handler = read_then_reset
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=3, timeout=2)
    with pytest.raises(OctoAIConnectionError, match="may have received it") as info:
        flavor.chat(client)
    assert info.value.request_sent is True
    assert len(raw_server.requests) == 1


def test_post_timeout_after_sending_is_not_resent_but_get_is(raw_server, flavor):
    def read_then_stall(sock, server):
        server.read_request(sock)
        time.sleep(1)

    raw_server.handler = read_then_stall
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=2, timeout=0.2)
    with pytest.raises(OctoAITimeoutError, match="may have received it"):
        flavor.chat(client)
    assert len(raw_server.requests) == 1
    with pytest.raises(OctoAITimeoutError):
        flavor.models(client)
    assert len(raw_server.requests) == 1 + 3  # an idempotent GET is tried again


def test_stream_is_not_retried_after_a_chunk(server, flavor):
    server.script += [stream([sse_event(chunk("a"))], cut=True), stream()]
    got = []
    with pytest.raises(OctoAIConnectionError):
        flavor.collect(flavor.make(max_retries=3), got)
    assert got == ["a"] and len(server.requests) == 1


def test_retry_decisions_are_logged(server, flavor, caplog):
    caplog.set_level(logging.INFO, logger="octoai_lite")
    server.script += [reply(502, "bad gateway"), reply(200)]
    flavor.chat(flavor.make(max_retries=1))
    assert "retrying POST" in caplog.text and "502" in caplog.text


# =============================================================================
# Timeouts and deadlines
# =============================================================================


def test_server_that_accepts_and_never_answers_times_out(raw_server, flavor):
    raw_server.handler = lambda sock, server: time.sleep(2)
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(OctoAITimeoutError, match="waiting for the answer"):
        flavor.chat(client)
    assert time.monotonic() - started < 0.3 + 0.5


def test_headers_then_silence_times_out(raw_server, flavor):
    def headers_then_stall(sock, server):
        server.read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(2)

    raw_server.handler = headers_then_stall
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(OctoAITimeoutError, match="reading the answer"):
        flavor.chat(client)
    assert time.monotonic() - started < 0.3 + 0.5


def test_stream_that_stalls_mid_way_times_out(server, flavor):
    server.script.append(stall_after_first_event())
    client = flavor.make(timeout=0.3)
    got = []
    started = time.monotonic()
    with pytest.raises(OctoAITimeoutError):
        flavor.collect(client, got)
    assert got == ["a"]
    assert time.monotonic() - started < 0.3 + 0.5


def stall_after_first_event():
    def action(handler, request):
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        event = sse_event(chunk("a"))
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        time.sleep(1.5)
        handler.close_connection = True

    return action


def test_deadline_stops_a_trickling_stream(server, flavor):
    events = [b": ping\n\n"] + [sse_event(chunk("x"))] * 200
    server.script.append(stream(events, delay=0.05))  # never idle long enough for `timeout`
    client = flavor.make(timeout=5)
    started = time.monotonic()
    with pytest.raises(OctoAITimeoutError, match="deadline"):
        flavor.collect(client, [], deadline=0.5)
    assert 0.45 < time.monotonic() - started < 1.5


def test_client_deadline_bounds_retries(server, flavor):
    server.script += [reply(503, "busy", headers={"Retry-After": "0.4"})] * 5
    client = flavor.make(max_retries=5, deadline=1.0)
    started = time.monotonic()
    with pytest.raises(OctoAIServerError):
        flavor.chat(client)
    assert time.monotonic() - started < 1.2
    assert len(server.requests) <= 3


def test_slow_byte_by_byte_answer_still_arrives(raw_server, flavor):
    body = json.dumps(completion_body()).encode()
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def trickle(sock, server):
        server.read_request(sock)
        for i in range(len(answer)):
            sock.sendall(answer[i : i + 1])
            if i % 50 == 0:
                time.sleep(0.001)

    raw_server.handler = trickle
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=2)
    assert flavor.chat(client).choices[0].message.content


# =============================================================================
# Byte-exact faults
# =============================================================================


def sse_head(chunked=True):
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n"
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + framing + b"\r\n"


def test_truncated_chunked_encoding_is_a_connection_error(raw_server, flavor):
    event = sse_event(chunk("a"))

    def truncated(sock, server):
        server.read_request(sock)
        sock.sendall(sse_head() + b"%x\r\n%s\r\n" % (len(event), event) + b"40\r\ndata: {")
        sock.shutdown(socket.SHUT_WR)  # a clean FIN in the middle of a chunk

    raw_server.handler = truncated
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=2)
    with pytest.raises(OctoAIConnectionError, match="closed before the whole answer"):
        flavor.collect(client, [])


def test_short_content_length_body_is_a_connection_error(raw_server, flavor):
    def short(sock, server):
        server.read_request(sock)
        sock.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"id": 1')
        sock.shutdown(socket.SHUT_WR)

    raw_server.handler = short
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=2)
    with pytest.raises(OctoAIConnectionError, match="closed before the whole answer"):
        flavor.chat(client)


def test_cr_only_sse_over_the_socket(raw_server, flavor):
    events = (sse_event(chunk("a")) + sse_event(chunk("b")) + b"data: [DONE]\n\n").replace(b"\n", b"\r")

    def cr_only(sock, server):
        server.read_request(sock)
        sock.sendall(sse_head(chunked=False))
        for i in range(0, len(events), 7):
            sock.sendall(events[i : i + 7])
            time.sleep(0.001)

    raw_server.handler = cr_only
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=2)
    assert flavor.collect(client, []).choices[0].message.content == "ab"


def test_read_to_close_stream_ends_normally_only_when_every_choice_finished(raw_server, flavor):
    # Issue 19: with no framing, a close without [DONE] or a finish_reason cannot be told from a cut.
    finish = []

    def no_done(sock, server):
        server.read_request(sock)
        sock.sendall(sse_head(chunked=False) + sse_event(chunk("a")) + sse_event(chunk("b", finish_reason=finish[0])))

    raw_server.handler = no_done
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=0, timeout=2)
    finish.append("stop")
    assert flavor.collect(client, []).choices[0].message.content == "ab"
    finish[0] = None
    with pytest.raises(OctoAIConnectionError, match="cut short"):
        flavor.collect(client, [])


def test_reset_mid_stream_is_a_connection_error(raw_server, flavor):
    def reset_mid_stream(sock, server):
        server.read_request(sock)
        event = sse_event(chunk("a"))
        sock.sendall(sse_head() + b"%x\r\n%s\r\n" % (len(event), event))
        time.sleep(0.1)
        reset(sock)

    raw_server.handler = reset_mid_stream
    client = flavor.make(base_url=raw_server.url + "/v1", max_retries=3, timeout=2)
    got = []
    with pytest.raises(OctoAIConnectionError):
        flavor.collect(client, got)
    assert got == ["a"] and raw_server.accepted == 1


def test_huge_error_body_is_cut(server, flavor):
    server.script.append(reply(500, b"E" * (5 * 1024 * 1024), content_type="text/plain"))
    with pytest.raises(OctoAIServerError) as info:
        flavor.chat(flavor.make())
    assert len(str(info.value)) < 1000 and len(info.value.body) <= 2010


# =============================================================================
# Redirects
# =============================================================================


def redirect(status, location):
    return reply(status, b"", headers={"Location": location}, content_type="text/plain")


@pytest.mark.parametrize("status", [307, 308])
def test_same_origin_307_308_keep_method_and_body(server, flavor, status):
    server.script.append(redirect(status, "/v2/chat/completions"))
    flavor.chat(flavor.make(token=TOKEN))
    first, second = server.requests
    assert second.method == "POST" and second.path == "/v2/chat/completions"
    assert second.body == first.body and second.headers["authorization"] == f"Bearer {TOKEN}"


def test_redirect_to_another_origin_is_refused(server, flavor, http_server):
    other = server.url.replace("127.0.0.1", "localhost")
    server.script.append(redirect(307, other + "/v1/chat/completions"))
    with pytest.raises(OctoAIClientError, match="another origin"):
        flavor.chat(flavor.make(token=TOKEN))
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [301, 302, 303])
def test_post_is_not_turned_into_a_get(server, flavor, status):
    server.script.append(redirect(status, "/elsewhere"))
    with pytest.raises(OctoAIClientError, match="cannot follow"):
        flavor.chat(flavor.make())
    assert len(server.requests) == 1


def test_get_follows_a_same_origin_301(server, flavor):
    server.script.append(redirect(301, "/v1/models"))
    assert flavor.models(flavor.make(base_url=server.url + "/old")) == ["llama-2-70b-chat", "tiny"]


# =============================================================================
# Proxies
# =============================================================================


def test_http_proxy_from_environment_with_credentials(server, proxy, monkeypatch, flavor):
    monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://user:p%40ss@"))
    client = flavor.make(base_url=server.url + "/v1", max_retries=0, timeout=5)
    flavor.chat(client)
    line, headers = proxy.seen[-1]
    assert line.startswith("POST http://127.0.0.1:") and line.endswith("/v1/chat/completions HTTP/1.1")
    import base64

    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert len(server.requests) == 1


def test_no_proxy_bypasses(server, proxy, monkeypatch, flavor):
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.0/8")
    client = flavor.make(base_url=server.url + "/v1", max_retries=0, timeout=5)
    flavor.chat(client)
    assert proxy.seen == [] and len(server.requests) == 1


def test_https_goes_through_a_connect_tunnel(tls_server, certificates, proxy, monkeypatch, flavor):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://u:pw@"))
    client = flavor.make(base_url=https_url(tls_server), verify_ssl=certificates["ca"])
    flavor.chat(client)
    flavor.chat(client)
    connects = [line for line, _ in proxy.seen if line.startswith("CONNECT")]
    assert len(connects) == 1  # one tunnel, kept alive
    assert connects[0].startswith(f"CONNECT 127.0.0.1:{tls_server.server_address[1]} HTTP/1.")
    assert proxy.seen[0][1]["proxy-authorization"].startswith("Basic ")
    assert len(tls_server.requests) == 2


def test_proxy_environment_rules():
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:1", "NO_PROXY": ".internal, db:5432"}
    assert octoai_lite._proxy_for("https", "api.example.com", 443, env) == "http://lower:1"
    assert octoai_lite._proxy_for("https", "x.internal", 443, env) is None
    assert octoai_lite._proxy_for("https", "db", 5432, env) is None
    assert octoai_lite._proxy_for("https", "db", 443, env) == "http://lower:1"
    assert octoai_lite._proxy_for("http", "a", 80, {"HTTP_PROXY": "p:3128"}) == "http://p:3128"
    assert octoai_lite._proxy_for("http", "a", 80, {"HTTP_PROXY": "p:3128", "REQUEST_METHOD": "GET"}) is None
    assert octoai_lite._proxy_for("https", "a", 443, {"ALL_PROXY": "http://all:1", "NO_PROXY": "*"}) is None


# =============================================================================
# TLS
# =============================================================================


def https_url(server):
    return server.url.replace("http:", "https:") + "/v1"


def test_tls_verification_is_on_by_default(tls_server, flavor):
    client = flavor.make(base_url=https_url(tls_server), max_retries=2, timeout=5)
    with pytest.raises(OctoAIConnectionError, match="certificate verification failed.*(self.signed|local issuer)"):
        flavor.chat(client)


def test_tls_with_a_ca_bundle_path(tls_server, certificates, flavor):
    client = flavor.make(base_url=https_url(tls_server), verify_ssl=certificates["ca"], timeout=5)
    for _ in range(3):
        flavor.chat(client)
    assert tls_server.connections == 1  # one handshake, kept alive
    context = client._transport.ssl_context()
    assert context is client._transport.ssl_context()  # one context per client


def test_tls_with_ssl_cert_file(tls_server, certificates, monkeypatch, flavor):
    monkeypatch.setenv("SSL_CERT_FILE", certificates["ca"])
    client = flavor.make(base_url=https_url(tls_server), timeout=5)
    assert flavor.collect(client, []).choices[0].message.content


def test_tls_verification_off_works_and_warns(tls_server, caplog, flavor):
    caplog.set_level(logging.WARNING, logger="octoai_lite")
    client = flavor.make(base_url=https_url(tls_server), verify_ssl=False, timeout=5)
    flavor.chat(client)
    assert "verification is off" in caplog.text


def test_missing_ca_bundle_is_a_clear_error(tls_server, tmp_path, flavor):
    client = flavor.make(base_url=https_url(tls_server), verify_ssl=str(tmp_path / "nope.pem"), timeout=5)
    with pytest.raises(OctoAIClientError, match="cannot load the CA bundle"):
        flavor.chat(client)


# =============================================================================
# Per-call options
# =============================================================================


def test_per_call_headers_query_body_and_timeout(server, flavor):
    client = flavor.make(default_headers={"X-Team": "a", "X-Drop": "1"})
    flavor.chat(
        client,
        extra_headers={"x-team": "b", "X-Drop": None, "X-Call": "c"},
        extra_query={"api-version": "2024"},
        extra_body={"guided_json": {"type": "object"}},
        timeout=3,
    )
    request = server.requests[-1]
    assert request.headers["x-team"] == "b" and request.headers["x-call"] == "c" and "x-drop" not in request.headers
    assert request.path == "/v1/chat/completions?api-version=2024"
    assert request.json()["guided_json"] == {"type": "object"}


def test_with_options_shares_the_pool(server, make_client):
    client = make_client()
    quick = client.with_options(timeout=1, max_retries=0, default_headers={"X-Extra": "1"})
    chat(client)
    chat(quick)
    assert server.connections == 1 and server.requests[-1].headers["x-extra"] == "1"
    assert "x-extra" not in server.requests[0].headers
    assert quick._transport is client._transport
    quick.close()  # leaves the pool to its original
    chat(client)
    assert server.connections == 1


def test_models_list_per_call_options(server, flavor):
    flavor.models(flavor.make(), extra_headers={"X-A": "1"}, extra_query={"q": "1"}, timeout=2)
    assert server.requests[-1].headers["x-a"] == "1" and server.requests[-1].path == "/v1/models?q=1"


def test_infer_family_per_call_options(server, flavor):
    client = flavor.make(max_retries=0)
    answer = flavor.infer(client, server.url + "/echo", {"a": 1}, extra_headers={"X-B": "2"}, timeout=2)
    assert answer["headers"]["x-b"] == "2"
    server.script += [reply(503, "busy"), reply(200, {"ok": True})]
    assert flavor.infer(client, server.url + "/x", {}, max_retries=1) == {"ok": True}
    server.script.append(stream([sse_event({"n": 1}), b"data: [DONE]\n\n"]))
    got = flavor.infer_stream(client, server.url + "/s", {}, extra_headers={"X-C": "3"}, deadline=5)
    assert got == [{"n": 1}] and server.requests[-1].headers["x-c"] == "3"


def test_steady_state_leaves_no_descriptor_behind(separate_server, flavor):
    """300 requests and 30 streams on one client: descriptors stay level, and go back to the start on close()."""
    if flavor.name == "async":
        flavor.run(asyncio.sleep(0))  # the event loop's own descriptors exist before the count starts
    client = flavor.make(base_url=separate_server, max_connections=4)
    started = open_fds()
    for _ in range(20):
        flavor.chat(client)
    level = open_fds()
    assert level == started + 1  # one keep-alive connection
    for number in range(280):
        flavor.chat(client) if number % 2 else flavor.models(client)
    for _ in range(30):
        assert flavor.collect(client, []).choices[0].message.content == "".join(WORDS)
    assert open_fds() == level
    flavor.run(client.close()) if flavor.name == "async" else client.close()
    assert open_fds() == started
