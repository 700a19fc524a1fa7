"""bridge/folders.py: whether files can be made in a folder, told without making anything."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bridge.folders import folder_problem


def test_a_folder_that_can_be_made_is_no_problem(tmp_path: Path) -> None:
    assert folder_problem(tmp_path / "var" / "attachments") is None
    assert folder_problem(tmp_path) is None


def test_a_file_where_a_folder_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file")
    assert folder_problem(tmp_path / "plain" / "files") == f"{tmp_path / 'plain'} is not a folder"


@pytest.mark.parametrize("below", [(), ("files",), ("files", "more")])
def test_a_dangling_symlink_on_the_way_is_named(tmp_path: Path, below: tuple[str, ...]) -> None:
    """A link to nowhere does not `exist`, yet no folder can be made in its place: mkdir says `File exists`."""
    link = tmp_path / "var"
    link.symlink_to(tmp_path / "gone")
    folder = link.joinpath(*below)
    with pytest.raises(OSError):  # what every write would meet
        folder.mkdir(parents=True, exist_ok=True)
    assert folder_problem(folder) == (f"{link} is a symbolic link to {tmp_path / 'gone'}, which does not exist; "
                                      "make that folder or remove the link")


@pytest.mark.parametrize("below", [(), ("files",)])
def test_a_symlink_to_a_dangling_symlink_names_each_link(tmp_path: Path, below: tuple[str, ...]) -> None:
    """A link to a link that leads nowhere: the second link exists (as a link), so the error says what it is and
    where it leads, down to the path that does not exist, relative targets as written."""
    (tmp_path / "b").symlink_to(tmp_path / "gone")
    (tmp_path / "c").symlink_to("b")
    link = tmp_path / "a"
    link.symlink_to(tmp_path / "c")
    folder = link.joinpath(*below)
    with pytest.raises(OSError):
        folder.mkdir(parents=True, exist_ok=True)
    assert folder_problem(folder) == (f"{link} is a symbolic link to {tmp_path / 'c'}, a symbolic link to b, a "
                                      f"symbolic link to {tmp_path / 'gone'}, which does not exist; make that folder "
                                      "or remove the link")


@pytest.mark.parametrize("below", [(), ("files",)])
def test_a_symlink_loop_on_the_way_is_named(tmp_path: Path, below: tuple[str, ...]) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    folder = (tmp_path / "a").joinpath(*below)
    with pytest.raises(OSError):
        folder.mkdir(parents=True, exist_ok=True)
    assert folder_problem(folder) == (f"{tmp_path / 'a'} is a symbolic link that loops ({os.strerror(errno.ELOOP)}); "
                                      "point it at a folder")


def test_a_symlink_to_a_folder_is_no_problem(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "var").symlink_to(tmp_path / "real")
    assert folder_problem(tmp_path / "var" / "attachments") is None
