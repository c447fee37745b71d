"""What shapes the partitions of a run on either backend, and the checks every config makes.

``SimConfig`` (``cluster/sim.py``) and ``RayConfig`` (``cluster/ray_backend.py``) both start from
``PartitionConfig``; a bad value is refused on construction with the config's kind, the key,
what was expected and what was given."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from nodes.notifier import FANOUTS, SEMANTICS
from nodes.partition import SRCU_ALGORITHMS, SRCU_SCOPES, SrcuOptions
from nodes.srcu import DEFAULT_JIFFY_US
from nodes.srcu_tree import (
    CONFIG_RCU_FANOUT,
    CONFIG_RCU_FANOUT_LEAF,
    DEFAULT_SRCU_EXP_HOLDOFF_US,
    DEFAULT_TREE_VERSION,
    RCU_FANOUT_RANGE,
    TREE_VERSIONS,
)
from nodes.secondary.gru import GRU_DROPINS


@dataclass
class PartitionConfig:
    """The fields every partition of a run shares, on either backend."""

    KIND: ClassVar[str] = "config"  # how errors name the config: "sim config", "ray config"

    partitions: int = 2
    nframes: int = 65536  # per partition
    cpus: int = 4  # per partition: simulated CPUs (SRCU's per-CPU counters)
    srcu_scope: str = "global"  # global (the kernel's) | per_mm
    srcu_expedited: bool = False  # unregister and exit wait with synchronize_srcu_expedited()
    srcu_algorithm: str = "classic"  # classic (v3.10 kernel/srcu.c) | tree (v5.10 kernel/rcu/srcutree.c)
    srcu_fanout_leaf: int = CONFIG_RCU_FANOUT_LEAF  # tree: CPUs per srcu_node leaf, at most
    srcu_fanout: int = CONFIG_RCU_FANOUT  # tree: children per inner srcu_node, at most
    srcu_exp_holdoff_us: float = DEFAULT_SRCU_EXP_HOLDOFF_US  # tree: no auto-expedite this soon after a grace period
    srcu_tree_version: str = DEFAULT_TREE_VERSION  # tree: srcu_get_delay()'s policy, v5.10 | v5.19-rc1 | v6.6
    jiffy_us: float = DEFAULT_JIFFY_US  # 1e6 / HZ; SRCU's worker polls once a jiffy (a scenario's kernel.hz)
    fanout: str = "sequential"  # sequential (the kernel's) | parallel
    hops: int = 1  # between any two partitions, for the uniform topology
    semantics: str = "v3.10"  # the notifier core of a step of the seed history (nodes.notifier.SEMANTICS)
    gru_dropin: str = "guarded"  # how GRUs made here check a dropin (nodes.secondary.gru.GRU_DROPINS)

    def __post_init__(self) -> None:
        self.check_positive_int("partitions", "nframes", "cpus", "hops")
        self.check_choice("srcu_scope", SRCU_SCOPES)
        self.check_choice("srcu_algorithm", tuple(SRCU_ALGORITHMS))
        lo, hi = RCU_FANOUT_RANGE
        for key in ("srcu_fanout_leaf", "srcu_fanout"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise self.bad(key, f"an integer in {lo}..{hi}", v)
        self.check_number("srcu_exp_holdoff_us", positive=False)
        self.check_choice("srcu_tree_version", TREE_VERSIONS)
        self.check_choice("fanout", FANOUTS)
        self.check_choice("semantics", tuple(SEMANTICS))
        self.check_choice("gru_dropin", tuple(GRU_DROPINS))
        self.check_number("jiffy_us", positive=True)
        if not isinstance(self.srcu_expedited, bool):
            raise self.bad("srcu_expedited", "true or false", self.srcu_expedited)

    @property
    def srcu(self) -> SrcuOptions:
        """How the partitions build their SRCU domains."""
        return SrcuOptions(self.srcu_algorithm, self.srcu_fanout_leaf, self.srcu_fanout, self.srcu_exp_holdoff_us,
                           self.srcu_tree_version)

    @property
    def names(self) -> list[str]:
        return [f"p{i}" for i in range(self.partitions)]

    def bad(self, key: str, expected: str, value: Any) -> ValueError:
        return ValueError(f"{self.KIND} {key}: expected {expected}, got {value!r}")

    def check_positive_int(self, *keys: str) -> None:
        for key in keys:
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise self.bad(key, "a positive integer", v)

    def check_choice(self, key: str, choices: Sequence[str]) -> None:
        v = getattr(self, key)
        if v not in choices:
            raise self.bad(key, f"one of {tuple(choices)}", v)

    def check_number(self, key: str, *, positive: bool, value: Any = None) -> None:
        """A finite number >= 0 (> 0 if ``positive``): the field ``key``, or ``value`` named
        ``key``."""
        v = getattr(self, key) if value is None else value
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise self.bad(key, "a positive number" if positive else "a number >= 0", v)
