//! Tree comparison.
