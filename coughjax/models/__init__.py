"""Encoders (Transformer with random key masking, GRU, VGGish) and projection heads."""

from coughjax.models.registry import build_encoder, encoder_class, names, register
from coughjax.models import vggish
