"""The demo's trained toy model is right sometimes: greedy accuracy inside the stated band.

Reads what `make demo` leaves in the working tree (the trained model and the held-out task
data); skipped, with the reason, when the demo has not been run here.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "results" / "models" / "toy"
TASKS = {
    "arithmetic": ROOT / "data" / "arithmetic.parquet",
    "binding": ROOT / "data" / "binding.parquet",
}
# The default config's promise: right often, not always (README, "The toy world").
BAND = (0.30, 0.70)
PER_TASK = 60  # 120 problems: the band's edges are about 4 standard errors from 0.5


@pytest.mark.skipif(
    not (MODEL / "model.safetensors").is_file() or not all(p.is_file() for p in TASKS.values()),
    reason="the demo's toy model is not built here (run `make demo` first)",
)
def test_demo_model_greedy_accuracy_is_in_the_band():
    import torch

    from powersampling.generation import generate_shard
    from powersampling.models import load_model
    from powersampling.tasks import get_task

    torch.set_num_threads(2)
    model, tokenizer = load_model(str(MODEL), device="cpu", local_files_only=True)
    correct = []
    for name, path in TASKS.items():
        task = get_task(name, {"kind": "synthetic", "limit": PER_TASK, "data_path": str(path)})
        problems = task.load()
        frame = generate_shard(
            model,
            tokenizer,
            task,
            problems,
            task_name=name,
            model_name="toy",
            method_name="greedy",
            method={"sampler": "greedy", "max_new_tokens": 96},
            seed=0,
            shard=0,
            batch_size=PER_TASK,
            progress=False,
        )
        rows = problems.to_dict("records")
        correct += [
            task.grade(c, r).correct for c, r in zip(frame["completion"], rows, strict=True)
        ]
    accuracy = sum(correct) / len(correct)
    assert BAND[0] <= accuracy <= BAND[1], f"greedy accuracy {accuracy:.3f} outside {BAND}"
