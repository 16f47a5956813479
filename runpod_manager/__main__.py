"""Allow `python -m runpod_manager`."""

from runpod_manager.cli import main

main()
