"""The multimodal trainer, its balancers, datasets and the Ray Tune trainable that wraps it."""
