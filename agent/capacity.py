"""What this host has, sent with every heartbeat so placement keeps hosts within their memory."""

from __future__ import annotations

import os

import psutil

from common.wire import HostCapacity

MIB = 2**20


def measure() -> HostCapacity:
    """CPU count, memory total/available and the 1-minute load average, now (cheap: /proc)."""
    memory = psutil.virtual_memory()
    return HostCapacity(
        cpu_count=psutil.cpu_count() or 1,
        memory_total_mb=memory.total // MIB,
        memory_available_mb=memory.available // MIB,
        load_1m=round(os.getloadavg()[0], 2),
    )
