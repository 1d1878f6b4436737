"""CPU time to 0.90 test accuracy on Fashion-MNIST, SimpleConvNet, Adam lr 1e-3, batch 100:
dualnet against PyTorch (optional) in one run, on the same machine.

Test accuracy is measured every --eval-every steps; evaluation time is not counted.
Usage: python scripts/time_to_accuracy.py [--target 0.90] [--max-epochs 10] [--out FILE]
"""
import argparse
import json
import os
import sys
import time


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import dualnet as dn  # noqa: E402
from dualnet.data import load_dataset  # noqa: E402


def run_dualnet(data, target, max_epochs, eval_every, seed):
    from dualnet.backend import tune_allocator
    tune_allocator()
    dev = dn.get_device("cpu")
    net = dn.SimpleConvNet(device=dev, seed=seed)
    opt = dn.Adam(1e-3)
    train = dn.BatchSource(data.x_train, data.t_train, dev, "float32", 100)
    test = dn.BatchSource(data.x_test, data.t_test, dev, "float32", 1000, on_device=train.on_device)
    Xte, Tte = test.head(test.num_samples)
    train_s, step, curve = 0.0, 0, []
    for epoch in range(max_epochs):
        batches = train.epoch(seed + epoch)
        while True:
            t0 = time.perf_counter()  # the batch gather is part of the step, as in the trainer
            try:
                xb, tb = next(batches)
            except StopIteration:
                break
            dn.train_step(net, opt, xb, tb)
            dev.synchronize()
            train_s += time.perf_counter() - t0
            step += 1
            if step % eval_every == 0:
                acc = net.accuracy(Xte, Tte)
                curve.append((step, train_s, acc))
                if acc >= target:
                    return {"reached": True, "train_seconds": train_s, "steps": step, "curve": curve}
    return {"reached": False, "train_seconds": train_s, "steps": step, "curve": curve}


def run_torch(data, target, max_epochs, eval_every, seed):
    import torch
    nn = torch.nn
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4320, 100),
                        nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    X, T = torch.from_numpy(data.x_train), torch.from_numpy(data.t_train)
    Xte, Tte = torch.from_numpy(data.x_test), torch.from_numpy(data.t_test)
    g = torch.Generator().manual_seed(seed)
    train_s, step, curve = 0.0, 0, []
    for epoch in range(max_epochs):
        perm = torch.randperm(X.shape[0], generator=g)
        for i in range(0, X.shape[0], 100):
            t0 = time.perf_counter()
            idx = perm[i:i + 100]
            net.train()
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(X[idx]), T[idx]).backward()
            opt.step()
            train_s += time.perf_counter() - t0
            step += 1
            if step % eval_every == 0:
                net.eval()
                with torch.no_grad():
                    acc = sum(int((net(Xte[s:s + 1000]).argmax(1) == Tte[s:s + 1000]).sum())
                              for s in range(0, Xte.shape[0], 1000)) / Xte.shape[0]
                curve.append((step, train_s, acc))
                if acc >= target:
                    return {"reached": True, "train_seconds": train_s, "steps": step, "curve": curve}
    return {"reached": False, "train_seconds": train_s, "steps": step, "curve": curve}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/time_to_accuracy-cpu.json")
    a = ap.parse_args()
    data = load_dataset("fashion-mnist", download=False)
    res = {"target": a.target, "dataset": data.name, "model": "simple_convnet", "optimizer": "adam 1e-3",
           "batch_size": 100, "cpu": dn.get_device("cpu").name, "cpu_count": os.cpu_count()}
    res["dualnet"] = run_dualnet(data, a.target, a.max_epochs, a.eval_every, a.seed)
    print(f"dualnet: {res['dualnet']['train_seconds']:.1f} s, {res['dualnet']['steps']} steps, "
          f"reached={res['dualnet']['reached']}", flush=True)
    try:
        res["torch"] = run_torch(data, a.target, a.max_epochs, a.eval_every, a.seed)
        import torch
        res["torch_version"] = torch.__version__
        print(f"torch:   {res['torch']['train_seconds']:.1f} s, {res['torch']['steps']} steps, "
              f"reached={res['torch']['reached']}")
        res["ratio_dualnet_over_torch"] = res["dualnet"]["train_seconds"] / res["torch"]["train_seconds"]
        print(f"dualnet / torch time to {a.target}: {res['ratio_dualnet_over_torch']:.2f}")
    except ImportError:
        print("torch is not installed: no comparison")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump(res, f, indent=2)
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
