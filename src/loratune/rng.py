"""The caller's random generators kept across a run (`rng_kept`): stdlib-only at import, so a caller's guard can be
entered before the imports a run needs (numpy, torch, and rich, whose first import draws from `random`)."""

from __future__ import annotations

import contextlib
import random


@contextlib.contextmanager
def rng_kept():
    """The caller's `random`, numpy and torch generators as they were, after the block: a run seeds them all
    (seed_everything), and a notebook's next draw after api.train was seed 42's whatever seed it had set. `random`'s
    state is read first, before numpy and torch are imported here: the first api call in a process imports what draws
    from it (rich.style calls random.getrandbits at import), and the state read after that import was not the caller's.
    CUDA's generators too: their states where the caller had started CUDA; where it had not, they are seeded as the
    caller's torch.manual_seed left them (torch.initial_seed(): it seeds CUDA once CUDA starts), as if no run had
    started it."""
    py = random.getstate()
    import numpy as np
    import torch

    npy, cpu = np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.is_available()
    cuda_states = torch.cuda.get_rng_state_all() if cuda and torch.cuda.is_initialized() else None
    cuda_seed = torch.initial_seed()  # (read before the run reseeds it)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(cpu)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        elif cuda and torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(cuda_seed)
