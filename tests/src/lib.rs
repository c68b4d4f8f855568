//! Shared fixture for the end-to-end tests.
