"""Winograd F(2x2, 3x3) and F(4x4, 3x3): values and gradients against the direct convolution,
float32 error against float64, and an operation count that does not grow with the map."""
import numpy as np
import pytest

from dualnet import conv as F
from dualnet.conv import winograd as wg
from dualnet.backend import CountingDevice, get_device
from dualnet.errors import ConfigError, ShapeError
from dualnet.gradcheck import numerical_gradient, rel_error

TILES = wg.TILES

# (N, C, H, W, FN, pad): pads 0-3, odd and even sizes (outputs that are and are not whole tiles
# of 2 and of 4), batch 1 and more, one input channel
CASES = [
    (1, 2, 6, 6, 3, 0),    # output 4x4: whole tiles, no padding copy
    (3, 3, 7, 8, 4, 0),    # output 5x6
    (2, 1, 5, 5, 2, 1),    # output 5x5
    (1, 4, 8, 6, 3, 1),    # output 8x6
    (2, 3, 9, 7, 5, 2),    # output 11x9
    (1, 2, 4, 5, 2, 2),    # output 6x7
    (2, 2, 3, 3, 3, 3),    # output 7x7: pad wider than the filter reach
]
IDS = ["N{}_C{}_{}x{}_FN{}_p{}".format(*c) for c in CASES]


def _case(rng, N, C, H, W, FN):
    return (rng.standard_normal((N, C, H, W)), rng.standard_normal((FN, C, 3, 3)),
            rng.standard_normal(FN))


def _rel(a, r):
    """Largest error relative to the largest reference value (elementwise relative error means
    nothing where a gradient happens to be near zero)."""
    return float(np.max(np.abs(a - r)) / np.max(np.abs(r)))


def _direct(device, x, Wt, b, dout, pad, dtype="float64"):
    """im2col's output and gradients as NumPy float64, for arrays given as host float64."""
    a = [device.asarray(v, dtype) for v in (x, Wt, b, dout)]
    out, ctx = F.conv2d(a[0], a[1], a[2], 1, pad, method="im2col")
    return [device.to_numpy(v).astype(np.float64) for v in (out, *F.conv2d_backward(a[3], ctx, a[1]))]


def _winograd(device, x, Wt, b, dout, pad, tile, dtype="float64"):
    a = [device.asarray(v, dtype) for v in (x, Wt, b, dout)]
    out, saved = wg.winograd_forward(a[0], a[1], a[2], pad, tile)
    return [device.to_numpy(v).astype(np.float64) for v in (out, *wg.backward(a[3], saved, a[1]))]


def test_transforms_compute_the_1d_correlation():
    """Y = AT [(G g) * (BT d)] is the correlation of d (alpha values) with g (3 taps), exactly
    for integer data in F(2, 3) and to float64 rounding in F(4, 3)."""
    rng = np.random.default_rng(3)
    for tile in TILES:
        BT, G, AT = (np.asarray(m) for m in wg.transforms(tile))
        assert BT.shape == (tile + 2, tile + 2) and G.shape == (tile + 2, 3) and AT.shape == (tile, tile + 2)
        for _ in range(5):
            d, g = rng.integers(-9, 10, tile + 2).astype(float), rng.integers(-9, 10, 3).astype(float)
            want = np.array([d[i:i + 3] @ g for i in range(tile)])
            np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float64_values_and_gradients_equal_the_direct_convolution(device, rng, case, tile):
    """out, dx, dW, db against im2col to 1e-10 of the largest value, every pad, odd/even sizes."""
    N, C, H, W, FN, pad = case
    x, Wt, b = _case(rng, N, C, H, W, FN)
    OH, OW = H + 2 * pad - 2, W + 2 * pad - 2
    dout = rng.standard_normal((N, FN, OH, OW))
    want = _direct(device, x, Wt, b, dout, pad)
    got = _winograd(device, x, Wt, b, dout, pad, tile)
    for name, g, r in zip(("out", "dx", "dW", "db"), got, want):
        assert g.shape == r.shape, name
        assert _rel(g, r) < 1e-10, (name, _rel(g, r))


@pytest.mark.parametrize("tile", TILES)
def test_gradients_pass_the_numerical_check(device, rng, tile):
    """CS231n check in float64 on the method alone: backprop against central differences."""
    x, Wt, b = (device.asarray(a, "float64") for a in _case(rng, 2, 2, 4, 5, 2))
    pad = 1
    out, saved = wg.winograd_forward(x, Wt, b, pad, tile)
    r = device.asarray(rng.standard_normal(tuple(out.shape)), "float64")
    xp = device.xp

    def loss():  # sum(out * r): its gradient w.r.t. out is r
        return xp.sum(wg.winograd_forward(x, Wt, b, pad, tile)[0] * r)

    dx, dW, db = wg.backward(r, saved, Wt)
    # linear in each argument: central differences have no truncation error, so h = 1e-3
    for name, a, g in (("x", x, dx), ("W", Wt, dW), ("b", b, db)):
        assert rel_error(g, numerical_gradient(loss, a, h=1e-3)) < 1e-7, (tile, name)


# float32 error bounds, as the largest error over the largest float64 value, for He-initialised
# filters (DeepConvNet's) on unit-normal inputs.  Machine epsilon of float32 is 1.19e-7.
# - F(2x2, 3x3): 1e-6 (~8 eps).  Its transforms hold only 0, +-1 and +-1/2 (exact in binary), each
#   transformed value is a sum of at most 4 (input) or 9 (filter) terms, so its rounding is that of
#   the direct convolution's 9*C-term sums within a small factor: measured 1.7e-7 to 5.9e-7 at
#   DeepConvNet's shapes and C=256, against 1.3e-7 to 6.1e-7 for float32 im2col.
# - F(4x4, 3x3): 2e-5 (~170 eps).  Its interpolation points +-2 put entries up to 5 in BT and 8 in
#   AT, and G's 1/6, 1/12, 1/24 are inexact in binary: a tile's outputs are signed sums of terms up
#   to ~100x larger than themselves, and that cancellation costs ~6-7 bits.  Measured 1.5e-6 to
#   7.6e-6 on the same shapes, 5-20x the direct convolution's.  (Set so that the test fails
#   if a transform loses a term or precision, not to fit one draw.)
F32_BOUND = {2: 1e-6, 4: 2e-5}


def _float32_case(device, case):
    """He-scaled inputs of one float32 case, with the direct convolution's float64 and float32
    (out, dx, dW): the reference and the direct method's own float32 error."""
    N, C, H, W, FN, pad = case
    rng = np.random.default_rng(11)
    x, Wt, b = _case(rng, N, C, H, W, FN)
    Wt *= np.sqrt(2.0 / (9 * C))
    b *= 0.1
    dout = rng.standard_normal((N, FN, H + 2 * pad - 2, W + 2 * pad - 2))
    return (x, Wt, b, dout, _direct(device, x, Wt, b, dout, pad),
            _direct(device, x, Wt, b, dout, pad, "float32"))


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", [(4, 16, 14, 14, 16, 1), (2, 32, 8, 8, 32, 2), (2, 64, 6, 6, 8, 1)],
                         ids=["C16_14x14_p1", "C32_8x8_p2", "C64_6x6_p1"])
def test_float32_error_against_float64_is_bounded(device, case, tile):
    N, C, H, W, FN, pad = case
    x, Wt, b, dout, want, direct32 = _float32_case(device, case)
    got = _winograd(device, x, Wt, b, dout, pad, tile, "float32")
    for name, g, r, d in zip(("out", "dx", "dW"), got, want, direct32):
        err, err_direct = _rel(g, r), _rel(d, r)
        assert err < F32_BOUND[tile], (name, err, err_direct)
        assert err > 0  # float32 really ran (a float64 path would be ~1e-16)
        if tile == 2:  # as accurate as the direct convolution, within a small factor
            assert err < 4 * err_direct, (name, err, err_direct)


def _ops_of_one_step(device, H, tile, need_dx=True):
    """Array operations (GPU kernel launches) of one forward + backward at an H x H map."""
    dev = CountingDevice(device)
    rng = np.random.default_rng(0)
    x, Wt, b = (dev.asarray(a, "float32") for a in _case(rng, 2, 3, H, H, 4))
    dout = dev.asarray(np.ones((2, 4, H, H)), "float32")
    dev.ops = 0
    out, saved = wg.winograd_forward(x, Wt, b, 1, tile)
    wg.backward(dout, saved, Wt, need_dx)
    return dev.ops


@pytest.mark.parametrize("tile", TILES)
def test_operation_count_does_not_grow_with_the_map(device, tile):
    """No loop over tiles, images or channels: 8x8 and 32x32 take the same number of array
    operations, and about as many as the "gemm" method that launch-bound devices use today
    (F(4x4, 3x3) folds three overlapping pair offsets per axis back into dx, not two: 2 more)."""
    small, large = _ops_of_one_step(device, 8, tile), _ops_of_one_step(device, 32, tile)
    assert small == large, (small, large)
    dev = CountingDevice(device)
    x, Wt, b = (dev.asarray(a, "float32") for a in _case(np.random.default_rng(0), 2, 3, 32, 32, 4))
    dev.ops = 0
    out, ctx = F.conv2d(x, Wt, b, 1, 1, method="gemm")
    F.conv2d_backward(dev.asarray(np.ones((2, 4, 32, 32)), "float32"), ctx, Wt)
    assert 10 < large <= dev.ops + (tile - 2), (large, dev.ops)
    assert _ops_of_one_step(device, 32, tile, need_dx=False) < large


def test_need_dx_false_and_the_saved_record(device, rng):
    x, Wt, b = (device.asarray(a, "float64") for a in _case(rng, 2, 2, 6, 6, 3))
    out, saved = wg.winograd_forward(x, Wt, b, 1)
    assert saved.method == "winograd" == wg.NAME and saved.tile == 2 and saved.x_shape == (2, 2, 6, 6)
    dx, dW, db = wg.backward(device.asarray(np.ones(tuple(out.shape)), "float64"), saved, Wt, need_dx=False)
    assert dx is None and tuple(dW.shape) == (3, 2, 3, 3) and tuple(db.shape) == (3,)


def test_supports_and_clear_errors(device, rng):
    assert wg.fits(3, 3, 1)
    assert not any(wg.fits(*g) for g in ((3, 3, 2), (5, 5, 1), (3, 1, 1), (1, 1, 1)))
    x, Wt, b = (device.asarray(a, "float64") for a in _case(rng, 1, 2, 6, 6, 3))
    with pytest.raises(ConfigError, match=r"tile 3 .*\(2, 4\)"):
        wg.winograd_forward(x, Wt, b, 1, tile=3)
    with pytest.raises(ShapeError, match=r"\(FN, C=2, 3, 3\).*W \(3, 2, 5, 5\)"):
        wg.winograd_forward(x, device.asarray(rng.standard_normal((3, 2, 5, 5)), "float64"), b, 1)
    with pytest.raises(ConfigError, match="pad must be >= 0, got -1"):
        wg.winograd_forward(x, Wt, b, -1)
    with pytest.raises(ShapeError, match=r"input \(N, C, H, W\).*\(2, 6, 6\)"):
        wg.winograd_forward(x[0, ...], Wt, b, 1)
    with pytest.raises(ShapeError, match="smaller than the 3x3 filter"):
        wg.winograd_forward(device.asarray(np.ones((1, 2, 2, 2)), "float64"), Wt, b, 0)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("pad", [0, 1, 2])
def test_matches_pytorch_conv2d(device, rng, tile, pad):
    """Forward and autograd gradients of torch.nn.functional.conv2d, float64."""
    torch = pytest.importorskip("torch")
    x, Wt, b = _case(rng, 2, 3, 7, 6, 4)
    dout = rng.standard_normal((2, 4, 5 + 2 * pad, 4 + 2 * pad))
    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x, Wt, b))
    tout = torch.nn.functional.conv2d(tx, tW, tb, stride=1, padding=pad)
    tout.backward(torch.tensor(dout))
    want = [tout.detach().numpy(), tx.grad.numpy(), tW.grad.numpy(), tb.grad.numpy()]
    got = _winograd(device, x, Wt, b, dout, pad, tile)
    for name, g, r in zip(("out", "dx", "dW", "db"), got, want):
        assert _rel(g, r) < 1e-10, (name, _rel(g, r))


@pytest.mark.parametrize("method", ["winograd", "winograd4"])
def test_a_network_trains_the_same_through_the_registered_method(device, method):
    """Selected by name like any method, Winograd gives a DeepConvNet the loss and gradients of
    the im2col reference (float64), through the layer, the model and the registry's backward."""
    import dualnet as dn
    rng = np.random.default_rng(3)
    x = device.asarray(rng.standard_normal((4, 1, 12, 12)), "float64")
    t = device.asarray(rng.integers(0, 10, 4))
    nets = [dn.DeepConvNet((1, 12, 12), device=device, dtype="float64", seed=1, conv_method=m)
            for m in ("im2col", method)]
    out = []
    for net in nets:
        loss = net.loss(x, t, train=True)
        grads = net.backward()
        out.append((float(device.to_numpy(loss)), {k: device.to_numpy(v) for k, v in grads.items()}))
    assert abs(out[0][0] - out[1][0]) < 1e-12
    for k, g in out[0][1].items():   # relative to the gradient's scale: entries near 0 carry rounding
        assert np.max(np.abs(out[1][1][k] - g)) <= 1e-10 * np.max(np.abs(g)), k
    assert sum(isinstance(l, dn.layers.Convolution) and l.saved.method == method for l in nets[1].layers) == 6


# --- the blocked variants ("winograd_rows", "winograd4_rows"): a block of tiles at a time ---

from dualnet.conv import winograd_rows as wr  # noqa: E402

BLOCKED = {2: "winograd_rows", 4: "winograd4_rows"}

# (N, C, H, W, FN, pad, chunk): chunks of images that cut the batch (N not a multiple of the
# chunk, a last chunk of 1), one image per chunk, one chunk for all; pads 0 and 1 (and 2), odd
# and even sizes (tiles cut by the border), a 1x1 output (a single tile cut on both sides)
BLOCK_CASES = [
    (5, 2, 7, 9, 3, 0, 2),          # output 5x7; 5 images in chunks of 2
    (3, 3, 9, 8, 4, 1, 3),          # output 9x8; one chunk
    (4, 2, 6, 7, 2, 1, 3),          # output 6x7; a last chunk of 1 image
    (2, 1, 5, 5, 3, 0, 1),          # one input channel, one image per chunk
    (3, 2, 8, 6, 2, 2, 2),          # pad 2: output 10x8
    (2, 2, 3, 3, 2, 0, 1),          # output 1x1
    (3, 2, 7, 7, 3, 1, None),       # the default chunk (all images at these sizes)
    (3, 3, 8, 8, 2, 1, 2),          # output 8x8: whole tiles of 2 and of 4
    (2, 2, 6, 8, 3, 1, None),       # output 6x8: whole tile columns, the last tile row of 4 cut
]
BLOCK_IDS = ["N{}_C{}_{}x{}_FN{}_p{}_chunk{}".format(*c) for c in BLOCK_CASES]


def _blocked(device, x, Wt, b, dout, pad, tile, block, dtype="float64", need_dx=True):
    a = [device.asarray(v, dtype) for v in (x, Wt, b, dout)]
    g = F.ConvGeometry.of(x.shape, Wt.shape, 1, pad)
    out, saved = wr.blocked_forward(a[0], a[1], a[2], g, tile, block)
    grads = wr.backward(a[3], saved, a[1], need_dx)
    return [None if v is None else device.to_numpy(v).astype(np.float64) for v in (out, *grads)]


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", BLOCK_CASES, ids=BLOCK_IDS)
def test_blocked_float64_values_and_gradients_equal_the_direct_convolution(device, rng, case, tile):
    """out, dx, dW, db against im2col to 1e-10 of the largest value, whatever the chunks cut."""
    N, C, H, W, FN, pad, block = case
    x, Wt, b = _case(rng, N, C, H, W, FN)
    dout = rng.standard_normal((N, FN, H + 2 * pad - 2, W + 2 * pad - 2))
    want = _direct(device, x, Wt, b, dout, pad)
    got = _blocked(device, x, Wt, b, dout, pad, tile, block)
    for name, g, r in zip(("out", "dx", "dW", "db"), got, want):
        assert g.shape == r.shape, name
        assert _rel(g, r) < 1e-10, (name, _rel(g, r))


@pytest.mark.parametrize("tile", TILES)
def test_blocked_results_do_not_depend_on_the_block(rng, tile):
    """Every chunk size computes each tile with the same transforms: the results agree to
    float64 rounding (the GEMMs' and dW's sums over chunks may associate differently)."""
    cpu = get_device("cpu")
    x, Wt, b = _case(rng, 5, 3, 9, 7, 4)
    dout = rng.standard_normal((5, 4, 9, 7))
    ref = _blocked(cpu, x, Wt, b, dout, 1, tile, 5)   # one chunk
    for block in (1, 2, 3):
        got = _blocked(cpu, x, Wt, b, dout, 1, tile, block)
        for name, g, r in zip(("out", "dx", "dW", "db"), got, ref):
            assert _rel(g, r) < 1e-13, (block, name, _rel(g, r))


@pytest.mark.parametrize("tile", TILES)
def test_blocked_path_through_the_registry_declares_its_layout(rng, monkeypatch, tile):
    """Selected by name, with a block budget small enough to cut the batch into many chunks:
    out and dx are batch-innermost (CHWN, the LAYOUT declared), from an input in either order,
    and need_dx=False skips dx."""
    monkeypatch.setattr(wr, "BLOCK_BYTES", 4096)
    x, Wt, b = _case(rng, 6, 4, 10, 9, 5)
    method = BLOCKED[tile]
    assert F.METHODS[method].LAYOUT == F.CHWN
    dout = rng.standard_normal((6, 5, 10, 9))
    want = [v for v in _direct_cpu(x, Wt, b, dout, 1)]
    for xin in (x, np.transpose(np.ascontiguousarray(np.transpose(x, (1, 2, 3, 0))), (3, 0, 1, 2))):
        out, saved = F.conv2d(xin, Wt, b, 1, 1, method=method)
        assert saved.method == method and saved.chunk < 6   # the budget did cut the batch
        d = np.empty_like(out)
        d[...] = dout
        dx, dW, db = F.conv2d_backward(d, saved, Wt)
        assert F.layout_of(out) == F.layout_of(dx) == F.CHWN
        for name, g, r in zip(("out", "dx", "dW", "db"), (out, dx, dW, db), want):
            assert _rel(g, r) < 1e-10, (name, _rel(g, r))
        assert F.conv2d_backward(d, saved, Wt, need_dx=False)[0] is None


def _direct_cpu(x, Wt, b, dout, pad):
    out, ctx = F.conv2d(x, Wt, b, 1, pad, method="im2col")
    return [out, *F.conv2d_backward(dout, ctx, Wt)]


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", [(4, 16, 14, 14, 16, 1), (2, 32, 8, 8, 32, 2), (3, 64, 6, 6, 8, 1)],
                         ids=["C16_14x14_p1", "C32_8x8_p2", "C64_6x6_p1"])
def test_blocked_float32_error_against_float64_has_the_batched_bound(device, case, tile):
    """The blocked order of work changes no transform: the float32 bounds of the batched method
    (F32_BOUND) hold, in chunks that cut the batch."""
    N, C, H, W, FN, pad = case
    x, Wt, b, dout, want, direct32 = _float32_case(device, case)
    got = _blocked(device, x, Wt, b, dout, pad, tile, N - 1, "float32")
    for name, g, r, d in zip(("out", "dx", "dW"), got, want, direct32):
        err, err_direct = _rel(g, r), _rel(d, r)
        assert 0 < err < F32_BOUND[tile], (name, err, err_direct)
        if tile == 2:
            assert err < 4 * err_direct, (name, err, err_direct)


@pytest.mark.parametrize("tile", TILES)
def test_blocked_keeps_V_within_its_budget_and_rebuilds_it_above(device, rng, monkeypatch, tile):
    """Under KEEP_BYTES the forward keeps the input transform V of every chunk (shape (nTH, T,
    C, nTW*nb)) and no grid; with a budget below V's size it keeps the grids and backward
    rebuilds V.  Both equal the direct convolution to 1e-10, and each other to rounding."""
    N, C, H, W, FN, pad = 5, 3, 9, 7, 4, 1
    x, Wt, b = _case(rng, N, C, H, W, FN)
    dout = rng.standard_normal((N, FN, H, W))
    want = _direct(device, x, Wt, b, dout, pad)
    g = F.ConvGeometry.of(x.shape, Wt.shape, 1, pad)
    nTH, nTW = wg._tiles(H, W, tile)
    v_bytes = 8 * (tile + 2) ** 2 * C * nTH * nTW * N
    got = {}
    for budget in (v_bytes, v_bytes - 1):
        monkeypatch.setattr(wr, "KEEP_BYTES", budget)
        a = [device.asarray(v, "float64") for v in (x, Wt, b, dout)]
        out, saved = wr.blocked_forward(a[0], a[1], a[2], g, tile, 2)   # chunks of 2, 2, 1
        if budget == v_bytes:
            assert saved.grids is None
            assert [tuple(V.shape) for V in saved.kept] == [((nTH, (tile + 2) ** 2, C, nTW * nb)) for nb in (2, 2, 1)]
        else:
            assert saved.kept is None and len(saved.grids) == 3
        grads = wr.backward(a[3], saved, a[1])
        got[budget] = [device.to_numpy(v) for v in (out, *grads)]
        for name, v, r in zip(("out", "dx", "dW", "db"), got[budget], want):
            assert _rel(v, r) < 1e-10, (budget, name, _rel(v, r))
    for name, k, r in zip(("out", "dx", "dW", "db"), got[v_bytes], got[v_bytes - 1]):
        assert _rel(k, r) < 1e-13, (name, _rel(k, r))


@pytest.mark.parametrize("tile", TILES)
def test_blocked_plans_kept_on_the_host_follow_dtype_and_block(rng, monkeypatch, tile):
    """The per-layer plan kept across calls is keyed by geometry, dtype and block budget: the
    same layer in float64, float32 and float64 again, and with a budget that cuts the batch,
    each gives its own dtype, chunking and the direct convolution's result."""
    cpu = get_device("cpu")
    x, Wt, b = _case(rng, 4, 3, 8, 8, 2)
    dout = rng.standard_normal((4, 2, 8, 8))
    want = _direct(cpu, x, Wt, b, dout, 1)
    g = F.ConvGeometry.of(x.shape, Wt.shape, 1, 1)
    for dtype, budget, tol in (("float64", wr.BLOCK_BYTES, 1e-10), ("float32", wr.BLOCK_BYTES, 2e-5),
                               ("float64", 4096, 1e-10)):
        monkeypatch.setattr(wr, "BLOCK_BYTES", budget)
        a = [cpu.asarray(v, dtype) for v in (x, Wt, b, dout)]
        out, saved = wr.blocked_forward(a[0], a[1], a[2], g, tile)
        assert (saved.chunk < 4) == (budget == 4096)
        got = [out, *wr.backward(a[3], saved, a[1])]
        for name, v, r in zip(("out", "dx", "dW", "db"), got, want):
            assert v.dtype == np.dtype(dtype), name
            assert _rel(v.astype(np.float64), r) < tol, (dtype, budget, name, _rel(v.astype(np.float64), r))
