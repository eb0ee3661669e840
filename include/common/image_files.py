"""Image files on the local disk, any of which may be hostile: which names are images, how large
a file may be, and an open that only ever opens a regular file.

Light on purpose (no Pillow, no NumPy): the listing of a source folder uses it before anything is
decoded, and the decoder (``images.py``) applies the same limits to every file it opens.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# No image this project decodes needs more: 50 MP (images.DEFAULT_MAX_PIXELS) at 4 bytes a pixel,
# uncompressed, is 200 MB. Larger files are refused unread, so a sparse 1 TB file named .jpg
# cannot keep the listing hashing for an hour, and no decoder reads a huge file into memory.
MAX_FILE_BYTES = 256 * 2**20
# O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer. O_NOCTTY: a terminal
# opened by mistake never becomes the controlling one. Both are no-ops for a regular file.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
_OPEN_FLAGS |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


class NotARegularFile(OSError):
    """A path that is a FIFO, a device, a socket or a folder, which is never read as a file."""


def describe_file_type(mode: int) -> str:
    """Name the file type of an ``st_mode`` for a message ("a named pipe (FIFO)", ...)."""
    for test, text in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return text
    return "a special file"


def open_regular_file(path: str | Path, *, follow_symlinks: bool = True) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; raise ``NotARegularFile`` otherwise.

    The type is checked on the opened descriptor, so a file swapped for a FIFO or a device after
    an earlier check is still refused, and the open itself never blocks. Callers check with
    ``os.stat`` first as well: opening some devices has effects (a tape rewinds).
    ``follow_symlinks=False`` refuses a path whose last component is a symbolic link (ELOOP).
    """
    flags = _OPEN_FLAGS | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(errno.EINVAL, f"is {describe_file_type(mode)}", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
