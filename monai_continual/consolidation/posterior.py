"""A network's weight distribution as a value object, and its safetensors file format."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_continual.bayes.base import BayesianModule
from monai_continual.bayes.convert import bayesian_layers
from monai_continual.utils.tensor_files import TensorFileError, read_tensor_file, tensors_sha256, write_tensor_file

__all__ = ["Posterior", "PosteriorFileError", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "monai-continual-posterior"
FORMAT_VERSION = 1
_GROUPS = ("mean", "std", "deterministic")


class PosteriorFileError(TensorFileError):
    """A posterior file is unreadable, corrupt, or does not match what it is used with."""


def _flatten(groups: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{group}/{name}": value for group in _GROUPS for name, value in groups[group].items()}


def _layer_param_names(name: str, layer: BayesianModule) -> list[str]:
    prefix = f"{name}." if name else ""
    return [prefix + "weight"] + ([prefix + "bias"] if layer.bias_shape is not None else [])


def _bayesian_state_keys(model: nn.Module) -> set[str]:
    """state_dict keys that belong to Bayesian layers (their parameterization and prior buffers), under every name.

    A layer reachable by two paths (nnU-Net's ``conv`` and ``all_modules.0``) appears twice in ``state_dict``; both
    names are Bayesian state, or the alias would be saved as "deterministic" and overwrite a newly set prior on load.
    """
    keys = set()
    for name, layer in model.named_modules(remove_duplicate=False):
        if isinstance(layer, BayesianModule):
            prefix = f"{name}." if name else ""
            keys.update(prefix + key for key in layer.state_dict())
    return keys


def _deterministic_state(model: nn.Module) -> dict[str, torch.Tensor]:
    skip = _bayesian_state_keys(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in skip}


class Posterior:
    """Per-parameter Gaussian means and standard deviations of a network, plus its deterministic values.

    ``mean`` and ``std`` hold the fully factorized Gaussian of every Bayesian parameter, keyed by the parameter's
    name as ``torch`` would call it (``"layers.0.weight"``, ``"layers.0.bias"``); ``deterministic`` holds everything
    else of the model's ``state_dict`` (norm layers, non-Bayesian layers, buffers). ``metadata`` is a JSON-able dict;
    ``num_examples`` (training examples behind the posterior) and ``site`` are the keys the package reads.

    Files are safetensors (never pickle), written atomically, with the format version, parameter shapes, metadata and
    a SHA-256 of the tensors and metadata, all checked on load.

    Args:
        mean: parameter name -> mean tensor.
        std: parameter name -> std tensor (> 0, same names and shapes as ``mean``).
        deterministic: state name -> tensor.
        metadata: JSON-serializable information (``site``, ``num_examples``, ...).

    Example::

        >>> post = Posterior.from_model(bayes_net, site="hospital_a", num_examples=120)
        >>> post.save("hospital_a.safetensors")
        >>> Posterior.load("hospital_a.safetensors").to_prior(next_net)  # a VCL step at the next site
    """

    def __init__(
        self,
        mean: Mapping[str, torch.Tensor],
        std: Mapping[str, torch.Tensor],
        deterministic: Mapping[str, torch.Tensor] | None = None,
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> None:
        self.mean = {k: torch.as_tensor(v).detach() for k, v in mean.items()}
        self.std = {k: torch.as_tensor(v).detach() for k, v in std.items()}
        self.deterministic = {k: torch.as_tensor(v).detach() for k, v in (deterministic or {}).items()}
        self.metadata = dict(metadata or {})
        self._source = source
        self.validate()

    # ----------------------------------------------------------------------------------------------------------------
    # checks

    def _where(self) -> str:
        return f"posterior {self._source!r}" if self._source else "posterior"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the parameter at fault on mismatched names/shapes, NaN/Inf, or std <= 0."""
        where = self._where()
        if set(self.mean) != set(self.std):
            only_mean, only_std = sorted(set(self.mean) - set(self.std)), sorted(set(self.std) - set(self.mean))
            raise PosteriorFileError(
                f"{where}: mean and std name different parameters (only mean: {only_mean}, only std: {only_std})."
            )
        overlap = sorted(set(self.mean) & set(self.deterministic))
        if overlap:
            raise PosteriorFileError(f"{where}: parameters {overlap} are both Bayesian and deterministic.")
        for name, mean in self.mean.items():
            std = self.std[name]
            if mean.shape != std.shape:
                raise PosteriorFileError(
                    f"{where}: parameter {name!r} has mean shape {tuple(mean.shape)} but std shape {tuple(std.shape)}."
                )
            for label, value in (("mean", mean), ("std", std)):
                if not value.is_floating_point():
                    raise PosteriorFileError(
                        f"{where}: {label} of parameter {name!r} is not floating point ({value.dtype})."
                    )
                if not bool(torch.isfinite(value).all()):
                    raise PosteriorFileError(f"{where}: {label} of parameter {name!r} contains NaN or Inf.")
            if not bool((std > 0).all()):
                count = int((std <= 0).sum())
                raise PosteriorFileError(f"{where}: std of parameter {name!r} is <= 0 at {count} weight(s).")
        for name, value in self.deterministic.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise PosteriorFileError(f"{where}: deterministic value {name!r} contains NaN or Inf.")
        try:
            json.dumps(self.metadata)
        except TypeError as err:
            raise PosteriorFileError(f"{where}: metadata is not JSON-serializable: {err}") from err

    def check_compatible(self, other: Posterior) -> None:
        """Raise if ``other`` does not have the same Bayesian parameters with the same shapes."""
        a, b = self._where(), other._where()
        missing, extra = sorted(set(self.mean) - set(other.mean)), sorted(set(other.mean) - set(self.mean))
        if missing or extra:
            raise PosteriorFileError(f"{b} does not match {a}: missing parameters {missing}, extra parameters {extra}.")
        for name, mean in self.mean.items():
            if other.mean[name].shape != mean.shape:
                raise PosteriorFileError(
                    f"{b}: parameter {name!r} has shape {tuple(other.mean[name].shape)}, {a} has {tuple(mean.shape)}."
                )

    @property
    def num_examples(self) -> float | None:
        """``metadata["num_examples"]`` as a float, or ``None`` when absent."""
        value = self.metadata.get("num_examples")
        return None if value is None else float(value)

    @property
    def site(self) -> str | None:
        return self.metadata.get("site")

    def num_parameters(self) -> int:
        return sum(int(v.numel()) for v in self.mean.values())

    # ----------------------------------------------------------------------------------------------------------------
    # models

    @classmethod
    def from_model(cls, model: nn.Module, **metadata: Any) -> Posterior:
        """The posterior of every Bayesian layer of ``model`` and its other state as deterministic values."""
        mean, std = {}, {}
        for name, layer in bayesian_layers(model):
            names = _layer_param_names(name, layer)
            mean[names[0]], std[names[0]] = layer.weight_mean.detach().clone(), layer.weight_std.detach().clone()
            if layer.bias_shape is not None:
                mean[names[1]], std[names[1]] = layer.bias_mean.detach().clone(), layer.bias_std.detach().clone()
        if not mean:
            raise ValueError(f"Posterior.from_model: {type(model).__name__} has no Bayesian layer (use bayesianize).")
        return cls(mean, std, _deterministic_state(model), metadata)

    @classmethod
    def prior_of(cls, model: nn.Module, **metadata: Any) -> Posterior:
        """The prior of every Bayesian layer of ``model`` (deterministic values are the model's current ones)."""
        mean, std = {}, {}
        for name, layer in bayesian_layers(model):
            names = _layer_param_names(name, layer)
            mean[names[0]], std[names[0]] = layer.prior_mean.clone(), layer.prior_std.clone()
            if layer.bias_shape is not None:
                mean[names[1]], std[names[1]] = layer.bias_prior_mean.clone(), layer.bias_prior_std.clone()
        if not mean:
            raise ValueError(f"Posterior.prior_of: {type(model).__name__} has no Bayesian layer (use bayesianize).")
        return cls(mean, std, _deterministic_state(model), metadata)

    def _check_model(self, model: nn.Module, deterministic: bool) -> list[tuple[str, BayesianModule]]:
        where = self._where()
        layers = list(bayesian_layers(model))
        expected: dict[str, tuple[int, ...]] = {}
        for name, layer in layers:
            names = _layer_param_names(name, layer)
            expected[names[0]] = layer.weight_shape
            if layer.bias_shape is not None:
                expected[names[1]] = layer.bias_shape
        missing, extra = sorted(set(expected) - set(self.mean)), sorted(set(self.mean) - set(expected))
        if missing or extra:
            raise PosteriorFileError(
                f"{where} does not match {type(model).__name__}: missing parameters {missing}, "
                f"extra parameters {extra}."
            )
        for name, shape in expected.items():
            if tuple(self.mean[name].shape) != tuple(shape):
                raise PosteriorFileError(
                    f"{where}: parameter {name!r} has shape {tuple(self.mean[name].shape)}, "
                    f"the model's is {tuple(shape)}."
                )
        if deterministic:
            model_state = _deterministic_state(model)
            missing, extra = (
                sorted(set(model_state) - set(self.deterministic)),
                sorted(set(self.deterministic) - set(model_state)),
            )
            if missing or extra:
                raise PosteriorFileError(
                    f"{where} does not match {type(model).__name__}: missing deterministic values {missing}, "
                    f"extra deterministic values {extra}."
                )
            for name, value in model_state.items():
                if value.shape != self.deterministic[name].shape:
                    raise PosteriorFileError(
                        f"{where}: deterministic value {name!r} has shape {tuple(self.deterministic[name].shape)}, "
                        f"the model's is {tuple(value.shape)}."
                    )
        return layers

    def _layer_args(self, name: str, layer: BayesianModule) -> list[torch.Tensor]:
        """``[weight_mean, weight_std(, bias_mean, bias_std)]`` in the layer's dtype and device."""
        like = layer.prior_mean
        return [
            group[n].to(dtype=like.dtype, device=like.device)
            for n in _layer_param_names(name, layer)
            for group in (self.mean, self.std)
        ]

    @torch.no_grad()
    def to_model(self, model: nn.Module, deterministic: bool = True) -> nn.Module:
        """Load the means/stds into ``model``'s posterior (and its deterministic values unless told not to)."""
        for name, layer in self._check_model(model, deterministic):
            layer.set_posterior(*self._layer_args(name, layer))
        if deterministic:
            self._load_deterministic(model)
        return model

    @torch.no_grad()
    def to_prior(self, model: nn.Module, init_posterior: bool = False) -> nn.Module:
        """Load this distribution as ``model``'s prior: a VCL step, or the shared prior of DWC site training.

        Args:
            model: a network with the same Bayesian layers.
            init_posterior: also start the posterior (and the deterministic values) from this distribution, which
                is how a site begins training from a shared prior.
        """
        for name, layer in self._check_model(model, init_posterior):
            layer.set_prior(*self._layer_args(name, layer))
        if init_posterior:
            self.to_model(model, deterministic=True)
        return model

    def _load_deterministic(self, model: nn.Module) -> None:
        state = model.state_dict()
        for name, value in self.deterministic.items():
            state[name].copy_(value.to(dtype=state[name].dtype, device=state[name].device))

    # ----------------------------------------------------------------------------------------------------------------
    # files

    def _groups(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"mean": self.mean, "std": self.std, "deterministic": self.deterministic}

    def sha256(self) -> str:
        """SHA-256 of the tensors and metadata, as stored in (and checked against) the file."""
        return tensors_sha256(_flatten(self._groups()), self.metadata)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the posterior as a safetensors file, atomically (temporary file + rename)."""
        write_tensor_file(path, _flatten(self._groups()), self.metadata, FORMAT_NAME, FORMAT_VERSION)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Posterior:
        """Read and check a posterior file; errors name the file and the parameter at fault."""
        try:
            tensors, metadata, _ = read_tensor_file(path, FORMAT_NAME, FORMAT_VERSION)
        except TensorFileError as err:
            raise PosteriorFileError(str(err).replace(f"{FORMAT_NAME} file", "posterior file", 1)) from err
        groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in _GROUPS}
        for key, tensor in tensors.items():
            group, _, name = key.partition("/")
            if group not in groups or not name:
                raise PosteriorFileError(f"posterior file {str(path)!r}: unexpected tensor {key!r}.")
            groups[group][name] = tensor
        return cls(groups["mean"], groups["std"], groups["deterministic"], metadata, source=str(path))

    def __repr__(self) -> str:
        return (
            f"Posterior({len(self.mean)} Bayesian tensors, {self.num_parameters()} weights, "
            f"{len(self.deterministic)} deterministic, metadata={self.metadata})"
        )
