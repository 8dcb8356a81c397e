"""`configs/downstream.py` of a clone: the config file `coughjax/configs/downstream.py` (the package
`coughjax.configs`, which the wheel ships), re-exported so that
`python launch.py --config=configs/downstream.py:...` and `from configs import downstream` work."""

from coughjax.configs.downstream import *  # pylint: disable=wildcard-import,unused-wildcard-import
