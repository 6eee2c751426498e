"""`python -m mlflow_persist.cli` runs the command line."""

from mlflow_persist.cli.main import main

main()
