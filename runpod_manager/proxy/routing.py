"""Which pod serves which model: the proxy's routes, derived from the config alone (pure, no I/O).

Each configured pod (`[pod]`, or each `[pods.<name>]`) is one route: the model names clients may send for
it and the pods that serve them, the pod itself and its replicas ("chat", "chat-r2", …; see
config.replica_name). Replicas are copies of one spec, so they share the route's names.

The names a route answers to:
- the names its model server serves, read from `model`/`args`/`extra_args` the way vLLM reads them
  (model_names.served_model_names: `--served-model-name`, else `--model`, plus `--lora-modules` adapters);
- its `aliases`, which only the proxy knows: a request for an alias goes to the pod with `model`
  rewritten to the pod's own first name (`upstream_model`), because vLLM answers only to what it serves.

A route whose names cannot all be known from the config is *open*: custom `args` that name no model (the
server there decides for itself), or runtime LoRA (`VLLM_ALLOW_RUNTIME_LORA_UPDATING`: adapters come and
go). Its configured `model` and aliases still route to it. A name that no route claims goes to the open
route only when exactly one route is open: with two, the proxy cannot tell which one serves the name, so
it answers 404 as for any unknown name, without waking either. (The app also routes the names a pod listed
in its own `GET /v1/models` answer to that pod; those change at run time and are not part of these routes.)

Requests that name no model go to `default`: the only route when the config has one pod (today's
one-pod behaviour, whatever its replicas), none otherwise (the app answers 400 naming the models).

Two routes that would both answer to one name cannot be routed: `build_routes` raises ConfigError (the
config's own check compares `model` and `aliases`; this one also sees `--served-model-name`).

Routing by path (issue #13): every pod is also reachable as `/pods/<name>/<path>` (its `port`), and an http
pod's further ports as `/pods/<name>:<port>/<path>`; `pod_for_path` is the one reading of such a path, used
by the proxy's pass-through and by anything else that must resolve a request's pod the same way (jobs). A
`kind = "http"` pod is never a model route: it claims no name, is never the default nor the fallback, so
no /v1 request reaches it. `listen_ports` maps each http pod's listen_port to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from urllib.parse import unquote

from runpod_manager.config import Config, PodConfig, replica_name
from runpod_manager.model_names import check_unique_names, known_names, served_model_names
from runpod_manager.proxy.errors import ProxyError

RUNTIME_LORA_VARIABLE = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


@dataclass(frozen=True)
class PodRoute:
    """One configured pod as the proxy routes to it."""

    name: str  # the configured pod's name
    replicas: tuple[str, ...]  # the pods that serve it, in order: name, name-r2, …
    model: str  # [pod] model
    served: tuple[str, ...] | None  # what its model server answers to; None: the config cannot say
    aliases: tuple[str, ...]
    open: bool  # serves names the config cannot list (custom args without a model, runtime LoRA)
    max_model_len: int = 0
    replica_queue_depth: int = 4
    replica_queue_seconds: float = 10.0
    # alias → the name sent to the pod, for the aliases its server does not answer to itself
    rewrite: Mapping[str, str] = field(default_factory=dict)
    kind: str = "openai"  # [pod] kind: "http" routes never serve /v1 (routed by path only)
    ports: tuple[int, ...] = (8000,)  # the pod's HTTP ports, port first (/pods/<name>:<port>/ for the others)
    listen_port: int = 0
    websocket_activity: str = "client"  # [pod] websocket_activity: whose WebSocket frames are activity
    # The names that are one model for a key's --models scope: the configured model, the name its server
    # answers to, and the aliases rewritten to it (a key scoped to any of them may use them all).
    one_model: frozenset[str] = frozenset()

    def same_model(self, name: str) -> frozenset[str]:
        """The names a key's scope must hold one of to use `name` on this route (`name` alone if no alias)."""
        return self.one_model if name in self.one_model else frozenset((name,))

    @property
    def upstream_model(self) -> str:
        """The name an alias is rewritten to: the server's first served name, else the configured model."""
        return self.served[0] if self.served else self.model

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the config knows this route by, served names first (the order /v1/models lists)."""
        return known_names(self.served, self.model, self.aliases)


@dataclass(frozen=True)
class Routes:
    routes: tuple[PodRoute, ...]
    by_model: Mapping[str, PodRoute]  # every name of `names`, to its route
    fallback: PodRoute | None  # where a name no route claims goes: the one open route, if only one is open
    default: PodRoute | None  # where a request without a model goes: the only route, if there is one

    def route_for(self, model: str) -> PodRoute | None:
        """The route of a model name (None: a 404 unless the app learned the name from a pod's list)."""
        return self.by_model.get(model) or self.fallback

    def route_of_pod(self, pod: str) -> PodRoute | None:
        """The route a pod (configured or replica name) belongs to."""
        return next((route for route in self.routes if pod in route.replicas), None)

    @property
    def model_routes(self) -> tuple[PodRoute, ...]:
        """The routes /v1 may reach: every pod but the kind = "http" ones."""
        return tuple(route for route in self.routes if route.kind != "http")

    def route_named(self, name: str) -> PodRoute | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> Mapping[str, PodRoute]:
        # Built on first use, not scanned per /pods/ request (pod_for_path); the first route of a name wins.
        by_name: dict[str, PodRoute] = {}
        for route in self.routes:
            by_name.setdefault(route.name, route)
        return by_name

    @property
    def listen_ports(self) -> Mapping[int, PodRoute]:
        """listen_port → its http pod."""
        return MappingProxyType({route.listen_port: route for route in self.routes if route.listen_port})

    def pod_for_path(self, path: str) -> PathTarget | None:
        """`/pods/<name>[:<port>]/<rest>` → the pod, the port and the path sent to it (`/<rest>`); None when
        the path is not under /pods/. Raises PathNotRouted when it is, but names no pod or port here."""
        if not path.startswith(PODS_PATH_PREFIX):
            return None
        segment, slash, rest = path[len(PODS_PATH_PREFIX):].partition("/")
        name, colon, port_text = segment.partition(":")
        route = self.route_named(name)
        if route is None:
            raise PathNotRouted(name, None)
        port = route.ports[0]
        if colon:
            if not port_text.isdigit() or int(port_text) not in route.ports:
                raise PathNotRouted(name, port_text)
            port = int(port_text)
        return PathTarget(route, port, "/" + rest if slash else "/")

    @property
    def pod_names(self) -> tuple[str, ...]:
        """Every pod, replicas included, in config order (what ProxyController.pod_names() should say)."""
        return tuple(name for route in self.routes for name in route.replicas)

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name the config routes, in config order."""
        return tuple(name for route in self.routes for name in route.names)


PODS_PATH_PREFIX = "/pods/"
MODELS_PATH = "/v1/models"  # answered by the proxy itself (proxy/models.py)
_DECODE_ROUNDS = 3  # %252e%252e is `..` to a server that decodes twice


def check_service_path(raw_path: str) -> None:
    """ProxyError 400 for a path (with its query) to a service with a `..` segment, written plainly or
    percent-encoded (`%2e%2e`, `..%2f`, `..%5c`, encoded twice): sent on, it could climb out of the route on a
    server that decodes or normalises it. Such a path is never forwarded; a path without a dot or a `%` (most
    of them) is passed after one scan."""
    path = raw_path.partition("?")[0]
    if "." not in path and "%" not in path:
        return
    for _ in range(_DECODE_ROUNDS):
        if ".." in path.replace("\\", "/").split("/"):
            raise ProxyError(400, "the path has a `..` segment (plainly or percent-encoded): the proxy never sends "
                             "such a path to a pod; send the path it resolves to", code="invalid_path",
                             should_retry=False)
        decoded = unquote(path)
        if decoded == path:
            return
        path = decoded
    raise ProxyError(400, "the path is percent-encoded more than the proxy decodes", code="invalid_path",
                     should_retry=False)


@dataclass(frozen=True)
class PathTarget:
    """Where a routed path goes: the pod's route, the pod port, and the path on the pod (always "/…")."""

    route: PodRoute
    port: int
    path: str


class PathNotRouted(Exception):
    """A /pods/ path that names no configured pod (port None) or not one of its ports."""

    def __init__(self, name: str, port: str | None) -> None:
        super().__init__(name if port is None else f"{name}:{port}")
        self.name = name
        self.port = port


def route_of(pod: PodConfig) -> PodRoute:
    served = served_model_names(pod.model, pod.args, pod.extra_args)
    runtime_lora = pod.env.get(RUNTIME_LORA_VARIABLE, "").lower() in ("1", "true")
    upstream = served[0] if served else pod.model
    known = set(served or (pod.model,))
    return PodRoute(
        name=pod.name,
        replicas=tuple(replica_name(pod.name, k) for k in range(1, pod.replicas + 1)),
        model=pod.model, served=served, aliases=tuple(pod.aliases), open=served is None or runtime_lora,
        max_model_len=pod.max_model_len, replica_queue_depth=pod.replica_queue_depth,
        replica_queue_seconds=pod.replica_queue_seconds,
        rewrite=MappingProxyType({alias: upstream for alias in pod.aliases if alias not in known}),
        kind=pod.kind, ports=pod.ports, listen_port=pod.listen_port, websocket_activity=pod.websocket_activity,
        one_model=frozenset((pod.model, upstream, *(alias for alias in pod.aliases if alias not in known)))
        if pod.kind != "http" else frozenset(),
    )


def build_routes(config: Config) -> Routes:
    """The routes of every configured pod. Raises ConfigError when two pods would answer to one name."""
    routes = tuple(route_of(pod) for pod in config.all_pods)
    model_routes = [route for route in routes if route.kind != "http"]
    check_unique_names(((route.name, route.names) for route in model_routes), config.source)
    by_model: dict[str, PodRoute] = {}
    for route in model_routes:
        for name in route.names:
            by_model.setdefault(name, route)
    open_routes = [route for route in model_routes if route.open]
    return Routes(
        routes=routes,
        by_model=MappingProxyType(by_model),
        fallback=open_routes[0] if len(open_routes) == 1 else None,
        default=model_routes[0] if len(model_routes) == 1 else None,
    )
