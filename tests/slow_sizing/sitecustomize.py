"""Put on PYTHONPATH by one test: sizing a trial for hydra.sweeper.max_memory_gb (seconds on a large model)
takes a minute here, so the test's signal lands in it. It says when sizing began by creating the file
named in $SWEEPLAB_TEST_SIZING."""

import os

if os.environ.get("SWEEPLAB_TEST_SIZING"):
    import time
    from pathlib import Path

    import sweeplab.estimate

    _estimate = sweeplab.estimate.estimate

    def _slow_estimate(*args, **kwargs):
        Path(os.environ["SWEEPLAB_TEST_SIZING"]).touch()
        time.sleep(60)
        return _estimate(*args, **kwargs)

    sweeplab.estimate.estimate = _slow_estimate
