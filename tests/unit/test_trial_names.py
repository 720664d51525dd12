"""Trial short names: an arm's trials (LoRA+, DoRA) are named apart from plain LoRA trials at the same lr."""

from loratune.search.trial import short_name


def test_arm_trials_are_named_apart_from_plain_lora():
    plain = short_name({"train.learning_rate": 2.5e-4})
    loraplus = short_name({"train.learning_rate": 2.5e-4, "train.optimizer": "loraplus"})
    dora = short_name({"train.learning_rate": 2.5e-4, "adapter.use_dora": True})
    assert plain == "lr2.5e-4"
    assert loraplus == "loraplus-lr2.5e-4"
    assert dora == "dora-lr2.5e-4"
    assert short_name({"train.learning_rate": 2.5e-4, "train.optimizer": "adamw", "adapter.use_dora": False}) == plain
    # against a base that already has the arm, the arm is no difference
    assert short_name({"train.optimizer": "loraplus", "adapter.r": 8}, {"train.optimizer": "loraplus"}) == "r8"
