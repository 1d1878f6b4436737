"""Accuracy runs of issue 3, each a real `dualnet train`; results go to bench/results/accuracy-<device>.json.

  digits (default run)               >= 0.97 in under a minute on 2 CPU cores
  fashion-mnist simple_convnet x10   >= 0.91   (Adam 1e-3 with lr *= 0.8 per epoch)
  fashion-mnist deep_convnet   x10   the book's recipe, a baseline (0.90)
  fashion-mnist deep_convnet   x36   >= 0.93   with --augment, no dropout, lr *= 0.92 per epoch
                                               (about 35 minutes on 2 CPU cores)
  mnist simple/deep_convnet          >= 0.988 / 0.993 when MNIST is in --data-dir

Usage: python scripts/accuracy.py [--device cpu] [--only digits,fashion-simple,...] [--data-dir DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

RUNS = {
    "digits": (["--dataset", "digits"], 0.97),
    "fashion-simple": (["--dataset", "fashion-mnist", "--model", "simple_convnet", "--epochs", "10",
                        "--lr-decay", "0.8"], 0.91),
    "fashion-deep": (["--dataset", "fashion-mnist", "--model", "deep_convnet", "--epochs", "10"], 0.90),
    "fashion-deep-augment": (["--dataset", "fashion-mnist", "--model", "deep_convnet", "--epochs", "36",
                              "--dropout", "0", "--lr-decay", "0.92", "--augment"], 0.93),
    "mnist-simple": (["--dataset", "mnist", "--model", "simple_convnet", "--epochs", "20"], 0.988),
    "mnist-deep": (["--dataset", "mnist", "--model", "deep_convnet", "--epochs", "20"], 0.993),
}


def main():
    ap = argparse.ArgumentParser(description="issue 3's accuracy runs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default=",".join(RUNS))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = a.out or f"bench/results/accuracy-{a.device.replace(':', '')}.json"
    results = json.load(open(out)) if os.path.exists(out) else {}
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    for name in a.only.split(","):
        args, bar = RUNS[name]
        with tempfile.TemporaryDirectory() as run_dir:
            cmd = [sys.executable, "-m", "dualnet", "train", "--device", a.device, "--out", run_dir,
                   "--no-progress", "--no-plots", *args] + (["--data-dir", a.data_dir] if a.data_dir else [])
            print("$ dualnet " + " ".join(cmd[3:]), flush=True)
            p = subprocess.run(cmd, cwd=root, env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}, text=True,
                               capture_output=True)
            print(p.stdout[-2000:], p.stderr[-1000:], flush=True)
            if p.returncode != 0:
                results[name] = {"command": " ".join(cmd[3:]), "error": p.stderr.strip().splitlines()[-1:]}
                continue
            m = json.load(open(os.path.join(run_dir, "metrics.json")))
        results[name] = {"command": "dualnet " + " ".join(cmd[3:]).replace(run_dir, "RUN_DIR"),
                         "test_acc": m["test_acc"], "target": bar, "met": m["test_acc"] >= bar,
                         "wall_time_s": m["wall_time_s"], "per_epoch_test_acc": m["history"]["test_acc"],
                         "device": m["device"]}
        with open(out + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(out + ".tmp", out)
    for k, r in results.items():
        print(k, {x: r.get(x) for x in ("test_acc", "target", "met", "wall_time_s", "error")})


if __name__ == "__main__":
    main()
