"""Training progress: a bar in a terminal, a plain line per epoch in a log file."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
from tqdm.auto import tqdm

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar over a stage's iterations with the running loss when the output is a terminal; otherwise one
    plain line per epoch (a log file gets no carriage-return fragments).

    Args:
        description: the bar's (or line's) prefix.
        disable: show nothing.
        stream: where to write (default ``sys.stderr``).

    Example::

        >>> ProgressBar("cwt 3/site_b").attach(trainer)
    """

    def __init__(self, description: str, disable: bool = False, stream: Any = None) -> None:
        self.description = description
        self.disable = disable
        self.stream = stream
        self.bar: tqdm | None = None
        self.loss: float | None = None

    def _out(self) -> Any:
        return self.stream if self.stream is not None else sys.stderr

    def attach(self, engine: Engine) -> None:
        if self.disable:
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._step)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self._close)
        engine.add_event_handler(Events.TERMINATE, self._close)

    def _start(self, engine: Engine) -> None:
        if getattr(self._out(), "isatty", lambda: False)():
            total = engine.state.max_epochs * engine.state.epoch_length
            self.bar = tqdm(
                total=total, initial=engine.state.iteration, desc=self.description, leave=False, file=self._out()
            )

    def _step(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[0].get("loss") if isinstance(output, list) and output and isinstance(output[0], dict) else (
            output.get("loss") if isinstance(output, dict) else None)
        if loss is not None:
            self.loss = float(torch.as_tensor(loss).detach())
        if self.bar is not None:
            self.bar.update(1)
            if self.loss is not None:
                self.bar.set_postfix(loss=f"{self.loss:.4f}", epoch=engine.state.epoch)

    def _epoch(self, engine: Engine) -> None:
        if self.bar is None:
            loss = "" if self.loss is None else f" loss {self.loss:.4f}"
            print(
                f"{self.description}: epoch {engine.state.epoch}/{engine.state.max_epochs}{loss}",
                file=self._out(),
                flush=True,
            )

    def _close(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
