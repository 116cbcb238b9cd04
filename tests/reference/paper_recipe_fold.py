"""The paper recipe's reference folds, printed as JSON: ``{name: {probabilities, history}}``.

Run by ``tests/test_recipe.py`` in a child process with processor-independent numerics
(:data:`PINNED_ENV`, and oneDNN off here): ATen's plain C++ kernels instead of the AVX2 /
AVX-512 ones it picks for the processor, MKL's conditional numerical reproducibility, one
thread. The reference beside this script (``paper_recipe_reference.json``) is this script's
output for the code of commit 1b04704, before the recipe options existed::

    git worktree add /tmp/old 1b04704
    env ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE OMP_NUM_THREADS=1 \\
        python tests/reference/paper_recipe_fold.py /tmp/old

(the optional argument is the folder holding the ``serlib`` package to run).
"""

import inspect
import json
import sys
from pathlib import Path

#: The environment of the child process (read by ATen and MKL when torch is imported).
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}
REFERENCE = Path(__file__).with_name("paper_recipe_reference.json")


def inputs(n: int = 48, seed: int = 0):
    """The reference folds' features (n, 6, 8), labels (n,) and speakers (n,)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    features = rng.normal(size=(n, 6, 8)).astype(np.float32)
    features += labels[:, None, None].astype(np.float32)
    speakers = np.array([f"spk{i % 6}" for i in range(n)])
    return features, labels, speakers


def main() -> None:
    if len(sys.argv) > 1:
        sys.path.insert(0, sys.argv[1])
    import numpy as np
    import torch

    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    from serlib import training
    from serlib.config import TrainConfig

    features, labels, speakers = inputs()
    out = {}
    for name, case in json.loads(REFERENCE.read_text())["cases"].items():
        config = TrainConfig(**case["config"])
        extra = ({"lengths": np.full(len(labels), 3)}           # ignored by the paper recipe
                 if "lengths" in inspect.signature(training.train_fold).parameters else {})
        result = training.train_fold(
            features, labels, np.arange(36), np.arange(36, 48), config=config, fold=1,
            device=torch.device("cpu"), progress=False,
            groups=speakers if config.protocol == "session" else None, **extra)
        out[name] = {"probabilities": result["probabilities"].tolist(),
                     "history": result["history"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
