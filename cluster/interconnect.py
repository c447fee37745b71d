"""The sim backend's interconnect: requests between partitions in one process, with modelled
latency, loss and crashes, on the virtual clock.

A request from ``src`` to a service on ``dst`` sleeps one one-way latency (the topology's hop
count times a per-hop sample, plus a per-byte cost, plus any extra latency for its kind, e.g.
``callout``), runs the handler, and sleeps the way back. Every call has a deadline: a request
or reply that is lost, a destination that is down (crashed before or while handling), or a
handler slower than the deadline gives ``Unreachable`` at the deadline, as gRPC's
DEADLINE_EXCEEDED would. A crashed source cannot send at all. A deadline of ``inf`` is none, as
a kernel driver's call into its own device has none: a call that can never be answered then
waits for ever (the run ends in ``Deadlock`` when nothing else can happen), as the kernel's
caller would sit in D state.

A stalled partition (``stall_at``) is alive but answers nothing for a while, like a secondary
whose driver is stuck or whose fault server stopped serving: its links stay up, and requests
that reach it in the window are held until the window ends, then handled. Whoever waits for
one waits for the stall, up to their deadline.

A handler whose caller gave up keeps running (a server does not notice that its client left);
an error it raises then is kept in ``orphan_errors`` rather than failing the run, since no one
was waiting for it.

Under FIFO (every measurement run) a call costs no Future and no timer: the handler's task
starts at once, in the step in which the request arrives (``VirtualTimeLoop.start_task``), and
the caller waits for it with ``wait_until``, a deadline that is a sleeper entry of the loop
rather than a timer handle. A handler that finishes without sleeping (most callouts'
``invalidate_range_end``) is done before its caller waits at all. Under a seeded scheduling
policy (``mmusim check``, the race finder) the handler is queued like any new task and the
caller waits with ``asyncio.wait(timeout=...)``, whose wake-up is a callback of its own: each
is a point where the policy chooses, and the race finder's budgets are set by those choices, so
a seeded run explores the interleavings (and gives the digests) it did before. The deadline,
loss, crash and orphan semantics are the same on both paths. This module is for the sim backend
(the virtual-time loop, where one time unit is one microsecond) only.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from typing import Any, Callable

from nodes.errors import InternalError, Unreachable
from nodes.runtime import Runtime

from cluster.topology import LatencyModel, Topology
from cluster.vtime import wait_until

DEFAULT_DEADLINE_US = 1_000_000.0  # one second, a typical RPC deadline
REPLY_BYTES = 64
_INF = math.inf


class _Route:
    """What every call of one method of one service from one partition to another needs:
    the handler's method (``fn``, bound), the call's name (``what``, in errors and the trace;
    ``task_name``, the handler's task), and the one-way latency of the request and of the reply
    (``LatencyModel.sampler``: each call draws them as ``one_way`` would)."""

    __slots__ = ("fn", "what", "task_name", "go", "back")

    def __init__(self, fn: Callable[..., Any], what: str, go: Callable[[], float], back: Callable[[], float]):
        self.fn = fn
        self.what = what
        self.task_name = f"handle {what}"
        self.go = go
        self.back = back


class SimInterconnect:
    """Implements ``nodes.remote.Interconnect`` for partitions in one process."""

    def __init__(
        self,
        runtime: Runtime,
        topology: Topology,
        latency: LatencyModel,
        rng: random.Random,
        *,
        loss: float = 0.0,
        deadline_us: float = DEFAULT_DEADLINE_US,
    ):
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"interconnect.loss must be in [0, 1), got {loss!r}")
        if deadline_us <= 0:
            raise ValueError(f"interconnect.deadline_us must be positive, got {deadline_us!r}")
        self.runtime = runtime
        self.topology = topology
        self.latency = latency
        self.rng = rng
        self.loss = loss
        self.deadline_us = deadline_us
        self._services: dict[tuple[str, str], Any] = {}
        # (src, dst, service, method, kind, nbytes) -> what every such call needs (``_route``)
        self._routes: dict[tuple[str, str, str, str, str, int], _Route] = {}
        # (hops, nbytes, kind) -> its sampler, shared by every route of that distance, size and
        # kind: it draws from the interconnect's one rng as a sampler of its own would, and a
        # run with many partitions reads one sampler (in cache) rather than one per route
        self._samplers: dict[tuple[int, int, str], Callable[[], float]] = {}
        self._now = runtime.clock.now  # the runtime's clock, without a frame of Runtime's per read
        # the clock's own sleep, without Runtime.sleep's frame and checks: a latency is never
        # negative (every LatencyDist is checked >= 0), and a call made in atomic context (only
        # run_atomic's callouts can make one) is SleepingInAtomicContext when it first sleeps,
        # as the kernel's "scheduling while atomic"
        self._sleep = runtime.clock.sleep
        self.down: dict[str, float] = {}  # partition -> virtual time it crashed
        self.stalls: dict[str, tuple[float, float]] = {}  # partition -> [start, end) of its stall
        self.messages: Counter[str] = Counter()  # per kind
        self.failures: Counter[str] = Counter()  # per kind: calls that ended Unreachable
        self.orphan_errors: list[BaseException] = []

    def serve(self, partition: str, service: str, handler: Any) -> None:
        """Make ``handler``'s methods callable as ``service`` on ``partition``."""
        if partition not in self.topology:
            raise ValueError(f"partition {partition!r} is not in the topology ({', '.join(self.topology.names)})")
        self._services[(partition, service)] = handler
        self._routes.clear()  # a route names its handler

    def alive(self, partition: str) -> bool:
        return partition not in self.down

    def crash(self, partition: str) -> None:
        """``partition`` stops now: it answers nothing and sends nothing from here on."""
        if partition not in self.topology:
            raise ValueError(f"cannot crash unknown partition {partition!r}")
        self.down.setdefault(partition, self.runtime.now())
        self.runtime.trace("crash", partition)

    def crash_at(self, partition: str, at_us: float) -> None:
        """Schedule ``crash(partition)`` at virtual time ``at_us``."""
        if partition not in self.topology:
            raise ValueError(f"crashes: unknown partition {partition!r}")
        if at_us < 0:
            raise ValueError(f"crashes.{partition}: time must be >= 0, got {at_us!r}")

        async def later() -> None:
            await self.runtime.sleep(max(0.0, at_us - self.runtime.now()))
            self.crash(partition)

        self.runtime.spawn(later(), name=f"crash[{partition}]@{at_us}")

    def stall_at(self, partition: str, start_us: float, length_us: float) -> None:
        """From virtual time ``start_us`` for ``length_us``, ``partition``'s services answer
        nothing; a request that reaches it in the window is handled when the window ends."""
        if partition not in self.topology:
            raise ValueError(f"stalls: unknown partition {partition!r}")
        if start_us < 0 or not length_us > 0:
            raise ValueError(f"stalls.{partition}: expected start >= 0 and length > 0 (us), got {start_us!r}, {length_us!r}")
        self.stalls[partition] = (start_us, start_us + length_us)

    async def _held(self, until: float, what: str, fn: Any, args: tuple[Any, ...]) -> Any:
        """Handle a request that reached a stalled partition once its stall is over."""
        self.runtime.trace("stalled", what)
        await self.runtime.sleep(until - self.runtime.now())
        return await fn(*args)

    def _route(self, src: str, dst: str, service: str, method: str, kind: str, nbytes: int) -> "_Route":
        """The route of a call, made at its first use and kept (``_routes``): the handler's
        method, the call's name, and its one-way latency each way (a topology does not change,
        nor the latency model: the hop counts and the samplers are made once per route)."""
        handler = self._services.get((dst, service))
        if handler is None:
            raise InternalError(f"no service {service!r} on partition {dst}")
        fn = getattr(handler, method, None)
        if fn is None:
            raise InternalError(f"service {service!r} on partition {dst} has no method {method!r}")
        route = _Route(fn, f"{service}.{method} {src}->{dst}", self._sampler(self.topology.hops(src, dst), nbytes, kind),
                       self._sampler(self.topology.hops(dst, src), REPLY_BYTES, kind))
        self._routes[(src, dst, service, method, kind, nbytes)] = route
        return route

    def _sampler(self, hops: int, nbytes: int, kind: str) -> Callable[[], float]:
        """The one-way latency of ``hops`` hops for ``nbytes`` bytes of ``kind``, drawn as
        ``LatencyModel.one_way`` draws it (see ``_samplers``)."""
        sampler = self._samplers.get((hops, nbytes, kind))
        if sampler is None:
            sampler = self._samplers[(hops, nbytes, kind)] = self.latency.sampler(hops, nbytes, kind, self.rng)
        return sampler

    def _lost(self) -> bool:
        """Whether a message is lost; call it only when messages can be (``loss > 0``): it draws."""
        return self.rng.random() < self.loss

    async def _give_up(self, t_deadline: float, why: str, kind: str) -> None:
        self.failures[kind] += 1
        if t_deadline == _INF:  # no deadline: no one ever gives up (the kernel's D state)
            await asyncio.get_running_loop().create_future()
        remaining = t_deadline - self.runtime.now()
        if remaining > 0:
            await self.runtime.sleep(remaining)
        raise Unreachable(why)

    async def call(self, src: str, dst: str, service: str, method: str, *args: Any, kind: str = "rpc", nbytes: int = 64) -> Any:
        """Send ``service.method(*args)`` from ``src`` to ``dst`` and await the answer."""
        down = self.down
        if src in down:
            raise Unreachable(f"partition {src} is down and cannot send {method} to {dst}")
        route = self._routes.get((src, dst, service, method, kind, nbytes))
        if route is None:
            route = self._route(src, dst, service, method, kind, nbytes)
        self.messages[kind] += 1
        runtime = self.runtime
        now = self._now
        sleep = self._sleep
        t_deadline = now() + self.deadline_us
        if self.loss > 0.0 and self._lost():
            await self._give_up(t_deadline, f"{route.what}: request lost, deadline of {self.deadline_us:.0f} us exceeded", kind)
        await sleep(route.go())
        if dst in down:
            await self._give_up(t_deadline, f"{route.what}: {dst} is down, deadline of {self.deadline_us:.0f} us exceeded", kind)
        loop = runtime.loop or runtime.running_loop()  # the clock's, when it names one (no frame for that)
        if self.stalls and (stall := self.stalls.get(dst)) is not None and stall[0] <= now() < stall[1]:
            task = loop.start_task(self._held(stall[1], route.what, route.fn, args), name=route.task_name)
        else:
            task = loop.start_task(route.fn(*args), name=route.task_name)
        try:
            if t_deadline == _INF:  # no deadline: wait for the answer, however long
                answered = bool((await asyncio.wait({task}))[0])
            elif loop.policy is None:
                # a handler that finished in its first step (under FIFO it ran already) is
                # answered: nothing to wait for
                answered = task.done() or await wait_until(task, t_deadline)
            else:  # see the module docstring: a seeded run keeps its choice points
                answered = bool((await asyncio.wait({task}, timeout=max(0.0, t_deadline - now())))[0])
            if not answered:
                task.add_done_callback(self._orphan_done)
                await self._give_up(t_deadline, f"{route.what}: no answer within the deadline of {self.deadline_us:.0f} us", kind)
            back = route.back()
            if dst in down or (self.loss > 0.0 and self._lost()) or now() + back > t_deadline:
                task.exception()  # retrieved: the reply (or error) never arrived
                await self._give_up(t_deadline, f"{route.what}: reply lost or {dst} went down, deadline exceeded", kind)
            await sleep(back)
        except (GeneratorExit, asyncio.CancelledError):  # the caller itself went away (a run that broke)
            if task.done():
                self._orphan_done(task)
            else:
                task.add_done_callback(self._orphan_done)
            raise
        if src in down:
            task.exception()
            raise Unreachable(f"partition {src} went down waiting for {route.what}")
        return task.result()

    def _orphan_done(self, task: "asyncio.Task[Any]") -> None:
        if not task.cancelled() and task.exception() is not None:
            self.orphan_errors.append(task.exception())  # type: ignore[arg-type]
