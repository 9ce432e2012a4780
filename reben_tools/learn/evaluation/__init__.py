"""What a trained model is worth: predictions, metrics, probes, embeddings, retrieval and their figures.

Modules: predict (predict, evaluate), metrics, probes, probe_report, probe_figure, compare (the comparison
protocol), controls (its known-answer feature sets), embed, embeddings,
embedding_map, retrieval.

Owns: nothing itself; each module says what it owns.
May import: reben_tools.format, reben_tools.splits, reben_tools.learn.runtime, .data, .models; never training.
"""
