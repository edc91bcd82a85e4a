//! Unit tests of the scripted policy.
