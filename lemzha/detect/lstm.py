"""torch detectors (offline only; the operator never imports this module): an LSTM classifier over the last few
bins of selected window features, in the spirit of the RARE notebook's LSTM, and an LSTM autoencoder baseline
trained to reconstruct normal training sequences. Both are small (hidden 16, one layer) so a fold trains in seconds
on one CPU thread."""

from __future__ import annotations

import numpy as np

from lemzha.detect.base import DetectionData, EcdfCalibrator, clip_scores
from lemzha.detect.features import window_features
from lemzha.detect.supervised import FeatureDetector

SEQ_BINS = 8


def sequences(x: np.ndarray, length: int = SEQ_BINS) -> np.ndarray:
    """(T, F) -> (T, length, F): row t holds bins t-length+1 .. t (zero-padded before the first bin)."""
    t, f = x.shape
    padded = np.vstack([np.zeros((length - 1, f), dtype=x.dtype), x])
    idx = np.arange(t)[:, None] + np.arange(length)[None, :]
    return padded[idx]


class _SequenceDetector(FeatureDetector):
    epochs = 8
    hidden = 16
    batch = 256
    lr = 3e-3

    def fit(self, train: DetectionData | None) -> _SequenceDetector:
        # Rows are whole sequences, built per stream so that a sequence never spans two streams.
        self.fallback = None
        if train is None:
            return self._fallback()
        from sklearn.preprocessing import StandardScaler

        from lemzha.detect.features import FeatureSelector

        feats, ys, masks = [], [], []
        for stream in train.streams:
            if stream.labels is None or not stream.train_mask().any():
                continue
            feats.append(window_features(stream.values))
            ys.append(np.asarray(stream.labels, dtype=np.int64))
            masks.append(stream.train_mask())
        if not feats:
            return self._fallback()
        x_rows = np.vstack([f[m] for f, m in zip(feats, masks, strict=True)])
        y_rows = np.concatenate([y[m] for y, m in zip(ys, masks, strict=True)])
        if self.supervised and len(np.unique(y_rows)) < 2:
            return self._fallback()
        self.selector = FeatureSelector(self.k_features, seed=self.seed).fit(x_rows, y_rows)
        self.scaler = StandardScaler().fit(self.selector.transform(x_rows))
        seqs = np.vstack([sequences(self.scaler.transform(self.selector.transform(f)).astype(np.float32))[m]
                          for f, m in zip(feats, masks, strict=True)])
        self._train(seqs, y_rows)
        return self

    def _fallback(self):
        from lemzha.detect.zeroshot import RobustZDetector

        self.fallback = RobustZDetector()
        return self

    def score(self, values: np.ndarray) -> np.ndarray:
        if self.fallback is not None:
            return self.fallback.score(values)
        import torch

        seqs = torch.from_numpy(sequences(self.transform(values).astype(np.float32)))
        self.net.eval()
        with torch.no_grad():
            raw = self._raw(seqs).numpy()
        return clip_scores(self._calibrate(raw))


class LstmClassifierDetector(_SequenceDetector):
    """LSTM(hidden 16) over the last 8 bins -> linear -> sigmoid; BCE with the positive class up-weighted."""

    name = "lstm"

    def _train(self, seqs: np.ndarray, y: np.ndarray) -> None:
        import torch
        from torch import nn

        torch.manual_seed(self.seed)
        self.net = _LstmHead(seqs.shape[2], self.hidden, seqs.shape[2], autoencoder=False)
        pos = max(1, int(y.sum()))
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y) - pos) / pos, dtype=torch.float32))
        _fit(self.net, torch.from_numpy(seqs), torch.from_numpy(y.astype(np.float32)), loss_fn, self)

    def _raw(self, seqs):
        import torch

        return torch.sigmoid(self.net(seqs))

    def _calibrate(self, raw):
        return raw


class LstmAutoencoderDetector(_SequenceDetector):
    """LSTM encoder (hidden 16) -> last state -> LSTM decoder reconstructing the 8-bin sequence, trained on normal
    training sequences only; the score is the empirical CDF of the reconstruction error over those sequences."""

    name = "lstm_ae"
    supervised = False

    def _train(self, seqs: np.ndarray, y: np.ndarray) -> None:
        import torch
        from torch import nn

        torch.manual_seed(self.seed)
        normal = seqs[y == 0] if (y == 0).any() else seqs
        self.net = _LstmHead(seqs.shape[2], self.hidden, seqs.shape[2], autoencoder=True)
        x = torch.from_numpy(normal)
        _fit(self.net, x, x, nn.MSELoss(), self)
        self.net.eval()
        with torch.no_grad():
            self.calibrator = EcdfCalibrator().fit(self._raw(x).numpy())

    def _raw(self, seqs):
        return ((self.net(seqs) - seqs) ** 2).mean(dim=(1, 2))

    def _calibrate(self, raw):
        return self.calibrator(raw)


def _fit(net, x, y, loss_fn, cfg) -> None:
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch):
            idx = order[i : i + cfg.batch]
            opt.zero_grad()
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()


def _LstmHead(n_in: int, hidden: int, n_out: int, autoencoder: bool):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.LSTM(n_in, hidden, batch_first=True)
            if autoencoder:
                self.decoder = nn.LSTM(hidden, hidden, batch_first=True)
                self.out = nn.Linear(hidden, n_out)
            else:
                self.out = nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, (last, _) = self.encoder(x)
            if not autoencoder:
                return self.out(h[:, -1]).squeeze(-1)
            rep = last[-1].unsqueeze(1).expand(-1, x.shape[1], -1)
            d, _ = self.decoder(rep)
            return self.out(d)

    return Net()
