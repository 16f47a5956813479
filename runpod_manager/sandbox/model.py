"""The fake vLLM server inside each sandbox pod, reached like RunPod's HTTP proxy.

`/pods/{pod_id}-{port}/...` stands for `https://{pod_id}-{port}.proxy.runpod.net/...`: 404 when the pod
or the `port/http` entry does not exist, 502 until the pod is RUNNING and its model has loaded (or
after the model crashed), then vLLM's OpenAI-compatible API: /health, /version, /v1/models,
/v1/chat/completions, /v1/completions (both streaming or not), /v1/embeddings and /metrics.

A pod whose image is not a vLLM image gets the fake generic service (service.py) behind the same URL
checks instead: `handle` resolves the pod and hands such requests to it.

Text is deterministic: the same prompt and sampling parameters give the same tokens. A streaming client
that disconnects stops generation, and the pod's running-request gauge drops at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from runpod_manager.sandbox.pods import ModelStats, Pod, serves_vllm
from runpod_manager.sandbox.world import World

if TYPE_CHECKING:
    from runpod_manager.sandbox.service import ServiceServer

MAX_BODY_BYTES = 8 * 1024 * 1024
ModelRoute = Callable[[web.Request, Pod], Awaitable[web.StreamResponse]]
VLLM_VERSION = "0.11.0+sandbox"
_EMBEDDING_DIMENSIONS = 32

# RunPod's proxy answers 502 with a small HTML page when nothing listens on the port yet.
_BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)

_WORDS = (
    "the", "model", "answers", "with", "a", "short", "sentence", "about", "pods", "and", "GPUs", "that",
    "wake", "when", "needed", "sleep", "otherwise", "while", "tokens", "stream", "back", "to", "your",
    "editor", "in", "small", "steady", "pieces", "every", "request", "is", "served", "by", "sandbox",
    "hardware", "which", "costs", "nothing", "but", "behaves", "like", "real", "cloud", "machines", "do",
    "under", "load", "so", "tests", "stay", "honest", "fast", "repeatable", "clear",
)


def _openai_error(status: int, message: str, *, param: str | None = None) -> web.Response:
    """vLLM's error body (OpenAI's shape)."""
    kind = {404: "NotFoundError", 500: "InternalServerError"}.get(status, "BadRequestError")
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


class _BadRequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def _compact(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"))


def count_tokens(text: str) -> int:
    """A tokenizer's rule of thumb (about four characters a token); deterministic is what matters."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def generate(key: str, max_tokens: int | None) -> tuple[list[str], str]:
    """Deterministic tokens for a prompt key, and the finish reason ('stop' or 'length')."""
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    natural = rng.randint(8, 40)
    words = [rng.choice(_WORDS) for _ in range(natural)]
    words[0] = words[0].capitalize()
    words[-1] += "."
    tokens = [word if index == 0 else " " + word for index, word in enumerate(words)]
    if max_tokens is not None and max_tokens < natural:
        return tokens[:max_tokens], "length"
    return tokens, "stop"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


class ModelServer:
    """Serves every pod's model through one aiohttp route."""

    def __init__(self, world: World, token_delay_seconds: float = 0.0,
                 service: ServiceServer | None = None) -> None:
        self.world = world
        self.token_delay_seconds = token_delay_seconds
        self.service = service
        self._routes: dict[str, tuple[str, ModelRoute]] = {
            "/health": ("GET", self._health),
            "/version": ("GET", self._version),
            "/metrics": ("GET", self._metrics),
            "/v1/models": ("GET", self._models),
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
            "/v1/embeddings": ("POST", self._embeddings),
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = request.match_info["target"]
        pod_id, _, port_text = target.rpartition("-")
        if not pod_id or not port_text.isdigit():
            return web.Response(status=404, text="404 page not found\n")
        state, pod = self.world.model_state(pod_id, int(port_text))
        if state == "missing" or pod is None:
            return web.Response(status=404, text="404 page not found\n")
        if state == "down":
            return web.Response(status=502, text=_BAD_GATEWAY_HTML, content_type="text/html")
        path = "/" + request.match_info.get("tail", "")
        if self.service is not None and not serves_vllm(pod.image):
            return await self.service.route(request, pod, int(port_text), path)
        return await self._route(request, pod, path)

    async def _route(self, request: web.Request, pod: Pod, path: str) -> web.StreamResponse:
        api_key = self.world.model_api_key(pod)
        authorized = request.headers.get("Authorization", "") == f"Bearer {api_key}"
        if path.startswith("/v1") and request.method != "OPTIONS" and api_key is not None and not authorized:
            # vLLM's exact answer, which clients (and our proxy) recognise. Its middleware runs before
            # routing, so an unknown /v1 path without the key is a 401 too, not a 404.
            return web.json_response({"error": "Unauthorized"}, status=401)
        if path not in self._routes:
            return web.json_response({"detail": "Not Found"}, status=404)
        method, handler = self._routes[path]
        if request.method != method:
            return web.json_response({"detail": "Method Not Allowed"}, status=405, headers={"Allow": method})
        try:
            return await handler(request, pod)
        except _BadRequestError as exc:
            return _openai_error(exc.status, exc.message, param=exc.param)

    # -- simple endpoints --

    async def _health(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        return web.Response(status=200)

    async def _version(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        return web.json_response({"version": VLLM_VERSION})

    async def _models(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        name = self.world.model_name(pod)
        created = int(pod.model_ready_at or time.time())
        model = {
            "id": name, "object": "model", "created": created, "owned_by": "vllm", "root": name,
            "parent": None, "max_model_len": self.world.max_model_len(pod),
            "permission": [{
                "id": f"modelperm-{hashlib.sha256(pod.id.encode()).hexdigest()[:32]}",
                "object": "model_permission", "created": created, "allow_create_engine": False,
                "allow_sampling": True, "allow_logprobs": True, "allow_search_indices": False,
                "allow_view": True, "allow_fine_tuning": False, "organization": "*", "group": None,
                "is_blocking": False,
            }],
        }
        return web.json_response({"object": "list", "data": [model]})

    async def _metrics(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        stats = self.world.model_stats.setdefault(pod.id, ModelStats())
        label = f'model_name="{self.world.model_name(pod)}"'
        lines = [
            "# HELP vllm:num_requests_running Number of requests currently running on GPU.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{label}}} {float(stats.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{label}}} {float(stats.waiting)}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{label}}} {float(stats.prompt_tokens)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{label}}} {float(stats.generation_tokens)}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
        ]
        lines += [f'vllm:request_success_total{{finished_reason="{reason}",{label}}} {float(count)}'
                  for reason, count in sorted(stats.finished.items())]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff"}, charset="utf-8")

    # -- request parsing --

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        raw = bytearray()
        async for chunk in request.content.iter_chunked(65536):
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise _BadRequestError(413, f"request body exceeds {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(bytes(raw))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadRequestError(400, f"JSON decode error: {exc}") from None
        except RecursionError:
            raise _BadRequestError(400, "JSON decode error: nested too deeply") from None
        if not isinstance(body, dict):
            raise _BadRequestError(400, "Input should be a valid dictionary or object to extract fields from")
        return body

    def _check_model(self, body: dict[str, Any], pod: Pod) -> str:
        name = self.world.model_name(pod)
        requested = body.get("model")
        if requested is not None and requested != name:
            raise _BadRequestError(404, f"The model `{requested}` does not exist.", param="model")
        return name

    def _sampling(self, body: dict[str, Any], default_max_tokens: int | None) -> tuple[int | None, int, str]:
        """max tokens, n, and the sampling-parameter part of the determinism key."""
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max_tokens))
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                       or max_tokens < 1):
            message = "max_tokens must be at least 1, got " + json.dumps(max_tokens)
            raise _BadRequestError(400, message, "max_tokens")
        n = body.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 16:
            raise _BadRequestError(400, "n must be an integer between 1 and 16", "n")
        key = _compact({k: body.get(k) for k in ("temperature", "top_p", "top_k", "seed", "stop")})
        return max_tokens, n, key

    def _stream_options(self, body: dict[str, Any]) -> tuple[bool, bool]:
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise _BadRequestError(400, "stream must be a boolean", "stream")
        options = body.get("stream_options")
        if options is not None and not stream:
            message = "Stream options can only be defined when `stream=True`."
            raise _BadRequestError(400, message, "stream_options")
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        return stream, include_usage

    def _check_context(self, pod: Pod, prompt_tokens: int, max_tokens: int | None, what: str) -> None:
        limit = self.world.max_model_len(pod)
        requested = prompt_tokens + (max_tokens or 0)
        if requested > limit:
            raise _BadRequestError(400, f"This model's maximum context length is {limit} tokens. "
                                        f"However, you requested {requested} tokens ({prompt_tokens} in the "
                                        f"{what}, {max_tokens or 0} in the completion). Please reduce the "
                                        f"length of the {what} or completion.")

    # -- generation --

    async def _chat(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        body = await self._json_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequestError(400, "messages: Field required (a non-empty list of messages)", "messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message:
                raise _BadRequestError(400, f"messages[{index}]: each message needs a 'role'", "messages")
        model = self._check_model(body, pod)
        max_tokens, n, sampling_key = self._sampling(body, None)
        stream, include_usage = self._stream_options(body)
        texts = [f"{m['role']}: {_content_text(m.get('content'))}" for m in messages]
        prompt_tokens = sum(count_tokens(t) + 3 for t in texts) + 3
        self._check_context(pod, prompt_tokens, max_tokens, "messages")
        key = "\n".join(texts) + sampling_key
        outputs = [generate(f"{key}#{index}", max_tokens) for index in range(n)]
        return await self._respond(request, pod, kind="chat", model=model, outputs=outputs,
                                   prompt_tokens=prompt_tokens, stream=stream, include_usage=include_usage)

    async def _completions(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        body = await self._json_body(request)
        if body.get("suffix") is not None:
            # vLLM refuses suffix outright; clients that send it (FIM) must see that.
            raise _BadRequestError(400, "suffix is not currently supported", "suffix")
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            prompts = [" ".join(map(str, prompt))]  # token ids: any deterministic text will do
        else:
            raise _BadRequestError(400, "prompt: Field required (a string or a list of strings)", "prompt")
        model = self._check_model(body, pod)
        max_tokens, n, sampling_key = self._sampling(body, 16)  # the completions API's documented default
        stream, include_usage = self._stream_options(body)
        prompt_tokens = sum(count_tokens(p) for p in prompts)
        self._check_context(pod, max(count_tokens(p) for p in prompts), max_tokens, "prompt")
        outputs = [generate(f"{p}{sampling_key}#{index}", max_tokens) for p in prompts for index in range(n)]
        return await self._respond(request, pod, kind="text", model=model, outputs=outputs,
                                   prompt_tokens=prompt_tokens, stream=stream, include_usage=include_usage)

    async def _embeddings(self, request: web.Request, pod: Pod) -> web.StreamResponse:
        body = await self._json_body(request)
        raw_input = body.get("input")
        inputs = [raw_input] if isinstance(raw_input, str) else raw_input
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            raise _BadRequestError(400, "input: Field required (a string or a list of strings)", "input")
        model = self._check_model(body, pod)
        data = []
        for index, text in enumerate(inputs):
            rng = random.Random(hashlib.sha256(text.encode()).digest())
            vector = [rng.uniform(-1, 1) for _ in range(_EMBEDDING_DIMENSIONS)]
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            data.append({"object": "embedding", "embedding": [x / norm for x in vector], "index": index})
        tokens = sum(count_tokens(t) for t in inputs)
        return web.json_response({"id": f"embd-{uuid.uuid4().hex}", "object": "list",
                                  "created": int(time.time()), "model": model, "data": data,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens,
                                            "completion_tokens": 0, "prompt_tokens_details": None}})

    async def _admit(self, pod: Pod, stats: ModelStats) -> None:
        """Wait for a free sequence slot, like vLLM's scheduler (--max-num-seqs, default 256)."""
        value = pod.arg_value("--max-num-seqs")
        limit = int(value) if value and value.isdigit() and int(value) > 0 else 256
        if stats.running < limit:
            stats.running += 1
            return
        stats.waiting += 1
        try:
            while stats.running >= limit:
                await asyncio.sleep(0.01)
        finally:
            stats.waiting -= 1
        stats.running += 1

    async def _respond(self, request: web.Request, pod: Pod, *, kind: str, model: str,
                       outputs: Sequence[tuple[list[str], str]], prompt_tokens: int, stream: bool,
                       include_usage: bool) -> web.StreamResponse:
        stats = self.world.model_stats.setdefault(pod.id, ModelStats())
        await self._admit(pod, stats)
        try:
            stats.prompt_tokens += prompt_tokens
            if stream:
                return await self._stream(request, stats, kind=kind, model=model, outputs=outputs,
                                          prompt_tokens=prompt_tokens, include_usage=include_usage)
            longest = max(len(tokens) for tokens, _ in outputs)
            if self.token_delay_seconds > 0:
                await asyncio.sleep(self.token_delay_seconds * longest)
            completion_tokens = sum(len(tokens) for tokens, _ in outputs)
            stats.generation_tokens += completion_tokens
            for _, reason in outputs:
                stats.finished[reason] = stats.finished.get(reason, 0) + 1
            usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
                     "completion_tokens": completion_tokens, "prompt_tokens_details": None}
            if kind == "chat":
                choices: list[dict[str, Any]] = [
                    {"index": i, "message": {"role": "assistant", "content": "".join(tokens),
                                             "refusal": None, "annotations": None, "audio": None,
                                             "function_call": None, "tool_calls": [],
                                             "reasoning_content": None},
                     "logprobs": None, "finish_reason": reason, "stop_reason": None}
                    for i, (tokens, reason) in enumerate(outputs)]
                payload = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                           "created": int(time.time()), "model": model, "choices": choices,
                           "service_tier": None, "system_fingerprint": None, "usage": usage,
                           "prompt_logprobs": None, "kv_transfer_params": None}
            else:
                choices = [{"index": i, "text": "".join(tokens), "logprobs": None, "finish_reason": reason,
                            "stop_reason": None, "prompt_logprobs": None}
                           for i, (tokens, reason) in enumerate(outputs)]
                payload = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                           "created": int(time.time()), "model": model, "choices": choices,
                           "service_tier": None, "system_fingerprint": None, "usage": usage,
                           "kv_transfer_params": None}
            return web.json_response(payload)
        finally:
            stats.running -= 1

    async def _stream(self, request: web.Request, stats: ModelStats, *, kind: str, model: str,
                      outputs: Sequence[tuple[list[str], str]], prompt_tokens: int,
                      include_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        request_id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        usage_field = {"usage": None} if include_usage else {}
        chunk_object = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(index: int, content: str | None, *, role: bool = False, finish: str | None = None) -> str:
            if kind == "chat":
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
                    {} if content is None else {"content": content})
                choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None,
                                          "finish_reason": finish}
            else:
                choice = {"index": index, "text": content or "", "logprobs": None, "finish_reason": finish,
                          "stop_reason": None}
            if finish is not None:
                choice["stop_reason"] = None
            payload = {"id": request_id, "object": chunk_object, "created": created, "model": model,
                       "choices": [choice], **usage_field}
            return f"data: {_compact(payload)}\n\n"

        async def send(text: str) -> None:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            await response.write(text.encode())

        generated = 0
        try:
            if kind == "chat":
                for index in range(len(outputs)):
                    await send(chunk(index, None, role=True))
            longest = max(len(tokens) for tokens, _ in outputs)
            for step in range(longest):
                if self.token_delay_seconds > 0:
                    await asyncio.sleep(self.token_delay_seconds)
                for index, (tokens, _) in enumerate(outputs):
                    if step < len(tokens):
                        await send(chunk(index, tokens[step]))
                        generated += 1
                        stats.generation_tokens += 1
            for index, (_, reason) in enumerate(outputs):
                await send(chunk(index, None, finish=reason))
                stats.finished[reason] = stats.finished.get(reason, 0) + 1
            if include_usage:
                usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + generated,
                         "completion_tokens": generated, "prompt_tokens_details": None}
                final = {"id": request_id, "object": chunk_object, "created": created, "model": model,
                         "choices": [], "usage": usage}
                await send(f"data: {_compact(final)}\n\n")
            await send("data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            # The client disconnected: stop generating (the caller's finally frees the slot).
            stats.finished["abort"] = stats.finished.get("abort", 0) + 1
            transport = request.transport
            if transport is not None:
                transport.close()
        return response
