"""File modes that follow the process umask, for writers whose tools ignore it.

`tempfile.mkdtemp` creates 0700 directories and safetensors writes 0600 files, whatever the
umask; a save renamed into place from them would be private on a shared machine while the
files next to it (cfg.json, written with open()) are not. `follow_umask` gives them the mode
a plain mkdir/open would have.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_umask() -> int:
    """The umask, read from /proc where possible: os.umask must set it to read it, which would
    briefly loosen it for every other thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Set `path` (a file, or a directory and everything under it) to 0666/0777 & ~umask."""
    mask = process_umask()
    for p in (path, *path.rglob("*")) if path.is_dir() else (path,):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
