"""The run's report (`make report`): results against the paper, DVC experiments, curves,
t-SNE, confusion matrix, a picture of the data and provenance. See `build.py`."""

from pipeline.report.build import attach_to_mlflow, build_report

__all__ = ["attach_to_mlflow", "build_report"]
