"""Render a bench.json (from `dualnet bench`) as the Markdown table the README shows.

Usage: python scripts/bench_table.py bench/results/<name>/bench.json
"""
import json
import sys


def main(path):
    res = json.load(open(path))
    env = res["environment"]
    print(f"numpy {env['numpy']} ({env['blas']} {env['blas_version']}, {env['blas_threads']} threads), "
          f"torch {env['torch']}, cupy {env['cupy']}, {env['cpu_count']} logical CPUs, GPUs: {env['gpus'] or 'none'}\n")
    print("| device | model | batch | phase | dualnet images/s (IQR of ms) | torch images/s | dualnet / torch "
          "| vs CPU | ops/step |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    recs = res["records"]
    torch = {(r["device"], r["model"], r["batch_size"], r["phase"]): r for r in recs if r["impl"] == "torch"}
    for r in recs:
        if r["impl"] != "dualnet" or r["phase"] not in ("train", "infer"):
            continue
        t = torch.get((r["device"], r["model"], r["batch_size"], r["phase"]))
        sp = r.get("speedup_vs_cpu")
        ours = f"{r['images_per_s']:,.0f} ({r['step_ms_iqr']:.2f}{', unstable' if r.get('unstable') else ''})"
        theirs = f"{t['images_per_s']:,.0f} | {r['images_per_s'] / t['images_per_s']:.2f}" if t else "- | -"
        print(f"| {r['device_name']} | {r['model']} | {r['batch_size']} | {r['phase']} | {ours} | {theirs} | "
              f"{f'{sp:.1f}x' if sp else '-'} | {r.get('ops_per_step', '-')} |")
    for r in recs:
        if "gflops" in r:
            print(f"\n- {r['device_name']}: {r['model']} {r['phase']}: {r['step_ms_median']:.1f} ms, {r['gflops']:.1f} GFLOP/s")
        elif r["phase"] == "adam_update":
            print(f"\n- {r['device_name']}: Adam update of {r['model']}'s {r['params']:,} parameters: {r['step_ms_median']:.2f} ms")
    for s in res["skipped"]:
        print(f"\n- skipped {s['impl']} on {s['device']}: {s['reason']}")
    for w in res.get("warnings", ()):
        print(f"\n- warning: {w}")


if __name__ == "__main__":
    main(sys.argv[1])
