"""The experience-replay memory of Karthik et al.: up to K image-label pairs kept from every earlier site."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.utils import StrEnum

from monai_continual.data.datalist import item_paths
from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.choices import look_up_choice
from monai_continual.utils.names import check_site_name

__all__ = ["ReplayBuffer", "ReplayPolicy", "REPLAY_POLICIES"]


class ReplayPolicy(StrEnum):
    """Which of a site's items the replay memory keeps (see :class:`ReplayBuffer`)."""

    RANDOM = "random"
    RESERVOIR = "reservoir"
    FIRST = "first"


REPLAY_POLICIES = tuple(policy.value for policy in ReplayPolicy)
_MANIFEST = "replay_manifest.json"
_MANIFEST_VERSION = 1


class ReplayBuffer:
    """Keeps up to ``capacity_per_site`` datalist items of every site it has seen (all of them when a site has fewer).

    Items are datalist entries (dicts of paths), so memory stays flat whatever the volume size. Policies:

    - ``"random"``: a uniformly random subset of the site's items, drawn once when the site is added;
    - ``"reservoir"``: reservoir sampling (Vitter's algorithm R) over the items as they stream past
      (:meth:`offer`), so a site's items can be fed during training without holding them all; every item seen has
      the same chance, K / n, of being kept;
    - ``"first"``: the first K items.

    The buffer lives at the site that holds the data: :meth:`save` writes a manifest of paths on that site's disk.
    Copying the images themselves elsewhere is a separate, named call, :meth:`export_data`, because it moves
    patient data.

    Args:
        capacity_per_site: K (Karthik et al. use 20).
        policy: one of :data:`REPLAY_POLICIES`.
        seed: seed of the random choices (each site draws from its own stream, so adding sites in another order
            keeps a site's sample).

    Example::

        >>> buffer = ReplayBuffer(capacity_per_site=20, policy="reservoir", seed=0)
        >>> buffer.add_site("hospital_a", data.items("hospital_a", "training"))
        >>> buffer.save("/data/hospital_b/replay")      # paths only, at the site that holds the data
        >>> len(buffer), buffer.sites
    """

    def __init__(self, capacity_per_site: int = 20, policy: ReplayPolicy | str = ReplayPolicy.RANDOM,
                 seed: int = 0) -> None:
        if int(capacity_per_site) < 1:
            raise ValueError(f"ReplayBuffer: capacity_per_site must be >= 1, got {capacity_per_site}.")
        self.capacity_per_site = int(capacity_per_site)
        self.policy = look_up_choice(policy, ReplayPolicy, "ReplayBuffer: policy")
        self.seed = int(seed)
        self._kept: dict[str, list[dict[str, Any]]] = {}
        self._seen: dict[str, int] = {}
        self._rng_state: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------------------------------
    # filling

    def _rng(self, site: str) -> random.Random:
        rng = random.Random(f"{self.seed}:{site}")
        if site in self._rng_state:
            rng.setstate(self._rng_state[site])
        return rng

    def offer(self, site: str, item: Mapping[str, Any]) -> bool:
        """Stream one item of ``site`` past the buffer; return whether it is now kept.

        For ``"random"`` this behaves as reservoir sampling too (a uniform sample of what was offered).

        Raises:
            ValueError: ``site`` is not a valid site name (``^[A-Za-z0-9_-]+$``; :meth:`export_data` makes a folder
                of it).
        """
        check_site_name(site, "ReplayBuffer: site")
        kept = self._kept.setdefault(site, [])
        seen = self._seen.get(site, 0) + 1
        self._seen[site] = seen
        entry = dict(item)
        if len(kept) < self.capacity_per_site:
            kept.append(entry)
            return True
        if self.policy == ReplayPolicy.FIRST:
            return False
        rng = self._rng(site)
        slot = rng.randrange(seen)
        self._rng_state[site] = rng.getstate()
        if slot < self.capacity_per_site:
            kept[slot] = entry
            return True
        return False

    def add_site(self, site: str, items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Keep up to K of ``items`` for ``site`` by the policy and return what is kept for that site.

        Raises:
            ValueError: ``site`` is not a valid site name (``^[A-Za-z0-9_-]+$``) or has no items.
        """
        site = check_site_name(site, "ReplayBuffer.add_site: site")
        items = [dict(item) for item in items]
        if not items:
            raise ValueError(f"ReplayBuffer.add_site: site {site!r} has no items to add.")
        if self.policy == ReplayPolicy.RANDOM:
            existing = self._kept.get(site, []) + items
            rng = self._rng(site)
            chosen = (
                existing if len(existing) <= self.capacity_per_site else rng.sample(existing, self.capacity_per_site)
            )
            self._rng_state[site] = rng.getstate()
            self._kept[site] = chosen
            self._seen[site] = self._seen.get(site, 0) + len(items)
        else:
            for item in items:
                self.offer(site, item)
        return self.site_items(site)

    def remove_site(self, site: str) -> None:
        """Forget a site (e.g. when its data-use agreement ends)."""
        for store in (self._kept, self._seen, self._rng_state):
            store.pop(site, None)

    # ----------------------------------------------------------------------------------------------------------------
    # reading

    @property
    def sites(self) -> list[str]:
        return list(self._kept)

    def site_items(self, site: str) -> list[dict[str, Any]]:
        if site not in self._kept:
            raise KeyError(f"ReplayBuffer: no items for site {site!r}; sites are {self.sites}.")
        return [dict(item, site=site) for item in self._kept[site]]

    def items(self, sites: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """All kept items (or those of ``sites``), each tagged with ``"site"``."""
        names = self.sites if sites is None else list(sites)
        return [item for name in names for item in self.site_items(name)]

    def seen(self, site: str) -> int:
        """How many items of ``site`` were offered so far."""
        return self._seen.get(site, 0)

    def __len__(self) -> int:
        return sum(len(v) for v in self._kept.values())

    def size(self) -> dict[str, int]:
        """Items kept per site."""
        return {site: len(items) for site, items in self._kept.items()}

    # ----------------------------------------------------------------------------------------------------------------
    # files

    def state_dict(self) -> dict[str, Any]:
        def jsonable(state: Any) -> Any:
            return [state[0], list(state[1]), state[2]]

        return {
            "version": _MANIFEST_VERSION,
            "capacity_per_site": self.capacity_per_site,
            "policy": self.policy.value,
            "seed": self.seed,
            "kept": self._kept,
            "seen": self._seen,
            "rng_state": {k: jsonable(v) for k, v in self._rng_state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != _MANIFEST_VERSION:
            raise ValueError(f"ReplayBuffer: unsupported manifest version {state.get('version')!r}.")
        for site in (*state["kept"], *state["seen"], *state.get("rng_state", {})):  # a manifest is read from disk
            check_site_name(site, "ReplayBuffer: manifest site")
        self.capacity_per_site = int(state["capacity_per_site"])
        self.policy = look_up_choice(state["policy"], ReplayPolicy, "ReplayBuffer state: policy")
        self.seed = int(state["seed"])
        self._kept = {k: [dict(i) for i in v] for k, v in state["kept"].items()}
        self._seen = {k: int(v) for k, v in state["seen"].items()}
        self._rng_state = {k: (v[0], tuple(v[1]), v[2]) for k, v in state.get("rng_state", {}).items()}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the manifest (kept items as paths, counts, RNG state) into ``directory`` atomically."""
        path = Path(directory) / _MANIFEST
        if Path(directory).exists() and not Path(directory).is_dir():
            raise ValueError(f"ReplayBuffer.save: {str(directory)!r} exists and is not a directory.")
        return atomic_write_text(path, json.dumps(self.state_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, check_files: bool = True) -> ReplayBuffer:
        """Read a buffer saved with :meth:`save`; with ``check_files`` every kept item's files must exist."""
        path = Path(directory) / _MANIFEST
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"ReplayBuffer.load: no replay manifest at {str(path)!r}.") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"ReplayBuffer.load: manifest {str(path)!r} is damaged: {err}") from err
        buffer = cls(state.get("capacity_per_site", 20), state.get("policy", "random"), state.get("seed", 0))
        try:
            buffer.load_state_dict(state)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"ReplayBuffer.load: manifest {str(path)!r} is invalid: {err}") from err
        if check_files:
            for item in buffer.items():
                for key, value in item.items():
                    if (
                        key != "site"
                        and isinstance(value, str)
                        and ("/" in value or os.sep in value)
                        and not Path(value).exists()
                    ):
                        raise ValueError(
                            f"ReplayBuffer.load: site {item['site']!r}: {key} file {value!r} listed in {str(path)!r} "
                            "does not exist."
                        )
        return buffer

    def export_data(self, destination: str | os.PathLike, keys: Sequence[str] = ("image", "label")) -> Path:
        """Copy the kept images and labels to ``destination`` and save a buffer that points at the copies.

        This moves patient data off the site's disk: call it only where the data-sharing agreement allows it.
        """
        destination = Path(destination)
        exported = ReplayBuffer(self.capacity_per_site, self.policy, self.seed)
        exported.load_state_dict(self.state_dict())
        for site, items in exported._kept.items():
            folder = destination / check_site_name(site, "ReplayBuffer.export_data: site")
            for index, item in enumerate(items):
                for key in keys:
                    if key in item:
                        copies = []
                        several = isinstance(item[key], (list, tuple))  # a multi-modality image: every file
                        for m, source in enumerate(map(Path, item_paths(item, key))):
                            target = folder / f"{index:03d}_{key}{m if several else ''}_{source.name}"
                            target.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(source, target)
                            copies.append(str(target))
                        item[key] = copies if several else copies[0]
        exported.save(destination)
        return destination
