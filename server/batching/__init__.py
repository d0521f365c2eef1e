"""Request batching: the batcher, its BatchingParameters, and padding of batched inputs."""
