"""Training loop and the model ranker. Plain functions; the offline CLIs orchestrate them.

Augmentation: a random crop offset (the onset moves inside the crop), onset jitter, random cAdvisor-only metric
subsets (so clusters without a mesh still work), noise, bin masking and service-order shuffling.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from lemzha import inference
from lemzha.catalog import METRIC_NAMES
from lemzha.features import CADVISOR_METRICS, Crop, Prepared, crop, prepare
from lemzha.inference import LogitsFn
from lemzha.ranking import Ranking
from lemzha.scenario import Scenario
from lemzha.text import TextEmbedder, service_name_text
from offline.train.jsonable import JsonFields

# The transformer's padding-mask fast path warns about nested tensors on every eval call.
warnings.filterwarnings("ignore", message=".*nested tensors.*")


@dataclass(frozen=True)
class TrainParams(JsonFields):
    epochs: int = 30
    lr: float = 2e-3
    weight_decay: float = 1e-2
    batch_size: int = 8  # scenarios per optimiser step
    crop_bins: int = 20
    noise_std: float = 0.05
    bin_mask_prob: float = 0.1
    cadvisor_only_prob: float = 0.2
    onset_jitter: int = 1
    grad_clip: float = 1.0
    label_smoothing: float = 0.0


@dataclass
class InputOptions(JsonFields):
    """Ablation switches, applied identically in training and ranking."""

    use_logs: bool = True
    use_metrics: bool = True
    neutral_names: bool = False
    use_traces: bool = False  # per-service trace features (span calls and latencies)
    use_graph: bool = False  # with use_traces: message passing over the call edges (edge requests and latency)


def to_tensors(c: Crop, options: InputOptions) -> tuple[torch.Tensor, ...]:
    """The model's inputs for one crop: 6 tensors, plus traces, edge_pairs and edge_traces with use_traces."""
    metrics = torch.from_numpy(c.metrics).permute(1, 0, 2).contiguous()  # (P, W, F)
    valid = torch.from_numpy(c.pod_valid).T.contiguous()
    if not options.use_metrics:
        metrics = torch.zeros_like(metrics)
        valid = torch.zeros_like(valid)
    base = (
        metrics,
        valid,
        torch.tensor(c.onset_pos, dtype=torch.long),
        torch.from_numpy(c.logs),
        torch.from_numpy(c.names),
        torch.from_numpy(c.pod_service),
    )
    if not options.use_traces:
        return base
    if c.traces is None:
        raise ValueError("use_traces needs a crop made with use_traces=True")
    return (*base, torch.from_numpy(c.traces), torch.from_numpy(c.edge_pairs), torch.from_numpy(c.edge_traces))


class PreparedCache:
    """Crop-independent preparation, once per scenario window (labels are never read)."""

    def __init__(self, embedder: TextEmbedder, neutral_names: bool = False) -> None:
        self.embedder = embedder
        self.neutral_names = neutral_names
        self._items: dict[tuple, Prepared] = {}
        self._neutral = embedder.embed([service_name_text("service")])[0] if neutral_names else None

    def __call__(self, scenario: Scenario) -> Prepared:
        key = (scenario.id, scenario.start, scenario.n_bins, len(scenario.logs))
        if key not in self._items:
            prep = prepare(scenario, self.embedder)
            if self._neutral is not None:
                prep.name_vectors = np.broadcast_to(self._neutral, prep.name_vectors.shape).copy()
            self._items[key] = prep
        return self._items[key]


def onset_bin_of(scenario: Scenario) -> int:
    if scenario.onset is None:
        raise ValueError(f"{scenario.id}: no onset given")
    return scenario.bin_of(scenario.onset)


def _training_crop(prep: Prepared, onset_bin: int, params: TrainParams, rng: np.random.Generator,
                   use_traces: bool = False) -> Crop:
    W = params.crop_bins
    onset_pos = int(rng.integers(W // 4, 3 * W // 4 + 1))
    jitter = int(rng.integers(-params.onset_jitter, params.onset_jitter + 1)) if params.onset_jitter else 0
    start = onset_bin + jitter - onset_pos
    keep = None
    if rng.random() < params.cadvisor_only_prob:
        keep = np.isin(np.array(METRIC_NAMES), CADVISOR_METRICS)
    c = crop(prep, start, W, onset_pos, metric_keep=keep, use_traces=use_traces)
    if params.noise_std:
        c.metrics = c.metrics + rng.normal(0, params.noise_std, c.metrics.shape).astype(np.float32) * (
            c.metrics != 0
        )
    if params.bin_mask_prob:
        drop = rng.random(c.pod_valid.shape) < params.bin_mask_prob
        c.pod_valid = c.pod_valid & ~drop
        c.metrics = c.metrics * (~drop)[:, :, None]
    return c


def _shuffle_services(c: Crop, target: int, rng: np.random.Generator) -> tuple[Crop, int]:
    S = len(c.names)
    perm = rng.permutation(S)  # new position i holds old service perm[i]
    inverse = np.argsort(perm)
    shuffled = replace(c, logs=c.logs[perm], names=c.names[perm], pod_service=inverse[c.pod_service])
    if c.traces is not None:
        shuffled = replace(shuffled, traces=c.traces[perm], edge_pairs=inverse[c.edge_pairs])
    return shuffled, int(inverse[target])


@dataclass
class TrainResult:
    model: nn.Module
    curve: list[float] = field(default_factory=list)  # validation MRR after each epoch, when asked for


def train_model(
    train: Sequence[tuple[Prepared, int, int]],
    params: TrainParams,
    seed: int,
    options: InputOptions | None = None,
    config=None,
    validate: Callable[[nn.Module], float] | None = None,
) -> TrainResult:
    """`train` holds (prepared scenario, onset bin, root-cause service index)."""
    from offline.train.model import ModelConfig, RCAModel

    options = options or InputOptions()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = RCAModel(config or ModelConfig(), traces=options.use_traces, graph=options.use_traces and options.use_graph)
    optimiser = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    total_steps = max(1, params.epochs * int(np.ceil(len(train) / params.batch_size)))
    warmup = max(1, total_steps // 10)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to 5 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    result = TrainResult(model)
    for _ in range(params.epochs):
        model.train()
        order = rng.permutation(len(train))
        for batch_start in range(0, len(order), params.batch_size):
            optimiser.zero_grad()
            batch = order[batch_start : batch_start + params.batch_size]
            crops, targets = [], []
            for i in batch:
                prep, onset_bin, target = train[i]
                c, target = _shuffle_services(
                    _training_crop(prep, onset_bin, params, rng, options.use_traces), target, rng)
                if not options.use_logs:
                    c.logs = np.zeros_like(c.logs)
                crops.append(to_tensors(c, options))
                targets.append(target)
            # one transformer call for the pods of the whole batch, then per-scenario fusion and softmax
            pods = model.metric_encoder(
                torch.cat([t[0] for t in crops]),
                torch.cat([t[1] for t in crops]),
                torch.cat([t[2].expand(t[0].shape[0]) for t in crops]),
            )
            loss = 0.0
            for tensors, target, own in zip(
                crops, targets, torch.split(pods, [t[0].shape[0] for t in crops]), strict=True
            ):
                logits = model.score(own, *tensors[3:])
                loss = loss + loss_fn(logits[None], torch.tensor([target])) / len(batch)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            optimiser.step()
            schedule.step()
        if validate is not None:
            result.curve.append(validate(model))
    model.eval()
    return result


def torch_logits_fn(model: nn.Module, options: InputOptions) -> LogitsFn:
    """Batched torch logits for `lemzha.inference`: the pods of all crops share one encoder call."""

    @torch.no_grad()
    def logits(crops: Sequence[Crop]) -> list[np.ndarray]:
        model.eval()
        tensors = [to_tensors(c, options) for c in crops]
        pods = model.metric_encoder(
            torch.cat([t[0] for t in tensors]),
            torch.cat([t[1] for t in tensors]),
            torch.cat([t[2].expand(t[0].shape[0]) for t in tensors]),
        )
        split = torch.split(pods, [t[0].shape[0] for t in tensors])
        return [model.score(own, *t[3:]).numpy() for t, own in zip(tensors, split, strict=True)]

    return logits


def service_probabilities(
    model: nn.Module, prep: Prepared, onset_bin: int | None, crop_bins: int, options: InputOptions
) -> np.ndarray:
    return inference.service_probabilities(torch_logits_fn(model, options), prep, onset_bin, crop_bins,
                                           options.use_logs, options.use_traces)


class ModelRanker:
    """The multimodal model behind the common ranker contract."""

    def __init__(
        self,
        params: TrainParams,
        seed: int,
        embedder: TextEmbedder,
        options: InputOptions | None = None,
        config=None,
        name: str = "model",
        cache: PreparedCache | None = None,
    ) -> None:
        self.name = name
        self.params = params
        self.seed = seed
        self.options = options or InputOptions()
        self.config = config
        self.cache = cache or PreparedCache(embedder, neutral_names=self.options.neutral_names)
        self.model: nn.Module | None = None

    def fit(self, train: Sequence[Scenario]) -> None:
        examples = [(self.cache(s.without_label()), onset_bin_of(s), s.services.index(s.label.root_cause_service))
                    for s in train]
        self.model = train_model(examples, self.params, self.seed, self.options, self.config).model

    def rank(self, scenario: Scenario) -> Ranking:
        if self.model is None:
            raise RuntimeError("ModelRanker.rank called before fit")
        prep = self.cache(scenario)
        onset = None if scenario.onset is None else onset_bin_of(scenario)
        probs = service_probabilities(self.model, prep, onset, self.params.crop_bins, self.options)
        return Ranking.from_scores(dict(zip(prep.services, probs.tolist(), strict=True)))

