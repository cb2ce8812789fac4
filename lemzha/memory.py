"""Give freed heap memory back to the OS.

glibc keeps the pages a process freed (per malloc arena) for reuse, so a long-running operator stays as large as its
largest moment: a batch of long log templates through the text encoder, or one incident's DataFrames. `malloc_trim`
returns them; it takes about a millisecond. Elsewhere (musl, macOS) this does nothing. pandas keeps its strings in
Arrow arrays, whose allocator (mimalloc or jemalloc) holds freed pages the same way: they are released first.
"""

from __future__ import annotations

import sys
from functools import cache


@cache
def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """True when glibc's malloc_trim ran."""
    arrow = sys.modules.get("pyarrow")  # never imported here: only a process that uses Arrow has its pool
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
