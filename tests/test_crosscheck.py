"""Cross-check of the raw Nezha loader against lemzha-k's processed copy of the same faults.

lemzha-k is never trained or evaluated on; it only confirms that our binning reads the same samples.
"""

import numpy as np
import pytest

from lemzha.catalog import METRIC_NAMES
from offline.data import lemma


@pytest.mark.parametrize("lemzhak_id", ["20220823_nezha_5", "20230129_nezha_3", "20230130_nezha_7"])
def test_raw_loader_matches_lemzhak_where_both_have_samples(prepared, lemzhak_root, lemzhak_id):
    day, _, index = lemzhak_id.split("_")
    ours = prepared.load(f"nezha/{day}_{int(index):02d}")
    bins, pods, metrics, values = lemma.load_metrics(lemzhak_root, lemzhak_id)
    assert set(pods) == set(ours.pods)
    our_bins = {t: i for i, t in enumerate(ours.bin_starts)}
    compared = matched = 0
    for t_idx, t in enumerate(bins):
        if t not in our_bins:
            continue
        for m_idx, metric in enumerate(metrics):
            m = ours.metrics.index(metric)
            for p_idx, pod in enumerate(pods):
                theirs = values[t_idx, p_idx, m_idx]
                mine = ours.values[our_bins[t], ours.pods.index(pod), m]
                if np.isnan(theirs) or np.isnan(mine):
                    continue
                compared += 1
                matched += bool(np.isclose(mine, theirs, rtol=1e-4, atol=1e-6))
    assert compared > 500
    assert matched / compared > 0.98, f"{matched}/{compared} samples agree"
    assert set(metrics) <= set(METRIC_NAMES)
