"""Encoders (Transformer with random key masking, GRU, VGGish) and projection heads."""

from coughjax.models.registry import (build_encoder, compute_dtype, encoder_class,
                                      encoder_config, names, register, registered_name)
# Imported for their side effect: @register makes each encoder buildable by name.
from coughjax.models import gru, heads, masking, transformer
from coughjax.models import vggish
