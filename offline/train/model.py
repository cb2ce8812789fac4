"""The multimodal root-cause model.

- a per-pod Transformer over the metric series of a crop (a CLS token that is never masked keeps a pod with no
  data finite, in train and eval mode alike)
- frozen MiniLM embeddings of log templates (before/after the onset) and of service names
- pod -> service fusion by MAX and MEAN over a variable number of pods, plus the service's contrast to the others
- a cosine-similarity head between the fused service vector and its name embedding, scaled by a temperature
- optionally a service-level trace encoder, and a graph part: rounds of message passing over the crop's
  call edges (caller -> callee), each message carrying an edge anomaly term; a service also sees the max over its
  callees, so that "anomalous, and no callee more anomalous" (the deepest anomalous callee) can be learned
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lemzha.features import EDGE_TRACE_FEATURES_N, LOG_SCALARS, METRIC_FEATURES, N_METRICS, SERVICE_TRACE_FEATURES_N
from lemzha.text import DIM
from offline.train.jsonable import JsonFields


@dataclass(frozen=True)
class ModelConfig(JsonFields):
    d_model: int = 48  # width of the per-pod metric transformer and of the log encoder's output
    n_heads: int = 4  # attention heads of the metric transformer
    n_layers: int = 2  # its encoder layers
    d_text: int = 32  # MiniLM template embeddings and log scalars are projected to this width
    d_fusion: int = 64  # width of the fusion head and of the name query it is compared with
    dropout: float = 0.1  # in the transformer and the fusion head
    temperature: float = 0.1  # the cosine head's logits are cosine / temperature
    max_bins: int = 64  # positions are relative to the onset, from -max_bins to +max_bins


class MetricEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_bins = cfg.max_bins
        self.inp = nn.Linear(METRIC_FEATURES, cfg.d_model)
        self.position = nn.Embedding(2 * cfg.max_bins + 1, cfg.d_model)  # position relative to the onset
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.n_heads, 2 * cfg.d_model, cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        # direct per-metric summaries of the change after the onset: robust with few training cases
        self.summary = nn.Linear(2 * N_METRICS, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, metrics: torch.Tensor, valid: torch.Tensor, onset_pos: torch.Tensor) -> torch.Tensor:
        """metrics (P, W, F), valid (P, W) bool, onset_pos (P,) long -> (P, d_model). Pods are independent, so
        the pods of several scenarios can share one call."""
        P, W, _ = metrics.shape
        rel = torch.arange(W, device=metrics.device)[None, :] - onset_pos[:, None] + self.max_bins
        x = self.inp(metrics) + self.position(rel.clamp(0, 2 * self.max_bins))
        tokens = torch.cat([self.cls.expand(P, 1, -1), x], dim=1)
        padding = torch.cat([torch.zeros(P, 1, dtype=torch.bool, device=valid.device), ~valid], dim=1)
        encoded = self.encoder(tokens, src_key_padding_mask=padding)[:, 0]
        deviation = metrics[:, :, :N_METRICS].abs()
        after = (rel >= self.max_bins).to(metrics.dtype)[:, :, None]
        peak_after = (deviation * after).amax(dim=1)
        mean_after = (deviation * after).sum(dim=1) / after.sum(dim=1).clamp_min(1.0)
        return self.norm(encoded + self.summary(torch.cat([peak_after, mean_after], dim=1)))


class LogEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.text = nn.Linear(DIM, cfg.d_text)
        self.scalars = nn.Linear(LOG_SCALARS, cfg.d_text)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(3 * cfg.d_text, cfg.d_model), nn.LayerNorm(cfg.d_model))

    def forward(self, logs: torch.Tensor) -> torch.Tensor:
        """logs (S, LOG_FEATURES) -> (S, d_model)."""
        scalars = logs[:, :LOG_SCALARS]
        after = logs[:, LOG_SCALARS : LOG_SCALARS + DIM]
        grown = logs[:, LOG_SCALARS + DIM :]
        return self.out(torch.cat([self.scalars(scalars), self.text(after), self.text(grown)], dim=1))


def fuse_pods(pod_emb: torch.Tensor, pod_service: torch.Tensor, n_services: int) -> torch.Tensor:
    """MAX and MEAN of each service's pods: (P, d), (P,) -> (S, 2d). Written with one-hot algebra so that it
    exports to ONNX with a dynamic number of pods and services."""
    onehot = (pod_service[None, :] == torch.arange(n_services, device=pod_emb.device)[:, None]).to(pod_emb.dtype)
    count = onehot.sum(dim=1, keepdim=True)
    mean = onehot @ pod_emb / count.clamp_min(1.0)
    masked = pod_emb[None, :, :] + (onehot[:, :, None] - 1.0) * 1e4
    maximum = masked.max(dim=1).values * (count > 0).to(pod_emb.dtype)
    return torch.cat([maximum, mean], dim=1)


class TraceEncoder(nn.Module):
    """Per-service trace features -> (S, d); with `graph`, message passing over the call edges."""

    def __init__(self, cfg: ModelConfig, graph: bool, rounds: int = 2) -> None:
        super().__init__()
        d = cfg.d_model
        self.graph = graph
        self.rounds = rounds if graph else 0
        self.node = nn.Sequential(nn.Linear(SERVICE_TRACE_FEATURES_N, d), nn.GELU(), nn.Linear(d, d))
        self.norm = nn.LayerNorm(d)
        if graph:
            self.edge = nn.Sequential(nn.Linear(EDGE_TRACE_FEATURES_N, d), nn.GELU(), nn.Linear(d, d))
            self.from_caller = nn.Linear(d, d)
            self.from_callee = nn.Linear(d, d)
            self.update = nn.Sequential(nn.GELU(), nn.Linear(3 * d, d))
            self.round_norm = nn.LayerNorm(d)

    def forward(self, traces: torch.Tensor, edge_pairs: torch.Tensor, edge_traces: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.node(traces))
        if not self.graph:
            return h
        S = traces.shape[0]
        ids = torch.arange(S, device=traces.device)[:, None]
        to_server = (edge_pairs[:, 1][None, :] == ids).to(h.dtype)  # (S, E): edges into each service
        to_client = (edge_pairs[:, 0][None, :] == ids).to(h.dtype)  # (S, E): edges out of each service
        n_in = to_server.sum(dim=1, keepdim=True)
        n_out = to_client.sum(dim=1, keepdim=True)
        e = self.edge(edge_traces)  # (E, d)
        for _ in range(self.rounds):
            caller = to_client.T @ h  # (E, d) the client's state on each edge
            callee = to_server.T @ h
            m_in = to_server @ (self.from_caller(caller) + e) / n_in.clamp_min(1.0)
            out_msg = self.from_callee(callee) + e
            m_out = to_client @ out_msg / n_out.clamp_min(1.0)
            # max over callees, written with masks (and a floor row) so that it exports with any E, 0 included
            masked = out_msg[None, :, :] + (to_client[:, :, None] - 1.0) * 1e4
            floor = torch.full((S, 1, h.shape[1]), -1e4, dtype=h.dtype, device=h.device)
            m_max = torch.cat([masked, floor], dim=1).max(dim=1).values * (n_out > 0).to(h.dtype)
            h = self.round_norm(h + self.update(torch.cat([m_in, m_out, m_max], dim=1)))
        return h


class RCAModel(nn.Module):
    def __init__(self, cfg: ModelConfig, traces: bool = False, graph: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.metric_encoder = MetricEncoder(cfg)
        self.log_encoder = LogEncoder(cfg)
        self.trace_encoder = TraceEncoder(cfg, graph) if traces else None
        d = cfg.d_model
        width = 8 * d if traces else 6 * d
        self.fusion = nn.Sequential(
            nn.Linear(width, cfg.d_fusion), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.d_fusion, cfg.d_fusion)
        )
        self.name_query = nn.Linear(DIM, cfg.d_fusion)  # its bias is the name-independent "root cause" direction

    def forward(
        self,
        metrics: torch.Tensor,
        valid: torch.Tensor,
        onset_pos: torch.Tensor,
        logs: torch.Tensor,
        names: torch.Tensor,
        pod_service: torch.Tensor,
        traces: torch.Tensor | None = None,
        edge_pairs: torch.Tensor | None = None,
        edge_traces: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One scenario crop -> logits over its S services (onset_pos is a scalar here)."""
        pods = self.metric_encoder(metrics, valid, onset_pos.expand(metrics.shape[0]))
        return self.score(pods, logs, names, pod_service, traces, edge_pairs, edge_traces)

    def score(
        self, pods: torch.Tensor, logs: torch.Tensor, names: torch.Tensor, pod_service: torch.Tensor,
        traces: torch.Tensor | None = None, edge_pairs: torch.Tensor | None = None,
        edge_traces: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encoded pods of one scenario -> logits over its S services."""
        n_services = names.shape[0]
        parts = [fuse_pods(pods, pod_service, n_services), self.log_encoder(logs)]  # (S, 3d)
        if self.trace_encoder is not None:
            if traces is None or edge_pairs is None or edge_traces is None:
                raise ValueError("this model uses traces: pass traces, edge_pairs and edge_traces")
            parts.append(self.trace_encoder(traces, edge_pairs, edge_traces))
        service = torch.cat(parts, dim=1)
        contrast = service - service.mean(dim=0, keepdim=True)
        fused = self.fusion(torch.cat([service, contrast], dim=1))
        query = self.name_query(names)
        cosine = nn.functional.cosine_similarity(fused, query, dim=1, eps=1e-6)
        return cosine / self.cfg.temperature
