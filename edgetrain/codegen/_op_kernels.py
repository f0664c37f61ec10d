"""C kernels of the op categories beyond convolution / pooling / linear, as tables keyed by the
operator's name inside its category: a new op of a known category is one row, no new code.

NOTE [ Op categories in C ]
    - Point-wise (`POINTWISE`): y = f(x) element by element; a row is the forward expression of
      the input value `v` (and the op's scalar parameter `a`), the derivative expression, and
      whether the derivative reads the input (`v`) or the output (`o`): that tensor lives until
      the backward (the arena's lifetimes read `Pointwise.reads`).
    - Binary (`BINARY`): y = f(a, b); a row is the forward expression of the operands' values
      `a`, `b` and each operand's derivative; an operand's gradient reads the operands its
      derivative names (`operands_read`). Either both operands have the output's shape, or
      the second is broadcast over trailing dimensions (`b` of shape (B, C, 1, 1) against
      (B, C, H, W): a squeeze-excitation's channel scale; the `_bc` kernels, P values per `b`
      value, its gradient summed over them). A commutative op (`Binary.commutative`) takes the
      broadcast operand first too (swapped).
    - Losses (`LOSSES`): mean reduction over every element of the output, float targets of the
      output's shape. The forward returns the loss and writes dL/dz into the loss's saved
      buffer (as cross-entropy keeps its probabilities), which the backward copies out.
    - Dropout (`dropout_fwd` / `dropout_bwd`, NOTE [ Dropout in C ] in _lower.py).
    - Index maps (`_INDEX`): nearest upsampling by integer factors (read from the shapes) and
      concatenation (its dimension: the one where the output's size is the operands' sum;
      operands listed once each, so `cat([a, a])` is refused), both copies with no saved
      tensor.
    - Views that move data (`_VIEW`: `view_gather` / `view_scatter`, NOTE [ Views in C ] in
      _lower.py), constant factories (`fill_fwd`) and a shared weight's SGD step from its
      summed gradient (`sgd_apply`, NOTE [ Shared weights in C ]).
    - Softmax / log-softmax along any recorded dimension (`softmax_fwd` / `softmax_bwd`): the
      backward reads the output.
    - Layer norm (`layernorm_fwd` / `layernorm_bwd`): the backward reads the saved input and
      recomputes each row's mean and 1/std (no saved statistics); the input gradient uses the
      old gamma, then gamma and beta take their SGD steps row by row (no gradient buffer).
    The renderer emits only the kernels a model uses; `kernel_texts()` is every kernel's
    (name, C text): `_kernels.KERNELS` and these.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from edgetrain.codegen._kernels import KERNELS


class Reads(enum.Enum):
    """What a point-wise derivative reads: the operator's input or its output."""

    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True)
class Pointwise:
    fwd: str  # C expression of `v` (the input) and `a` (the parameter)
    grad: str  # dy/dx, of `v` (Reads.INPUT) or `o` (Reads.OUTPUT), and `a`
    reads: Reads
    param: str | None = None  # the module attribute `a` is read from (None: no parameter)


_SIG = "(1.0f / (1.0f + expf(-v)))"
_GELU_K = "0.7978845608f"  # sqrt(2 / pi)
_GELU_T = f"tanhf({_GELU_K} * (v + 0.044715f * v * v * v))"

POINTWISE: dict[str, Pointwise] = {
    "sigmoid": Pointwise(_SIG, "o * (1.0f - o)", Reads.OUTPUT),
    "tanh": Pointwise("tanhf(v)", "1.0f - o * o", Reads.OUTPUT),
    "exp": Pointwise("expf(v)", "o", Reads.OUTPUT),
    "neg": Pointwise("-v", "-1.0f", Reads.INPUT),
    # PyTorch's erf GELU and its backward (cdf + x * pdf)
    "gelu": Pointwise(
        "0.5f * v * (1.0f + erff(v * 0.70710678118654752f))",
        "0.5f * (1.0f + erff(v * 0.70710678118654752f)) + v * 0.39894228040143268f * "
        "expf(-0.5f * v * v)",
        Reads.INPUT,
    ),
    "gelu_tanh": Pointwise(
        f"0.5f * v * (1.0f + {_GELU_T})",
        f"0.5f * (1.0f + {_GELU_T}) + 0.5f * v * (1.0f - {_GELU_T} * {_GELU_T}) * {_GELU_K} "
        "* (1.0f + 0.134145f * v * v)",
        Reads.INPUT,
    ),
    "silu": Pointwise(f"v * {_SIG}", f"{_SIG} * (1.0f + v * (1.0f - {_SIG}))", Reads.INPUT),
    # PyTorch's hardswish_backward: 0 below -3, x / 3 + 1/2 up to 3 (inclusive), 1 above
    "hardswish": Pointwise(
        "v <= -3.0f ? 0.0f : (v >= 3.0f ? v : v * (v + 3.0f) / 6.0f)",
        "v < -3.0f ? 0.0f : (v <= 3.0f ? v / 3.0f + 0.5f : 1.0f)",
        Reads.INPUT,
    ),
    "hardsigmoid": Pointwise(
        "v <= -3.0f ? 0.0f : (v >= 3.0f ? 1.0f : v / 6.0f + 0.5f)",
        "(v > -3.0f && v < 3.0f) ? (1.0f / 6.0f) : 0.0f",
        Reads.INPUT,
    ),
    # an operation with a scalar (the node's `scalar` attribute is `a`)
    "mul_scalar": Pointwise("v * a", "a", Reads.INPUT),
    "div_scalar": Pointwise("v / a", "1.0f / a", Reads.INPUT),
    "add_scalar": Pointwise("v + a", "1.0f", Reads.INPUT),
    "sub_scalar": Pointwise("v - a", "1.0f", Reads.INPUT),
    "leaky_relu": Pointwise(
        "v > 0.0f ? v : v * a", "v > 0.0f ? 1.0f : a", Reads.INPUT, "negative_slope"
    ),
}
"""Point-wise operators by ATen name (`gelu_tanh`: GELU with approximate='tanh')."""


@dataclass(frozen=True)
class Binary:
    fwd: str  # of the values a, b
    grad: tuple[str, str]  # d y / d a, d y / d b
    commutative: bool = False

    def operands_read(self, needed: tuple[bool, bool]) -> tuple[bool, bool]:
        """Which operands the gradients of the `needed` operands read."""
        used = [g for g, want in zip(self.grad, needed) if want]
        return tuple(any(re.search(rf"\b{v}\b", g) for g in used) for v in ("a", "b"))


BINARY: dict[str, Binary] = {
    "sub": Binary("a - b", ("1.0f", "-1.0f")),
    "mul": Binary("a * b", ("b", "a"), commutative=True),
    "div": Binary("a / b", ("1.0f / b", "-a / (b * b)")),
}
"""Binary element-wise operators by ATen name (add is `_kernels`' add_fwd / grad_pass)."""


@dataclass(frozen=True)
class Loss:
    term: str  # the per-element loss, of z (prediction) and t (target)
    grad: str  # its derivative in z (times 1/n, the mean, applied by the kernel)


LOSSES: dict[str, Loss] = {
    "mse_loss": Loss("(z - t) * (z - t)", "2.0f * (z - t)"),
    # PyTorch's l1 backward: sign(z - t), 0 where equal
    "l1_loss": Loss("fabsf(z - t)", "(z > t ? 1.0f : (z < t ? -1.0f : 0.0f))"),
    # beta 1 (PyTorch's default)
    "smooth_l1_loss": Loss(
        "(fabsf(z - t) < 1.0f ? 0.5f * (z - t) * (z - t) : fabsf(z - t) - 0.5f)",
        "(fabsf(z - t) < 1.0f ? (z - t) : (z > t ? 1.0f : -1.0f))",
    ),
    "binary_cross_entropy_with_logits": Loss(
        "(z > 0.0f ? z : 0.0f) - z * t + log1pf(expf(-fabsf(z)))",
        "(1.0f / (1.0f + expf(-z)) - t)",
    ),
}
"""Losses over float targets by ATen name (mean reduction)."""


def _pointwise_c(name: str, p: Pointwise) -> dict[str, str]:
    s = "v" if p.reads is Reads.INPUT else "o"
    return {
        f"pw_{name}_fwd": f"""
static void pw_{name}_fwd(const float *x, float *y, int n, float a) {{
    (void)a;
    for (int i = 0; i < n; i++) {{ const float v = x[i]; y[i] = {p.fwd}; }}
}}
""",
        f"pw_{name}_bwd": f"""
/* dx = dy * f'({s}); {s} is the saved {p.reads.value} */
static void pw_{name}_bwd(const float *s, const float *dy, float *dx, int acc, int n, float a) {{
    (void)a;
    for (int i = 0; i < n; i++) {{
        const float {s} = s[i];
        (void){s};
        const float d = dy[i] * ({p.grad});
        if (acc) dx[i] += d; else dx[i] = d;
    }}
}}
""",
    }


def _binary_c(name: str, b: Binary) -> dict[str, str]:
    out = {
        f"bin_{name}_fwd": f"""
static void bin_{name}_fwd(const float *A, const float *B, float *y, int n) {{
    for (int i = 0; i < n; i++) {{ const float a = A[i], b = B[i]; y[i] = {b.fwd}; }}
}}
""",
        f"bin_{name}_fwd_bc": f"""
/* B broadcast: one value per P consecutive values of A */
static void bin_{name}_fwd_bc(const float *A, const float *B, float *y, int n, int P) {{
    for (int i = 0; i < n; i++) {{
        const float b = B[i];
        for (int p = 0; p < P; p++) {{ const float a = A[i * P + p]; y[i * P + p] = {b.fwd}; }}
    }}
}}
""",
    }
    for k, g in enumerate(b.grad):
        out[f"bin_{name}_bwd{k}"] = f"""
static void bin_{name}_bwd{k}(const float *A, const float *B, const float *dy, float *dx,
                              int acc, int n) {{
    for (int i = 0; i < n; i++) {{
        const float a = A ? A[i] : 0.0f, b = B ? B[i] : 0.0f;
        (void)a; (void)b;
        const float d = dy[i] * ({g});
        if (acc) dx[i] += d; else dx[i] = d;
    }}
}}
"""
        reduce = "s" if k == 1 else None  # the broadcast operand's gradient sums over P
        body = (
            "float s = 0.0f;\n"
            "        for (int p = 0; p < P; p++) {\n"
            "            const float a = A ? A[i * P + p] : 0.0f; (void)a;\n"
            f"            s += dy[i * P + p] * ({g});\n"
            "        }\n"
            "        if (acc) dx[i] += s; else dx[i] = s;"
            if reduce
            else "for (int p = 0; p < P; p++) {\n"
            "            const float a = A ? A[i * P + p] : 0.0f; (void)a;\n"
            f"            const float d = dy[i * P + p] * ({g});\n"
            "            if (acc) dx[i * P + p] += d; else dx[i * P + p] = d;\n"
            "        }"
        )
        out[f"bin_{name}_bwd{k}_bc"] = f"""
static void bin_{name}_bwd{k}_bc(const float *A, const float *B, const float *dy, float *dx,
                                 int acc, int n, int P) {{
    for (int i = 0; i < n; i++) {{
        const float b = B ? B[i] : 0.0f; (void)b;
        {body}
    }}
}}
"""
    return out


def _loss_c(name: str, loss: Loss) -> dict[str, str]:
    return {
        f"loss_{name}_fwd": f"""
/* mean over n elements; writes dL/dz into g for the backward */
static float loss_{name}_fwd(const float *zz, const float *tt, float *g, int n) {{
    const float inv = 1.0f / (float)n;
    float s = 0.0f;
    for (int i = 0; i < n; i++) {{
        const float z = zz[i], t = tt[i];
        s += {loss.term};
        g[i] = ({loss.grad}) * inv;
    }}
    return s * inv;
}}
"""
    }


_DROPOUT = {
    "et_rng_next": r"""
/* xorshift32 (Marsaglia, 2003): the dropout masks' generator; never 0 from a non-zero state */
static inline uint32_t et_rng_next(uint32_t *s) {
    uint32_t x = *s; x ^= x << 13; x ^= x >> 17; x ^= x << 5; *s = x; return x;
}
""",
    "dropout_fwd": r"""
/* training: keep x[i] * scale where the next draw is >= thr (p * 2^32), else 0; the generator's
   state before the mask is saved so the backward draws the same mask again (no mask buffer).
   Evaluation: the identity. */
static void dropout_fwd(const float *x, float *y, int n, uint32_t thr, float scale,
                        uint32_t *rng, uint32_t *saved, int training) {
    if (!training) { if (y != x) memcpy(y, x, sizeof(float) * (size_t)n); return; }
    *saved = *rng;
    for (int i = 0; i < n; i++) y[i] = et_rng_next(rng) >= thr ? x[i] * scale : 0.0f;
}
""",
    "dropout_bwd": r"""
static void dropout_bwd(const float *dy, float *dx, int acc, int n, uint32_t thr, float scale,
                        uint32_t saved) {
    uint32_t s = saved;
    for (int i = 0; i < n; i++) {
        const float d = et_rng_next(&s) >= thr ? dy[i] * scale : 0.0f;
        if (acc) dx[i] += d; else dx[i] = d;
    }
}
""",
}


_LAYER_NORM = {
    "layernorm_fwd": r"""
/* layer norm over the last D values of each of R rows (biased variance, PyTorch's) */
static void layernorm_fwd(const float *x, const float *g, const float *b, float *y, int R, int D,
                          float eps) {
    for (int r = 0; r < R; r++) {
        const float *xr = x + (size_t)r * D;
        float *yr = y + (size_t)r * D;
        float m = 0.0f, v = 0.0f;
        for (int d = 0; d < D; d++) m += xr[d];
        m /= (float)D;
        for (int d = 0; d < D; d++) v += (xr[d] - m) * (xr[d] - m);
        const float rs = 1.0f / sqrtf(v / (float)D + eps);
        for (int d = 0; d < D; d++)
            yr[d] = (xr[d] - m) * rs * (g ? g[d] : 1.0f) + (b ? b[d] : 0.0f);
    }
}
""",
    "layernorm_bwd": r"""
/* dx = rs * (g dy - mean(g dy) - xhat mean(g dy xhat)) per row, with the old gamma (if dx);
   then gamma -= lr * sum dy xhat, beta -= lr * sum dy, row by row (gw / gb: trained or 0) */
static void layernorm_bwd(const float *x, const float *dy, float *g, float *gw, float *gb,
                          float *dx, int acc, float lr, int R, int D, float eps) {
    for (int pass = dx ? 0 : 1; pass < 2; pass++)
    for (int r = 0; r < R; r++) {
        const float *xr = x + (size_t)r * D, *dr = dy + (size_t)r * D;
        float m = 0.0f, v = 0.0f;
        for (int d = 0; d < D; d++) m += xr[d];
        m /= (float)D;
        for (int d = 0; d < D; d++) v += (xr[d] - m) * (xr[d] - m);
        const float rs = 1.0f / sqrtf(v / (float)D + eps);
        if (pass == 0) {
            float s1 = 0.0f, s2 = 0.0f;
            for (int d = 0; d < D; d++) {
                const float gd = dr[d] * (g ? g[d] : 1.0f);
                s1 += gd; s2 += gd * (xr[d] - m) * rs;
            }
            s1 /= (float)D; s2 /= (float)D;
            float *xo = dx + (size_t)r * D;
            for (int d = 0; d < D; d++) {
                const float gd = dr[d] * (g ? g[d] : 1.0f);
                const float v2 = rs * (gd - s1 - (xr[d] - m) * rs * s2);
                if (acc) xo[d] += v2; else xo[d] = v2;
            }
        } else {
            for (int d = 0; d < D; d++) {
                if (gw) gw[d] -= lr * dr[d] * ((xr[d] - m) * rs);
                if (gb) gb[d] -= lr * dr[d];
            }
        }
    }
}
""",
}


_SOFTMAX = {
    "softmax_fwd": r"""
/* softmax (log_softmax if lg) along a dimension of n values with stride `inner`, for each of
   outer * inner positions */
static void softmax_fwd(const float *x, float *y, int outer, int n, int inner, int lg) {
    for (int o = 0; o < outer; o++)
    for (int i = 0; i < inner; i++) {
        const float *xs = x + (size_t)o * n * inner + i;
        float *ys = y + (size_t)o * n * inner + i;
        float m = xs[0], s = 0.0f;
        for (int k = 1; k < n; k++) if (xs[k * inner] > m) m = xs[k * inner];
        for (int k = 0; k < n; k++) s += expf(xs[k * inner] - m);
        const float lse = logf(s);
        for (int k = 0; k < n; k++)
            ys[k * inner] = lg ? xs[k * inner] - m - lse : expf(xs[k * inner] - m - lse);
    }
}
""",
    "softmax_bwd": r"""
/* from the output: softmax dx = y (dy - sum dy y); log_softmax dx = dy - exp(y) sum dy */
static void softmax_bwd(const float *y, const float *dy, float *dx, int acc, int outer, int n,
                        int inner, int lg) {
    for (int o = 0; o < outer; o++)
    for (int i = 0; i < inner; i++) {
        const size_t b = (size_t)o * n * inner + i;
        float s = 0.0f;
        for (int k = 0; k < n; k++) s += lg ? dy[b + k * inner] : dy[b + k * inner] * y[b + k * inner];
        for (int k = 0; k < n; k++) {
            const float yk = y[b + k * inner], g = dy[b + k * inner];
            const float d = lg ? g - expf(yk) * s : yk * (g - s);
            if (acc) dx[b + k * inner] += d; else dx[b + k * inner] = d;
        }
    }
}
""",
}


_INDEX = {
    "upsample_nearest_fwd": r"""
/* nearest upsampling by integer factors (Ho = sh * H, Wo = sw * W) of B*C planes */
static void upsample_nearest_fwd(const float *x, float *y, int BC, int H, int W, int sh, int sw) {
    const int Ho = H * sh, Wo = W * sw;
    for (int i = 0; i < BC; i++)
    for (int oh = 0; oh < Ho; oh++) {
        const float *xr = x + ((size_t)i * H + oh / sh) * W;
        float *yr = y + ((size_t)i * Ho + oh) * Wo;
        for (int ow = 0; ow < Wo; ow++) yr[ow] = xr[ow / sw];
    }
}
""",
    "upsample_nearest_bwd": r"""
/* each input value's gradient: the sum over its sh x sw block of the output's */
static void upsample_nearest_bwd(const float *dy, float *dx, int acc, int BC, int H, int W,
                                 int sh, int sw) {
    const int Ho = H * sh, Wo = W * sw;
    for (int i = 0; i < BC; i++)
    for (int h = 0; h < H; h++)
    for (int w = 0; w < W; w++) {
        float s = 0.0f;
        for (int a = 0; a < sh; a++)
            for (int b = 0; b < sw; b++) s += dy[((size_t)i * Ho + h * sh + a) * Wo + w * sw + b];
        float *d = dx + ((size_t)i * H + h) * W + w;
        if (acc) *d += s; else *d = s;
    }
}
""",
    "cat_fwd": r"""
/* one operand of a concatenation: `outer` blocks of `chunk` values into blocks of `whole`
   at `offset` */
static void cat_fwd(const float *x, float *y, int outer, int chunk, int whole, int offset) {
    for (int o = 0; o < outer; o++)
        memcpy(y + (size_t)o * whole + offset, x + (size_t)o * chunk, sizeof(float) * (size_t)chunk);
}
""",
    "cat_bwd": r"""
static void cat_bwd(const float *dy, float *dx, int acc, int outer, int chunk, int whole,
                    int offset) {
    for (int o = 0; o < outer; o++) {
        const float *s = dy + (size_t)o * whole + offset;
        float *d = dx + (size_t)o * chunk;
        if (acc) { for (int k = 0; k < chunk; k++) d[k] += s[k]; }
        else memcpy(d, s, sizeof(float) * (size_t)chunk);
    }
}
""",
}


_VIEW = {
    "view_gather": r"""
/* a view that moves data (NOTE [ Views in C ]): y[i] = x[off + sum_k i_k * stride[k]] over
   the index space size[0..nd) in row-major order; the last dimension is the inner loop */
static void view_gather(const float *x, float *y, int off, int nd, const int *size,
                        const int *stride) {
    if (nd == 0) { y[0] = x[off]; return; }
    int idx[8] = {0}, rows = 1, base = off;
    for (int k = 0; k < nd - 1; k++) rows *= size[k];
    const int L = size[nd - 1], s = stride[nd - 1];
    for (int r = 0; r < rows; r++, y += L) {
        const float *xs = x + base;
        if (s == 1) memcpy(y, xs, sizeof(float) * (size_t)L);
        else for (int j = 0; j < L; j++) y[j] = xs[(ptrdiff_t)j * s];
        for (int k = nd - 2; k >= 0; k--) {
            base += stride[k];
            if (++idx[k] < size[k]) break;
            base -= stride[k] * size[k]; idx[k] = 0;
        }
    }
}
""",
    "view_scatter": r"""
/* the gather's backward: dx[off + sum_k i_k * stride[k]] += dy[i]; dx (nx values) is zeroed
   first unless acc, so elements read twice (expand) sum and elements never read get 0 */
static void view_scatter(const float *dy, float *dx, int acc, int nx, int off, int nd,
                         const int *size, const int *stride) {
    if (!acc) k_zero(dx, nx);
    if (nd == 0) { dx[off] += dy[0]; return; }
    int idx[8] = {0}, rows = 1, base = off;
    for (int k = 0; k < nd - 1; k++) rows *= size[k];
    const int L = size[nd - 1], s = stride[nd - 1];
    for (int r = 0; r < rows; r++, dy += L) {
        float *d = dx + base;
        for (int j = 0; j < L; j++) d[(ptrdiff_t)j * s] += dy[j];
        for (int k = nd - 2; k >= 0; k--) {
            base += stride[k];
            if (++idx[k] < size[k]) break;
            base -= stride[k] * size[k]; idx[k] = 0;
        }
    }
}
""",
    "fill_fwd": r"""
/* a constant factory (zeros / ones) */
static void fill_fwd(float *y, int n, float v) { for (int i = 0; i < n; i++) y[i] = v; }
""",
    "sgd_apply": r"""
/* a shared weight's SGD step from its summed gradient (NOTE [ Shared weights in C ]) */
static void sgd_apply(float *p, const float *g, float lr, int n) {
    for (int i = 0; i < n; i++) p[i] -= lr * g[i];
}
""",
}


_ATTENTION = {
    "param_add_fwd": r"""
/* y = x + p, p (P values) broadcast over the leading dimensions of x (n = outer * P) */
static void param_add_fwd(const float *x, const float *p, float *y, int outer, int P) {
    for (int o = 0; o < outer; o++)
        for (int i = 0; i < P; i++) y[(size_t)o * P + i] = x[(size_t)o * P + i] + p[i];
}
""",
    "param_add_bwd_sgd": r"""
/* the broadcast parameter's SGD step: p -= lr * sum over the leading dimensions of dy */
static void param_add_bwd_sgd(const float *dy, float *p, float lr, int outer, int P) {
    for (int i = 0; i < P; i++) {
        float s = 0.0f;
        for (int o = 0; o < outer; o++) s += dy[(size_t)o * P + i];
        p[i] -= lr * s;
    }
}
""",
    "mean_fwd": r"""
/* mean over a run of n middle dimensions: x (outer, n, inner) -> y (outer, inner) */
static void mean_fwd(const float *x, float *y, int outer, int n, int inner) {
    for (int o = 0; o < outer; o++)
    for (int i = 0; i < inner; i++) {
        float s = 0.0f;
        for (int k = 0; k < n; k++) s += x[((size_t)o * n + k) * inner + i];
        y[(size_t)o * inner + i] = s / (float)n;
    }
}
""",
    "mean_bwd": r"""
static void mean_bwd(const float *dy, float *dx, int acc, int outer, int n, int inner) {
    for (int o = 0; o < outer; o++)
    for (int k = 0; k < n; k++)
    for (int i = 0; i < inner; i++) {
        const float d = dy[(size_t)o * inner + i] / (float)n;
        float *t = dx + ((size_t)o * n + k) * inner + i;
        if (acc) *t += d; else *t = d;
    }
}
""",
    "bmm_fwd": r"""
/* y (B, M, N) = a (B, M, K) @ b (B, K, N) */
static void bmm_fwd(const float *a, const float *b, float *y, int B, int M, int K, int N) {
    for (int h = 0; h < B; h++)
    for (int m = 0; m < M; m++) {
        const float *ar = a + ((size_t)h * M + m) * K;
        float *yr = y + ((size_t)h * M + m) * N;
        for (int n = 0; n < N; n++) yr[n] = 0.0f;
        for (int k = 0; k < K; k++) {
            const float av = ar[k], *br = b + ((size_t)h * K + k) * N;
            for (int n = 0; n < N; n++) yr[n] += av * br[n];
        }
    }
}
""",
    "bmm_bwd_a": r"""
/* da (B, M, K) = dy (B, M, N) @ b^T */
static void bmm_bwd_a(const float *dy, const float *b, float *da, int acc, int B, int M, int K,
                      int N) {
    for (int h = 0; h < B; h++)
    for (int m = 0; m < M; m++)
    for (int k = 0; k < K; k++) {
        const float *dr = dy + ((size_t)h * M + m) * N, *br = b + ((size_t)h * K + k) * N;
        float s = 0.0f;
        for (int n = 0; n < N; n++) s += dr[n] * br[n];
        float *t = da + ((size_t)h * M + m) * K + k;
        if (acc) *t += s; else *t = s;
    }
}
""",
    "bmm_bwd_b": r"""
/* db (B, K, N) = a^T @ dy */
static void bmm_bwd_b(const float *a, const float *dy, float *db, int acc, int B, int M, int K,
                      int N) {
    for (int h = 0; h < B; h++)
    for (int k = 0; k < K; k++) {
        float *t = db + ((size_t)h * K + k) * N;
        if (!acc) for (int n = 0; n < N; n++) t[n] = 0.0f;
        for (int m = 0; m < M; m++) {
            const float av = a[((size_t)h * M + m) * K + k], *dr = dy + ((size_t)h * M + m) * N;
            for (int n = 0; n < N; n++) t[n] += av * dr[n];
        }
    }
}
""",
    "lstm_fwd": r"""
/* one nn.LSTM layer over x (T, B, I) from h0, c0 (B, H); gates i, f, g, o (PyTorch's order).
   ws per step: the activated gates (B x 4H), c (B x H), h (B x H). y: every h (T, B, H), or
   the last one (B, H) */
static float lstm_sig(float v) { return 1.0f / (1.0f + expf(-v)); }
static void lstm_fwd(const float *x, const float *h0, const float *c0, const float *wih,
                     const float *whh, const float *bih, const float *bhh, float *y, float *ws,
                     int T, int B, int I, int H, int last) {
    const size_t step = (size_t)B * 6 * H;
    for (int t = 0; t < T; t++) {
        float *gt = ws + t * step, *ct = gt + (size_t)B * 4 * H, *ht = ct + (size_t)B * H;
        const float *hp = t ? ws + (t - 1) * step + (size_t)B * 5 * H : h0;
        const float *cp = t ? ws + (t - 1) * step + (size_t)B * 4 * H : c0;
        for (int b = 0; b < B; b++) {
            const float *xb = x + ((size_t)t * B + b) * I, *hb = hp + (size_t)b * H;
            float *gb = gt + (size_t)b * 4 * H;
            for (int r = 0; r < 4 * H; r++) {
                float z = bih[r] + bhh[r];
                const float *wi = wih + (size_t)r * I, *wh = whh + (size_t)r * H;
                for (int k = 0; k < I; k++) z += wi[k] * xb[k];
                for (int k = 0; k < H; k++) z += wh[k] * hb[k];
                gb[r] = (r >= 2 * H && r < 3 * H) ? tanhf(z) : lstm_sig(z);
            }
            for (int j = 0; j < H; j++) {
                const float c = gb[H + j] * cp[(size_t)b * H + j] + gb[j] * gb[2 * H + j];
                ct[(size_t)b * H + j] = c;
                ht[(size_t)b * H + j] = gb[3 * H + j] * tanhf(c);
            }
        }
        if (!last) for (int k = 0; k < B * H; k++) y[(size_t)t * B * H + k] = ht[k];
        else if (t == T - 1) for (int k = 0; k < B * H; k++) y[k] = ht[k];
    }
}
""",
    "lstm_bwd": r"""
/* backpropagation through time from dy; the gate gradients overwrite the saved gates, then
   dx (old W_ih) and the SGD steps of the trained arrays (a null array is not trained) */
static void lstm_bwd(const float *x, const float *h0, const float *c0, float *wih, float *whh,
                     float *bih, float *bhh, const float *dy, float *dx, int acc, float *ws,
                     float lr, int tw_ih, int tw_hh, int tb_ih, int tb_hh, int T, int B, int I,
                     int H, int last) {
    const size_t step = (size_t)B * 6 * H;
    float *dh = ws + (size_t)T * step, *dc = dh + (size_t)B * H, *dn = dc + (size_t)B * H;
    for (int k = 0; k < B * H; k++) { dh[k] = last ? dy[k] : 0.0f; dc[k] = 0.0f; }
    for (int t = T - 1; t >= 0; t--) {
        float *gt = ws + t * step;
        const float *ct = gt + (size_t)B * 4 * H;
        const float *cp = t ? ws + (t - 1) * step + (size_t)B * 4 * H : c0;
        if (!last) for (int k = 0; k < B * H; k++) dh[k] += dy[(size_t)t * B * H + k];
        for (int b = 0; b < B; b++) {
            float *gb = gt + (size_t)b * 4 * H;
            for (int j = 0; j < H; j++) {
                const size_t q = (size_t)b * H + j;
                const float i = gb[j], f = gb[H + j], g = gb[2 * H + j], o = gb[3 * H + j];
                const float tc = tanhf(ct[q]);
                const float dct = dc[q] + dh[q] * o * (1.0f - tc * tc);
                gb[3 * H + j] = dh[q] * tc * o * (1.0f - o);
                gb[j] = dct * g * i * (1.0f - i);
                gb[H + j] = dct * cp[q] * f * (1.0f - f);
                gb[2 * H + j] = dct * i * (1.0f - g * g);
                dc[q] = dct * f;
            }
            for (int k = 0; k < H; k++) {
                float s = 0.0f;
                for (int r = 0; r < 4 * H; r++) s += whh[(size_t)r * H + k] * gb[r];
                dn[(size_t)b * H + k] = s;
            }
        }
        for (int k = 0; k < B * H; k++) dh[k] = dn[k];
    }
    if (dx)
        for (int t = 0; t < T; t++)
        for (int b = 0; b < B; b++) {
            const float *gb = ws + t * step + (size_t)b * 4 * H;
            float *d = dx + ((size_t)t * B + b) * I;
            for (int k = 0; k < I; k++) {
                float s = 0.0f;
                for (int r = 0; r < 4 * H; r++) s += wih[(size_t)r * I + k] * gb[r];
                if (acc) d[k] += s; else d[k] = s;
            }
        }
    for (int r = 0; r < 4 * H; r++) {
        float sb = 0.0f;
        for (int t = 0; t < T; t++)
        for (int b = 0; b < B; b++) {
            const float dz = ws[t * step + (size_t)b * 4 * H + r];
            const float *xb = x + ((size_t)t * B + b) * I;
            const float *hb = (t ? ws + (t - 1) * step + (size_t)B * 5 * H : h0) + (size_t)b * H;
            sb += dz;
            if (tw_ih) for (int k = 0; k < I; k++) wih[(size_t)r * I + k] -= lr * dz * xb[k];
            if (tw_hh) for (int k = 0; k < H; k++) whh[(size_t)r * H + k] -= lr * dz * hb[k];
        }
        if (tb_ih) bih[r] -= lr * sb;
        if (tb_hh) bhh[r] -= lr * sb;
    }
}
""",
    "embedding_fwd": r"""
/* rows of a V x D table by token ids (stored as floats, exact below 2^24); an id outside
   [0, V) gives a zero row */
static void embedding_fwd(const float *ids, const float *w, float *y, int T, int V, int D) {
    for (int t = 0; t < T; t++) {
        const int r = (int)ids[t];
        float *yt = y + (size_t)t * D;
        if (r < 0 || r >= V) { for (int d = 0; d < D; d++) yt[d] = 0.0f; continue; }
        const float *wr = w + (size_t)r * D;
        for (int d = 0; d < D; d++) yt[d] = wr[d];
    }
}
""",
    "embedding_bwd_sgd": r"""
/* the table's SGD step: each token's output gradient scatter-added into its row */
static void embedding_bwd_sgd(const float *ids, const float *dy, float *w, float lr, int T,
                              int V, int D) {
    for (int t = 0; t < T; t++) {
        const int r = (int)ids[t];
        if (r < 0 || r >= V) continue;
        float *wr = w + (size_t)r * D;
        const float *dt = dy + (size_t)t * D;
        for (int d = 0; d < D; d++) wr[d] -= lr * dt[d];
    }
}
""",
    "attention_fwd": r"""
/* scaled dot-product attention, no mask, no dropout: for each of BH heads,
   o_i = sum_j softmax_j(scale q_i . k_j) v_j (q: L x E, k: S x E, v: S x Ev, o: L x Ev);
   one pass per row with a running maximum (the row's scores are not stored) */
static float att_dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int e = 0; e < n; e++) s += a[e] * b[e];
    return s;
}
static void attention_fwd(const float *q, const float *k, const float *v, float *o, int BH,
                          int L, int S, int E, int Ev, float scale) {
    for (int h = 0; h < BH; h++) {
        const float *kh = k + (size_t)h * S * E, *vh = v + (size_t)h * S * Ev;
        for (int i = 0; i < L; i++) {
            const float *qi = q + ((size_t)h * L + i) * E;
            float *oi = o + ((size_t)h * L + i) * Ev;
            float m = -INFINITY, l = 0.0f;
            for (int e = 0; e < Ev; e++) oi[e] = 0.0f;
            for (int j = 0; j < S; j++) {
                const float s = scale * att_dot(qi, kh + (size_t)j * E, E);
                if (s > m) {
                    const float r = expf(m - s);
                    l *= r;
                    for (int e = 0; e < Ev; e++) oi[e] *= r;
                    m = s;
                }
                const float p = expf(s - m);
                l += p;
                for (int e = 0; e < Ev; e++) oi[e] += p * vh[(size_t)j * Ev + e];
            }
            for (int e = 0; e < Ev; e++) oi[e] /= l;
        }
    }
}
""",
    "attention_bwd": r"""
/* its backward from the saved q, k, v: each row's probabilities are recomputed (its
   log-sum-exp first), D_i = sum_j p_ij dp_ij, then ds_ij = p_ij (dp_ij - D_i) with
   dp_ij = do_i . v_j: dq_i += scale ds_ij k_j, dk_j += scale ds_ij q_i, dv_j += p_ij do_i.
   A null gradient is not wanted; acc*: add to it (else it is zeroed first) */
static void attention_bwd(const float *q, const float *k, const float *v, const float *dout,
                          float *dq, float *dk, float *dv, int accq, int acck, int accv,
                          int BH, int L, int S, int E, int Ev, float scale) {
    if (dq && !accq) k_zero(dq, BH * L * E);
    if (dk && !acck) k_zero(dk, BH * S * E);
    if (dv && !accv) k_zero(dv, BH * S * Ev);
    for (int h = 0; h < BH; h++) {
        const float *kh = k + (size_t)h * S * E, *vh = v + (size_t)h * S * Ev;
        for (int i = 0; i < L; i++) {
            const float *qi = q + ((size_t)h * L + i) * E;
            const float *doi = dout + ((size_t)h * L + i) * Ev;
            float m = -INFINITY, l = 0.0f, D = 0.0f;
            for (int j = 0; j < S; j++) {
                const float s = scale * att_dot(qi, kh + (size_t)j * E, E);
                if (s > m) { l *= expf(m - s); m = s; }
                l += expf(s - m);
            }
            const float lse = m + logf(l);
            for (int j = 0; j < S; j++)
                D += expf(scale * att_dot(qi, kh + (size_t)j * E, E) - lse)
                     * att_dot(doi, vh + (size_t)j * Ev, Ev);
            for (int j = 0; j < S; j++) {
                const float *kj = kh + (size_t)j * E;
                const float p = expf(scale * att_dot(qi, kj, E) - lse);
                const float ds = scale * p * (att_dot(doi, vh + (size_t)j * Ev, Ev) - D);
                if (dv) { float *t = dv + ((size_t)h * S + j) * Ev;
                          for (int e = 0; e < Ev; e++) t[e] += p * doi[e]; }
                if (dq) { float *t = dq + ((size_t)h * L + i) * E;
                          for (int e = 0; e < E; e++) t[e] += ds * kj[e]; }
                if (dk) { float *t = dk + ((size_t)h * S + j) * E;
                          for (int e = 0; e < E; e++) t[e] += ds * qi[e]; }
            }
        }
    }
}
""",
}


@functools.cache
def op_kernels() -> dict[str, str]:
    """The C text of every kernel of this module's tables, by kernel name."""
    out: dict[str, str] = {}
    for name, p in POINTWISE.items():
        out.update(_pointwise_c(name, p))
    for name, b in BINARY.items():
        out.update(_binary_c(name, b))
    for name, loss in LOSSES.items():
        out.update(_loss_c(name, loss))
    out.update(_DROPOUT)
    out.update(_LAYER_NORM)
    out.update(_INDEX)
    out.update(_SOFTMAX)
    out.update(_VIEW)
    out.update(_ATTENTION)
    return out


def kernel_texts() -> tuple[tuple[str, str], ...]:
    """Every kernel's (name, C text), in emission order: `_kernels.KERNELS` then these."""
    return (*KERNELS.items(), *op_kernels().items())
