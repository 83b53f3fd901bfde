"""Where does the mixing weight x (lambda1 = 1 - x, lambda2 = x) change importance's ranking?
MLP 784-50-30-10 on 12,000 MNIST images, Adam 1e-3, batch 128, after 2 warm-up epochs; one
measuring epoch (Alg. 1 steps 2-8) feeds the meters; then for each x: which neurons a 25% round
removes, against pure C_avg (x=0) and pure C_max (x=1)."""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

from study.data import load_dataset
from study.methods.importance import measuring
from study.trainable import build_method

data = load_dataset("mnist", sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
xs = [0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]
out = []
for seed in range(3):
    torch.manual_seed(seed)
    cfg = {"method": "importance", "model": "mlp50_30", "seed": seed, "epochs": 12, "warmup_epochs": 2,
           "train_subset": 12000, "prune_fraction": 0.25, "target_fraction": 0.5}
    m = build_method(cfg, data)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_x), generator=g)[:12000]
    X, Y = data.train_x[idx], data.train_y[idx]
    opt = torch.optim.Adam(m.model.parameters(), 1e-3)
    for ep in range(3):
        perm = torch.randperm(len(X), generator=g)
        meas = measuring(m.model.head, 1e-12) if ep == 2 else None
        meters = meas.__enter__() if meas else None
        for s in range(0, len(X), 128):
            b = perm[s:s + 128]
            loss = F.cross_entropy(m.model(X[b]), Y[b]); opt.zero_grad(); loss.backward(); opt.step()
        if meas: meas.__exit__(None, None, None)
    for name, mt in meters.items():
        ca, cm = mt.c_avg(), mt.c_max()
        n = len(ca); k = n - round(0.25 * n)  # kept
        def kept(x):
            sc = (1 - x) * ca + x * cm
            return set(torch.argsort(sc, descending=True, stable=True)[:k].tolist())
        k0, k1 = kept(0.0), kept(1.0)
        row = {"seed": seed, "layer": name, "n": n, "c_avg_mean": float(ca.mean()), "c_max_mean": float(cm.mean()),
               "ratio": float(ca.mean() / cm.mean()),
               "removed_differs_from_avg": {x: len(kept(x) - k0) for x in xs},
               "removed_differs_from_max": {x: len(kept(x) - k1) for x in xs},
               "spearman_avg_max": float(np.corrcoef(ca.argsort().argsort(), cm.argsort().argsort())[0, 1])}
        out.append(row); print(json.dumps(row), flush=True)
