import pytest

from adamoe import MoEConfig, MoEConfigError


def test_defaults_follow_the_paper_and_the_toolkit_choice():
    # num_experts, top_k and combine come from the model: a native MoE's own, the toolkit's on a dense model.
    cfg = MoEConfig().resolve()
    assert (cfg.num_experts, cfg.gating, cfg.threshold, cfg.aux_loss_coef) == (16, "adaptive", 0.1, 0.01)
    assert (cfg.expert_init, cfg.combine, cfg.threshold_on) == ("upcycle", "normalized", "normalized")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 1.5}, "threshold must be in [0, 1]"),
        ({"threshold": -0.1}, "threshold must be in [0, 1]"),
        ({"threshold": float("nan")}, "threshold must be in [0, 1]"),
        ({"num_experts": 0}, "num_experts must be between 1"),
        ({"num_experts": 4096}, "num_experts must be between 1"),
        ({"num_experts": 2.5}, "num_experts must be an integer"),
        ({"num_experts": 1}, "needs num_experts >= 2"),
        ({"gating": "top3"}, "gating must be one of"),
        ({"combine": "sum"}, "combine must be one of"),
        ({"threshold_on": "log"}, "threshold_on must be one of"),
        ({"aux_loss_coef": -1.0}, "aux_loss_coef must be a finite number >= 0"),
        ({"layers": "some"}, "layers must be 'all'"),
        ({"layers": [-1]}, "non-empty list of layer indices"),
        ({"every_n_layers": 0}, "every_n_layers must be an integer >= 1"),
        ({"every_n_layers": 2, "layers": [1]}, "not both"),
    ],
)
def test_bad_values_fail_with_a_message_that_names_them(kwargs, message):
    with pytest.raises(MoEConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        MoEConfig(**kwargs)


def test_round_trip_and_unknown_keys():
    cfg = MoEConfig(num_experts=4, gating="top2", layers=[3, 1, 1], threshold=1)
    again = MoEConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.layers == [1, 3] and isinstance(again.threshold, float)
    with pytest.raises(MoEConfigError, match="Unknown MoEConfig field"):
        MoEConfig.from_dict({**cfg.to_dict(), "capacity_factor": 1.25})


def test_layer_selection():
    assert [i for i in range(6) if MoEConfig(every_n_layers=2).converts_layer(i)] == [1, 3, 5]
    assert [i for i in range(6) if MoEConfig(layers=[0, 4]).converts_layer(i)] == [0, 4]
    assert all(MoEConfig().converts_layer(i) for i in range(6))


def test_differences_split_structure_from_routing():
    a, b = MoEConfig(num_experts=4), MoEConfig(num_experts=8, threshold=0.3, expert_init="random")
    assert a.structural_differences(b) == {"num_experts": (4, 8)}
    assert a.routing_differences(b) == {"threshold": (0.1, 0.3)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_k": 2.0}, "top_k must be an integer >= 1"),
        ({"top_k": True}, "top_k must be an integer >= 1"),
        ({"num_experts": 4, "top_k": 5}, "top_k=5 exceeds num_experts=4.*Lower top_k to at most 4"),
        ({"gating": "top2", "top_k": 1}, "gating='top2' .* needs top_k >= 2"),
        ({"gating": "top4"}, "gating must be one of 'adaptive', 'top1', 'top2', 'topk'"),
    ],
)
def test_bad_top_k_fails_with_a_message_that_says_what_to_do(kwargs, message):
    with pytest.raises(MoEConfigError, match=message):
        MoEConfig(**kwargs)


def test_top_k_defaults_to_the_papers_two_and_is_a_routing_field():
    assert MoEConfig().resolve().top_k == 2
    cfg = MoEConfig(num_experts=8, gating="topk", top_k=8)
    assert MoEConfig.from_dict(cfg.to_dict()) == cfg
    # A config saved before top_k existed reads as k_max = 2.
    old = {k: v for k, v in MoEConfig(num_experts=4).to_dict().items() if k != "top_k"}
    assert MoEConfig.from_dict(old).resolve() == MoEConfig(num_experts=4, top_k=2).resolve()
    # It changes routing, not which parameters exist, so it can change on a trained model.
    assert MoEConfig(num_experts=8).resolve().routing_differences(cfg) == {
        "gating": ("adaptive", "topk"),
        "top_k": (2, 8),
    }
    assert MoEConfig(num_experts=8).structural_differences(cfg) == {}
    # A single-expert block routes everything to its expert whatever top_k says.
    assert MoEConfig(num_experts=1, gating="top1").resolve().top_k == 2


def test_fields_left_to_the_model_are_none_until_resolved():
    cfg = MoEConfig(threshold=0.3)
    assert (cfg.num_experts, cfg.top_k, cfg.combine) == (None, None, None)
    # A native MoE's own values fill them; set fields stay as set, and the result is validated again.
    native = cfg.resolve(num_experts=8, top_k=2, combine="gate")
    assert (native.num_experts, native.top_k, native.combine, native.threshold) == (8, 2, "gate", 0.3)
    assert MoEConfig(top_k=4).resolve(num_experts=8, top_k=2).top_k == 4
    with pytest.raises(MoEConfigError, match="top_k=20 exceeds num_experts=16"):
        MoEConfig(top_k=20).resolve()
    # None agrees with any value: a request that leaves the expert count to the checkpoint is no conflict.
    stored = MoEConfig(num_experts=8, top_k=2, combine="gate")
    assert MoEConfig().structural_differences(stored) == {} and MoEConfig().routing_differences(stored) == {}
    assert MoEConfig(threshold=0.5).filled_from(stored) == MoEConfig(
        num_experts=8, top_k=2, combine="gate", threshold=0.5
    )
    assert MoEConfig.from_dict(cfg.to_dict()) == cfg
