"""Rules with state (adamoe/moe/rules.py): the target controller of gap and top-p (DTop-p), expert-threshold routing
with its moving averages, and top-p's entropy loss; each against a float64 reference written here from its
definition, and the state through a training step, activation checkpointing, save, load and evaluation."""

import math

import pytest
import torch
from tiny_models import tiny_llama

import adamoe
from adamoe.moe.balance import router_entropy_loss
from adamoe.moe.router import Router, RoutingStateError, select_top_k
from adamoe.moe.rules import calibrated_parameter, controller_step, ema_step


def probs(num_tokens=64, num_experts=8, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(num_tokens, num_experts, generator=g, dtype=torch.float64)).softmax(-1)


def tokens(seed=0, batch=4, length=12):
    return torch.randint(0, 40, (batch, length), generator=torch.Generator().manual_seed(seed))


def routers(model):
    return [block.router for _, block in adamoe.moe_blocks(model)]


def train_steps(model, steps, *, checkpointing=False):
    """A plain training loop, the way the README's raw-API example runs one."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for step in range(steps):
        batch = tokens(seed=step)
        loss = model(input_ids=batch, labels=batch).loss + adamoe.balance_loss(model)
        loss.backward()
        adamoe.update_routing_state(model)
        optimizer.step()
        optimizer.zero_grad()


# Expert-threshold routing.


def et_reference(p, thresholds, k_max):
    """Per token: experts in decreasing probability, the first always, each further one while it reaches its own
    threshold."""
    out = []
    for row in p.tolist():
        order = sorted(range(len(row)), key=lambda e: -row[e])[:k_max]
        kept = [order[0]]
        for e in order[1:]:
            if row[e] < thresholds[e]:
                break
            kept.append(e)
        out.append(kept)
    return out


@pytest.mark.parametrize("k_max", [2, 4])
def test_expert_threshold_takes_each_expert_that_reaches_its_own_threshold(k_max):
    p = probs()
    thresholds = torch.linspace(0.05, 0.3, 8, dtype=torch.float64)
    index, active = select_top_k(
        p, gating="adaptive", threshold=0.0, top_k=k_max, rule="expert_threshold", expert_thresholds=thresholds
    )
    got = [index[t][active[t]].tolist() for t in range(p.shape[0])]
    assert got == et_reference(p, thresholds.tolist(), k_max)
    assert 1 < sum(len(e) for e in got) / len(got) < k_max  # the test sees both kinds of token


def test_expert_thresholds_at_the_ends_give_top1_and_top_k_max_and_lower_ones_never_take_an_expert_away():
    p = probs(seed=1)

    def active(thresholds):
        return select_top_k(
            p, gating="adaptive", threshold=0.0, top_k=4, rule="expert_threshold", expert_thresholds=thresholds
        )[1]

    assert active(torch.full((8,), 1.5, dtype=torch.float64)).sum(-1).tolist() == [1] * 64
    assert active(torch.zeros(8, dtype=torch.float64)).all()
    previous = None
    for level in torch.linspace(0.6, 0.0, 13).tolist():
        current = active(torch.full((8,), level, dtype=torch.float64))
        if previous is not None:
            assert (current >= previous).all()
        previous = current


def test_ema_step_moves_each_threshold_towards_its_experts_capacity_th_score_and_skips_padding():
    p = probs(num_tokens=40)
    mask = torch.ones(40, dtype=torch.bool)
    mask[-8:] = False  # padding: 32 real tokens
    p_padded = p.clone()
    p_padded[~mask] = 0.999  # would dominate every expert's top scores if it were counted
    old = torch.tensor([math.nan, *[0.2] * 7], dtype=torch.float64)
    new = ema_step(old, p_padded, mask, target=1.5, decay=0.9)
    capacity = round(32 * 1.5 / 8)  # 6 tokens expected per expert
    for e in range(8):
        scores = sorted(p[:32, e].tolist(), reverse=True)
        expected = scores[capacity - 1] if e == 0 else 0.9 * 0.2 + 0.1 * scores[capacity - 1]
        assert new[e].item() == pytest.approx(expected, abs=1e-12)
    no_real_tokens = ema_step(old, p_padded, torch.zeros(40, dtype=torch.bool), target=1.5, decay=0.9)
    torch.testing.assert_close(no_real_tokens, old, rtol=0, atol=0, equal_nan=True)


def test_expert_threshold_training_estimates_the_thresholds_and_they_travel_with_the_checkpoint(tmp_path):
    moe = adamoe.MoEConfig(num_experts=4, top_k=4, rule="expert_threshold", target_experts=1.5, router_init_std=1.0)
    model = tiny_llama(moe)
    assert all(torch.isnan(r.expert_thresholds).all() for r in routers(model))
    model.eval()
    with pytest.raises(RoutingStateError, match="--rule expert_threshold"):
        model(input_ids=tokens())
    train_steps(model, 3)
    estimated = [r.expert_thresholds.clone() for r in routers(model)]
    assert all(torch.isfinite(t).all() and (t > 0).all() for t in estimated)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=tokens(9)).logits
    for router in routers(model):  # an evaluation forward does not move the state
        assert torch.equal(router.expert_thresholds, estimated[routers(model).index(router)])
    model.save_pretrained(tmp_path)
    again = adamoe.from_pretrained(str(tmp_path)).eval()
    for router, thresholds in zip(routers(again), estimated, strict=True):
        assert torch.equal(router.expert_thresholds, thresholds)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=tokens(9)).logits, logits, rtol=0, atol=0)


def test_the_first_expert_threshold_step_routes_by_thresholds_estimated_on_its_real_tokens_only():
    config = adamoe.MoEConfig(
        num_experts=4, top_k=4, rule="expert_threshold", target_experts=1.5, router_init_std=1.0
    ).resolve()
    router = Router(hidden_size=8, config=config).train()
    hidden = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    hidden[30:] *= 20  # padding with peaked gates: counted, it would set every expert's capacity-th score
    mask = torch.tensor([True] * 30 + [False] * 30)
    decision = router(hidden, mask)
    real = ema_step(router.expert_thresholds, decision.probs, mask, target=1.5, decay=0.0)
    padded = ema_step(router.expert_thresholds, decision.probs, None, target=1.5, decay=0.0)
    assert not torch.allclose(real, padded)

    def routed(thresholds):
        return select_top_k(
            decision.probs, gating="adaptive", threshold=0.0, top_k=4, rule="expert_threshold",
            expert_thresholds=thresholds,
        )[1]  # fmt: skip

    assert torch.equal(decision.active, routed(real)) and not torch.equal(decision.active, routed(padded))
    assert torch.equal(decision.token_mask, mask)
    before = router.expert_thresholds.clone()
    router.update_state(decision)  # stored: the real tokens' estimate at the capacity the controller moved to
    capacity = router.controller[0].item()
    stored = ema_step(before, decision.probs, mask, target=capacity, decay=config.ema_decay)
    torch.testing.assert_close(router.expert_thresholds, stored, rtol=0, atol=0)


def test_a_models_blocks_hand_the_router_its_padding_mask_on_the_first_expert_threshold_step():
    moe = adamoe.MoEConfig(num_experts=4, top_k=4, rule="expert_threshold", target_experts=1.5, router_init_std=1.0)
    model = tiny_llama(moe).train()
    attention_mask = torch.ones(4, 12, dtype=torch.long)
    attention_mask[:2, 5:] = 0  # two sentences padded on the right
    model(input_ids=tokens(), attention_mask=attention_mask)
    for _, block in adamoe.moe_blocks(model):
        routing = block.last_routing
        assert torch.equal(routing.token_mask, attention_mask.bool().reshape(-1))
        nan = torch.full((4,), math.nan)
        thresholds = ema_step(nan, routing.probs, routing.token_mask, target=1.5, decay=0.0)
        routed = select_top_k(
            routing.probs, gating="adaptive", threshold=0.0, top_k=4, rule="expert_threshold",
            expert_thresholds=thresholds,
        )[1]  # fmt: skip
        assert torch.equal(routing.active, routed)


# The target controller (DTop-p) on gap and top-p.


def test_controller_step_is_a_pi_step_on_the_parameters_logarithm_whose_sum_stops_growing_at_the_cap():
    state = torch.tensor([0.3, 0.0, 0.3])
    state = controller_step(state, torch.tensor(1.2), target=1.5, gains=(2.0, 0.5))
    assert state.tolist() == pytest.approx([0.3 * math.exp(2.0 * 0.3 + 0.5 * 0.3), 0.3, 0.3])
    state = controller_step(state, torch.tensor(1.7), target=1.5, gains=(2.0, 0.5))
    assert state.tolist() == pytest.approx([0.3 * math.exp(2.0 * -0.2 + 0.5 * 0.1), 0.1, 0.3])
    # Far too few experts with a parameter already at 1: the parameter stays at 1 and the sum stays where it was.
    saturated = controller_step(torch.tensor([1.0, 20.0, 0.3]), torch.tensor(1.0), target=2.0, gains=(2.0, 0.5))
    assert saturated.tolist() == pytest.approx([1.0, 20.0, 0.3])
    # The error turns: the sum moves again at once.
    back = controller_step(saturated, torch.tensor(2.0), target=1.5, gains=(2.0, 0.5))
    assert back[1].item() == pytest.approx(19.5)


def test_calibration_finds_the_smallest_parameter_that_meets_the_target():
    p = probs(num_tokens=200, seed=4)

    def mean_experts(parameter):
        return select_top_k(p, gating="adaptive", threshold=parameter, top_k=4, rule="gap")[1].sum(-1).double().mean()

    start = calibrated_parameter(lambda t: mean_experts(t).item(), 1.6)
    assert mean_experts(start) >= 1.6 > mean_experts(start - 1e-6)
    assert calibrated_parameter(lambda t: 1.0, 1.5) == 1.0  # never reached: the largest parameter
    assert calibrated_parameter(lambda t: 2.0, 1.5) == 0.0  # reached at 0 already


@pytest.mark.parametrize("rule", ["gap", "top_p", "expert_threshold"])
def test_the_controller_steers_the_mean_experts_per_token_to_the_target(rule):
    """A router on a fixed stream of hidden states, closed loop: after a few hundred steps the measured mean is
    within 0.03 of the target, from a start far from it."""
    torch.manual_seed(0)
    config = adamoe.MoEConfig(
        num_experts=8, top_k=4, rule=rule, threshold=0.0, target_experts=1.75, router_init_std=0.5
    ).resolve()
    router = Router(hidden_size=16, config=config).train()
    g = torch.Generator().manual_seed(1)
    means = []
    for _ in range(400):
        decision = router(torch.randn(256, 16, generator=g))
        router.update_state(decision)
        means.append(decision.num_selected.float().mean().item())
    assert abs(sum(means[-50:]) / 50 - 1.75) < 0.03
    if rule == "expert_threshold":  # the steered capacity, which the top-1 floor and the k_max cap pull off target
        assert 1 < router.controller[0].item() < 4
    else:
        assert means[0] == 1.0  # the first micro-batch routes at --threshold 0: top-1
        assert 0 < router.threshold.item() < 1


def test_the_first_step_calibrates_and_padding_never_counts_towards_the_controllers_measurement():
    config = adamoe.MoEConfig(num_experts=4, top_k=4, threshold=0.5, target_experts=2.0, router_init_std=1.0).resolve()
    router = Router(hidden_size=8, config=config).train()
    mask = torch.tensor([True] * 30 + [False] * 30)
    decision = router(torch.randn(60, 8, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(decision.active, select_top_k(decision.probs, gating="adaptive", threshold=0.5, top_k=4)[1])
    decision.token_mask = mask
    router.update_state(decision)
    start = router.controller[0].item()
    assert router.controller.tolist() == pytest.approx([start, 0.0, start])
    calibrated = select_top_k(decision.probs[:30], gating="adaptive", threshold=start, top_k=4)[1]
    assert calibrated.sum(-1).double().mean() >= 2.0  # on the real tokens only
    decision = router(torch.randn(60, 8, generator=torch.Generator().manual_seed(1)))
    decision.token_mask = mask
    real_mean = decision.num_selected[:30].float().mean()
    before = router.controller.clone()
    router.update_state(decision)
    assert torch.equal(router.controller, controller_step(before, real_mean, target=2.0, gains=(2.0, 0.5)))


def test_the_steered_parameter_is_saved_loaded_and_survives_a_switch_to_fixed_gating(tmp_path):
    moe = adamoe.MoEConfig(
        num_experts=4, top_k=4, rule="top_p", threshold=0.2, target_experts=2.5, router_init_std=1.0
    )
    model = tiny_llama(moe)
    train_steps(model, 4)
    steered = [r.controller.clone() for r in routers(model)]
    assert all(s[0].item() != pytest.approx(0.2) for s in steered)  # it moved
    adamoe.set_routing(model, gating="top2")  # the state stays while unused
    adamoe.set_routing(model, gating="adaptive")
    assert all(torch.equal(r.controller, s) for r, s in zip(routers(model), steered, strict=True))
    model.save_pretrained(tmp_path)
    again = adamoe.from_pretrained(str(tmp_path))
    assert all(torch.equal(r.controller, s) for r, s in zip(routers(again), steered, strict=True))
    # Evaluated at the steered parameter, not at the start value.
    again.eval()
    with torch.no_grad():
        again(input_ids=tokens(5))
    _, block = adamoe.moe_blocks(again)[0]
    fixed = select_top_k(
        block.last_routing.probs, gating="adaptive", threshold=steered[0][0].item(), top_k=4, rule="top_p"
    )[1]
    assert torch.equal(block.last_routing.active, fixed)
    # Another rule starts afresh: gap's steered T means nothing as top-p's p.
    adamoe.set_routing(again, rule="gap")
    assert all(torch.isnan(r.controller[0]) for r in routers(again))
    # Dropping the target drops the state: the parameter is the config's again.
    adamoe.set_routing(again, target_experts=None)
    assert all("controller" not in dict(r.named_buffers()) and r.threshold == 0.2 for r in routers(again))


def test_a_checkpoint_that_lacks_the_rules_state_is_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_llama(adamoe.MoEConfig(num_experts=4, top_k=4, target_experts=1.5))
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = {k: v for k, v in load_file(path).items() if not k.endswith("router.controller")}
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(adamoe.CheckpointError, match="router.controller"):
        adamoe.from_pretrained(str(tmp_path))


def test_activation_checkpointing_routes_the_recomputed_forward_as_the_first_and_steps_the_state_once():
    moe = adamoe.MoEConfig(num_experts=4, top_k=4, threshold=0.1, target_experts=2.0, router_init_std=1.0)
    plain, checkpointed = tiny_llama(moe, seed=3), tiny_llama(moe, seed=3)
    train_steps(plain, 3)
    train_steps(checkpointed, 3, checkpointing=True)
    for a, b in zip(routers(plain), routers(checkpointed), strict=True):
        torch.testing.assert_close(b.controller, a.controller, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.weight, a.weight, rtol=1e-4, atol=1e-6)


def test_the_trainer_steps_the_state_once_per_micro_batch(tmp_path):
    from adamoe.trainer import AdaMoETrainer, AdaMoETrainingArguments

    moe = adamoe.MoEConfig(num_experts=4, top_k=4, threshold=0.1, target_experts=2.0, router_init_std=1.0)
    model = tiny_llama(moe)
    data = [{"input_ids": t, "labels": t} for t in tokens(batch=8)]
    args = AdaMoETrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=1,
        learning_rate=0.0, report_to=[], save_strategy="no", use_cpu=True,
    )  # fmt: skip
    calls = []
    original = Router.update_state
    try:
        Router.update_state = lambda self, routing: (
            calls.append(routing.num_selected.shape[0]) or original(self, routing)
        )
        AdaMoETrainer(model=model, args=args, train_dataset=data).train()
    finally:
        Router.update_state = original
    assert calls == [24] * 4  # 2 layers x 2 micro-batches of 2 x 12 tokens


# Configuration and bad input.


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target_experts": 0.5}, r"target_experts must be in \[1, top_k\] = \[1, 4\]"),
        ({"target_experts": 4.5}, r"target_experts must be in \[1, top_k\] = \[1, 4\]"),
        ({"rule": "expert_threshold"}, "needs target_experts"),
        ({"controller_gains": (0.1,)}, "two numbers"),
        ({"controller_gains": (0.1, -1.0)}, ">= 0"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
        ({"entropy_loss_coef": -1.0}, "entropy_loss_coef must be a finite number >= 0"),
    ],
)
def test_bad_rule_settings_name_the_field_and_the_valid_range(changes, message):
    with pytest.raises(adamoe.MoEConfigError, match=message):
        adamoe.MoEConfig(num_experts=8, top_k=4, **changes)


def test_a_json_list_of_gains_reads_back_as_the_same_config():
    config = adamoe.MoEConfig(target_experts=1.5, controller_gains=[0.2, 0.01])
    assert config.controller_gains == (0.2, 0.01)
    assert adamoe.MoEConfig.from_dict(config.to_dict()) == config


# Top-p's entropy loss.


def test_router_entropy_loss_is_the_mean_gate_entropy_over_real_tokens():
    p = probs(num_tokens=10)
    mask = torch.tensor([True] * 7 + [False] * 3)
    expected = sum(-sum(x * math.log(x) for x in row) for row in p[:7].tolist()) / 7
    assert router_entropy_loss(p, mask).item() == pytest.approx(expected, rel=1e-12)
    one_hot = torch.zeros(3, 4, dtype=torch.float64)
    one_hot[:, 1] = 1.0
    assert router_entropy_loss(one_hot).item() == 0.0


def test_the_entropy_loss_joins_the_balance_loss_with_its_coefficient():
    moe = adamoe.MoEConfig(num_experts=4, top_k=4, rule="top_p", threshold=0.5, router_init_std=1.0)
    model = tiny_llama(moe)
    model(input_ids=tokens())
    without = adamoe.balance_loss(model)
    adamoe.set_routing(model, entropy_loss_coef=1e-2)
    entropies = [router_entropy_loss(b.last_routing.probs) for _, b in adamoe.moe_blocks(model)]
    torch.testing.assert_close(adamoe.balance_loss(model), without + 1e-2 * sum(entropies))
