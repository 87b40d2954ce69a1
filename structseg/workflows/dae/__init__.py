"""``structseg dae train | validate | test | compare``: the seed-000 protocol on any segmenter and dataset.

1. ``train`` (:mod:`.train`): a conditional DAE learns to map the frozen segmenter's corrupted probabilities
   (plus its features ``h``) to the ground truth; RMSprop with Lasagne's constants, lr annealed per epoch,
   early stopping on the validation loss (CE + lmb * squared error); re-running resumes.
2. ``validate`` (:mod:`.protocols`): for every step size, iterative inference for up to N iterations on a
   validation split, mIoU after every iteration; the best (step, iterations) pair goes to ``chosen.yaml``.
3. ``test``: applies the chosen pair to a split and writes ``metrics.json`` as ``structseg eval`` does.
4. ``compare``: base network / + one DAE pass / + iterative inference / + dense CRF on one split.

The config (:mod:`.config`) keeps the seed's vocabulary: ``dae_dict``, ``train_dict``, ``data_augmentation``;
checkpoints are the engine's, of kind ``dae`` (:mod:`.loading`).
"""
from .config import DAERunConfig, load_dae_config
from .loading import export_dae, load_dae, read_dae_checkpoint, shipped_daes
from .protocols import STEPS, apply_dae, choose, compare_dae, read_chosen, validate_dae
from .train import train_dae

__all__ = ["DAERunConfig", "load_dae_config", "export_dae", "load_dae", "read_dae_checkpoint", "shipped_daes",
           "STEPS", "apply_dae", "choose", "compare_dae", "read_chosen", "validate_dae", "train_dae"]
