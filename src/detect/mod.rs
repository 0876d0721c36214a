//! Path detection.
