"""The exported bundle: torch-free ranking, parity with torch, refusal of bad bundles, and the rank CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

from lemzha import inference
from lemzha.bundle import REQUIRED_FILES, BundleError, load_bundle
from lemzha.features import LOG_FEATURES, METRIC_FEATURES, prepare
from lemzha.onnx_ranker import OnnxRanker
from lemzha.ranking import Ranking
from lemzha.scenario_io import load_scenario
from lemzha.text import SentenceTransformerEncoder, TextEmbedder, service_name_text, text_key
from offline.cli import run_cli
from offline.data.store import REPO_ROOT, default_cache_dir
from offline.train.model import ModelConfig, RCAModel
from offline.train.train import InputOptions, torch_logits_fn

OB, TT, LEMMA = "nezha/20220822_00", "nezha/20230129_00", "lemma/20231207"
HEAVY = ("torch", "sentence_transformers", "transformers")


@pytest.fixture(autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def torch_model(model_bundle) -> RCAModel:
    state = torch.load(model_bundle.parent / "torch_state.pt", weights_only=True)
    options = state.get("input_options", {})
    model = RCAModel(ModelConfig(**state["config"]), traces=options.get("use_traces", False),
                     graph=options.get("use_traces", False) and options.get("use_graph", False))
    model.load_state_dict(state["state_dict"])
    return model.eval()


@pytest.fixture(scope="module")
def onnx_ranker(model_bundle) -> OnnxRanker:
    return OnnxRanker(model_bundle)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def clone(bundle: Path, target: Path) -> Path:
    """A bundle copy made of symlinks: cheap, and `rewrite` replaces a link, never the cached original."""
    target.mkdir()
    for path in bundle.iterdir():
        (target / path.name).symlink_to(path)
    return target


def rewrite(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rewrite(path, bytes(data))


def edit_manifest(bundle: Path, **changes) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    meta.update(changes)
    rewrite(bundle / "bundle.json", json.dumps(meta).encode())


# -- fast: export mechanics and the text cache, no bundle needed -------------------------------------------------------
def test_model_exports_with_dynamic_pods_bins_and_services(tmp_path):
    from offline.train.export_model import export_model

    model = RCAModel(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_text=8, d_fusion=16)).eval()
    packed, fastpath = F._in_projection_packed, torch.backends.mha.get_fastpath_enabled()

    def inputs(P: int, W: int, S: int, seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        valid = torch.rand(P, W, generator=g) > 0.3
        valid[:, 0] = True
        return (torch.randn(P, W, METRIC_FEATURES, generator=g), valid, torch.tensor(W // 2),
                torch.randn(S, LOG_FEATURES, generator=g), torch.randn(S, 384, generator=g),
                torch.arange(P) % S)

    export_model(model, inputs(7, 20, 5, 0), tmp_path / "m.onnx")
    assert F._in_projection_packed is packed and torch.backends.mha.get_fastpath_enabled() == fastpath
    graph = onnx.load(tmp_path / "m.onnx").graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["metrics"][:2] == ["pods", "bins"] and dims["names"][0] == "services"
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for P, W, S in [(7, 20, 5), (3, 12, 2), (46, 20, 46), (30, 33, 9)]:  # other sizes than traced, S > P too
        x = inputs(P, W, S, P + W)
        with torch.no_grad():
            expected = model(*x).numpy()
        (got,) = session.run(None, {n: t.numpy() for n, t in zip(names, x, strict=True)})
        assert got.shape == (S,)
        assert np.abs(got - expected).max() < 1e-5, (P, W, S)


class RefusingEncoder:
    def encode(self, texts):
        raise AssertionError(f"seeded texts must not reach the encoder: {texts}")


def test_seeded_vectors_are_served_from_the_cache_and_persist(tmp_path):
    texts = ["error <num> in cart", service_name_text("ts-order-service")]
    vectors = np.eye(2, 384, dtype=np.float32)
    embedder = TextEmbedder(tmp_path, encoder=RefusingEncoder(), sha="ab" * 32)
    assert embedder.seed([text_key(t) for t in texts], vectors) == 2
    assert np.array_equal(embedder.embed(texts[::-1]), vectors[::-1])
    again = TextEmbedder(tmp_path, encoder=RefusingEncoder(), sha="ab" * 32)
    assert again.seed([text_key(texts[0])], vectors[1:]) == 0  # already cached: the cached vector wins
    assert np.array_equal(again.embed(texts), vectors)
    assert (tmp_path / f"{'ab' * 8}.npz").is_file()  # keyed by the encoder sha
    with pytest.raises(ValueError):
        embedder.seed(["k"], np.zeros((1, 3)))


def test_ranker_modules_import_without_torch():
    code = ("import sys, lemzha.text, lemzha.bundle, lemzha.onnx_ranker, offline.rank; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_export_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path, capsys):
    from offline.train.export_model import main

    (tmp_path / "notes.txt").write_text("mine")
    assert run_cli(main, ["--quick", "--out", str(tmp_path)]) == 2
    assert "not a bundle" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_rejects_an_unknown_day(prepared, tmp_path, capsys):
    from offline.train.export_model import main

    assert run_cli(main, ["--quick", "--out", str(tmp_path / "b"), "--days", "2099-01-01"]) == 2
    assert "unknown day" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())


# -- the quick bundle ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_manifest_describes_the_bundle(model_bundle):
    bundle = load_bundle(model_bundle)
    meta = bundle.meta
    assert bundle.sha == hashlib.sha256((model_bundle / "bundle.json").read_bytes()).hexdigest()
    assert set(meta["files"]) == set(REQUIRED_FILES)
    assert meta["features"] == {"metric_features": METRIC_FEATURES, "log_features": LOG_FEATURES, "text_dim": 384}
    training = meta["training"]
    assert training["nezha_days"] == ["2022-08-22", "2022-08-23", "2023-01-29", "2023-01-30"]
    assert training["n_scenarios"] == 105 and training["per_app"] == {"lemma": 4, "onlineboutique": 56,
                                                                       "trainticket": 45}
    assert training["quick"] and meta["params"]["model"]["d_model"] == 16 and training["epochs"] == 1
    assert meta["checks"]["model_max_abs_logit_diff"] <= 1e-4 and meta["checks"]["text_min_cosine"] >= 0.9999
    card = (model_bundle / "MODEL_CARD.md").read_text()
    assert "python -m offline.lodocv" in card and "smoke-test" in card
    # no temp files inside the bundle (a concurrent test run may be building its own next to it, so look inside)
    assert not [p for p in model_bundle.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("onset", [True, False], ids=["onset", "no_onset"])
@pytest.mark.parametrize("scenario_id", [OB, TT, LEMMA])
def test_onnx_logits_match_torch(prepared, torch_model, onnx_ranker, scenario_id, onset):
    scenario = prepared.load(scenario_id).without_label()
    if not onset:
        scenario = scenario.window(8, 24).with_onset(None)
    prep = prepare(scenario, onnx_ranker.embedder)
    crops = inference.crops_for(prep, scenario.onset_bin, onnx_ranker.bundle.crop_bins)
    assert len(crops) == (1 if onset else 7)
    expected = torch_logits_fn(torch_model, InputOptions())(crops)
    got = onnx_ranker.logits_fn(crops)
    assert [g.shape for g in got] == [(len(scenario.services),)] * len(crops)
    assert max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True)) <= 1e-4
    assert float(np.std(expected[0])) > 1e-3  # the logits carry information, so agreement is not trivial


@pytest.mark.slow
def test_onnx_ranking_matches_the_torch_ranking(prepared, torch_model, onnx_ranker):
    """Seeded template vectors are the training ones: the whole ranking agrees, not only the graph."""
    embedder = TextEmbedder(default_cache_dir() / "embeddings")
    for scenario_id in (OB, TT):
        scenario = prepared.load(scenario_id).without_label()
        prep = prepare(scenario, embedder)
        expected = inference.service_probabilities(torch_logits_fn(torch_model, InputOptions()), prep,
                                                   scenario.onset_bin, onnx_ranker.bundle.crop_bins)
        services, got = onnx_ranker.probabilities(scenario)
        assert services == prep.services
        assert np.allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_minilm_onnx_matches_sentence_transformers(prepared, onnx_ranker):
    texts = []
    for scenario_id in (OB, TT):
        scenario = prepared.load(scenario_id)
        templates = sorted(set(scenario.logs["template"].tolist()))
        texts += templates[:15] + sorted(templates, key=len)[-3:]  # the longest are truncated at 256 tokens
        texts += [service_name_text(s) for s in scenario.services[:5]]
    got = onnx_ranker.embedder.encoder.encode(texts)
    expected = SentenceTransformerEncoder().encode(texts)
    cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert len(texts) >= 40 and cosine.min() >= 0.9999


@pytest.mark.slow
def test_bundle_ranks_in_a_torch_free_process(prepared, model_bundle):
    code = """
import json, sys
import lemzha
from lemzha.scenario_io import load_scenario
ranker = lemzha.OnnxRanker(sys.argv[1])
scenario = load_scenario(sys.argv[2], with_label=False)
ranking = ranker.rank(scenario)
_, probs = ranker.probabilities(scenario)
heavy = [m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules]
print(json.dumps({"services": list(ranking.services), "total": float(sum(probs)), "heavy": heavy}))
"""
    result = run("-c", code, str(model_bundle), str(prepared.directory / TT))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert len(out["services"]) == 46 and abs(out["total"] - 1) < 1e-6


@pytest.mark.slow
def test_missing_metrics_are_masked_not_fatal(prepared, onnx_ranker):
    from dataclasses import replace

    from offline.eval.rank import missing_metrics

    full = prepared.load(OB).without_label()
    keep = [full.metrics.index(m) for m in ("cpu_millicores", "memory_bytes")]  # a cluster without a mesh
    partial = replace(full, metrics=tuple(full.metrics[i] for i in keep), values=full.values[:, :, keep])
    partial.values[:, :2, 1] = np.nan  # and two pods that never report memory
    ranking = onnx_ranker.rank(partial)
    assert sorted(ranking.services) == sorted(full.services)
    _, probs = onnx_ranker.probabilities(partial)  # the scores add the call-gap term to these
    assert np.isfinite(ranking.scores).all() and abs(sum(probs) - 1) < 1e-6
    assert len(missing_metrics(partial)) == 16 and "cpu_millicores" not in missing_metrics(partial)


@pytest.mark.slow
def test_flipped_byte_is_refused_naming_the_file(model_bundle, tmp_path):
    bundle = clone(model_bundle, tmp_path / "b")
    flip_byte(bundle / "model.onnx")
    with pytest.raises(BundleError, match=r"model\.onnx"):
        OnnxRanker(bundle)


@pytest.mark.slow
def test_manifest_mismatches_are_refused(model_bundle, tmp_path):
    assert issubclass(BundleError, ValueError)
    bundle = clone(model_bundle, tmp_path / "schema")
    edit_manifest(bundle, schema_version=2)
    with pytest.raises(BundleError, match="schema_version 2"):
        load_bundle(bundle)
    bundle = clone(model_bundle, tmp_path / "catalog")
    meta = json.loads((bundle / "bundle.json").read_text())
    edit_manifest(bundle, metrics=meta["metrics"][::-1])
    with pytest.raises(BundleError, match="metric catalog"):
        load_bundle(bundle)
    bundle = clone(model_bundle, tmp_path / "missing")
    (bundle / "templates.parquet").unlink()
    with pytest.raises(BundleError, match=r"templates\.parquet"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)
    for bad in (-0.1, "0.3", True, None):
        bundle = clone(model_bundle, tmp_path / f"gap-{bad}")
        edit_manifest(bundle, gap_fusion={"weight": bad})
        with pytest.raises(BundleError, match=r"gap_fusion\.weight"):
            load_bundle(bundle)


@pytest.mark.slow
def test_bundle_adds_the_inner_chosen_gap_term(prepared, model_bundle, onnx_ranker):
    """The quick bundle's gap weight was chosen on inner validation over the four days (auto), and OnnxRanker ranks
    by its probabilities plus that weight x the call-gap term."""
    from lemzha.fusion import GAP_WEIGHTS, fuse, gap_term

    gap = load_bundle(model_bundle).meta["gap_fusion"]
    assert gap["chosen"].startswith("inner validation over 2022-08-22") and gap["weight"] in GAP_WEIGHTS
    assert set(gap["inner_mrr_by_weight"]) == {str(w) for w in GAP_WEIGHTS}
    assert gap["weight"] > 0  # the call gap helps on the inner days' network delays even for a 1-epoch model
    delayed = prepared.load("nezha/20230130_00").without_label()  # network delay on ts-contacts-service
    services, probs = onnx_ranker.probabilities(delayed)
    base = Ranking.from_scores(dict(zip(services, probs.tolist(), strict=True)))
    assert onnx_ranker.rank(delayed) == fuse(base, gap_term(delayed), gap["weight"])
    assert onnx_ranker.rank(delayed).top(1) == ("ts-contacts-service",)


def test_export_gap_weight_argument_is_checked(capsys):
    from offline.train.export_model import main as export

    for bad in ("-1", "nan", "heavy"):
        with pytest.raises(SystemExit) as exit_info:
            export(["--out", "/nonexistent/never-written", "--gap-weight", bad])
        assert exit_info.value.code == 2 and "--gap-weight" in capsys.readouterr().err


# -- the rank CLI --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rank_cli_matches_the_in_process_ranker(prepared, model_bundle, onnx_ranker, tmp_path):
    scenario_dir = tmp_path / "scenario"
    shutil.copytree(prepared.directory / TT, scenario_dir)
    (scenario_dir / "label.json").write_text("not json: a ranker that opened the label would fail")
    result = run("-m", "offline.rank", str(scenario_dir), "--bundle", str(model_bundle))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = onnx_ranker.rank(load_scenario(prepared.directory / TT, with_label=False))
    assert out["scenario_id"] == TT and out["method"] == "model"
    assert out["bundle_sha"] == hashlib.sha256((model_bundle / "bundle.json").read_bytes()).hexdigest()
    assert [r["service"] for r in out["ranking"]] == list(expected.services)
    assert [r["rank"] for r in out["ranking"]] == list(range(1, 47))
    assert np.allclose([r["score"] for r in out["ranking"]], expected.scores, rtol=0, atol=1e-9)
    assert out["missing_metrics"] == [] and out["ms"] > 0


@pytest.mark.slow
def test_rank_cli_baseline_needs_no_bundle(prepared):
    result = run("-m", "offline.rank", str(prepared.directory / LEMMA), "--method", "baro")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    scenario = prepared.load(LEMMA)
    assert out["bundle_sha"] is None and out["method"] == "baro"
    assert sorted(r["service"] for r in out["ranking"]) == sorted(scenario.services)
    assert len(out["missing_metrics"]) == 18 - len(scenario.metrics) and "cpu_millicores" not in out["missing_metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no_directory", "not_a_scenario", "no_bundle_given", "bundle_missing",
                                  "bundle_corrupt"])
def test_rank_cli_bad_input_is_one_line_and_exit_2(prepared, model_bundle, tmp_path, case):
    scenario = str(prepared.directory / OB)
    args = {
        "no_directory": [str(tmp_path / "nowhere"), "--bundle", str(model_bundle)],
        "not_a_scenario": [str(tmp_path), "--bundle", str(model_bundle)],
        "no_bundle_given": [scenario],
        "bundle_missing": [scenario, "--bundle", str(tmp_path / "nowhere")],
        "bundle_corrupt": [scenario, "--bundle", str(tmp_path / "b")],
    }[case]
    if case == "bundle_corrupt":
        flip_byte(clone(model_bundle, tmp_path / "b") / "model.onnx")
    expected = {"no_directory": "not a scenario directory", "not_a_scenario": "not a scenario directory",
                "no_bundle_given": "--bundle", "bundle_missing": "bundle not found",
                "bundle_corrupt": "model.onnx"}[case]
    result = run("-m", "offline.rank", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and expected in result.stderr


# -- traces ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("graph", [False, True], ids=["traces", "traces_graph"])
def test_trace_model_exports_with_dynamic_edges_and_matches_torch(prepared, tmp_path, graph):
    """A trace model's ONNX export takes the trace inputs, with services and edges dynamic: parity on TrainTicket
    (55 edges), OnlineBoutique (13) and LEMMA (no traces, no edges), with and without an onset."""
    from lemzha.bundle import model_inputs
    from lemzha.features import crop
    from lemzha.onnx_ranker import onnx_logits_fn, session
    from offline.train.export_model import export_model, model_parity
    from offline.train.train import to_tensors
    from tests.test_model import FakeEmbedder

    torch.manual_seed(0)
    options = InputOptions(use_traces=True, use_graph=graph)
    model = RCAModel(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_text=8, d_fusion=16), traces=True,
                     graph=graph).eval()
    preps = [prepare(prepared.load(i).without_label(), FakeEmbedder()) for i in (TT, OB, LEMMA)]
    assert len(preps[0].edge_pairs) > len(preps[1].edge_pairs) > 0 == len(preps[2].edge_pairs)
    example = crop(preps[1], 10, 20, 10, use_traces=True)
    export_model(model, to_tensors(example, options), tmp_path / "model.onnx")
    names = [i.name for i in session(tmp_path / "model.onnx").get_inputs()]
    assert names == [n for n in model_inputs(True) if graph or not n.startswith("edge_")]
    checks = model_parity(model, tmp_path / "model.onnx", preps, 20, options)
    assert checks["model_max_abs_logit_diff"] <= 1e-4 and checks["model_crops"] > 3
    # the trace inputs matter: other traces, other logits
    c = crop(preps[0], 10, 20, 10, use_traces=True)
    logits = onnx_logits_fn(session(tmp_path / "model.onnx"), True)
    base = logits([c])[0]
    c.traces = c.traces + 1.0
    assert np.abs(logits([c])[0] - base).max() > 1e-4
    with pytest.raises(ValueError, match="inputs"):
        onnx_logits_fn(session(tmp_path / "model.onnx"), False)


@pytest.mark.slow
def test_trace_bundle_ranks_with_onnx_like_torch(prepared, tmp_path):
    """A bundle exported with traces and the graph part: bundle.json records the inputs, OnnxRanker feeds the trace
    tensors and ranks like the torch model it was exported from."""
    from dataclasses import replace as dc_replace

    from lemzha.bundle import TRACE_INPUTS
    from offline.train.export_model import QUICK_MODEL, build_bundle
    from offline.train.train import TrainParams

    scenarios = [prepared.load(i) for i in (TT, "nezha/20230129_05", OB, "nezha/20220822_03", LEMMA)]
    options = InputOptions(use_traces=True, use_graph=True)
    embedder = TextEmbedder(default_cache_dir() / "embeddings")
    result = build_bundle(tmp_path / "b", scenarios, ModelConfig(**QUICK_MODEL), dc_replace(TrainParams(), epochs=1),
                          0, embedder, quick=True, options=options)
    assert result.manifest["input_options"]["use_traces"] and result.manifest["checks"][
        "model_max_abs_logit_diff"] <= 1e-4
    ranker = OnnxRanker(tmp_path / "b")
    assert ranker.bundle.use_traces
    assert {i.name for i in ranker.model.get_inputs()} >= set(TRACE_INPUTS)
    for scenario_id in (TT, OB):
        scenario = prepared.load(scenario_id).without_label()
        prep = prepare(scenario, embedder)
        expected = inference.service_probabilities(torch_logits_fn(result.model, options), prep, scenario.onset_bin,
                                                   ranker.bundle.crop_bins, use_traces=True)
        services, got = ranker.probabilities(scenario)
        assert services == prep.services and np.allclose(got, expected, rtol=0, atol=1e-5)
