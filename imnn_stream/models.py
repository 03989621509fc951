"""Built-in stax-like models: ``(init(rng, input_shape) -> (output_shape, w), apply(w, x))``.

``apply`` takes one input ``float(input_shape)`` or a batch ``float(n, *input_shape)``
and returns ``float(n_summaries)`` / ``float(n, n_summaries)``. Weights are plain
pytrees (lists of (W, b) tuples), so any pytree-aware optimiser works on them.
"""

from __future__ import annotations

import functools
import importlib
import math

import jax
import numpy as np
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from .adapters import from_equinox, from_flax

__all__ = [
    "mlp",
    "cnn",
    "field",
    "calibrate",
    "calibrate_trainer",
    "polynomial",
    "from_spec",
    "from_flax",
    "from_equinox",
    "UntrustedCodeError",
    "resolve_spec",
]


def _leaky_relu(x):
    return jnp.where(x > 0, x, 0.01 * x)


def _glorot(key, shape, fan_in, fan_out):
    return jax.random.normal(key, shape) * math.sqrt(2.0 / (fan_in + fan_out))


ACTIVATIONS = {
    "leaky_relu": _leaky_relu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "square": jnp.square,
}


def _dense_init(rng, n_in, widths):
    """[(W float(n_in, width), b float(width)), …]: Glorot-normal weights and
    N(0, 1e-6²) biases, as stax's ``Dense``."""
    w = []
    for width in widths:
        rng, k1, k2 = jax.random.split(rng, 3)
        w.append((_glorot(k1, (n_in, width), n_in, width), 1e-6 * jax.random.normal(k2, (width,))))
        n_in = width
    return w


def _dense_apply(layers, h, act=None):
    """h float(..., n_in) through ``layers``, ``act`` (LeakyReLU) between them."""
    act = _leaky_relu if act is None else act
    for i, (W, b) in enumerate(layers):
        h = h @ W + b
        if i < len(layers) - 1:
            h = act(h)
    return h


def mlp(hidden=(128, 128), n_summaries=2, activation="leaky_relu"):
    """Fully connected network: flatten → [Dense → activation]* → Dense(n_summaries).

    Glorot-normal weights and N(0, 1e-6²) biases, as stax's ``Dense``.
    activation: a name in ``ACTIVATIONS`` or a callable.
    """
    act = ACTIVATIONS[activation] if isinstance(activation, str) else activation
    widths = tuple(int(h) for h in hidden) + (int(n_summaries),)

    def init(rng, input_shape):
        return (widths[-1],), _dense_init(rng, int(math.prod(input_shape)), widths)

    def apply(w, x):
        n_in = w[0][0].shape[0]
        batch_shape = x.shape[: x.ndim - _input_ndim(x, n_in)]
        return _dense_apply(w, x.reshape(batch_shape + (n_in,)), act)

    return init, apply


def _input_ndim(x, n_in):
    """Number of trailing axes of x that form one input of n_in values."""
    size = 1
    for k in range(x.ndim):
        size *= x.shape[x.ndim - 1 - k]
        if size == n_in:
            return k + 1
    raise ValueError(f"input of shape {x.shape} does not end in {n_in} values")


#: most k·k·C (patch features) for which :func:`_conv2d` uses im2col: XLA:CPU's
#: convolution is slow for few input channels and fast for many (measured, issue 10:
#: the field CNN's 3×3×1 and 3×3×8 layers gained 24 % with im2col, the large CNN's
#: 3×3×32 layer lost 74 %)
IM2COL_MAX_FEATURES = 72


def _conv2d(h, W, stride: int):
    """ "SAME" convolution of h float(n, H, W, C) with W float(k, k, C, c), the given
    stride in both axes -> float(n, ceil(H/stride), ceil(W/stride), c), as
    ``jax.lax.conv_general_dilated(h, W, (s, s), "SAME", ("NHWC", "HWIO", "NHWC"))``.

    The output, and its derivatives where the weights are differentiated (a VJP in the
    weights follows), are the k·k strided slices of the padded input side by side
    (im2col) times W as a matrix; a derivative in the input alone (the chain rule's
    JVP of dsim/dθ through the network) stays XLA's convolution. Measured on XLA:CPU
    (2 cores, the versus-reference field CNN, interleaved rounds; issue 10): with
    im2col throughout, the numerical-derivative fit went from 0.140 to 0.105
    s/iteration (XLA's convolution transposes are the slow part) but the chain-rule
    fit from 0.097 to 0.105 (im2col of the input tangents); with XLA's convolution for
    every input tangent, neither gained. Outputs agree with XLA's convolution to 4e-7
    (tests/core/test_field_model.py). Layers with more than ``IM2COL_MAX_FEATURES``
    patch features use XLA's convolution throughout.
    """
    k, _, C, _ = W.shape
    if k * k * C > IM2COL_MAX_FEATURES:
        return _xla_conv(h, W, stride)
    return _im2col(h, W, stride)


def _xla_conv(h, W, stride: int):
    return jax.lax.conv_general_dilated(
        h, W, (stride,) * 2, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _im2col(h, W, stride: int):
    """:func:`_conv2d` with im2col (a custom JVP: see there)."""
    return _im2col_conv(h, W, stride)


def _conv2d_jvp(stride, primals, tangents):
    h, W = primals
    dh, dW = tangents
    out = _im2col_conv(h, W, stride)
    if isinstance(dW, SymbolicZero):
        # the input alone (the chain rule's JVP of dsim/dθ): XLA's convolution
        t = _xla_conv(dh, W, stride)
    else:
        # the weights (and the input through earlier layers' weights): a VJP in the
        # weights follows, and the transposes of im2col are the fast ones on XLA:CPU
        t = _im2col_conv(h, dW, stride)
        if not isinstance(dh, SymbolicZero):
            t = t + _im2col_conv(dh, W, stride)
    return out, t


_im2col.defjvp(_conv2d_jvp, symbolic_zeros=True)


def _im2col_conv(h, W, stride: int):
    """:func:`_conv2d` as one matmul of the input's patches float(n, oh, ow, k·k·C)
    (k·k·C floats per output pixel, 2.25× the input at stride 2)."""
    k, _, C, c = W.shape
    H, Wd = h.shape[1], h.shape[2]
    (top, bottom), (left, right) = jax.lax.padtype_to_pads((H, Wd), (k, k), (stride,) * 2, "SAME")
    h = jnp.pad(h, ((0, 0), (top, bottom), (left, right), (0, 0)))
    oh, ow = -(-H // stride), -(-Wd // stride)
    rows, cols = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    patches = jnp.concatenate(
        [h[:, i : i + rows : stride, j : j + cols : stride, :] for i in range(k) for j in range(k)],
        axis=-1,
    )  # ordered (i, j, C) as W's leading axes
    return patches @ W.reshape(k * k * C, c)


def cnn(channels=(8, 16), dense=64, n_summaries=2, kernel=3):
    """Small CNN for 2-D fields: [Conv(k×k, stride 2) → LeakyReLU]* → flatten →
    Dense(dense) → LeakyReLU → Dense(n_summaries). Input float(H, W) (one channel)
    or float(H, W, C) with C > 1, single or batched.
    """
    channels = tuple(int(c) for c in channels)

    def init(rng, input_shape):
        shape = tuple(input_shape) + ((1,) if len(input_shape) == 2 else ())
        H, W, C = shape
        w = []
        for c in channels:
            rng, k1, k2 = jax.random.split(rng, 3)
            fan_in, fan_out = kernel * kernel * C, kernel * kernel * c
            w.append(
                (
                    _glorot(k1, (kernel, kernel, C, c), fan_in, fan_out),
                    1e-6 * jax.random.normal(k2, (c,)),
                )
            )
            H, W, C = -(-H // 2), -(-W // 2), c
        w += _dense_init(rng, H * W * C, (int(dense), int(n_summaries)))
        return (int(n_summaries),), w

    def apply(w, x):
        in_ch = w[0][0].shape[2]
        # single-channel fields are float(H, W); several channels float(H, W, C)
        single = x.ndim == (2 if in_ch == 1 else 3)
        h = x[None] if single else x
        if in_ch == 1:
            h = h[..., None]
        for W, b in w[: len(channels)]:
            h = _conv2d(h, W, 2) + b
            h = _leaky_relu(h)
        h = h.reshape(h.shape[0], math.prod(h.shape[1:]))  # also for empty batches
        h = _dense_apply(w[len(channels) :], h)
        return h[0] if single else h

    return init, apply


def _radial_bins(H: int, W: int):
    """Bin matrix float(H·(W//2+1), n_bins) averaging rfft2 power over shells of
    |k| (in units of the fundamental, rounded; k = 0 left out: the field's mean is a
    feature of its own), each mode weighted by how often it appears in the full
    spectrum; and the number of modes per shell float(n_bins)."""
    kx = np.fft.fftfreq(H) * H
    ky = np.fft.rfftfreq(W) * W
    shell = np.floor(np.sqrt(kx[:, None] ** 2 + ky[None, :] ** 2) + 0.5).astype(int).ravel()
    # rfft2 keeps ky ≥ 0: the columns 0 < ky < W/2 stand for two modes each
    weight = np.broadcast_to(
        np.where((ky == 0) | (2 * ky == W), 1.0, 2.0)[None, :], (H, len(ky))
    ).ravel()
    n_bins = int(shell.max())
    M = np.zeros((len(shell), n_bins), np.float32)
    for b in range(1, n_bins + 1):
        sel = shell == b
        M[sel, b - 1] = weight[sel] / weight[sel].sum()
    return M, np.array([weight[shell == b].sum() for b in range(1, n_bins + 1)])


def field(filters=0, dense=(128, 128), n_summaries=2, kernel=5):
    """Translation-invariant network for 2-D fields float(H, W) or float(H, W, C).

    Features, per channel: the log of the power spectrum averaged over shells of
    |k| (``_radial_bins``; a Gaussian random field's sufficient statistics) and
    the field's mean, standardised by constants float(2, C, n_shells + 1) in the
    weights' first entry, which the optimiser never changes (stop_gradient; Adam's
    step for a zero gradient is zero) and :func:`calibrate` sets from fiducial
    inputs (until then: those of unit white noise). With ``filters`` > 0, also the
    spatial mean and log mean square of that many learnt ``kernel``×``kernel``
    convolutions (statistics beyond the power spectrum, e.g. of non-Gaussian
    fields; ~10× the cost on CPU). Then an MLP (``dense`` widths, LeakyReLU) →
    float(n_summaries).

    Why: the CNN (``cnn``) must learn quadratic statistics from flattened strided
    convolutions and kept 10 % of the 16×16 field's det F in 1000 iterations;
    standardised log shell powers reach the exact Fisher (benchmarks/information.py).
    Unstandardised they barely move (3 % in 300 iterations): the shell powers'
    spread is a few percent of their means.
    """
    filters, dense = int(filters), tuple(int(d) for d in dense)

    def init(rng, input_shape):
        shape = tuple(input_shape) + ((1,) if len(input_shape) == 2 else ())
        if len(shape) != 3:
            raise ValueError(f"field model: inputs must be (H, W) or (H, W, C), got {input_shape}")
        H, W, C = shape
        _, modes = _radial_bins(H, W)
        # unit white noise: a shell's power is the mean of `modes` unit exponentials
        spread = np.concatenate([1 / np.sqrt(modes), [1 / np.sqrt(H * W)]])
        scale = np.stack([np.zeros((C, len(spread))), np.tile(spread, (C, 1))])
        w = [jnp.asarray(scale, jnp.float32)]
        if filters:
            rng, k1 = jax.random.split(rng)
            fan = kernel * kernel * C
            w.append((_glorot(k1, (kernel, kernel, C, filters), fan, filters), jnp.zeros(filters)))
        w += _dense_init(rng, C * len(spread) + 2 * filters, dense + (int(n_summaries),))
        return (int(n_summaries),), w

    def batched(w, x):
        """(x as float(n, H, W, C), whether x was one input)."""
        C = w[0].shape[1]
        single = x.ndim == (2 if C == 1 else 3)
        h = x[None] if single else x
        return (h[..., None] if C == 1 else h), single

    def spectral(h):
        """Log shell powers and mean float(n, C, n_shells + 1) of h float(n, H, W, C)."""
        n, H, W, C = h.shape
        M, _ = _radial_bins(H, W)
        f = jnp.fft.rfft2(jnp.moveaxis(h, -1, 1))  # (n, C, H, W//2+1)
        power = (f.real**2 + f.imag**2).reshape(n, C, -1) / (H * W)
        mean = jnp.mean(h, axis=(1, 2))[..., None]
        return jnp.concatenate([jnp.log(power @ jnp.asarray(M) + 1e-12), mean], -1)

    def apply(w, x):
        h, single = batched(w, x)
        scale = jax.lax.stop_gradient(w[0])
        o = ((spectral(h) - scale[0]) / scale[1]).reshape(h.shape[0], -1)
        layers = w[1:]
        if filters:
            (Wc, bc), layers = w[1], w[2:]
            c = _conv2d(h, Wc, 1)
            c = _leaky_relu(c + bc)
            o = jnp.concatenate(
                [o, jnp.mean(c, axis=(1, 2)), jnp.log(jnp.mean(c**2, axis=(1, 2)) + 1e-12)], -1
            )
        o = _dense_apply(layers, o)
        return o[0] if single else o

    def calibrate_spectral(w, x):
        """``w`` standardising the spectral features of x float(n, *input_shape)."""
        h, _ = batched(w, jnp.asarray(x, jnp.float32))
        f = np.asarray(jax.jit(spectral)(h), np.float64)
        mean, std = f.mean(0), f.std(0)
        std = np.where(std > 1e-6 * (1 + np.abs(mean)), std, 1.0)  # constant features
        return [jnp.asarray(np.stack([mean, std]), jnp.float32)] + list(w[1:])

    apply.calibrate = calibrate_spectral
    return init, apply


def calibrate_trainer(trainer, fiducial) -> bool:
    """Set a fresh network's data-dependent constants from fiducial inputs
    float(n, *input_shape) (a model whose ``apply`` has a ``calibrate`` attribute:
    :func:`field`'s feature standardisation; the first ``CALIBRATION_SAMPLE``) and
    restart the optimiser state from them; returns whether it did. The in-memory
    array classes call it (``Trainer.calibrate``) on their fiducial inputs,
    ``fit_archive`` on the archive's; call it yourself for the simulator and dataset
    classes. Warm starts (an optimiser state given) keep their trained weights."""
    t = trainer
    hook = getattr(t.model, "calibrate", None)
    if hook is None or not t._fresh or t._step:
        return False
    w = hook(t.w, np.asarray(fiducial)[: t.CALIBRATION_SAMPLE])
    t.w = t.initial_w = t.best_w = t.final_w = w
    t.state = t._opt.init(w)
    return True


def calibrate(model, w, fiducial):
    """Weights ``w`` of ``model`` with its data-dependent constants set from fiducial
    inputs float(n, *input_shape) (models with a ``calibrate`` attribute on ``apply``,
    e.g. :func:`field`; others unchanged) — for a fresh network, before fitting."""
    hook = getattr(model[1], "calibrate", None)
    return w if hook is None else hook(w, fiducial)


def polynomial(degree=2, n_summaries=2):
    """Linear map of the monomials x, x², …, x^degree of every input value.

    Exactly represents the sufficient statistics of Gaussian problems (Σd, Σd²),
    which makes it the reference network for checking that a trainer reaches
    the exact Fisher information.
    """
    degree = int(degree)

    def init(rng, input_shape):
        n = int(math.prod(input_shape)) * degree
        return (int(n_summaries),), (
            jax.random.normal(rng, (n, int(n_summaries))) / math.sqrt(n),
            jnp.zeros(int(n_summaries)),
        )

    def apply(w, x):
        W, b = w
        n_in = W.shape[0] // degree
        h = x.reshape(x.shape[: x.ndim - _input_ndim(x, n_in)] + (n_in,))
        return jnp.concatenate([h ** (p + 1) for p in range(degree)], -1) @ W + b

    return init, apply


BUILT_IN = ("mlp", "cnn", "field", "polynomial")

#: what ``auto`` (the command line's default model) becomes, by input rank
AUTO = {"vector": "mlp:128,128", "field": "field"}


def resolve_spec(spec: str, input_shape) -> str:
    """``spec`` with ``auto`` replaced by the default network for ``input_shape``:
    an MLP for vectors, the translation-invariant :func:`field` network for 2-D
    fields (float(H, W) or float(H, W, C)); measured on the 16×16 Gaussian random
    field (benchmarks/information.py): the flattened CNN kept 10 % of det F, the
    MLP 1.4 %. Other ranks get the MLP; other specs are unchanged."""
    if spec != "auto":
        return spec
    return AUTO["field" if len(tuple(input_shape)) in (2, 3) else "vector"]


class UntrustedCodeError(ValueError):
    """A ``module:function`` model spec without ``trust_code=True``."""


def from_spec(spec: str, n_summaries: int, trust_code: bool = False):
    """Model from a command-line spec.

    ``mlp:128,128`` · ``cnn:8,16`` (conv channels; dense width 64) · ``field`` /
    ``field:8`` (log shell powers, plus 8 learnt filters; :func:`field`) · ``polynomial:2`` ·
    ``package.module:function`` (a factory called as ``function(n_summaries)``
    returning ``(init, apply)``). The built-ins load anywhere; a
    ``module:function`` spec imports (runs) code, so only with ``trust_code=True``
    (command line: ``--trust-code``); otherwise UntrustedCodeError, before any import.
    """
    if not isinstance(spec, str):
        raise ValueError(f"model spec must be a string, got {type(spec).__name__}")
    name, _, args = spec.partition(":")
    if name in BUILT_IN:
        try:
            numbers = [int(a) for a in args.split(",") if a.strip()]
        except ValueError:
            raise ValueError(
                f"model spec {spec!r}: expected {name}:N1,N2,… (comma-separated integers)"
            ) from None
        if any(n <= 0 for n in numbers):
            raise ValueError(f"model spec {spec!r}: sizes must be positive")
        if name == "polynomial":
            return polynomial(numbers[0] if numbers else 2, n_summaries)
        if name == "mlp":
            return mlp(numbers or (128, 128), n_summaries)
        if name == "field":
            if len(numbers) > 1:
                raise ValueError(f"model spec {spec!r}: expected field or field:FILTERS")
            return field(numbers[0] if numbers else 0, n_summaries=n_summaries)
        return cnn(numbers or (8, 16), n_summaries=n_summaries)
    if not args or not name:
        raise ValueError(
            f"unknown model spec {spec!r}: expected mlp:W1,W2,…, cnn:C1,C2,…, field[:F], polynomial:D "
            "or package.module:function"
        )
    if not trust_code:
        raise UntrustedCodeError(
            f"model spec {spec!r} imports and runs Python code from {name!r}; "
            "pass trust_code=True (command line: --trust-code) if you trust it"
        )
    try:
        factory = getattr(importlib.import_module(name), args)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model spec {spec!r}: cannot import {args!r} from {name!r}: {e}") from e
    return factory(n_summaries)
