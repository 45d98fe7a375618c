"""main.py whose every rank is interrupted (KeyboardInterrupt) at the same training step, as a Ctrl-C reaching a
whole torchrun job would: `torchrun ... tests/interrupted_main.py STEP main.py-arguments...`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import main  # noqa: E402
from methods.patchguard import PatchGuardMethod  # noqa: E402

if __name__ == "__main__":
    stop_at, calls = int(sys.argv[1]), [0]
    real_step = PatchGuardMethod.train_step

    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == stop_at:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)
    PatchGuardMethod.train_step = step
    sys.exit(main.main(sys.argv[2:]))
