"""The reference task types (summaries, scenes, batches, text, the demo), registered by entry
points. The framework they are written against is ``taskplatform.tasks``."""
