"""The real KV: fixed-size blocks in one preallocated tensor per layer, plus the tiers below
HBM: CPU memory (pinned on CUDA) and, optionally, files on disk.

Which block holds which hash is decided by the shared block cache; this pool only obeys its
moves (``TieredKV.move``), copying block contents between tiers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engines.torch_engine.model import ModelArgs


class KVPool:
    def __init__(self, args: ModelArgs, num_blocks: int, block_size: int, device: str,
                 dtype: torch.dtype) -> None:
        shape = (num_blocks, block_size, args.kv_heads, args.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.layers)]
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))
        self.block_bytes = 2 * args.layers * block_size * args.kv_heads * args.head_dim * \
            torch.empty(0, dtype=dtype).element_size()

    @property
    def free_count(self) -> int:
        return len(self._free)

    def alloc(self) -> int:
        if not self._free:
            raise RuntimeError("KV pool exhausted (the block cache let more blocks in than exist)")
        return self._free.pop()

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def read(self, slot: int, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of one block (all layers) in CPU memory."""
        k = torch.stack([layer[slot] for layer in self.k]).to("cpu", copy=True)
        v = torch.stack([layer[slot] for layer in self.v]).to("cpu", copy=True)
        if pin and torch.cuda.is_available():
            k, v = k.pin_memory(), v.pin_memory()
        return k, v

    def write(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        for i in range(len(self.k)):
            self.k[i][slot].copy_(k[i], non_blocking=True)
            self.v[i][slot].copy_(v[i], non_blocking=True)


class TieredKV:
    """Block contents per hash: ``slots`` (HBM pool), ``cpu`` (tier 1) and ``disk`` (tier 2)."""

    def __init__(self, pool: KVPool, disk_dir: Path | None) -> None:
        self.pool = pool
        self.slots: dict[int, int] = {}
        self.cpu: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.disk_dir = disk_dir
        self.adopt: dict[int, int] = {}  # hash -> a running call's private slot that already holds it
        self.incoming: dict[int, int | tuple[torch.Tensor, torch.Tensor] | None] = {}
        self.placed_private: set[int] = set()  # private slots handed to the cache by ``place``
        self.bytes_moved = {"to_cpu": 0, "from_cpu": 0, "to_disk": 0, "from_disk": 0}

    def move(self, hashes: np.ndarray, src: int | None, dst: int | None) -> None:
        """Obey the block cache. Blocks entering HBM are placed by ``place``, once the cache has
        finished evicting (it stores first and evicts after, so the slots free up later)."""
        for h in (int(x) for x in hashes):
            if src is None:  # newly stored in HBM
                self.incoming[h] = self.adopt.pop(h) if h in self.adopt else None
            elif dst is None:  # dropped: nothing to copy
                self._discard(h, src)
            elif dst == 0 and h in self.adopt:  # recomputed by a call while a copy sat below
                self._discard(h, src)
                self.incoming[h] = self.adopt.pop(h)
            elif dst == 0:
                self.incoming[h] = self._take(h, src)
            else:
                self._put(h, dst, self._take(h, src))

    def place(self) -> None:
        """Give every block that entered HBM a pool slot (loaded ones get their contents)."""
        for h, what in self.incoming.items():
            if isinstance(what, int):
                self.slots[h] = what  # a running call's private slot already holds it
                self.placed_private.add(what)
                continue
            slot = self.pool.alloc()
            if what is not None:
                self.pool.write(slot, *what)
            self.slots[h] = slot
        self.incoming.clear()

    def _take(self, h: int, tier: int) -> tuple[torch.Tensor, torch.Tensor]:
        if tier == 0 and h in self.incoming:  # stored and evicted within one cache operation
            what = self.incoming.pop(h)
            if isinstance(what, tuple):
                return what
            if what is None:
                raise RuntimeError("a block left HBM before any KV was written to it")
            return self.pool.read(what, pin=True)  # a private slot the caller will free
        if tier == 0:
            slot = self.slots.pop(h)
            data = self.pool.read(slot, pin=True)
            self.pool.release(slot)
            return data
        if tier == 1:
            self.bytes_moved["from_cpu"] += self.pool.block_bytes
            return self.cpu.pop(h)
        path = self.disk_dir / f"{h:016x}.pt"
        data = torch.load(path)
        path.unlink()
        self.bytes_moved["from_disk"] += self.pool.block_bytes
        return data

    def _discard(self, h: int, tier: int) -> None:
        if tier == 0 and h in self.incoming:
            self.incoming.pop(h)  # a private slot stays with its call, which frees it
            return
        if tier == 0:
            self.pool.release(self.slots.pop(h))
        elif tier == 1:
            del self.cpu[h]
        else:
            (self.disk_dir / f"{h:016x}.pt").unlink()

    def _put(self, h: int, tier: int, data: tuple[torch.Tensor, torch.Tensor]) -> None:
        if tier == 1:
            self.cpu[h] = data
            self.bytes_moved["to_cpu"] += self.pool.block_bytes
        else:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            torch.save(data, self.disk_dir / f"{h:016x}.pt")
            self.bytes_moved["to_disk"] += self.pool.block_bytes
