"""Atomic writes: a failed or interrupted run never leaves a half-written checkpoint or result."""
import errno
import json
import os
import tempfile
from typing import Any, Callable

from utils.errors import UserError


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a temp file beside `path`, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        reason = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied",
                  errno.EROFS: "the file system is read-only", errno.EDQUOT: "the disk quota is exceeded"}
        raise UserError(f"cannot write {path}: {reason.get(e.errno, e.strerror or str(e))}") from None
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    atomic_write(path, write)


def ensure_writable_dir(path: str) -> None:
    """Fail before hours of training if the output folder cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise UserError(f"output folder {path} is not writable: {e.strerror or e}") from None
