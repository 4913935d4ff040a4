"""A fast loopback Chat Completions server for the benchmarks (HTTP and HTTPS).

python bench/server.py PORT_FILE [CERT KEY]  writes "http_port https_port" to PORT_FILE.
POST /v1/chat/completions answers JSON, or with "stream": true sends
`max_tokens` chunks (chunked SSE) then [DONE]. Keep-alive throughout.
"""

import asyncio
import json
import ssl
import sys

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there, this is a benchmark answer."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19},
    }
).encode()


def sse(payload):
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def chunk(content, finish=None):
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        }
    ).encode()


CHUNK = sse(chunk(" tok"))
FIRST = sse(chunk("Hello"))
LAST = sse(chunk("", "stop")) + sse(b"[DONE]") + b"0\r\n\r\n"
MODELS = json.dumps({"object": "list", "data": [{"id": "bench-model", "object": "model"}]}).encode()


def head(status, content_type, length=None):
    framing = b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked"
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\n%s\r\n\r\n" % (status, content_type, framing)


async def handle(reader, writer):
    try:
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = raw.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == "content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if path.endswith("/chat/completions") and method == "POST":
                request = json.loads(body)
                if request.get("stream"):
                    count = int(request.get("max_tokens") or 16)
                    writer.write(head(b"200 OK", b"text/event-stream") + FIRST)
                    await writer.drain()
                    sent = 1
                    while sent < count:
                        batch = min(512, count - sent)
                        writer.write(CHUNK * batch)
                        sent += batch
                        await writer.drain()
                    writer.write(LAST)
                else:
                    writer.write(head(b"200 OK", b"application/json", len(COMPLETION)) + COMPLETION)
            elif path.endswith("/models"):
                writer.write(head(b"200 OK", b"application/json", len(MODELS)) + MODELS)
            else:
                writer.write(head(b"404 Not Found", b"text/plain", 0))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    port_file = sys.argv[1]
    plain = await asyncio.start_server(handle, "127.0.0.1", 0)
    ports = [plain.sockets[0].getsockname()[1]]
    servers = [plain]
    if len(sys.argv) > 3:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
        secure = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        ports.append(secure.sockets[0].getsockname()[1])
        servers.append(secure)
    with open(port_file, "w") as file:
        file.write(" ".join(map(str, ports)))
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main())
