"""`configs/pretrain.py` of a clone: the config file `coughjax/configs/pretrain.py` (the package
`coughjax.configs`, which the wheel ships), re-exported so that
`python launch.py --config=configs/pretrain.py:...` and `from configs import pretrain` work."""

from coughjax.configs.pretrain import *  # pylint: disable=wildcard-import,unused-wildcard-import
