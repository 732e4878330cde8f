import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from homefeed.events import ActionType
from homefeed.metrics import auc, hit_at_k
from homefeed.model import (
    ENCODER_KINDS,
    ModelConfig,
    RankingBatch,
    WeightedMultiHeadBCE,
    build_batch,
    build_model,
    default_label_weight_matrix,
    embed_pins,
    make_pin_rows,
    time_window_mask,
    transact_one_user,
    weighted_multihead_bce,
    within_group_pairwise,
)
from homefeed.model.encoders import chronological
from homefeed.serving.fast_model import UserTensors

L, D = 8, 8
T0 = 1_767_225_600_000
HOUR = 3_600_000
R, C, H = int(ActionType.REPIN), int(ActionType.CLICK), int(ActionType.HIDE)


def tiny_config(encoder="transact_v11", **kw):
    base = dict(encoder=encoder, seq_len=L, emb_dim=D, action_emb_dim=4, n_layers=1, n_heads=2,
                ff_dim=16, top_k=3, hidden_dim=8, mlp_dims=(16,), dcn_layers=1, dense_dim=2,
                time_window_ms=HOUR)
    base.update(kw)
    return ModelConfig(**base)


def random_batch(lengths=(0, 1, 3, L, 5), seed=0, future_first=False):
    """One row per length; actions one hour apart, the newest 30 min before the request."""
    rng = np.random.default_rng(seed)
    pin_emb = rng.normal(size=(30, D)).astype(np.float32)
    rows = make_pin_rows(np.arange(1, 31))
    seqs = [rng.integers(1, 35, size=n) for n in lengths]  # ids > 30 are unknown pins
    acts = [rng.integers(1, 4, size=n) for n in lengths]
    times = [T0 - HOUR // 2 - np.arange(n) * HOUR for n in lengths]
    if future_first:
        for t in times:
            if len(t):
                t[0] = T0 + 5_000  # a delayed/leaking event from after the request
    b = len(lengths)
    return build_batch(seqs, acts, times, [T0] * b, rng.integers(1, 31, size=b), rows, pin_emb, L,
                       dense=rng.normal(size=(b, 2)), labels=(rng.random((b, 3)) < 0.3))


# -- batch contract ---------------------------------------------------------------------------


def test_build_batch_pads_truncates_and_zeroes_unknown_pins():
    pin_emb = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    rows = make_pin_rows([10, 20, 30, 40])
    b = build_batch(
        seq_pin_ids=[[20, 99, 10], list(range(10, 50, 10)) * 2, []],
        seq_action_types=[[R, C, H], [R] * 8, []],
        seq_action_times=[[30, 20, 10], list(range(80, 0, -10)), []],
        request_time_ms=[100, 100, 100], cand_pin_ids=[40, 5, 10],
        pin_rows=rows, pin_emb=pin_emb, seq_len=4, labels=[[1, 0, 0]] * 3,
    ).validate(emb_dim=3, seq_len=4, dense_dim=0, n_heads=3)
    assert b.seq_mask.tolist() == [[True, True, True, False], [True] * 4, [False] * 4]
    assert b.seq_action[0].tolist() == [R, C, H, 0]
    assert b.seq_time_ms[1].tolist() == [80, 70, 60, 50]  # kept the newest 4
    torch.testing.assert_close(b.seq_pin_emb[0, 0], torch.tensor(pin_emb[1]))
    assert b.seq_pin_emb[0, 1].abs().sum() == 0  # unknown pin 99 -> zeros, action still real
    assert b.seq_pin_emb[0, 3].abs().sum() == 0 and b.seq_pin_emb[2].abs().sum() == 0
    assert b.cand_emb[1].abs().sum() == 0  # unknown candidate
    assert b.dense.shape == (3, 0)
    short = build_batch([[20, 10, 30]], [[R, R, R]], [[3, 2, 1]], [9], [10], rows, pin_emb, 4,
                        seq_lengths=[2])
    assert short.seq_mask[0].tolist() == [True, True, False, False]


def test_build_batch_rejects_bad_rows():
    rows, emb = make_pin_rows([1]), np.ones((1, 2), np.float32)
    with pytest.raises(ValueError, match="different lengths"):
        build_batch([[1, 1]], [[R]], [[5, 4]], [9], [1], rows, emb, 4)
    with pytest.raises(ValueError, match="action ids"):
        build_batch([[1]], [[0]], [[5]], [9], [1], rows, emb, 4)
    with pytest.raises(ValueError, match="rows"):
        build_batch([[1], [1]], [[R]], [[5]], [9], [1], rows, emb, 4)


def test_impressions_merge_into_the_sequence_newest_first_capped_with_their_own_id():
    from homefeed.events import ACTION_VOCAB_SIZE
    from homefeed.model import IMPRESSION_ACTION_ID, merge_impressions

    assert IMPRESSION_ACTION_ID == ACTION_VOCAB_SIZE == max(ActionType) + 1
    I = IMPRESSION_ACTION_ID
    # user 0: actions at 10, 7, 4; impressions at 9, 7 (a tie: the action first), 1
    # user 1: no actions, two impressions; user 2: actions only, one cut by its length column
    pins, acts, times, lens = merge_impressions(
        [[1, 2, 3], [], [5, 6]], [[R, C, R], [], [C, R]], [[10, 7, 4], [], [8, 3]],
        [[21, 22, 23], [24, 25], []], [[9, 7, 1], [6, 2], []], 4,
        seq_lengths=[3, 0, 1], imp_lengths=[3, 2, 0])
    assert lens.tolist() == [4, 2, 1]  # capped at seq_len
    assert pins.tolist() == [[1, 21, 2, 22], [24, 25, 0, 0], [5, 0, 0, 0]]
    assert acts.tolist() == [[R, I, C, I], [I, I, 0, 0], [C, 0, 0, 0]]
    assert times.tolist() == [[10, 9, 7, 7], [6, 2, 0, 0], [8, 0, 0, 0]]
    # build_batch takes it with the model's larger vocabulary, and only then
    rows, emb = make_pin_rows(np.arange(1, 26)), np.ones((25, 2), np.float32)
    batch = build_batch(pins, acts, times, [11] * 3, [1] * 3, rows, emb, 4, seq_lengths=lens,
                        action_vocab_size=I + 1)
    assert batch.seq_mask.sum(1).tolist() == [4, 2, 1]
    with pytest.raises(ValueError, match="action ids"):
        build_batch(pins, acts, times, [11] * 3, [1] * 3, rows, emb, 4, seq_lengths=lens)
    cfg = tiny_config("transact_v11", sequence_impressions=True)
    assert cfg.action_vocab_size == I + 1 and ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert tiny_config("transact_v11").action_vocab_size == I


def test_serving_batch_broadcasts_user_side_without_copy():
    rng = np.random.default_rng(0)
    pin_emb = rng.normal(size=(10, D)).astype(np.float32)
    rows = make_pin_rows(np.arange(1, 11))
    seq, act, tms = [3, 4, 5], [R, C, R], [T0 - 1, T0 - 2, T0 - 3]
    cands = [1, 2, 7, 9]
    user = UserTensors.from_sequence(embed_pins(seq, rows, pin_emb), act, tms, L, T0)
    ub = user.batch(torch.from_numpy(embed_pins(cands, rows, pin_emb)), torch.tensor([1.0, 2.0]))
    assert ub.is_one_user() and ub.batch_size == 4
    assert ub.seq_pin_emb.stride(0) == 0 and ub.dense.stride(0) == 0
    full = build_batch([seq] * 4, [act] * 4, [tms] * 4, [T0] * 4, cands, rows, pin_emb, L,
                       dense=[[1.0, 2.0]] * 4)
    cfg = tiny_config("transact_v11")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.testing.assert_close(model(ub), model(full))


def test_config_round_trip_and_validation():
    cfg = tiny_config("cnn", heads=("repin", "hide"), mlp_dims=[32, 16])
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.mlp_dims == (32, 16)
    assert ModelConfig().heads == ("repin", "click", "hide")
    assert ModelConfig().transact_dim == 96 and ModelConfig().user_token_dim == 64
    with pytest.raises(ValueError):
        ModelConfig(encoder="gru")
    with pytest.raises(ValueError):
        ModelConfig(encoder="transact_v11", seq_len=5, top_k=10)
    with pytest.raises(ValueError):
        ModelConfig.from_dict({**cfg.to_dict(), "surprise": 1})


# -- masks ----------------------------------------------------------------------------------


def test_eval_mask_hides_only_padding_and_future_actions():
    b = random_batch(future_first=True)
    visible = b.visible_mask()
    expected = b.seq_mask.clone()
    expected[:, 0] = False  # the planted future actions
    assert torch.equal(visible, expected)
    model = build_model(tiny_config()).eval()
    assert torch.equal(model.encoder.visibility(b), visible)  # no time window at eval


def test_time_window_mask_semantics_per_row():
    b = random_batch(lengths=(L, L, L, L, 0))  # ages 0.5h, 1.5h, 2.5h, ...
    visible = b.visible_mask()
    t = torch.tensor([0, HOUR, 2 * HOUR, 100 * HOUR, HOUR])
    keep = time_window_mask(visible, b.seq_time_ms, b.request_time_ms, t)
    assert keep[0].all()  # T = 0: nothing hidden
    assert keep[1].tolist() == [True] + [True] * 7  # only the 0.5h one is within T, but newest
    assert keep[2].tolist() == [True, False] + [True] * 6  # 0.5h (newest, kept), 1.5h hidden
    assert keep[3].tolist() == [True] + [False] * 7  # everything in T: newest survives alone
    assert not keep[4].any()  # empty stays empty


def test_time_window_never_hides_newest_visible_action_and_is_per_row():
    b = random_batch(lengths=(L,) * 64, seed=1)
    model = build_model(tiny_config(time_window_ms=100 * HOUR)).train()
    torch.manual_seed(0)
    masks = torch.stack([model.encoder.visibility(b) for _ in range(20)])
    assert masks[:, :, 0].all()  # newest real action always visible
    # identical rows get different windows in the same batch (one T per row, not per batch)
    assert len({tuple(m.tolist()) for m in masks[0]}) > 3
    # a future action is never "rescued" as the newest: the newest non-future one is kept
    bf = random_batch(lengths=(L, 3, 1), future_first=True)
    for _ in range(10):
        vis = model.encoder.visibility(bf)
        assert not vis[:, 0].any()
        assert vis[0, 1] and vis[1, 1]
        assert not vis[2].any()  # its only action is in the future


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_padding_and_future_actions_never_change_the_output(kind):
    torch.manual_seed(0)
    model = build_model(tiny_config(kind)).eval()
    b = random_batch(future_first=True)
    ref = model(b)
    poisoned = RankingBatch(**{**b.__dict__})
    emb = b.seq_pin_emb.clone()
    emb[~b.visible_mask()] = 1e4  # padding and future positions: a value that would win any max
    poisoned.seq_pin_emb = emb
    times = b.seq_time_ms.clone()
    times[~b.seq_mask] = T0 - 1  # padded times that look like fresh real actions
    poisoned.seq_time_ms = times
    torch.testing.assert_close(model(poisoned), ref)


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_empty_sequences_give_finite_outputs_and_gradients(kind):
    torch.manual_seed(0)
    model = build_model(tiny_config(kind))
    b = random_batch(lengths=(0, 0, 2))
    for train in (True, False):
        model.train(train)
        model.zero_grad()
        logits = model(b)
        assert torch.isfinite(logits).all()
        logits.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    seq = model.encoder(b)
    assert torch.isfinite(seq).all()
    assert (seq[:2] == 0).all()  # cold start: encoder contributes exact zeros


def test_encoder_output_shapes():
    b = random_batch()
    d = 4 + 2 * D
    expected = {"none": 0, "avg_pool": D, "cnn": 8, "rnn": 8, "lstm": 8, "transformer": 2 * D, "din": D + 4,
                "transact_v10": L * d, "transact_v11": (3 + 1) * d}
    assert set(expected) == set(ENCODER_KINDS)
    for kind, out_dim in expected.items():
        model = build_model(tiny_config(kind, dcn_layers=0))
        assert model.encoder.out_dim == out_dim
        assert model.encoder(b).shape == (b.batch_size, out_dim)
        assert model(b).shape == (b.batch_size, 3)
    default = build_model(ModelConfig(encoder="transact_v11"))
    assert default.encoder.out_dim == 11 * 96
    v10 = build_model(ModelConfig(encoder="transact_v10", dcn_layers=0))
    assert v10.encoder.out_dim == 100 * 96


def test_recurrent_encoders_run_oldest_to_newest():
    x = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    visible = torch.tensor([[False, True, True, False], [True, True, True, True]])  # row 0: pos 0 future
    out, lengths = chronological(x, visible)
    assert lengths.tolist() == [2, 4]
    assert out[0, :2, 0].tolist() == [2.0, 1.0]  # oldest (pos 2) first, newest visible last
    assert out[1, :, 0].tolist() == [7.0, 6.0, 5.0, 4.0]
    torch.manual_seed(0)
    model = build_model(tiny_config("lstm")).eval()
    b = random_batch(lengths=(5,))
    enc = model.encoder
    inputs = enc.inputs(b, b.visible_mask())[0, :5].flip(0)[None]  # chronological by hand
    _, (h, _) = enc.rnn(inputs)
    torch.testing.assert_close(enc(b), h[-1])


def test_transact_max_pool_ignores_padding_even_when_real_values_are_negative():
    enc = build_model(tiny_config()).encoder
    d = enc.d_model
    with torch.no_grad():
        enc.pool_proj.weight.copy_(torch.eye(d))
        enc.pool_proj.bias.zero_()
    out = -torch.rand(3, L, d) - 1.0  # every real value < -1; padded outputs are zeroed (0 > -1)
    visible = torch.zeros(3, L, dtype=torch.bool)
    visible[0, :2] = True
    visible[1, :] = True
    out = torch.where(visible[..., None], out, 0.0)
    got = enc._compress(out, visible, visible.any(1)).reshape(3, -1, d)
    torch.testing.assert_close(got[0, -1], out[0, :2].amax(0))  # padding (0) did not win
    torch.testing.assert_close(got[1, -1], out[1].amax(0))
    assert (got[2] == 0).all()  # empty sequence -> zeros
    torch.testing.assert_close(got[:, :3], out[:, :3])  # first K tokens, padded ones zero


@pytest.mark.parametrize("kind", ["transact_v10", "transact_v11", "transformer"])
def test_inference_fast_path_matches_autograd_path(kind):
    # under no_grad PyTorch may take its fused encoder-layer path; results must not change
    torch.manual_seed(0)
    model = build_model(tiny_config(kind)).eval()
    b = random_batch(lengths=(0, 3, L, 1), future_first=True)
    expected = model(b)
    got = model.predict(b)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.sigmoid(expected), atol=1e-5, rtol=1e-5)


# -- DIN -------------------------------------------------------------------------------------------


def test_din_attends_with_the_candidate_and_keeps_the_intensity_of_interest():
    torch.manual_seed(0)
    enc = build_model(tiny_config("din")).encoder.eval()
    b = random_batch(lengths=(3, 3))
    b.cand_emb[1] = -b.cand_emb[0]  # same history, another candidate
    b.seq_pin_emb[1], b.seq_action[1] = b.seq_pin_emb[0].clone(), b.seq_action[0].clone()
    out = enc(b)
    assert not torch.allclose(out[0], out[1])  # the candidate is the query
    # no softmax: the same action twice weighs twice (the paper keeps the intensity)
    one = random_batch(lengths=(1, 2))
    one.seq_pin_emb[1, 1], one.seq_action[1, 1] = one.seq_pin_emb[1, 0], one.seq_action[1, 0]
    one.seq_pin_emb[0, 0], one.seq_action[0, 0] = one.seq_pin_emb[1, 0], one.seq_action[1, 0]
    one.cand_emb[1] = one.cand_emb[0]
    pooled = enc(one)
    torch.testing.assert_close(pooled[1], 2 * pooled[0])


def test_din_gradients_reach_the_activation_unit_and_action_embedding():
    torch.manual_seed(0)
    model = build_model(tiny_config("din"))
    b = random_batch()
    model(b).sum().backward()
    enc = model.encoder
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert enc.action_emb.weight.grad[0].abs().sum() == 0  # padding id stays untouched


def test_din_serving_split_equals_the_module():
    torch.manual_seed(0)
    enc = build_model(tiny_config("din", din_hidden=(6, 5))).encoder.eval()
    b = random_batch(lengths=(5, 0, L), future_first=True)
    cands = torch.randn(7, D)
    for i in range(b.batch_size):
        user = (b.seq_pin_emb[i], b.seq_action[i], b.seq_time_ms[i], b.seq_mask[i])
        expected = enc(RankingBatch.one_user(*user, T0, cands))
        visible = b.seq_mask[i] & (b.seq_time_ms[i] <= T0)
        got = enc.score_candidates(enc.user_state(b.seq_pin_emb[i], b.seq_action[i], visible), cands)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# -- transact_one_user equals the reference formulation, TransActEncoder.forward --------------


@pytest.mark.parametrize("kind", ["transact_v10", "transact_v11"])
def test_transact_one_user_matches_module(kind):
    torch.manual_seed(0)
    cfg = tiny_config(kind, n_layers=2)
    model = build_model(cfg).eval()
    b = random_batch(lengths=(5, 0, L), future_first=True)
    cands = torch.randn(6, D)
    for i in range(b.batch_size):
        user = (b.seq_pin_emb[i], b.seq_action[i], b.seq_time_ms[i], b.seq_mask[i])
        one = RankingBatch.one_user(*user, T0, cands)
        expected = model.encoder(one)
        got = transact_one_user(model.encoder, cfg, *user, T0, cands)
        assert got.shape == (6, model.encoder.out_dim)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        got_sd = transact_one_user(model.encoder.state_dict(), cfg, *user, T0, cands)
        torch.testing.assert_close(got_sd, expected, atol=1e-5, rtol=1e-5)


def test_transact_first_layer_input_splits_into_user_and_candidate_halves():
    torch.manual_seed(0)
    cfg = tiny_config()
    enc = build_model(cfg).encoder.eval()
    b = random_batch(lengths=(L,))
    cands = torch.randn(5, D)
    w_in = enc.encoder.layers[0].self_attn.in_proj_weight
    user = torch.cat([enc.action_emb(b.seq_action[0]), b.seq_pin_emb[0]], dim=-1)  # [L, A+D]
    tokens = torch.cat([user[None].expand(5, L, -1), cands[:, None].expand(5, L, D)], dim=-1)
    split = (user @ w_in[:, : cfg.user_token_dim].T)[None] + (cands @ w_in[:, cfg.user_token_dim:].T)[:, None]
    torch.testing.assert_close(tokens @ w_in.T, split, atol=1e-5, rtol=1e-5)


# -- loss -----------------------------------------------------------------------------------


def test_loss_weighting_hand_computed():
    heads = ("repin", "click", "hide")
    W = default_label_weight_matrix(heads)
    assert W.tolist() == [[1, 1, 1], [1, 1, 1], [5, 5, 1]]
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5], [1.0, 1.0, -2.0]])
    labels = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    ex_w = torch.tensor([1.0, 2.0, 0.5])
    out = weighted_multihead_bce(logits, labels, W, ex_w)
    sp = lambda x: math.log1p(math.exp(x))  # BCE(z, 0) = softplus(z); BCE(z, 1) = softplus(-z)
    # row 0: no action -> weight 1 everywhere; row 1: hide -> repin/click x5, hide x1, all x2;
    # row 2: repin + click -> max of their rows = 1, all x0.5
    repin = (1 * sp(0.0) + 2 * 5 * sp(2.0) + 0.5 * sp(-1.0)) / 3
    click = (1 * sp(0.0) + 2 * 5 * sp(-1.0) + 0.5 * sp(-1.0)) / 3
    hide = (1 * sp(0.0) + 2 * 1 * sp(-0.5) + 0.5 * sp(-2.0)) / 3
    assert out.per_head.tolist() == pytest.approx([repin, click, hide], rel=1e-6)
    assert float(out.total) == pytest.approx(repin + click + hide, rel=1e-6)
    assert out.weights.tolist() == [[1, 1, 1], [10, 10, 2], [0.5, 0.5, 0.5]]
    module = WeightedMultiHeadBCE(heads)
    torch.testing.assert_close(module(logits, labels, ex_w).total, out.total)
    plain = weighted_multihead_bce(logits, labels)  # no matrix: plain mean BCE per head
    torch.testing.assert_close(
        plain.per_head,
        torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0))


def test_within_user_pairwise_loss_hand_computed():
    sp = lambda x: math.log1p(math.exp(x))
    # heads (repin, click); users 7, 7, 7, 9, 9
    logits = torch.tensor([[1.0, 0.5], [0.0, -1.0], [2.0, 0.0], [3.0, 1.0], [-1.0, 2.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    groups = torch.tensor([7, 7, 7, 9, 9])
    out = within_group_pairwise(logits, labels, groups)
    # repin: user 7 has positive row 0 against rows 1, 2; user 9 has no positive
    repin = (sp(0.0 - 1.0) + sp(2.0 - 1.0)) / 2
    # click: user 7: row 1 against rows 0, 2; user 9: row 3 against row 4 (never across users)
    click = (sp(0.5 - -1.0) + sp(0.0 - -1.0) + sp(2.0 - 1.0)) / 3
    assert out.tolist() == pytest.approx([repin, click], rel=1e-6)
    out.sum().backward()
    assert logits.grad[4, 0] == 0  # a head without a pair in the user gives no gradient
    # a batch without any pair: zero, not NaN
    none = within_group_pairwise(logits, torch.zeros_like(labels), groups)
    assert none.tolist() == [0.0, 0.0]


# -- planted signal ---------------------------------------------------------------------------


def _planted_world(seed=0, n_topics=6, per_topic=30):
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(n_topics, D)).astype(np.float32)
    topic = np.repeat(np.arange(n_topics), per_topic)
    emb = (centroids[topic] + 0.3 * rng.normal(size=(topic.size, D))).astype(np.float32)
    return topic, emb, make_pin_rows(np.arange(1, topic.size + 1))


def _planted_data(world, n_requests, n_cand, seed):
    """Label (repin head) = candidate's topic equals the topic of the user's newest repin."""
    topic, emb, rows = world
    rng = np.random.default_rng(seed)
    n_pins = topic.size
    seqs, acts, times, cands, ys = [], [], [], [], []
    for _ in range(n_requests):
        n = int(rng.integers(0, L + 1))
        s = rng.integers(1, n_pins + 1, size=n)
        a = rng.choice([R, C, H], p=[0.4, 0.4, 0.2], size=n)
        t = T0 - HOUR // 2 - np.arange(n) * HOUR
        repins = np.flatnonzero(a == R)
        target = topic[s[repins[0]] - 1] if repins.size else -1
        c = rng.integers(1, n_pins + 1, size=n_cand)
        seqs += [s] * n_cand
        acts += [a] * n_cand
        times += [t] * n_cand
        cands.append(c)
        ys.append((topic[c - 1] == target).astype(np.float32))
    y = np.concatenate(ys)
    labels = np.stack([y, np.zeros_like(y), np.zeros_like(y)], axis=1)
    batch = build_batch(seqs, acts, times, [T0] * len(seqs), np.concatenate(cands), rows, emb, L,
                        labels=labels)
    return batch, np.repeat(np.arange(n_requests), n_cand)


def _train(kind, data, steps, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config(kind, dense_dim=0, dcn_layers=0, mlp_dims=(32,), dropout=0.0, hidden_dim=16)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = WeightedMultiHeadBCE(cfg.heads)
    for _ in range(steps):
        b = data.select(torch.randint(0, data.batch_size, (128,)))
        loss = loss_fn(model(b), b.labels).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def planted():
    # tiny models gain nothing from intra-op threads and stall badly on a busy 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    world = _planted_world()
    yield _planted_data(world, 3000, 6, seed=1), _planted_data(world, 500, 6, seed=2)
    torch.set_num_threads(threads)


def test_planted_signal_transact_beats_random_and_no_sequence(planted):
    (train, _), (test, groups) = planted
    y = test.labels[:, 0].numpy()
    results = {}
    for kind in ("none", "transact_v11"):
        scores = _train(kind, train, steps=300).predict(test)[:, 0].numpy()
        results[kind] = (hit_at_k(scores, y, groups, k=3), auc(scores, y))
    random_hit = hit_at_k(np.random.default_rng(0).random(y.size), y, groups, k=3)
    print(f"planted HIT@3/AUC: {results}, random HIT@3 {random_hit:.3f}")
    hit_v11, auc_v11 = results["transact_v11"]
    hit_none, auc_none = results["none"]
    assert auc_v11 > 0.9 and hit_v11 > 0.85
    assert auc_none < 0.6 and hit_none < 0.65
    assert hit_v11 > random_hit + 0.25 and hit_v11 > hit_none + 0.25


def test_training_is_deterministic_with_a_seed(planted):
    (train, _), (test, _) = planted
    a = _train("transact_v11", train, steps=15, seed=3)
    b = _train("transact_v11", train, steps=15, seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    torch.testing.assert_close(a.predict(test), b.predict(test), rtol=0, atol=0)


def test_pin_embedding_scale_defaults_to_sqrt_dim_and_old_configs_keep_raw_inputs():
    cfg = ModelConfig(emb_dim=16)
    assert cfg.pin_emb_scale == 4.0
    assert ModelConfig.from_dict(cfg.to_dict()).pin_emb_scale == 4.0
    legacy = {k: v for k, v in cfg.to_dict().items() if k != "pin_emb_scale"}
    assert ModelConfig.from_dict(legacy).pin_emb_scale == 1.0  # trained on raw embeddings
    with pytest.raises(ValueError, match="pin_emb_scale"):
        ModelConfig(pin_emb_scale=0)


def test_pin_embedding_scale_is_applied_to_engaged_and_candidate_pins():
    torch.manual_seed(0)
    scaled = build_model(ModelConfig(encoder="transact_v11", seq_len=8, emb_dim=8, action_emb_dim=8,
                                     top_k=2, pin_emb_scale=3.0)).eval()
    raw = build_model(scaled.config.replace(pin_emb_scale=1.0)).eval()
    raw.load_state_dict(scaled.state_dict())
    b = RankingBatch(seq_pin_emb=torch.randn(4, 8, 8), seq_action=torch.randint(1, 4, (4, 8)),
                     seq_time_ms=torch.zeros(4, 8, dtype=torch.long), seq_mask=torch.ones(4, 8, dtype=torch.bool),
                     request_time_ms=torch.ones(4, dtype=torch.long), cand_emb=torch.randn(4, 8),
                     dense=torch.zeros(4, 0))
    pre = dataclasses.replace(b, seq_pin_emb=b.seq_pin_emb * 3, cand_emb=b.cand_emb * 3)
    torch.testing.assert_close(scaled.predict(b), raw.predict(pre))
    assert not torch.allclose(scaled.predict(b), raw.predict(b))


def test_a_dense_feature_constant_in_training_is_centred_not_blown_up():
    """std ~0 in training (every user had a profile) must not turn a new value at serving time
    into a saturating input: such a feature is centred with std 1."""
    from homefeed.model import build_model
    from homefeed.model.config import ModelConfig

    m = build_model(ModelConfig(encoder="none", dense_dim=2, emb_dim=8))
    m.set_dense_stats(np.array([1.0, 0.5]), np.array([0.0, 2.0]))
    assert m.dense_std.tolist() == [1.0, 2.0] and m.dense_mean.tolist() == [1.0, 0.5]
