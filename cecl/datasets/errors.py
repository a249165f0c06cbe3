"""Errors about data, as the dataset plug-ins name them: defined in cecl/data/errors.py (below the
plug-ins, where the loaders raise them too) and re-exported here."""

from __future__ import annotations

from cecl.data.errors import DataIntegrityError as DataIntegrityError
from cecl.data.errors import DataUnavailable as DataUnavailable
