"""What only AsyncClient has to show: many streams on one thread, cancellation,
asyncio.wait_for, and a clean loop at the end. Every other behaviour runs
against both clients through the `flavor` fixture (see conftest.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

import octoai_lite
from conftest import chunk, reply, sse_event, stall, stream

ROOT = Path(__file__).resolve().parent


def test_200_concurrent_streams_on_one_thread_within_the_pool_bound(separate_server):
    threads_before = threading.active_count()
    peaks = {"threads": 0, "open": 0}

    async def one(client, number):
        words = [f"w{number}x{i}" for i in range(5)]
        chat_stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "echo " + " ".join(words)}], stream=True
        )
        pieces = []
        async for piece in chat_stream:
            pieces.append(piece.choices[0].delta.content)
            peaks["threads"] = max(peaks["threads"], threading.active_count())
            peaks["open"] = max(peaks["open"], client._transport.pool.open_count())
        return "".join(pieces), " " + " ".join(words)

    async def main():
        async with octoai_lite.AsyncClient(base_url=separate_server, timeout=10, max_retries=0, max_connections=16) as client:
            return await asyncio.gather(*(one(client, n) for n in range(200)))

    results = asyncio.run(main())
    assert len(results) == 200 and all(got == expected for got, expected in results)
    assert peaks["threads"] == threads_before  # no thread per request, not even for DNS (an IP literal)
    assert 1 <= peaks["open"] <= 16


def test_cancelling_a_task_mid_stream_closes_its_connection(server):
    server.script.append(stream([sse_event(chunk(f"{i} ")) for i in range(100)], delay=0.05))

    async def main():
        got = []
        gate = asyncio.Event()

        async def consume(client):
            async for piece in await client.chat.completions.create(model="m", messages=[], stream=True):
                got.append(piece.choices[0].delta.content)
                gate.set()

        async with octoai_lite.AsyncClient(base_url=server.url + "/v1", timeout=5, max_retries=0) as client:
            task = asyncio.ensure_future(consume(client))
            await gate.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client._transport.pool.open_count() == 0  # closed, not returned to the pool
            await client.models.list()
        return got

    started = time.monotonic()
    got = asyncio.run(main())
    assert got[0] == "0 " and len(got) < 100
    assert server.client_gone.wait(5)  # the server saw the connection end
    assert server.requests[-1].port != server.requests[-2].port  # not reused
    assert time.monotonic() - started < 3


def test_wait_for_around_a_call_and_the_client_stays_usable(server):
    server.script.append(stall(2))

    async def main():
        async with octoai_lite.AsyncClient(base_url=server.url + "/v1", timeout=5, max_retries=0) as client:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.chat.completions.create(model="m", messages=[]), 0.2)
            assert time.monotonic() - started < 1
            assert client._transport.pool.open_count() == 0
            completion = await client.chat.completions.create(model="m", messages=[])
            return completion.choices[0].message.content

    assert asyncio.run(main()).startswith("Founded")


def test_nothing_is_left_pending_when_the_loop_closes(server, caplog, recwarn):
    caplog.set_level(logging.DEBUG, logger="asyncio")

    async def main():
        client = octoai_lite.AsyncClient(base_url=server.url + "/v1", timeout=5, max_retries=0)
        chat_stream = await client.chat.completions.create(model="m", messages=[], stream=True)
        async for _ in chat_stream:
            break  # abandoned mid-stream, never closed
        await client.chat.completions.create(model="m", messages=[])  # an idle pooled connection
        infer = await client.infer_stream(server.url + "/v1/chat/completions", {"stream": True})
        del infer  # never iterated

    asyncio.run(main())
    import gc

    gc.collect()
    assert "Task was destroyed" not in caplog.text and "never retrieved" not in caplog.text
    assert not [w for w in recwarn if issubclass(w.category, (ResourceWarning, RuntimeWarning))]


def test_async_errors_carry_the_server_message(server):
    server.script.append(reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "120"}))

    async def main():
        async with octoai_lite.AsyncClient(base_url=server.url + "/v1", timeout=5, max_retries=3) as client:
            await client.chat.completions.create(model="m", messages=[])

    with pytest.raises(octoai_lite.RateLimitError, match="slow down") as info:
        asyncio.run(main())
    assert info.value.retry_after == 120


class LoopThatCannotWatchSockets(asyncio.SelectorEventLoop):
    """A real event loop without add_reader, as Windows' default (proactor) loop is."""

    def add_reader(self, *args):
        raise NotImplementedError


def test_a_loop_that_cannot_watch_sockets_gets_a_clear_error(server):
    server.script.append(stall(0.2))  # nothing to read at once: the client must wait for the socket

    async def main():
        async with octoai_lite.AsyncClient(base_url=server.url + "/v1", timeout=5, max_retries=0) as client:
            await client.chat.completions.create(model="m", messages=[])

    loop = LoopThatCannotWatchSockets()
    try:
        with pytest.raises(octoai_lite.OctoAIClientError, match="WindowsSelectorEventLoopPolicy"):
            loop.run_until_complete(main())
    finally:
        loop.close()
