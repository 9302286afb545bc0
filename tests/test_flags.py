"""On/off settings from a command line: ``--amp false`` arrives as the string ``"false"``, which Python reads as
true; every flag is read through ``as_flag``."""

from __future__ import annotations

import pytest

from monai_continual.bayes import BayesConfig
from monai_continual.engines.settings import MonaiSettings
from monai_continual.networks import MeshNet
from monai_continual.utils import as_flag
from runner_utils import transform


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (1, True), (0, False), ("true", True),
                                             ("False", False), (" ON ", True), ("no", False), ("0", False)])
def test_command_line_spellings_of_on_and_off(value, expected):
    assert as_flag(value, "amp") is expected


@pytest.mark.parametrize("value", ["flase", 2, 0.5, None, [True]])
def test_anything_else_is_refused_naming_the_setting(value):
    with pytest.raises(ValueError, match="amp must be true or false"):
        as_flag(value, "amp")


def test_settings_read_false_as_false():
    assert bool("false") is True  # the trap
    net = MeshNet(3, 1, 4, channels=4, dilations=(1, 2, 1))
    assert MonaiSettings(net, transform(), transform(), 4, amp="false").amp is False
    assert BayesConfig(weight_norm="false", bound_std="true").weight_norm is False
    with pytest.raises(ValueError, match="BayesConfig: bound_std must be true or false"):
        BayesConfig(bound_std="maybe")
