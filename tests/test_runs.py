"""The run-folder protocol: one settings check for every kind of run folder, atomic writes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nas_mtl.runs import check_settings, replace_atomic, settings_diff, write_json_atomic


def test_settings_diff_recurses_and_skips_runtime_keys():
    saved = {"config": {"lr": 0.1, "device": "cuda", "inner": {"a": [1, 2]}}, "tasks": ["a", "b"], "gone": 1}
    now = {"config": {"lr": 0.2, "device": "cpu", "inner": {"a": (1, 2)}}, "tasks": ("a", "b"), "new": 2}
    assert settings_diff(saved, now) == [("config.lr", 0.1, 0.2), ("gone", 1, None), ("new", None, 2)]
    assert settings_diff(saved, now, ignore=())[0] == ("config.device", "cuda", "cpu")


def test_check_settings_is_one_line_naming_each_key():
    with pytest.raises(ValueError) as err:
        check_settings({"a": 1, "b": {"c": "x" * 50}}, {"a": 2, "b": {"c": "y" * 50}}, "run/x.pt", "checkpoint")
    assert str(err.value) == (
        "run/x.pt: this checkpoint was made with other settings: a (1 -> 2), b.c (str of 50 -> str of 50); "
        "use a new run folder or the same settings"
    )
    check_settings({"a": 1, "device": "cuda"}, {"a": 1, "device": "cpu"}, "x")  # a device change is a resume


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "row.json"
    write_json_atomic({"v": 1}, path)

    def dies(tmp):
        tmp.write_text('{"v": 2')  # half written
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomic(path, dies)
    assert json.loads(path.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["row.json"]


def test_every_run_folder_kind_accepts_a_device_change_and_refuses_a_setting_change(tmp_path):
    """Score tables (exhaustive search) used to refuse a resume on another device; now all kinds share one rule."""
    from nas_mtl.search.exhaustive import ScoreTable
    from nas_mtl.search.proxy import ProxyConfig
    from nas_mtl.train import TrainConfig

    proxy = ProxyConfig(
        warmstart=TrainConfig(epochs=1, device="cpu"), finetune=TrainConfig(epochs=2), inherit=True, subset=1.0
    )
    ScoreTable(tmp_path / "s.jsonl", {"proxy": proxy.to_dict()})
    moved = dataclasses.replace(proxy, warmstart=dataclasses.replace(proxy.warmstart, device="cuda"))
    ScoreTable(tmp_path / "s.jsonl", {"proxy": moved.to_dict()})
    with pytest.raises(ValueError, match=r"score table was made with other settings: proxy\.subset \(1\.0 -> 0\.5\)"):
        ScoreTable(tmp_path / "s.jsonl", {"proxy": dataclasses.replace(proxy, subset=0.5).to_dict()})
