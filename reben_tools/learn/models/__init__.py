"""The networks: building blocks, supervised backbones and classifiers, CROMA, DOFA, the encoder registry.

Modules: blocks, backbones, classifier (ReBENClassifier, build_model), croma, croma_losses, dofa,
encoders (load_encoder), restore (a classifier from a checkpoint).

Owns: nothing itself; each module says what it owns.
May import: reben_tools.format, reben_tools.learn.runtime; never data, evaluation or training.
"""
