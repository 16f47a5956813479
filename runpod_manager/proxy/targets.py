"""Where a routed request goes: its configured pod by the body's `model` (/v1) or by its path
(/pods/<name>/…, a listen port). One resolution shared by the handlers and the jobs' queues (jobs.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from runpod_manager.keys import Principal
from runpod_manager.proxy.auth import check_scope, reads_routed_model, routed_model
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.forward import JSON_ROUTES, NO_BODY, RequestFacts, inspect_json_body, is_json_content_type
from runpod_manager.proxy.passthrough import ServiceRoute
from runpod_manager.proxy.routing import (
    PODS_PATH_PREFIX,
    PathNotRouted,
    PathTarget,
    PodRoute,
    Routes,
    check_service_path,
)
from runpod_manager.proxy.state import ProxyState
from runpod_manager.proxy.wake import PodGroup

log = logging.getLogger("runpod_manager.proxy")


BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def model_of(facts: RequestFacts, route: PodRoute) -> str:
    """The model a /v1 request uses, for its key's scope: the body's, else the pod's own."""
    return facts.model if isinstance(facts.model, str) and facts.model else route.model


def target_group(state: ProxyState, path: str, facts: RequestFacts) -> PodGroup:
    """The configured pod a routed request goes to: `/pods/<name>/…` by its name, anything else by the body's
    model (`route_by_model`). The one resolution the handlers and the jobs' queues (jobs.py) share."""
    target = path_target(state.routes, path)
    if target is None:
        return route_by_model(state, facts)
    return state.group_by_route[target.route.name]


def job_body_limit(state: ProxyState, path: str) -> int:
    """The largest body a job to `path` may carry: the same as a direct request's to that route."""
    target = path_target(state.routes, path)  # 404 for a pod that is not here, before any of the body is read
    if target is None:
        return state.config.proxy.max_body_bytes
    return state.body_limits[target.route.name]


def job_pod(state: ProxyState, method: str, path: str, raw_path: str, read_body: Callable[[], bytes],
            content_type: str, principal: Principal | None) -> str:
    """The queue a job joins (jobs.Resolver): its target's name, or the ProxyError the request would get, its
    key's scopes included (checked as on the request's own route) and a `..` path to a pod refused as the
    pass-through refuses it, so no job is stored that its replay could not send."""
    if method not in BODY_METHODS and path in JSON_ROUTES:
        raise web.HTTPMethodNotAllowed(method, ["POST"])
    target = path_target(state.routes, path)
    if target is None:  # /v1: by the body's model
        body = read_body()
        facts = inspect_json_body(body) if body and is_json_content_type(content_type) else NO_BODY
        group = target_group(state, path, facts)
        check_scope(principal, group.route, model_of(facts, group.route))
        return group.name
    check_service_path(raw_path)
    route = target.route
    model = None
    if principal is not None and reads_routed_model(principal, route):
        check_scope(principal, route, None)  # the pod first: a body is read only for a pod the key may use
        model = routed_model(principal, route, read_body(), content_type)
    check_scope(principal, route, model)
    return route.name


def route_by_model(state: ProxyState, facts: RequestFacts) -> PodGroup:
    """The group (configured pod) a request goes to, by the body's `model`; answered here when there is none.

    A model no pod serves is answered here, whether the pods run or sleep: waking a GPU to hear vLLM's 404
    is money for nothing, and a stream would get it inside a `data:` event after its 200.
    """
    model = facts.model
    if not state.model_groups:
        raise ProxyError(404, "no model server is configured here: every pod is kind = \"http\"; send requests "
                         f"to /pods/<name>/<path> (pods: {', '.join(state.group_by_route)})",
                         code="model_not_found", param="model", should_retry=False)
    if model is None or model == "":  # "": the server's default model
        if state.default_group is not None:
            return state.default_group
        raise ProxyError(400, f"several models are served here ({_served_listing(state)}): name one in the "
                         "request's `model` (a body that cannot, such as a multipart upload, can be sent to one pod "
                         "by path: /pods/<name>/v1/…); no pod was started for this request", code="model_required",
                         param="model", should_retry=False)
    if not isinstance(model, str):
        raise ProxyError(400, "model must be a string", code="invalid_model", param="model")
    group = state.lookup.get(model) or state.fallback_group
    if group is not None:
        return group
    # OpenAI's own shape for this case (type invalid_request_error, code model_not_found), as a plain HTTP
    # answer: no wake has started, so even a stream has not committed its 200 yet.
    where = "the pod serves" if len(state.model_groups) == 1 else "served:"
    source = "[pod] model" if not state.config.pods else "[pods.<name>] model and aliases"
    raise ProxyError(404, f"the model {model!r} is not served here: {where} {_served_listing(state)} ({source} in "
                     "pod_config.toml); no pod was started for this request", code="model_not_found",
                     error_type="invalid_request_error", param="model", should_retry=False)


def _served_listing(state: ProxyState) -> str:
    if len(state.model_groups) == 1:
        return ", ".join(state.model_names(state.model_groups[0]))
    return "; ".join(f"{', '.join(state.model_names(group))} (pod {group.name})" for group in state.model_groups)


def service_route(state: ProxyState, route: PodRoute, port: int, raw_path: str, prefix: str) -> ServiceRoute:
    """A routed request's destination: the pod's group, its port, the path sent, and its body limit (an http
    pod's own; a model pod's is [proxy] max_body_bytes, as on /v1). A `..` path is refused (400), never sent."""
    check_service_path(raw_path)
    return ServiceRoute(state.group_by_route[route.name], port, raw_path, prefix, state.body_limits[route.name])


def path_target(routes: Routes, path: str) -> PathTarget | None:
    """`/pods/<name>[:<port>]/<path>` → its pod and port (None: not a /pods/ path); 404 naming the pods for a
    name (or port) not here. Used by the pass-through and by target_group (the jobs' queues) alike."""
    try:
        return routes.pod_for_path(path)
    except PathNotRouted as exc:
        route = routes.route_named(exc.name)
        if route is None:
            pods = ", ".join(known.name for known in routes.routes)
            raise ProxyError(404, f"no pod named {exc.name!r} here: the pods are {pods} "
                             "(/pods/<name>/<path>)", code="pod_not_found", should_retry=False) from None
        raise ProxyError(404, f"pod {route.name!r} has no port {exc.port!r}: its ports are "
                         f"{', '.join(map(str, route.ports))} (port, extra_ports)", code="pod_port_not_found",
                         should_retry=False) from None


def resolve_pods_path(state: ProxyState, request: web.Request) -> ServiceRoute:
    """A /pods/ request → where it goes (path_target), with the exact path to send and its body limit."""
    target = path_target(state.routes, request.path)
    if target is None:  # only mounted under /pods/
        raise web.HTTPNotFound()
    segment = request.path[len(PODS_PATH_PREFIX):].partition("/")[0]
    prefix = PODS_PATH_PREFIX + segment
    raw = request.raw_path
    if not raw.startswith(prefix):  # the name percent-encoded: not a form rpm ever links to
        raise ProxyError(404, f"write the pod's name plainly in /pods/{target.route.name}/", code="pod_not_found")
    rest = raw[len(prefix):]
    if not rest.startswith("/"):  # the service's root without its slash: its relative links need it
        raise web.HTTPPermanentRedirect(prefix + "/" + rest)
    return service_route(state, target.route, target.port, rest, prefix)
