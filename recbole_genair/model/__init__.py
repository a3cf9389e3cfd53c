"""GenAIR's model side: embedding layer, calibration loss, backbones and baselines.

``compat`` comes first: it imports RecBole's sequential models without the autograd anomaly
switch RecBole's SINE module turns on (see :mod:`recbole_genair.compat`).
"""
from recbole_genair import compat  # noqa: F401
