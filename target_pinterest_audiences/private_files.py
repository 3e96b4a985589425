"""Files and folders only this user can use: token file, locks, snapshots, rejected records.

Everything the target keeps on disk may hold a secret or hashed personal data, so:

- every folder missing on the way to one is created 0700, whatever the umask
  (``Path.mkdir(parents=True, mode=...)`` gives the parents the umask's mode);
- files are opened with ``O_NOFOLLOW``: a symbolic link put in a file's place is refused,
  never followed (a followed link would change its target's mode, or append to it);
- a new file is created 0600 from the start, and an existing one of another mode (others
  may read or write it) is made 0600;
- a file, or a store folder, owned by another user is refused.

Errors are `UnsafePath` (an OSError) whose message says what is wrong and what to do; each
caller names the setting it came from.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: Not on Windows, which has no symbolic links to follow here (and no owners to compare).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafePath(OSError):
    """A path that is a symbolic link, not a regular file, or someone else's."""


def _owner_problem(st: os.stat_result, path: Path, what: str) -> str | None:
    if not hasattr(os, "geteuid") or st.st_uid == os.geteuid():
        return None
    return (
        f"{what} {path} belongs to another user (uid {st.st_uid}), who could read or change "
        "it: use a path of your own"
    )


def make_private_dirs(directory: Path) -> None:
    """Create `directory` and every missing folder above it, each 0700 (the umask can only
    take bits away from 0700). Existing folders are left as they are."""
    missing: list[Path] = []
    here = Path(directory)
    while not os.path.lexists(here):
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue


def check_own_directory(directory: Path, what: str) -> None:
    """Refuse a folder owned by another user (or something that is not a folder)."""
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{what} {directory} is not a directory")
    problem = _owner_problem(st, directory, what)
    if problem:
        raise UnsafePath(problem)


def open_private(path: Path, flags: int, what: str) -> int:
    """os.open() for a file only this user may use: never through a symbolic link, created
    0600, any other mode made 0600; refused when it is not a regular file or is someone
    else's. Returns the descriptor (the caller closes it)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP and _NOFOLLOW:
            raise UnsafePath(
                f"{what} {path} is a symbolic link, which is never followed: replace it with "
                "a regular file, or point the setting at the real file"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{what} {path} is not a regular file: point it at a file")
        problem = _owner_problem(st, path, what)
        if problem:
            raise UnsafePath(problem)
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)  # the umask may also have taken the owner's bits
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_private_file(path: Path, what: str) -> None:
    """Create `path` 0600 if missing (before another library opens it by name), or check and
    tighten the existing one, as open_private() does."""
    os.close(open_private(path, os.O_RDWR | os.O_CREAT, what))
