"""A tiny HTTP/1.1 server to stand behind fastproxy in the demo (ci/demo.sh).

    python -m fastproxy.demo_upstream [--host 127.0.0.1] [--port 8080]

Every request gets ``200`` with the body ``hello from the demo upstream`` followed by the
request line's path and any ``x-*`` request headers (so headers a route adds are visible).
Keep-alive, Content-Length and chunked request bodies are handled; it is not meant for anything
but the demo.
"""
from __future__ import annotations

import argparse
import asyncio

GREETING = b"hello from the demo upstream\n"
MAX_HEAD = 64 * 1024


async def _read_body(reader: asyncio.StreamReader, headers: dict) -> None:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            await reader.readexactly(size + 2)
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(length)


def _response(status: str, body: bytes, close: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + body


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                writer.write(_response("400 Bad Request", b"bad request\n", True))
                await writer.drain()
                return
            method, path, version = parts
            headers: dict[str, str] = {}
            extra = []
            for line in lines[1:]:
                if not line:
                    continue
                name, _, value = line.partition(":")
                name, value = name.strip(), value.strip()
                headers[name.lower()] = value
                if name.lower().startswith("x-"):
                    extra.append(f"{name}: {value}\n")
            await _read_body(reader, headers)
            conn = headers.get("connection", "").lower()
            close = "close" in conn or (version == "HTTP/1.0" and "keep-alive" not in conn)
            body = GREETING + f"path: {path}\n".encode("latin-1") + "".join(extra).encode("latin-1")
            if method == "HEAD":
                writer.write(_response("200 OK", body, close)[: -len(body)])
            else:
                writer.write(_response("200 OK", body, close))
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(_serve, host, port, limit=MAX_HEAD, reuse_address=True)
    print(f"demo upstream listening on http://{host}:{port}/", flush=True)
    async with server:
        await server.serve_forever()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fastproxy.demo_upstream", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
