"""structseg: semantic segmentation with structured inference, in plain PyTorch."""
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]
