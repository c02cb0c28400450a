"""A PyTorch reference of the same models, structured as the original PyTorch code
(members in an nn.ModuleList run in a Python loop, BatchNorm1d, torch.optim), used
only by the benchmark to measure the speed-up. Needs `torch` (not a requirement).

It times the training step alone on tensors already in memory; the original also
ran PIL transforms per image in DataLoader workers, so the ratio measured against
this reference is a lower bound on the speed-up over the original.
"""

from __future__ import annotations

import math
import statistics
import time

from jaxcollective.config import Config, collective_dims
from jaxcollective.model.networks import member_widths


def _torch():
    import torch
    from torch import nn

    return torch, nn


def _member(nn, din, hidden, dout, rate):
    layers, dims = [], [din, *hidden]
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        if i < len(hidden) - 1:
            layers.append(nn.Dropout(rate))
    layers.append(nn.Linear(dims[-1], dout))
    return nn.Sequential(*layers)


def _encoder(nn, din, dout, rate):
    hid = int(math.sqrt(din * dout))
    return nn.Sequential(
        nn.Linear(din, hid), nn.BatchNorm1d(hid), nn.ReLU(), nn.Dropout(rate), nn.Linear(hid, dout)
    )


def build_torch_model(cfg: Config, hidden_dims=None):
    torch, nn = _torch()
    info = cfg.dataset_info
    if cfg.model_type != "collective":
        residual = "resnet" in cfg.model_type

        class Baseline(nn.Module):
            def __init__(self):
                super().__init__()
                dims = [info.input_dim, *hidden_dims]
                self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
                self.bn = nn.ModuleList(nn.BatchNorm1d(b) for b in hidden_dims)
                self.skip = nn.ModuleList(
                    nn.Linear(a, b) if residual and a != b else nn.Identity()
                    for a, b in zip(dims, dims[1:])
                )
                self.drop = nn.Dropout(cfg.baseline_dropout)
                self.out = nn.Linear(dims[-1], info.num_classes)

            def forward(self, x):
                for fc, bn, skip in zip(self.fc, self.bn, self.skip):
                    y = bn(fc(x))
                    x = self.drop(torch.relu(y + skip(x) if residual else y))
                return self.out(x)

        return Baseline()

    d = collective_dims(cfg)

    class Collective(nn.Module):
        def __init__(self):
            super().__init__()
            vary_e = cfg.vary_expert_architectures and d.n_experts >= 2
            vary_a = cfg.vary_analyst_architectures and d.n_analysts >= 2
            self.experts = nn.ModuleList(
                _member(
                    nn,
                    d.input_dim,
                    member_widths(cfg.expert_hidden, i % 4 if vary_e else 0),
                    cfg.expert_output,
                    0.2,
                )
                for i in range(d.n_experts)
            )
            self.expert_encoder = _encoder(
                nn, d.n_experts * cfg.expert_output, d.expert_encoder_output_dim, 0.1
            )
            self.analysts = nn.ModuleList(
                _member(
                    nn,
                    d.analyst_input_dim,
                    member_widths(cfg.analyst_hidden, i % 4 if vary_a else 0),
                    cfg.analyst_output,
                    0.2,
                )
                for i in range(d.n_analysts)
            )
            self.analyst_encoder = _encoder(
                nn, d.n_analysts * cfg.analyst_output, d.collective_input_dim, 0.1
            )
            cid = d.collective_input_dim
            if cfg.collective_version == "simple_mlp":
                hid = max(int(cid * cfg.collective_hidden_scale), 2 * d.num_classes)
                self.head = nn.Sequential(
                    nn.Linear(cid, hid), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hid, d.num_classes)
                )
            else:
                enc = max(int(cid * cfg.c_collective), 2 * d.num_classes)
                hid = max(int(enc * cfg.collective_hidden_scale), 2 * d.num_classes)
                self.head = nn.Sequential(
                    _encoder(nn, cid, enc, 0.2),
                    nn.Linear(enc, hid),
                    nn.ReLU(),
                    nn.Dropout(0.2),
                    nn.Linear(hid, d.num_classes),
                )

        def forward(self, x):
            e = torch.cat([m(x) for m in self.experts], dim=1)
            a_in = torch.cat([x, self.expert_encoder(e)], dim=1)
            a = torch.cat([m(a_in) for m in self.analysts], dim=1)
            return self.head(self.analyst_encoder(a))

    return Collective()


def count_torch_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def time_torch(cfg: Config, steps: int = 30) -> float:
    """Steady-state training samples/s of the reference (median over `steps`)."""
    torch, nn = _torch()
    from jaxcollective.model.sizing import resolve

    r = resolve(cfg)
    torch.manual_seed(cfg.seed)
    model = build_torch_model(cfg, r.hidden_dims)
    if count_torch_params(model) != r.model_params:  # same architecture, or no comparison
        raise RuntimeError(
            f"PyTorch reference has {count_torch_params(model):,} parameters, "
            f"ours {r.model_params:,}"
        )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(cfg.batch_size, cfg.dataset_info.input_dim)
    y = torch.randint(0, cfg.dataset_info.num_classes, (cfg.batch_size,))
    model.train()
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return cfg.batch_size / statistics.median(times)
