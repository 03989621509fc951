"""Progress bars in a log (a stream that is not a terminal): few redraws, no nested
bars and so no cursor movements; on a terminal, tqdm as usual."""

import io
import time

from writers import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _draw(stream, nested=False, **kw):
    b = progress.bar(total=200, file=stream, nested=nested, desc="fit", **kw)
    for _ in range(200):
        b.update(1)
        time.sleep(0.001)  # 0.2 s: tqdm's terminal redraws every 0.1 s
    b.close()
    return stream.getvalue()


def test_a_log_gets_few_redraws_and_no_nested_bar():
    assert not progress.interactive(io.StringIO())
    log = _draw(io.StringIO())
    # the first frame and the last one only (one redraw every LOG_INTERVAL seconds)
    assert log.count("\r") <= 3 and "200/200" in log, log
    assert "\x1b[A" not in log
    assert _draw(io.StringIO(), nested=True, leave=False) == ""


def test_a_terminal_gets_live_bars():
    assert progress.interactive(_Terminal())
    assert _draw(_Terminal()).count("\r") > 3
    assert _draw(_Terminal(), nested=True, leave=False) != ""
