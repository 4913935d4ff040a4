"""Runs one measurement for one client in a fresh process and prints JSON.

python driver.py CLIENT TASK BASE_URL CA_FILE N [MODULE_DIR]
CLIENT: octoai_lite | openai | octoai | floor
TASK:   import | import_source | cold | plain | stream | ttfc | threads32 | threads64 (N requests in all)
        | concurrent (N streams at once from one async client) | steady (octoai_lite: N requests and
        N/10 streams on one Client and one AsyncClient: RSS and open files) | soak (one N-chunk stream)
Nothing is imported before the client under test is (time and sys are built in).

Environment: BENCH_CHUNKS (chunks per stream in `concurrent` and `steady`, default 50),
BENCH_STREAM_CONNECTIONS (the async clients' connection limit in `concurrent`, default 100),
BENCH_SERVER_PIDS (the bench server's processes, whose CPU time is read around the timed part).
"""

import sys
import time

CLIENT, TASK, BASE_URL, CA_FILE, N = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
MESSAGES = [{"role": "user", "content": "Say hello"}]


def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


module_dir = sys.argv[6] if len(sys.argv) > 6 else ""
if TASK == "import_source":
    # A vendored copy's first import where no .pyc can be written (read-only
    # deploys): Python compiles the source on every start.
    if CLIENT != "octoai_lite":
        print("RESULT {}")
        sys.exit(0)
    import shutil
    import tempfile

    sys.dont_write_bytecode = True
    module_dir = tempfile.mkdtemp()
    shutil.copy(sys.argv[6] + "/octoai_lite.py", module_dir)
started = time.perf_counter()
if CLIENT == "octoai_lite":
    sys.path.insert(0, module_dir)
    import octoai_lite
elif CLIENT == "openai":
    from openai import OpenAI
elif CLIENT == "octoai":
    from octoai.client import Client as OctoClient
else:
    import http.client
    import json
import_s = time.perf_counter() - started
import_rss = rss_kib()

import json  # noqa: E402  (after the timed import: every client has it loaded by now)
import os  # noqa: E402

THREADS_CONNECTIONS = 100  # the Client's connection limit in the threads tasks (its default)
STREAM_CONNECTIONS = int(os.environ.get("BENCH_STREAM_CONNECTIONS", "100"))
CHUNKS = int(os.environ.get("BENCH_CHUNKS", "50"))
SERVER_PIDS = [int(pid) for pid in os.environ.get("BENCH_SERVER_PIDS", "").split()]


def lite(cls, max_connections, **options):
    """An octoai_lite Client or AsyncClient with this connection limit per host."""
    options.update(base_url=BASE_URL, token="bench", max_retries=0)
    return cls(max_connections=max_connections, **options)


def server_cpu_s():
    """CPU seconds the bench server's processes have used so far (0 when not told their ids)."""
    total = 0
    for pid in SERVER_PIDS:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def open_files():
    """(open file descriptors, of which sockets) of this process."""
    files = sockets = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        files += 1
        sockets += target.startswith("socket:")
    return files, sockets


def thread_counts():
    """(threading.active_count(), OS threads in /proc/self/task)."""
    import threading

    return threading.active_count(), len(os.listdir("/proc/self/task"))


def expected_text(tag, count):
    """What the bench server streams for a request whose "user" is `tag` (see server.py)."""
    return "".join(f" {tag}:{i}" for i in range(count))


class Floor:
    """The least a stdlib client can do: one keep-alive connection, json out, json in."""

    def __init__(self, base_url, ca_file):
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        self.path = parts.path
        if parts.scheme == "https":
            import ssl

            context = ssl.create_default_context(cafile=ca_file)
            self.conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context)
        else:
            self.conn = http.client.HTTPConnection(parts.hostname, parts.port)

    def plain(self):
        body = json.dumps({"model": "m", "messages": MESSAGES})
        self.conn.request("POST", self.path + "/chat/completions", body, {"Content-Type": "application/json"})
        return json.loads(self.conn.getresponse().read())["choices"][0]["message"]["content"]

    def stream(self, max_tokens):
        body = json.dumps({"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": max_tokens})
        self.conn.request("POST", self.path + "/chat/completions", body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        for line in response:
            if line.startswith(b"data: "):
                data = line[6:].rstrip(b"\n")
                if data == b"[DONE]":
                    break
                yield json.loads(data)["choices"][0]["delta"]["content"]
        response.read()


class AsyncFloor:
    """The least a stdlib asyncio client can do: at most `limit` keep-alive connections
    (asyncio streams), a request written by hand, chunked SSE read and each event json-loaded."""

    def __init__(self, base_url, limit):
        import asyncio
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path.encode()
        self.slots = asyncio.Semaphore(limit)
        self.idle = []
        self.all = []

    async def stream(self, tag, max_tokens, opened):
        import asyncio

        async with self.slots:
            if self.idle:
                reader, writer = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                self.all.append(writer)
            body = json.dumps(
                {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": max_tokens, "user": tag}
            ).encode()
            writer.write(
                b"POST %s/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (self.path, self.host.encode(), self.port, len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
            opened[0] += 1
            opened[1] = max(opened[1], opened[0])
            parts, pending = [], b""
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                pending += (await reader.readexactly(size + 2))[:-2]
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    if event.startswith(b"data: ") and event != b"data: [DONE]":
                        parts.append(json.loads(event[6:])["choices"][0]["delta"]["content"])
            opened[0] -= 1
            self.idle.append((reader, writer))
            return "".join(parts)

    async def close(self):
        for writer in self.all:
            writer.close()


def make():
    if CLIENT == "octoai_lite":
        return lite(octoai_lite.Client, THREADS_CONNECTIONS, verify_ssl=CA_FILE)
    if CLIENT == "openai":
        import openai
        import ssl

        http_client = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=CA_FILE))
        return OpenAI(base_url=BASE_URL, api_key="bench", max_retries=0, http_client=http_client)
    if CLIENT == "octoai":
        import ssl

        client = OctoClient(token="bench", verify_ssl=ssl.create_default_context(cafile=CA_FILE))
        client.chat.completions.endpoint = BASE_URL + "/chat/completions"
        return client
    return Floor(BASE_URL, CA_FILE)


def plain(client):
    if CLIENT == "floor":
        return client.plain()
    return client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content


def stream(client, max_tokens):
    if CLIENT == "floor":
        return client.stream(max_tokens)
    chunks = client.chat.completions.create(model="m", messages=MESSAGES, stream=True, max_tokens=max_tokens)
    return (chunk.choices[0].delta.content for chunk in chunks if chunk.choices)


def cpu_per(call, count):
    before = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - before) / count


def threads(count):
    """N requests in all from `count` threads sharing one client (the floor: a connection per thread)."""
    import threading

    client = make() if CLIENT != "floor" else None
    per_thread = N // count
    start = threading.Barrier(count + 1, timeout=60)
    answers = []

    def work():
        own = client or make()  # the floor has no shared pool: one connection per thread
        start.wait()
        got = [plain(own) for _ in range(per_thread)]
        answers.append(len(got) == per_thread and all(got))

    workers = [threading.Thread(target=work) for _ in range(count)]
    for worker in workers:
        worker.start()
    start.wait()
    before, cpu, server = time.perf_counter(), time.process_time(), server_cpu_s()
    for worker in workers:
        worker.join(timeout=600)
    elapsed = time.perf_counter() - before
    if len(answers) != count or not all(answers):
        raise SystemExit(f"{count - sum(answers)} of {count} threads failed")
    return {
        "requests_per_s": count * per_thread / elapsed,
        "client_cpu_cores": (time.process_time() - cpu) / elapsed,
        "server_busy": (server_cpu_s() - server) / elapsed,
    }


def concurrent():
    """N streams at once from one async client: throughput, CPU per chunk, memory, threads, sockets."""
    import asyncio
    import resource

    if CLIENT == "octoai_lite":
        make_async = lambda: lite(octoai_lite.AsyncClient, STREAM_CONNECTIONS)  # noqa: E731
    elif CLIENT == "openai":
        import openai
        from openai import AsyncOpenAI

        def make_async():
            # the same limit as octoai_lite's (openai's default is 1,000 connections, 100 kept idle)
            limits = type(openai.DEFAULT_CONNECTION_LIMITS)(
                max_connections=STREAM_CONNECTIONS, max_keepalive_connections=min(32, STREAM_CONNECTIONS)
            )
            http_client = openai.DefaultAsyncHttpxClient(limits=limits)
            return AsyncOpenAI(base_url=BASE_URL, api_key="bench", max_retries=0, http_client=http_client)

    elif CLIENT == "floor":
        make_async = lambda: AsyncFloor(BASE_URL, STREAM_CONNECTIONS)  # noqa: E731
    else:
        return {}  # octoai-sdk has no asyncio client
    opened = [0, 0]  # streams with a response open now, most at once

    async def one(client, tag):
        if CLIENT == "floor":
            return await client.stream(tag, CHUNKS, opened)
        chunks = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, max_tokens=CHUNKS, extra_body={"user": tag}
        )
        opened[0] += 1
        opened[1] = max(opened[1], opened[0])
        try:
            return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])
        finally:
            opened[0] -= 1

    def snapshot():
        files, sockets = open_files()
        active, tasks = thread_counts()
        return {"rss_kib": rss_kib(), "files": files, "sockets": sockets, "threads": active, "tasks": tasks}

    async def run_all():
        own_sockets = open_files()[1]  # the event loop's own (its self-pipe), before the client has any
        client = make_async()
        assert await one(client, "warm") == expected_text("warm", CHUNKS)
        before = snapshot()
        peak = dict(before)
        timing = [True, 0.0, 0.0]  # the streams are running; the sampler's own CPU and wall time then
        done = asyncio.Event()  # set when every stream has ended

        async def sample():  # on the loop, not a thread: it must not change what it counts
            for _ in range(200_000):  # 5 ms apart: bounded at about 17 minutes
                if done.is_set():
                    return
                cpu, wall = time.process_time(), time.perf_counter()
                for key, value in snapshot().items():
                    peak[key] = max(peak[key], value)
                if timing[0]:  # its cost is taken out of the client's CPU and of the run's time
                    timing[1] += time.process_time() - cpu
                    timing[2] += time.perf_counter() - wall
                await asyncio.sleep(0.005)

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        wall, cpu, server = time.perf_counter(), time.process_time(), server_cpu_s()
        sampler = asyncio.ensure_future(sample())
        texts = await asyncio.wait_for(asyncio.gather(*(one(client, f"s{i}") for i in range(N))), 600)
        elapsed, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server = server_cpu_s() - server
        timing[0] = False
        done.set()
        await sampler
        server_busy = server / elapsed
        cpu -= timing[1]
        elapsed -= timing[2]
        after = snapshot()
        for key, value in after.items():
            peak[key] = max(peak[key], value)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if grown > maxrss:  # the high-water mark moved during the run: that is its peak
            peak["rss_kib"] = max(peak["rss_kib"], grown)
        await client.close()
        await asyncio.sleep(0.05)  # closed transports let go of their sockets on a later loop turn
        closed = snapshot()
        wrong = [i for i, text in enumerate(texts) if text != expected_text(f"s{i}", CHUNKS)]
        if wrong:
            raise SystemExit(
                f"{len(wrong)} of {N} streams got a wrong text, the first s{wrong[0]}: {texts[wrong[0]]!r}"
            )
        return {
            "streams_per_s": N / elapsed,
            "chunks": N * CHUNKS,
            "chunks_per_stream": CHUNKS,
            "texts_verified": N,
            "cpu_per_chunk_s": cpu / (N * CHUNKS),
            "client_cpu_cores": cpu / elapsed,
            "server_busy": server_busy,
            "rss_per_stream_kib": (peak["rss_kib"] - before["rss_kib"]) / N,
            "max_connections": STREAM_CONNECTIONS,
            "open_responses_peak": opened[1],
            "client_sockets_peak": peak["sockets"] - own_sockets,
            "client_sockets_closed": closed["sockets"] - own_sockets,
            "before": before,
            "peak": peak,
            "after": after,
            "closed": closed,
        }

    return asyncio.run(run_all())


def steady():
    """N requests then N/10 streams on one Client, then the same on one AsyncClient:
    RSS after the first N/20 requests against the end, and open files at each step."""
    import asyncio

    if CLIENT != "octoai_lite":
        return {}
    first, streams = N // 20, N // 10
    STREAM_TEXT = "Hello" + " tok" * (CHUNKS - 1)  # what server.py sends for an untagged stream
    result = {"requests": N, "streams": streams, "baseline_after": first, "chunks_per_stream": CHUNKS}
    files_start = open_files()[0]
    client = lite(octoai_lite.Client, THREADS_CONNECTIONS)
    for _ in range(first):
        assert plain(client)
    base, files_base = rss_kib(), open_files()[0]
    peak = base
    for i in range(N - first):
        assert plain(client)
        if i % 1000 == 0:
            peak = max(peak, rss_kib())
    for i in range(streams):
        assert "".join(text or "" for text in stream(client, CHUNKS)) == STREAM_TEXT
        if i % 100 == 0:
            peak = max(peak, rss_kib())
    end, files_end = rss_kib(), open_files()[0]
    client.close()
    result["sync"] = {
        "rss_base_kib": base,
        "rss_end_kib": end,
        "rss_peak_kib": max(peak, end),
        "files_start": files_start,
        "files_base": files_base,
        "files_end": files_end,
        "files_closed": open_files()[0],
    }

    async def run_async():
        files_start = open_files()[0]
        client = lite(octoai_lite.AsyncClient, THREADS_CONNECTIONS)

        async def ask():
            return (await client.chat.completions.create(model="m", messages=MESSAGES)).choices[0].message.content

        async def one_stream():
            chunks = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True, max_tokens=CHUNKS)
            return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])

        for _ in range(first):
            assert await ask()
        base, files_base = rss_kib(), open_files()[0]
        peak = base
        for i in range(N - first):
            assert await ask()
            if i % 1000 == 0:
                peak = max(peak, rss_kib())
        for i in range(streams):
            assert await one_stream() == STREAM_TEXT
            if i % 100 == 0:
                peak = max(peak, rss_kib())
        end, files_end = rss_kib(), open_files()[0]
        await client.close()
        await asyncio.sleep(0.05)
        return {
            "rss_base_kib": base,
            "rss_end_kib": end,
            "rss_peak_kib": max(peak, end),
            "files_start": files_start,
            "files_base": files_base,
            "files_end": files_end,
            "files_closed": open_files()[0],
        }

    result["async"] = asyncio.run(run_async())
    return result


result = {"import_s": import_s, "import_rss_kib": import_rss}
if TASK == "cold":
    client = make()
    assert plain(client)
    result["rss_after_call_kib"] = rss_kib()
elif TASK == "plain":
    client = make()
    cpu_per(lambda: plain(client), 50)  # warm up: connection, caches
    result["cpu_per_request_s"] = cpu_per(lambda: plain(client), N)
elif TASK == "stream":
    client = make()
    sum(1 for _ in stream(client, 100))
    before = time.process_time()
    count = sum(1 for _ in stream(client, N))
    result["cpu_per_chunk_s"] = (time.process_time() - before) / count
    result["chunks"] = count
elif TASK == "ttfc":
    client = make()
    sum(1 for _ in stream(client, 4))
    samples = []
    for _ in range(N):
        before = time.perf_counter()
        chunks = stream(client, 4)
        next(iter(chunks))
        samples.append(time.perf_counter() - before)
        sum(1 for _ in chunks)
    samples.sort()
    result["ttfc_s"] = samples[len(samples) // 2]
elif TASK.startswith("threads"):
    result.update(threads(int(TASK[len("threads") :])))
elif TASK == "concurrent":
    result.update(concurrent())
elif TASK == "steady":
    result.update(steady())
elif TASK == "soak":
    client = make()
    before = time.process_time()
    count = 0
    peak = rss_kib()
    for _ in stream(client, N):
        count += 1
        if count % 50000 == 0:
            peak = max(peak, rss_kib())
    result["chunks"] = count
    result["cpu_per_chunk_s"] = (time.process_time() - before) / count
    result["rss_start_kib"] = import_rss
    result["rss_peak_kib"] = peak
print("RESULT " + json.dumps(result))
