"""The training generator's product silhouettes, in a module the CLI can read without numpy."""

SHAPES = ("square", "circle", "diamond", "rounded", "ellipse")
