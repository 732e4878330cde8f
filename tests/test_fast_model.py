"""ServedRanker (homefeed.serving.fast_model) equals the plain module.

Reference: `Ranker.predict` on the per-candidate copied batch (fp32, eager). Tolerance on the
probabilities: 1e-5 in fp32 on CPU (observed ~1e-7); bf16 (CPU autocast here, CUDA graphs in the
CUDA tests, skipped without a GPU) within `TOLERANCE[torch.bfloat16]`. On a CPU without native
bf16 the bf16 tests still run (oneDNN/ATen emulate it: slower, same numerics).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from homefeed.model import ENCODER_KINDS, ModelConfig, build_model
from homefeed.serving.fast_model import TOLERANCE, ServedRanker, UserTensors, _bucket
from homefeed.serving.hardware import cpu_bf16_native, cpu_flags, resolve_dtype

L, D = 12, 8
RT = 1_767_225_600_000
TOL = TOLERANCE[torch.float32]


def tiny(kind: str, **kw) -> ModelConfig:
    base = dict(encoder=kind, seq_len=L, emb_dim=D, action_emb_dim=4, n_layers=2, n_heads=2,
                ff_dim=16, top_k=3, hidden_dim=8, mlp_dims=(16,), dcn_layers=1, dense_dim=3)
    base.update(kw)
    return ModelConfig(**base)


def make_user(n: int, seed: int = 0, future: tuple[int, ...] = (), seq_len: int = L, dim: int = D):
    rng = np.random.default_rng(seed)
    u = UserTensors.from_sequence(rng.normal(size=(n, dim)), rng.integers(1, 4, n),
                                  RT - 60_000 * (1 + np.arange(n)), seq_len, RT, emb_dim=dim)
    for i in future:
        u.seq_time_ms[i] = RT + 5_000  # an action after the request (must stay invisible)
    return u


USERS = {
    "full": dict(n=L),
    "partial": dict(n=5),
    "shorter_than_top_k": dict(n=2),
    "cold_start": dict(n=0),
    "future_newest": dict(n=7, future=(0,)),
    "future_inside": dict(n=9, future=(1, 4)),
    "all_future": dict(n=4, future=(0, 1, 2, 3)),
}


def candidates(n: int, seed: int = 1, dense_dim: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randn(n, dense_dim, generator=g)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread (OpenMP barriers on a busy 2-core machine cost more
    than these ops)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    out = {}
    for kind in ENCODER_KINDS:
        torch.manual_seed(0)
        m = build_model(tiny(kind))
        m.set_dense_stats(np.array([0.5, -1.0, 2.0]), np.array([2.0, 0.5, 1.5]))
        out[kind] = m
    return out


@pytest.mark.parametrize("kind", ["transact_v10", "transact_v11", "avg_pool", "lstm", "none",
                                  "transformer", "cnn", "rnn", "din"])
@pytest.mark.parametrize("user_name", list(USERS))
def test_served_equals_plain_module(models, kind, user_name):
    model = models[kind]
    served = ServedRanker(model, chunk_tokens=40)  # several chunks even for tiny N
    user = make_user(seed=hash(user_name) % 1000, **USERS[user_name])
    cand, dense = candidates(23)
    ref = model.predict(user.batch(cand, dense, copy_rows=True)).numpy()
    got = served.score(user, cand, dense)
    assert got.shape == (23, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)
    # the broadcast (stride-0) batch gives the same as the copied one
    np.testing.assert_allclose(model.predict(user.batch(cand, dense)).numpy(), ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", ["transact_v10", "transact_v11"])
@pytest.mark.parametrize("layer0", ["decomposed", "sdpa"])
def test_every_transact_formulation_agrees(models, kind, layer0):
    """CPU compaction path, the static (CUDA-shaped, masked) path run on CPU, both layer-0 forms,
    chunk threads; for every kind of user."""
    model = models[kind]
    served = ServedRanker(model, layer0=layer0, chunk_tokens=30, workers=2)
    cand, dense = candidates(17, seed=3)
    for name, spec in USERS.items():
        user = make_user(seed=7, **spec)
        ref = served.reference(user, cand, dense)
        np.testing.assert_allclose(served.score(user, cand, dense), ref, rtol=0, atol=TOL, err_msg=name)
        with torch.inference_mode():
            static = served._forward_static(user, cand, dense).numpy()
        np.testing.assert_allclose(static, ref, rtol=0, atol=TOL, err_msg=f"static {name}")


@pytest.mark.parametrize("n_layers", [1, 3])
def test_layer_counts_and_default_sizes(n_layers):
    torch.manual_seed(1)
    model = build_model(tiny("transact_v11", n_layers=n_layers, n_heads=4, action_emb_dim=8))
    served = ServedRanker(model)
    cand, dense = candidates(9)
    user = make_user(6, future=(2,))
    np.testing.assert_allclose(served.score(user, cand, dense), served.reference(user, cand, dense),
                               rtol=0, atol=TOL)


def test_default_config_at_serving_size():
    """ModelConfig defaults (transact_v11, L=100, D=32, DCN), 100 actions, 64 candidates."""
    torch.manual_seed(0)
    cfg = ModelConfig()
    model = build_model(cfg)
    served = ServedRanker(model)
    rng = np.random.default_rng(0)
    user = UserTensors.from_sequence(rng.normal(size=(100, 32)), rng.integers(1, 4, 100),
                                     RT - 1000 * np.arange(1, 101), cfg.seq_len, RT)
    cand = rng.normal(size=(64, 32)).astype(np.float32)
    ref = served.reference(user, cand)
    got = served.score(user, cand)
    assert np.abs(got - ref).max() <= TOL


def test_inputs_dense_broadcast_and_caller_module_untouched(models):
    model = models["transact_v11"]
    model.train()
    served = ServedRanker(model)
    assert model.training  # the served copy is in eval mode, the caller's module is not touched
    model.eval()
    user = make_user(8)
    cand, _ = candidates(6)
    row = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    np.testing.assert_allclose(served.score(user, cand.numpy(), row),
                               served.score(user, cand, np.tile(row, (6, 1))), rtol=0, atol=0)
    assert served.score(user, np.zeros((0, D), np.float32), np.zeros((0, 3))).shape == (0, 3)
    with pytest.raises(ValueError):
        served.score(user, cand)  # the model needs dense features
    with pytest.raises(ValueError):
        served.score(make_user(3, seq_len=L + 1), cand, row)
    with pytest.raises(ValueError):
        ServedRanker(model, dtype=torch.float16)  # no fp16 path on CPU
    with pytest.raises(ValueError):
        ServedRanker(model, dtype="int4")


def test_auto_dtype_resolves_to_bf16_only_where_the_hardware_has_it(models):
    flags = cpu_flags() or set()
    native = cpu_bf16_native()
    if not ({"avx512_bf16", "amx_bf16", "bf16"} & flags):
        assert not native  # an AVX2-only (or AVX-512 without BF16) CPU: bf16 would be emulated
    if native:
        assert torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype(None, "cpu") == torch.float32 and resolve_dtype(None, "cuda") == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cuda") == torch.float16
    served = ServedRanker(models["transact_v11"], dtype="auto")
    info = served.describe()
    assert served.dtype == resolve_dtype("auto", "cpu") and info["dtype_requested"] == "auto"
    assert info["kernels"]["bf16_native"] is native and info["kernels"]["threads"] >= 1
    assert served.tolerance == TOLERANCE[served.dtype]


@pytest.mark.parametrize("kind", ["transact_v10", "transact_v11"])
@pytest.mark.parametrize("workers", [1, 2])
def test_bf16_cpu_path_within_tolerance(models, kind, workers):
    model = models[kind]
    served = ServedRanker(model, dtype="bfloat16", chunk_tokens=40, workers=workers)
    cand, dense = candidates(23, seed=5)
    tol = TOLERANCE[torch.bfloat16]
    worst = 0.0
    for name, spec in USERS.items():
        user = make_user(seed=17, **spec)
        got = served.score(user, cand, dense)
        assert got.dtype == np.float32 and np.isfinite(got).all()
        ref = served.reference(user, cand, dense)
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol, err_msg=name)
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst > 0  # it did run in reduced precision (fp32 agrees to ~1e-7)


@pytest.mark.parametrize("kind", ["lstm", "avg_pool", "din"])
def test_bf16_cpu_path_of_baselines(models, kind):
    served = ServedRanker(models[kind], dtype="bfloat16")
    cand, dense = candidates(11)
    user = make_user(seed=3, n=6)
    np.testing.assert_allclose(served.score(user, cand, dense), served.reference(user, cand, dense),
                               rtol=0, atol=TOLERANCE[torch.bfloat16])


def test_user_tensors_from_sequence_keeps_newest_and_pads():
    u = UserTensors.from_sequence(np.arange(15 * D).reshape(15, D), np.arange(1, 16) % 3 + 1,
                                  RT - np.arange(15), L, RT)
    assert u.seq_len == L and bool(u.seq_mask.all())
    assert u.seq_pin_emb[0, 0] == 0 and int(u.seq_time_ms[0]) == RT  # newest first kept
    empty = UserTensors.from_sequence(np.zeros((0, D)), [], [], L, RT, emb_dim=D)
    assert not empty.seq_mask.any() and tuple(empty.seq_pin_emb.shape) == (L, D)


def test_bucket_sizes():
    assert _bucket(1) == 64 and _bucket(64) == 64
    assert _bucket(100) == 112 and _bucket(1000) == 1024 and _bucket(5000) == 5120
    for n in range(65, 9000, 37):
        b = _bucket(n)
        assert n <= b <= 1.25 * n + 16


def test_bench_model_runs_and_imports_nothing_heavy():
    code = (
        "import sys, json, io, contextlib\n"
        "from homefeed.bench import serve as bench\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    bench.main(['model', '--sizes', '8,24', '--repeats', '1', '--threads', '1', '--device', 'cpu',\n"
        "                '--dtype', 'auto', '--json'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('feast', 'bentoml', 'redis', 'pyarrow'))\n"
        "print(json.dumps({'result': json.loads(buf.getvalue()), 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["heavy"] == []
    res = data["result"]
    assert res["device"] == "cpu" and res["cpu_count"] and res["dtype_requested"] == "auto"
    assert res["dtype"] == ("bfloat16" if res["kernels"]["bf16_native"] else "float32")
    assert res["kernels"]["threads"] == 1 and "mkldnn" in res["kernels"]
    assert [r["n"] for r in res["rows"]] == [8, 24]
    for row in res["rows"]:
        assert {"n", "plain_ms", "served_ms", "speedup", "max_abs_diff"} <= set(row)
        assert row["max_abs_diff"] <= res["tolerance"] <= TOLERANCE[torch.bfloat16]


# -- CUDA (skipped here; run on the GPU machine) -----------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("kind", ["transact_v10", "transact_v11", "lstm", "din"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_graphs_match_plain(models, kind, dtype):
    served = ServedRanker(models[kind], device="cuda", dtype=dtype)
    cand, dense = candidates(70)
    for name, spec in USERS.items():
        user = make_user(seed=5, **spec)
        ref = served.reference(user, cand, dense)
        for n in (70, 65):  # same bucket: one graph replayed with padding rows
            got = served.score(user, cand[:n], dense[:n])
            np.testing.assert_allclose(got, ref[:n], rtol=0, atol=TOLERANCE[dtype], err_msg=name)
    assert served.graph_failures == 0


@cuda
def test_compiled_cuda_graphs_match_plain(models):
    served = ServedRanker(models["transact_v11"], device="cuda", compile=True)
    cand, dense = candidates(70)
    for name, spec in USERS.items():
        user = make_user(seed=5, **spec)
        got = served.score(user, cand, dense)
        np.testing.assert_allclose(got, served.reference(user, cand, dense), rtol=0,
                                   atol=TOLERANCE[torch.bfloat16], err_msg=name)
    assert served.graph_failures == 0


class _EagerGraph:
    """Stands in for a CUDA graph on CPU: replay re-runs the recorded function into the same
    static output, so the bucket/static-buffer plumbing of the graph path is tested here."""

    def __init__(self, run):
        self.run = run
        self.output = run()
        self.replays = 0

    def replay(self):
        self.output.copy_(self.run())
        self.replays += 1


def test_graph_path_plumbing_on_cpu(models):
    """Static buffers, padding to a bucket, slicing, reuse of one bucket across requests and
    users, LRU of buckets: the CUDA-graph path with the graph replaced by an eager replay."""
    served = ServedRanker(models["transact_v11"], max_graphs=2)
    recorded = []

    def record(run):
        g = _EagerGraph(run)
        recorded.append(g)
        return g, g.output

    served._record = record
    cand, dense = candidates(150, seed=9)
    with torch.inference_mode():
        for name, spec in USERS.items():
            user = make_user(seed=11, **spec)
            for n in (70, 65, 3, 150):  # buckets 80, 80, 64, 160
                got = served._score_graph(user, cand[:n], dense[:n]).numpy()
                ref = served.reference(user, cand[:n], dense[:n])
                np.testing.assert_allclose(got, ref, rtol=0, atol=TOL, err_msg=f"{name} n={n}")
    assert sorted(served._graphs) == [(64,), (160,)]  # LRU keeps the 2 most recent buckets
    assert len(recorded) > 3  # evicted buckets were recaptured
    assert sum(g.replays for g in recorded) == 4 * len(USERS)


@pytest.mark.parametrize("kind", ["lstm", "avg_pool", "none", "din"])
def test_static_path_of_baselines(models, kind):
    served = ServedRanker(models[kind])
    cand, dense = candidates(10)
    for spec in USERS.values():
        user = make_user(seed=2, **spec)
        with torch.inference_mode():
            got = served._forward_static(user, cand, dense).numpy()
        np.testing.assert_allclose(got, served.reference(user, cand, dense), rtol=0, atol=TOL)


@pytest.mark.slow
def test_compiled_graph_forward_matches_plain_on_cpu(models):
    """`compile=True` captures a torch.compile'd forward; Inductor runs on CPU too, so the
    compiled function's numerics are checked here (the CUDA graph replaced by an eager replay)."""
    served = ServedRanker(models["transact_v11"], compile=True)
    served._record = lambda run: (lambda g: (g, g.output))(_EagerGraph(run))
    cand, dense = candidates(70, seed=4)
    with torch.inference_mode():
        for name, spec in USERS.items():
            user = make_user(seed=13, **spec)
            got = served._score_graph(user, cand, dense).numpy()
            np.testing.assert_allclose(got, served.reference(user, cand, dense), rtol=0, atol=1e-4,
                                       err_msg=name)
    assert served.describe()["compiled"] is True


def test_exported_model_hit_at_3_with_bf16_equals_fp32_within_its_bootstrap_interval(tmp_path):
    """A tiny TransAct v1.1 trained on the planted dataset, exported to a private BentoML store
    and loaded back as the service loads it: test-day repin HIT@3 from the bf16 CPU path lies in
    the fp32 path's 95% bootstrap interval (requests resampled), and the two differ little."""
    import json as _json

    from helpers import planted_dataset
    from safetensors.torch import save_file

    from homefeed.metrics import hit_at_k_per_request
    from homefeed.training.data import PinTable, RankingData, dense_feature_spec
    from homefeed.training.dataset import load_dataset
    from homefeed.training.export import export_run, load_exported
    from homefeed.training.train import TrainConfig, model_config_for, train

    heads = ModelConfig().heads
    planted_dataset(tmp_path / "ds", n_requests=450)
    ds = load_dataset(tmp_path / "ds")
    pins = PinTable(ds.pins, 8)
    data = {s: RankingData(*ds.split(s), pins, 16, heads) for s in ("train", "test")}
    spec = dense_feature_spec(8)
    config = model_config_for("transact_v11", 16, 8, spec["dim"], action_emb_dim=8, ff_dim=16, top_k=4,
                              hidden_dim=16, mlp_dims=(32,), dcn_layers=1, time_window_ms=0)
    result = train(config, data["train"], None, TrainConfig(epochs=4, batch_size=128, lr=3e-3, seed=0),
                   progress=False)
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(run / "model.safetensors"))
    (run / "config.json").write_text(_json.dumps(config.to_dict()))
    (run / "run.json").write_text(_json.dumps({"schema_fingerprint": ds.meta["schema_fingerprint"],
                                               "dense_features": spec, "validation": {"success": True}}))
    tag = export_run(run, name="hit-ranker", bentoml_home=tmp_path / "bentoml")
    model, _, _ = load_exported(tag, ds.meta["schema_fingerprint"], bentoml_home=tmp_path / "bentoml")

    test = data["test"]
    rows_of = pd.Series(np.arange(len(test))).groupby(test.request_ids).indices
    scores = {}
    for dtype in ("float32", "bfloat16"):
        served = ServedRanker(model, dtype=dtype)
        out = np.zeros(len(test), np.float32)
        for rows in rows_of.values():
            b = test.collate(rows)
            out[rows] = served.score(UserTensors.from_batch(b, 0), b.cand_emb, b.dense)[:, 0]
        scores[dtype] = out
    hit = {k: hit_at_k_per_request(v, test.labels[:, 0], test.request_ids, k=3) for k, v in scores.items()}
    fp32, bf16 = hit["float32"].to_numpy(), hit["bfloat16"].reindex(hit["float32"].index).to_numpy()
    assert fp32.mean() > 0.5  # the model learned the planted signal (random order: ~0.3)
    boot = np.random.default_rng(0).integers(0, fp32.size, (1000, fp32.size))
    low, high = np.percentile(fp32[boot].mean(axis=1), [2.5, 97.5])
    assert low <= bf16.mean() <= high, (bf16.mean(), low, high)
    assert abs(bf16.mean() - fp32.mean()) <= 0.02
    assert np.abs(scores["bfloat16"] - scores["float32"]).max() <= TOLERANCE[torch.bfloat16]
