"""Model behaviour on small synthetic scenarios: finite outputs, label-free ranking, the no-onset rule."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from lemzha.features import METRIC_FEATURES, crop, prepare
from lemzha.model import ModelConfig, RCAModel, fuse_pods
from lemzha.scenario import Label, Scenario
from lemzha.train import InputOptions, ModelRanker, PreparedCache, TrainParams, service_probabilities, train_model

START = datetime(2023, 1, 29, 8, 0, 0, tzinfo=UTC)
SERVICES = ("alpha", "bravo", "charlie", "delta")


class FakeEmbedder:
    """Deterministic 384-d vectors per text, so model tests need no MiniLM weights."""

    def embed(self, texts):
        out = np.zeros((len(texts), 384), np.float32)
        for i, text in enumerate(texts):
            rng = np.random.default_rng(abs(hash(text)) % 2**32)
            v = rng.normal(size=384)
            out[i] = v / np.linalg.norm(v)
        return out


def synthetic(cause: str, seed: int, n_bins: int = 40, fault_bin: int = 20, with_label: bool = True) -> Scenario:
    rng = np.random.default_rng(seed)
    pods = tuple(f"{s}-5dc8d4f9fd-{suffix}" for s in SERVICES for suffix in ("x2x2x", "z7z7z"))
    values = rng.normal(100, 2, size=(n_bins, len(pods), 2)).astype(np.float32)
    for p, pod in enumerate(pods):
        if pod.startswith(cause):
            values[fault_bin:, p, 0] += 80  # CPU jumps in the root-cause service
    values[::2] = np.nan  # 60 s data on a 30 s grid
    logs = pd.DataFrame(
        {"service": [cause] * 3, "bin": [fault_bin, fault_bin + 1, 5], "template": ["error <num>"] * 2 + ["ok"],
         "count": [5, 7, 1], "level": ["ERROR", "ERROR", "INFO"]}
    )
    onset = START + timedelta(seconds=30 * fault_bin + 5)
    return Scenario(
        id=f"syn/{cause}-{seed}", app="syn", namespace="syn", start=START, pods=pods,
        pod_service={p: p.split("-")[0] for p in pods}, metrics=("cpu_millicores", "memory_bytes"), values=values,
        logs=logs, onset=onset,
        label=Label(cause, tuple(p for p in pods if p.startswith(cause)), "cpu", onset, fault_bin) if with_label
        else None,
    )


@pytest.fixture(autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("training", [True, False])
def test_fully_masked_pod_gives_finite_outputs(training):
    model = RCAModel(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_text=8, d_fusion=16))
    model.train(training)
    P, W = 3, 10
    metrics = torch.randn(P, W, METRIC_FEATURES)
    valid = torch.ones(P, W, dtype=torch.bool)
    valid[1] = False  # one pod has no data at all
    valid[2, :3] = False  # a ragged mask that is not left-aligned (the seed's NaN trigger)
    metrics[1] = 0
    pods = model.metric_encoder(metrics, valid, torch.full((P,), 5))
    assert torch.isfinite(pods).all()
    logits = model(metrics, valid, torch.tensor(5), torch.zeros(2, 778), torch.randn(2, 384), torch.tensor([0, 1, 1]))
    assert torch.isfinite(logits).all() and logits.shape == (2,)


def test_fusion_takes_max_and_mean_per_service():
    pods = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, -1.0]])
    fused = fuse_pods(pods, torch.tensor([0, 0, 1]), 3)
    assert torch.allclose(fused[0], torch.tensor([3.0, 2.0, 2.0, 1.0]))
    assert torch.allclose(fused[1], torch.tensor([5.0, -1.0, 5.0, -1.0]))
    assert torch.allclose(fused[2], torch.zeros(4))  # a service with no pod stays finite and neutral


def test_crop_normalises_from_the_crop_alone_and_never_invents_bins():
    s = synthetic("bravo", 0)
    prep = prepare(s, FakeEmbedder())
    early = crop(prep, start=-5, length=20, onset_pos=10)
    assert np.isfinite(early.metrics).all()
    assert not early.pod_valid[:5].any()  # bins before the scenario start are missing, not zero-filled data
    c = crop(prep, start=10, length=20, onset_pos=10)  # the fault (bin 20) sits at the crop's onset
    # the planted jump shows as a large post-onset deviation on bravo's pods only
    jump = np.abs(c.metrics[10:, :, 0]).max(axis=0)
    bravo = [i for i, p in enumerate(s.pods) if p.startswith("bravo")]
    assert jump[bravo].min() > 5 > np.delete(jump, bravo).max()


@pytest.fixture(scope="module")
def trained():
    train = [synthetic(SERVICES[i % 4], i) for i in range(16)]
    ranker = ModelRanker(TrainParams(epochs=6, batch_size=4, crop_bins=20), seed=0, embedder=FakeEmbedder(),
                         config=ModelConfig(d_model=16, n_heads=2, n_layers=1, d_text=8, d_fusion=16))
    ranker.fit(train)
    return ranker


def test_model_ranking_is_identical_without_the_label(trained):
    s = synthetic("charlie", 99)
    a, b = trained.rank(s), trained.rank(s.without_label())
    assert a.services == b.services and np.allclose(a.scores, b.scores)
    assert abs(sum(a.scores) - 1) < 1e-5  # probabilities


def test_model_learns_the_planted_cause(trained):
    hits = [trained.rank(synthetic(c, 100 + i).without_label()).top(1)[0] == c for i, c in enumerate(SERVICES)]
    assert sum(hits) >= 3


def test_unknown_onset_uses_sliding_crops(trained):
    s = synthetic("delta", 7, fault_bin=14).with_onset(None).without_label()
    prep = trained.cache(s)
    probs = service_probabilities(trained.model, prep, None, 20, InputOptions())
    assert np.isclose(probs.sum(), 1) and prep.services[int(np.argmax(probs))] == "delta"
    assert trained.rank(s).top(1)[0] == "delta"


def test_rank_before_fit_is_an_error():
    with pytest.raises(RuntimeError):
        ModelRanker(TrainParams(), 0, FakeEmbedder()).rank(synthetic("alpha", 1))


def test_training_records_a_validation_curve():
    cache = PreparedCache(FakeEmbedder())
    examples = [(cache(s.without_label()), 20, SERVICES.index(s.label.root_cause_service))
                for s in (synthetic(SERVICES[i % 4], i) for i in range(4))]
    result = train_model(examples, TrainParams(epochs=2, batch_size=2), seed=0,
                         config=ModelConfig(d_model=16, n_heads=2, n_layers=1, d_text=8, d_fusion=16),
                         validate=lambda m: 0.5)
    assert result.curve == [0.5, 0.5]
