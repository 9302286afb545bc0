"""The nnU-Net command line for a newcomer: fast help, every option explained, our trainers listed, and user errors as
one line naming the option or the command to run (exit status 2, no traceback). Nothing here trains."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is None, reason="needs nnU-Net v2")

PROG = "python -m monai_continual.nnunet"
COMMANDS = ("export-sites", "plan", "fingerprint", "plan-from-fingerprints", "preprocess", "train", "predict", "sites",
            "trainer-path")
NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in NNUNET_ENV}
    return subprocess.run([sys.executable, "-m", "monai_continual.nnunet", *args], env={**environment, **(env or {})},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def folders(tmp_path) -> dict[str, str]:
    """Empty nnU-Net folders, as environment variables."""
    paths = {name: tmp_path / name for name in NNUNET_ENV}
    for path in paths.values():
        path.mkdir()
    return {k: str(v) for k, v in paths.items()}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_is_fast_and_imports_neither_nnunet_nor_torch():
    timings = {}
    for args in (["--help"], *([command, "--help"] for command in COMMANDS)):
        start = time.perf_counter()
        done = _run(*args)
        timings[" ".join(args)] = time.perf_counter() - start
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: {PROG}") and not done.stderr
    print(f"help timings (s): {json.dumps({k: round(v, 2) for k, v in timings.items()})}")
    assert max(timings.values()) < 5.0, timings  # about 0.1 s on an idle machine; slack for a loaded CI runner
    probe = ("import runpy, sys\n"
             "sys.argv = ['x', 'sites', '--help']\n"
             "try:\n    runpy.run_module('monai_continual.nnunet', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('nnunetv2', 'torch', 'monai', 'numpy') if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip() == "[]", done.stderr


def test_every_option_has_help_and_its_default_is_shown():
    from monai_continual.nnunet.cli import build_parser

    parser = build_parser()
    parsers = {"": parser, **_subparsers(parser)}
    assert set(parsers) == {"", *COMMANDS}
    for command, sub in parsers.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = f"{command} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help is not argparse.SUPPRESS, f"{name} has no help text"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in formatter._get_help_string(action), f"{name}: its default is not shown"
        sub.format_help()  # every help string formats
    text = parsers["sites"].format_help()
    for shown in ("(default: 2)", "(default: 1)", "(default: fixed)", "(default: 3d_fullres)", "(default: 20)"):
        assert shown in text
    for strategy in ("single_weight_transfer", "cyclic_weight_transfer", "fine_tuning", "replay", "ewc", "vcl", "dwc",
                     "federated_averaging"):
        assert text.count(strategy) >= 3  # in the strategies' descriptions, the trainers' table and the choices


def test_rounds_means_per_strategy_and_cycles_is_its_alias():
    from monai_continual.nnunet.cli import build_parser

    parser = build_parser()
    rounds = next(a for a in _subparsers(parser)["sites"]._actions if a.dest == "rounds")
    for meaning in ("cyclic_weight_transfer: cycles", "dwc: consolidation rounds",
                    "federated_averaging: averaging rounds", "ignored by",
                    "single_weight_transfer, fine_tuning, replay, vcl"):
        assert meaning in rounds.help
    base = ["sites", "cyclic_weight_transfer", "501", "502", "-o", "run"]
    assert parser.parse_args([*base, "--cycles", "3"]).rounds == parser.parse_args([*base, "--rounds", "3"]).rounds == 3
    assert parser.parse_args(base).rounds is None  # the default (2) is applied when the command runs
    # nnU-Net's folders before or after the command
    after = parser.parse_args([*base, "--raw", "r", "--results", "s"])
    before = parser.parse_args(["--raw", "r", "--results", "s", *base])
    assert (
        (after.raw, after.preprocessed, after.results)
        == (before.raw, before.preprocessed, before.results)
        == ("r", None, "s")
    )


def test_trainer_and_strategy_names_match_what_the_package_registers(capsys):
    from monai_continual.nnunet.cli import build_parser, main
    from monai_continual.nnunet.names import OUR_TRAINERS, SITE_STRATEGIES_WITH_ROUNDS, SITE_STRATEGY_TRAINERS
    from monai_continual.nnunet.sites import SITE_STRATEGIES
    from monai_continual.nnunet.trainers import TRAINERS, ext_trainer_folder
    from monai_continual.strategies import Strategy

    assert OUR_TRAINERS == tuple(TRAINERS)
    assert SITE_STRATEGY_TRAINERS == SITE_STRATEGIES
    assert set(SITE_STRATEGIES_WITH_ROUNDS) < set(SITE_STRATEGIES) <= {s.value for s in Strategy}
    subparsers = _subparsers(build_parser())
    for command in ("train", "predict", "sites"):
        text = subparsers[command].format_help()
        assert all(name in text for name in TRAINERS), f"{command} --help does not list our trainers"
    assert main(["trainer-path"]) == 0
    assert capsys.readouterr().out.strip() == str(ext_trainer_folder())


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["sites", "cyclic_weight_transfer", "999", "-o", "{tmp}/run"], True, ["dataset 999", "export-sites"]),
        (["sites", "magic", "501", "-o", "{tmp}/run"], True, ["STRATEGY", "invalid choice: 'magic'", "dwc"]),
        (["sites", "fine_tuning", "501", "-o", "{tmp}/run", "--epochs", "0"], True, ["--epochs", ">= 1"]),
        (["sites", "fine_tuning", "501", "-o", "{tmp}/run", "--order", "sorted"], True,
         ["--order", "random_per_round"]),
        (["sites", "fine_tuning", "501", "-o", "{tmp}/run"], False, ["nnUNet_raw", "--raw DIR", "--results DIR"]),
        (["plan", "site_a"], True, ["DATASET", "'site_a'", "Dataset501_site_a"]),
        (["plan", "501", "502"], True, ["dataset 501", "export-sites"]),
        (["train", "999", "3d_fullres", "all"], True, ["dataset 999", f"`{PROG} plan 999`"]),
        (["train", "501", "3d_fullres", "fifth"], True, ["fold", "'all'"]),
        (["train", "501", "3d_fullres", "all", "-device", "gpu"], True, ["-device", "cuda"]),
        (["predict", "-i", "{tmp}", "-o", "{tmp}/out"], True, ["-m MODEL_FOLDER", "-d DATASET"]),
        (["predict", "-i", "{tmp}/nowhere", "-o", "{tmp}/out", "-m", "{tmp}"], True, ["-i", "no such folder"]),
        (["predict", "-i", "{tmp}", "-o", "{tmp}/out", "-d", "501"], True, ["-d 501", "no trained model", "train 501"]),
        (["fingerprint", "999", "-o", "{tmp}/fp.json"], True, ["dataset 999", "export-sites"]),
        (["fingerprint", "501", "-o", "{tmp}/fp.json", "--samples-per-case", "0"], True, ["--samples-per-case"]),
        (["plan-from-fingerprints", "{tmp}/missing.json", "-o", "{tmp}/plans.json"], True,
         ["FINGERPRINT", "missing.json", "no such file"]),
        (["preprocess", "501"], True, ["--plans-file", "required"]),
        (["preprocess", "999", "--plans-file", "{tmp}/plans.json"], True, ["dataset 999", "export-sites"]),
        (["export-sites", "{tmp}/missing.json"], True, ["DATALIST", "missing.json"]),
        (["export-sites", "{tmp}/missing.json", "--first-id", "1000"], True, ["--first-id", "1 to 999"]),
        (["nonsense"], True, ["COMMAND", "invalid choice", "export-sites"]),
        ([], True, ["COMMAND", "required"]),
    ],
)
def test_user_errors_are_one_line_naming_the_option_or_command_with_exit_status_2(
    tmp_path, folders, args, env, expected
):
    done = _run(*[a.format(tmp=tmp_path) for a in args], env=folders if env else None)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and not done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    command = args[0] if args and args[0] in COMMANDS else None
    assert lines[0].startswith(f"{PROG} {command}: error: " if command else f"{PROG}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_value_errors_of_our_checks_are_one_line_and_other_errors_keep_their_traceback(monkeypatch, capsys):
    from monai_continual.nnunet import cli
    from monai_continual.nnunet.environment import dataset_id

    monkeypatch.setattr(cli, "_trainer_path", lambda args: dataset_id("Dataset5_nope"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["trainer-path"])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err
        == f"{PROG} trainer-path: error: 'Dataset5_nope' is not an nnU-Net dataset name (DatasetXXX_Name) or id.\n"
    )

    def internal(args):
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(cli, "_trainer_path", internal)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["trainer-path"])


def test_sites_passes_rounds_and_epochs_with_their_meaning_for_each_strategy(tmp_path, folders, monkeypatch, capsys):
    from monai_continual.nnunet import cli, sites

    for name in ("Dataset901_a", "Dataset902_b"):
        (Path(folders["nnUNet_raw"]) / name).mkdir()
        (Path(folders["nnUNet_preprocessed"]) / name).mkdir()
        (Path(folders["nnUNet_preprocessed"]) / name / "nnUNetPlans.json").write_text("{}")
    calls = []

    def fake_run_sites(datasets, strategy, output_dir, **kwargs):
        calls.append({"datasets": list(datasets), "strategy": strategy, **kwargs})
        return SimpleNamespace(matrix=SimpleNamespace(num_stages=1))

    monkeypatch.setattr(sites, "run_sites", fake_run_sites)
    for key, value in folders.items():
        monkeypatch.setenv(key, value)
    base = ["901", "Dataset902_b", "-o", str(tmp_path / "run"), "--epochs", "3"]
    assert cli.main(["sites", "cyclic_weight_transfer", *base, "--cycles", "4"]) == 0
    assert cli.main(["sites", "federated_averaging", *base]) == 0
    assert cli.main(["sites", "fine_tuning", *base, "--rounds", "5"]) == 0
    assert cli.main(["sites", "federated_averaging", *base, "--proximal-mu", "0.5"]) == 0
    assert cli.main(["sites", "ewc", *base, "--ewc-lambda", "2", "--ewc-gamma", "0.9"]) == 0
    assert cli.main(["sites", "cyclic_weight_transfer", *base, "--evaluate", "last_cycle"]) == 0
    cyclic, fedavg, fine_tuning, fedprox, ewc, last_cycle = calls
    assert last_cycle["options"] == {"epochs_per_visit": 3, "evaluate": "last_cycle"}
    assert fedprox["options"] == {"local_epochs": 3, "proximal_mu": 0.5}
    assert (ewc["strategy"], ewc["options"]) == ("ewc", {"ewc_lambda": 2.0, "gamma": 0.9})
    assert cyclic["datasets"] == ["901", "Dataset902_b"]
    assert (cyclic["rounds"], cyclic["epochs"], cyclic["options"]) == (4, 3, {"epochs_per_visit": 3})
    assert (fedavg["rounds"], fedavg["options"]) == (2, {"local_epochs": 3})
    assert (fine_tuning["epochs"], fine_tuning["options"]) == (3, None)
    assert "fine_tuning visits every site once; --rounds is ignored" in capsys.readouterr().err
