//! Tree copy.
