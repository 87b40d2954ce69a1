"""Structured inference on top of any network: the fully connected CRF (permutohedral lattice,
mean field, CRF-as-RNN post-processing and layer)."""
from .crfasrnn import CRFasRNN
from .dense_crf import CRFParams, DenseCRF, mean_field, unary_from_probabilities
from .lattice import PermutohedralLattice

__all__ = ["CRFasRNN", "CRFParams", "DenseCRF", "PermutohedralLattice", "mean_field", "unary_from_probabilities"]
