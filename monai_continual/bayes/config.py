"""The settings of a network's Bayesian layers, declared once: :class:`BayesConfig` and its named choices."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

import numpy as np
from monai.utils import StrEnum, look_up_option

from monai_continual.utils.choices import look_up_choice
from monai_continual.utils.flags import as_flag

__all__ = ["BayesConfig", "StdInit", "PriorMean", "PriorStd", "SampleMode", "conversion_std_init"]

# McClure et al.'s initial posterior std: the number a layer is built with when its stds are set later from the data
_PLACEHOLDER_STD = 1e-3


class StdInit(StrEnum):
    """``laplace``: every posterior std is set from the site's data before training (a diagonal Laplace
    approximation, :func:`~monai_continual.bayes.laplace.calibrate_posterior_std`); the network is built with a
    placeholder std (:func:`conversion_std_init`)."""

    LAPLACE = "laplace"


class PriorMean(StrEnum):
    """``weights``: the prior is centred on the weights of the network being converted (a MAP network as prior)."""

    WEIGHTS = "weights"


class PriorStd(StrEnum):
    """``he``: per layer ``sqrt(2 / fan_in)``, the scale of He initialization."""

    HE = "he"


class SampleMode(StrEnum):
    """``local``: local reparameterization (independent noise per output element); ``weights``: one weight draw per
    forward pass, shared by the mini-batch."""

    LOCAL = "local"
    WEIGHTS = "weights"


def _number_or_choice(field: str, value: Any, choices: type[StrEnum], positive: bool) -> float | StrEnum:
    if isinstance(value, str):
        choice = look_up_option(value, choices, default=None)
        if choice is not None:
            return choice
    elif isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value)):
        if not positive or float(value) > 0:
            return float(value)
    kind = "a positive number" if positive else "a finite number"
    options = " or ".join(repr(choice.value) for choice in choices)
    raise ValueError(f"BayesConfig: {field} must be {kind} or {options}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class BayesConfig:
    """How a network's layers are made Bayesian: one frozen set of the six settings, with their one set of defaults.

    The defaults are McClure et al.'s first network: posterior std 1e-3, prior N(0, 1), local reparameterization,
    means without weight normalization and stds not bounded by the prior. The MONAI runner and the nnU-Net trainers
    use :meth:`calibrated` (std from the data, He-scaled prior).

    Args:
        std_init: initial posterior std of every weight: a positive number, or ``"laplace"`` (:class:`StdInit`).
        prior_mean: a number, or ``"weights"`` (:class:`PriorMean`).
        prior_std: a positive number, or ``"he"`` (:class:`PriorStd`).
        weight_norm: weight-normalize the means (Salimans & Kingma; the paper's recipe).
        bound_std: parameterize every std so that ``std <= prior_std`` by construction (DWC's site training).
        sample_mode: ``"local"`` or ``"weights"`` (:class:`SampleMode`).

    Raises:
        ValueError: a setting of the wrong kind or out of range; the message names the field.

    Example::

        >>> config = BayesConfig(prior_std="he", bound_std=True)
        >>> BayesConfig.from_dict(config.to_dict()) == config
        True
        >>> bnet = bayesianize(net, config)
    """

    std_init: float | StdInit = _PLACEHOLDER_STD
    prior_mean: float | PriorMean = 0.0
    prior_std: float | PriorStd = 1.0
    weight_norm: bool = False
    bound_std: bool = False
    sample_mode: SampleMode = SampleMode.LOCAL

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # the dataclass is frozen: normalized once, here
        set_field(self, "std_init", _number_or_choice("std_init", self.std_init, StdInit, positive=True))
        set_field(self, "prior_mean", _number_or_choice("prior_mean", self.prior_mean, PriorMean, positive=False))
        set_field(self, "prior_std", _number_or_choice("prior_std", self.prior_std, PriorStd, positive=True))
        for field in ("weight_norm", "bound_std"):
            value = getattr(self, field)
            value = bool(value) if isinstance(value, np.bool_) else value
            set_field(self, field, as_flag(value, f"BayesConfig: {field}"))
        set_field(self, "sample_mode", look_up_choice(self.sample_mode, SampleMode, "BayesConfig: sample_mode"))

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The names of the settings, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> BayesConfig:
        """Build a config from JSON-like data (what :meth:`to_dict` writes); missing keys take the defaults.

        Raises:
            ValueError: ``mapping`` is not a mapping, or has keys that are not settings (named in the message).

        Example::

            >>> BayesConfig.from_dict({"prior_std": "he", "bound_std": True})
        """
        if not isinstance(mapping, Mapping):
            raise ValueError(f"BayesConfig.from_dict: expected a mapping, got {type(mapping).__name__}.")
        unknown = sorted(set(map(str, mapping)) - set(cls.fields()))
        if unknown:
            raise ValueError(f"BayesConfig.from_dict: unknown key(s) {unknown}; known keys: {list(cls.fields())}.")
        return cls(**mapping)

    @classmethod
    def calibrated(cls, **changes: Any) -> BayesConfig:
        """The settings of the MONAI runner and the nnU-Net trainers: std from the data, He-scaled prior N(0, 2 /
        fan_in); ``changes`` override them.

        Example::

            >>> BayesConfig.calibrated(bound_std=True)
        """
        return cls(std_init=StdInit.LAPLACE, prior_std=PriorStd.HE).replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (choices as plain strings)."""
        return {
            name: value.value if isinstance(value, StrEnum) else value
            for name, value in ((name, getattr(self, name)) for name in self.fields())
        }

    def replace(self, **changes: Any) -> BayesConfig:
        """A copy with ``changes`` applied (and validated).

        Raises:
            TypeError: a keyword that is not a setting (named in the message).
        """
        unknown = sorted(set(changes) - set(self.fields()))
        if unknown:
            raise TypeError(f"BayesConfig: unknown setting(s) {unknown}; settings are {list(self.fields())}.")
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def conversion_std_init(self) -> float:
        """The std a layer is built with: ``std_init``, or the placeholder when the stds come from the data."""
        return conversion_std_init(self.std_init)


def conversion_std_init(std_init: float | str) -> float:
    """The ``std_init`` to convert a network with: ``"laplace"`` stds are written later from the data, so the
    conversion gets a placeholder (McClure et al.'s 1e-3); a number is used as it is.

    Example::

        >>> bayesianize(net, std_init=conversion_std_init("laplace"))
    """
    return _PLACEHOLDER_STD if std_init == StdInit.LAPLACE else float(std_init)
