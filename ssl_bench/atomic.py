"""Crash-safe file writes: a temporary file in the target folder, fsync, then rename.

A temporary is named ``.<target name>.<host>-<pid>.<random>.tmp``, so a later process can tell its
own leftovers from a live writer's: ``remove_stale_temporaries`` deletes only those whose writer
process is gone (same host) or that are older than ``STALE_AFTER_S`` (another host). A write that
fails because the disk is full, the folder read-only or a path a file is one line (``UserError``)
naming the path, and leaves no partial file; ``check_writable`` finds that out before long work.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import UserError

#: a temporary of another host is stale after a day (no single write of ours takes that long)
STALE_AFTER_S = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0])[:32] or "host"
_TEMP = re.compile(r"^\..+?\.(?:(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp$")
#: errors of the storage rather than of the program: reported as one line naming the path
_STORAGE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "permission denied", errno.ENOTDIR: "a path component is a file, not a folder",
                   errno.EEXIST: "a file is in the way of a folder", errno.EISDIR: "is a folder, not a file"}


def storage_error(path: Path, err: OSError, problem: str = "cannot write",
                  what: str = "output folder") -> UserError | None:
    """A one-line ``UserError`` for a storage failure while writing ``path`` (None for other errors)."""
    reason = _STORAGE_ERRORS.get(err.errno)
    if reason is None:
        return None
    return UserError(f"{path}: {problem} ({reason}); free space, fix the permissions or choose another {what}")


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a folder; choose another output folder or remove the file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise (storage_error(folder, err) or err) from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync the result and rename it over ``path``.

    Readers see the old file or the complete new one, never a partial file, also on
    a shared file system where several processes write into the same folder.
    """
    path = Path(path)
    _make_folder(path.parent)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a file; remove it or choose another output folder")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp",
                                        dir=path.parent)
    except OSError as err:
        raise (storage_error(path, err) or err) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise (storage_error(path, err) or err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path, obj) -> Path:
    text = json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def check_writable(folder: Path, what: str = "output folder") -> None:
    """Before long work: write, fsync and delete a small probe file in ``folder`` (or, when it does not exist
    yet, in its nearest existing parent, which will hold it), so a file in its place, a read-only or a full
    store is one line now rather than a failure at the end. Leaves nothing behind."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{existing}: is a file, not a folder; choose another {what} or remove the file")
    probe = existing / f".write-probe.{_HOST}-{os.getpid()}.probe.tmp"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        error = storage_error(folder, err, f"the {what} is not writable", "folder")
        raise (error or UserError(f"{folder}: the {what} is not writable ({err.strerror}); choose another "
                                  "folder")) from None
    finally:
        probe.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path, recursive: bool = True) -> list[Path]:
    """Delete the temporaries of our writes that no live process will finish: same host and the writer
    process is gone, or older than ``STALE_AFTER_S``. Only names of ``atomic_write``'s pattern; returns
    the paths removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        match = _TEMP.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue  # its writer just renamed or removed it
        mine = match["host"] == _HOST and match["pid"] is not None
        if (mine and not _alive(int(match["pid"]))) or age > STALE_AFTER_S:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
