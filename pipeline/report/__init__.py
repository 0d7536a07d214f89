"""The run's report (`make report`): results against the paper, DVC experiments, curves,
t-SNE, confusion matrix, a picture of the data and provenance. Entry point:
`pipeline.report.build.build_report`."""
