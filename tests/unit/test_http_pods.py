"""kind = "http" pods (issue #13), the pure pieces: config keys and their refusals, path routing, the create
request, readiness by kind, and the pass-through's header and upgrade rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import responses
from aiohttp.test_utils import make_mocked_request

from runpod_manager.config import DEFAULT_HTTP_MAX_BODY_BYTES, Config, build_config
from runpod_manager.errors import ConfigError
from runpod_manager.podspec import build_spec
from runpod_manager.ports import probe_pod
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.passthrough import rewrite_location, service_request_headers, service_response_headers
from runpod_manager.proxy.routing import PathNotRouted, build_routes
from runpod_manager.proxy.websocket import check_upgrade

SECRET = "hdr-secret-5be0"


def build(pods: dict[str, Any], env: dict[str, str] | None = None, **top: Any) -> Config:
    return build_config({"version": 1, "pods": pods, **top}, source=None, env=env or {})


def comfy(**extra: Any) -> dict[str, Any]:
    return {"kind": "http", "image": "comfy/ui", "port": 8188, **extra}


def test_websocket_activity_is_the_clients_by_default_and_may_be_both_on_any_pod() -> None:
    config = build({"comfy": comfy(websocket_activity="both"), "chat": {"model": "org/chat"}})
    routes = {route.name: route for route in build_routes(config).routes}
    assert (routes["comfy"].websocket_activity, routes["chat"].websocket_activity) == ("both", "client")
    assert build({"chat": {"model": "org/chat", "websocket_activity": "both"}}).pod_named("chat") is not None


def test_an_http_pod_next_to_a_model_pod() -> None:
    config = build({"comfy": comfy(extra_ports=[8189], listen_port=9188, health_path="/system_stats",
                                   headers={"X-Api-Key": SECRET}),
                    "chat": {"model": "org/chat"}})
    pod = config.pod_named("comfy")
    assert pod is not None and pod.is_http and pod.ports == (8188, 8189)
    assert pod.body_limit_bytes == DEFAULT_HTTP_MAX_BODY_BYTES
    assert SECRET not in repr(pod)  # headers are kept out of reprs like env
    assert config.pod_url("abc123", 8189).endswith("abc123-8189.proxy.runpod.net")


def test_env_gives_a_single_pods_ports_as_a_list() -> None:
    config = build_config({"version": 1, "pod": {"kind": "http", "image": "svc"}}, source=None,
                          env={"RPM_POD_EXTRA_PORTS": "8189, 8190", "RPM_POD_LISTEN_PORT": "9000"})
    assert config.pod.extra_ports == (8189, 8190) and config.pod.listen_port == 9000


@pytest.mark.parametrize(("pods", "top", "words"), [
    ({"comfy": comfy(model="x")}, {}, "model only apply to kind = \"openai\""),
    ({"comfy": comfy(aliases=["a"])}, {}, "aliases only apply"),
    ({"comfy": comfy(replicas=2)}, {}, "replicas must be 1 for kind = \"http\""),
    ({"comfy": {"kind": "http"}}, {}, "needs image or template_id"),
    ({"comfy": comfy(health_path="health")}, {}, "health_path must start with \"/\""),
    ({"comfy": comfy(extra_ports=[8188])}, {}, "extra_ports lists port 8188"),
    ({"comfy": comfy(extra_ports=[8189, 8189])}, {}, "lists a number twice"),
    ({"comfy": comfy(extra_ports=[0])}, {}, "must be at least 1"),
    ({"comfy": comfy(extra_ports=["8189"])}, {}, "must be a list of whole numbers"),
    ({"comfy": comfy(listen_port=8080)}, {}, "listen_port 8080 is the proxy's own port"),
    ({"comfy": comfy(listen_port=9000), "other": comfy(listen_port=9000)}, {},
     "is also the listen_port of pod 'comfy'"),
    ({"comfy": comfy(headers={"Bad Name": "v"})}, {}, "is not a header name"),
    ({"comfy": comfy(headers={"Connection": "v"})}, {}, "is set by the proxy itself"),
    ({"chat": {"listen_port": 9000}}, {}, "listen_port only apply to kind = \"http\""),
    ({"chat": {"health_path": "/x"}}, {}, "health_path only apply"),
    ({"comfy": comfy(kind="grpc")}, {}, "must be one of openai, http"),
    ({"comfy": comfy(limits={"pod_guard": True})}, {}, "with pod_guard needs args"),
    ({"comfy": comfy(websocket_activity="server")}, {}, "must be one of client, both"),
])
def test_refusals_name_the_table_and_key(pods: dict[str, Any], top: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(pods, **top)
    assert words in str(caught.value)
    assert "[pods." in str(caught.value)


def test_a_header_value_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build({"comfy": comfy(headers={"X-Key": "a\nb" + SECRET})})
    assert SECRET not in str(caught.value)
    with pytest.raises(ConfigError) as wrong_type:
        build({"comfy": comfy(headers={"X-Key": 12345})})
    assert "12345" not in str(wrong_type.value)
    # A credential in headers makes a readable file an error, like a token in env.
    path = tmp_path / "pod_config.toml"
    path.write_text('version = 1\n[pods.comfy]\nkind = "http"\nimage = "x"\n'
                    f'headers = {{ "X-Api-Key" = "{SECRET}" }}\n')
    path.chmod(0o644)
    from runpod_manager.config import load_config

    with pytest.raises(ConfigError) as readable:
        load_config(path, env={})
    assert "readable by others" in str(readable.value) and SECRET not in str(readable.value)
    path.chmod(0o600)
    assert load_config(path, env={}).pod.headers == {"X-Api-Key": SECRET}


def test_the_init_template_stays_valid_with_every_kind_key_at_its_default() -> None:
    import tomllib

    from runpod_manager.config import render_template

    build_config(tomllib.loads(render_template()), source=None, env={})


# ---------------------------------------------------------------------------------------------- routing


def test_paths_route_to_pods_and_ports_and_http_pods_claim_no_model() -> None:
    config = build({"comfy": comfy(extra_ports=[8189], listen_port=9188), "chat": {"model": "org/chat"}})
    routes = build_routes(config)
    assert set(routes.by_model) == {"org/chat"}  # comfy's (default) model name routes nowhere
    assert routes.default is not None and routes.default.name == "chat"  # the one model pod takes model-less /v1
    assert routes.fallback is None or routes.fallback.name == "chat"
    target = routes.pod_for_path("/pods/comfy/view")
    assert target is not None and (target.route.name, target.port, target.path) == ("comfy", 8188, "/view")
    other = routes.pod_for_path("/pods/comfy:8189/")
    assert other is not None and (other.port, other.path) == (8189, "/")
    chat = routes.pod_for_path("/pods/chat/v1/models")
    assert chat is not None and (chat.route.name, chat.port) == ("chat", 8000)
    assert routes.pod_for_path("/v1/models") is None
    with pytest.raises(PathNotRouted) as unknown:
        routes.pod_for_path("/pods/nope/x")
    assert unknown.value.name == "nope" and unknown.value.port is None
    with pytest.raises(PathNotRouted) as port:
        routes.pod_for_path("/pods/comfy:9999/x")
    assert port.value.port == "9999"
    with pytest.raises(PathNotRouted):
        routes.pod_for_path("/pods/comfy:abc/x")
    assert {port: route.name for port, route in routes.listen_ports.items()} == {9188: "comfy"}


def test_only_http_pods_leave_no_default_model_route() -> None:
    routes = build_routes(build({"comfy": comfy(), "audio": comfy(port=9000)}))
    assert routes.default is None and routes.fallback is None and not routes.by_model


# ------------------------------------------------------------------------------------- control plane


def test_the_create_request_of_an_http_pod_runs_the_images_command_on_every_port() -> None:
    config = build({"comfy": comfy(extra_ports=[8189])}).for_pod("comfy")
    spec = build_spec(config, "rpm-comfy-abc", "NVIDIA GeForce RTX 4090", "upstream-key", None)
    assert spec.args is None  # no vLLM arguments, no rpm key: the image's own command
    assert spec.ports == ("8188/http", "8189/http")
    custom = dataclasses.replace(config, pod=dataclasses.replace(config.pod, args='--listen --port {port} {"a": 1}'))
    assert build_spec(custom, "n", "g", "k", None).args == '--listen --port 8188 {"a": 1}'


@responses.activate
def test_readiness_of_an_http_pod_is_its_health_path_below_500() -> None:
    pod = build({"comfy": comfy(health_path="/ready", headers={"X-Api-Key": SECRET})}).pod_named("comfy")
    assert pod is not None
    url = "https://p-8188.proxy.runpod.net"
    responses.get(f"{url}/ready", status=502)
    assert not probe_pod(pod, url, "k")  # RunPod's proxy: nothing listens yet
    responses.replace(responses.GET, f"{url}/ready", status=401)
    assert probe_pod(pod, url, "k")  # the service answers (it wants a key of its own: it is up)
    assert responses.calls[-1].request.headers["X-Api-Key"] == SECRET
    assert "Authorization" not in responses.calls[-1].request.headers  # rpm's vLLM key is not the service's
    model = build({"chat": {"model": "org/chat"}}).pod_named("chat")
    assert model is not None
    responses.get(f"{url}/v1/models", status=404)
    assert not probe_pod(model, url, "k")  # a model pod still needs its /v1/models 200


# ------------------------------------------------------------------------------------ pass-through rules


def test_request_headers_drop_hop_by_hop_and_carry_the_pods_own() -> None:
    incoming = [("Connection", "keep-alive, X-Private"), ("X-Private", "hop"), ("Keep-Alive", "5"),
                ("Host", "127.0.0.1:8080"), ("Authorization", "Bearer proxy-key"), ("Cookie", "a=1"),
                ("Content-Length", "5"), ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
                ("Expect", "100-continue"), ("X-RPM-Job-Token", "the-proxys-own")]
    out = service_request_headers(incoming, keep_authorization=False, added={"X-Api-Key": SECRET}, upstream_key=None)
    assert dict(out) == {"Cookie": "a=1", "Content-Length": "5", "X-Api-Key": SECRET}
    kept = service_request_headers(incoming, keep_authorization=True, added={}, upstream_key=None)
    assert kept["Authorization"] == "Bearer proxy-key"
    model = service_request_headers(incoming, keep_authorization=False, added={}, upstream_key="vllm-key")
    assert model["Authorization"] == "Bearer vllm-key"


def test_response_headers_and_redirects() -> None:
    base = "https://p-8188.proxy.runpod.net"
    out = service_response_headers([("Content-Encoding", "gzip"), ("Content-Length", "10"), ("Connection", "close"),
                                    ("Location", f"{base}/view?x=1"), ("Server", "uvicorn")],
                                   pod_base_url=base, prefix="/pods/comfy")
    assert dict(out) == {"Content-Encoding": "gzip", "Content-Length": "10", "Location": "/pods/comfy/view?x=1"}
    assert rewrite_location("/a", pod_base_url=base, prefix="") == "/a"  # a listen port: the service's root
    assert rewrite_location("https://elsewhere.example/a", pod_base_url=base, prefix="/pods/c") == (
        "https://elsewhere.example/a")
    assert rewrite_location("//cdn.example/x", pod_base_url=base, prefix="/pods/c") == "//cdn.example/x"
    assert rewrite_location("relative", pod_base_url=base, prefix="/pods/c") == "relative"


GOOD_UPGRADE = {"Upgrade": "websocket", "Connection": "keep-alive, Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.parametrize(("method", "changes", "words"), [
    ("POST", {}, "must use GET"),
    ("GET", {"Connection": "keep-alive"}, "Connection: Upgrade"),
    ("GET", {"Sec-WebSocket-Version": "8"}, "Sec-WebSocket-Version: 13"),
    ("GET", {"Sec-WebSocket-Key": "short"}, "Sec-WebSocket-Key"),
    ("GET", {"Sec-WebSocket-Key": ""}, "Sec-WebSocket-Key"),
])
def test_a_malformed_upgrade_is_a_400_naming_the_problem(method: str, changes: dict[str, str], words: str) -> None:
    request = make_mocked_request(method, "/pods/comfy/ws", headers={**GOOD_UPGRADE, **changes})
    with pytest.raises(ProxyError) as caught:
        check_upgrade(request)
    assert caught.value.status == 400 and words in caught.value.message


def test_a_well_formed_upgrade_passes() -> None:
    check_upgrade(make_mocked_request("GET", "/ws", headers=GOOD_UPGRADE))
