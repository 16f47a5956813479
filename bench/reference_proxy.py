"""The reference: a FastAPI + httpx forwarding proxy of the shape older pod managers ship.

Kept in bench/ only, to measure rpm's proxy against. One shared httpx.AsyncClient; non-streaming
requests are read whole and returned; streaming ones use `client.send(stream=True)` and a
StreamingResponse over `aiter_raw()`. No wake, no cache, no metrics: the cheapest version of that shape.

Run:  python bench/reference_proxy.py --upstream http://127.0.0.1:9001 --port 9003
(needs the bench extras: pip install -e '.[bench]')
"""

from __future__ import annotations

import argparse
import json

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


def build(upstream: str) -> FastAPI:
    app = FastAPI()
    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(300.0, connect=10.0),
                               limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200))

    @app.api_route("/v1/{path:path}", methods=["GET", "POST"])
    async def forward(path: str, request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        stream = False
        if body:
            try:
                stream = bool(json.loads(body).get("stream"))
            except (ValueError, AttributeError):
                stream = False
        upstream_request = client.build_request(request.method, f"/v1/{path}", content=body, headers=headers,
                                                params=request.query_params)
        if stream:
            reply = await client.send(upstream_request, stream=True)
            return StreamingResponse(reply.aiter_raw(), status_code=reply.status_code,
                                     media_type=reply.headers.get("content-type"),
                                     background=BackgroundTask(reply.aclose))
        reply = await client.send(upstream_request)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(content=reply.content, status_code=reply.status_code, headers=out)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.upstream), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
