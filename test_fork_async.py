"""Issue 19: fork safety of the AsyncClient, over real loopback sockets (nothing patched).

The AsyncClient's counterpart of test_secrets.py's
`test_forks_taken_while_16_threads_use_the_client`. The parent's event loop
runs in a thread of its own (as in a server that forks workers); every child
makes a NEW event loop (asyncio.run) and uses the SAME inherited client.

1. 200 forks at random moments while 16 tasks stream and make plain
   requests on one AsyncClient: every child's first call answers within its
   timeout and the child exits 0 within a bound; the parent's calls all
   succeed, each with its own answer (no deadlock, no crossed answer, no
   stream of the parent disturbed by a child);
2. a child forked at a chosen moment: while the parent's loop thread holds
   the transport's lock (as it does for an instant in every call, finding
   its loop's pool), with one task half-way through a stream and another
   waiting for a pool slot; and a child that closes (or drops) a stream it
   inherited, which must leave the parent its answer and its pooled
   connection.

Children report through a pipe; one still running past its bound is killed
and counted as hung. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import signal
import threading
import time
import warnings

import pytest

from conftest import MESSAGES, SEED_TEXT, chunk, delta_text, sse_event, stream
from octoai_lite import AsyncClient

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")

FORKS, TASKS = 200, 16
CHILD_TIMEOUT_S = 2.0  # a child's call: its timeout and its deadline
CHILD_BOUND_S = 5.0  # a child exits within this after its fork, or it is killed and counted as hung
TEST_BOUND_S = 30.0


# -- helpers -------------------------------------------------------------------------


async def echo_stream(client, words, **options):
    """Stream conftest's echo route: the answer is `words`, each with a leading space. (pieces' text, folded text)"""
    messages = [{"role": "user", "content": "echo " + " ".join(words)}]
    chat_stream = await client.chat.completions.create(model="m", messages=messages, stream=True, **options)
    async with chat_stream:
        pieces = [delta_text(piece) or "" async for piece in chat_stream]
        folded = (await chat_stream.get_final_completion()).choices[0].message.content
    return "".join(pieces), folded


async def echo_infer(client, root, marker, **options):
    """A plain request whose answer quotes the request's body (conftest's /echo route)."""
    answer = await client.infer(root + "/echo", {"marker": marker}, **options)
    return json.loads(answer["body"])["marker"]


class LoopThread:
    """An event loop running for ever in a thread of its own."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # a concurrent.futures.Future

    def run(self, coroutine, timeout_s):
        return self.submit(coroutine).result(timeout_s)

    def close(self, client, timeout_s=5):
        """Close the client in its loop, then stop the loop and close it (its pools close at shutdown_asyncgens)."""
        try:
            self.run(client.close(), timeout_s)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout_s)
            assert not self.thread.is_alive(), "the parent's event loop did not stop"
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


class Children:
    """Forked children: each reports a line through a pipe, and exits within CHILD_BOUND_S or is killed."""

    def __init__(self):
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        self.running = {}  # pid: (name, forked at)
        self.results = {}  # name: exit code, "signal N" or "hung"
        self.reports = b""

    def fork(self, name, body, *args):
        """Fork; the child exits 0 if `body(*args)` returns None, 2 with its complaint, 1 if it raised."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a process with threads
            pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 3
            try:
                os.close(self.read_end)
                signal.alarm(int(CHILD_BOUND_S) + 5)  # the default action ends the child, should the parent be gone
                complaint = body(*args)
                code = 0 if complaint is None else 2
                if complaint is not None:
                    os.write(self.write_end, f"{name}: {complaint}"[:300].encode(errors="replace") + b"\n")
            except BaseException as exc:  # noqa: B902 - anything at all goes to the parent
                code = 1
                os.write(self.write_end, f"{name}: {exc!r}"[:300].encode(errors="replace") + b"\n")
            finally:
                os._exit(code)
        self.running[pid] = (name, time.monotonic())
        return pid

    def drain(self):
        try:
            while True:
                more = os.read(self.read_end, 1 << 16)
                if not more:
                    return
                self.reports += more
        except BlockingIOError:
            pass

    def reap(self, final=False):
        self.drain()  # a full pipe would block a child's report
        for pid, (name, forked_at) in list(self.running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.results[name] = os.WEXITSTATUS(status) if os.WIFEXITED(status) else f"signal {os.WTERMSIG(status)}"
            elif final or time.monotonic() - forked_at > CHILD_BOUND_S:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self.results[name] = "hung"
            else:
                continue
            del self.running[pid]

    def wait(self, bound_s):
        """Reap until every child is done or `bound_s` passed; whoever still runs then is killed as hung."""
        give_up_at = time.monotonic() + bound_s
        while self.running and time.monotonic() < give_up_at:
            self.reap()
            time.sleep(0.005)
        self.reap(final=True)

    def close(self):
        self.reap(final=True)
        os.close(self.write_end)
        self.drain()
        os.close(self.read_end)

    def check(self, count):
        reports = self.reports.decode(errors="replace")
        hung = sorted(name for name, code in self.results.items() if code == "hung")
        failed = {name: code for name, code in self.results.items() if code not in (0, "hung")}
        assert not hung, f"{len(hung)} of {count} children hung: {hung[:20]}; {reports[:2000]}"
        assert not failed, f"{len(failed)} of {count} children failed: {failed}; {reports[:2000]}"
        assert len(self.results) == count and all(code == 0 for code in self.results.values()), self.results


def wait_until(condition, timeout_s):
    give_up_at = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > give_up_at:
            return False
        time.sleep(0.002)
    return True


# =============================================================================
# 1. 200 forks while 16 tasks use one AsyncClient
# =============================================================================


def test_forks_taken_while_16_tasks_use_the_async_client(separate_server):
    """Half the tasks stream (a dozen words each, every call its own marker), the rest make plain requests
    (echoed markers, and plain completions) with short pauses, so that the pool holds idle connections too.
    A child shares nothing with the parent: its call goes on its own loop's pool, and its client.close()
    closes that pool only; the parent's streams open at a fork read to their end, and its idle connections
    serve its next calls. (Forks while a task waits for a pool slot: see the next test. Here the pool has room for
    every task, as in the threads' test: with fewer slots than tasks that loop without pause, a freed slot
    goes back to the task that freed it, and the others time out waiting, fork or no fork.)"""
    started = time.monotonic()
    root = separate_server[: -len("/v1")]
    client = AsyncClient(base_url=separate_server, timeout=3, max_retries=0)
    stop = threading.Event()
    failures = []
    calls = [0] * TASKS
    streaming = [0]  # the parent's streams open right now: read by the main thread at each fork
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    pauses = [random.Random(seed + number) for number in range(TASKS)]

    async def worker(number):
        try:
            while not stop.is_set():
                marker = f"t{number}n{calls[number]}"
                if number % 4 < 2:  # a stream whose every word carries the call's marker
                    words = [f"{marker}w{i}" for i in range(12)]
                    streaming[0] += 1
                    try:
                        text, folded = await echo_stream(client, words)
                    finally:
                        streaming[0] -= 1
                    answer, expected = (text, folded), ("".join(" " + word for word in words),) * 2
                elif number % 4 == 2:
                    answer, expected = await echo_infer(client, root, marker), marker
                else:
                    completion = await client.chat.completions.create(model="m", messages=MESSAGES)
                    answer, expected = completion.choices[0].message.content, SEED_TEXT
                if answer != expected:
                    failures.append(f"task {number} call {calls[number]}: expected {expected!r}, got {answer!r}")
                    return
                calls[number] += 1
                if number % 4 >= 2:  # a pause: its connection waits idle in the pool meanwhile
                    await asyncio.sleep(pauses[number].uniform(0, 0.003))
        except BaseException as exc:  # noqa: B902 - reported by the test
            failures.append(f"task {number} call {calls[number]}: {exc!r}")

    async def run_tasks():
        await asyncio.gather(*(worker(number) for number in range(TASKS)))

    def child(number):
        """A new event loop, the inherited client: one call with a short timeout and deadline, then close."""

        async def call():
            options = {"timeout": CHILD_TIMEOUT_S, "deadline": CHILD_TIMEOUT_S}
            began = time.monotonic()
            if number % 2:
                answer = await echo_stream(client, [f"child{number}"], **options)
                expected = (f" child{number}",) * 2
            else:
                answer, expected = await echo_infer(client, root, f"child{number}", **options), f"child{number}"
            took = time.monotonic() - began
            await client.close()  # the child's own pool; the parent's belong to the parent's loop
            if answer != expected:
                return f"expected {expected!r}, got {answer!r}"
            if took > CHILD_TIMEOUT_S:
                return f"its first call took {took:.2f} s"
            return None

        return asyncio.run(call())

    parent = LoopThread()
    children = Children()
    mid_stream = 0  # forks taken while at least one of the parent's streams was open
    try:
        tasks = parent.submit(run_tasks())
        assert wait_until(lambda: all(calls) or failures, 10), f"the tasks did not all start: {calls}"
        for number in range(FORKS):
            time.sleep(rng.uniform(0, 0.004))
            mid_stream += streaming[0] > 0
            children.fork(number, child, number)
            children.reap()
        children.wait(TEST_BOUND_S - (time.monotonic() - started))
    finally:
        children.close()  # whatever still runs is killed and counted as hung
        stop.set()
        try:
            tasks.result(max(1.0, TEST_BOUND_S - (time.monotonic() - started)))
        finally:
            parent.close(client)
    children.check(FORKS)
    assert not failures, f"seed {seed}: {failures[:10]}"
    assert all(calls), f"a parent task made no call at all: {calls}"
    assert mid_stream >= FORKS // 4, f"only {mid_stream} of {FORKS} forks came while a parent stream was open"
    assert time.monotonic() - started < TEST_BOUND_S


# =============================================================================
# 2. A child forked at a chosen moment
# =============================================================================

SLOW_WORDS = [f" w{i}" for i in range(10)]


def slow_stream():
    """Ten words, 50 ms apart: still half-read when the child is forked."""
    return stream([sse_event(chunk(word)) for word in SLOW_WORDS] + [b"data: [DONE]\n\n"], delay=0.05)


async def open_and_read_one(client):
    chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    return chat_stream, delta_text(await chat_stream.__anext__())


async def read_rest(chat_stream):
    async with chat_stream:
        return "".join([delta_text(piece) or "" async for piece in chat_stream])


def test_a_child_forked_while_the_loop_thread_holds_the_transport_lock_can_call(server):
    """At the fork the parent's loop thread holds the transport's lock (as while it finds its loop's pool, at
    every call), one task holds the only pool slot half-way through a stream, and another waits for that slot.
    The child's call on a new loop answers at once on its own new connection; then the parent's stream reads
    to its end and the waiting task gets the slot and its answer."""
    server.script.append(slow_stream())
    client = AsyncClient(base_url=server.url + "/v1", timeout=3, max_retries=0, max_connections=1)
    lock_types = (type(threading.Lock()), type(threading.RLock()))
    locks = [value for value in vars(client._transport).values() if isinstance(value, lock_types)]
    assert locks, "the transport has no lock: update this lookup"
    parent = LoopThread()
    children = Children()
    held, release = threading.Event(), threading.Event()

    def hold():  # runs in the parent's loop thread
        with locks[0]:
            held.set()
            release.wait(CHILD_BOUND_S)

    def child():
        async def call():
            return await echo_stream(client, ["child"], timeout=CHILD_TIMEOUT_S, deadline=CHILD_TIMEOUT_S)

        began = time.monotonic()
        answer = asyncio.run(call())
        took = time.monotonic() - began
        if answer != (" child", " child"):
            return f"got {answer!r}"
        return f"its call took {took:.2f} s" if took > CHILD_TIMEOUT_S else None

    try:
        chat_stream, first = parent.run(open_and_read_one(client), 5)
        parent_port = server.requests[-1].port
        waiting = parent.submit(client.chat.completions.create(model="m", messages=MESSAGES))
        time.sleep(0.05)  # it waits for the one slot, which the half-read stream holds
        assert not waiting.done()
        parent.loop.call_soon_threadsafe(hold)
        assert held.wait(5)
        try:
            children.fork("child", child)
        finally:
            release.set()
        children.wait(CHILD_BOUND_S + 1)
        rest = parent.run(read_rest(chat_stream), 5)
        waited = waiting.result(5).choices[0].message.content
    finally:
        release.set()
        children.close()
        parent.close(client)
    children.check(1)
    assert first + rest == "".join(SLOW_WORDS)
    assert waited == SEED_TEXT
    child_requests = [r for r in server.requests if b"echo child" in r.body]
    assert len(child_requests) == 1
    assert child_requests[0].port != parent_port, "the child sent its request on the parent's connection"


@pytest.mark.parametrize("how", ["aclose", "dropped"])
def test_a_child_closing_a_stream_it_inherited_leaves_the_parent_its_answer_and_its_pool(server, how):
    """The parent has a stream half-read and an idle pooled connection. The child, on a new loop, closes its
    copy of the stream (or drops it to the collector), closes the client, and exits: the parent reads its
    stream to the end, and its next call goes on the idle pooled connection, at once."""
    client = AsyncClient(base_url=server.url + "/v1", timeout=1, max_retries=0)
    parent = LoopThread()
    children = Children()

    async def two_at_once():  # two connections, both left idle in the pool
        return await asyncio.gather(*(client.chat.completions.create(model="m", messages=MESSAGES) for _ in "ab"))

    state = {}

    def child():
        async def close_what_was_inherited():
            if how == "aclose":
                await state["stream"].aclose()
            else:
                state.clear()
                gc.collect()
            await client.close()

        began = time.monotonic()
        asyncio.run(close_what_was_inherited())
        took = time.monotonic() - began
        return f"closing took {took:.2f} s" if took > 0.5 else None

    try:
        parent.run(two_at_once(), 5)
        pooled_ports = {r.port for r in server.requests}
        assert len(pooled_ports) == 2
        server.script.append(slow_stream())
        state["stream"], first = parent.run(open_and_read_one(client), 5)  # on one of them: the other stays idle
        children.fork("child", child)
        children.wait(CHILD_BOUND_S)
        chat_stream = state.pop("stream")
        began = time.monotonic()
        rest = parent.run(read_rest(chat_stream), 5)
        again = parent.run(client.chat.completions.create(model="m", messages=MESSAGES), 5)
        took = time.monotonic() - began
    finally:
        children.close()
        parent.close(client)
    children.check(1)
    assert first + rest == "".join(SLOW_WORDS)
    assert again.choices[0].message.content == SEED_TEXT
    assert server.requests[-1].port in pooled_ports, "the parent's next call did not reuse its idle connection"
    assert took < 1.5, f"the parent's stream and call took {took:.2f} s"


@pytest.mark.parametrize("parent_loop", ["running in a thread", "idle between calls"])
def test_a_child_closing_the_client_leaves_the_parent_its_pooled_connections(server, parent_loop):
    """The parent has two idle pooled connections; the child closes the client (as `async with` does) on a
    new loop and exits. The parent's loop either runs in a thread of its own, or is this thread's, idle
    between run_until_complete calls at the fork (as conftest's AsyncFlavor drives it). The parent's next
    calls go on its pooled connections, at once."""
    client = AsyncClient(base_url=server.url + "/v1", timeout=1, max_retries=0)
    children = Children()
    if parent_loop == "running in a thread":
        parent = LoopThread()
        run, close = (lambda coroutine: parent.run(coroutine, 5)), (lambda: parent.close(client))
    else:
        loop = asyncio.new_event_loop()

        def run(coroutine):
            return loop.run_until_complete(asyncio.wait_for(coroutine, 5))

        def close():
            try:
                run(client.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def two_at_once():
        return await asyncio.gather(*(client.chat.completions.create(model="m", messages=MESSAGES) for _ in "ab"))

    def child():
        began = time.monotonic()
        asyncio.run(client.close())
        took = time.monotonic() - began
        return f"closing took {took:.2f} s" if took > 0.5 else None

    try:
        run(two_at_once())
        pooled_ports = {r.port for r in server.requests}
        assert len(pooled_ports) == 2
        children.fork("child", child)
        children.wait(CHILD_BOUND_S)
        began = time.monotonic()
        answers = run(two_at_once())
        took = time.monotonic() - began
    finally:
        children.close()
        close()
    children.check(1)
    assert [answer.choices[0].message.content for answer in answers] == [SEED_TEXT] * 2
    assert {r.port for r in server.requests[-2:]} == pooled_ports, "the parent's calls did not reuse its connections"
    assert took < 1, f"the parent's calls took {took:.2f} s"
