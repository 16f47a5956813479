"""The data plane: a local OpenAI-compatible proxy in front of the pod's vLLM server.

`app.build_app` assembles the aiohttp application (forwarding, the wake gate, the response cache,
metrics and the dashboard); `server.run_proxy` serves it until SIGTERM/SIGINT. The proxy never talks
to RunPod or the state file: it asks a `controller.ProxyController`, which the lifecycle implements.
"""
