"""The data plane: a local OpenAI-compatible proxy in front of the pods' servers.

`app.build_app` assembles the aiohttp application from its parts (state.py; the middleware; the /v1 surface in
v1.py, models.py and relay.py; the service pass-through in services.py; the operational routes in ops.py;
per-request accounting in accounting.py); `server.run_proxy` serves it until SIGTERM/SIGINT. The proxy never
talks to RunPod or the state file: it asks a `controller.ProxyController`, which the lifecycle implements.
"""
