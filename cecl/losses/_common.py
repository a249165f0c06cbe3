"""Shared machinery of the contrastive losses.

- Input validation that raises ``ValueError`` with one line naming the problem. Checks of tensor VALUES
  (non-finite features, zero or overflowing norms) read the device, a host-device synchronisation on an
  accelerator; they raise at once only on the device types in ``EAGER_CHECK_DEVICES`` (the CPU, where a
  read costs nothing). Elsewhere invalid input makes the loss NaN instead (an invalid vector is normalised
  to NaN), which the training loop's non-finite-loss guard reports without a per-step read.
- View-major flattening: features ``[B, V, D]`` become ``N = V * B`` anchors, all first views, then all
  second views, ...; anchor ``i`` is view ``i // B`` of source image ``i % B``.
- L2 normalisation in the compute dtype: float32 (float64 when the input is float64), with autocast
  disabled, so bf16/fp16 training still gets float32 similarity logits and log-sum-exps.
- The expensive part, the row-wise log-sum-exps over the ``N x N`` similarity matrix, as a custom
  autograd function that never holds the whole matrix: rows are processed in blocks of ``block_rows``
  rows (one reused ``block_rows x N`` buffer), and the backward pass recomputes each block and applies
  the analytic gradient (softmax weights) with two matrix products. Label structure enters through
  per-group buckets (``index_add_`` of a block's columns by group, ``gather`` of per-group coefficients)
  and, for rare rows and the hinge variant, boolean masks from label comparisons built per block; no
  floating-point mask matrix is ever formed. Group ids come from label comparisons (``group_index``), not
  ``unique``, and the rare rows are chosen by masks, not ``nonzero``: the step never waits for the device.
- The positive terms ``sum_{p in P(i)} s_ip`` need no ``N x N`` work at all: with ``P(i)`` = "same group,
  not i", ``sum_p z_i . z_p = z_i . (sum of the group's z - z_i)``, which is O(N D) and is left to
  ordinary autograd.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from pydantic import ValidationError
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from cecl.plugin_options import POSITIVE_FINITE

# Elements of one similarity block (rows * N). Small enough to stay cache-resident on a CPU; on an
# accelerator, kernel-launch overhead dominates for small blocks, so they get a larger budget.
_CPU_BLOCK_ELEMENTS = 1 << 21
_ACCEL_BLOCK_ELEMENTS = 1 << 26

# Device types on which the value checks read the tensors and raise ValueError at once. Elsewhere (CUDA) a
# read would stall the host every step, so invalid values surface as a NaN loss (see the module docstring).
EAGER_CHECK_DEVICES: frozenset[str] = frozenset({"cpu"})


def eager_checks(device: torch.device) -> bool:
    """Whether value checks on ``device`` read the tensors now (no host-device sync there)."""
    return device.type in EAGER_CHECK_DEVICES


# --------------------------------------------------------------------------- validation


def check_positive(name: str, value: float) -> float:
    """A strictly positive finite float (temperatures): validated by the options schemas' own type
    (cecl/plugin_options.py ``PositiveFinite``), so a constructor and params.yaml accept the same values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    try:
        return POSITIVE_FINITE.validate_python(number)
    except ValidationError:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None


def check_nonnegative(name: str, value: float) -> float:
    """A finite float >= 0 (margins, epsilon, beta)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not (0.0 <= number < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def check_bool(name: str, value: bool) -> bool:
    """A real bool (YAML's ``yes``/``1`` typos are rejected, not coerced)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """An int >= ``minimum`` (sizes, counts, iterations); bools and floats are rejected, not coerced."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value


def check_block_rows(block_rows: int | None) -> int | None:
    if block_rows is None:
        return None
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"block_rows must be a positive integer or None, got {block_rows!r}")
    return block_rows


def check_features(features: Tensor, name: str = "features", last: str = "D") -> tuple[int, int, int]:
    """Validate ``features`` of shape [B, V, D] (``name``/``last`` label other [B, V, K] inputs in the
    messages, e.g. SwAV's prototype scores); returns (B, V, D)."""
    shape = f"[B, V, {last}]"
    if not isinstance(features, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape}, got {type(features).__name__}")
    if features.dim() != 3:
        raise ValueError(f"{name} must be 3-D {shape}, got shape {tuple(features.shape)}")
    batch, n_views, dim = features.shape
    if batch < 1:
        raise ValueError(f"{name} must hold at least one source image (B >= 1), got B={batch}")
    if n_views < 2:
        raise ValueError(f"{name} must hold at least 2 views per image (V >= 2), got V={n_views}")
    if dim < 1:
        raise ValueError(f"{name} must have a last dimension {last} >= 1, got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {features.dtype}")
    if eager_checks(features.device) and not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} contain non-finite values (NaN or inf)")
    return batch, n_views, dim


def check_labels(labels: Tensor | None, batch: int, device: torch.device, *, required: bool) -> Tensor | None:
    """Validate integer ``labels`` of shape [B]; returns them on ``device`` (or None when allowed)."""
    if labels is None:
        if required:
            raise ValueError("labels are required: pass an integer tensor of shape [B]")
        return None
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor of shape [B], got {type(labels).__name__}")
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape [B] = [{batch}], got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    return labels.to(device)


def check_inputs(
    features: Tensor, labels: Tensor | None, *, negatives_for: str | None = None
) -> tuple[int, int, Tensor]:
    """Validate [B, V, D] features and optional labels; returns (B, V, groups [N]) view-major, where
    ``groups`` are the labels, or the source-image index when ``labels`` is None (self-supervised).
    ``negatives_for`` names a loss that needs B >= 2 (other images as negatives)."""
    batch, n_views, _ = check_features(features)
    checked = check_labels(labels, batch, features.device, required=False)
    if negatives_for and batch < 2:
        raise ValueError(
            f"{negatives_for} needs at least 2 source images (B >= 2) to have negatives, got B={batch}"
        )
    if checked is None:
        checked = torch.arange(batch, device=features.device)
    return batch, n_views, checked.repeat(n_views)


# --------------------------------------------------------------------------- dtype, autocast, layout


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def autocast_disabled(device_type: str) -> Iterator[None]:
    """Switch autocast off on ``device_type`` (a no-op where autocast does not exist)."""
    if torch.amp.is_autocast_available(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def flatten_views(features: Tensor) -> Tensor:
    """[B, V, D] -> [V * B, D], view-major: row v * B + b is view v of image b."""
    return features.transpose(0, 1).reshape(-1, features.shape[-1])


def normalized_anchors(features: Tensor) -> Tensor:
    """View-major flattened, L2-normalised anchors in the compute dtype. Call with autocast disabled.

    A zero or overflowing norm raises ValueError on ``EAGER_CHECK_DEVICES``; elsewhere its vector becomes
    NaN (so does the loss), without reading the device.
    """
    flat = flatten_views(features).to(compute_dtype(features.dtype))
    norms = torch.linalg.vector_norm(flat, dim=1)
    if eager_checks(flat.device):
        if not bool((norms > 0).all()):
            raise ValueError("features contain a zero-norm vector, which cannot be L2-normalised")
        if not bool(torch.isfinite(norms).all()):
            raise ValueError("features have a vector whose norm overflows, which cannot be L2-normalised")
        return flat / norms.unsqueeze(1)
    # x / inf would be a finite 0: an overflowing norm must give NaN too.
    usable = (norms > 0) & torch.isfinite(norms)
    return flat / torch.where(usable, norms, math.nan).unsqueeze(1)


def group_index(labels: Tensor, n_views: int) -> tuple[Tensor, Tensor, int]:
    """Group ids per anchor (view-major), each anchor's group size, and the id bound K = B.

    The id of a label is the index of its first occurrence among the B source labels, found by comparing
    all B x B pairs: no ``unique`` (its output size is a device value, a host-device sync on CUDA) and no
    assumption on the label values. Ids lie in [0, B); not every id is used.
    """
    same = labels[:, None] == labels[None, :]
    first = same.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximal index
    sizes = same.sum(1) * n_views
    return first.repeat(n_views), sizes.repeat(n_views), int(labels.shape[0])


# --------------------------------------------------------------------------- positive terms (O(N D))


def group_positive_dots(z: Tensor, groups: Tensor, n_groups: int) -> Tensor:
    """For each anchor i: sum over p != i in i's group of z_i . z_p (differentiable, O(N D))."""
    totals = z.new_zeros(n_groups, z.shape[1]).index_add(0, groups, z)
    return torch.linalg.vecdot(z, totals.index_select(0, groups) - z)


def view_positive_dots(z: Tensor, n_views: int) -> Tensor:
    """For each anchor i: sum over the other views p of i's source image of z_i . z_p."""
    totals = z.view(n_views, -1, z.shape[1]).sum(0).repeat(n_views, 1)
    return torch.linalg.vecdot(z, totals - z)


# --------------------------------------------------------------------------- log-sum-exp kernels


def masked_logsumexp(x: Tensor, keep: Tensor, dim: int = -1) -> Tensor:
    """log sum exp of ``x`` over the entries where ``keep`` is True; -inf for an empty slice.

    Empty slices are filled with a finite value before the reduction, so the gradient is finite (zero)
    for them as well: ``logsumexp`` over an all -inf slice has a NaN gradient even when the result is
    later discarded.
    """
    any_kept = keep.any(dim=dim, keepdim=True)
    filled = x.masked_fill(~keep & any_kept, float("-inf")).masked_fill(~any_kept, 0.0)
    out = torch.logsumexp(filled, dim=dim, keepdim=True)
    return out.masked_fill(~any_kept, float("-inf")).squeeze(dim)


def default_block_rows(n: int, device: torch.device) -> int:
    budget = _CPU_BLOCK_ELEMENTS if device.type == "cpu" else _ACCEL_BLOCK_ELEMENTS
    return max(1, min(n, budget // max(n, 1)))


def _blocks(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, block_rows):
        yield start, min(start + block_rows, n)


def _similarity_block(z: Tensor, scaled: Tensor, start: int, stop: int, buffer: Tensor) -> Tensor:
    """s_ij = z_i . z_j / tau for rows start..stop into ``buffer``, with s_ii = -inf."""
    block = buffer[: stop - start]
    torch.mm(scaled[start:stop], z.T, out=block)
    block.diagonal(start).fill_(float("-inf"))
    return block


def _max_log_rescale(dtype: torch.dtype) -> float:
    """Largest LSE_all(i) - LSE_neg(i) for which the backward pass takes the negatives' softmax as a rescaled
    slice of the full softmax, exp(s - LSE_neg) = exp(s - LSE_all) * exp(LSE_all - LSE_neg). Entries that the
    first factor loses to underflow are then below sqrt(smallest subnormal) (about 4e-23 in float32)."""
    info = torch.finfo(dtype)
    return -0.5 * math.log(info.tiny * info.eps)


def _bound(inv_tau: float) -> float:
    """An upper bound of |s_ij| = |z_i . z_j| * inv_tau for unit vectors, with room for rounding."""
    return inv_tau * (1.0 + 1e-3) + 1e-3


def _negatives_may_underflow(inv_tau: float, dtype: torch.dtype) -> bool:
    """Whether a row's negatives can sum below tiny / eps under the shared shift (the row's max).

    Every term is >= exp(-2 * bound), so this needs 2 * bound > log(eps / tiny): tau below about 0.03 in
    float32 (0.003 in float64). Decided from tau alone, on the host.
    """
    info = torch.finfo(dtype)
    return 2.0 * _bound(inv_tau) > math.log(info.eps / info.tiny) - 1.0


def _ratio_may_exceed(n: int, inv_tau: float, dtype: torch.dtype) -> bool:
    """Whether LSE_all(i) - LSE_neg(i) <= log N + 2 * bound can pass ``_max_log_rescale`` (the backward's
    exact rows): tau below about 0.045 in float32 at N = 2048. Decided on the host."""
    return math.log(max(n, 2)) + 2.0 * _bound(inv_tau) > _max_log_rescale(dtype) - 1.0


class _RowLogSumExp(torch.autograd.Function):
    """Row-wise LSE_all(i) = log sum_{k != i} exp(s_ik) and LSE_neg(i) = log sum_{g_k != g_i} exp(s_ik).

    Per block of rows, exp(s - row max) is formed once; LSE_all sums its rows and LSE_neg sums its columns
    into per-group buckets (``index_add_``) and drops the row's own group, so no N x N mask is built.
    (On CUDA ``index_add_`` accumulates with atomics: float32 results may differ in the last bits between
    runs.) The rare rows that need more care (tiny tau) are redone for every row under a mask, and only
    when tau allows them at all, so nothing waits for the device to say which rows they are.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, z: Tensor, groups: Tensor | None, n_groups: int, inv_tau: float, block_rows: int
    ) -> tuple[Tensor, Tensor]:
        n = z.shape[0]
        scaled = z * inv_tau
        lse_all = z.new_empty(n)
        lse_neg = z.new_full((n,), float("-inf"))
        neg_sum = z.new_zeros(n)
        buffer = z.new_empty(min(block_rows, n), n)
        bucket_buffer = z.new_empty(min(block_rows, n), n_groups) if groups is not None else None
        for start, stop in _blocks(n, block_rows):
            s = _similarity_block(z, scaled, start, stop, buffer)
            row_max = s.amax(1)
            s.sub_(row_max.unsqueeze(1)).exp_()
            lse_all[start:stop] = row_max + s.sum(1).log()
            if groups is not None:
                assert bucket_buffer is not None
                buckets = bucket_buffer[: stop - start].zero_().index_add_(1, groups, s)
                buckets.scatter_(1, groups[start:stop, None], 0.0)
                sums = buckets.sum(1)
                neg_sum[start:stop] = sums
                lse_neg[start:stop] = row_max + sums.log()
        if groups is not None and _negatives_may_underflow(inv_tau, z.dtype):
            # One shared shift per row (the max over all k != i) can underflow the negatives' sum when
            # they are all far below the positives (tiny tau). Redo such rows with their own shift (rows
            # without negatives give -inf either way).
            info = torch.finfo(z.dtype)
            redo = neg_sum < info.tiny / info.eps
            for start, stop in _blocks(n, block_rows):
                s = _similarity_block(z, scaled, start, stop, buffer)
                own = masked_logsumexp(s, groups[start:stop, None] != groups[None, :], dim=1)
                lse_neg[start:stop] = torch.where(redo[start:stop], own, lse_neg[start:stop])
        ctx.set_materialize_grads(False)  # an unused output's gradient is None: no test of its values
        ctx.save_for_backward(z, groups, lse_all, lse_neg)
        ctx.n_groups = n_groups
        ctx.inv_tau = inv_tau
        ctx.block_rows = block_rows
        return lse_all, lse_neg

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad_all: Tensor | None, grad_neg: Tensor | None
    ) -> tuple[Tensor | None, None, None, None, None]:
        z, groups, lse_all, lse_neg = ctx.saved_tensors
        n_groups: int = ctx.n_groups  # type: ignore[attr-defined]
        inv_tau: float = ctx.inv_tau  # type: ignore[attr-defined]
        block_rows: int = ctx.block_rows  # type: ignore[attr-defined]
        use_all = grad_all is not None
        use_neg = groups is not None and grad_neg is not None
        if not (use_all or use_neg):
            return None, None, None, None, None
        with autocast_disabled(z.device.type):
            n = z.shape[0]
            scaled = z * inv_tau
            grad_z = torch.zeros_like(z)
            buffer = z.new_empty(min(block_rows, n), n)
            g_all = grad_all if use_all else None
            if use_neg:
                # dLSE_all(i)/ds_ij = softmax_all(i)_j, dLSE_neg(i)/ds_ij = [g_j != g_i] softmax_neg(i)_j,
                # and softmax_neg(i)_j = softmax_all(i)_j * exp(LSE_all(i) - LSE_neg(i)) on negatives. So
                # the block gradient is softmax_all times a coefficient of (row, group of column).
                assert groups is not None and grad_neg is not None
                has_neg = torch.isfinite(lse_neg) & (grad_neg != 0)
                log_ratio = torch.where(has_neg, lse_all - lse_neg, 0.0)
                rescaled = has_neg & (log_ratio <= _max_log_rescale(z.dtype))
                own = grad_all if use_all else torch.zeros_like(lse_all)
                other = own + torch.where(rescaled, grad_neg * log_ratio.exp(), 0.0)
                # Rows where the ratio is too large are done exactly, from the raw similarities: under a
                # mask, for every row of every block, when tau allows such rows at all.
                exact_grad = torch.where(has_neg & ~rescaled, grad_neg, 0.0)
                any_exact = _ratio_may_exceed(n, inv_tau, z.dtype)
                buckets = z.new_empty(min(block_rows, n), n_groups)
                coefficients = z.new_empty(min(block_rows, n), n)
                raw_buffer = z.new_empty(min(block_rows, n), n) if any_exact else None
            for start, stop in _blocks(n, block_rows):
                rows = stop - start
                s = _similarity_block(z, scaled, start, stop, buffer)
                if use_neg and any_exact:
                    assert raw_buffer is not None
                    raw = raw_buffer[:rows].copy_(s)
                s.sub_(lse_all[start:stop, None]).exp_()
                if use_neg:
                    bucket = buckets[:rows]
                    bucket.copy_(other[start:stop, None].expand(rows, n_groups))
                    bucket.scatter_(1, groups[start:stop, None], own[start:stop, None])
                    weights = torch.gather(bucket, 1, groups.expand(rows, n), out=coefficients[:rows])
                    s.mul_(weights)
                    if any_exact:
                        # exp(s - LSE_neg) <= 1 on negatives; positives (maybe inf) are masked to 0.
                        neg = raw.sub_(lse_neg[start:stop, None]).exp_()
                        neg.masked_fill_(groups[start:stop, None] == groups[None, :], 0.0)
                        s.add_(neg.mul_(exact_grad[start:stop, None]))
                else:
                    assert g_all is not None
                    s.mul_(g_all[start:stop, None])
                # d s_ij / d z_i = z_j / tau and d s_ij / d z_j = z_i / tau.
                grad_z[start:stop].addmm_(s, z)
                grad_z.addmm_(s.T, z[start:stop])
            grad_z.mul_(inv_tau)
        return grad_z, None, None, None, None


def row_logsumexp(
    z: Tensor,
    groups: Tensor | None,
    inv_tau: float,
    block_rows: int | None = None,
    n_groups: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(LSE_all, LSE_neg) per anchor for normalised anchors ``z`` [N, D] and s = z z^T * inv_tau.

    ``groups``: group ids in [0, ``n_groups``) per anchor (see ``group_index``), or None when LSE_neg is not
    needed; ``n_groups`` is required with ``groups`` (a bound known on the host: reading the ids' maximum
    would wait for the device). LSE_all(i) = log sum_{k != i} exp(s_ik). LSE_neg(i) = log sum_{k : groups_k
    != groups_i} exp(s_ik), -inf where anchor i has no such k (all -inf when ``groups`` is None).
    Differentiable in z.
    """
    rows = block_rows or default_block_rows(z.shape[0], z.device)
    if groups is None:
        n_groups = 0
    elif n_groups is None or n_groups < 1:
        raise ValueError(f"row_logsumexp: groups need n_groups >= 1 (their id bound), got {n_groups!r}")
    with autocast_disabled(z.device.type):
        return _RowLogSumExp.apply(z, groups, n_groups, float(inv_tau), rows)


def _active_positives(shifted: Tensor, groups: Tensor, start: int, stop: int) -> Tensor:
    """Same-group pairs (i != p) of rows start..stop whose hinge term s_ip - shift_i is <= 0."""
    active = (groups[start:stop, None] == groups[None, :]) & (shifted <= 0)
    active.diagonal(start).fill_(False)
    return active


class _HingePositiveSum(torch.autograd.Function):
    """h_i = sum_{p != i, g_p = g_i} min(0, s_ip - shift_i)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, z: Tensor, shift: Tensor, groups: Tensor, inv_tau: float, block_rows: int
    ) -> Tensor:
        n = z.shape[0]
        scaled = z * inv_tau
        total = z.new_zeros(n)
        active_count = z.new_zeros(n)
        buffer = z.new_empty(min(block_rows, n), n)
        for start, stop in _blocks(n, block_rows):
            s = _similarity_block(z, scaled, start, stop, buffer).sub_(shift[start:stop, None])
            active = _active_positives(s, groups, start, stop)
            total[start:stop] = s.masked_fill_(~active, 0.0).sum(1)
            active_count[start:stop] = active.sum(1)
        ctx.save_for_backward(z, shift, groups, active_count)
        ctx.inv_tau = inv_tau
        ctx.block_rows = block_rows
        return total

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad: Tensor
    ) -> tuple[Tensor, Tensor, None, None, None]:
        z, shift, groups, active_count = ctx.saved_tensors
        inv_tau: float = ctx.inv_tau  # type: ignore[attr-defined]
        block_rows: int = ctx.block_rows  # type: ignore[attr-defined]
        with autocast_disabled(z.device.type):
            n = z.shape[0]
            scaled = z * inv_tau
            grad_z = torch.zeros_like(z)
            buffer = z.new_empty(min(block_rows, n), n)
            for start, stop in _blocks(n, block_rows):
                s = _similarity_block(z, scaled, start, stop, buffer).sub_(shift[start:stop, None])
                active = _active_positives(s, groups, start, stop)
                weights = torch.where(active, grad[start:stop, None], 0.0)
                grad_z[start:stop].addmm_(weights, z)
                grad_z.addmm_(weights.T, z[start:stop])
            grad_z.mul_(inv_tau)
            grad_shift = -grad * active_count
        return grad_z, grad_shift, None, None, None


def hinge_positive_sum(
    z: Tensor, shift: Tensor, groups: Tensor, inv_tau: float, block_rows: int | None = None
) -> Tensor:
    """sum_{p != i, groups_p = groups_i} min(0, s_ip - shift_i) per anchor; differentiable in z, shift.

    Rows whose ``shift`` is -inf get 0 (no term is active).
    """
    rows = block_rows or default_block_rows(z.shape[0], z.device)
    with autocast_disabled(z.device.type):
        return _HingePositiveSum.apply(z, shift, groups, float(inv_tau), rows)
