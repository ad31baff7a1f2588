"""Where a command may write: never over one of its own inputs, never over a file it did not create
unless --force, and only into an existing, writable folder (checked before any compute starts)."""
from __future__ import annotations

import os
from pathlib import Path


def same_file(a, b) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve() or \
            (Path(a).exists() and Path(b).exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(flag: str, out, inputs: dict, force: bool) -> None:
    """An output path never replaces an input of the same command (not even with --force), nor an
    existing file the command did not create unless --force is given; its folder must exist."""
    out = Path(out).expanduser()
    for name, path in inputs.items():
        if path and same_file(out, path):
            raise ValueError(f"{flag} {out}: is the {name} of this command; refusing to write over an input "
                             f"(choose another path)")
    if out.is_dir():
        raise ValueError(f"{flag} {out}: is a folder, expected a file path")
    if not out.parent.is_dir():
        raise ValueError(f"{flag} {out}: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"{flag} {out}: the folder {out.parent} is not writable")
    if out.exists() and not force:
        raise FileExistsError(f"{flag} {out}: the file exists and was not written by this command; refusing "
                              f"to overwrite it (pass --force to replace it)")
