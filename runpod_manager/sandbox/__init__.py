"""rpm sandbox: an emulator of RunPod's REST v2 API and of the vLLM servers inside its pods.

`world` holds the simulated pods, stock, billing and faults (plain Python, injectable clock);
`validate` checks request bodies against the rules of the official v2 spec; `api` serves the v2
endpoints and the `/_sandbox/` control endpoints; `model` is the fake vLLM server reached through the
pod URL; `server` builds the aiohttp application, runs it as a command or embedded in a thread.
"""
