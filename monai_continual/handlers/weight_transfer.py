"""Weight transfer through a shared store: load the latest weights when a stage starts, publish them when it ends."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from monai_continual.consolidation.weight_store import DirectoryWeightStore, WeightEntry, WeightStore
from monai_continual.handlers._events import resolve_event
from monai_continual.utils.names import check_site_label

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["WeightTransferHandler"]


class WeightTransferHandler:
    """Single or cyclic weight transfer (Chang et al., Remedios et al.) as an ignite handler.

    At ``load_event`` (training start) the network takes the latest weights in the store, whoever published them; at
    ``publish_event`` (training end) it publishes its own, tagged with the site and stage. Only weights travel: the
    optimizer's state stays with the trainer at the site. The store is a shared directory by default
    (:class:`DirectoryWeightStore`); any :class:`WeightStore` works.

    Args:
        store: a ``WeightStore`` or a directory path.
        site: this site's name (``^[A-Za-z0-9_-]+$``, it becomes part of the published file's name).
        network: the network whose weights travel.
        stage: stage number to publish under; ``None`` means one more than the latest entry in the store.
        load: load weights at ``load_event`` (an empty store leaves the network as it is).
        source_stage: load the weights published under this stage number instead of the latest (what a resumable
            schedule does: a stage redone after a crash must not start from its own output).
        publish: publish at ``publish_event``.
        strict: the loaded weights must match the network's parameters exactly.

    Example::

        >>> WeightTransferHandler("/shared/weights", site="hospital_a", network=net).attach(trainer)
        >>> trainer.run()  # starts from the last site's weights, leaves this site's for the next one
    """

    def __init__(
        self,
        store: WeightStore | str | os.PathLike,
        site: str,
        network: nn.Module,
        stage: int | None = None,
        load: bool = True,
        publish: bool = True,
        strict: bool = True,
        load_event: Any = "STARTED",
        publish_event: Any = "COMPLETED",
        source_stage: int | None = None,
    ) -> None:
        self.site = check_site_label(site, "WeightTransferHandler: site")
        self.store = store if isinstance(store, WeightStore) else DirectoryWeightStore(store)
        self.network = network
        self.stage = stage
        self.load = load
        self.publish = publish
        self.strict = strict
        self.source_stage = source_stage
        self.load_event = resolve_event(load_event, "WeightTransferHandler")
        self.publish_event = resolve_event(publish_event, "WeightTransferHandler")
        self.loaded: WeightEntry | None = None
        self.published: WeightEntry | None = None

    def attach(self, engine: Engine) -> None:
        if self.load and not engine.has_event_handler(self.load_weights, self.load_event):
            engine.add_event_handler(self.load_event, self.load_weights)
        if self.publish and not engine.has_event_handler(self.publish_weights, self.publish_event):
            engine.add_event_handler(self.publish_event, self.publish_weights)

    def __call__(self, engine: Engine) -> None:
        self.publish_weights(engine)

    def load_weights(self, engine: Engine | None = None) -> WeightEntry | None:
        entry = self.store.latest() if self.source_stage is None else self.store.entry(self.source_stage)
        if entry is None:
            if self.source_stage is not None:
                raise FileNotFoundError(
                    f"WeightTransferHandler: the store {self.store!r} has no weights of stage {self.source_stage}."
                )
            return None
        state = self.store.load(entry)
        device = next(self.network.parameters()).device
        try:
            self.network.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=self.strict)
        except RuntimeError as err:
            raise ValueError(
                f"WeightTransferHandler: weights {entry.file!r} published by site {entry.site!r} (stage {entry.stage}) "
                f"do not fit site {self.site!r}'s network: {err}"
            ) from err
        self.loaded = entry
        if engine is not None:
            engine.logger.info(f"site {self.site!r}: loaded weights of site {entry.site!r}, stage {entry.stage}")
        return entry

    def publish_weights(self, engine: Engine | None = None) -> WeightEntry:
        if self.stage is not None:
            stage = self.stage
        else:
            latest = self.store.latest()
            stage = 0 if latest is None else latest.stage + 1
        state = {k: v.detach() for k, v in self.network.state_dict().items() if isinstance(v, torch.Tensor)}
        self.published = self.store.publish(state, self.site, stage)
        if engine is not None:
            engine.logger.info(f"site {self.site!r}: published weights as stage {stage}")
        return self.published

    def state_dict(self) -> dict[str, Any]:
        return {
            "loaded": None if self.loaded is None else self.loaded.file,
            "published": None if self.published is None else self.published.file,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        by_file = {e.file: e for e in self.store.entries()}
        self.loaded = by_file.get(state.get("loaded"))
        self.published = by_file.get(state.get("published"))
