import numpy as np

from cprfa.eval.metrics import nme, summarize, yaw_bucket


def test_yaw_buckets_close_on_the_right_and_ignore_the_sign():
    assert yaw_bucket([0.0, -30.0, 30.01, 60.0, -60.5, 90.0, 120.0]).tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_nme_normalizes_by_the_target_box_and_summary_counts_failures():
    target = np.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 40.0]]])  # box 10 × 40: size 20
    assert np.allclose(nme(target + [2.0, 0.0], target), [10.0])
    summary = summarize(np.array([1.0, 3.0, 12.0, 2.0]))
    assert summary["images"] == 4 and summary["failure_rate"] == 25.0 and summary["median"] == 2.5
