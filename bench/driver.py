"""Runs one measurement for one client in a fresh process and prints JSON.

python driver.py CLIENT TASK BASE_URL CA_FILE N
CLIENT: octoai_lite | openai | octoai | floor
TASK:   import | cold | plain | stream | ttfc | threads | soak
Nothing is imported before the client under test is (time and sys are built in).
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


def make():
    if CLIENT == "octoai_lite":
        return octoai_lite.Client(base_url=BASE_URL, token="bench", verify_ssl=CA_FILE, max_retries=0)
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
elif TASK == "threads":
    import threading

    client = make() if CLIENT != "floor" else None
    per_thread = N // 32
    done = []

    def work():
        own = client or make()  # the floor has no shared pool: one connection per thread
        for _ in range(per_thread):
            plain(own)
        done.append(1)

    threads = [threading.Thread(target=work) for _ in range(32)]
    before = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result["requests_per_s"] = 32 * per_thread / (time.perf_counter() - before)
elif TASK == "concurrent":
    # N concurrent streams of 50 chunks from one async client, where the client has one.
    import asyncio

    if CLIENT == "octoai_lite":
        make_async = lambda: octoai_lite.AsyncClient(base_url=BASE_URL, token="bench", max_retries=0)  # noqa: E731
    elif CLIENT == "openai":
        from openai import AsyncOpenAI

        make_async = lambda: AsyncOpenAI(base_url=BASE_URL, api_key="bench", max_retries=0)  # noqa: E731
    else:
        make_async = None
    if make_async is not None:

        async def one(client):
            chunks = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True, max_tokens=50)
            return sum([1 async for chunk in chunks if chunk.choices])

        async def run_all():
            client = make_async()
            await one(client)
            before = time.perf_counter()
            counts = await asyncio.gather(*(one(client) for _ in range(N)))
            elapsed = time.perf_counter() - before
            await client.close()
            return sum(counts), elapsed

        total, elapsed = asyncio.run(run_all())
        result["streams_per_s"] = N / elapsed
        result["chunks"] = total
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
print("RESULT " + __import__("json").dumps(result))
