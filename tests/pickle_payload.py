"""A pickle that runs a command when unpickled: proof, by a marker file, that a loader never unpickles."""

import os
from pathlib import Path


class PicklePayload:
    """Unpickling this touches ``marker``; a safe loader leaves ``marker`` absent."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
