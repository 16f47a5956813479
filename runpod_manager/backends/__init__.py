"""Backends: how a config entry runs on RunPod (`pod` today; `serverless` arrives next).

The names live here, in a module that imports nothing, so that `config.py` (the `backend` key) and
`state.py` (each record's backend) can know them without importing the backends themselves. The protocol
is `base.py`, the pod backend `pod.py`, the name → factory table `registry.py`; docs/architecture.md
("How to add a backend") lists what a new one touches.
"""

from __future__ import annotations

POD = "pod"
SERVERLESS = "serverless"
# Every backend name a config or a state record may carry. A name here that `registry.FACTORIES` lacks is
# known but not available yet: the config refuses it (config.py), and no record of this rpm carries it.
NAMES: tuple[str, ...] = (POD, SERVERLESS)
