"""NVIDIA FLARE task-result filters a job applies at every site, and which of them fit which transfer kind.

A filter runs on the site's machine, after its code and before the result leaves it. ``ExcludeVars`` keeps variables
at the site (a regular expression over the parameter names, or a list of them) and works on full weights and on
differences alike. ``PercentilePrivacy`` (Shokri and Shmatikov) and ``SVTPrivacy`` (sparse vector technique) treat
what they filter as weight *differences*: they zero or truncate the small entries and add noise to the rest, so on full
weights they would destroy the model. This package's controller transfers full weights and posteriors; those two are
refused with it, and allowed with NVIDIA FLARE's own FedAvg when the sites send differences (``--send-weight-diff``).

A filter is named and configured as data (``{"name": "ExcludeVars", "args": {"exclude_vars": "model\\\\.2\\\\."}}``):
a job chooses among these three, never a class path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monai.utils import StrEnum
from nvflare.app_common.filters import ExcludeVars, PercentilePrivacy, SVTPrivacy

from monai_continual.utils.choices import look_up_choice

__all__ = ["ResultFilter", "DIFFERENCE_ONLY", "check_result_filters", "result_filters", "excluded_names",
           "ExcludeVarsPattern"]


class ResultFilter(StrEnum):
    """The task-result filters of NVIDIA FLARE a job may apply."""

    EXCLUDE_VARS = "ExcludeVars"
    PERCENTILE_PRIVACY = "PercentilePrivacy"
    SVT_PRIVACY = "SVTPrivacy"


#: filters whose maths assume weight differences
DIFFERENCE_ONLY = (ResultFilter.PERCENTILE_PRIVACY, ResultFilter.SVT_PRIVACY)
_ARGS = {
    ResultFilter.EXCLUDE_VARS: {"exclude_vars"},
    ResultFilter.PERCENTILE_PRIVACY: {"percentile", "gamma"},
    ResultFilter.SVT_PRIVACY: {"fraction", "epsilon", "noise_var", "gamma", "tau", "optional_dp"},
}


def check_result_filters(specs: Sequence[Mapping[str, Any]], weight_diff: bool,
                         strategy: str | None = None) -> list[tuple[ResultFilter, dict]]:
    """The filters of ``specs`` (``{"name": ..., "args": {...}}``), checked for the transfer kind.

    Args:
        specs: the job's filters, in the order they run.
        weight_diff: the sites send weight differences (NVIDIA FLARE's FedAvg with ``--send-weight-diff``); ``False``
            for full weights and posteriors (this package's controller).
        strategy: the run's strategy, when this package's controller runs it (``ewc`` sends a Fisher whose entries
            an ``ExcludeVars`` would drop too: refused).

    Raises:
        ValueError: an unknown filter or argument, an argument that is not plain JSON, an ``exclude_vars`` that is
            not a valid regular expression, or a filter that needs differences on full weights; naming the filter.

    Example::

        >>> check_result_filters([{"name": "ExcludeVars", "args": {"exclude_vars": "model\\\\.2\\\\."}}], False)
        [(<ResultFilter.EXCLUDE_VARS: 'ExcludeVars'>, {'exclude_vars': 'model\\\\.2\\\\.'})]
    """
    checked = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or set(spec) - {"name", "args"}:
            raise ValueError(f"result filter {index}: expected {{'name': ..., 'args': {{...}}}}, got {spec!r}.")
        name = look_up_choice(spec.get("name"), ResultFilter, f"result filter {index}")
        args = dict(spec.get("args") or {})
        unknown = sorted(set(args) - _ARGS[name])
        if unknown:
            raise ValueError(f"result filter {name}: unknown arguments {unknown}; it takes {sorted(_ARGS[name])}.")
        for key, value in args.items():
            plain = value is None or isinstance(value, (bool, int, float, str)) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value))
            if not plain:
                raise ValueError(f"result filter {name}: {key}={value!r} is not a plain JSON value.")
        if name == ResultFilter.EXCLUDE_VARS:
            # NVIDIA FLARE matches the names as sent (``published|weights/<parameter>``): an exact name or an
            # anchored pattern of the bare parameter name would silently exclude nothing
            pattern = args.get("exclude_vars")
            if not isinstance(pattern, str) or not pattern or pattern.startswith("^"):
                raise ValueError(f"result filter ExcludeVars: exclude_vars must be a non-empty regular expression "
                                 f"searched in the parameter names, not anchored with '^'; got {pattern!r}.")
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"result filter ExcludeVars: exclude_vars is not a regular expression: {err}") from err
        if name in DIFFERENCE_ONLY and not weight_diff:
            raise ValueError(
                f"result filter {name} treats what it filters as weight differences (it zeroes the small entries and "
                "perturbs the rest); on the full weights and posteriors this package's controller transfers it would "
                "destroy the model. Use it with NVIDIA FLARE's FedAvg and sites that send differences "
                "(bundle_client.py --send-weight-diff), or use ExcludeVars."
            )
        if name == ResultFilter.EXCLUDE_VARS and strategy is not None and str(strategy) == "ewc":
            raise ValueError("result filter ExcludeVars cannot be used with ewc: it would also drop the matching "
                             "entries of the running Fisher that travels with the weights.")
        checked.append((name, args))
    return checked


class ExcludeVarsPattern(ExcludeVars):
    """NVIDIA FLARE's ``ExcludeVars`` with its regular expression kept as text between uses, so that ``FedJob`` can
    write it into a job's config (it writes a filter's constructor arguments from the attributes of the same names,
    and ``ExcludeVars`` keeps the compiled pattern there). Filtering is ``ExcludeVars``' own."""

    def __init__(self, exclude_vars: str | list[str] | None = None, data_kinds: list[str] | None = None) -> None:
        super().__init__(exclude_vars, data_kinds)
        self._compiled, self.exclude_vars = self.exclude_vars, exclude_vars

    def process_dxo(self, dxo: Any, shareable: Any, fl_ctx: Any) -> Any:
        text, self.exclude_vars = self.exclude_vars, self._compiled
        try:
            return super().process_dxo(dxo, shareable, fl_ctx)
        finally:
            self.exclude_vars = text


def result_filters(specs: Sequence[Mapping[str, Any]], weight_diff: bool) -> list[Any]:
    """NVIDIA FLARE filter objects for :func:`check_result_filters`' specs."""
    classes = {ResultFilter.EXCLUDE_VARS: ExcludeVarsPattern, ResultFilter.PERCENTILE_PRIVACY: PercentilePrivacy,
               ResultFilter.SVT_PRIVACY: SVTPrivacy}
    return [classes[name](**args) for name, args in check_result_filters(specs, weight_diff)]


def excluded_names(specs: Sequence[Mapping[str, Any]]) -> Callable[[str], bool]:
    """Whether a result's variable name is one the ``ExcludeVars`` filters of ``specs`` keep at the site.

    Example::

        >>> kept = excluded_names([{"name": "ExcludeVars", "args": {"exclude_vars": "model\\\\.2\\\\."}}])
        >>> kept("published|weights/model.2.bias")
        True
    """
    rules = [args.get("exclude_vars") for name, args in check_result_filters(specs, True)
             if name == ResultFilter.EXCLUDE_VARS]
    patterns = [re.compile(r) for r in rules if isinstance(r, str) and r]
    names = {n for r in rules if isinstance(r, list) for n in r}
    return lambda name: name in names or any(p.search(name) for p in patterns)
