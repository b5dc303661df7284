"""Make OpenMP threads sleep, not spin, while they wait. Import this before torch.

libgomp (torch's OpenMP) reads ``OMP_WAIT_POLICY`` once, when torch is imported. Its default
lets idle threads spin; when anything else needs the same cores (the event loop, a co-located
process, CFS throttling at the CPU limit), a spinning thread holds the core its partner needs
and every parallel region stalls. On a busy 2-core host, 2 torch threads served 2-7 req/s
spinning and 13-18 req/s passive. An explicit ``OMP_WAIT_POLICY`` in the environment wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
