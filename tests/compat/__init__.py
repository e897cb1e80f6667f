"""Tests against the real Keras 3 and PyTorch (the ``compat`` extra, which ``make setup`` installs).

Keras picks its backend once, when it is first imported, from KERAS_BACKEND. This package is
imported before its test modules, so the backend is fixed here, overriding a developer's
setting or ``keras.json``: torch is the only backend the ``compat`` extra installs.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"
