"""CE / mCE against the Hendrycks & Dietterich formula evaluated by hand."""

import pytest

from ssl_bench.errors import UserError
from ssl_bench.metrics.robustness import corruption_errors, mce, mean_errors


def test_mce_by_hand():
    alexnet = {"gaussian_noise": 0.886428, "fog": 0.819324}
    errors = {"gaussian_noise": {1: 0.2, 2: 0.3, 3: 0.4, 4: 0.5, 5: 0.6},
              "fog": {1: 0.1, 2: 0.1, 3: 0.2, 4: 0.2, 5: 0.4},
              "speckle_noise": {1: 0.9, 2: 0.9, 3: 0.9, 4: 0.9, 5: 0.9}}  # extra: no AlexNet value
    ce_noise = (0.2 + 0.3 + 0.4 + 0.5 + 0.6) / (5 * 0.886428)
    ce_fog = (0.1 + 0.1 + 0.2 + 0.2 + 0.4) / (5 * 0.819324)
    ces = corruption_errors(errors, alexnet)
    assert set(ces) == {"gaussian_noise", "fog"}
    assert ces["gaussian_noise"] == pytest.approx(ce_noise, rel=1e-12)
    assert ces["fog"] == pytest.approx(ce_fog, rel=1e-12)
    assert mce(errors, alexnet) == pytest.approx((ce_noise + ce_fog) / 2, rel=1e-12)
    assert 100 * mce(errors, alexnet) == pytest.approx(100 * (0.4 / 0.886428 + 0.2 / 0.819324) / 2)
    assert mean_errors(errors)["fog"] == pytest.approx(0.2)


def test_missing_severity_or_corruption_is_a_user_error():
    with pytest.raises(UserError, match="severities"):
        mean_errors({"fog": {1: 0.1, 2: 0.1}})
    with pytest.raises(UserError, match="missing: fog"):
        mce({"gaussian_noise": {s: 0.1 for s in range(1, 6)}}, {"gaussian_noise": 0.5, "fog": 0.5})
