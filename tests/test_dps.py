"""Dynamic power sampling off-line: votes, labels, features, controllers, stopping rules."""

import pickle

import numpy as np
import pandas as pd
import pytest

from powersampling.dps.controllers import Controller, train_controller
from powersampling.dps.policy import (
    Schedule,
    ac_probability,
    ac_stop,
    baseline_replays,
    choose_tau,
    controller_quality,
    dps_k,
    esc_stop,
    expected_calibration_error,
    summarize,
)
from powersampling.dps.trajectories import (
    DIAGNOSTICS,
    Trajectories,
    decision_features,
    enough_labels,
    feature_names,
    split_questions,
    training_rows,
    trajectory_pool,
    vote_correct,
)
from powersampling.dps.votes import NO_VOTE, majority, vote_key
from powersampling.errors import UserError

# --------------------------------------------------------------------------------------
# Hand-made pools


def hand_pool(answers: dict[str, list], truth: dict[str, str], logps=None) -> Trajectories:
    """A pool from answers per question (None: no answer); ``correct`` against ``truth``."""
    rows = []
    for pid, keys in answers.items():
        for j, key in enumerate(keys):
            rows.append(
                {
                    "problem_id": pid,
                    "trajectory": j,
                    "answer": key,
                    "correct": key is not None and key == truth[pid],
                    "compliant": key is not None,
                    "logp_sum": -1.0 - j if logps is None else logps[pid][j],
                    **{d: float(j + 1) for d in DIAGNOSTICS},
                    "time_s": 0.5,
                }
            )
    return Trajectories.from_pool(pd.DataFrame(rows))


def test_vote_keys_normalise_equivalent_answers():
    assert vote_key("\\dfrac12") == vote_key("\\frac{1}{2}") == vote_key("0.5")
    assert vote_key(" 42 ") == "42"
    assert vote_key(None) is None and vote_key("") is None and vote_key(float("nan")) is None


def test_majority_and_its_tie_rule():
    # most votes wins, whatever the log p
    assert majority(["a", "b", "a"], [-9.0, -1.0, -8.0]) == 2  # "a"; its best trajectory
    # a tie on votes goes to the answer with the highest log p among its trajectories
    assert majority(["a", "b", "b", "a"], [-5.0, -2.0, -7.0, -3.0]) == 1
    # a tie on votes and log p goes to the answer seen first; its first best trajectory
    assert majority(["b", "a", "a", "b"], [-1.0, -1.0, -2.0, -1.0]) == 0
    # no answer does not vote; all missing: no vote
    assert majority([None, None, "c"], [0.0, 0.0, -9.0]) == 2
    assert majority([None, None], [0.0, 0.0]) == NO_VOTE
    # NaN log p ranks last
    assert majority(["a", "b"], [float("nan"), -3.0]) == 1


def test_labels_on_a_hand_made_pool():
    truth = {"easy": "1", "late": "2", "lost": "3", "none": "4"}
    traj = hand_pool(
        {
            "easy": ["1", "1", "1", "1", "5", "6", "1", "1"],  # right at every k
            "late": ["9", "9", "2", "2", "2", "2", "2", "9"],  # right only from k = 6
            "lost": ["3", "3", "7", "7", "7", "7", "7", "3"],  # right at k = 2 only
            "none": [None, None, "8", "8", None, None, None, None],  # never right
        },
        truth,
    )
    assert vote_correct(traj).tolist() == [True, True, False, False]
    # late at k = 4: "9" and "2" tie on 2 votes; "9" has log p -1 (trajectory 0) vs -3: "9"
    labels = enough_labels(traj, [2, 4, 6])
    assert labels.tolist() == [
        [True, True, True],
        [False, False, True],
        [True, True, True],  # the vote of 8 is wrong: anything is at least as correct
        [True, True, True],
    ]


def test_pool_needs_every_trajectory():
    frame = pd.DataFrame(
        {
            "problem_id": ["a", "a", "b"],
            "trajectory": [0, 1, 0],
            "answer": ["1", "1", "2"],
            "correct": True,
            "compliant": True,
            "logp_sum": -1.0,
            **{d: 1.0 for d in DIAGNOSTICS},
            "time_s": 1.0,
        }
    )
    with pytest.raises(UserError, match="1 questions lack some of trajectories 0..1"):
        Trajectories.from_pool(frame)


def random_pool(n: int, k_max: int = 8, seed: int = 0) -> Trajectories:
    """Questions whose trajectories are right with a per-question probability; wrong
    answers scatter over a few values; diagnostics carry a little signal."""
    rng = np.random.default_rng(seed)
    answers, truth, logps = {}, {}, {}
    for q in range(n):
        pid = f"q{q:03d}"
        p_right = rng.uniform(0.1, 0.95)
        right = rng.random(k_max) < p_right
        keys = [str(q) if r else str(1000 + rng.integers(3)) for r in right]
        answers[pid], truth[pid] = keys, str(q)
        logps[pid] = list(rng.normal(-5, 1, k_max))
    return hand_pool(answers, truth, logps)


def test_features_at_k_read_only_the_first_k_trajectories():
    traj = random_pool(30, seed=1)
    rng = np.random.default_rng(2)
    for k in [2, 4, 6]:
        before = decision_features(traj, k)
        # shuffle trajectories k..7 within each question and replace their diagnostics
        order = np.concatenate([np.arange(k), k + rng.permutation(8 - k)])
        changed = Trajectories(
            problem_ids=traj.problem_ids,
            keys=traj.keys[:, order],
            correct=~traj.correct,  # grades are never features
            compliant=traj.compliant[:, order],
            logp=traj.logp[:, order],
            diagnostics={
                name: np.where(np.arange(8) < k, a, rng.normal(size=a.shape))
                for name, a in traj.diagnostics.items()
            },
            time_s=traj.time_s * 7,
        )
        changed.keys[:, k:] = "replaced"
        pd.testing.assert_frame_equal(decision_features(changed, k), before)
    assert list(decision_features(traj, 2, np.zeros((30, 3))).columns) == feature_names(3)


def test_features_by_hand():
    traj = hand_pool({"a": ["1", "1", None, "2"]}, {"a": "1"})
    f = decision_features(traj, 4).iloc[0]
    assert f["top_answer_share"] == 0.5 and f["distinct_answers"] == 2
    assert f["compliant_share"] == 0.75 and f["k"] == 4
    assert f["perplexity_mean"] == 2.5 and f["perplexity_min"] == 1 and f["perplexity_max"] == 4


def test_split_is_seeded_by_question():
    ids = [f"p{i}" for i in range(20)]
    split = split_questions(ids, 0.5, seed=3)
    assert sorted(split) == sorted(ids)
    assert list(split.values()).count("train") == 10
    assert split == split_questions(list(reversed(ids)), 0.5, seed=3)
    assert split != split_questions(ids, 0.5, seed=4)
    with pytest.raises(UserError, match="leaves one side empty"):
        split_questions(ids[:1], 0.5, seed=0)


# --------------------------------------------------------------------------------------
# Stopping rules


def test_esc_and_ac_rules():
    traj = hand_pool(
        {"a": ["1", "1", "2", "2"], "b": [None, None, "3", "3"], "c": ["4", "5", "4", "4"]},
        {"a": "1", "b": "3", "c": "4"},
    )
    assert esc_stop(traj, 2, 2).tolist() == [True, False, False]
    assert esc_stop(traj, 4, 2).tolist() == [True, True, True]
    # Adaptive-Consistency: P(x > 1/2), x ~ Beta(a + 1, b + 1)
    assert ac_probability(2, 0) == pytest.approx(1 - 0.5**3)
    assert ac_probability(4, 0) == pytest.approx(1 - 0.5**5)
    assert ac_probability(3, 3) == pytest.approx(0.5)
    assert ac_stop(traj, 2, 0.95).tolist() == [False, False, False]
    assert ac_stop(traj, 4, 0.95).tolist() == [False, False, False]  # 2-2, 2-0 (0.875), 3-1
    assert ac_stop(traj, 4, 0.8).tolist() == [False, True, True]


def test_replays_of_the_baselines():
    traj = random_pool(40, seed=5)
    schedule = Schedule(2, 2, 8)
    replays = baseline_replays(traj, schedule, esc_window=2, ac_threshold=0.95)
    by = {p: g.set_index("problem_id") for p, g in replays.groupby("policy")}
    assert set(by) == {"fixed_k2", "fixed_k4", "fixed_k6", "fixed_k8", "esc", "ac", "oracle"}
    assert (by["fixed_k4"]["k"] == 4).all()
    assert by["fixed_k8"]["correct"].tolist() == vote_correct(traj).tolist()
    tokens = traj.diagnostics["tokens_decoded"]  # j + 1 for trajectory j
    assert by["fixed_k2"]["tokens"].tolist() == tokens[:, :2].sum(1).tolist()
    # the oracle is never less right than k_max, and stops no later than any rule right there
    assert (by["oracle"]["correct"] >= by["fixed_k8"]["correct"]).all()
    assert by["oracle"]["correct"].mean() >= by["fixed_k8"]["correct"].mean()
    # ESC stops at the first window that agrees
    keys = traj.keys
    first = [
        next((k for k in (2, 4, 6) if keys[i, k - 2] == keys[i, k - 1]), 8)
        for i in range(len(keys))
    ]
    assert by["esc"]["k"].tolist() == first


def test_dps_rule_and_tau_choice():
    schedule = Schedule(2, 2, 8)
    p = np.array([[0.9, 0.9, 0.9], [0.2, 0.6, 0.95], [0.1, 0.1, 0.1]])
    assert dps_k(p, 0.5, schedule).tolist() == [2, 4, 8]
    assert dps_k(p, 0.3, schedule).tolist() == [2, 6, 8]
    assert dps_k(p, 0.0, schedule).tolist() == [8, 8, 8]
    assert dps_k(p, 1.0, schedule).tolist() == [2, 2, 2]
    replays = pd.DataFrame(
        {
            "policy": ["fixed_k8"] * 2 + ["dps_x"] * 6,
            "tau": [np.nan] * 2 + [0.1, 0.1, 0.5, 0.5, 0.9, 0.9],
            "correct": [True, False, True, True, True, False, False, False],
        }
    )
    assert choose_tau(replays, "dps_x", "fixed_k8") == 0.5
    assert (
        choose_tau(replays.assign(correct=replays["correct"] & False), "dps_x", "fixed_k8") == 0.9
    )


def test_summary_against_the_reference():
    traj = random_pool(30, seed=7)
    replays = baseline_replays(traj, Schedule(2, 2, 8), esc_window=2, ac_threshold=0.95)
    table = summarize(replays, "fixed_k8", n_boot=200, level=0.9, seed=0).set_index("policy")
    assert table.loc["fixed_k8", "token_saving"] == 0
    assert table.loc["fixed_k8", "accuracy_vs_reference"] == 0
    assert table.loc["fixed_k2", "token_saving"] == pytest.approx(1 - 3 / 36)  # 1+2 of 1..8
    row = table.loc["fixed_k4"]
    assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]


def test_calibration_measures():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([False, False, True, True])
    assert expected_calibration_error(p, y) == pytest.approx(0.05)
    quality, bins = controller_quality(p.reshape(2, 2), y.reshape(2, 2), [2, 4])
    assert quality.set_index("k").loc["all", "roc_auc"] == 1.0
    assert bins["n"].sum() == 4


# --------------------------------------------------------------------------------------
# Controllers


@pytest.fixture(scope="module")
def learnable():
    """Decision rows where 'enough' follows the top answer's share: learnable."""
    traj = random_pool(80, seed=11)
    emb = np.random.default_rng(0).normal(size=(80, 6))
    return traj, emb


@pytest.mark.parametrize("name", ["gbdt", "mlp_h", "mlp_hq"])
def test_train_save_load_gives_the_same_predictions(learnable, tmp_path, name):
    traj, emb = learnable
    x, y, groups = training_rows(traj, [2, 4, 6], emb if name == "mlp_hq" else None)
    controller = train_controller(name, x, y, groups, seed=0, cv_folds=3, n_components=3)
    assert not controller.info["degenerate"]
    assert sorted(controller.info["train_questions"]) == sorted(traj.problem_ids)
    p = controller.p_enough(x)
    assert p.shape == (len(x),) and ((0 <= p) & (p <= 1)).all()
    path = tmp_path / f"{name}.pkl"
    controller.save(path)
    loaded = Controller.load(path, features=list(x.columns))
    np.testing.assert_array_equal(loaded.p_enough(x), p)
    # a controller that predicts better than chance on its own training rows
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, p) > 0.6


def test_mismatched_controller_files_are_refused(learnable, tmp_path):
    traj, _ = learnable
    x, y, groups = training_rows(traj, [2, 4, 6])
    controller = train_controller("gbdt", x, y, groups, seed=0, cv_folds=3)
    path = tmp_path / "gbdt.pkl"
    controller.save(path)
    with pytest.raises(UserError, match="reads 25 features, these are 24 .*missing"):
        Controller.load(path, features=list(x.columns)[:-1])
    with pytest.raises(UserError, match="other order"):
        Controller.load(path, features=list(reversed(x.columns)))
    with pytest.raises(UserError, match="features"):
        controller.p_enough(x.drop(columns="k"))
    header = pickle.loads(path.read_bytes())
    header["libraries"]["scikit-learn"] = "0.1"
    path.write_bytes(pickle.dumps(header))
    with pytest.raises(UserError, match="saved with scikit-learn 0.1"):
        Controller.load(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a readable controller file"):
        Controller.load(path)
    with pytest.raises(UserError, match="needs the question's embedding"):
        train_controller("mlp_hq", x, y, groups, seed=0)


def test_one_label_only_gives_a_constant_controller(learnable):
    traj, _ = learnable
    x, y, groups = training_rows(traj, [2, 4, 6])
    controller = train_controller("mlp_h", x, np.ones_like(y), groups, seed=0)
    assert controller.info["degenerate"]
    assert (controller.p_enough(x) == 1).all()


# --------------------------------------------------------------------------------------
# The pool table from graded rows


def test_trajectory_pool_from_graded_rows():
    rows = []
    for seed in range(4):
        for pid in ["a", "b"]:
            rows.append(
                {
                    "task": "t",
                    "model": "m",
                    "problem_id": pid,
                    "seed": seed,
                    "shard": 0,
                    "extracted": None if (pid, seed) == ("b", 3) else str(seed % 2),
                    "correct": seed % 2 == 0,
                    "compliant": True,
                    "logp_sum": -1.0,
                    **{d: 1.0 for d in DIAGNOSTICS},
                    "acceptance_rate": None if seed == 0 else 0.5,
                    "tokens_decoded": 10 if pid == "a" else 30,
                    "shard_decode_time_s": 4.0,
                }
            )
    pool = trajectory_pool(pd.DataFrame(rows), 4)
    assert len(pool) == 8 and pool["trajectory"].tolist() == [0, 1, 2, 3] * 2
    assert pool["time_s"].tolist() == [1.0] * 4 + [3.0] * 4  # shard time shared by tokens
    assert pool["acceptance_rate"].tolist()[:2] == [0.0, 0.5]
    assert pd.isna(pool["answer"].iloc[-1])  # no answer, no vote
    with pytest.raises(UserError, match="lack some of trajectories"):
        trajectory_pool(pd.DataFrame(rows[:-1]), 4)
    with pytest.raises(UserError, match="older version"):
        trajectory_pool(pd.DataFrame(rows).drop(columns="mean_token_prob"), 4)
