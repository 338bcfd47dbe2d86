"""Test backends for the web workers' proxies.

Usage: backends.py http PORT_FILE    -- an HTTP server answering every request with a JSON echo of
                                        its method, path and headers
       backends.py ws PORT_FILE      -- a WebSocket server echoing every message, prefixed "echo:"
       backends.py wsclient URL MSG  -- connects to URL, sends MSG, prints the reply
Servers bind 127.0.0.1:0 and write their port to PORT_FILE.
"""
import asyncio
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def http_backend(port_file):
    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


async def ws_backend(port_file):
    import os
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send("echo:" + message)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.rename(port_file + ".tmp", port_file)
        await asyncio.Future()


async def ws_client(url, message):
    from websockets.asyncio.client import connect
    async with connect(url, open_timeout=10) as ws:
        await ws.send(message)
        print(await asyncio.wait_for(ws.recv(), 10))


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "http":
        http_backend(sys.argv[2])
    elif kind == "ws":
        asyncio.run(ws_backend(sys.argv[2]))
    else:
        asyncio.run(ws_client(sys.argv[2], sys.argv[3]))
