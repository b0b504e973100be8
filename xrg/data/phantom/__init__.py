"""The CT phantom (being split into modules; for now everything lives in :mod:`.renderer`)."""

from xrg.data.phantom.renderer import *  # noqa: F401,F403
