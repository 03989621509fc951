"""A progress bar within a fitting iteration: records read by the two-pass engine
(pass 1, pass 2, validation), so that a long iteration (a large archive: a minute
or more) shows movement. It appears only when an iteration lasts longer than
``delay`` seconds, under the fit's own bar, and goes when the fit ends."""

from __future__ import annotations

__all__ = ["iteration_progress"]


def iteration_progress(imnn, delay: float = 2.0):
    """Hook a records bar (stderr) onto ``imnn``'s two-pass engine; returns the
    function that removes it. A no-op for trainers without one (in memory)."""
    engine = getattr(getattr(imnn, "_strategy", None), "engine", None)
    if engine is None:
        return lambda: None
    from writers.progress import bar as progress_bar

    per_pass = int(sum(imnn._mode.counts.values()))
    passes = ["pass 1", "pass 2"] + (["validation"] if imnn.validate else [])
    total = per_pass * len(passes)
    bar = progress_bar(
        nested=True,  # under the fit's bar: not drawn in a log (writers.progress)
        total=total,
        desc="iteration",
        unit="rec",
        unit_scale=True,
        leave=False,
        delay=delay,
    )

    def on_group(tag, kind, n):
        if bar.n >= total:  # next iteration (or the statistics after the fit)
            bar.reset(total)
        bar.set_description_str(
            f"iteration ({passes[min(bar.n // per_pass, len(passes) - 1)]})", refresh=False
        )
        bar.update(n)

    engine.on_group = on_group

    def close():
        engine.on_group = None
        bar.close()

    return close
