"""Model behaviour on small synthetic scenarios: finite outputs, label-free ranking, the no-onset rule."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from lemzha.features import METRIC_FEATURES, crop, prepare
from lemzha.scenario import Label, Scenario
from offline.train.model import ModelConfig, RCAModel, fuse_pods
from offline.train.train import (
    InputOptions,
    ModelRanker,
    PreparedCache,
    TrainParams,
    service_probabilities,
    train_model,
)

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


# -- traces ------------------------------------------------------------------------------------------------------------
CHAIN = (("alpha", "bravo"), ("bravo", "charlie"), ("charlie", "delta"))  # caller -> callee


def _cumulative(calls: float, bucket: int) -> list[float]:
    from lemzha.catalog import BUCKET_COLUMNS

    return [0.0] * bucket + [calls] * (len(BUCKET_COLUMNS) - bucket)


def traced(cause: str, seed: int, n_bins: int = 40, fault_bin: int = 20, covered=range(14, 26)) -> Scenario:
    """Flat metrics; the cause and its callers (upstream in the chain) get slow after the fault, the callers only
    because they wait on it: the deepest anomalous callee is the cause. Bins outside `covered` have no traces."""
    from lemzha.catalog import BUCKET_COLUMNS

    rng = np.random.default_rng(seed)
    base = synthetic(cause, seed, n_bins, fault_bin)
    values = rng.normal(100, 2, size=base.values.shape).astype(np.float32)
    depth = {s: i for i, s in enumerate(SERVICES)}
    slow = {s for s in SERVICES if depth[s] <= depth[cause]}
    rows, edges = [], []
    for b in range(n_bins):
        is_covered = b in covered
        for s in SERVICES:
            bucket = 8 if (b >= fault_bin and s in slow) else 5  # 400 ms against 50 ms
            calls = float(rng.integers(20, 30))
            row = {"bin": b, "service": s, "covered": is_covered, "trace_calls": calls,
                   "duration_sum_ms": calls * (300.0 if bucket == 8 else 40.0),
                   **dict(zip(BUCKET_COLUMNS, _cumulative(calls, bucket), strict=True))}
            if not is_covered:
                row.update({k: np.nan for k in ("trace_calls", "duration_sum_ms", *BUCKET_COLUMNS)})
            rows.append(row)
        for client, server in CHAIN:
            bucket = 8 if (b >= fault_bin and server in slow) else 5
            edge = {"bin": b, "client": client, "server": server, "covered": is_covered, "edge_requests": 10.0,
                    "duration_sum_ms": 100.0, "client_duration_sum_ms": 130.0,
                    **dict(zip(BUCKET_COLUMNS, _cumulative(10.0, bucket), strict=True))}
            if not is_covered:
                edge.update({k: np.nan for k in ("edge_requests", "duration_sum_ms", "client_duration_sum_ms",
                                                 *BUCKET_COLUMNS)})
            edges.append(edge)
    return Scenario(
        id=f"tr/{cause}-{seed}", app="syn", namespace="syn", start=START, pods=base.pods,
        pod_service=base.pod_service, metrics=base.metrics, values=values, logs=None, onset=base.onset,
        label=base.label, service_metrics=pd.DataFrame(rows), edges=pd.DataFrame(edges),
    )


def test_trace_features_use_the_crops_own_pre_onset_bins_and_mask_missing_ones():
    from lemzha.features import SERVICE_TRACE_FEATURES_N, SERVICE_TRACE_SERIES

    s = traced("charlie", 0)
    prep = prepare(s, FakeEmbedder())
    assert prep.edge_pairs.tolist() == [[0, 1], [1, 2], [2, 3]]
    assert np.isnan(prep.service_traces[:14]).all() and np.isnan(prep.edge_traces[30:]).all()
    c = crop(prep, start=10, length=20, onset_pos=10, use_traces=True)
    assert c.traces.shape == (4, SERVICE_TRACE_FEATURES_N) and np.isfinite(c.traces).all()
    assert np.isfinite(c.edge_traces).all() and c.edge_pairs.shape == (3, 2)
    K = len(SERVICE_TRACE_SERIES)
    p95_peak = c.traces[:, K + SERVICE_TRACE_SERIES.index("trace_latency_p95_ms")]
    assert p95_peak[:3].min() > 5 > p95_peak[3]  # alpha, bravo, charlie slow; delta not
    assert (c.traces[:, 3 * K : 3 * K + 2] == 1).all()  # covered before and after the onset
    assert np.isclose(c.traces[0, 3 * K + 2], 0.6)  # 6 of the 10 bins after the onset are covered
    # a crop whose pre-onset bins are all uncovered has no deviation, and says so in its mask
    late = crop(prep, start=4, length=20, onset_pos=10, use_traces=True)  # covered from bin 14 on only
    assert (late.traces[:, : 2 * K] == 0).all() and (late.traces[:, 3 * K] == 0).all()
    assert (late.traces[:, 3 * K + 1] == 1).all()
    # no traces at all (LEMMA): zeros, no edges
    plain = crop(prepare(synthetic("alpha", 1), FakeEmbedder()), 10, 20, 10, use_traces=True)
    assert not plain.traces.any() and plain.edge_pairs.shape == (0, 2)
    assert crop(prep, 10, 20, 10).traces is None  # traces only when asked for


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("n_edges", [0, 3])
def test_graph_model_is_finite_with_and_without_edges(training, n_edges):
    from lemzha.features import EDGE_TRACE_FEATURES_N, SERVICE_TRACE_FEATURES_N

    model = RCAModel(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_text=8, d_fusion=16), traces=True, graph=True)
    model.train(training)
    P, W, S = 3, 10, 4
    args = (torch.randn(P, W, METRIC_FEATURES), torch.ones(P, W, dtype=torch.bool), torch.tensor(5),
            torch.zeros(S, 778), torch.randn(S, 384), torch.tensor([0, 1, 1]))
    traces = torch.randn(S, SERVICE_TRACE_FEATURES_N)
    pairs = torch.tensor(CHAIN_INDEX[:n_edges], dtype=torch.long).reshape(-1, 2)
    logits = model(*args, traces, pairs, torch.randn(n_edges, EDGE_TRACE_FEATURES_N))
    assert torch.isfinite(logits).all() and logits.shape == (S,)
    with pytest.raises(ValueError, match="traces"):
        model(*args)


CHAIN_INDEX = [[0, 1], [1, 2], [2, 3]]


def test_service_shuffle_keeps_edges_on_their_services():
    from offline.train.train import _shuffle_services

    prep = prepare(traced("bravo", 0), FakeEmbedder())
    c = crop(prep, 10, 20, 10, use_traces=True)
    shuffled, target = _shuffle_services(c, 1, np.random.default_rng(3))
    assert np.array_equal(shuffled.names[target], c.names[1])
    for (a, b), (x, y) in zip(c.edge_pairs, shuffled.edge_pairs, strict=True):
        assert np.array_equal(shuffled.names[x], c.names[a]) and np.array_equal(shuffled.names[y], c.names[b])
        assert np.array_equal(shuffled.traces[x], c.traces[a])


@pytest.mark.parametrize("graph", [False, True])
def test_trace_model_learns_a_cause_that_only_traces_show(graph):
    options = InputOptions(use_traces=True, use_graph=graph)
    ranker = ModelRanker(TrainParams(epochs=8, batch_size=4, crop_bins=20), seed=0, embedder=FakeEmbedder(),
                         options=options, config=ModelConfig(d_model=16, n_heads=2, n_layers=1, d_text=8, d_fusion=16))
    ranker.fit([traced(SERVICES[i % 4], i) for i in range(16)])
    s = traced("bravo", 99)
    a, b = ranker.rank(s), ranker.rank(s.without_label())
    assert a.services == b.services and np.allclose(a.scores, b.scores)
    hits = [ranker.rank(traced(c, 100 + i).without_label()).top(1)[0] == c for i, c in enumerate(SERVICES)]
    assert sum(hits) >= 3


def test_prepare_without_traces_leaves_them_out_and_crops_alike():
    s = traced("charlie", 0)
    full, bare = prepare(s, FakeEmbedder()), prepare(s, FakeEmbedder(), traces=False)
    assert full.service_traces is not None and bare.service_traces is None and bare.edge_pairs is None
    a, b = crop(full, 10, 20, 10), crop(bare, 10, 20, 10)  # a model without trace inputs sees the same crop
    assert np.array_equal(a.metrics, b.metrics, equal_nan=True) and np.array_equal(a.logs, b.logs)
