"""`configs/probe.py` of a clone: the config file `coughjax/configs/probe.py` (the package
`coughjax.configs`, which the wheel ships), re-exported so that
`python launch.py --config=configs/probe.py:...` and `from configs import probe` work."""

from coughjax.configs.probe import *  # pylint: disable=wildcard-import,unused-wildcard-import
