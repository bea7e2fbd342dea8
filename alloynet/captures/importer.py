"""`alloynet import`'s public functions; the import itself lives in ``alloynet.captures.importing``."""

from alloynet.captures.importing import *  # noqa: F401,F403
from alloynet.captures.importing import __all__  # noqa: F401
