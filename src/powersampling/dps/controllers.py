"""The controllers: p̂_enough(k) from the features of a decision (scikit-learn).

- ``gbdt``: ``HistGradientBoostingClassifier`` on the handcrafted features;
- ``mlp_h``: ``MLPClassifier`` on the same features, behind a median imputer and a scaler;
- ``mlp_hq``: ``MLPClassifier`` on the features plus the question's embedding, reduced by a
  PCA (fitted, like the scaler, on the training questions only: it sits inside the model, so
  cross-validation refits it on each fold's training part).

Training (:func:`train_controller`): hyperparameters from a small grid, chosen by the log
loss of cross-validation whose folds split by question (``GroupKFold``), never by row (the
rows of one question at k = 2, 4, 6 share trajectories). With fewer than two questions of
either label the data cannot teach anything: the controller is the constant training rate
(``DummyClassifier``), and its file says so (``degenerate``). The file also keeps each
training row's out-of-fold p̂ (from the best hyperparameters, refitted without the row's
question), from which the evaluation picks τ without touching held-out questions.

Files (:meth:`Controller.save`, :meth:`Controller.load`): a pickle holding a plain header
(format, controller, feature list, library versions, training summary) and the fitted model
pickled separately, so that a file is checked before any scikit-learn object is rebuilt: one
written by another scikit-learn, or for other features, is refused with a message. A
controller file is code (pickle): load only files this workflow wrote.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from powersampling import io
from powersampling.dps import CONTROLLER_NAMES
from powersampling.dps.trajectories import QUESTION_PREFIX
from powersampling.errors import UserError

FORMAT = "powersampling-dps-controller"
FORMAT_VERSION = 1

DESCRIPTIONS = {
    "gbdt": "gradient-boosted trees on the handcrafted features",
    "mlp_h": "MLP on the handcrafted features",
    "mlp_hq": "MLP on the handcrafted features and the question's embedding (PCA)",
}


def uses_question(name: str) -> bool:
    """Whether the controller reads the question's embedding."""
    _check_name(name)
    return name == "mlp_hq"


def _check_name(name: str) -> None:
    if name not in CONTROLLER_NAMES:
        raise UserError(f"unknown controller {name!r}; known: {list(CONTROLLER_NAMES)}")


def _versions() -> dict[str, str]:
    import sklearn

    return {"scikit-learn": sklearn.__version__, "numpy": np.__version__}


def _estimator_and_grid(name: str, features: list[str], seed: int, n_components: int):
    """The unfitted model of a controller and its hyperparameter grid."""
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "gbdt":  # handles missing values itself
        model = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
        grid = {"learning_rate": [0.05, 0.1], "max_depth": [2, 3], "min_samples_leaf": [5, 20]}
        return model, grid

    def scaled():
        return [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]

    mlp = MLPClassifier(max_iter=1000, random_state=seed)
    grid = {"mlp__hidden_layer_sizes": [(16,), (32, 16)], "mlp__alpha": [1e-3, 1e-1]}
    if name == "mlp_h":
        return Pipeline([*scaled(), ("mlp", mlp)]), grid
    question = [f for f in features if f.startswith(QUESTION_PREFIX)]
    handcrafted = [f for f in features if not f.startswith(QUESTION_PREFIX)]
    inputs = ColumnTransformer(
        [
            ("handcrafted", Pipeline(scaled()), handcrafted),
            (
                "question",
                Pipeline(
                    [("scale", StandardScaler()), ("pca", PCA(n_components, random_state=seed))]
                ),
                question,
            ),
        ]
    )
    return Pipeline([("inputs", inputs), ("mlp", mlp)]), grid


@dataclass
class Controller:
    """A trained controller: its model, the features it reads (in order) and its record."""

    name: str
    features: list[str]
    estimator: Any
    info: dict[str, Any] = field(default_factory=dict)

    def p_enough(self, features: pd.DataFrame) -> np.ndarray:
        """p̂_enough for each row of a decision-feature frame ([n] float)."""
        check_features(self.name, self.features, list(features.columns))
        if len(features) == 0:
            return np.zeros(0)
        proba = self.estimator.predict_proba(features[self.features])
        classes = list(self.estimator.classes_)
        if True in classes:
            return proba[:, classes.index(True)].astype(float)
        return np.zeros(len(features))  # trained on "not enough" only

    def save(self, path) -> None:
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "controller": self.name,
            "features": list(self.features),
            "libraries": _versions(),
            "info": self.info,
            "estimator": pickle.dumps(self.estimator),
        }
        data = pickle.dumps(header)
        io.write_atomic(path, lambda tmp: tmp.write_bytes(data))

    @classmethod
    def load(cls, path, *, features: list[str] | None = None) -> Controller:
        """The controller in ``path``, refused (UserError) when it is not a controller file,
        was saved by another scikit-learn, or reads other ``features`` than given."""
        try:
            header = pickle.loads(Path(path).read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
            raise UserError(f"{path}: not a readable controller file ({err})") from err
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise UserError(f"{path}: not a controller file")
        if header.get("version") != FORMAT_VERSION:
            raise UserError(
                f"{path}: controller file version {header.get('version')}, this code reads "
                f"version {FORMAT_VERSION}; retrain it"
            )
        saved, running = header["libraries"]["scikit-learn"], _versions()["scikit-learn"]
        if saved != running:
            raise UserError(
                f"{path}: the controller was saved with scikit-learn {saved}, this is "
                f"{running}; retrain it (its model may not load or predict the same)"
            )
        if features is not None:
            check_features(header["controller"], header["features"], features, where=str(path))
        return cls(
            name=header["controller"],
            features=header["features"],
            estimator=pickle.loads(header["estimator"]),
            info=header["info"],
        )


def check_features(name: str, expected: list[str], given: list[str], where: str = "") -> None:
    """The controller reads exactly these features, in this order, or a UserError says how not."""
    if list(expected) == list(given):
        return
    missing = [f for f in expected if f not in given]
    extra = [f for f in given if f not in expected]
    what = f"{where}: " if where else ""
    detail = (
        f"missing {missing[:5]}"
        if missing
        else f"unexpected {extra[:5]}"
        if extra
        else "other order"
    )
    raise UserError(
        f"{what}controller {name!r} reads {len(expected)} features, these are {len(given)} "
        f"({detail}); retrain it for these features"
    )


def train_controller(
    name: str,
    features: pd.DataFrame,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int,
    cv_folds: int = 5,
    n_components: int = 8,
) -> Controller:
    """Fit controller ``name`` on decision rows (features, enough labels, question ids)."""
    from sklearn.base import clone
    from sklearn.dummy import DummyClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import log_loss, make_scorer
    from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_predict

    _check_name(name)
    seed = int(seed) % 2**32  # scikit-learn takes 32-bit seeds
    names = list(features.columns)
    has_question = any(f.startswith(QUESTION_PREFIX) for f in names)
    if has_question != uses_question(name):
        raise UserError(
            f"controller {name!r} {'needs' if uses_question(name) else 'does not read'} the "
            "question's embedding"
        )
    y = np.asarray(labels, dtype=bool)
    groups = np.asarray(groups)
    questions = np.unique(groups)
    by_label = [np.unique(groups[y == v]).size for v in (False, True)]
    info: dict[str, Any] = {
        "rows": int(len(y)),
        "questions": int(questions.size),
        "train_questions": sorted(str(q) for q in questions),
        "enough_rate": float(y.mean()) if len(y) else float("nan"),
        "degenerate": min(by_label) < 2,
        "description": DESCRIPTIONS[name],
    }
    if info["degenerate"]:
        model = DummyClassifier(strategy="prior").fit(features[names], y)
        controller = Controller(name, names, model, info)
        info["out_of_fold"] = _out_of_fold(features, groups, controller.p_enough(features))
        return controller

    n_question = sum(f.startswith(QUESTION_PREFIX) for f in names)
    n_components = max(1, min(n_components, n_question, questions.size - 1))
    model, grid = _estimator_and_grid(name, names, seed, n_components)
    folds = GroupKFold(n_splits=min(cv_folds, questions.size))
    scorer = make_scorer(
        log_loss, response_method="predict_proba", greater_is_better=False, labels=[False, True]
    )
    search = GridSearchCV(model, grid, scoring=scorer, cv=folds, error_score=np.nan, refit=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(features[names], y, groups=groups)
    best = search.best_estimator_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        oof = cross_val_predict(
            clone(best), features[names], y, groups=groups, cv=folds, method="predict_proba"
        )[:, list(best.classes_).index(True)]
    info.update(
        out_of_fold=_out_of_fold(features, groups, oof),
        cv_folds=folds.get_n_splits(),
        cv_log_loss=float(-search.best_score_),
        best_params={k: _plain(v) for k, v in search.best_params_.items()},
        n_components=n_components if has_question else None,
    )
    return Controller(name, names, best, info)


def _out_of_fold(features: pd.DataFrame, groups, p) -> dict[str, list]:
    """p̂ of each training row from the model of the fold that did not see its question."""
    return {
        "problem_id": [str(g) for g in groups],
        "k": [int(k) for k in features["k"]],
        "p_enough": [float(x) for x in p],
    }


def _plain(value):
    """A hyperparameter as JSON can hold it (tuples become lists)."""
    return list(value) if isinstance(value, tuple) else value
