"""Wait until a Ray cluster has N alive nodes: ``python ray_ready.py ADDRESS N TIMEOUT_S``.

Run inside a test host (``ip netns exec``): it connects to the GCS at ADDRESS as a driver, polls
``ray.nodes()`` until N nodes are alive, prints their addresses and exits 0; after TIMEOUT_S it
exits 1 naming the nodes it saw. ``ray start --address`` can return before its node shows as
alive to drivers, so a test that needs every node first waits here.
"""

from __future__ import annotations

import sys
import time

import ray


def main(address: str, want: int, timeout_s: float) -> int:
    ray.init(address=address, logging_level="WARNING")
    try:
        limit = time.monotonic() + timeout_s
        while True:
            alive = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive"))
            if len(alive) >= want:
                print(f"alive: {' '.join(alive)}", flush=True)
                return 0
            if time.monotonic() > limit:
                print(f"gave up after {timeout_s:g} s: {len(alive)} of {want} nodes alive: {alive}", flush=True)
                return 1
            time.sleep(0.1)  # poll interval; the node count, not the sleep, is the condition
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
