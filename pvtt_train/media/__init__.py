"""Reading and writing designer media (videos, frame folders, images) for the nodes and the CLI."""
