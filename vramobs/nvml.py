"""NVML's view of device memory, for the cross-check against CUDA and for attribution.

NVML (nvidia-ml-py's ``pynvml``) and ``cudaMemGetInfo`` each cost microseconds, so they are
read once per scrape, never per operation, and a reading is reused for ``max_age`` seconds.
Devices are matched to NVML by UUID, so CUDA_VISIBLE_DEVICES and CUDA's device order cannot
mismatch them; ``index`` is NVML's index, the ``gpu`` label dcgm-exporter uses.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["NvmlMemory", "NvmlReader"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NvmlMemory:
    index: int  # NVML's device index
    total: int
    free: int
    used: int
    reserved: int  # held by the driver and firmware, outside "total" as CUDA sees it
    process_used: Optional[int]  # this process's device memory; None if NVML cannot tell


class NvmlReader:
    """Reads NVML memory figures for devices by UUID, cached for ``max_age`` seconds."""

    def __init__(self, max_age: float = 1.0) -> None:
        self._max_age = max_age
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._failed: Optional[str] = None
        self._cache: dict[str, tuple[float, Optional[NvmlMemory]]] = {}

    @property
    def error(self) -> Optional[str]:
        """Why NVML is unavailable, or None."""
        return self._failed

    def _load(self) -> Any:
        if self._nvml is None and self._failed is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors
                self._failed = f"NVML unavailable: {exc}"
                log.info(self._failed)
        return self._nvml

    def memory(self, uuid: str) -> Optional[NvmlMemory]:
        """NVML's memory figures for the device with this UUID, or None if unavailable."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(uuid)
            if cached is not None and now - cached[0] < self._max_age:
                return cached[1]
            nvml = self._load()
            reading = self._read(nvml, uuid) if nvml is not None else None
            self._cache[uuid] = (now, reading)
            return reading

    def _read(self, nvml: Any, uuid: str) -> Optional[NvmlMemory]:
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
            return NvmlMemory(
                index=nvml.nvmlDeviceGetIndex(handle),
                total=memory.total,
                free=memory.free,
                used=memory.used,
                reserved=memory.reserved,
                process_used=self._process_used(nvml, handle),
            )
        except Exception as exc:  # a lost device, an old driver: report it, never raise
            log.warning("NVML reading of %s failed: %s", uuid, exc)
            return None

    @staticmethod
    def _process_used(nvml: Any, handle: Any) -> Optional[int]:
        # NVML names processes by PID in the host's namespace: inside a container with its own
        # PID namespace no entry matches and the figure is unknown, not zero.
        pid = os.getpid()
        for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == pid:
                used = process.usedGpuMemory
                return None if used is None or used == _NOT_AVAILABLE else used
        return None


# NVML's NVML_VALUE_NOT_AVAILABLE for unsigned long long figures; not every pynvml exports it.
_NOT_AVAILABLE = (1 << 64) - 1
