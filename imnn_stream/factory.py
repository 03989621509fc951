"""``IMNN(...)``: the reference package's selection function — pick the class
that fits the arguments, or say precisely why none does."""

from __future__ import annotations

from . import checks, classes

__all__ = ["IMNN"]


def _is_iterators(x):
    return isinstance(x, list)


@checks.ascii_aliases
def IMNN(
    n_s,
    n_d,
    n_params,
    n_summaries,
    input_shape,
    θ_fid,
    model,
    optimiser,
    key_or_state,
    simulator=None,
    fiducial=None,
    derivative=None,
    main=None,
    remaining=None,
    δθ=None,
    validation_fiducial=None,
    validation_derivative=None,
    validation_main=None,
    validation_remaining=None,
    host=None,
    devices=None,
    n_per_device=None,
    cache=None,
    prefetch=None,
    validation=None,
    verbose=True,
):
    """Return the IMNN class instance that matches the arguments.

    simulator → (Aggregated)SimulatorIMNN; fiducial + derivative arrays →
    (Aggregated)GradientIMNN, or (Aggregated)NumericalGradientIMNN with δθ;
    fiducial + derivative lists of per-device iterators with δθ →
    DatasetNumericalGradientIMNN; main + remaining lists → DatasetGradientIMNN.
    host, devices and n_per_device (all three) select the aggregated/dataset classes.
    θ_fid and δθ may be passed as ``theta_fid`` and ``delta_theta``.
    ``validation`` (True/False, simulator classes only): validate on fresh
    simulations every iteration (the default) or not, as the reference does.
    """
    common = dict(
        n_s=n_s,
        n_d=n_d,
        n_params=n_params,
        n_summaries=n_summaries,
        input_shape=input_shape,
        θ_fid=θ_fid,
        model=model,
        optimiser=optimiser,
        key_or_state=key_or_state,
    )
    agg = dict(host=host, devices=devices, n_per_device=n_per_device)
    given = [k for k, v in agg.items() if v is not None]
    if given and len(given) < 3:
        missing = [k for k in agg if agg[k] is None]
        raise ValueError(
            f"aggregation needs `host`, `devices` and `n_per_device`: "
            f"{', '.join(map('`{}`'.format, given))} given but "
            f"{', '.join(map('`{}`'.format, missing))} missing"
        )
    aggregate = len(given) == 3
    if not aggregate and (cache is not None or prefetch is not None):
        raise ValueError(
            "`cache`/`prefetch` are only meaningful with `host`, `devices` and "
            "`n_per_device` (aggregation)"
        )

    def forbid(names, because):
        for name in names:
            if locals_[name] is not None:
                raise ValueError(f"`{name}` must not be passed {because}")

    locals_ = dict(
        simulator=simulator,
        fiducial=fiducial,
        derivative=derivative,
        main=main,
        remaining=remaining,
        δθ=δθ,
        validation_fiducial=validation_fiducial,
        validation_derivative=validation_derivative,
        validation_main=validation_main,
        validation_remaining=validation_remaining,
        cache=cache,
        prefetch=prefetch,
    )

    def pick(cls, **kw):
        if verbose:
            print(f"using {cls.__name__}")
        return cls(**common, **kw)

    if simulator is not None:
        forbid(
            [
                "fiducial",
                "derivative",
                "main",
                "remaining",
                "δθ",
                "validation_fiducial",
                "validation_derivative",
                "validation_main",
                "validation_remaining",
                "cache",
                "prefetch",
            ],
            "with `simulator` (simulations are made on the fly)",
        )
        kw = {} if validation is None else dict(validation=validation)
        if aggregate:
            return pick(classes.AggregatedSimulatorIMNN, simulator=simulator, **kw, **agg)
        return pick(classes.SimulatorIMNN, simulator=simulator, **kw)
    if validation is not None:
        raise ValueError(
            "`validation` applies with `simulator` only (validation on fresh simulations); "
            "with data, pass the validation set (`validation_fiducial`, ...) or leave it out"
        )

    if main is not None or remaining is not None:
        if main is None or remaining is None:
            raise ValueError(
                "`main` and `remaining` must be passed together (remaining may be a "
                "list of empty iterators when n_s = n_d)"
            )
        forbid(
            [
                "fiducial",
                "derivative",
                "δθ",
                "validation_fiducial",
                "validation_derivative",
                "cache",
                "prefetch",
            ],
            "with `main` and `remaining`",
        )
        if (validation_main is None) != (validation_remaining is None):
            raise ValueError("`validation_main` and `validation_remaining` must be passed together")
        if not aggregate:
            raise ValueError("`main` and `remaining` need `host`, `devices` and `n_per_device`")
        from .streaming import DatasetGradientIMNN

        return pick(
            DatasetGradientIMNN,
            main=main,
            remaining=remaining,
            validation_main=validation_main,
            validation_remaining=validation_remaining,
            **agg,
        )

    if fiducial is None or derivative is None:
        raise ValueError(
            "pass `simulator`, or `fiducial` and `derivative`, or `main` and "
            f"`remaining` (got fiducial={'set' if fiducial is not None else None}, "
            f"derivative={'set' if derivative is not None else None})"
        )
    forbid(["validation_main", "validation_remaining"], "with `fiducial` and `derivative`")
    if _is_iterators(fiducial) != _is_iterators(derivative):
        raise TypeError(
            "`fiducial` and `derivative` must both be arrays or both be lists of "
            "per-device iterators"
        )
    val = dict(validation_fiducial=validation_fiducial, validation_derivative=validation_derivative)
    if _is_iterators(fiducial):
        if δθ is None:
            raise TypeError(
                "lists of iterators for `fiducial`/`derivative` need `δθ` "
                "(DatasetNumericalGradientIMNN); for gradients use `main`/`remaining`"
            )
        if not aggregate:
            raise TypeError("lists of iterators need `host`, `devices` and `n_per_device`")
        forbid(["cache", "prefetch"], "with lists of iterators (build them into the dataset)")
        from .streaming import DatasetNumericalGradientIMNN

        return pick(
            DatasetNumericalGradientIMNN,
            fiducial=fiducial,
            derivative=derivative,
            δθ=δθ,
            **val,
            **agg,
        )
    extra = dict(prefetch=prefetch, cache=cache) if aggregate else {}
    if δθ is None:
        cls = classes.AggregatedGradientIMNN if aggregate else classes.GradientIMNN
        return pick(
            cls,
            fiducial=fiducial,
            derivative=derivative,
            **val,
            **(agg if aggregate else {}),
            **extra,
        )
    cls = classes.AggregatedNumericalGradientIMNN if aggregate else classes.NumericalGradientIMNN
    return pick(
        cls,
        fiducial=fiducial,
        derivative=derivative,
        δθ=δθ,
        **val,
        **(agg if aggregate else {}),
        **extra,
    )
