"""Twins: a deformable model and its plain counterpart that start as the same function.

Both are built from one seed; the deformable one then takes every weight the plain one has,
so the two differ only in their offset branches, which start at zero (a zero offset samples
the regular grid). A comparison of the trained twins then measures what the offsets add.
"""

from __future__ import annotations

from torch import nn

from ..nn import offset_state_keys
from .specs import ModelSpec, build_model

__all__ = ["twin_model", "twin_models"]


def twin_model(spec: ModelSpec, plain: ModelSpec, seed: int) -> nn.Module:
    """``spec``'s model with every weight it shares with the plain twin ``plain`` taken from
    it (both built from ``seed``): configurations of one seed differ only in their offset
    branches, so every model starts as the same function."""
    base = build_model(plain, seed=seed)
    if spec == plain:
        return base
    model = build_model(spec, seed=seed)
    missing = set(model.load_state_dict(base.state_dict(), strict=False).missing_keys)
    if missing != offset_state_keys(model):
        raise RuntimeError(f"{spec.name}: weights other than offset branches differ from the "
                           f"plain twin: {sorted(missing - offset_state_keys(model))}")
    return model


def twin_models(deformable: ModelSpec, plain: ModelSpec, seed: int
                ) -> dict[str, nn.Module]:
    """``{"deformable": model, "plain": model}``: see :func:`twin_model`."""
    return {"deformable": twin_model(deformable, plain, seed),
            "plain": build_model(plain, seed=seed)}
