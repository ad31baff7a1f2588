"""Activations for derivative-constrained networks.

Training on forces back-propagates through ∂E/∂x, so an activation's *second* derivative enters the
gradient.  ReLU's is zero almost everywhere; its antiderivative IReLU = ½·relu(x)² has ReLU as its
derivative, which keeps that path alive (Lo & Huang, arXiv 2310.01649).  This module provides the base
activations and exact antiderivatives of ReLU, ELU, GELU and SiLU (F' == base), plus the placement
rules the paper uses per architecture.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BASE_ACTIVATIONS",
    "INTEGRATED_ACTIVATIONS",
    "ACTIVATION_NAMES",
    "Activation",
    "get_activation",
    "replace_activations",
    "count_activations",
    "is_activation",
    "TORCH_ACTIVATION_TYPES",
]

_LOG2 = math.log(2.0)
_PI2_6 = math.pi**2 / 6.0
_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _bernoulli_series_coefficients(n_terms: int) -> list[float]:
    """Coefficients B_k/(k+1)! of Li₂(z) = Σ_k B_k u^{k+1}/(k+1)!, u = −log(1−z).

    The series converges for |u| < 2π; we only use it for |u| ≤ log 2, where 24 terms reach
    float64 round-off.  Computed exactly once with fractions, so there is no table to mistype.
    """
    bern = [Fraction(1)]
    for m in range(1, n_terms):
        acc = Fraction(0)
        for k in range(m):
            acc += math.comb(m + 1, k) * bern[k]
        bern.append(-acc / (m + 1))
    return [float(b / math.factorial(k + 1)) for k, b in enumerate(bern)]


_LI2_COEFFS = _bernoulli_series_coefficients(24)


def _li2_neg_exp(t: torch.Tensor) -> torch.Tensor:
    """Li₂(−eᵗ) for t ≤ 0, via the Bernoulli series in u = −log(1+eᵗ) = −softplus(t) ∈ [−log 2, 0)."""
    u = -F.softplus(t)
    # Horner evaluation of Σ_k c_k u^{k+1}.
    acc = torch.zeros_like(u)
    for c in reversed(_LI2_COEFFS):
        acc = acc * u + c
    return acc * u


def _isilu_forward(x: torch.Tensor) -> torch.Tensor:
    """x·softplus(x) + Li₂(−eˣ), written so no branch overflows or cancels catastrophically."""
    t = -x.abs()  # ≤ 0 in both branches
    li = _li2_neg_exp(t)
    neg = x * F.softplus(x) + li  # x ≤ 0
    # x > 0: Li₂(−eˣ) = −π²/6 − x²/2 − Li₂(−e⁻ˣ) and x·softplus(x) − x²/2 = x·softplus(−x)
    pos = 0.5 * x * x + x * F.softplus(-x) - _PI2_6 - li
    return torch.where(x > 0, pos, neg)


def _igelu_forward(x: torch.Tensor) -> torch.Tensor:
    """½[(x²−1)Φ(x) + xφ(x)]; Φ via erfc keeps the negative tail accurate."""
    cdf = 0.5 * torch.special.erfc(-x * _SQRT1_2)
    pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return 0.5 * ((x * x - 1.0) * cdf + x * pdf)


def _ielu_forward(x: torch.Tensor) -> torch.Tensor:
    """½x² for x>0, eˣ − x − 1 for x≤0 (clamped so the unused branch never overflows)."""
    xn = x.clamp(max=0.0)
    return 0.5 * F.relu(x).square() + torch.expm1(xn) - xn


def _irelu_forward(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * F.relu(x).square()


class _Antiderivative(torch.autograd.Function):
    """F(x) whose backward is exactly the base activation, written in differentiable torch ops.

    Because the backward is itself built from differentiable ops, double backward (needed by
    force training) is the base activation's own derivative, exact and cheap.  Written in the
    `setup_context` style, which `torch.func` transforms (vjp in `dcnn.compiled`) require; its forward
    and backward are plain torch ops, so vmap's rule is generated (seed ensembles, `dcnn.ensemble`).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, forward_fn: Callable, base_fn: Callable) -> torch.Tensor:
        return forward_fn(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, base_fn = inputs
        ctx.save_for_backward(x)
        ctx.base_fn = base_fn

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.base_fn(x), None, None


def _elu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x, alpha=1.0)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="none")


def _ssp(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x) - _LOG2


def _scaled_silu(x: torch.Tensor) -> torch.Tensor:
    """GemNet's ScaledSiLU: SiLU / 0.6 (keeps activations' variance near 1 with He init)."""
    return F.silu(x) * (1 / 0.6)


class Activation(nn.Module):
    """An elementwise activation known by name (so models can be searched and rewritten by name)."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.name = name
        self._fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return self.name


class IntegratedActivation(Activation):
    """Antiderivative F of a base activation σ, with F' = σ exactly (custom autograd)."""

    def __init__(self, name: str, forward_fn: Callable, base_fn: Callable, base_name: str):
        super().__init__(name, forward_fn)
        self.base_fn = base_fn
        self.base_name = base_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Antiderivative.apply(x, self._fn, self.base_fn)


BASE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ssp": _ssp,
    "softplus": F.softplus,
    "silu": F.silu,
    "tanh": torch.tanh,
    "relu": F.relu,
    "elu": _elu,
    "gelu": _gelu,
    "scaled_silu": _scaled_silu,
    "sin": torch.sin,  # SIREN-style periodic activation (ω0 = 1, Glorot init), for PINNs
}

# name -> (antiderivative, base activation name)
INTEGRATED_ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "irelu": (_irelu_forward, "relu"),
    "ielu": (_ielu_forward, "elu"),
    "igelu": (_igelu_forward, "gelu"),
    "isilu": (_isilu_forward, "silu"),
}

ACTIVATION_NAMES: tuple[str, ...] = tuple(BASE_ACTIVATIONS) + tuple(INTEGRATED_ACTIVATIONS)

# torch's own activation classes, recognised when rewriting a model we did not build: every elementwise
# module of torch.nn.modules.activation (nn.CELU, nn.Mish, nn.Hardtanh, nn.PReLU, ...); not those that mix
# elements (softmax family, GLU) or attention
_NOT_ELEMENTWISE = {"MultiheadAttention", "Softmax", "Softmin", "LogSoftmax", "Softmax2d", "GLU"}
TORCH_ACTIVATION_TYPES: tuple[type, ...] = tuple(getattr(torch.nn.modules.activation, n)
                                                  for n in torch.nn.modules.activation.__all__
                                                  if n not in _NOT_ELEMENTWISE)


def get_activation(name: str) -> nn.Module:
    """A fresh activation module by name; raises ValueError listing the known names."""
    if name in BASE_ACTIVATIONS:
        return Activation(name, BASE_ACTIVATIONS[name])
    if name in INTEGRATED_ACTIVATIONS:
        fwd, base = INTEGRATED_ACTIVATIONS[name]
        return IntegratedActivation(name, fwd, BASE_ACTIVATIONS[base], base)
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATION_NAMES)}")


def is_activation(module: nn.Module, extra_types: tuple = ()) -> bool:
    """An activation the ablation can swap: ours (`Activation`), torch's elementwise ones, or one of a
    model's own classes (`ModelSpec.activation_types`, e.g. PyG's or SchNetPack's ShiftedSoftplus)."""
    return isinstance(module, (Activation, *TORCH_ACTIVATION_TYPES, *tuple(extra_types)))


def _model_types(model: nn.Module) -> tuple:
    return tuple(getattr(model, "activation_types", ()) or ())


def _targets(model: nn.Module, scope: str) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every activation module to swap.

    scope "all": every activation in the model.  "paper": the model's `paper_activation_scope` paths
    (built-ins declare them; plug-ins through `ModelSpec.paper_placement`): a path naming a module without
    submodules (e.g. `interactions.0.mlp.1`) is swapped whatever its class, as the paper's own code did
    (`interactions[i].mlp[1] = IReLU()`), unless it has parameters (a Linear named by mistake); a path
    naming a container swaps the activations inside it."""
    types = _model_types(model)
    if scope == "all":
        roots = [model]
        explicit: list[str] = []
    elif scope == "paper":
        names = getattr(model, "paper_activation_scope", None)
        if names is None:
            raise ValueError(f"{type(model).__name__} declares no paper_activation_scope; use scope='all'")
        explicit = [n for n in names if n and not list(model.get_submodule(n).children())]
        roots = [model.get_submodule(n) if n else model for n in names if n not in explicit]
    else:
        raise ValueError(f"unknown scope {scope!r}; known: 'paper', 'all'")
    out: list[tuple[nn.Module, str]] = []
    for path in explicit:
        leaf = model.get_submodule(path)
        if not is_activation(leaf, types) and any(True for _ in leaf.parameters()):
            raise ValueError(f"paper_placement {path!r} holds no activation module to swap: it names a module "
                             f"with parameters ({type(leaf).__name__}); name an activation, or a container of them")
        parent_path, _, attr = path.rpartition(".")
        out.append((model.get_submodule(parent_path) if parent_path else model, attr))
    for root in roots:
        for parent in root.modules():
            for child_name, child in parent.named_children():
                if is_activation(child, types) and (parent, child_name) not in out:
                    out.append((parent, child_name))
    return out


def replace_activations(model: nn.Module, name: str, scope: str = "paper") -> nn.Module:
    """Swap activations for `name` in place and return the model.

    scope="paper" follows the paper's placement (each model lists the submodules it applies to in
    `paper_activation_scope`: SchNet everywhere, CGCNN only the dense head; a path may also name one
    activation module); "all" swaps every activation.  The number swapped is stored as
    `model.replaced_activations`.
    """
    get_activation(name)  # validate before touching the model
    targets = _targets(model, scope)
    for parent, attr in targets:
        setattr(parent, attr, get_activation(name))
    model.replaced_activations = len(targets)
    return model


def count_activations(model: nn.Module, name: str | None = None) -> int:
    """Number of activation modules in `model` (optionally only those called `name`)."""
    types = _model_types(model)
    return sum(1 for m in model.modules()
               if is_activation(m, types) and (name is None or getattr(m, "name", None) == name))
