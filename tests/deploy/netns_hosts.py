"""Test hosts on this machine: Linux network namespaces joined by a bridge, so that a Ray cluster
spread over them is multi-host in every way the network can tell, and nothing leaves the machine.

Layout, for a run with prefix ``P`` (unique per run) and subnet ``10.77.S.0/24``::

    namespace P-br:  bridge br0 -- veth v0 -- v1 -- v2 ...
    namespace P-h0:  eth0 10.77.S.1/24 (peer of v0), lo
    namespace P-h1:  eth0 10.77.S.2/24 (peer of v1), lo
    ...

The hosts have no route anywhere else: ``check_routes`` runs ``ip route get`` inside every
host for every other host's address before any traffic and fails unless the answer is
``dev eth0``, and every process that talks to a host address is started inside a host
(``argv``/``popen``/``run`` prefix ``ip netns exec``). The root namespace never touches them.

Fault injection: ``link_down(i)`` is ``ip -n HOST link set eth0 down`` (calls in flight hit
their deadline, new connections get "Network is unreachable").

Tear-down (``destroy``, safe to call at any point of ``create`` and more than once): every
process inside a host namespace, found by ``ip netns pids``, gets SIGTERM, then SIGKILL after a
grace period; then the namespaces are deleted (with them the veths and the bridge). Never
``ray stop``: it kills every Ray process on the machine, in every namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

IP_TIMEOUT_S = 20.0  # one `ip` command; they take milliseconds
KILL_GRACE_S = 3.0  # after SIGTERM, before SIGKILL (Ray's daemons often ignore TERM this long)
GONE_LIMIT_S = 15.0  # for killed processes to leave their namespace
_counter = 0


def unsupported_reason() -> str | None:
    """Why this machine cannot make test hosts (not root, no ``ip``), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (ip netns add); this test runs as a normal user"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not reaped) is gone for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Hosts:
    """``n`` test hosts; ``create()`` makes them, ``destroy()`` removes every trace."""

    n: int
    prefix: str = ""  # unique per run; default: mm<pid>x<counter>
    subnet: int = 0  # the S of 10.77.S.0/24; default: from the pid
    created: list[str] = field(default_factory=list)  # namespaces that exist, in creation order

    def __post_init__(self) -> None:
        global _counter
        if not 1 <= self.n <= 250:
            raise ValueError(f"hosts: expected 1..250 hosts, got {self.n!r}")
        _counter += 1
        if not self.prefix:
            self.prefix = f"mm{os.getpid()}x{_counter}"
        if not self.subnet:
            self.subnet = 1 + (os.getpid() * 7 + _counter) % 250

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    def ns(self, i: int) -> str:
        self._index(i)
        return f"{self.prefix}-h{i}"

    def ip(self, i: int) -> str:
        self._index(i)
        return f"10.77.{self.subnet}.{i + 1}"

    def index_of(self, address: str) -> int:
        """The host whose address is ``address`` (a bare IP or ``ip:port``)."""
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
        for i in range(self.n):
            if self.ip(i) == host:
                return i
        raise KeyError(f"{address!r} is not the address of any test host ({', '.join(map(self.ip, range(self.n)))})")

    def _index(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise IndexError(f"no test host {i}; there are {self.n}")

    # -- making and checking ------------------------------------------------------------------

    def create(self) -> None:
        """The bridge namespace, then each host with its veth to the bridge, addressed and up."""
        br = self.bridge_ns
        _ip("netns", "add", br)
        self.created.append(br)
        _ip("-n", br, "link", "set", "lo", "up")
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        for i in range(self.n):
            h = self.ns(i)
            _ip("netns", "add", h)
            self.created.append(h)
            # made inside the bridge namespace, the host end moved straight into its host: no
            # interface of this test ever exists in the root namespace
            _ip("-n", br, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", h)
            _ip("-n", br, "link", "set", f"v{i}", "master", "br0")
            _ip("-n", br, "link", "set", f"v{i}", "up")
            _ip("-n", h, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            _ip("-n", h, "link", "set", "lo", "up")
            _ip("-n", h, "link", "set", "eth0", "up")

    def check_routes(self) -> None:
        """Inside every host, every host address (its own too) routes over eth0 or lo, nowhere
        else. Raises naming the first that does not."""
        for i in range(self.n):
            for j in range(self.n):
                got = _ip("-n", self.ns(i), "route", "get", self.ip(j)).stdout.strip()
                expected = "dev lo" if i == j else "dev eth0"
                if expected not in got:
                    raise AssertionError(f"in {self.ns(i)}, `ip route get {self.ip(j)}` gave {got!r}; expected {expected}")

    # -- running things inside a host ---------------------------------------------------------

    def argv(self, i: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i), *argv]

    def popen(self, i: int, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(i, argv), **kw)

    def run(self, i: int, argv: Sequence[str], *, timeout: float, **kw: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.argv(i, argv), timeout=timeout, **kw)

    def pids(self, i: int) -> list[int]:
        """The processes inside host ``i`` (``ip netns pids``), zombies left out."""
        out = _ip("netns", "pids", self.ns(i), check=False).stdout.split()
        return [p for p in map(int, out) if p != os.getpid() and _alive(p)]

    def link_down(self, i: int) -> None:
        _ip("-n", self.ns(i), "link", "set", "eth0", "down")

    # -- tear-down --------------------------------------------------------------------------

    def kill_all(self) -> list[str]:
        """SIGTERM every process in every host, SIGKILL what is left after ``KILL_GRACE_S``;
        returns problems (processes that would not go), empty when all went."""
        hosts = [i for i in range(self.n) if self.ns(i) in self.created]
        for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, GONE_LIMIT_S)):
            for i in hosts:
                for pid in self.pids(i):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            limit = time.monotonic() + wait_s
            while any(self.pids(i) for i in hosts) and time.monotonic() < limit:
                time.sleep(0.05)  # polling for the processes to be gone, bounded by the limit
        return [f"{self.ns(i)}: pids {self.pids(i)} survived SIGKILL" for i in hosts if self.pids(i)]

    def destroy(self) -> list[str]:
        """Kill everything inside, delete every namespace made; returns problems (also
        namespaces that could not be deleted), empty when everything is gone."""
        problems = self.kill_all()
        for ns in reversed(self.created):
            proc = _ip("netns", "del", ns, check=False)
            if proc.returncode != 0:
                problems.append(f"ip netns del {ns}: {proc.stderr.strip()}")
        self.created.clear()
        return problems
