"""Training methods on the protocols of :mod:`tag_tf.core.parts`: loss weightings
(``weighting``: UW, GradNorm, RepresentationGradNorm; ``dwa``: DWA) and gradient combiners
(``pcgrad``: PCGrad; ``mgda``: MGDA-UB)."""
