"""structseg: semantic segmentation with structured inference, in plain PyTorch.

The public API on one screen::

    create_model(name, num_classes, **kw)   build a network (list_models(), register_model to add one)
    load_pretrained(name_or_path)           a trained network, eval mode, with .classes / .normalization
    Predictor(name_or_path).predict(rgb)    uint8 class map for an RGB uint8 image (optionally CRF-refined)
    DenseCRF(...)(image, logits=...)        fully connected CRF, mean field on the permutohedral lattice
    ConfusionMatrix(num_classes, ignore)    mIoU / mean class accuracy / pixel accuracy
    SegmentationDataset(root, split)        a dataset in the unified layout (split file + classes.json)
"""
from .data.dataset import SegmentationDataset
from .engine.checkpoint import load_pretrained
from .engine.metrics import ConfusionMatrix
from .engine.predict import Predictor
from .models import create_model, list_models, register_model
from .structured.dense_crf import CRFParams, DenseCRF

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "load_pretrained", "Predictor", "DenseCRF",
           "CRFParams", "ConfusionMatrix", "SegmentationDataset", "__version__"]
