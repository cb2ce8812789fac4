"""offline.data.renaming.tiled: a namespace copied k times, for the scale benchmark."""

from __future__ import annotations

import numpy as np
import pytest

from offline.data.renaming import tiled


def test_tiled_copies_every_pod_service_log_and_trace(prepared) -> None:
    case = prepared.load("nezha/20230129_05").without_label()
    three = tiled(case, 3)
    assert len(three.pods) == 3 * len(case.pods) and len(set(three.pods)) == len(three.pods)
    assert len(three.services) == 3 * len(case.services)
    assert set(case.services) | {f"{s}-c2" for s in case.services} <= set(three.services)
    np.testing.assert_array_equal(three.values[:, 2 * len(case.pods):, :], case.values)
    assert len(three.logs) == 3 * len(case.logs) and len(three.edges) == 3 * len(case.edges)
    copy2 = three.edges[three.edges["client"].str.endswith("-c2")]
    assert copy2["server"].str.endswith("-c2").all() and len(copy2) == len(case.edges)
    assert tiled(case, 1).pods == case.pods
    with pytest.raises(ValueError):
        tiled(case, 0)
