"""loratune: LoRA fine-tuning for text classification, tuned by diagnosis."""

import os as _os

# OpenMP threads that spin while waiting steal the cores the working threads need when the CPU is
# shared with other jobs: training steps measured 3-12x slower at load 4-7 on 2 cores (bench/
# throughput.py notes). Let them sleep, unless the user chose a policy. Takes effect only when set
# before torch loads its OpenMP runtime (the CLI imports loratune first).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
