"""The deploy guide's ``ray start`` path, run as written on simulated fresh machines.

deploy/README.md marks the shell blocks a user types with ``<!-- guide-test: NAME -->``:
``head`` (on the head machine), ``worker`` (on each other machine), ``run`` (on the head), and
``one-machine`` (several nodes on one machine). This test runs exactly those blocks, with the
placeholders ``HEAD_IP`` (the head's address) and ``THE_TOKEN`` (what the head printed) filled
in, on machines made of a network namespace (``netns_hosts.Hosts``: its own address on a private
bridge, no route anywhere else) plus a private mount namespace with its own empty ``/tmp`` and
an empty home directory: a fresh machine as far as Ray can tell (no ``/tmp/ray``, no
``~/.ray/auth_token``). The only thing not run is the ``pip install .`` of the guide: every
machine uses this checkout's installation (``PYTHONPATH`` = the repository). Whatever of that
installation lives under ``/tmp`` (the checkout, the venv, the Python the venv was made from:
``kept_under_tmp``) is bound back into each machine's fresh ``/tmp``, so the test works wherever
the venv and the clone are.

Then it checks what the guide promises: the run prints its table and writes results.json, with
one partition on each machine and clean invariants; on one machine, the two partitions on
127.0.0.2 and 127.0.0.3. Everything is bounded in time and torn down by pid (``Hosts.destroy``
kills the anchors and Ray alike), never with ``ray stop``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Iterator

import pytest

from netns_hosts import Hosts, unsupported_reason
from ray_hosts import ROOT

pytestmark = pytest.mark.slow

GUIDE = ROOT / "deploy" / "README.md"
BLOCK_TIMEOUT_S = 240.0  # one block: `ray start` a few seconds, a quickstart run ten; a bound
PLACEHOLDERS = {"HEAD_IP", "THE_TOKEN"}


def guide_blocks() -> dict[str, str]:
    """The shell blocks of the guide marked for this test, by name."""
    found = re.findall(r"<!-- guide-test: ([\w-]+) -->\n```sh\n(.*?)```", GUIDE.read_text(), re.S)
    blocks = dict(found)
    assert len(blocks) == len(found), "a guide-test name is used twice"
    return blocks


def covering(paths: Iterable[Path], under: Path) -> list[Path]:
    """The fewest of ``paths`` (absolute) that lie inside ``under`` (``under`` itself left out)
    and hold every one of them that does: a path inside another is dropped, the outer one
    brings it along. Sorted."""
    normal = {Path(os.path.normpath(p)) for p in paths}
    inside = sorted(p for p in normal if p != under and p.is_relative_to(under))
    kept: list[Path] = []
    for p in inside:  # sorted: a path comes after every path it lies inside
        if not any(p.is_relative_to(k) for k in kept):
            kept.append(p)
    return kept


def kept_under_tmp() -> list[Path]:
    """What a machine with a fresh ``/tmp`` must still see of this one, where it lies under
    ``/tmp``: the checkout, this interpreter's installation (``sys.prefix``: the venv, whose
    ``bin/`` has ``ray`` and ``mmusim``), the installation the venv was made from
    (``sys.base_prefix``) and wherever ``sys.executable`` really is (a venv's ``python`` is a
    symlink into it), and every directory on ``sys.path``; each both as named and as resolved
    (a symlink under ``/tmp`` and its target)."""
    named = [ROOT, Path(sys.prefix), Path(sys.exec_prefix), Path(sys.base_prefix), Path(sys.base_exec_prefix),
             Path(sys.executable).parent, Path(sys.executable).resolve().parent,
             *(Path(p) for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p))]
    return covering([*named, *(p.resolve() for p in named)], Path("/tmp"))


class Machine:
    """Host ``i`` of ``hosts`` with a private ``/tmp`` (a tmpfs) and home (``/tmp/home``), kept
    by an anchor process whose namespaces every command enters. What ``kept_under_tmp`` names
    is bound back into the fresh ``/tmp``: inside its private mount namespace, before the
    tmpfs hides them, the anchor opens each of those directories (fd 3, 4, ...: opened inside,
    because a descriptor from the parent's mount namespace cannot be the source of a bind
    there), then binds ``/proc/self/fd/N`` onto the path again (``--no-canonicalize``:
    otherwise mount resolves ``/proc/self/fd/N`` after the new ``/tmp`` is there)."""

    def __init__(self, hosts: Hosts, i: int):
        self.hosts, self.i = hosts, i
        kept = {3 + n: shlex.quote(str(path)) for n, path in enumerate(kept_under_tmp())}
        steps = [*(f"exec {fd}<{path}" for fd, path in kept.items()), "mount -t tmpfs tmpfs /tmp", "mkdir /tmp/home"]
        for fd, path in kept.items():
            steps += [f"mkdir -p {path}", f"mount --no-canonicalize --bind /proc/self/fd/{fd} {path}", f"exec {fd}<&-"]
        script = " && ".join([*steps, "echo ready", "exec sleep 3600"])
        self.anchor = hosts.popen(i, ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", script],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.anchor.stdout.readline()  # type: ignore[union-attr]  # blocks until the mounts are made
        self.anchor.stdout.close()  # type: ignore[union-attr]
        if line.strip() != "ready":
            self.anchor.kill()
            self.anchor.wait()
            raise AssertionError(f"machine {i}: could not make a private /tmp keeping {' '.join(kept.values()) or 'nothing'}: {line!r}")

    def path(self, inside: str) -> Path:
        """A path of this machine's file system, as seen from outside."""
        return Path(f"/proc/{self.anchor.pid}/root") / inside.lstrip("/")

    def sh(self, script: str) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in bash on this machine, in a fresh login's environment, in its home."""
        env = {"HOME": "/tmp/home", "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
               "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}
        argv = ["nsenter", "-t", str(self.anchor.pid), "-m", "-n",
                "env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", "-euo", "pipefail", "-c", f"cd\n{script}"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)

    def close(self) -> None:
        if self.anchor.poll() is None:
            self.anchor.kill()
        self.anchor.wait()


def fill(block: str, **values: str) -> str:
    used = set(re.findall(r"\b[A-Z][A-Z_]{3,}\b", block)) - {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    assert used <= PLACEHOLDERS, f"the guide uses placeholders this test does not know: {sorted(used - PLACEHOLDERS)}"
    for key, value in values.items():
        block = block.replace(key, value)
    return block


def ok(proc: subprocess.CompletedProcess[str], what: str) -> str:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture
def machines() -> Iterator[list[Machine]]:
    reason = unsupported_reason()
    if reason is not None:
        pytest.skip(reason)
    if not all(shutil.which(tool) for tool in ("nsenter", "unshare")):
        pytest.skip("nsenter and unshare (util-linux) are needed to give each machine its own /tmp")
    hosts = Hosts(4)  # three machines for the cluster, one for the one-machine variant
    made: list[Machine] = []
    try:
        hosts.create()
        hosts.check_routes()
        made = [Machine(hosts, i) for i in range(hosts.n)]
        yield made
    finally:
        for m in made:
            m.close()
        problems = hosts.destroy()
    assert problems == [], f"tear-down left things behind: {problems}"


def test_the_guides_ray_start_commands_run_as_written_on_fresh_machines(machines: list[Machine]) -> None:
    blocks = guide_blocks()
    assert set(blocks) == {"head", "worker", "run", "one-machine"}, sorted(blocks)
    hosts = machines[0].hosts
    head_ip = hosts.ip(0)
    head, workers, single = machines[0], machines[1:3], machines[3]

    printed = ok(head.sh(fill(blocks["head"], HEAD_IP=head_ip)), "the head's block")
    token = head.path("/tmp/home/.ray/auth_token").read_text().strip()
    assert token and token in printed  # `ray get-auth-token --generate` printed the token it made
    for w in workers:
        ok(w.sh(fill(blocks["worker"], HEAD_IP=head_ip, THE_TOKEN=token)), f"the worker's block on machine {w.i}")
    out = ok(head.sh(fill(blocks["run"], HEAD_IP=head_ip)), "the run block")
    assert "invariants:" in out and "0 violations" in out, out[-2000:]
    out_dir = re.search(r"--out (\S+)", blocks["run"]).group(1)  # type: ignore[union-attr]
    result = json.loads(head.path(f"/tmp/home/{out_dir}/results.json").read_text())
    on_host = sorted(hosts.index_of(p["address"]) for p in result["placement"].values())
    assert on_host == [0, 1, 2], result["placement"]  # one partition per machine
    assert result["invariants"]["violations"] == 0 and result["metrics"]["exit_hang"]["n"] > 0

    # the cluster's machines are done: stop them (by pid) before the next variant starts its own Ray
    for m in machines[:3]:
        for pid in hosts.pids(m.i):
            if pid != m.anchor.pid:
                os.kill(pid, 9)

    out = ok(single.sh(fill(blocks["one-machine"])), "the one-machine block")
    assert "0 violations" in out, out[-2000:]
    out_dir = re.search(r"--out (\S+)", blocks["one-machine"]).group(1)  # type: ignore[union-attr]
    result = json.loads(single.path(f"/tmp/home/{out_dir}/results.json").read_text())
    hosts_used = sorted(p["address"].rsplit(":", 1)[0] for p in result["placement"].values())
    assert hosts_used == ["127.0.0.2", "127.0.0.3"], result["placement"]
    assert result["invariants"]["violations"] == 0


def test_covering_keeps_the_outermost_paths_inside_tmp_only() -> None:
    paths = [Path("/tmp/clone/.venv/bin"), Path("/tmp/clone"), Path("/tmp/venv/bin"), Path("/tmp/venv/"),
             Path("/tmp/venv/lib/../bin"), Path("/tmp"), Path("/tmpx/y"), Path("/root/.pyenv/versions/3.11.7")]
    assert covering(paths, Path("/tmp")) == [Path("/tmp/clone"), Path("/tmp/venv")]
    assert covering([Path("/root/.pyenv"), Path("/work/main")], Path("/tmp")) == []


def test_a_venv_under_tmp_and_the_python_it_links_to_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # a venv at /tmp/v whose python is a symlink into a Python installed under /tmp/base
    monkeypatch.setattr(sys, "prefix", "/tmp/v-mmusim-test")
    monkeypatch.setattr(sys, "exec_prefix", "/tmp/v-mmusim-test")
    monkeypatch.setattr(sys, "base_prefix", "/tmp/base-mmusim-test/3.11")
    monkeypatch.setattr(sys, "base_exec_prefix", "/tmp/base-mmusim-test/3.11")
    monkeypatch.setattr(sys, "executable", "/tmp/v-mmusim-test/bin/python")
    kept = kept_under_tmp()
    assert Path("/tmp/v-mmusim-test") in kept and Path("/tmp/base-mmusim-test/3.11") in kept, kept
    if ROOT.is_relative_to("/tmp"):
        assert any(ROOT.is_relative_to(k) for k in kept), kept
