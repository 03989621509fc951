"""Progress bars (tqdm) that suit a terminal and a log file alike.

On a terminal (or in a notebook) they are tqdm's as usual. When the stream is not
a terminal (a batch job's log, a pipe), a bar that redraws ten times a second
fills the log with carriage-return frames, and a nested bar adds cursor movements
(``ESC[A``) to every line: there a bar redraws at most every :data:`LOG_INTERVAL`
seconds, and nested bars are not drawn. Every command's bars come from here
(``writers`` is the lowest layer: the generate driver and the trainer use it too).
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm
from tqdm.autonotebook import tqdm as _maybe_notebook
from tqdm.std import tqdm as _plain

#: tqdm.auto draws notebook widgets (a notebook's stderr is no terminal, yet it is live)
_NOTEBOOK = _maybe_notebook is not _plain

__all__ = ["bar", "interactive", "LOG_INTERVAL"]

#: seconds between redraws when the stream is not a terminal
LOG_INTERVAL = 30.0


def interactive(file=None) -> bool:
    """Whether bars drawn on ``file`` (default stderr) are seen live: a terminal, or
    a notebook (where ``tqdm.auto`` draws widgets, not text)."""
    if _NOTEBOOK:
        return True
    f = sys.stderr if file is None else file
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar(*, nested: bool = False, **kwargs) -> tqdm:
    """``tqdm(**kwargs)``; when not :func:`interactive`, at most one redraw every
    :data:`LOG_INTERVAL` seconds (unless ``mininterval`` is given), and a ``nested``
    bar (drawn under another one) disabled."""
    if not interactive(kwargs.get("file")):
        if nested:
            kwargs["disable"] = True
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(**kwargs)
