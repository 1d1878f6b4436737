"""The bench harness itself (no timed assertions): schema, skip reasons, synchronized timing."""
import json
import os

import numpy as np
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
        assert r["micro_batch"] == r["batch_size"]   # what dualnet ran the batch as: small ones whole
    phases = {r["phase"] for r in res["records"]}
    assert {"conv_forward", "conv_backward", "gemm_peak", "adam_update"} <= phases
    assert all(r["gflops"] > 0 for r in res["records"] if "gflops" in r)
    env = res["environment"]
    for k in ("numpy", "python", "blas_threads", "cupy", "cuda_driver"):
        assert k in env
    if device.peak_memory(lambda: None) is not None:  # measurable on this backend
        assert all(r["peak_mem_bytes"] > 0 for r in train)
    json.dumps(res)  # JSON-ready


def test_the_record_says_how_dualnet_split_the_batch():
    """On the host "auto" runs DeepConvNet's 256 as 4 x 64 (dualnet.microbatch); a GPU stand-in keeps it whole."""
    cpu = bench.dualnet_contenders(bench.get_device("cpu"), "deep_convnet", 256, "float32")
    sim = bench.dualnet_contenders(bench.get_device("sim"), "deep_convnet", 256, "float32")
    assert (cpu["train"].micro_batch, cpu["infer"].micro_batch) == (64, 64)
    assert (sim["train"].micro_batch, sim["infer"].micro_batch) == (256, 256)


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


def test_stages_are_timed_apart_and_handed_on():
    """A forward and its backward: each stage has its own timer, the backward gets what the
    forward returned, and ``max_steps=steps`` times exactly that many rounds even when noisy."""
    clock = iter([1.0, 4.0, 1.0, 8.0] * 50)
    seen = []

    class Timer:
        def start(self):
            pass

        def stop(self):
            return next(clock)

    stages = (lambda: "saved", lambda s: seen.append(s))
    res = bench.time_stages({"conv": (Timer, stages)}, steps=3, warmup=1, max_steps=3)
    fwd, bwd = res["conv"]
    assert len(fwd) == len(bwd) == 3 and set(fwd) == {1.0} and set(bwd) == {4.0, 8.0}
    assert seen == ["saved"] * 4   # the warm-up round too
    more = bench.time_stages({"conv": (Timer, stages)}, steps=3, warmup=0)  # unstable: up to 3 x 3 rounds
    assert len(more["conv"][0]) == 9


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


def _twin(model_name, dropout=None):
    """A bench model in float64 on the CPU (its dropout ratio set to ``dropout`` when given) and
    the PyTorch twin derived from its layers, with its weights."""
    torch = pytest.importorskip("torch")
    from dualnet.backend import get_device
    from dualnet.torch_twin import torch_twin
    net, _ = bench.make_model(model_name, get_device("cpu"), "float64")
    if dropout is not None:
        for layer in net.layers:
            if type(layer).__name__ == "Dropout":
                layer.ratio = dropout
    return torch, net, torch_twin(torch, net, copy_weights=True)


@pytest.mark.parametrize("model_name", bench.BENCH_MODELS)
def test_torch_twin_of_every_bench_model_computes_what_it_computes(model_name):
    """The twin the bench times PyTorch with is the same network: equal scores on the bench's batch."""
    torch, net, twin = _twin(model_name)
    x, _ = bench.bench_batch(model_name, 2)
    want = net.predict(x, train=False)
    got = twin.eval()(torch.from_numpy(x)).detach().numpy()
    assert got.shape == want.shape == (2, bench.num_classes(model_name))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * max(1.0, float(np.max(np.abs(want)))))


@pytest.mark.parametrize("model_name", ["simple_convnet", "deep_convnet", "mlp"])
def test_torch_twin_of_every_bench_model_has_its_gradients(model_name):
    """The twin's loss gradients are dualnet's (dropout off in both, so the masks do not differ)."""
    torch, net, twin = _twin(model_name, dropout=0.0)
    x, t = bench.bench_batch(model_name, 3)
    loss = net.loss(x, t, train=True)
    net.backward()
    tl = torch.nn.functional.cross_entropy(twin.train()(torch.from_numpy(x)), torch.from_numpy(t))
    tl.backward()
    assert tl.item() == pytest.approx(float(loss), rel=1e-12)
    pairs = [(layer, mod[-1] if isinstance(mod, torch.nn.Sequential) else mod)
             for layer, mod in zip(net.layers, twin) if layer.params]
    assert pairs
    for layer, mod in pairs:
        dW = mod.weight.grad.numpy()
        np.testing.assert_allclose(dW.T if dW.ndim == 2 else dW, layer.grads["W"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mod.bias.grad.numpy(), layer.grads["b"], rtol=1e-9, atol=1e-12)


def test_torch_cpu_peak_measures_the_step_not_the_library():
    """PyTorch's CPU peak is its training step's memory: it grows with the batch and stays far
    below the ~300 MB that importing PyTorch makes resident."""
    pytest.importorskip("torch")
    small = bench.torch_cpu_peak("deep_convnet", 8, "float32", "train")
    large = bench.torch_cpu_peak("deep_convnet", 64, "float32", "train")
    if small is None and not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("no resettable resident-set high water on this kernel")
    assert small is not None and large is not None
    assert 0 < small and 3 * small < large < 100e6
