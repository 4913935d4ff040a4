"""Issue 17: `deadline=` bounds every phase of a call, for both clients.

Each test gives the call `deadline=1.0` and a `timeout` far longer (30 s),
stalls one phase over real loopback sockets, and asserts that the call ends
in 1.0 s +- 0.3 with an OctoAITimeoutError that says the deadline passed and
names the phase: pool, connect, tunnel, TLS (direct, and after a slow
tunnel), send, head, body (whole and streamed). The last test is the retry
policy's: a sleep that would end past the deadline is not taken.

`request_sent` says whether the request had gone out whole: False up to and
during the send, True while waiting for the head and reading the body.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import MESSAGES, _pipe, chunk, reply, sse_event
from octoai_lite import OctoAIServerError, OctoAITimeoutError

DEADLINE = 1.0
SLACK = 0.3
TIMEOUT = 30  # far past the deadline: only the deadline can end these calls in time

# What each phase's message says (octoai_lite._PHASES), after "the call's deadline passed".
PHASE_TEXT = {
    "pool": "waiting for a free connection to",
    "connect": "connecting to",
    "tunnel": "opening a tunnel to",
    "tls": "in the TLS handshake with",
    "send": "sending the request to",
    "head": "waiting for the answer from",
    "body": "reading the answer from",
}
SENT = {"pool": False, "connect": False, "tunnel": False, "tls": False, "send": False, "head": True, "body": True}


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return None
        data += more
    return data


def silent(seconds=3):
    """A raw-server handler that accepts and then says nothing (bounded, whatever the client does)."""
    return lambda sock, server: time.sleep(seconds)


def ends_at_the_deadline(flavor, phase, where, call):
    """Run `call()`; it must raise the deadline's OctoAITimeoutError for `phase` at 1.0 s +- 0.3."""
    started = time.monotonic()
    with pytest.raises(OctoAITimeoutError) as info:
        call()
    elapsed = time.monotonic() - started
    error = info.value
    message = str(error)
    assert DEADLINE - SLACK <= elapsed <= DEADLINE + SLACK, f"{flavor.name}: ended after {elapsed:.2f} s: {error!r}"
    assert "deadline passed" in message, message
    assert f"{PHASE_TEXT[phase]} {where}" in message, message
    assert error.request_sent is SENT[phase], (error.request_sent, message)
    return error


# -- before the request goes out ----------------------------------------------------


def test_a_slow_tunnel_then_a_silent_tls_server_ends_at_the_deadline(raw_server, flavor, monkeypatch):
    """The issue's case: the proxy opens the tunnel after 0.8 s, then the target never answers the
    TLS handshake. The handshake gets what is left of the deadline (0.2 s), not a fresh 1.0 s."""
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(8)  # accepts (the kernel does), never speaks
    target_port = target.getsockname()[1]

    def slow_proxy(sock, server):
        head = read_head(sock)
        assert head.startswith(b"CONNECT 127.0.0.1:%d " % target_port), head
        time.sleep(0.8)
        upstream = socket.create_connection(("127.0.0.1", target_port), timeout=5)
        sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pump = threading.Thread(target=_pipe, args=(upstream, sock), daemon=True)
        pump.start()
        _pipe(sock, upstream)
        pump.join(5)
        upstream.close()

    raw_server.handler = slow_proxy
    monkeypatch.setenv("HTTPS_PROXY", raw_server.url)
    client = flavor.make(base_url=f"https://127.0.0.1:{target_port}/v1", timeout=TIMEOUT, deadline=DEADLINE)
    try:
        ends_at_the_deadline(flavor, "tls", f"127.0.0.1:{target_port}", lambda: flavor.chat(client))
    finally:
        target.close()
    assert raw_server.accepted == 1


def test_a_proxy_that_never_answers_connect(raw_server, flavor, monkeypatch):
    def mute_proxy(sock, server):
        read_head(sock)
        time.sleep(3)

    raw_server.handler = mute_proxy
    monkeypatch.setenv("HTTPS_PROXY", raw_server.url)
    client = flavor.make(base_url="https://127.0.0.1:9/v1", timeout=TIMEOUT, deadline=DEADLINE)
    ends_at_the_deadline(flavor, "tunnel", "127.0.0.1:9", lambda: flavor.chat(client))


def test_a_server_that_never_answers_the_tls_handshake(raw_server, flavor):
    raw_server.handler = silent()
    client = flavor.make(
        base_url=f"https://127.0.0.1:{raw_server.port}/v1", timeout=TIMEOUT, deadline=DEADLINE, verify_ssl=False
    )
    ends_at_the_deadline(flavor, "tls", f"127.0.0.1:{raw_server.port}", lambda: flavor.chat(client))
    assert raw_server.accepted == 1


@pytest.fixture
def unanswered_port():
    """A loopback port whose SYNs go unanswered: a listener with listen(0) that never accepts, its
    accept queue filled (Linux then drops further SYNs instead of refusing them)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            filler.connect_ex(("127.0.0.1", port))
            time.sleep(0.02)
            if filler.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and _still_connecting(filler):
                break  # this SYN went unanswered: so will the client's
        else:
            pytest.skip("this system answers every SYN on a full accept queue")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def _still_connecting(sock):
    try:
        sock.getpeername()
    except OSError:
        return True  # no peer yet: the handshake has not completed
    return False


def test_a_connect_that_is_never_answered(unanswered_port, flavor):
    client = flavor.make(base_url=f"http://127.0.0.1:{unanswered_port}/v1", timeout=TIMEOUT, deadline=DEADLINE)
    ends_at_the_deadline(flavor, "connect", f"127.0.0.1:{unanswered_port}", lambda: flavor.chat(client))


def test_a_wait_for_a_pool_slot(server, flavor):
    """max_connections=1, held by an open stream: the next call waits for the slot until the deadline."""
    client = flavor.make(max_connections=1, timeout=TIMEOUT)
    where = f"127.0.0.1:{server.server_address[1]}"
    create = client.chat.completions.create
    if flavor.name == "sync":
        held = create(model="m", messages=MESSAGES, stream=True)
        try:
            ends_at_the_deadline(flavor, "pool", where, lambda: flavor.chat(client, deadline=DEADLINE))
        finally:
            held.close()
    else:
        held = flavor.run(create(model="m", messages=MESSAGES, stream=True))
        try:
            ends_at_the_deadline(flavor, "pool", where, lambda: flavor.chat(client, deadline=DEADLINE))
        finally:
            flavor.run(held.aclose())
    assert len(server.requests) == 1  # the second call never went out
    assert flavor.chat(client).choices[0].message.content  # the slot is free again


def test_a_server_that_never_reads_the_request(raw_server, flavor):
    """16 MB of body against a server that reads none of it: the socket buffers fill, the send stalls."""
    raw_server.handler = silent()
    client = flavor.make(base_url=raw_server.url + "/v1", timeout=TIMEOUT, deadline=DEADLINE)
    padding = "x" * (16 << 20)  # well past what loopback buffers hold unread (4 MB send, ~6 MB receive)
    where = f"127.0.0.1:{raw_server.port}"
    ends_at_the_deadline(flavor, "send", where, lambda: flavor.chat(client, extra_body={"padding": padding}))


# -- after the request went out -----------------------------------------------------


def test_a_server_that_reads_the_request_and_never_answers(raw_server, flavor):
    def mute(sock, server):
        server.read_request(sock)
        time.sleep(3)

    raw_server.handler = mute
    client = flavor.make(base_url=raw_server.url + "/v1", timeout=TIMEOUT, deadline=DEADLINE)
    error = ends_at_the_deadline(flavor, "head", f"127.0.0.1:{raw_server.port}", lambda: flavor.chat(client))
    assert len(raw_server.requests) == 1
    assert "the request was sent" in str(error)


def trickle_after(head, body):
    """Send the head, then the body a byte every 0.2 s (for at most 3 s)."""

    def handler(sock, server):
        server.read_request(sock)
        sock.sendall(head)
        stop_at = time.monotonic() + 3
        for i in range(len(body)):
            if time.monotonic() > stop_at:
                return
            sock.sendall(body[i : i + 1])
            time.sleep(0.2)

    return handler


def test_a_body_that_trickles(raw_server, flavor):
    body = b'{"id": "c", "choices": [{"index": 0, "message": {"content": "' + b"x" * 100 + b'"}}]}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    raw_server.handler = trickle_after(head, body)
    client = flavor.make(base_url=raw_server.url + "/v1", timeout=TIMEOUT, deadline=DEADLINE)
    ends_at_the_deadline(flavor, "body", f"127.0.0.1:{raw_server.port}", lambda: flavor.chat(client))


def test_a_stream_that_trickles(raw_server, flavor):
    events = sse_event(chunk("x" * 100)) * 3 + b"data: [DONE]\n\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    raw_server.handler = trickle_after(head, events)
    client = flavor.make(base_url=raw_server.url + "/v1", timeout=TIMEOUT, deadline=DEADLINE)
    got = []
    ends_at_the_deadline(flavor, "body", f"127.0.0.1:{raw_server.port}", lambda: flavor.collect(client, got))
    assert got == []  # not one event was whole


# -- the retry policy: no sleep past the deadline -------------------------------------


def test_a_retry_sleep_that_would_end_past_the_deadline_is_not_taken(server, flavor):
    """503 asking for 0.6 s, three retries allowed, deadline 1.0: the first wait ends at 0.6 s, the
    second would end at 1.2 s, so the second 503's error is raised at once (~0.6 s), not after sleeping."""
    busy = reply(503, {"error": {"message": "busy"}}, headers={"Retry-After": "0.6"})
    server.script += [busy] * 4
    client = flavor.make(max_retries=3, timeout=TIMEOUT, deadline=DEADLINE)
    started = time.monotonic()
    with pytest.raises(OctoAIServerError) as info:
        flavor.chat(client)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed <= 0.85, f"{flavor.name}: ended after {elapsed:.2f} s: {info.value!r}"
    assert info.value.status_code == 503 and "busy" in str(info.value)
    assert len(server.requests) == 2
    assert server.requests[1].time - server.requests[0].time >= 0.55
