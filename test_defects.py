"""Issue 18: defects 1-11 of a hostile review, each shown over real loopback sockets.

Defects 12 (folding) and 13 (secret headers) are tested elsewhere. Every test
is bounded: what could deadlock runs in a subprocess with a timeout, so a
regression fails instead of hanging.

Each failed on main before the fixes of issue 18 (merged in 1c1d598), for the
cause given here in short:

    test_1_a_stream_finalized_while_the_pool_lock_is_held_does_not_deadlock  #1 (5 s timeout)
        _StreamBase.__del__ -> close -> _abort -> _ConnectionPool.release takes the
        non-reentrant pool lock the same thread already holds.
    test_2_a_child_forked_while_the_pool_lock_is_held_can_call[lock held]    #2
    test_2_a_child_forked_while_the_pool_lock_is_held_can_call[threads busy] #2
        the child inherits the pool lock held by a thread it does not have;
        _PoolBook resets its counts after a fork, but only once inside that lock.
    test_4_interrupts_anywhere_in_a_call_free_their_slots[sync]              #4
        windows where a reserved slot has no owner: an idle connection popped in
        _PoolBook._take before is_gone() returns; acquire() returned but _Response
        not yet holding it (_Transport.send, _connect's entry, _Response.__init__,
        _drive before its `with`); a response has no finalizer; an interrupt between
        the count and the reservation in _reserve. Now a slot is a lease taken and
        freed in one atomic step each, and a response dropped unread gives it back.
    test_6_a_tunnel_the_proxy_closes_is_a_connection_error[async-*]          #6 (5 calls)
        loop.start_tls() returns None when the peer closes cleanly during the
        handshake; conn.transport = None, then send() raises AttributeError.
    test_8_the_deadline_bounds_name_resolution[sync]                         #8
        socket.create_connection's getaddrinfo has no timeout.

Everything else here failed on main before the fixes
(#3, #5, #7, #9, #10, #11), except the guards that pass on main too: the
head-phase and streamed cases of #3, the read-point cases of #4 and its async
sweep, the sync cases of #6, the async case of #8, and the plain cases of #9.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import octoai_lite
from conftest import MESSAGES, chunk, completion_body, reply, sse_event, stream
from octoai_lite import (
    OctoAIConnectionError,
    OctoAIError,
    OctoAIValidationError,
    SSEDecoder,
)

ROOT = Path(__file__).resolve().parent
TOKEN = "sk-" + "R7vKq2mXw9LpT4cZ8nHb3YsF6dJg1QaE5uWo0iNk"


def run_script(script, *args, timeout_s=15, env=None):
    """Run `script` in a fresh interpreter that imports this checkout; fail (not hang) after `timeout_s`."""
    environment = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout_s, env=environment
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still running after {timeout_s} s (a deadlock?): {exc.stderr!r}")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def raw_client(flavor, raw_server, **kwargs):
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 2)
    return flavor.make(base_url=raw_server.url + "/v1", **kwargs)


def wait_for_close(sock, seconds):
    """Read and drop whatever comes until the client hangs up or `seconds` pass."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def json_answer(payload):
    body = json.dumps(payload).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# =============================================================================
# 1. A stream finalized by the garbage collector while the pool lock is held
# =============================================================================

GC_SCRIPT = r"""
import contextlib, gc, sys, threading
import octoai_lite

client = octoai_lite.Client(base_url=sys.argv[1], timeout=2, max_retries=0)
chat_stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
next(chat_stream)  # unfinished: it holds its connection
chat_stream.cycle = chat_stream  # only the cyclic collector frees it
del chat_stream
(pool,) = list(client._transport._pools.values())
lock_types = (type(threading.Lock()), type(threading.RLock()))
locks = [value for value in vars(pool).values() if isinstance(value, lock_types)]
assert locks, "the pool has no lock: update this lookup"
gc.disable()
with contextlib.ExitStack() as held:
    for lock in locks:
        held.enter_context(lock)
    # The collector may run at any allocation, also at those the pool makes
    # while it holds its lock (release(): _give, Condition.notify).
    gc.collect()
client.models.list(timeout=1)
client.close()
print("no deadlock")
"""


def test_1_a_stream_finalized_while_the_pool_lock_is_held_does_not_deadlock(server):
    assert run_script(GC_SCRIPT, server.url + "/v1", timeout_s=5) == "no deadlock"


# =============================================================================
# 2. A child forked while other threads use the Client
# =============================================================================

FORK_SCRIPT = r"""
import os, signal, sys, threading, time, warnings
import octoai_lite

warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a process with threads
base_url, how = sys.argv[1], sys.argv[2]
client = octoai_lite.Client(base_url=base_url, timeout=1, max_retries=0, max_connections=4)
client.models.list()


def fork_and_call():
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            client.models.list(timeout=1, deadline=1)
            code = 0
        finally:
            os._exit(code)
    give_up_at = time.monotonic() + 3
    while time.monotonic() < give_up_at:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "exit %d" % (os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "the child hung"


if how == "lock held":
    (pool,) = list(client._transport._pools.values())
    lock_types = (type(threading.Lock()), type(threading.RLock()))
    locks = [value for value in vars(pool).values() if isinstance(value, lock_types)]
    assert locks, "the pool has no lock: update this lookup"
    held, done = threading.Event(), threading.Event()

    def holder():
        with locks[0]:  # as acquire() and release() do, for a moment, in another thread
            held.set()
            done.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    outcomes = [fork_and_call()]
    done.set()
    thread.join()
else:  # threads calling all the time, forks at random moments
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            client.models.list()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    outcomes = []
    while len(outcomes) < 25 and (not outcomes or outcomes[-1] == "exit 0"):
        outcomes.append(fork_and_call())
    stop.set()
    for thread in threads:
        thread.join()
print(outcomes[-1])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
@pytest.mark.parametrize("how", ["lock held", "threads busy"])
def test_2_a_child_forked_while_the_pool_lock_is_held_can_call(server, how):
    assert run_script(FORK_SCRIPT, server.url + "/v1", how, timeout_s=20) == "exit 0"


# =============================================================================
# 3. No framing error carries the token
# =============================================================================


def pieces(secret, size=8):
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def assert_no_token(text, where):
    for piece in pieces(TOKEN):
        at = text.find(piece)
        assert at < 0, f"{where} holds {piece!r} of the token: ...{text[max(0, at - 60) : at + 60]!r}..."


def assert_hides_token(exc):
    assert isinstance(exc, OctoAIError), f"a raw {type(exc).__name__} escaped: {exc!r}"
    assert_no_token(str(exc), "str(error)")
    assert_no_token(repr(exc), "repr(error)")
    assert_no_token(repr(exc.body), "error.body")
    assert_no_token(repr(exc.headers), "error.headers")


def chunked_head(content_type=b"application/json"):
    return b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nTransfer-Encoding: chunked\r\n\r\n"


# Where the server quotes the token it was sent: each framing error of the exchange that quotes the server.
FRAMINGS = {
    "chunk size": lambda head, token: head + b"zz " + token + b"\r\n",
    "chunk size cut in the token": lambda head, token: head + b"." * 28 + token + b"\r\n",  # the 40-byte cut
    "second chunk size": lambda head, token: head + b"2\r\n{}\r\nBearer " + token + b"\r\n",
    "status line": lambda head, token: b"HTTP/1.1 " + token + b"\r\n\r\n",
    "header line": lambda head, token: b"HTTP/1.1 200 OK\r\n" + token + b"\r\n\r\n",
    "content length": lambda head, token: b"HTTP/1.1 200 OK\r\nContent-Length: " + token + b"\r\n\r\n",
}


def echo_in_framing(framing, content_type=b"application/json"):
    def handler(sock, server):
        head, _ = server.read_request(sock)
        auth = [line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization:")][0]
        sock.sendall(FRAMINGS[framing](chunked_head(content_type), auth.split(b" ")[-1]))
        wait_for_close(sock, 3)

    return handler


CALLS = {
    "create": lambda flavor, client: flavor.chat(client),
    "create stream": lambda flavor, client: flavor.collect(client, []),
    "models": lambda flavor, client: flavor.models(client),
    "infer": lambda flavor, client: flavor.infer(client, client.base_url + "/x", {}),
    "infer_stream": lambda flavor, client: flavor.infer_stream(client, client.base_url + "/x", {}),
}


def caught(call):
    try:
        call()
    except Exception as exc:  # noqa: B902 - the point is to see what escapes
        return exc
    pytest.fail("expected an error, got an answer")


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_3_no_framing_error_quotes_the_token(raw_server, flavor, framing, call):
    content_type = b"text/event-stream" if "stream" in call else b"application/json"
    raw_server.handler = echo_in_framing(framing, content_type)
    client = raw_client(flavor, raw_server, token=TOKEN)
    assert_hides_token(caught(lambda: CALLS[call](flavor, client)))


@pytest.mark.parametrize(
    "arguments, content_type",
    [
        (["--no-stream", "hi"], b"application/json"),
        (["--list-models"], b"application/json"),
        (["hi"], b"text/event-stream"),
    ],
)
def test_3_the_command_line_prints_no_token_from_a_framing_error(
    raw_server, monkeypatch, capsys, arguments, content_type
):
    raw_server.handler = echo_in_framing("chunk size", content_type)
    monkeypatch.setenv("OCTOAI_TOKEN", TOKEN)
    assert (
        octoai_lite.main(["--base-url", raw_server.url + "/v1", "--timeout", "2", "--max-retries", "0"] + arguments)
        == 1
    )
    printed = capsys.readouterr()
    assert "error" in printed.err
    assert_no_token(printed.err + printed.out, "the command line's output")


# =============================================================================
# 4. An interrupt anywhere in a call frees its pool slot
# =============================================================================


class Interrupt(BaseException):
    """What SIGALRM raises here: a BaseException like KeyboardInterrupt, which pytest would take for Ctrl-C."""


# An interrupt that lands inside socket.socket()'s own Python __init__, after the descriptor was
# made and before the object is returned, leaves a socket nobody can reach: the garbage collector
# closes it, with a ResourceWarning. No slot depends on it (the assertions below check the slots).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning")
def test_4_interrupts_anywhere_in_a_call_free_their_slots(server, flavor):
    """Hundreds of calls to a fast server, each interrupted after a delay swept across a call's
    length, so that interrupts land everywhere in the client's code: with one connection
    allowed, one slot lost would make the last call wait and fail."""
    if flavor.name == "sync" and sys.version_info < (3, 10):
        # CPython 3.8 and 3.9 may run a signal handler after a lock's __enter__ and before its
        # `with` block (bpo-29988, fixed in 3.10): the pool's lock is then never released, and
        # nothing in Python can prevent it. Measured: about one interrupt in 37,000 there.
        pytest.skip("3.8/3.9 can leak a lock a signal interrupts in `with` (bpo-29988)")
    client = flavor.make(max_connections=1, timeout=2)
    started = time.perf_counter()
    for _ in range(20):
        flavor.models(client)
    call_s = (time.perf_counter() - started) / 20
    delays = [call_s * 1.2 * n / 400 for n in range(1, 401)]
    random.Random(18).shuffle(delays)

    def one(number):
        if number % 3 == 0:
            return client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        if number % 3 == 1:
            return client.chat.completions.create(model="m", messages=MESSAGES)
        return client.models.list()

    if flavor.name == "sync":
        armed = [False]

        def interrupt(signum, frame):
            if armed[0]:
                raise Interrupt

        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            for number, delay in enumerate(delays):
                try:
                    try:
                        armed[0] = True
                        signal.setitimer(signal.ITIMER_REAL, delay)
                        answer = one(number)
                        if number % 3 == 0:
                            with answer:
                                list(answer)
                    finally:
                        armed[0] = False
                        signal.setitimer(signal.ITIMER_REAL, 0)
                except Interrupt:
                    pass
                answer = None  # dropped unarmed: an interrupt inside a finalizer is only "ignored"
        finally:
            signal.signal(signal.SIGALRM, previous)
    else:

        async def interrupted(number, delay):
            async def go():
                answer = await one(number)
                if number % 3 == 0:
                    async with answer:
                        async for _ in answer:
                            pass

            try:
                await asyncio.wait_for(go(), delay)
            except asyncio.TimeoutError:
                pass

        async def sweep():
            for number, delay in enumerate(delays):
                await interrupted(number, delay)

        flavor.run(sweep())
    # Such sockets sit in reference cycles (an Interrupt's traceback holds its frames): collected
    # here, under this test's filters, not in whichever later test the collector next runs in.
    gc.collect()
    started = time.monotonic()
    assert flavor.models(client, timeout=1) == ["llama-2-70b-chat", "tiny"]
    assert time.monotonic() - started < 0.5


def raise_interrupt(signum, frame):
    raise Interrupt


def stall_at(point):
    """A raw handler: /ok gets an answer; anything else an answer that stops at `point` and stalls."""
    sse = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    event = sse_event(chunk("hi"))
    partial = {
        "status line": b"HTTP/1.1 2",
        "headers": b"HTTP/1.1 200 OK\r\nContent-Type: appl",
        "body": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        "chunk size": chunked_head() + b"1\r\n{\r\n1",
        "trailers": chunked_head() + b"2\r\n{}\r\n0\r\nx-trailer: 1\r\n",
        "sse": sse + b"%x\r\n%s\r\n" % (len(event), event),
    }[point]

    def handler(sock, server):
        while True:
            request = server.read_request(sock)
            if request is None:
                return
            if b" /ok" in request[0].split(b"\r\n")[0]:
                sock.sendall(json_answer({"ok": True}))
                continue
            sock.sendall(partial)
            wait_for_close(sock, 3)
            return

    return handler


@pytest.mark.parametrize("point", ["status line", "headers", "body", "chunk size", "trailers", "sse"])
def test_4_an_interrupt_at_each_read_point_frees_its_slot(raw_server, flavor, point):
    raw_server.handler = stall_at(point)
    client = raw_client(flavor, raw_server, max_connections=1, timeout=3)
    url = raw_server.url + "/stall"
    call = flavor.infer_stream if point == "sse" else flavor.infer
    for _ in range(2):
        if flavor.name == "sync":
            previous = signal.signal(signal.SIGALRM, raise_interrupt)
            try:
                with pytest.raises(Interrupt):
                    try:
                        signal.setitimer(signal.ITIMER_REAL, 0.05)
                        call(client, url, {})
                    finally:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            finally:
                signal.signal(signal.SIGALRM, previous)
        else:
            run_call = flavor.client_class.infer_stream if point == "sse" else flavor.client_class.infer

            async def cancelled(run_call=run_call):
                async def go():
                    answer = await run_call(client, url, {})
                    if point == "sse":
                        async for _ in answer:
                            pass

                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(go(), 0.05)

            flavor.run(cancelled())
    started = time.monotonic()
    assert flavor.infer(client, raw_server.url + "/ok", {}, timeout=1) == {"ok": True}
    assert time.monotonic() - started < 0.5


# =============================================================================
# 5. An absurd retry: field
# =============================================================================


def test_5_a_5000_digit_retry_field_is_ignored_by_the_decoder():
    decoder = SSEDecoder()
    events = decoder.feed(b"retry: " + b"9" * 5000 + b"\ndata: x\n\n")
    assert [event.data for event in events] == ["x"]
    assert events[0].retry is None or len(str(events[0].retry)) < 20
    assert decoder.feed(b"retry: 3000\ndata: y\n\n")[0].retry == 3000  # a sane value still counts


def test_5_a_5000_digit_retry_field_in_a_stream(server, flavor):
    events = [b"retry: " + b"9" * 5000 + b"\n" + sse_event(chunk("Hello"))]
    events += [sse_event(chunk(" there", finish_reason="stop")), b"data: [DONE]\n\n"]
    server.script.append(stream(events))
    got = []
    final = flavor.collect(flavor.make(), got)
    assert got == ["Hello", " there"]
    assert final.choices[0].message.content == "Hello there"


# =============================================================================
# 6. A CONNECT tunnel the proxy closes
# =============================================================================


def tunnel_then_close(sock, server):
    server.read_request(sock)
    sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")  # and then a clean close, before any TLS


TUNNEL_CALLS = {
    "create": lambda flavor, client: flavor.chat(client),
    "create stream": lambda flavor, client: flavor.collect(client, []),
    "models": lambda flavor, client: flavor.models(client),
    "infer": lambda flavor, client: flavor.infer(client, client.base_url + "/x", {}),
    "infer_stream": lambda flavor, client: flavor.infer_stream(client, client.base_url + "/x", {}),
}


@pytest.mark.parametrize("call", sorted(TUNNEL_CALLS))
def test_6_a_tunnel_the_proxy_closes_is_a_connection_error(raw_server, flavor, monkeypatch, call):
    raw_server.handler = tunnel_then_close
    monkeypatch.setenv("HTTPS_PROXY", raw_server.url)
    client = flavor.make(base_url="https://127.0.0.1:9/v1", timeout=2)
    with pytest.raises(OctoAIConnectionError):
        TUNNEL_CALLS[call](flavor, client)


# =============================================================================
# 7. A server's malformed URL
# =============================================================================


def poll_answer(status_body):
    def action(handler, request):
        if request.path.startswith("/poll"):
            return reply(200, status_body)(handler, request)
        return reply(200, {"response_id": "r1", "poll_url": handler.server.url + "/poll"})(handler, request)

    return action


BAD_URL_CASES = {
    "create: 307 to port 99999": ("create", "http://127.0.0.1:99999/v1/x"),
    "models: 301 to port 99999": ("models", "http://127.0.0.1:99999/v1/models"),
    "models: 302 to an unclosed IPv6 bracket": ("models", "http://[::1/v1/models"),
    "models: 303 to a port that is not a number": ("models", "http://127.0.0.1:8o/v1/models"),
    "infer_stream: 308 to port 99999": ("infer_stream", "http://127.0.0.1:99999/v1/x"),
}


@pytest.mark.parametrize("case", sorted(BAD_URL_CASES))
def test_7_a_malformed_location_is_an_octoai_error(server, flavor, case):
    call, location = BAD_URL_CASES[case]
    status = int(case.split(": ")[1][:3])
    server.script.append(reply(status, "", headers={"Location": location}))
    client = flavor.make()
    with pytest.raises(OctoAIError):
        CALLS[call](flavor, client)


@pytest.mark.parametrize("bad_url", ["http://127.0.0.1:99999/poll", "http://[::1/poll"])
def test_7_a_malformed_poll_url_is_an_octoai_error(server, flavor, bad_url):
    server.script.append(reply(200, {"response_id": "r1", "poll_url": bad_url}))
    client = flavor.make()
    future = flavor.call(client, "infer_async", server.url + "/infer", {})
    with pytest.raises(OctoAIError):
        flavor.call(client, "is_future_ready", future)


def test_7_a_malformed_response_url_is_an_octoai_error(server, flavor):
    server.script.append(reply(200, {"status": "completed", "response_url": "http://127.0.0.1:99999/result"}))
    client = flavor.make()
    future = octoai_lite.InferenceFuture("r1", server.url + "/poll")
    with pytest.raises(OctoAIError):
        flavor.call(client, "get_future_result", future)


@pytest.mark.parametrize("proxy_url", ["http://127.0.0.1:99999", "http://[::1:8080"])
def test_7_a_malformed_proxy_url_is_an_octoai_error(server, flavor, monkeypatch, proxy_url):
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    client = flavor.make()
    with pytest.raises(OctoAIError):
        flavor.models(client)


# =============================================================================
# 8. The deadline bounds name resolution
# =============================================================================

# In new user, mount and network namespaces (no privilege needed where the
# kernel allows them), /etc/resolv.conf names 127.0.0.1, where a UDP socket
# takes the resolver's questions and never answers: a real lookup that stalls
# for the resolver's timeout (2 s), with nothing of Python patched.
DNS_RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n"
DNS_SCRIPT = r"""
import fcntl, json, os, socket, struct, sys, time

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # bring up lo in the new namespace
    flags = struct.unpack("16sH22x", fcntl.ioctl(probe, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0)))[1]
    fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
silent.bind(("127.0.0.1", 53))

import octoai_lite

options = dict(base_url="http://stall.example/v1", timeout=5, deadline=0.5, max_retries=0)


def report(started, error):
    print(json.dumps({"error": error, "seconds": time.monotonic() - started}), flush=True)
    os._exit(0)  # not waiting for the resolver's thread (asyncio.run would)


started = time.monotonic()
if sys.argv[1] == "sync":
    try:
        octoai_lite.Client(**options).models.list()
        report(started, None)
    except Exception as exc:
        report(started, type(exc).__name__ + ": " + str(exc))
else:
    import asyncio

    async def go():
        try:
            await octoai_lite.AsyncClient(**options).models.list()
            report(started, None)
        except Exception as exc:
            report(started, type(exc).__name__ + ": " + str(exc))

    asyncio.run(go())
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not shutil.which("unshare"), reason="needs Linux namespaces"
)
def test_8_the_deadline_bounds_name_resolution(flavor, tmp_path):
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(DNS_RESOLV_CONF)
    script = tmp_path / "stall.py"
    script.write_text(DNS_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = 'mount --bind "$0" /etc/resolv.conf || exit 77; exec "$1" "$2" "$3"'
    try:
        done = subprocess.run(
            ["unshare", "-rmn", "sh", "-c", command, str(resolv_conf), sys.executable, str(script), flavor.name],
            capture_output=True, text=True, timeout=15, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the call was still running after 15 s")
    if done.returncode != 0 or not done.stdout.strip():
        pytest.skip(f"no private network and mount namespaces here: {done.stderr.strip()[-200:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["error"] and report["error"].startswith("OctoAITimeoutError"), report
    assert report["seconds"] < 1.2, report


# =============================================================================
# 9. NO_PROXY with a bracketed IPv6 address and a port
# =============================================================================


@pytest.mark.parametrize(
    "no_proxy, port, bypassed",
    [
        ("[::1]:9", 9, True),
        ("[::1]:9", 10, False),
        ("example.com, [::1]:9", 9, True),
        ("[::1]", 9, True),
        ("::1", 9, True),
        ("[::2]:9", 9, False),
    ],
)
def test_9_no_proxy_rules_for_ipv6(no_proxy, port, bypassed):
    assert octoai_lite._bypasses_proxy("[::1]", port, no_proxy) is bypassed
    assert octoai_lite._bypasses_proxy("::1", port, no_proxy) is bypassed


@pytest.fixture
def ipv6_server():
    """A keep-alive JSON server on [::1]; skipped where there is no IPv6 loopback."""
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    listener.listen(8)
    requests = []

    def serve():
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with sock:
                sock.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        more = sock.recv(65536)
                        if not more:
                            break
                        data += more
                    requests.append(data)
                    sock.sendall(json_answer({"data": [{"id": "v6"}]}))
                    wait_for_close(sock, 1)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], requests
    listener.close()


def proxy_recorder(sock, server):
    server.read_request(sock)
    sock.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_9_no_proxy_keeps_a_bracketed_ipv6_host_with_a_port_off_the_proxy(
    raw_server, ipv6_server, flavor, monkeypatch
):  # fmt: skip
    port, requests = ipv6_server
    raw_server.handler = proxy_recorder
    monkeypatch.setenv("HTTP_PROXY", raw_server.url)
    monkeypatch.setenv("NO_PROXY", f"[::1]:{port}")
    client = flavor.make(base_url=f"http://[::1]:{port}/v1", token=TOKEN)
    assert flavor.models(client) == ["v6"]
    assert raw_server.requests == [], "the proxy received the request (and its Authorization header)"
    assert len(requests) == 1


# =============================================================================
# 10. The CONNECT authority
# =============================================================================


def refusing_proxy(sock, server):
    server.read_request(sock)
    sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    "base_url, authority",
    [
        ("https://[::1]:8443/v1", b"[::1]:8443"),
        ("https://[::1]/v1", b"[::1]:443"),
        ("https://b\u00fccher.example/v1", b"xn--bcher-kva.example:443"),
        ("https://\u4f8b\u3048.\u30c6\u30b9\u30c8:8443/v1", b"xn--r8jz45g.xn--zckzah:8443"),
    ],
    ids=["ipv6 with port", "ipv6", "latin-1 idn", "japanese idn"],
)
def test_10_connect_asks_for_a_well_formed_authority(raw_server, flavor, monkeypatch, base_url, authority):
    raw_server.handler = refusing_proxy
    monkeypatch.setenv("HTTPS_PROXY", raw_server.url)
    client = flavor.make(base_url=base_url)
    with pytest.raises(OctoAIConnectionError, match="refused a tunnel"):
        flavor.models(client)
    ((head, _),) = raw_server.requests
    lines = head.split(b"\r\n")
    assert lines[0] == b"CONNECT " + authority + b" HTTP/1.1"
    assert b"Host: " + authority in lines


# =============================================================================
# 11. Blank lines before a status line, and trailers, are bounded
# =============================================================================


def endless(prefix, filler):
    """Send `prefix`, then `filler` over and over for up to 3 s, or until the client hangs up."""

    def handler(sock, server):
        server.read_request(sock)
        sock.sendall(prefix)
        give_up_at = time.monotonic() + 3
        while time.monotonic() < give_up_at:
            sock.sendall(filler)

    return handler


ENDLESS = {
    "blank lines before the status line": (b"", b"\r\n" * 32768),
    "bare LFs before the status line": (b"", b"\n" * 65536),
    "trailer lines": (chunked_head() + b"2\r\n{}\r\n0\r\n", b"x-trailer: " + b"a" * 100 + b"\r\n"),
}


@pytest.mark.parametrize("case", sorted(ENDLESS))
def test_11_unbounded_preambles_and_trailers_are_refused(raw_server, flavor, case):
    raw_server.handler = endless(*ENDLESS[case])
    client = raw_client(flavor, raw_server, timeout=5)
    started = time.monotonic()
    with pytest.raises(OctoAIValidationError):
        flavor.infer(client, raw_server.url + "/x", {})
    assert time.monotonic() - started < 1.5


def test_11_a_few_blank_lines_and_a_trailer_still_frame_an_answer(raw_server, flavor):
    body = json.dumps(completion_body("framed")).encode()
    framed = b"\r\n\n\r\n" + chunked_head() + b"%x\r\n%s\r\n0\r\nx-trailer: 1\r\n\r\n" % (len(body), body)

    def handler(sock, server):
        while server.read_request(sock) is not None:
            sock.sendall(framed)

    raw_server.handler = handler
    client = raw_client(flavor, raw_server)
    assert flavor.chat(client).choices[0].message.content == "framed"


# =============================================================================
# Found by a hostile review of the lease pool (each failed on its first version)
# =============================================================================


def test_a_slot_is_free_only_once_its_socket_is_closed(server, monkeypatch):
    """max_connections=1: while stream A's socket is being closed from another thread, call B waiting for
    the slot must not connect: two sockets would be open at once."""
    server.script += [stream(chat_events_slow(), delay=0.05), stream()]
    client = octoai_lite.Client(base_url=server.url + "/v1", max_connections=1, timeout=5, max_retries=0)
    first = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    next(first)
    closing = threading.Event()
    real_close = octoai_lite._Connection.close

    def slow_close(conn):
        closing.set()
        time.sleep(0.6)  # the window between taking the connection out and its socket closing
        real_close(conn)

    monkeypatch.setattr(octoai_lite._Connection, "close", slow_close)
    second = threading.Thread(target=lambda: list(client.chat.completions.create(model="m", messages=MESSAGES,
                                                                                 stream=True)))  # fmt: skip
    second.start()
    time.sleep(0.1)  # B waits for the only slot
    threading.Thread(target=first.close).start()
    assert closing.wait(2)
    time.sleep(0.4)  # A's socket is still open
    assert server.connections == 1
    second.join(10)
    assert not second.is_alive() and server.connections == 2
    client.close()


def chat_events_slow():
    return [sse_event(chunk("", role="assistant"))] + [sse_event(chunk(f" w{i}")) for i in range(30)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_a_child_closing_a_stream_it_inherited_leaves_the_parent_its_answer():
    """A stream opened before a fork and closed in the child: the child's copy ends at once (it must not go
    on reading the socket it shares with the parent), and the parent reads the rest of its answer."""
    script = """
import os, sys, time
import conftest, octoai_lite
from conftest import MESSAGES, chunk, sse_event, stream
server = conftest.LoopbackServer()
serving = conftest.running(server)
serving.__enter__()
server.script.append(stream([sse_event(chunk(f" w{i}")) for i in range(10)] + [b"data: [DONE]\\n\\n"], delay=0.1))
client = octoai_lite.Client(base_url=server.url + "/v1", timeout=5, max_retries=0)
answer = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
first = next(answer).choices[0].delta.content
pid = os.fork()
if pid == 0:
    answer.close()
    started = time.monotonic()
    rest = list(answer)
    os._exit(0 if not rest and time.monotonic() - started < 0.5 else 1)
_, status = os.waitpid(pid, 0)
rest = "".join(piece.choices[0].delta.content for piece in answer)
print(status, first + rest)
os._exit(0)
"""
    line = run_script(script, timeout_s=15)
    assert line == "0 " + "".join(f" w{i}" for i in range(10))


def test_from_chunks_keeps_an_int_subclass_index_as_its_own_choice():
    class Index(int):
        pass

    folded = octoai_lite.ChatCompletion.from_chunks(
        [
            {"choices": [{"index": 0, "delta": {"content": "a"}}]},
            {"choices": [{"index": Index(1), "delta": {"content": "b"}}]},
        ]
    )
    assert [(choice.index, choice.message.content) for choice in folded.choices] == [(0, "a"), (1, "b")]


def test_chunks_before_a_malformed_one_in_the_same_read_are_handed_out_first(raw_server, flavor):
    """Whole chunks a read holds come as one piece: a malformed chunk after them, in the same write, must not
    take them down with it. The stream yields every event before it, then raises the framing error."""
    events = [sse_event(chunk("", role="assistant"))] + [sse_event(chunk(f" w{i}")) for i in range(5)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events) + b"zz\r\n"

    def handler(sock, request):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        wait_for_close(sock, 3)

    raw_server.handler = handler
    client = raw_client(flavor, raw_server)
    got = []
    with pytest.raises(OctoAIValidationError, match="malformed chunk-size line"):
        flavor.collect(client, got)
    assert "".join(got) == "".join(f" w{i}" for i in range(5))
