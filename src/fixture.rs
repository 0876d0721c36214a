//! Sample docker-like trees.
