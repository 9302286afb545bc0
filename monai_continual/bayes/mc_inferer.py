"""Monte Carlo inference with Bayesian networks: mean probabilities and streaming uncertainty maps."""

from __future__ import annotations

from typing import Any, Callable

import torch
from monai.inferers import Inferer, SimpleInferer
from monai.utils import StrEnum
from torch import nn

from monai_continual.bayes.sampling import sampling
from monai_continual.utils.choices import look_up_choice

__all__ = ["MCInferer", "Activation", "UNCERTAINTY_KEYS", "predictive_entropy"]

UNCERTAINTY_KEYS = ("probs", "variance", "entropy", "mutual_information")
_EPS = 1e-12


class Activation(StrEnum):
    """How network outputs become probabilities: ``softmax`` over the channels (classes), or a ``sigmoid`` per
    channel."""

    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"


def predictive_entropy(p: torch.Tensor, activation: str = Activation.SOFTMAX) -> torch.Tensor:
    """Entropy (nats) of categorical (softmax) or per-channel Bernoulli (sigmoid) probabilities, one channel.

    Example::

        >>> predictive_entropy(torch.tensor([[0.5, 0.5]]))  # log 2
        tensor([[0.6931]])
    """
    h = -(p * torch.log(p.clamp_min(_EPS)))
    if activation == Activation.SIGMOID:
        q = 1.0 - p
        h = h - q * torch.log(q.clamp_min(_EPS))
    return h.sum(dim=1, keepdim=True)


class MCInferer(Inferer):
    """Run ``num_samples`` stochastic passes of a Bayesian network and average the probabilities.

    Statistics are accumulated pass by pass (Welford's running mean and variance, and the running mean entropy), so
    memory does not grow with ``num_samples``. Compose with any MONAI inferer, e.g. ``SlidingWindowInferer`` for whole
    volumes: each pass is one full sliding-window sweep.

    Uncertainty maps (one channel each, with ``return_uncertainty=True``):

    - ``variance``: predictive variance of the probabilities, summed over classes;
    - ``entropy``: entropy of the mean prediction (total uncertainty);
    - ``mutual_information``: entropy of the mean minus mean entropy (the model's, epistemic, part).

    ``mode="weights"`` (default) draws one weight sample per pass and runs one convolution per layer, so T passes
    cost about T plain forwards; the draw is shared by the batch and by every window of a sweep. ``mode="local"``
    uses local reparameterization (two convolutions per layer, independent noise per voxel): what training uses.

    Args:
        num_samples: number of stochastic passes T (McClure et al. use 10).
        inferer: the inferer of each pass; ``SimpleInferer`` by default.
        activation: ``"softmax"``, ``"sigmoid"`` or a callable turning network outputs into probabilities.
        mode: ``"weights"``, ``"local"`` or ``None`` (each layer's own ``sample_mode``).
        return_uncertainty: return a dict with :data:`UNCERTAINTY_KEYS` instead of the mean probabilities alone.

    Example::

        >>> inferer = MCInferer(10, SlidingWindowInferer(roi_size=(32, 32, 32)), return_uncertainty=True)
        >>> out = inferer(image, bayes_net.eval())
        >>> label = out["probs"].argmax(1, keepdim=True); epistemic = out["mutual_information"]
    """

    def __init__(
        self,
        num_samples: int = 10,
        inferer: Inferer | None = None,
        activation: str | Callable[[torch.Tensor], torch.Tensor] = "softmax",
        mode: str | None = "weights",
        return_uncertainty: bool = False,
    ) -> None:
        super().__init__()
        if int(num_samples) < 1:
            raise ValueError(f"MCInferer: num_samples must be >= 1, got {num_samples}.")
        if isinstance(activation, str):
            activation = look_up_choice(activation, Activation, "MCInferer: activation (or a callable)")
        self.num_samples = int(num_samples)
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.activation = activation
        self.mode = mode
        self.return_uncertainty = return_uncertainty

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.activation == Activation.SOFTMAX:
            return torch.softmax(logits.float(), dim=1)
        if self.activation == Activation.SIGMOID:
            return torch.sigmoid(logits.float())
        return self.activation(logits).float()

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        model = network if isinstance(network, nn.Module) else None
        kind = self.activation if isinstance(self.activation, str) else Activation.SOFTMAX
        # Welford's running mean and sum of squared deviations: stable in float32, memory flat in num_samples. The
        # probabilities returned are the plain sum / T in both modes, so that asking for uncertainty changes no
        # prediction.
        mean = m2 = sum_h = total = None
        with torch.no_grad(), _maybe_sampling(model, self.mode):
            for t in range(1, self.num_samples + 1):
                p = self._probs(self.inferer(inputs, network, *args, **kwargs))
                if total is None:
                    total = p.clone()
                    if self.return_uncertainty:
                        mean, m2, sum_h = p.clone(), torch.zeros_like(p), predictive_entropy(p, kind)
                    continue
                total += p  # a plain sum; divided once at the end
                if not self.return_uncertainty:
                    continue
                delta = p - mean
                mean += delta / t
                m2.addcmul_(delta, p - mean)
                sum_h += predictive_entropy(p, kind)
                del p, delta
        probs = total / self.num_samples
        if not self.return_uncertainty:
            return probs
        variance = (m2 / self.num_samples).clamp_min(0).sum(dim=1, keepdim=True)
        entropy = predictive_entropy(probs, kind)
        mutual_information = (entropy - sum_h / self.num_samples).clamp_min(0)
        return {"probs": probs, "variance": variance, "entropy": entropy, "mutual_information": mutual_information}


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _maybe_sampling(model: nn.Module | None, mode: str | None) -> Any:
    return sampling(model, mode) if model is not None else _NullContext()
