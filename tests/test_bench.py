"""The bench harness itself (no timed assertions): schema, skip reasons, synchronized timing."""
import json

import pytest

from dualnet import bench
from dualnet.cli import main


def small_run(devices, **kw):
    kw.setdefault("layers", True)
    return bench.run_bench(devices, ["mlp", "simple_convnet"], [4, 8], steps=3, warmup=1, conv_batch=2,
                           gemm_n=64, log=lambda *_: None, **kw)


def test_records_follow_the_schema(device):
    spec = device.spec
    res = small_run([spec])
    train = [r for r in res["records"] if r["phase"] in ("train", "infer")]
    assert len(train) == 2 * 2 * 2
    for r in train:
        for k in bench.SCHEMA_KEYS:
            assert k in r, k
        assert r["impl"] == "dualnet" and r["device"] == spec and r["dtype"] == "float32"
        assert r["images_per_s"] > 0 and r["step_ms_median"] > 0 and r["step_ms_iqr"] >= 0
        assert r["steps"] >= 3
    phases = {r["phase"] for r in res["records"]}
    assert {"conv_forward", "conv_backward", "gemm_peak", "adam_update"} <= phases
    assert all(r["gflops"] > 0 for r in res["records"] if "gflops" in r)
    env = res["environment"]
    for k in ("numpy", "python", "blas_threads", "cupy", "cuda_driver"):
        assert k in env
    if device.peak_memory(lambda: None) is not None:  # measurable on this backend
        assert all(r["peak_mem_bytes"] > 0 for r in train)
    json.dumps(res)  # JSON-ready


def test_unavailable_device_is_skipped_with_reason():
    res = small_run(["cpu", "cuda:7"], layers=False)
    assert any(s["device"] == "cuda:7" and "cuda:7" in s["reason"] for s in res["skipped"])
    assert {r["device"] for r in res["records"]} == {"cpu"}


def test_missing_torch_is_skipped_with_reason(monkeypatch):
    monkeypatch.setattr(bench, "torch_status", lambda: (None, "PyTorch is not installed (test)"))
    res = small_run(["cpu"], compare_torch=True, layers=False)
    assert {"impl": "torch", "device": "*", "reason": "PyTorch is not installed (test)"} in res["skipped"]


def test_timing_synchronizes_before_reading_the_clock():
    events = []

    class SpyTimer:
        def start(self):
            events.append("start")

        def stop(self):
            events.append("sync+read")
            return 1.0

    times = bench.time_steps(SpyTimer, lambda: events.append("work"), steps=4, warmup=2)
    assert times == [1.0] * 4
    assert events == ["start", "work", "sync+read"] * 6


def test_contenders_are_interleaved_and_repeated_until_stable():
    """dualnet and its yardstick alternate call by call; a noisy contender gets more rounds
    (up to 3x the steps), a steady one stops at the minimum."""
    order = []

    class Timer:
        def __init__(self, name, times):
            self.name, self.times = name, times

        def start(self):
            pass

        def stop(self):
            order.append(self.name)
            return next(self.times)

    steady = iter([1.0] * 100)
    noisy = iter([1.0, 3.0] * 100)
    res = bench.time_interleaved({"a": (lambda: Timer("a", steady), lambda: None),
                                  "b": (lambda: Timer("b", noisy), lambda: None)}, steps=4, warmup=0)
    assert order[:6] == ["a", "b"] * 3
    assert len(res["a"]) == len(res["b"]) == 12  # the noisy one never settles: 3 x 4 rounds
    calm = bench.time_interleaved({"a": (lambda: Timer("a", iter([2.0] * 100)), lambda: None)}, steps=4, warmup=0)
    assert len(calm["a"]) == 4 and not bench.summarize(calm["a"], 1)["unstable"]
    assert bench.summarize(res["b"], 1)["unstable"]


def test_count_ops_meets_the_launch_targets(device):
    """Array operations per Adam training step at batch 100 (kernel launches on a GPU) stay within
    the launch budget -- SimpleConvNet 100, DeepConvNet 320, the MLP 100 -- on the path a
    launch-bound device takes (the simulated device stands in for a GPU; the CPU takes im2col for
    one input channel, 2-3 more)."""
    counts = {m: bench.ops_per_step(device, m, 100, "float32")["train"]
              for m in ("simple_convnet", "deep_convnet", "mlp")}
    assert min(counts.values()) > 10  # the counter sees the operations
    if not device.is_host:
        assert counts["simple_convnet"] <= 100 and counts["deep_convnet"] <= 320 and counts["mlp"] <= 100, counts


def test_ratios_are_computed():
    recs = [{"impl": i, "device": d, "model": "m", "batch_size": 8, "phase": "train",
             "step_ms_median": ms, "images_per_s": 8000 / ms}
            for i, d, ms in (("dualnet", "cpu", 10.0), ("dualnet", "cuda:0", 1.0), ("torch", "cuda:0", 0.5))]
    bench._add_ratios(recs)
    assert recs[1]["speedup_vs_cpu"] == pytest.approx(10.0)
    assert recs[1]["ratio_vs_torch"] == pytest.approx(0.5)
    assert "ratio_vs_torch" not in recs[0]


def test_bench_command_writes_json_and_png(tmp_path, capsys, device):
    code = main(["bench", "--devices", f"cpu,{device.spec},cuda:7", "--models", "mlp", "--batch-sizes", "4", "--steps", "3",
                 "--warmup", "1", "--count-ops", "--compare-torch", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped dualnet on cuda:7" in out
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["records"] and (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert all(r["ops_per_step"] > 0 for r in res["records"] if r["impl"] == "dualnet")
    assert not any(r["phase"] == "gemm_peak" for r in res["records"])  # layer benchmarks only when asked
    try:
        import torch  # noqa: F401
        assert any(r["impl"] == "torch" and r["device"] == "cpu" for r in res["records"]) and "/torch" in out
        assert any("ratio_vs_torch" in r for r in res["records"])
    except ImportError:
        assert any(s["impl"] == "torch" for s in res["skipped"])


def test_bad_batch_sizes_are_a_clear_error(capsys):
    assert main(["bench", "--devices", "cpu", "--batch-sizes", "0"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err


def test_unusable_out_is_refused_before_benchmarking(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("benchmarked before checking --out"))
    assert main(["bench", "--devices", "cpu", "--models", "mlp", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
