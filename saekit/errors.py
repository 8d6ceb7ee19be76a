"""The one exception type users see.

Every bad input (unknown hook, wrong width, corrupt shard, bad YAML key, ...) raises
`SaekitError` with a message that says what was wrong and how to fix it. The CLI prints the
message alone (no traceback) and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SaekitError(Exception):
    """A user-facing error: the message names the problem and the fix."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a job scheduler) turned into an exception by the CLI, so the
    cleanup that Ctrl-C runs (temporary caches removed, run.json marked interrupted) runs too."""


class SaekitDeprecation(FutureWarning):
    """Input that still works for one release (an old recipe key); the message says the fix.

    A FutureWarning, so Python shows it by default; the CLI prints it as one line."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates most similar to `name` (for "did you mean" hints)."""
    pool = list(candidates)
    found = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if len(found) < n:
        # Substring hits catch "resid_post" → "blocks.6.hook_resid_post" that ratio misses.
        found += [c for c in pool if name in c and c not in found][: n - len(found)]
    return found
