"""The cache budget the intensive seed fits its groups into.

`host_cache_bytes()` reads the size of the host's **L2 cache of one core**, because:
- L2 is the largest cache private to a core on the CPUs we target (x86 server and desktop
  parts, and the big cores of phone SoCs); a fused group's kernel runs its share of the work on
  each core, so what one core keeps hot is what decides whether an intermediate stays on chip.
- L3 (or a phone's system cache) is shared by all cores and by whatever else runs (on this
  machine, other engineers' jobs), so counting on it overstates what a kernel keeps.
- L1 (32-48 KiB) does not even hold the weights of one mid-sized conv; tiles for L1 are a
  loop-schedule matter, decided inside a group by the schedule search, not by the partition.
The working-set estimate it is compared with (`GroupStats.working_set_bytes`) is an untiled
upper bound, so comparing it with L2 keeps the seed conservative.

Later the device profile (configs/devices/*.toml) gives this number for remote devices.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 512 * 1024  # a common L2 size of one core (Cortex-A76/A78, Zen 1-2)

_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_cache_size(text: str) -> int | None:
    """Bytes of a sysfs cache size ("1024K", "32M", "512"); None when unreadable."""
    m = _SIZE.match(text)
    if m is None:
        return None
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def host_cache_bytes(cache_dir: Path = _CACHE_DIR, level: int = 2) -> int:
    """Size of cpu0's level-`level` data or unified cache (L2 by default; see module docstring),
    or DEFAULT_CACHE_BYTES when sysfs does not say."""
    try:
        entries = sorted(cache_dir.glob("index*"))
        for entry in entries:
            if int((entry / "level").read_text()) != level:
                continue
            if (entry / "type").read_text().strip() not in ("Data", "Unified"):
                continue
            size = parse_cache_size((entry / "size").read_text())
            if size:
                return size
    except (OSError, ValueError) as err:
        logger.debug("cannot read the cache sizes under %s: %s", cache_dir, err)
    logger.info(
        "no L%d cache size under %s; assuming %d KiB", level, cache_dir, DEFAULT_CACHE_BYTES // 1024
    )
    return DEFAULT_CACHE_BYTES
