"""How the ``shadow`` command was invoked, so that every hint prints a command that runs.

After the README's install the script is ``.venv/bin/shadow``, not on ``PATH``: a hint
that says ``shadow report`` would fail as printed. :func:`program` gives the command as
the user can type it again here: ``shadow`` when that name on ``PATH`` is this very
script, else the path it was invoked by (``.venv/bin/shadow``), and ``python -m shadow``
(with the interpreter's path unless ``python`` on ``PATH`` is this interpreter) when run
as a module. :func:`hint` puts it in front of a subcommand.

Standard library only: it is imported while the arguments are parsed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence


def program(argv0: str | None = None, *, executable: str | None = None,
            anywhere: bool = False) -> str:
    """The command that runs ``shadow`` as it was invoked, quoted for a POSIX shell.

    With ``anywhere``, a path relative to this directory is made absolute, for a hint
    that changes directory first (``cd DIR && …``).
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    if not argv0 or os.path.basename(argv0) in ("__main__.py", "-m", "-c"):
        return f"{_on_path_or_path(executable, 'python', anywhere)} -m shadow"
    return _on_path_or_path(argv0, os.path.basename(argv0), anywhere)


def hint(*words: str | os.PathLike[str], prefix: Sequence[str] = ()) -> str:
    """``program()`` followed by ``words``, each quoted when the shell needs it.

    ``prefix`` are words printed as they are before the program (``cd DIR &&``).
    """
    return " ".join([*prefix, program(), *(shlex.quote(os.fspath(w)) for w in words)])


def _on_path_or_path(path: str, name: str, anywhere: bool = False) -> str:
    """``name`` when the shell finds ``path`` by that name, else ``path`` as given (made
    absolute with ``anywhere``, when it names a directory)."""
    found = shutil.which(name)
    if found is not None and os.path.abspath(found) == os.path.abspath(path):
        return name
    if anywhere and os.sep in path:
        path = os.path.abspath(path)
    return shlex.quote(path)
