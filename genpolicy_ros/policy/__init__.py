"""Generative (rectified-flow) policy over EE action chunks: model, sampler, data, training.

Import the pieces from their modules (``policy.policy.FlowPolicy``,
``policy.chunking.ChunkScheduler``, ...); this package file stays light so that importing
``genpolicy_ros.policy.chunking`` does not pull in torch.
"""
