"""`configs/common.py` of a clone: the config file `coughjax/configs/common.py` (the package
`coughjax.configs`, which the wheel ships), re-exported so that
`python launch.py --config=configs/common.py:...` and `from configs import common` work."""

from coughjax.configs.common import *  # pylint: disable=wildcard-import,unused-wildcard-import
