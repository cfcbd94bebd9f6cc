"""Study orchestration: spec loading, search spaces, the Tuner, MLflow tracking, the launch CLI."""

import time

STARTED = time.time()  # the launcher's start (this package is its first import): a study's start-up counts from here
