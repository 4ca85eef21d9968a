"""Numbers as a reader wants them: counts, MMACs and durations."""

import math

from nas_mtl import units


def test_counts_macs_and_durations_read_like_a_paper():
    assert [units.count(x) for x in (850, 175_000, 1_234_567, 2.5e9, math.inf)] == ["850", "175K", "1.23M", "2.5G", "—"]
    assert [units.mmacs(x) for x in (12_345_678, 52_100)] == ["12.3", "0.0521"]
    assert [units.seconds(x) for x in (42.13, 89.99, 200, 7200, math.nan)] == [
        "42.1 s",
        "90.0 s",
        "3.3 min",
        "2.0 h",
        "—",
    ]
