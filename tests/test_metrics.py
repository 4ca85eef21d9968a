import math

import pytest

from nas_mtl.metrics import delta_m


def test_delta_m_closed_form():
    # seg mIoU up 10% (higher better), depth error down 20% (lower better) -> +10 and +20, mean over tasks
    single = {"seg": {"miou": 0.50}, "depth": {"abs_err": 0.50, "rel_err": 0.20}}
    multi = {"seg": {"miou": 0.55}, "depth": {"abs_err": 0.40, "rel_err": 0.22}}
    directions = {"seg": {"miou": True}, "depth": {"abs_err": False, "rel_err": False}}
    # depth: mean of (+20%, -10%) = +5%; overall (10 + 5) / 2
    assert math.isclose(delta_m(multi, single, directions), 7.5)
    assert delta_m(single, single, directions) == 0.0


def test_delta_m_sign_follows_direction():
    single = {"a": {"acc": 0.8}}
    assert delta_m({"a": {"acc": 0.6}}, single, {"a": {"acc": True}}) == pytest.approx(-25.0)
    assert delta_m({"a": {"acc": 0.6}}, single, {"a": {"acc": False}}) == pytest.approx(25.0)


def test_delta_m_errors():
    with pytest.raises(ValueError, match="lack task 'b'"):
        delta_m({"a": {"x": 1.0}}, {"a": {"x": 1.0}}, {"b": {"x": True}})
    with pytest.raises(ValueError, match="is 0"):
        delta_m({"a": {"x": 1.0}}, {"a": {"x": 0.0}}, {"a": {"x": True}})
