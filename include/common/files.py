"""Files on the local disk, written so that a reader never sees half of one.

Every writer of the project goes through ``atomic_file``: the content goes to a temporary file
in the same folder, which is renamed over the target only once it is complete (``os.replace``
is atomic on one file system). A failure, a crash or an interrupt leaves the old file as it was
and removes the temporary one (a crash leaves a dot-file ending in ``.part``, never a half file).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# What numpy raises reading a damaged, truncated or crafted ``.npz``/``.npy`` file (a huge header
# shape is a MemoryError, a pickled or string member a ValueError or TypeError).
UNREADABLE_ARCHIVE = (
    OSError,
    EOFError,
    KeyError,
    ValueError,
    TypeError,
    MemoryError,
    zipfile.BadZipFile,
)


@contextmanager
def atomic_file(
    path: Path,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    durable: bool = False,
    permissions: int | None = None,
    prefix: str | None = None,
    suffix: str = ".part",
) -> Generator[IO[Any], None, None]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    The handle's ``name`` is the temporary file's path (to check its content before the rename).

    :param durable: flush and fsync before the rename (results a person will read).
    :param permissions: the file's mode (``mkstemp`` makes it 0o600).
    :param prefix: the temporary file's name prefix (default ``.<name>.``), for callers that
        sweep up leftovers of their own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=prefix if prefix is not None else f".{path.name}.", suffix=suffix
    )
    os.close(fd)  # reopened by name, so that ``handle.name`` is the temporary file's path
    try:
        with open(tmp, mode, encoding=encoding, newline=newline) as handle:  # noqa: PTH123
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if permissions is not None:
            os.chmod(tmp, permissions)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8, line ends as given) atomically and durably, readable by all."""
    with atomic_file(path, "w", encoding="utf-8", newline="", durable=True, permissions=0o644) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` atomically and durably, readable by all."""
    with atomic_file(path, "wb", durable=True, permissions=0o644) as handle:
        handle.write(data)
    return Path(path)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (indented, UTF-8, a final newline)."""
    with atomic_file(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def read_json(path: Path) -> Any:
    with Path(path).open(encoding="utf-8") as handle:
        return json.load(handle)
