"""Whether files can be made in a folder, told without making anything: for the errors that name a store's or the
attachments' folder at start rather than on the first write."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def folder_problem(folder: Path) -> str | None:
    """Why files cannot be made in `folder` (with the folders missing on its way made first), as far as the file
    system tells without writing: a file standing where a folder should be, a symbolic link on the way that leads
    nowhere (its target missing, or a loop), or the nearest folder that exists on a read-only file system or not
    writable by this process. None when nothing stands in the way."""
    probe = folder
    try:
        while not probe.exists() and probe.parent != probe:
            if probe.is_symlink():  # there, but leading nowhere: no folder can be made in its place
                return _broken_link(probe)
            probe = probe.parent
        if not probe.is_dir():
            return f"{probe} is not a folder"
        if os.access(probe, os.W_OK | os.X_OK):
            return None
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return f"{probe} is on a read-only file system"
    except OSError as exc:  # a folder on the way that cannot be looked into
        return f"{exc.filename or probe}: {exc.strerror}"
    return f"{probe} cannot be written by this process (uid {os.getuid()})"


def _broken_link(link: Path) -> str:
    """What is wrong with `link`, a symbolic link that cannot be followed: a loop, or a target that is missing
    (through the links it leads to, each named: `a is a symbolic link to b, a symbolic link to c, which does not
    exist`)."""
    try:
        link.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{link} is a symbolic link that loops ({exc.strerror}); point it at a folder"
        if exc.errno != errno.ENOENT:
            return f"{link} is a symbolic link {_chain(link)}, which cannot be followed ({exc.strerror})"
    return f"{link} is a symbolic link {_chain(link)}, which does not exist; make that folder or remove the link"


def _chain(link: Path) -> str:
    """`to b`, or `to b, a symbolic link to c`: where `link` leads, link by link, to the first path that is not a
    link (missing, or one that cannot be looked at). The kernel follows at most 40 links, and a longer chain was
    told as a loop by the caller's stat: at most that many are named."""
    said = []
    here = link
    for _ in range(40):
        target = os.readlink(here)
        said.append(target)
        here = here.parent / target
        try:
            if not here.is_symlink():
                break
        except OSError:
            break
    return "to " + ", a symbolic link to ".join(said)
