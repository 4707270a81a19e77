"""Student training on Ray Train: ``trainer.train_student`` (driver) and ``loop.train_loop_per_worker`` (workers).

The package itself imports nothing heavy; import the submodules (they need torch and Ray).
"""

from __future__ import annotations
