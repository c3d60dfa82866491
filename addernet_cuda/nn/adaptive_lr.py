"""AdderNet's adaptive learning rate, applied to the final gradient right before the step.

AdderNet (Chen et al., CVPR 2020, Eq. 13) rescales each adder layer's weight gradient to

    grad_W <- eta * sqrt(numel(W)) * grad_W / max(||grad_W||_2, 1e-12)

(eta = 0.2 in the official code, which does it inside autograd, once per backward). The rescaling
is idempotent and scale-invariant, so applying it to the *final* gradient reproduces the official
update in a plain loop and stays right when the gradient is accumulated over micro-batches,
all-reduced by DistributedDataParallel, or unscaled by AMP's GradScaler: a global optimizer step
pre-hook rescales every tagged parameter's ``.grad`` before any ``optimizer.step()``. It runs
after accumulation, after DDP's all-reduce and after ``GradScaler.unscale_``, and not at all when
GradScaler skips a step; SGD's weight decay is added after it, as in the official code.

Where eta lives: :class:`~addernet_cuda.AdderConv2d` keeps it on the module, and the hook resolves
it at step time from the live modules' *current* ``weight``. So it survives every way a module's
parameters are rebuilt (``to``/``to_empty``, meta-device initialisation, swapped-parameter
conversion, ``load_state_dict(assign=True)``, deepcopy, pickling). A plain parameter can be
tagged with :func:`set_adaptive_lr`; such a tag stays on that tensor object only.

Limitation: with sharded gradients (FSDP) each rank sees only a shard, and the norm here would be
the shard's norm, not the layer's. Use ``eta=None`` on the layers and rescale yourself there.
"""

from __future__ import annotations

import math
import numbers
import weakref
from typing import Dict, Iterable, Optional

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

_ATTR = "_addernet_eta"
_hook_handle = None
# Modules whose current ``weight`` gets the rate of their ``_eta`` attribute at every step.
_modules: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def check_eta(eta) -> Optional[float]:
    """``eta`` as a float, or None; anything but None or a positive finite real number (a
    string, a bool, a tensor) is refused with a TypeError or ValueError."""
    if eta is None:
        return None
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta must be a positive finite number or None, got {eta!r}")
    if not math.isfinite(eta) or eta <= 0:
        raise ValueError(f"eta must be a positive finite number or None, got {eta!r}")
    return float(eta)


def set_adaptive_lr(param: torch.nn.Parameter, eta: Optional[float]) -> None:
    """Tags ``param`` so that every optimizer step rescales its gradient with ``eta``
    (``None`` removes the tag). Registers the global step pre-hook on first use."""
    eta = check_eta(eta)
    if eta is None:
        if hasattr(param, _ATTR):
            delattr(param, _ATTR)
        return
    setattr(param, _ATTR, eta)
    _ensure_hook()


def register_adaptive_module(module: torch.nn.Module) -> None:
    """Has every optimizer step rescale the gradient of ``module.weight`` (whatever Parameter it
    holds at that time) with ``module._eta`` (skipped while that is None)."""
    _modules.add(module)
    _ensure_hook()


def _module_etas() -> Dict[int, float]:
    etas = {}
    for module in list(_modules):
        eta = module.__dict__.get("_eta")
        weight = module._parameters.get("weight")
        if eta is not None and weight is not None:
            etas[id(weight)] = eta
    return etas


def adaptive_lr_eta(param: torch.Tensor) -> Optional[float]:
    """The eta the next optimizer step will use for ``param``: that of a live module whose
    weight it is, else its own tag, else None."""
    return _module_etas().get(id(param), getattr(param, _ATTR, None))


@torch.no_grad()
def rescale_adder_grads(params: Iterable[torch.Tensor]) -> None:
    """Rescales the ``.grad`` of every tagged parameter among ``params`` in place:
    ``grad <- eta * sqrt(numel) * grad / max(||grad||, 1e-12)``. Called automatically before
    each optimizer step; call it yourself only where that hook cannot see the whole gradient."""
    etas = _module_etas()
    for p in params:
        eta = etas.get(id(p), getattr(p, _ATTR, None))
        if eta is None or p.grad is None:
            continue
        g = p.grad
        if g.is_sparse:
            raise RuntimeError(
                "AdderNet adaptive learning rate: sparse gradients are not supported"
            )
        norm = torch.linalg.vector_norm(
            g, dtype=torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else None
        )
        g.mul_((eta * math.sqrt(g.numel())) / norm.clamp(min=1e-12).to(g.dtype))


def _step_pre_hook(optimizer, args, kwargs):
    for group in optimizer.param_groups:
        rescale_adder_grads(group["params"])


def _ensure_hook() -> None:
    global _hook_handle
    if _hook_handle is None:
        _hook_handle = register_optimizer_step_pre_hook(_step_pre_hook)
