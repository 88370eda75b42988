"""What this host has, sent with every heartbeat so placement keeps hosts within their memory,
and the operator sees how full its disk is (`paas hosts`)."""

from __future__ import annotations

import os

import psutil

from agent.machine.storage.disk import DiskUsage
from common.wire import HostCapacity

MIB = 2**20


def measure(disk: DiskUsage | None = None) -> HostCapacity:
    """CPU count, memory total/available and the 1-minute load average, now (cheap: /proc);
    `disk`: the last disk figures (measured less often: walking the state folder costs)."""
    memory = psutil.virtual_memory()
    return HostCapacity(
        cpu_count=psutil.cpu_count() or 1,
        memory_total_mb=memory.total // MIB,
        memory_available_mb=memory.available // MIB,
        load_1m=round(os.getloadavg()[0], 2),
        state_disk_mb=disk.state_mb if disk is not None else None,
        disk_free_mb=disk.free_mb if disk is not None else None,
        disk_total_mb=disk.total_mb if disk is not None else None,
    )
