"""The secondary MMUs of the model: SGI GRU, XPMEM, a KVM-style shadow MMU, and the modern
modes' device secondaries (an RDMA ODP MR, an HMM GPU mirror) on interval notifiers.

Each is an mmu notifier that overrides only the ops its kernel driver implements, and reaches
the partition owning the mm only through an ``OwnerPort`` (``nodes.owner``), so it can live on
another partition behind RPC:

- ``GruMmu`` (drivers/misc/sgi-gru/grutlbpurge.c, grufault.c): a TLB, no page tables;
  invalidate_range_start/end, invalidate_page, release.
- ``XpmemDriver`` (hpc/xpmem kernel/xpmem_*.c): segments, permits and attachments of one
  source mm; its embedded ``notifier`` implements invalidate_range_end, invalidate_page and
  release, and safety comes from pinning.
- ``OdpMr`` (drivers/infiniband/core/umem_odp.c, hw/mlx5/odp.c, v5.10/v6.6): an RDMA ODP memory
  region of a NIC; not an mmu notifier but an interval notifier's driver (``nodes.interval``),
  so the modern modes only; no pin, safety from the sequence and the zap's completion.
- ``KvmMmu`` (virt/kvm/kvm_main.c): shadow ptes with mmu_notifier_count/seq; all seven ops,
  the three atomic ones as plain synchronous functions.
- ``HmmMirror`` (lib/test_hmm.c's dmirror; nouveau_svm.c, amdgpu_hmm.c): a device page table
  kept coherent by an interval notifier (``nodes.interval``), faulted through hmm_range_fault,
  and device-private memory pages migrate to and back (``DeviceMemory``, ``nodes.migrate_device``).

Every translation installed is reported with ``owner.translation_established`` at the instant
of install, every one dropped with ``owner.translations_dropped``, and every read goes through
``owner.dma_read`` with the stamp recorded at install: the owner's oracle checks invariants 1, 2
and 6 from these reports.
"""

from nodes.secondary.base import SecondaryMmu
from nodes.secondary.gru import GRUMAXINVAL, GruMmu, GruStats, GruTimeout
from nodes.secondary.hmm import DeviceMemory, HmmMirror, HmmStats
from nodes.secondary.kvm import KvmMmu, KvmStats, Spte
from nodes.secondary.odp import OdpMr, OdpStats
from nodes.secondary.xpmem import (
    XPMEM_RDONLY,
    XPMEM_RDWR,
    XpmemAttachment,
    XpmemCred,
    XpmemDriver,
    XpmemMmuNotifier,
    XpmemStats,
)

__all__ = [
    "DeviceMemory",
    "GRUMAXINVAL",
    "GruMmu",
    "GruStats",
    "GruTimeout",
    "HmmMirror",
    "HmmStats",
    "KvmMmu",
    "KvmStats",
    "OdpMr",
    "OdpStats",
    "SecondaryMmu",
    "Spte",
    "XPMEM_RDONLY",
    "XPMEM_RDWR",
    "XpmemAttachment",
    "XpmemCred",
    "XpmemDriver",
    "XpmemMmuNotifier",
    "XpmemStats",
]
