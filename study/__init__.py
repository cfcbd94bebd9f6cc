"""Study orchestration: spec loading, search spaces, the Tuner, MLflow tracking, the launch CLI."""
