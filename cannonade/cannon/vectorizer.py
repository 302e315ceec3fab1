"""The vectorizing function η(ℓ): polynomial terms of the labels, their derivatives, and label scaling.

Wheeler+2020 Eq. 4: η maps a label vector to every 0th, 1st and 2nd order combination of
its components (any order here). A model's terms are stored as an integer exponent matrix
``exponents (K, L)``: term k is ``prod_l ℓ_l ** exponents[k, l]``; row 0 is the constant.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from cannonade.exceptions import LabelError, ParameterError, ShapeError


def term_exponents(n_labels, order=2):
    """Exponents of every monomial of total degree ≤ ``order`` in ``n_labels`` labels.

    Ordered by degree, then lexicographically by label index (the Cannon's usual order):
    ``1, ℓ0, ℓ1, …, ℓ0², ℓ0ℓ1, …``.

    Returns
    -------
    exponents : (K, n_labels) int, K = C(n_labels + order, order)
    """
    if n_labels < 1:
        raise LabelError("a Cannon model needs at least one label")
    if order not in (1, 2, 3) and not (isinstance(order, int) and order >= 1):
        raise ParameterError(f"order must be a positive integer, got {order!r}")
    rows = [np.zeros(n_labels, dtype=np.int64)]
    for degree in range(1, order + 1):
        for combo in itertools.combinations_with_replacement(range(n_labels), degree):
            e = np.zeros(n_labels, dtype=np.int64)
            for i in combo:
                e[i] += 1
            rows.append(e)
    return np.array(rows, dtype=np.int64)


def mixed_terms(n_full, n_linear, order=2, cross_with=(0,)):
    """Terms of order ``order`` in the first ``n_full`` labels, linear in the next ``n_linear``.

    Each linear label also gets a cross term with each label index in ``cross_with`` (e.g.
    abundance × Teff). Far fewer terms than a full quadratic in many labels, for models
    (like the windowed-χ² cleaning model) where abundances mostly scale their own lines.

    Returns
    -------
    exponents : (K, n_full + n_linear) int, constant first.
    """
    L = n_full + n_linear
    full = term_exponents(n_full, order)
    rows = [np.hstack([e, np.zeros(n_linear, dtype=np.int64)]) for e in full]
    for i in range(n_linear):
        e = np.zeros(L, dtype=np.int64)
        e[n_full + i] = 1
        rows.append(e)
        for j in cross_with:
            c = e.copy()
            c[j] += 1
            rows.append(c)
    return np.array(rows, dtype=np.int64)


def with_constant(exponents):
    """Put the constant term (all-zero row) first, adding it if absent.

    exponents : (K, L) int  ->  (K', L) int with row 0 all zero.
    """
    exponents = np.atleast_2d(np.asarray(exponents, dtype=np.int64))
    if np.any(exponents < 0):
        raise ParameterError(f"term exponents must be non-negative, got {exponents.tolist()}")
    const = np.all(exponents == 0, axis=1)
    if const.sum() > 1:
        raise ParameterError("term exponents contain the constant term more than once")
    rest = exponents[~const]
    return np.vstack([np.zeros((1, exponents.shape[1]), dtype=np.int64), rest])


def term_names(exponents, label_names):
    """Human-readable term names, e.g. ``["1", "teff", "logg", "teff^2", "teff*logg"]``."""
    names = []
    for row in np.asarray(exponents):
        parts = []
        for name, e in zip(label_names, row):
            if e == 1:
                parts.append(name)
            elif e > 1:
                parts.append(f"{name}^{e}")
        names.append("*".join(parts) if parts else "1")
    return names


def active_terms(exponents, label_names, masks, n_pixels):
    """Which terms may act at which pixel, given censoring masks (Nandakumar+2022 §3.1).

    Parameters
    ----------
    exponents : (K, L) int
    label_names : list of str
    masks : dict {label_name: (P,) bool}
        True where the label may act (see ``checks.check_censors``).
    n_pixels : int

    Returns
    -------
    (P, K) bool or None
        False where a term contains a label censored at that pixel; None without masks.
    """
    if not masks:
        return None
    active = np.ones((n_pixels, exponents.shape[0]), dtype=bool)
    for name, mask in masks.items():
        uses = exponents[:, label_names.index(name)] > 0
        active &= ~(uses[None, :] & ~mask[:, None])
    return active


def design_matrix(labels, exponents):
    """η(ℓ) for many label vectors (Wheeler+2020 Eq. 4).

    Parameters
    ----------
    labels : (..., L) float
        Scaled labels.
    exponents : (K, L) int

    Returns
    -------
    eta : (..., K) float
    """
    labels = np.asarray(labels, dtype=float)
    exponents = np.ascontiguousarray(exponents, dtype=np.int64)
    K, L = exponents.shape
    if labels.shape[-1] != L:
        raise ShapeError(f"labels have {labels.shape[-1]} columns but the terms use {L} labels")
    # every term is a product of (degree) labels: gather and multiply, no powers or loops over labels
    factors = _factor_index(exponents.tobytes(), K, L)
    ext = np.empty(labels.shape[:-1] + (L + 1,))
    ext[..., :L] = labels
    ext[..., L] = 1.0
    eta = ext[..., factors[0]]
    for idx in factors[1:]:
        eta *= ext[..., idx]
    return eta


@functools.lru_cache(maxsize=64)
def _factor_index(exponents_bytes, K, L):
    """(D, K) label indices whose product is each term (index L stands for the constant 1)."""
    exponents = np.frombuffer(exponents_bytes, dtype=np.int64).reshape(K, L)
    D = max(1, int(exponents.sum(axis=1).max(initial=0)))
    idx = np.full((D, K), L, dtype=np.intp)
    for k in range(K):
        labels = np.repeat(np.arange(L), exponents[k])
        idx[: len(labels), k] = labels
    return idx


@functools.lru_cache(maxsize=32)
def _jacobian_basis(exponents_bytes, K, L):
    """Monomials Q whose linear combinations give every ∂η_k/∂ℓ_j, and the map C (Q, K·L).

    ∂/∂ℓ_j of ℓ^e is e_j ℓ^(e − unit_j): a monomial of lower degree. Collecting the distinct
    lower monomials once makes the Jacobian of many label vectors a single matrix product.
    """
    exponents = np.frombuffer(exponents_bytes, dtype=np.int64).reshape(K, L)
    basis, index = [], {}
    rows, cols, vals = [], [], []
    for k in range(K):
        for j in range(L):
            e = int(exponents[k, j])
            if e == 0:
                continue
            lower = exponents[k].copy()
            lower[j] -= 1
            key = lower.tobytes()
            if key not in index:
                index[key] = len(basis)
                basis.append(lower)
            rows.append(index[key])
            cols.append(k * L + j)
            vals.append(float(e))
    basis = np.array(basis, dtype=np.int64).reshape(-1, L)
    C = np.zeros((len(basis), K * L))
    C[rows, cols] = vals
    return basis, C


def design_jacobian(labels, exponents, dtype=np.float64):
    """∂η_k/∂ℓ_j, analytic, for many label vectors.

    Parameters
    ----------
    labels : (..., L) float
    exponents : (K, L) int
    dtype : the output's float type (float32 where the Jacobian only steers a step)

    Returns
    -------
    jac : (..., K, L) dtype
    """
    labels = np.asarray(labels, dtype=float)
    exponents = np.ascontiguousarray(exponents, dtype=np.int64)
    K, L = exponents.shape
    basis, C = _jacobian_basis(exponents.tobytes(), K, L)
    if basis.shape[0] == 0:
        return np.zeros(labels.shape[:-1] + (K, L), dtype=dtype)
    mono = design_matrix(labels, basis).reshape(-1, basis.shape[0]).astype(dtype, copy=False)
    return (mono @ C.astype(dtype, copy=False)).reshape(labels.shape[:-1] + (K, L))


@functools.lru_cache(maxsize=32)
def _hessian_basis(exponents_bytes, K, L):
    """Monomials and map C2 (Q, K·L·L) giving every ∂²η_k/∂ℓ_i∂ℓ_j as one matrix product."""
    exponents = np.frombuffer(exponents_bytes, dtype=np.int64).reshape(K, L)
    basis, index = [], {}
    rows, cols, vals = [], [], []
    for k in range(K):
        for i in range(L):
            for j in range(L):
                e = exponents[k].copy()
                c = float(e[i])
                e[i] -= 1
                c *= float(e[j]) if e[i] >= 0 else 0.0
                e[j] -= 1
                if c == 0.0 or np.any(e < 0):
                    continue
                key = e.tobytes()
                if key not in index:
                    index[key] = len(basis)
                    basis.append(e)
                rows.append(index[key])
                cols.append((k * L + i) * L + j)
                vals.append(c)
    basis = np.array(basis, dtype=np.int64).reshape(-1, L)
    C = np.zeros((len(basis), K * L * L))
    C[rows, cols] = vals
    return basis, C


def design_hessian(labels, exponents):
    """∂²η_k/∂ℓ_i∂ℓ_j for many label vectors: (..., L) -> (..., K, L, L)."""
    labels = np.asarray(labels, dtype=float)
    exponents = np.ascontiguousarray(exponents, dtype=np.int64)
    K, L = exponents.shape
    basis, C = _hessian_basis(exponents.tobytes(), K, L)
    if basis.shape[0] == 0:
        return np.zeros(labels.shape[:-1] + (K, L, L))
    return (design_matrix(labels, basis) @ C).reshape(labels.shape[:-1] + (K, L, L))


def hessian_contract(labels, exponents, weights):
    """Σ_k w_k ∂²η_k/∂ℓ_i∂ℓ_j without forming the (K, L, L) tensor.

    labels : (..., L) ; weights : (..., K)  ->  (..., L, L)
    """
    labels = np.asarray(labels, dtype=float)
    exponents = np.ascontiguousarray(exponents, dtype=np.int64)
    K, L = exponents.shape
    basis, C = _hessian_basis(exponents.tobytes(), K, L)
    out = np.zeros(labels.shape[:-1] + (L, L))
    if basis.shape[0] == 0:
        return out
    mono = design_matrix(labels, basis).reshape(-1, basis.shape[0])  # (n, Q)
    w2 = np.asarray(weights, dtype=float).reshape(-1, K)
    C3 = C.reshape(basis.shape[0], K, L * L)
    flat = out.reshape(-1, L * L)
    for q in range(basis.shape[0]):  # Q is small: 1 for a quadratic model
        flat += mono[:, q, None] * (w2 @ C3[q])
    return flat.reshape(out.shape)


def pair_indices(K):
    """Upper-triangle index pairs of a K×K symmetric matrix: (i, j) arrays of length K(K+1)/2."""
    return np.triu_indices(K)


@functools.lru_cache(maxsize=32)
def symmetric_gather_index(K):
    """(K, K) int: for each (i, j) of a K×K symmetric matrix, its position in the upper-triangle packing."""
    i, j = pair_indices(K)
    pos = np.empty((K, K), dtype=np.intp)
    pos[i, j] = np.arange(len(i))
    pos[j, i] = np.arange(len(i))
    pos.flags.writeable = False  # cached: shared by every caller
    return pos


def unpack_symmetric(flat, K):
    """Inverse of the upper-triangle packing: flat (..., K(K+1)/2) -> (..., K, K) symmetric."""
    # one contiguous gather (fast), not two scattered writes
    return np.take(flat, symmetric_gather_index(K).ravel(), axis=-1).reshape(flat.shape[:-1] + (K, K))


def monomial_plan(exponents):
    """The distinct monomials among all pairwise products of the model's terms.

    Every entry of a normal matrix Σ_n w_n x_nk x_nj (or of Σ_λ w_λ θ_λk θ_λj's dual) is a
    weighted sum of one monomial in the labels; for a quadratic model in L labels the
    K(K+1)/2 products of terms are only C(L+4, 4) distinct monomials (715 instead of 1540
    for L = 9), so one matrix product over the monomials builds every entry.

    Parameters
    ----------
    exponents : (K, L) int

    Returns
    -------
    rep_i, rep_j : (R,) int
        One representative term pair (i ≤ j) per distinct monomial.
    gather : (K, K) int
        For each entry (k, j), the index in 0..R-1 of its monomial.
    """
    exponents = np.asarray(exponents, dtype=np.int64)
    i, j = pair_indices(exponents.shape[0])
    _, first, inverse = np.unique(exponents[i] + exponents[j], axis=0, return_index=True, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    K = exponents.shape[0]
    gather = np.empty((K, K), dtype=np.intp)
    gather[i, j] = inverse
    gather[j, i] = inverse
    return i[first], j[first], gather


def collapse_to_monomials(B, gather):
    """Σ over the entries of each symmetric (..., K, K) matrix that share a monomial: -> (..., R).

    The adjoint of ``flat[..., gather]``: for symmetric B and monomial sums z,
    Σ_kj B_kj z[gather_kj] = Σ_m collapse(B)_m z_m. Reads only the upper triangle
    (off-diagonal entries count twice).
    """
    idx, starts, twice = _collapse_index(gather.tobytes(), gather.shape[0])
    flat = B.reshape(B.shape[:-2] + (-1,))[..., idx]
    flat[..., twice] *= 2.0
    return np.add.reduceat(flat, starts, axis=-1)


@functools.lru_cache(maxsize=32)
def _collapse_index(gather_bytes, K):
    g = np.frombuffer(gather_bytes, dtype=np.intp).reshape(K, K)
    i, j = pair_indices(K)
    order = np.argsort(g[i, j], kind="stable")
    i, j = i[order], j[order]
    starts = np.flatnonzero(np.r_[True, np.diff(g[i, j]) != 0])
    return i * K + j, starts, i != j


class LabelScaler:
    """Affine label scaling so labels are of order unity inside the model.

    ``scaled = (label - offset) / scale``.

    Methods
    -------
    ``"standard"``
        offset = training mean, scale = training standard deviation (Wheeler+2020 §3).
    ``"percentile"``
        offset = 50th percentile, scale = 97.5th − 2.5th percentile (Nandakumar+2022 Eq. 2).
    ``"none"``
        offset 0, scale 1.
    mapping ``{"offset": (L,), "scale": (L,)}``
        fixed values (e.g. pivots of another code's model).
    """

    def __init__(self, method="standard"):
        self.method = method

    def fit(self, labels, label_names=None):
        """Fit offset and scale to ``labels`` (N, L); ``label_names`` name them in errors."""
        labels = np.asarray(labels, dtype=float)
        m = self.method
        if isinstance(m, dict):
            offset = np.broadcast_to(np.asarray(m.get("offset", 0.0), float), labels.shape[1:]).copy()
            scale = np.broadcast_to(np.asarray(m.get("scale", 1.0), float), labels.shape[1:]).copy()
        elif m == "standard":
            offset, scale = labels.mean(axis=0), labels.std(axis=0)
        elif m == "percentile":
            p2, p50, p97 = np.percentile(labels, [2.5, 50.0, 97.5], axis=0)
            offset, scale = p50, p97 - p2
        elif m == "none":
            offset, scale = np.zeros(labels.shape[1]), np.ones(labels.shape[1])
        else:
            raise ParameterError(f"scale must be 'standard', 'percentile', 'none' or a dict, got {m!r}")
        if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
            bad = np.flatnonzero(~(scale > 0)).tolist()
            which = [label_names[b] for b in bad] if label_names is not None else f"at columns {bad}"
            raise LabelError(f"labels {which} have no spread in the training set (scale {m!r}: "
                             f"{np.asarray(scale)[bad].tolist()}); cannot scale them")
        self.offset_, self.scale_ = offset, scale
        return self

    def transform(self, labels):
        return (np.asarray(labels, dtype=float) - self.offset_) / self.scale_

    def inverse(self, scaled):
        return np.asarray(scaled, dtype=float) * self.scale_ + self.offset_
