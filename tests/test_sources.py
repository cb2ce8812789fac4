"""The operator's model: the bundle when it verifies, otherwise the BARO baseline, named as a fallback."""

import shutil

import pytest

from lemzha.baselines import Baro
from lemzha_operator.pipeline import LOGS_UNAVAILABLE, method_name
from lemzha_operator.settings import Settings
from lemzha_operator.sources import Fallback, make_ranker

CASE = "nezha/20230129_05"


def settings(tmp_path, bundle):
    return Settings(prometheus_url="http://p:9090", loki_url=None, bundle_dir=bundle, cache_dir=tmp_path / "cache")


def test_no_bundle_falls_back_to_baro_and_says_so(tmp_path, prepared):
    ranker, problem = make_ranker(settings(tmp_path, None))
    assert isinstance(ranker, Fallback) and problem.reason == "NoBundle"
    assert problem.condition() == {"type": "ModelLoaded", "status": "False", "reason": "NoBundle",
                                   "message": problem.message}
    case = prepared.load(CASE).without_label()
    assert ranker.rank(case).services == Baro().rank(case).services
    assert method_name(ranker, "complete") == "baro (fallback)"
    assert method_name(ranker, LOGS_UNAVAILABLE) == "baro (fallback, metrics only)"


@pytest.mark.slow
def test_a_bundle_with_a_bad_checksum_falls_back(tmp_path, shipped_bundle):
    broken = tmp_path / "bundle"
    shutil.copytree(shipped_bundle, broken)
    model = broken / "MODEL_CARD.md"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    ranker, problem = make_ranker(settings(tmp_path, broken))
    assert isinstance(ranker, Fallback) and problem.reason == "BundleInvalid"
    assert "sha256 does not match" in problem.message and "BARO" in problem.message


def test_a_missing_bundle_directory_falls_back(tmp_path):
    # no bundle at all is NoBundle (what the README promises); BundleInvalid is kept for a bundle that fails checks
    ranker, problem = make_ranker(settings(tmp_path, tmp_path / "nowhere"))
    assert isinstance(ranker, Fallback) and problem.reason == "NoBundle" and "not found" in problem.message
    assert str(tmp_path / "nowhere") in problem.message


@pytest.mark.slow
def test_a_good_bundle_ranks_with_the_evidence_ranker(tmp_path, shipped_bundle):
    ranker, problem = make_ranker(settings(tmp_path, shipped_bundle))
    assert problem is None and ranker.name == "evidence" and method_name(ranker, "complete") == "evidence"
