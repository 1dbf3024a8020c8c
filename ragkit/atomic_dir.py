"""A cache folder built once: under a file lock, in a temporary folder renamed into place.

Used by the local model's conversion and the embedding exports: concurrent processes build it once,
and a killed build leaves no folder that looks finished (its temp folder is removed by the next build).
`crash_point` is the kill -9 hook the atomicity tests of this, the index store and the exports share.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def crash_point(name: str) -> None:
    """Test hook: RAGKIT_CRASH_AT=<name> kills this process with SIGKILL right here (atomicity tests)."""
    if os.environ.get("RAGKIT_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def build_once(final: Path, is_done: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """`final`, built by `build(tmp)` unless `is_done(final)`; safe against races and kill -9."""
    if is_done(final):
        return final
    from filelock import FileLock

    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{final.name}~"
    with FileLock(str(final) + ".lock"):
        if is_done(final):  # another process finished it while we waited
            return final
        for stale in final.parent.glob(prefix + "*"):  # a killed build's; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the finished cache is an ordinary readable folder
        try:
            build(tmp)
            if final.exists():  # a leftover that is not done is incomplete: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
