"""configs/: one file per reference run, each with the settings of its row of SPEC.md's runs
table (written out here again from that table, not from the configs)."""

import dataclasses

import pytest

from holdjax.config import (
    TrainConfig,
    available_configs,
    config_from_args,
    load_config,
    reference_config_name,
)

PUSHING = dict(task="pushing", num_epochs=400, epoch_length=1000)
DRAWER_3B = dict(task="drawer_open", num_epochs=40, epoch_length=10_000, use_subtasks=True,
                 subtask_threshold=1.0, goal_based_policy=True)
DRAWER_5B = dict(task="drawer_open", num_epochs=80, epoch_length=5000, use_subtasks=True,
                 goal_based_policy=True)
FIG4 = dict(reward="holdc", distance_normalizer=5.0, num_epochs=35, epoch_length=1000,
            eval_episodes=20)

SPEC_RUNS = {
    "fig3a_pushing_sac": dict(PUSHING, reward="sparse", eval_episodes=20),
    "fig3a_pushing_holdc": dict(PUSHING, reward="holdc", distance_normalizer=5.0,
                                env_reward_weight=1.0, eval_episodes=20),
    "fig3a_pushing_holdc_only": dict(PUSHING, reward="holdc", distance_normalizer=5.0,
                                     env_reward_weight=0.0, eval_episodes=20),
    "fig3a_pushing_holdr": dict(PUSHING, reward="holdr", distance_normalizer=45.0,
                                env_reward_weight=1.0, eval_episodes=20),
    "fig3a_pushing_holdr_only": dict(PUSHING, reward="holdr", distance_normalizer=45.0,
                                     env_reward_weight=0.0, eval_episodes=20),
    "fig3b_drawer_holdc": dict(DRAWER_3B, reward="holdc", distance_normalizer=10.0,
                               subtask_cost=2.0, eval_episodes=5),
    "fig3b_drawer_holdr": dict(DRAWER_3B, reward="holdr", distance_normalizer=100.0,
                               subtask_cost=20.0),
    "fig4_close_drawer_holdc": dict(FIG4, task="close_drawer"),
    "fig4_cup_forward_holdc": dict(FIG4, task="cup_forward"),
    "fig4_faucet_right_holdc": dict(FIG4, task="faucet_right"),
    "fig5a_pushing_l2": dict(PUSHING, reward="l2", distance_normalizer=30.0),
    "fig5a_pushing_r3m": dict(PUSHING, reward="r3m", distance_normalizer=3.0, num_epochs=80,
                              epoch_length=5000),
    "fig5b_drawer_l2": dict(DRAWER_5B, reward="l2", distance_normalizer=100.0,
                            subtask_threshold=1.0, subtask_cost=20.0),
    "fig5b_drawer_r3m": dict(DRAWER_5B, reward="r3m", distance_normalizer=5.0,
                             subtask_threshold=0.5, subtask_cost=2.0),
}
# holdjax's own runs beside the reference's: SAC on each task's shaped reward.
DENSE_RUNS = {"pushing_dense": "pushing", "close_drawer_dense": "close_drawer",
              "cup_forward_dense": "cup_forward", "faucet_right_dense": "faucet_right"}


def test_every_reference_run_has_a_config_and_every_config_is_a_known_run():
    assert set(available_configs()) == set(SPEC_RUNS) | set(DENSE_RUNS)


@pytest.mark.parametrize("name", sorted(SPEC_RUNS))
def test_config_has_its_runs_settings(name):
    config = load_config(name).validate()
    assert config.name == name
    for field, value in SPEC_RUNS[name].items():
        assert getattr(config, field) == value, field


@pytest.mark.parametrize("name", sorted(DENSE_RUNS))
def test_dense_configs_train_the_tasks_shaped_reward(name):
    config = load_config(name).validate()
    assert (config.name, config.task, config.reward) == (name, DENSE_RUNS[name], "dense")


@pytest.mark.parametrize("name", sorted(SPEC_RUNS) + sorted(DENSE_RUNS))
def test_configs_keep_the_references_sac_settings(name):
    """SPEC's SAC section: lr 3e-4, discount 0.99, tau 5e-3, batch 256, 1000 random steps,
    shift augmentation pad 4, one update per env step on an accelerator (auto), time-outs
    bootstrapped (the reference's quirk off), a replay of the whole run up to a million."""
    config = load_config(name)
    sac = dict(learning_rate=3e-4, discount=0.99, tau=5e-3, batch_size=256,
               initial_random_steps=1000, aug_pad=4, updates_per_step=0.0,
               timeouts_as_terminal=False, replay_size=0)
    assert {field: getattr(config, field) for field in sac} == sac
    assert config.replay_capacity == min(1_000_000, config.num_epochs * config.epoch_length)



def test_task_and_reward_select_the_references_run_of_them():
    """--task with --reward (no --config) trains with the settings of the reference's run of
    that pair (the one keeping the env reward), under a run name of its own; flags still
    override them; a pair the reference never ran gets the defaults."""
    config, _ = config_from_args(["--task=drawer_open", "--reward=holdc"])
    assert config == dataclasses.replace(load_config("fig3b_drawer_holdc"), name="")
    assert config.run_name == "drawer_open_holdc"
    assert reference_config_name("pushing", "holdc") == "fig3a_pushing_holdc"  # not _only
    config, _ = config_from_args(["--reward=holdc", "--distance_normalizer=10"])
    assert (config.task, config.distance_normalizer, config.env_reward_weight) == (
        "pushing", 10.0, 1.0)
    assert config_from_args([])[0] == dataclasses.replace(load_config("fig3a_pushing_sac"),
                                                          name="")
    assert reference_config_name("close_drawer", "l2") is None
    assert config_from_args(["--task=close_drawer", "--reward=l2"])[0] == TrainConfig(
        task="close_drawer", reward="l2")
    # Every reference run (but the _only twins) is what its task and reward select.
    for name in available_configs():
        config = load_config(name)
        if config.env_reward_weight != 0:
            assert reference_config_name(config.task, config.reward) == name
