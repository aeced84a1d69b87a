"""ImageNet-C corruption error (CE) and mean corruption error (mCE).

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), and hendrycks/robustness ``ImageNet-C/test.py``:

    CE_c = sum_{s=1..5} E_{s,c} / sum_{s=1..5} E^{AlexNet}_{s,c}
    mCE  = mean over the 15 benchmark corruptions of CE_c (x100 in percent)

The AlexNet reference is given as its mean error over the five severities (recipe YAML),
so the denominator is 5 x that mean. The unnormalised mean error (mean over corruptions of
the mean over severities) is reported separately. Errors are fractions in [0, 1].
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

SEVERITIES = (1, 2, 3, 4, 5)


def mean_errors(errors: dict[str, dict[int, float]]) -> dict[str, float]:
    """Mean error over the five severities of each corruption."""
    out = {}
    for corruption, by_severity in errors.items():
        missing = [s for s in SEVERITIES if s not in by_severity]
        if missing:
            raise UserError(f"corruption '{corruption}': no error for severities {missing}; ImageNet-C has "
                            "severities 1-5 for every corruption")
        out[corruption] = float(np.mean([by_severity[s] for s in SEVERITIES]))
    return out


def corruption_errors(errors: dict[str, dict[int, float]], alexnet: dict[str, float]) -> dict[str, float]:
    """CE_c for every corruption that has an AlexNet reference error."""
    mean_errors(errors)  # checks that every severity is present
    out = {}
    for corruption, by_severity in errors.items():
        if corruption not in alexnet:
            continue
        total = sum(by_severity[s] for s in SEVERITIES)
        out[corruption] = float(total / (len(SEVERITIES) * float(alexnet[corruption])))
    return out


def mce(errors: dict[str, dict[int, float]], alexnet: dict[str, float]) -> float:
    """Mean CE over the corruptions of ``alexnet`` (all must be present), as a fraction (x100 for %)."""
    missing = sorted(set(alexnet) - set(errors))
    if missing:
        raise UserError(f"mCE needs all {len(alexnet)} benchmark corruptions; missing: {', '.join(missing)}")
    ces = corruption_errors({c: errors[c] for c in alexnet}, alexnet)
    return float(np.mean([ces[c] for c in alexnet]))
