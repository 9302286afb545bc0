"""Federated nnU-Net fingerprints: each site's aggregate statistics, checked when read, merged as if pooled.

nnU-Net plans from a dataset *fingerprint*: per-case spacings and shapes after cropping, the median relative size
after cropping, and statistics of foreground intensities. Every one of these is an aggregate a site can share. A
site fingerprint (:func:`site_fingerprint`) is nnU-Net's fingerprint of the site's own training cases, made with
nnU-Net's own per-case extractor (``DatasetFingerprintExtractor.analyze_case``), plus what merging needs:

- ``relative_sizes_after_cropping``: the per-case values whose median nnU-Net keeps (like spacings and shapes,
  one number per case, no name);
- ``foreground_intensity_moments_per_channel``: the count, mean and sum of squared deviations of the sampled
  foreground intensities;
- ``foreground_intensity_quantiles_per_channel``: their percentiles at :data:`QUANTILE_LEVELS`;
- ``dataset``: the channel names, labels, region order and file ending of ``dataset.json`` (no name, no paths).

nnU-Net samples ``int(num_foreground_voxels_for_intensitystats // cases)`` foreground intensities per case (with
replacement, seeded per case) and computes every intensity statistic over the concatenated samples. With every
site drawing the same number per case (``samples_per_case``; pooled nnU-Net draws ``int(1e8 // total cases)``),
the union of the sites' samples *is* the pooled sample, and :func:`merge_fingerprints` gives:

- exactly: spacings, shapes, relative sizes (per-case lists concatenated in the order given), the median relative
  size, the number of cases, the foreground ``min`` and ``max``, and the foreground ``mean`` and ``std`` (merged
  from counts, means and sums of squared deviations in float64; nnU-Net sums its float32 samples in float32, so the
  two agree to float32 precision);
- approximately: ``median``, ``percentile_00_5`` and ``percentile_99_5``. Each site's sampled intensities are
  summarized by their percentiles at :data:`QUANTILE_LEVELS`; the pooled distribution function is the count-weighted
  mixture of the sites' piecewise-linear distribution functions, and it is inverted at the levels wanted. A site
  alone is reproduced exactly (its own percentiles); between sites the error is bounded by the spacing of the
  levels (0.25 percentile points at the tails, 1 in the middle).

Only aggregates leave a site: the file is built from the keys above alone, and :func:`check_fingerprint` refuses any
other key, so case names and paths cannot travel in it.

Example::

    >>> a = site_fingerprint("Dataset501_site_a", samples_per_case=10000)  # at site a
    >>> save_fingerprint(a, "site_a.json")
    >>> merged = merge_fingerprints([load_fingerprint("site_a.json"), load_fingerprint("site_b.json")])
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_continual.utils.atomic import atomic_write_text

__all__ = [
    "FINGERPRINT_FORMAT", "QUANTILE_LEVELS", "DEFAULT_SAMPLES_PER_CASE", "FingerprintError", "site_fingerprint",
    "check_fingerprint", "load_fingerprint", "save_fingerprint", "merge_fingerprints", "nnunet_fingerprint",
]

#: the value of every site fingerprint's ``"format"`` key
FINGERPRINT_FORMAT = "monai-continual nnU-Net site fingerprint v1"

#: percentile levels (in percent) each site reports per channel: finer at the tails, where nnU-Net reads 0.5 and 99.5
QUANTILE_LEVELS: tuple[float, ...] = (
    0.0, 0.1, 0.25, 0.5, 0.75, *map(float, range(1, 100)), 99.25, 99.5, 99.75, 99.9, 100.0
)

#: foreground intensities sampled per case (nnU-Net's own per-case default in ``collect_foreground_intensities``)
DEFAULT_SAMPLES_PER_CASE = 10000

_MAX_FILE_BYTES = 64 * 2**20
_MAX_CASES = 1_000_000
_MAX_SAMPLES_PER_CASE = 10**8
_NAME = re.compile(r"[^/\\\x00-\x1f]{1,100}")
_FILE_ENDING = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9.]{0,15}")
_KEYS = ("format", "dataset", "samples_per_case", "spacings", "shapes_after_crop", "relative_sizes_after_cropping",
         "median_relative_size_after_cropping", "foreground_intensity_moments_per_channel",
         "foreground_intensity_quantiles_per_channel", "foreground_intensity_properties_per_channel")
_DATASET_KEYS = ("channel_names", "labels", "file_ending", "regions_class_order")
_PROPERTIES = ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")


class FingerprintError(ValueError):
    """A fingerprint file that is malformed, out of range, or cannot be merged with the others (names the file)."""


def site_fingerprint(
    dataset: str | int, samples_per_case: int = DEFAULT_SAMPLES_PER_CASE, num_processes: int = 1
) -> dict[str, Any]:
    """The fingerprint of one site's nnU-Net raw dataset (``nnUNet_raw/<dataset>``), aggregates only.

    Args:
        dataset: the site's dataset (name or id) under ``nnUNet_raw``.
        samples_per_case: foreground intensities nnU-Net samples per case; every site of a federation must use the
            same number (``int(1e8 // total cases)`` reproduces pooled nnU-Net's sample exactly).
        num_processes: processes analyzing cases (1: in this process).

    Returns:
        the fingerprint (see the module's description), already checked by :func:`check_fingerprint`.

    Example::

        >>> fingerprint = site_fingerprint(501, samples_per_case=10000)
        >>> save_fingerprint(fingerprint, "site_a.json")  # what the site shares
    """
    import multiprocessing

    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    if not isinstance(samples_per_case, int) or not 1 <= samples_per_case <= _MAX_SAMPLES_PER_CASE:
        raise ValueError(f"site_fingerprint: samples_per_case must be a whole number in 1..{_MAX_SAMPLES_PER_CASE}, "
                         f"got {samples_per_case!r}.")
    extractor = DatasetFingerprintExtractor(dataset, num_processes=num_processes)
    cases = list(extractor.dataset.values())
    if not cases:
        raise ValueError(f"site_fingerprint: dataset {extractor.dataset_name} has no training cases.")
    reader = determine_reader_writer_from_dataset_json(extractor.dataset_json, cases[0]["images"][0], verbose=False)
    jobs = [(case["images"], case["label"], reader, samples_per_case) for case in cases]
    if num_processes > 1:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            results = pool.starmap(DatasetFingerprintExtractor.analyze_case, jobs)
    else:
        results = [DatasetFingerprintExtractor.analyze_case(*job) for job in jobs]
    channels = len(extractor.dataset_json["channel_names"])
    moments, quantiles = {}, {}
    for channel in range(channels):
        samples = np.concatenate([np.asarray(r[2][channel], dtype=np.float64).ravel() for r in results])
        if samples.size == 0:
            raise ValueError(f"site_fingerprint: dataset {extractor.dataset_name} has no foreground voxels in any "
                             "training case; nnU-Net cannot plan from it.")
        mean = float(np.mean(samples))
        moments[str(channel)] = {"count": int(samples.size), "mean": mean,
                                 "sum_squared_deviations": float(np.sum((samples - mean) ** 2))}
        quantiles[str(channel)] = [float(q) for q in np.percentile(samples, QUANTILE_LEVELS)]
    relative_sizes = [float(r[4]) for r in results]
    document = {
        "format": FINGERPRINT_FORMAT,
        "dataset": {k: extractor.dataset_json[k] for k in _DATASET_KEYS if k in extractor.dataset_json},
        "samples_per_case": samples_per_case,
        "spacings": [[float(s) for s in r[1]] for r in results],
        "shapes_after_crop": [[int(s) for s in r[0]] for r in results],
        "relative_sizes_after_cropping": relative_sizes,
        "median_relative_size_after_cropping": float(np.median(relative_sizes)),
        "foreground_intensity_moments_per_channel": moments,
        "foreground_intensity_quantiles_per_channel": quantiles,
    }
    document["foreground_intensity_properties_per_channel"] = _properties(moments, quantiles)
    return check_fingerprint(document, f"dataset {extractor.dataset_name}")


def nnunet_fingerprint(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``fingerprint`` that nnU-Net's ``dataset_fingerprint.json`` has (what its planners read)."""
    return {k: fingerprint[k] for k in ("spacings", "shapes_after_crop", "foreground_intensity_properties_per_channel",
                                        "median_relative_size_after_cropping")}


def merge_fingerprints(fingerprints: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> dict[str, Any]:
    """Merge site fingerprints into the fingerprint of the pooled data (exact and approximate parts: module doc).

    Args:
        fingerprints: checked site fingerprints (:func:`load_fingerprint`), in the order their cases are pooled.
        names: what to call each one in errors (default: ``fingerprint 1``, ``fingerprint 2``...).

    Returns:
        a fingerprint of the same format (it can be merged again).

    Raises:
        FingerprintError: naming the fingerprint whose dataset description or samples per case differ from the first.

    Example::

        >>> merged = merge_fingerprints([load_fingerprint("site_a.json"), load_fingerprint("site_b.json")])
        >>> merged["foreground_intensity_properties_per_channel"]["0"]["mean"]
    """
    if not fingerprints:
        raise FingerprintError("merge_fingerprints: no fingerprints given.")
    names = list(names) if names is not None else [f"fingerprint {i + 1}" for i in range(len(fingerprints))]
    first = fingerprints[0]
    for name, fingerprint in zip(names[1:], fingerprints[1:]):
        for key in ("dataset", "samples_per_case"):
            if fingerprint[key] != first[key]:
                raise FingerprintError(f"{name}: {key} {json.dumps(fingerprint[key])} differs from {names[0]}'s "
                                       f"{json.dumps(first[key])}; sites planned together need the same channels, "
                                       "labels and file ending, and must sample the same number per case.")
    relative_sizes = [s for f in fingerprints for s in f["relative_sizes_after_cropping"]]
    moments, quantiles = {}, {}
    for channel in first["foreground_intensity_moments_per_channel"]:
        parts = [f["foreground_intensity_moments_per_channel"][channel] for f in fingerprints]
        moments[channel] = _merge_moments(parts)
        quantiles[channel] = _merge_quantiles(
            [f["foreground_intensity_quantiles_per_channel"][channel] for f in fingerprints],
            [p["count"] for p in parts])
    return {
        "format": FINGERPRINT_FORMAT,
        "dataset": first["dataset"],
        "samples_per_case": first["samples_per_case"],
        "spacings": [s for f in fingerprints for s in f["spacings"]],
        "shapes_after_crop": [s for f in fingerprints for s in f["shapes_after_crop"]],
        "relative_sizes_after_cropping": relative_sizes,
        "median_relative_size_after_cropping": float(np.median(relative_sizes)),
        "foreground_intensity_moments_per_channel": moments,
        "foreground_intensity_quantiles_per_channel": quantiles,
        "foreground_intensity_properties_per_channel": _properties(moments, quantiles),
    }


def _merge_moments(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Count, mean and sum of squared deviations of a union of samples (Chan et al.'s parallel formula)."""
    count = sum(p["count"] for p in parts)
    mean = sum(p["count"] * p["mean"] for p in parts) / count
    deviations = sum(p["sum_squared_deviations"] + p["count"] * (p["mean"] - mean) ** 2 for p in parts)
    return {"count": count, "mean": float(mean), "sum_squared_deviations": float(deviations)}


def _merge_quantiles(quantiles: Sequence[Sequence[float]], counts: Sequence[int]) -> list[float]:
    """Percentiles at :data:`QUANTILE_LEVELS` of the count-weighted mixture of piecewise-linear distributions."""
    # between the union of the sites' knots the mixture's distribution function is linear, so evaluating it there
    # and interpolating back is its exact inverse
    knots = np.unique(np.concatenate([np.asarray(q, dtype=np.float64) for q in quantiles]))
    levels = np.asarray(QUANTILE_LEVELS)
    total = float(sum(counts))
    cdf = np.maximum.accumulate(sum((n / total) * np.interp(knots, q, levels) for q, n in zip(quantiles, counts)))
    # where the mixture has no mass (a gap between sites) a level is reached along an interval: take its middle
    upper = np.interp(levels, cdf, knots)
    lower = np.interp(-levels, -cdf[::-1], knots[::-1])
    return [float(v) for v in (upper + lower) / 2]


def _properties(moments: Mapping[str, Any], quantiles: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """nnU-Net's ``foreground_intensity_properties_per_channel`` from the moments and percentiles."""
    result = {}
    for channel, m in moments.items():
        q = dict(zip(QUANTILE_LEVELS, quantiles[channel]))
        result[channel] = {"mean": m["mean"], "median": q[50.0], "std": math.sqrt(m["sum_squared_deviations"] /
                                                                                    m["count"]),
                           "min": q[0.0], "max": q[100.0], "percentile_99_5": q[99.5], "percentile_00_5": q[0.5]}
    return result


# ----------------------------------------------------------------------------------------------- files


def save_fingerprint(fingerprint: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Check ``fingerprint`` and write it as JSON (atomically); returns the path."""
    check_fingerprint(fingerprint, str(path))
    return atomic_write_text(path, json.dumps(fingerprint, indent=1))


def load_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fingerprint file (from this site or another) and check it (:func:`check_fingerprint`).

    Raises:
        FingerprintError: naming the file, when it is missing, too large, not JSON, or fails the checks.
    """
    where = f"fingerprint file {path}"
    try:
        if Path(path).stat().st_size > _MAX_FILE_BYTES:
            raise FingerprintError(f"{where}: larger than {_MAX_FILE_BYTES // 2**20} MiB.")
        document = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except OSError as e:
        raise FingerprintError(f"{where}: cannot be read ({e.strerror or e}).") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise FingerprintError(f"{where}: not valid JSON ({e}).") from None
    return check_fingerprint(document, where)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def check_fingerprint(document: Any, where: str = "fingerprint") -> dict[str, Any]:
    """Check types, ranges and consistency of a site fingerprint; return it (a plain dict).

    Args:
        document: the parsed JSON.
        where: what to call it in errors (the file).

    Raises:
        FingerprintError: ``"<where>: <what is wrong>"``; unknown keys (case names, paths) are refused.

    Example::

        >>> check_fingerprint(json.loads(text), "fingerprint file site_a.json")
    """
    def fail(message: str) -> FingerprintError:
        return FingerprintError(f"{where}: {message}")

    if not isinstance(document, Mapping):
        raise fail("expected a JSON object.")
    unknown = sorted(set(document) - set(_KEYS))
    missing = [k for k in _KEYS if k not in document]
    if unknown:
        raise fail(f"unexpected keys {unknown[:5]}; a fingerprint holds only {', '.join(_KEYS)} (no case names or "
                   "paths).")
    if missing:
        raise fail(f"missing keys {missing}.")
    if document["format"] != FINGERPRINT_FORMAT:
        raise fail(f"format {document['format']!r} is not {FINGERPRINT_FORMAT!r}.")
    channels = _check_dataset(document["dataset"], fail)
    samples = document["samples_per_case"]
    if not _is_int(samples) or not 1 <= samples <= _MAX_SAMPLES_PER_CASE:
        raise fail(f"samples_per_case must be a whole number in 1..{_MAX_SAMPLES_PER_CASE}, got {samples!r}.")
    spacings, shapes, sizes = (document[k] for k in ("spacings", "shapes_after_crop", "relative_sizes_after_cropping"))
    for key, value in (("spacings", spacings), ("shapes_after_crop", shapes), ("relative_sizes_after_cropping", sizes)):
        if not isinstance(value, list) or not 1 <= len(value) <= _MAX_CASES:
            raise fail(f"{key} must be a list of 1..{_MAX_CASES} cases.")
    if not len(spacings) == len(shapes) == len(sizes):
        raise fail(f"spacings, shapes_after_crop and relative_sizes_after_cropping list {len(spacings)}, "
                   f"{len(shapes)} and {len(sizes)} cases; one entry per case each.")
    dims = len(spacings[0]) if isinstance(spacings[0], list) else 0
    for i, (spacing, shape, size) in enumerate(zip(spacings, shapes, sizes)):
        if not (dims in (2, 3) and isinstance(spacing, list) and len(spacing) == dims
                and all(_is_number(s) and 0 < s < 1e6 for s in spacing)):
            raise fail(f"spacings[{i}] must list {dims if dims in (2, 3) else '2 or 3'} positive finite numbers, "
                       f"like every case's, got {spacing!r}.")
        if not (isinstance(shape, list) and len(shape) == dims and all(_is_int(s) and 1 <= s <= 2**20 for s in shape)):
            raise fail(f"shapes_after_crop[{i}] must list {dims} whole numbers >= 1, got {shape!r}.")
        if not (_is_number(size) and 0 < size <= 1):
            raise fail(f"relative_sizes_after_cropping[{i}] must be a number in (0, 1], got {size!r}.")
    median = document["median_relative_size_after_cropping"]
    if not _is_number(median) or median != float(np.median(sizes)):
        raise fail(f"median_relative_size_after_cropping {median!r} is not the median of "
                   "relative_sizes_after_cropping.")
    names = [str(c) for c in range(channels)]
    moments, quantiles, properties = (document[f"foreground_intensity_{k}_per_channel"]
                                      for k in ("moments", "quantiles", "properties"))
    for key, value in (("moments", moments), ("quantiles", quantiles), ("properties", properties)):
        if not isinstance(value, Mapping) or sorted(value) != names:
            raise fail(f"foreground_intensity_{key}_per_channel must have one entry per channel ({names}).")
    for channel in names:
        m, q, p = moments[channel], quantiles[channel], properties[channel]
        if not (isinstance(m, Mapping) and sorted(m) == ["count", "mean", "sum_squared_deviations"]
                and _is_int(m["count"]) and 1 <= m["count"] <= samples * len(spacings)
                and m["count"] % samples == 0 and _is_number(m["mean"])
                and _is_number(m["sum_squared_deviations"]) and m["sum_squared_deviations"] >= 0):
            raise fail(f"foreground_intensity_moments_per_channel[{channel}] must hold count (a multiple of "
                       "samples_per_case, at most one per case), mean and sum_squared_deviations (>= 0).")
        if not (isinstance(q, list) and len(q) == len(QUANTILE_LEVELS) and all(_is_number(v) for v in q)
                and all(a <= b for a, b in zip(q, q[1:])) and _within(m["mean"], q[0], q[-1])):
            raise fail(f"foreground_intensity_quantiles_per_channel[{channel}] must list {len(QUANTILE_LEVELS)} "
                       "non-decreasing finite numbers (the percentiles at QUANTILE_LEVELS) around the mean.")
        if not (isinstance(p, Mapping) and sorted(p) == sorted(_PROPERTIES) and all(_is_number(v) for v in p.values())):
            raise fail(f"foreground_intensity_properties_per_channel[{channel}] must hold the finite numbers "
                       f"{', '.join(_PROPERTIES)}.")
    return json.loads(json.dumps(document))


def _check_dataset(dataset: Any, fail: Any) -> int:
    """Check the dataset description; returns the number of channels."""
    if not isinstance(dataset, Mapping) or not set(dataset) <= set(_DATASET_KEYS) or not {
            "channel_names", "labels", "file_ending"} <= set(dataset):
        raise fail("dataset must hold channel_names, labels and file_ending (and regions_class_order), no more.")
    channels = dataset["channel_names"]
    if not (isinstance(channels, Mapping) and 1 <= len(channels) <= 64
            and sorted(channels, key=lambda k: int(k) if k.isdigit() else -1) == [str(i) for i in range(len(channels))]
            and all(isinstance(n, str) and _NAME.fullmatch(n) for n in channels.values())):
        raise fail("dataset.channel_names must map '0', '1'... to channel names (no path separators).")
    labels = dataset["labels"]
    if not (isinstance(labels, Mapping) and 2 <= len(labels) <= 1000
            and all(isinstance(k, str) and _NAME.fullmatch(k) for k in labels)
            and all(_is_label(v) or (isinstance(v, list) and v and all(_is_label(x) for x in v))
                    for v in labels.values())
            and labels.get("background") == 0):
        raise fail("dataset.labels must map names to label values (0..65535, or lists of them), background 0.")
    if not (isinstance(dataset["file_ending"], str) and _FILE_ENDING.fullmatch(dataset["file_ending"])):
        raise fail(f"dataset.file_ending must be a file ending such as '.nii.gz', got {dataset['file_ending']!r}.")
    order = dataset.get("regions_class_order", [])
    if not (isinstance(order, list) and all(_is_label(v) for v in order)):
        raise fail("dataset.regions_class_order must list label values.")
    return len(channels)


def _within(value: float, low: float, high: float) -> bool:
    slack = 1e-9 * max(1.0, abs(low), abs(high))  # a mean of equal values may differ from them in the last digit
    return low - slack <= value <= high + slack


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_label(value: Any) -> bool:
    return _is_int(value) and 0 <= value <= 65535


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
