"""The training generator's product silhouettes and their aspect range, in a module the CLI can read without numpy."""

SHAPES = ("square", "circle", "diamond", "rounded", "ellipse")
#: Width / height of ellipses and rounded rectangles: the default range, and the range any choice must keep to.
DEFAULT_ASPECT, ASPECT_LIMITS = (0.75, 1.0), (0.3, 1.0)
