"""DWC is exact where the posterior is known in closed form, and matches McClure Eq. 17 everywhere."""

from __future__ import annotations

import pytest
import torch

from monai_continual.consolidation import Posterior, consolidate_dwc

SHAPES = {"layer.weight": (3, 4), "layer.bias": (5,)}
NOISE_STD = 0.7


def _gaussian_posterior(prior: Posterior, design: dict, targets: dict) -> Posterior:
    """Exact posterior of y = a * theta + N(0, NOISE_STD^2), each observation touching one weight, per weight."""
    mean, std = {}, {}
    for name in SHAPES:
        a, y = design[name], targets[name]
        precision = prior.std[name].pow(-2) + (a * a).sum(0) / NOISE_STD**2
        mean[name] = (prior.mean[name] * prior.std[name].pow(-2) + (a * y).sum(0) / NOISE_STD**2) / precision
        std[name] = precision.rsqrt()
    return Posterior(mean, std, metadata={"num_examples": int(next(iter(design.values())).shape[0])})


def _problem(site_sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64}
    prior = Posterior(
        {n: torch.randn(s, **kw) for n, s in SHAPES.items()},
        {n: 0.5 + torch.rand(s, **kw) for n, s in SHAPES.items()},
    )
    theta = {n: torch.randn(s, **kw) for n, s in SHAPES.items()}
    sites = []
    for size in site_sizes:
        design = {n: torch.randn((size,) + s, **kw) for n, s in SHAPES.items()}
        targets = {n: design[n] * theta[n] + NOISE_STD * torch.randn((size,) + s, **kw) for n, s in SHAPES.items()}
        sites.append((design, targets))
    pooled = (
        {n: torch.cat([d[n] for d, _ in sites]) for n in SHAPES},
        {n: torch.cat([t[n] for _, t in sites]) for n in SHAPES},
    )
    return prior, sites, pooled


@pytest.mark.parametrize("site_sizes", [(7,), (3, 11), (2, 9, 4, 20, 1)])
def test_consolidated_site_posteriors_equal_pooled_posterior(site_sizes):
    prior, sites, pooled = _problem(site_sizes)
    site_posteriors = [_gaussian_posterior(prior, d, t) for d, t in sites]
    merged = consolidate_dwc(prior, site_posteriors)
    exact = _gaussian_posterior(prior, *pooled)
    for name in SHAPES:
        torch.testing.assert_close(merged.mean[name], exact.mean[name], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(merged.std[name], exact.std[name], rtol=1e-12, atol=1e-12)
    assert merged.metadata["num_sites"] == len(site_sizes)
    assert merged.metadata["num_examples"] == sum(site_sizes)
    if len(site_sizes) > 1:  # the known public mistakes give a different answer: the test can tell them apart
        s = len(site_sizes)
        wrong_precision = sum(p.std["layer.bias"].pow(-2) for p in site_posteriors) - s * prior.std["layer.bias"].pow(
            -2
        )
        assert not torch.allclose(wrong_precision.abs().rsqrt(), exact.std["layer.bias"], rtol=1e-3)


def test_prior_copies_give_the_prior_and_one_site_gives_itself():
    prior, sites, _ = _problem((5,))
    for copies in (1, 2, 5):
        merged = consolidate_dwc(prior, [prior] * copies)
        for name in SHAPES:
            torch.testing.assert_close(merged.mean[name], prior.mean[name], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(merged.std[name], prior.std[name], rtol=1e-12, atol=1e-12)
    site = _gaussian_posterior(prior, *sites[0])
    merged = consolidate_dwc(prior, [site])
    for name in SHAPES:
        torch.testing.assert_close(merged.mean[name], site.mean[name], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(merged.std[name], site.std[name], rtol=1e-13, atol=1e-13)


def test_matches_eq_17_elementwise_and_keeps_dtype():
    g = torch.Generator().manual_seed(4)
    prior = Posterior({"w": torch.randn(6, generator=g)}, {"w": torch.full((6,), 0.2)})
    sites = [
        Posterior({"w": torch.randn(6, generator=g)}, {"w": 0.2 * (0.1 + 0.9 * torch.rand(6, generator=g))})
        for _ in range(3)
    ]
    merged = consolidate_dwc(prior, sites)
    mu0, s0 = prior.mean["w"].double(), prior.std["w"].double()
    prec = sum(p.std["w"].double() ** -2 for p in sites) - 2 / s0**2
    mean = (sum(p.mean["w"].double() / p.std["w"].double() ** 2 for p in sites) - 2 * mu0 / s0**2) / prec
    assert merged.mean["w"].dtype == torch.float32
    torch.testing.assert_close(merged.mean["w"], mean.float())
    torch.testing.assert_close(merged.std["w"], prec.rsqrt().float())


def test_non_positive_precision_raises_or_falls_back_to_prior():
    prior = Posterior(
        {"a.weight": torch.zeros(4), "b.weight": torch.zeros(2)}, {"a.weight": torch.ones(4), "b.weight": torch.ones(2)}
    )
    wide = Posterior(
        {"a.weight": torch.ones(4), "b.weight": torch.ones(2)},
        {"a.weight": torch.tensor([0.5, 3.0, 3.0, 0.5]), "b.weight": torch.full((2,), 0.5)},
    )
    # McClure's sigma_s <= sigma_0 is checked first: refused by default, naming the site and the weights ...
    with pytest.raises(
        ValueError, match=r"site posterior 0 .*std exceeds the shared prior's for 2 of 4 weights of 'a.weight'"
    ):
        consolidate_dwc(prior, [wide, wide])
    clipped = consolidate_dwc(prior, [wide, wide], excess_std="clip")  # ... or clipped to the prior's std
    assert clipped.metadata["clipped_std_weights"] == 4
    torch.testing.assert_close(clipped.std["a.weight"][1:3], torch.ones(2))  # precision 2 * 1 - 1 = 1
    torch.testing.assert_close(clipped.mean["a.weight"][1:3], torch.full((2,), 2.0))  # (2 * 1 - 0) / 1
    with pytest.raises(ValueError, match=r"precision is <= 0 for 2 of 4 weights of parameter 'a.weight'"):
        consolidate_dwc(prior, [wide, wide], excess_std="allow")
    merged = consolidate_dwc(prior, [wide, wide], fallback="prior", excess_std="allow")
    assert merged.metadata["fallback_weights"] == 2
    torch.testing.assert_close(merged.mean["a.weight"][1:3], torch.zeros(2))
    torch.testing.assert_close(merged.std["a.weight"][1:3], torch.ones(2))
    # the other weights follow Eq. 17: precision 2 * 4 - 1 = 7, mean 2 * 4 / 7
    torch.testing.assert_close(merged.std["a.weight"][0], torch.tensor(7**-0.5))
    torch.testing.assert_close(merged.mean["a.weight"][0], torch.tensor(8 / 7))
    with pytest.raises(ValueError, match="fallback"):
        consolidate_dwc(prior, [wide], fallback="clip")


def test_a_site_claiming_far_more_precision_than_the_prior_cannot_dominate():
    """A well-formed posterior with std 1e-30 everywhere would dictate the consolidated mean; it is refused or
    clipped to max_precision_ratio times the prior's precision, never silently dominant."""
    prior = Posterior({"w": torch.zeros(5)}, {"w": torch.full((5,), 0.1)})
    honest = Posterior({"w": torch.full((5,), 1.0)}, {"w": torch.full((5,), 0.05)})
    hostile = Posterior({"w": torch.full((5,), -50.0)}, {"w": torch.full((5,), 1e-30)}, metadata={"site": "mallory"})
    with pytest.raises(
        ValueError,
        match=r"site posterior 1 \('mallory'\) claims a precision above 10000 times the prior's for 5 of 5 weights",
    ):
        consolidate_dwc(prior, [honest, hostile])
    clipped = consolidate_dwc(prior, [honest, hostile], dominance="clip", max_precision_ratio=100.0)
    assert clipped.metadata["clipped_precision_weights"] == 5
    # by hand: precisions 400 (honest) + 100 * 100 (hostile, clipped) - 100 (prior), means 1 and -50
    precision = 400.0 + 10_000.0 - 100.0
    torch.testing.assert_close(clipped.std["w"], torch.full((5,), precision**-0.5))
    torch.testing.assert_close(clipped.mean["w"], torch.full((5,), (400.0 * 1.0 + 10_000.0 * -50.0) / precision))
    # an honest site far more precise than the prior, within the bound, is consolidated as Eq. 17 says
    sharp = Posterior({"w": torch.full((5,), 2.0)}, {"w": torch.full((5,), 1e-3)})
    merged = consolidate_dwc(prior, [sharp, honest])
    assert merged.metadata["clipped_precision_weights"] == 0
    torch.testing.assert_close(merged.std["w"], torch.full((5,), (1e6 + 400.0 - 100.0) ** -0.5))


def test_deterministic_values_are_averaged_by_site_size_and_files_stream(tmp_path):
    prior = Posterior({"w": torch.zeros(3)}, {"w": torch.ones(3)})
    sites = []
    for i, (size, value) in enumerate(((30, 1.0), (10, 5.0))):
        post = Posterior(
            {"w": torch.full((3,), float(i))},
            {"w": torch.full((3,), 0.5)},
            {"norm.weight": torch.full((2,), value), "norm.num_batches_tracked": torch.tensor(7 + i)},
            {"num_examples": size, "site": f"s{i}"},
        )
        sites.append(post.save(tmp_path / f"s{i}.safetensors"))
    prior.save(tmp_path / "prior.safetensors")
    merged = consolidate_dwc(tmp_path / "prior.safetensors", sites)
    torch.testing.assert_close(merged.deterministic["norm.weight"], torch.full((2,), (30 * 1.0 + 10 * 5.0) / 40))
    assert int(merged.deterministic["norm.num_batches_tracked"]) == 7
    assert merged.metadata["sites"] == ["s0", "s1"]
    in_memory = consolidate_dwc(prior, [Posterior.load(p) for p in sites])
    assert torch.equal(in_memory.mean["w"], merged.mean["w"])


def test_mismatched_sites_are_rejected_by_name():
    prior = Posterior({"w": torch.zeros(3)}, {"w": torch.ones(3)})
    other_shape = Posterior({"w": torch.zeros(4)}, {"w": torch.ones(4)})
    other_name = Posterior({"v": torch.zeros(3)}, {"v": torch.ones(3)})
    with pytest.raises(ValueError, match=r"parameter 'w' has shape \(4,\)"):
        consolidate_dwc(prior, [other_shape])
    with pytest.raises(ValueError, match=r"missing parameters \['w'\], extra parameters \['v'\]"):
        consolidate_dwc(prior, [other_name])
    with pytest.raises(ValueError, match="no site posteriors"):
        consolidate_dwc(prior, [])
    sized = Posterior({"w": torch.zeros(3)}, {"w": torch.ones(3)}, metadata={"num_examples": 3})
    with pytest.raises(ValueError, match=r"site posteriors \[1\] lack metadata 'num_examples'"):
        consolidate_dwc(prior, [sized, prior])
